"""
Sphinx configuration for the twisted-lb documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import twisted_lb

project = "twisted-lb"
author = "the twisted-lb authors"
copyright = "the twisted-lb authors"
release = twisted_lb.__version__
version = ".".join(release.split(".")[:2])

# docs/_ext holds zope_interfaces, the autointerface directive (autodoc cannot read zope
# Interfaces).
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "_ext")))

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "zope_interfaces",
    "config_schema",
]

exclude_patterns = ["_build", "_ext"]
root_doc = "index"

html_theme = "alabaster"
html_static_path: list[str] = []

# Google-style docstrings (STYLE.md); types come from the annotations.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# zope Interfaces used in annotations: keep their names instead of the InterfaceClass repr.
autodoc_type_aliases = {
    "IAddress": "twisted.internet.interfaces.IAddress",
    "IStreamClientEndpoint": "twisted.internet.interfaces.IStreamClientEndpoint",
    "IBalancingStrategy": "twisted_lb.interfaces.IBalancingStrategy",
    "IStrategyFactory": "twisted_lb.interfaces.IStrategyFactory",
}
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"


def _resolve_reexport(app, env, node, contnode):
    """
    Link references to re-exported names (``twisted_lb.config.load_config``, or a bare
    ``load_config`` in a module docstring) to where this documentation describes them: under
    ``twisted_lb``.
    """
    if node.get("refdomain") != "py":
        return None
    parts = node["reftarget"].split(".")
    if parts[0] == "twisted_lb":
        parts = parts[1:]
        if parts and parts[0] not in twisted_lb.__all__:
            parts = parts[1:]  # a submodule name
    if not parts or parts[0] not in twisted_lb.__all__:
        return None
    target = ".".join(["twisted_lb", *parts])
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
