"""
The public API: every name in ``twisted_lb.__all__`` exists and is the object from the module
that owns it (as klein's test_exports does); ``twisted_lb.testing`` exports its fakes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import twisted_lb
import twisted_lb.testing
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


TESTING = [
    "FakePool",
    "StrategyError",
    "client_address",
    "connection_info",
    "make_backends",
    "verify_plugin",
]


class TestingExportTests(SynchronousTestCase):
    def test_all_is_complete(self) -> None:
        """
        ``twisted_lb.testing.__all__`` lists exactly its public names, each defined there
        (not re-exported), with a docstring.
        """
        module = twisted_lb.testing
        self.assertEqual(sorted(module.__all__), sorted(TESTING))
        for name in TESTING:
            value = getattr(module, name)
            self.assertEqual(value.__module__, "twisted_lb.testing", name)
            self.assertTrue(value.__doc__, name)
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        self.assertEqual(public, set(TESTING))

    def test_not_imported_by_the_package(self) -> None:
        """The fakes are for tests: ``import twisted_lb`` does not export them."""
        self.assertFalse(set(TESTING) & set(twisted_lb.__all__))
