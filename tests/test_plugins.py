"""
Tests for strategy plugin discovery: a third party's module in a ``twisted_lb/plugins/``
directory is found by :func:`twisted_lb.strategies.get_strategy`, as docs/ tell plugin authors.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import twisted_lb.plugins
from twisted_lb.backend import Backend, ConnectionInfo
from twisted_lb.interfaces import IBalancingStrategy
from twisted_lb.strategies import get_strategy, installed_strategies

PLUGIN = textwrap.dedent(
    '''
    """A third-party strategy: always the last backend offered."""

    from zope.interface import implementer

    from twisted_lb.interfaces import IBalancingStrategy
    from twisted_lb.strategies import StrategyFactory


    @implementer(IBalancingStrategy)
    class Last:
        def __init__(self, offset=0):
            self.offset = offset

        def pick(self, backends, info):
            return backends[-1 - self.offset]


    my_first = StrategyFactory("my_first", Last, {"offset": int})
    '''
)


class ThirdPartyPluginTests(SynchronousTestCase):
    """
    A strategy dropped into a ``twisted_lb/plugins/`` directory (no ``__init__.py``) is found.
    """

    def setUp(self) -> None:
        # Not self.mktemp(): under pytest that lands in the source tree.
        self.root = Path(tempfile.mkdtemp(prefix="twisted_lb_plugins_"))
        self.addCleanup(shutil.rmtree, self.root)
        plugins = self.root / "twisted_lb" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "my_first.py").write_text(PLUGIN)
        self.plugins = plugins

    def test_found_on_package_path(self) -> None:
        """
        With the directory on ``twisted_lb.plugins.__path__``, ``get_strategy`` finds the
        plugin by name and hands it the options.
        """
        saved_path = list(twisted_lb.plugins.__path__)

        def restore() -> None:
            twisted_lb.plugins.__path__[:] = saved_path
            sys.modules.pop("twisted_lb.plugins.my_first", None)

        self.addCleanup(restore)
        self.assertNotIn("my_first", installed_strategies())
        twisted_lb.plugins.__path__.append(str(self.plugins))
        importlib.invalidate_caches()

        self.assertIn("my_first", installed_strategies())
        strategy = get_strategy("my_first", {"offset": 1})
        self.assertTrue(verifyObject(IBalancingStrategy, strategy))
        backends = [Backend.from_address(f"10.0.0.{i}:80") for i in (1, 2, 3)]
        self.assertIs(strategy.pick(backends, ConnectionInfo()), backends[1])
        self.assertRaises(ValueError, get_strategy, "my_first", {"ofset": 1})

    def test_found_on_sys_path(self) -> None:
        """
        A new process with the directory's root on ``PYTHONPATH`` lists the plugin with the
        built-ins: ``pluginPackagePaths`` adds it to the package path.
        """
        elsewhere = self.root / "cwd"
        elsewhere.mkdir()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.root.resolve()), env.get("PYTHONPATH")])
        )
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from twisted_lb.strategies import installed_strategies; "
                "print(installed_strategies())",
            ],
            env=env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        names = result.stdout.strip()
        self.assertIn("'my_first'", names)
        self.assertIn("'round_robin'", names)
