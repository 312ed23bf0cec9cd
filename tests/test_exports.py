"""
The public API: every name in ``twisted_lb.__all__`` exists and is the object from the module
that owns it (as klein's test_exports does).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import twisted_lb
from twisted_lb import backend, config, interfaces, pool, service, strategies, tcp
from twisted_lb.http import proxy, routing

OWNERS = {
    "Backend": backend,
    "BackendState": backend,
    "ConnectionInfo": backend,
    "Config": config,
    "ConfigError": config,
    "load_config": config,
    "parse_config": config,
    "IBalancingStrategy": interfaces,
    "IStrategyFactory": interfaces,
    "Lease": pool,
    "Pool": pool,
    "LoadBalancerService": service,
    "get_strategy": strategies,
    "installed_strategies": strategies,
    "UnknownStrategyError": strategies,
    "TCPRelayFactory": tcp,
    "HTTPProxyFactory": proxy,
    "Route": routing,
    "Router": routing,
}


class ExportTests(SynchronousTestCase):
    def test_all_is_complete(self) -> None:
        """``__all__`` lists exactly the public API (and the version)."""
        self.assertEqual(sorted(twisted_lb.__all__), sorted([*OWNERS, "__version__"]))

    def test_each_export(self) -> None:
        """Each export is the owning module's object, not a copy."""
        for name, module in OWNERS.items():
            self.assertIs(getattr(twisted_lb, name), getattr(module, name), name)

    def test_version(self) -> None:
        """``__version__`` is a dotted version string."""
        self.assertRegex(twisted_lb.__version__, r"^\d+\.\d+\.\d+")
