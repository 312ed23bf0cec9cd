"""
The Sphinx extensions of docs/_ext, run in a real (small) Sphinx build.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util.docutils import docutils_namespace
from sphinx.util.inventory import InventoryFile
from twisted.trial.unittest import SynchronousTestCase

import twisted
import twisted_lb.plugins
from twisted_lb.strategies import installed_strategies

EXT = Path(__file__).parent.parent / "docs" / "_ext"

PLUGIN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_lb.interfaces import IStrategyFactory


@implementer(IPlugin, IStrategyFactory)
class AlwaysFirstFactory:
    """
    Always the first backend offered: a plugin of the test.

    More text, not in the summary.
    """

    name = "always_first"

    def __call__(self, options):
        raise NotImplementedError


always_first = AlwaysFirstFactory()
'''


class InstalledStrategiesTests(SynchronousTestCase):
    def build(self, text: str) -> str:
        """Build one page, ``index.rst`` with ``text``, as plain text; return the output."""
        source = Path(self.mktemp())
        source.mkdir(parents=True)
        (source / "conf.py").write_text('extensions = ["strategy_list"]\n')
        (source / "index.rst").write_text(text)
        sys.path.insert(0, str(EXT))
        self.addCleanup(sys.path.remove, str(EXT))
        warnings = io.StringIO()
        # docutils_namespace undoes the app's registrations of nodes and directives, which
        # are global, so that builds in one process do not warn about each other's.
        with docutils_namespace():
            app = Sphinx(
                str(source),
                str(source),
                str(source / "_build"),
                str(source / "_doctrees"),
                "text",
                status=None,
                warning=warnings,
                freshenv=True,
            )
            app.build()
        self.assertEqual(warnings.getvalue(), "")
        return (source / "_build" / "index.txt").read_text()

    def test_lists_every_installed_strategy(self) -> None:
        """
        ``.. installed-strategies::`` lists every installed strategy by name with the summary
        of its docstring, sorted; the built-ins are all there, ``least_time`` included.
        """
        output = self.build("Strategies\n==========\n\n.. installed-strategies::\n")
        names = installed_strategies()
        self.assertTrue({"round_robin", "least_time", "source_hash"} <= set(names), names)
        listed = [line.split('"')[1] for line in output.splitlines() if line.startswith("* ")]
        self.assertEqual(listed, names)
        self.assertIn('* "round_robin": Smooth weighted round robin, the nginx algorithm.', output)

    def test_lists_a_plugin_installed_beside_the_built_ins(self) -> None:
        """A plugin on the plugin path is listed too, with its factory's docstring summary."""
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        (directory / "always_first_strategy.py").write_text(PLUGIN)
        twisted_lb.plugins.__path__.append(str(directory))
        self.addCleanup(twisted_lb.plugins.__path__.remove, str(directory))
        self.addCleanup(sys.modules.pop, "twisted_lb.plugins.always_first_strategy", None)
        output = " ".join(self.build(".. installed-strategies::\n").split())  # unwrapped
        self.assertIn(
            '* "always_first": Always the first backend offered: a plugin of the test.', output
        )
        self.assertNotIn("More text", output)


class TwistedInventoryTests(SynchronousTestCase):
    def test_inventory_of_the_installed_twisted(self) -> None:
        """
        docs/_ext/twisted_inventory.py writes an inventory that intersphinx reads, with
        pydoctor's links: classes on pages of their own, functions and re-exports (from
        private modules, by ``__all__``) on their module's page, no test modules.
        """
        sys.path.insert(0, str(EXT))
        self.addCleanup(sys.path.remove, str(EXT))
        from twisted_inventory import TWISTED_API, write_inventory

        path = Path(self.mktemp()) / "twisted.inv"
        write_inventory(path, Path(twisted.__file__).parent, twisted.__version__)
        with path.open("rb") as f:
            inventory = InventoryFile.load(f, TWISTED_API, lambda base, uri: base + uri)

        def uri(role: str, name: str) -> str:
            entry = inventory[role][name]
            return str(entry[2] if isinstance(entry, tuple) else entry.uri)

        api = TWISTED_API
        self.assertEqual(
            uri("py:class", "twisted.internet.defer.Deferred"),
            f"{api}twisted.internet.defer.Deferred.html",
        )
        self.assertEqual(
            uri("py:method", "twisted.internet.defer.Deferred.addCallback"),
            f"{api}twisted.internet.defer.Deferred.html#addCallback",
        )
        self.assertEqual(
            uri("py:function", "twisted.internet.endpoints.serverFromString"),
            f"{api}twisted.internet.endpoints.html#serverFromString",
        )
        self.assertEqual(
            uri("py:function", "twisted.internet.ssl.optionsForClientTLS"),
            f"{api}twisted.internet.ssl.html#optionsForClientTLS",
        )
        self.assertEqual(
            uri("py:class", "twisted.internet.ssl.CertificateOptions"),
            f"{api}twisted.internet.ssl.CertificateOptions.html",
        )
        self.assertEqual(
            uri("py:module", "twisted.internet.interfaces"),
            f"{api}twisted.internet.interfaces.html",
        )
        self.assertIn("twisted.internet.error.ConnectionRefusedError", inventory["py:exception"])
        self.assertFalse([n for n in inventory["py:module"] if ".test." in n + "."])
