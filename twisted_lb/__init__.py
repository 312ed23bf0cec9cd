"""
twisted-lb: an L4 (TCP) and L7 (HTTP/1.1) load balancer built on Twisted.

The public API is re-exported here; see ``__all__``.
"""

from twisted_lb.backend import Backend, BackendState, ConnectionInfo
from twisted_lb.config import Config, ConfigError, load_config, parse_config
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.http.routing import Route, Router
from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory
from twisted_lb.pool import Lease, Pool
from twisted_lb.service import LoadBalancerService
from twisted_lb.strategies import UnknownStrategyError, get_strategy, installed_strategies
from twisted_lb.tcp import TCPRelayFactory

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendState",
    "Config",
    "ConfigError",
    "ConnectionInfo",
    "HTTPProxyFactory",
    "IBalancingStrategy",
    "IStrategyFactory",
    "Lease",
    "LoadBalancerService",
    "Pool",
    "Route",
    "Router",
    "TCPRelayFactory",
    "UnknownStrategyError",
    "__version__",
    "get_strategy",
    "installed_strategies",
    "load_config",
    "parse_config",
]
