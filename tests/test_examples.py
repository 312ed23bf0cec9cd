"""
Every config under examples/ stays valid: it loads and builds a service.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.config import load_config
from twisted_lb.service import LoadBalancerService

EXAMPLES = Path(__file__).parent.parent / "examples"


class ExampleTests(SynchronousTestCase):
    def test_examples_are_valid(self) -> None:
        """Each example loads, and the service is built from it."""
        paths = sorted(EXAMPLES.glob("*.toml"))
        self.assertTrue(paths)
        for path in paths:
            service = LoadBalancerService.from_config(load_config(path), MemoryReactorClock())
            self.assertTrue(service.listeners, path.name)
