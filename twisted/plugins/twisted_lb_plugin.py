from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

twisted_lb = ServiceMaker("twisted-lb", "twisted_lb.tap", "An L4/L7 load balancer.", "lb")

lb_reactor = Reactor(
    "lb", "twisted_lb.reactor", "epoll with cheaper event dispatch (twisted-lb; Linux only)"
)
