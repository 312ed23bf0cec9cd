from twisted.application.service import ServiceMaker

twisted_lb = ServiceMaker("twisted-lb", "twisted_lb.tap", "An L4/L7 load balancer.", "lb")
