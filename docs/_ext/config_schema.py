"""
The ``config-keys`` directive: the key reference of docs/config.rst, made from the config
schema (:func:`twisted_lb.config.json_schema`, pydantic's ``model_json_schema()``) while the
docs build, so that each key's type, default, unit, constraints and description come from the
one declaration in ``twisted_lb/config.py``.

Usage::

    .. config-keys:: FrontendConfig
       :keys: mode listen pool

       listen
          More prose about ``listen``, shown after its generated entry.

``:keys:`` picks and orders the keys of the table (default: all, in declaration order). The
content gives optional prose per key: a line with the key's name, then the indented prose.
A key named in the content but not in the table is an error, and when the build finishes
every key of every table must have been shown once (a warning otherwise, which ``-W`` makes
an error), so the reference cannot drift from the schema.

autodoc_pydantic was not used: its last release is from 2024 and untested with this Sphinx,
and its output is organised around Python classes rather than TOML keys.
"""

from __future__ import annotations

import json
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from twisted_lb.config import json_schema

_logger = logging.getLogger(__name__)

_TYPES = {
    "string": "String",
    "integer": "Integer",
    "number": "Float",
    "boolean": "Boolean",
    "object": "Table",
}
_UNITS = {"s": "seconds", "bytes": "bytes", "%": "percent", "fraction": "a fraction"}


def _tables() -> dict[str, dict[str, Any]]:
    schema = json_schema()
    return {"Config": schema, **schema["$defs"]}


def _type(schema: dict[str, Any]) -> str:
    """A key's type in words, from its JSON Schema."""
    if "$ref" in schema:
        return "Table"
    if "enum" in schema:
        return "String: " + " or ".join(f'``"{value}"``' for value in schema["enum"])
    options = schema.get("anyOf")
    if options is not None:
        types = {option.get("type") for option in options}
        if types >= {"number", "string"} and any("pattern" in o for o in options):
            return 'Duration: a number of seconds, or a string such as ``"30s"``, ``"500ms"``'
        options = [option for option in options if option.get("type") != "null"]
        return " or ".join(_type(option).lower() for option in options).capitalize()
    if schema.get("type") == "array":
        items = schema.get("items", {})
        inner = "tables" if "$ref" in items else _type(items).lower() + "s"
        if "anyOf" in items:
            inner = " or ".join(_type(option).lower() + "s" for option in items["anyOf"])
        return f"Array of {inner}"
    return _TYPES.get(schema.get("type", ""), "Value")


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _constraints(schema: dict[str, Any]) -> str:
    bounds = [schema, *schema.get("anyOf", [])]
    words = []
    for bound in bounds:
        for key, op in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        ):
            if key in bound:
                words.append(f"{op} {bound[key]}")
    return f" *Must be {' and '.join(words)}.*" if words else ""


def _entry(key: str, schema: dict[str, Any], required: bool) -> list[str]:
    """The reST of one key: its name, a line of type, unit and default, its description."""
    what = _type(schema)
    unit = schema.get("unit")
    if unit in _UNITS and not what.startswith("Duration"):
        what += f", {_UNITS[unit]}"
    line = f"{what}."
    if required:
        line += " *Required.*"
    elif schema.get("default") is None:
        line += " *Default: none.*"
    else:
        line += f" *Default:* ``{_toml(schema['default'])}``."
    line += _constraints(schema)
    if schema.get("mode") == "http":
        line += ' *Only for* ``mode = "http"``.'
    description = schema.get("description", "").replace("\n", " ")
    return [f"``{key}``", f"   {line}", "", f"   {description}", ""]


class ConfigKeys(SphinxDirective):
    """``.. config-keys:: TABLE``: see the module docstring."""

    required_arguments = 1
    has_content = True
    option_spec = {"keys": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        tables = _tables()
        name = self.arguments[0]
        if name not in tables:
            raise self.error(f"unknown config table {name!r}; tables: {', '.join(tables)}")
        table = tables[name]
        properties = table["properties"]
        keys = self.options.get("keys", "").split() or list(properties)
        prose = self._prose()
        for key in [*keys, *prose]:
            if key not in properties:
                raise self.error(f"{name} has no key {key!r}; keys: {', '.join(properties)}")
        shown = self.env.temp_data.setdefault("config_keys_shown", set())
        lines: list[str] = []
        for key in keys:
            lines.extend(_entry(key, properties[key], key in table.get("required", [])))
            lines.extend(prose.get(key, []))
            self.env.domaindata.setdefault("config_keys", {}).setdefault(
                self.env.docname, set()
            ).add((name, key))
            shown.add((name, key))
        node = nodes.container()
        self.state.nested_parse(StringList(lines, self.get_source_info()[0]), 0, node)
        return node.children

    def _prose(self) -> dict[str, list[str]]:
        """The content, as key name to its indented lines (already indented for an entry)."""
        prose: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in self.content:
            if line and not line[0].isspace():
                current = prose.setdefault(line.strip(), [])
            elif current is not None:
                current.append(line)
            elif line.strip():
                raise self.error(f"prose before any key name: {line!r}")
        return {key: [*lines, ""] for key, lines in prose.items()}


def _check_all_shown(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None:
        return
    shown = set().union(*app.env.domaindata.get("config_keys", {}).values())
    for name, table in _tables().items():
        for key in table["properties"]:
            if (name, key) not in shown and name != "Config":
                _logger.warning(f"config key {name}.{key} is in no config-keys directive")


def _purge(app: Sphinx, env: Any, docname: str) -> None:
    env.domaindata.get("config_keys", {}).pop(docname, None)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("config-keys", ConfigKeys)
    app.connect("env-purge-doc", _purge)
    app.connect("build-finished", _check_all_shown)
    return {"parallel_read_safe": False, "env_version": 1}
