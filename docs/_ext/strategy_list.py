"""
A Sphinx directive that lists the installed balancing strategies, so that the docs cannot drift
from the plugins.

``.. installed-strategies::`` renders one bullet per strategy plugin found by
``twisted.plugin.getPlugins(IStrategyFactory, twisted_lb.plugins)`` (as
:func:`twisted_lb.strategies.get_strategy` finds them), sorted by name: the name, as a config
file writes it, and the summary of its docstring: the first paragraph of the strategy class's
docstring for a :class:`~twisted_lb.strategies.StrategyFactory`, else of the factory's class.
Plugins installed where the docs are built are listed too.
"""

from __future__ import annotations

import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from twisted.plugin import getPlugins

import twisted_lb.plugins
from twisted_lb.interfaces import IStrategyFactory


def _summary(factory: Any) -> str:
    """The first paragraph of the strategy's docstring, on one line; ``""`` without one."""
    documented = getattr(factory, "strategy", None) or type(factory)
    text = inspect.getdoc(documented) or ""
    return " ".join(text.split("\n\n")[0].split())


def strategy_lines() -> list[str]:
    """The reStructuredText of the list: ``- ``name``: summary``, one line per strategy."""
    factories = {
        factory.name: factory for factory in getPlugins(IStrategyFactory, twisted_lb.plugins)
    }
    lines = []
    for name in sorted(factories):
        summary = _summary(factories[name])
        lines.append(f"- ``{name}``: {summary}" if summary else f"- ``{name}``")
    return lines


class InstalledStrategies(SphinxDirective):
    """``.. installed-strategies::``"""

    has_content = False

    def run(self) -> list[nodes.Node]:
        for path in twisted_lb.plugins.__path__:
            self.env.note_dependency(path)
        parsed = nodes.Element()
        self.state.nested_parse(
            StringList(strategy_lines(), source="installed-strategies"),
            self.content_offset,
            parsed,
        )
        return list(parsed.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("installed-strategies", InstalledStrategies)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
