"""
A Sphinx directive that documents a zope.interface ``Interface``.

autodoc cannot: an interface is not a class, and its methods and attributes are not Python
attributes of it. ``.. autointerface:: dotted.name`` renders the interface as a ``py:class``
with one ``py:method`` or ``py:attribute`` per declared name, in declaration order, each
docstring read as Google style (napoleon), like the rest of the API pages.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.docutils import SphinxDirective
from zope.interface.interface import InterfaceClass, Method


def _import(dotted: str) -> Any:
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


_What = Literal["class", "method", "attribute"]


def _indent(lines: list[str], prefix: str) -> list[str]:
    return [prefix + line if line else "" for line in lines]


class AutoInterface(SphinxDirective):
    """``.. autointerface:: package.module.IThing``"""

    required_arguments = 1
    has_content = False

    def _docstring(self, text: str | None, what: _What, name: str) -> list[str]:
        cleaned = inspect.cleandoc(text or "")
        return GoogleDocstring(cleaned, self.config, self.env.app, what, name).lines()

    def run(self) -> list[nodes.Node]:
        dotted = self.arguments[0]
        interface = _import(dotted)
        if not isinstance(interface, InterfaceClass):
            raise self.error(f"{dotted} is not a zope.interface Interface")
        module, _, short = dotted.rpartition(".")
        lines = [f".. py:class:: {short}", f"   :module: {module}", ""]
        lines += _indent(self._docstring(interface.__doc__, "class", dotted), "   ")
        for name, description in interface.namesAndDescriptions():
            lines.append("")
            what: _What
            if isinstance(description, Method):
                signature: str = description.getSignatureString()  # type: ignore[no-untyped-call]
                lines.append(f"   .. py:method:: {name}{signature}")
                what = "method"
            else:
                lines.append(f"   .. py:attribute:: {name}")
                what = "attribute"
            lines.append("")
            doc = self._docstring(description.getDoc(), what, f"{dotted}.{name}")
            lines += _indent(doc, "      ")
        self.env.note_dependency(importlib.import_module(module).__file__ or "")
        parsed = nodes.Element()
        self.state.nested_parse(StringList(lines, source=dotted), self.content_offset, parsed)
        return list(parsed.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("autointerface", AutoInterface)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
