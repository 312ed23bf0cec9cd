"""
An intersphinx inventory of Twisted's API, made from the installed Twisted without a network.

Twisted's API reference is made by pydoctor, whose ``objects.inv`` is on docs.twisted.org, out
of reach of the build (CI has no network but the package registries). This module writes an
equivalent inventory from the source of the installed Twisted, read with :mod:`ast` (nothing is
imported), with the links pydoctor's pages have:

- a module or package: ``twisted.internet.defer.html``;
- a class: ``twisted.internet.defer.Deferred.html``; its methods and attributes:
  ``twisted.internet.defer.Deferred.html#addCallback``;
- a function or a module attribute: ``twisted.internet.defer.html#succeed``;
- a name that a module re-exports in its ``__all__`` from a private module (``_sslverify``),
  where pydoctor documents it: ``twisted.internet.ssl.CertificateOptions.html``.

Test modules (``twisted.*.test``) are left out, as they are from Twisted's API reference.
``docs/conf.py`` calls :func:`write_inventory` once per Twisted version and points intersphinx
at the file.
"""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

#: Where Twisted's API reference lives.
TWISTED_API = "https://docs.twisted.org/en/stable/api/"

_Entry = tuple[str, str, str]  # (name, "py:role", uri)


def _module_name(root: Path, file: Path) -> str | None:
    parts = list(file.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if any(part in ("test", "tests") for part in parts):
        return None
    return ".".join(parts)


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _names(element)]
    return []


def _class_entries(module: str, node: ast.ClassDef) -> list[_Entry]:
    page = f"{module}.{node.name}.html"
    entries: list[_Entry] = [(f"{module}.{node.name}", "py:class", page)]
    if node.name.endswith(("Error", "Exception", "Warning")):
        # So that :exc: finds it too (intersphinx looks it up as an exception).
        entries.append((f"{module}.{node.name}", "py:exception", page))
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            entries.append(
                (f"{module}.{node.name}.{item.name}", "py:method", f"{page}#{item.name}")
            )
        elif isinstance(item, ast.Assign | ast.AnnAssign):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            for target in targets:
                for name in _names(target):
                    entries.append(
                        (f"{module}.{node.name}.{name}", "py:attribute", f"{page}#{name}")
                    )
    return entries


def _module_entries(
    module: str, tree: ast.Module
) -> tuple[list[_Entry], list[tuple[str, str, str]]]:
    """The module's own entries, and its re-exports as ``(name, origin module, origin name)``."""
    entries: list[_Entry] = [(module, "py:module", f"{module}.html")]
    exported: set[str] = set()
    imports: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            entries += _class_entries(module, node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            entries.append((f"{module}.{node.name}", "py:function", f"{module}.html#{node.name}"))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in _names(target):
                    if name == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                        exported |= {
                            e.value
                            for e in node.value.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        }
                    elif not name.startswith("__"):
                        entries.append((f"{module}.{name}", "py:data", f"{module}.html#{name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imports[alias.asname or alias.name] = (node.module, alias.name)
    reexports = [
        (name, *imports[name])
        for name in sorted(exported & set(imports))
        if _is_private(imports[name][0]) and not _is_private(module)
    ]
    return entries, [(f"{module}.{name}", origin, original) for name, origin, original in reexports]


def twisted_entries(root: Path) -> list[_Entry]:
    """Every inventory entry of the Twisted package at ``root`` (its directory)."""
    entries: list[_Entry] = []
    moved: list[tuple[str, str, str]] = []
    for file in sorted(root.rglob("*.py")):
        module = _module_name(root, file)
        if module is None:
            continue
        try:
            tree = ast.parse(file.read_bytes(), str(file))
        except SyntaxError:
            continue
        own, reexports = _module_entries(module, tree)
        entries += own
        moved += reexports
    roles = {name: role for name, role, _uri in entries}
    for public, origin, original in moved:
        role = roles.get(f"{origin}.{original}")
        if role == "py:class":
            entries.append((public, role, f"{public}.html"))
        elif role is not None:
            module, _, name = public.rpartition(".")
            entries.append((public, role, f"{module}.html#{name}"))
    return entries


def write_inventory(path: Path, root: Path, version: str) -> None:
    """
    Write the inventory of the Twisted at ``root`` (version ``version``) to ``path``, in
    Sphinx's inventory format version 2 (what intersphinx reads).
    """
    seen: set[tuple[str, str]] = set()
    lines = []
    for name, role, uri in twisted_entries(root):
        if (name, role) not in seen:
            seen.add((name, role))
            lines.append(f"{name} {role} 1 {uri} -\n")
    header = (
        "# Sphinx inventory version 2\n"
        "# Project: Twisted\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))
