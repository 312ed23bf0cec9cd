"""
Every config under examples/ stays valid: ``twisted-lb check`` passes with its summary, and the
service is built from it.
"""

from __future__ import annotations

import io
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.cli import check, format_summary
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

    def test_check(self) -> None:
        """``twisted-lb check`` exits 0 on each example and prints its summary, no errors."""
        for path in sorted(EXAMPLES.glob("*.toml")):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(check(str(path), out, err), 0, err.getvalue())
            self.assertEqual(err.getvalue(), "")
            self.assertEqual(out.getvalue(), format_summary(load_config(path)) + "\n")
            self.assertTrue(out.getvalue().startswith(f"{path}: OK\n"), path.name)
