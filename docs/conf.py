"""
Sphinx configuration for the twisted-lb documentation.

Build with ``sphinx-build -n -W -b html docs docs/_build/html`` (as ``.ci/run`` does); no network
is needed.
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
# Interfaces), and strategy_list, the installed-strategies directive (the strategy plugins).
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "_ext")))

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "zope_interfaces",
    "strategy_list",
]

# Links to Python's and Twisted's documentation, from inventories that need no network (the
# build runs where only the package registries are reachable):
# - Python's: docs/_inventories/python.inv, the objects.inv of Debian's python3.11-doc
#   package (3.11.2; /usr/share/doc/python3.11/html/objects.inv), as docs.python.org has it.
# - Twisted's: made from the installed Twisted's source by _ext/twisted_inventory.py, once per
#   Twisted version, into _build/ (not committed).
from twisted_inventory import TWISTED_API, write_inventory  # noqa: E402

import twisted  # noqa: E402

_here = os.path.dirname(os.path.abspath(__file__))
_twisted_inventory = os.path.join(
    _here, "_build", "inventories", f"twisted-{twisted.__version__}.inv"
)
if not os.path.exists(_twisted_inventory):
    from pathlib import Path

    write_inventory(
        Path(_twisted_inventory), Path(os.path.dirname(twisted.__file__)), twisted.__version__
    )
intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11/", os.path.join(_here, "_inventories", "python.inv")),
    "twisted": (TWISTED_API, _twisted_inventory),
}

# sphinx-build -n (nitpicky) reports every reference that does not resolve. Names of the
# libraries without an inventory here (attrs, zope.interface, pyOpenSSL, cryptography,
# service_identity, httptools: their docs are on their own sites, out of reach of the build)
# are not reported; everything else must resolve.
nitpicky = True
# Private modules (twisted_lb._address, ...) are not in the API reference either.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(attr|attrs|zope|OpenSSL|cryptography|service_identity|httptools|prometheus_client)"
        r"(\..*)?",
    ),
    (r"py:.*", r"twisted_lb(\.\w+)*\._\w+(\..*)?"),
    # An alias in a union (``clock: IReactorTime | None``) comes out of autodoc as a
    # TypeAliasForwardRef and a quoted name, which cannot link; the name is still shown.
    (r"py:class", r"TypeAliasForwardRef|'twisted\.internet\.interfaces\.\w+'"),
    (r"py:class", r"CollectorRegistry"),  # prometheus_client has no inventory here
]

exclude_patterns = ["_build", "_ext"]
root_doc = "index"

html_theme = "alabaster"
html_static_path: list[str] = []

# Docstrings are Google style, read by napoleon; types come from the annotations. Attributes
# sections become attribute entries (napoleon_use_ivar off), so :attr: references find them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# zope Interfaces used in annotations: keep their names instead of the InterfaceClass repr.
autodoc_type_aliases = {
    "IAddress": "twisted.internet.interfaces.IAddress",
    "IStreamClientEndpoint": "twisted.internet.interfaces.IStreamClientEndpoint",
    "IStreamServerEndpoint": "twisted.internet.interfaces.IStreamServerEndpoint",
    "IProtocolFactory": "twisted.internet.interfaces.IProtocolFactory",
    "IReactorTime": "twisted.internet.interfaces.IReactorTime",
    "IBalancingStrategy": "twisted_lb.interfaces.IBalancingStrategy",
    "IStrategyFactory": "twisted_lb.interfaces.IStrategyFactory",
}
# Names that annotations (strings, with ``from __future__ import annotations``) leave
# unqualified where autodoc does not apply the aliases above (attribute types): the full
# name each stands for, so that they link.
_SHORT_NAMES = {
    **autodoc_type_aliases,
    "Clock": "twisted.internet.task.Clock",
    "Site": "twisted.web.server.Site",
    "CollectorRegistry": "prometheus_client.registry.CollectorRegistry",
    "IReactorTime": "twisted.internet.interfaces.IReactorTime",
    "IReactorTCP": "twisted.internet.interfaces.IReactorTCP",
    "IReactorCore": "twisted.internet.interfaces.IReactorCore",
    "IDelayedCall": "twisted.internet.interfaces.IDelayedCall",
    # Twisted's API pages document Logger where it is defined.
    "Logger": "twisted.logger._logger.Logger",
    "PeakEWMA": "twisted_lb.backend.PeakEWMA",
    "EndpointFactory": "twisted_lb.health.EndpointFactory",
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


def _qualify_short_name(app, env, node, contnode):
    """
    Give an unqualified annotation name its full name (:data:`_SHORT_NAMES`) and let the
    handlers after this one (intersphinx, :func:`_resolve_reexport`) resolve it.
    """
    full = _SHORT_NAMES.get(node.get("reftarget", ""))
    if node.get("refdomain") == "py" and full is not None:
        node["reftarget"] = full
        domain = env.get_domain("py")
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
        )
    return None


def setup(app):
    app.connect("missing-reference", _qualify_short_name, priority=400)
    app.connect("missing-reference", _resolve_reexport)
