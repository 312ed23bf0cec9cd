"""
The live stats dashboard of the admin listener: one page (``GET /``), its script and style
sheet (``GET /dashboard/dashboard.js``, ``/dashboard/dashboard.css``) and the JSON it polls
every second (``GET /dashboard/stats.json``).

The page is plain HTML, CSS and JavaScript shipped in this package: no build step, no CDN,
it works offline. It shows frontends, pools and backends with a state badge per backend
(UP, DOWN, DRAIN, MAINT, EJECTED, SLOW START, see :func:`twisted_lb.metrics.backend_badge`),
request and 5xx rates, p50/p99 from the pools' histograms, active connections and the reason
of each backend's last failed health check. Rates and percentiles are computed in the page
from the counters of successive snapshots, over the last 10 seconds, as Prometheus'
``rate()`` and ``histogram_quantile()`` would. With the admin token entered (kept in the
browser's ``sessionStorage``), or when the admin listener needs none, each backend row has
drain and ready buttons that call the admin API's
``PATCH /api/v1/pools/{pool}/backends/{backend}``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from twisted_lb import __version__
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.metrics import Observed, backend_badge, strategy_name

__all__ = ["DashboardResource", "dashboard_page", "stats"]

_ASSETS = {
    b"dashboard.js": "text/javascript; charset=utf-8",
    b"dashboard.css": "text/css; charset=utf-8",
}


class _Asset(Resource):
    """One file of this package, read once, served as it is."""

    isLeaf = True

    def __init__(self, name: str, content_type: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.data = files(__name__).joinpath(name).read_bytes()
        self.content_type = content_type.encode("ascii")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.data


def dashboard_page() -> Resource:
    """``GET /``: the dashboard's HTML page."""
    return _Asset("index.html", "text/html; charset=utf-8")


def stats(service: Observed, *, token_required: bool) -> dict[str, Any]:
    """
    What the dashboard shows, read from the live objects now (JSON-able).

    Returns:
        ``{"version", "time" (s, the reactor's clock), "token_required", "frontends": [...],
        "pools": [...]}``. Each frontend: ``name``, ``mode``, ``active``, ``accepted``,
        ``refused``, ``limit``, ``requests`` (5 counts, 1xx..5xx), ``bytes_in``,
        ``bytes_out``. Each pool: ``name``, ``strategy``, ``bounds`` (the histogram
        buckets' upper bounds, s), ``duration`` and ``first_byte`` (counts per bucket, one
        more than ``bounds``), ``backends``. Each backend: ``name``, ``address``, ``badge``,
        ``backup``, ``weight``, ``effective_weight``, ``active``, ``in_flight``,
        ``requests`` (5 counts), ``connect_errors``, ``ewma`` (s), ``last_check_failure``
        and ``last_check_failure_at`` (s, 0 for never).
    """
    now = service.reactor.seconds()
    frontends = [
        {
            "name": name,
            "mode": "http" if isinstance(factory, HTTPProxyFactory) else "tcp",
            "active": factory.active_connections,
            "accepted": factory.accepted_connections,
            "refused": factory.refused_connections,
            "limit": factory.max_connections,
            "requests": list(factory.responses),
            "bytes_in": factory.bytes_in,
            "bytes_out": factory.bytes_out,
        }
        for name, factory in service.factories.items()
    ]
    pools = [
        {
            "name": name,
            "strategy": strategy_name(service, pool),
            "bounds": list(pool.request_seconds.bounds),
            "duration": list(pool.request_seconds.counts),
            "first_byte": list(pool.first_byte_seconds.counts),
            "backends": [
                {
                    "name": backend.name,
                    "address": str(backend.address),
                    "badge": backend_badge(backend),
                    "backup": backend.backup,
                    "weight": backend.weight,
                    "effective_weight": backend.effective_weight,
                    "active": backend.active_connections,
                    "in_flight": backend.in_flight_requests,
                    "requests": list(backend.responses),
                    "connect_errors": backend.connect_failures,
                    "ewma": backend.response_time.value(now),
                    "last_check_failure": backend.last_check_failure,
                    "last_check_failure_at": backend.last_check_failure_at,
                }
                for backend in pool.backends
            ],
        }
        for name, pool in service.pools.items()
    ]
    return {
        "version": __version__,
        "time": now,
        "token_required": token_required,
        "frontends": frontends,
        "pools": pools,
    }


class _Stats(Resource):
    isLeaf = True

    def __init__(self, service: Observed, token_required: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service
        self.token_required = token_required

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        data = stats(self.service, token_required=self.token_required)
        return json.dumps(data, separators=(",", ":")).encode()


class DashboardResource(Resource):
    """
    ``/dashboard/``: the page's script and style sheet, and ``stats.json`` (see
    :func:`stats`). Mounted beside the page (:func:`dashboard_page`) on the admin root, so a
    ``GET`` of ``/dashboard`` or ``/dashboard/`` itself is answered ``302 Found`` to the page
    (a relative ``Location``, RFC 9110 §10.2.2, so the redirect holds wherever both are
    mounted), as nginx answers a directory's name with its index.

    Args:
        service: the balancer whose live objects are shown.
        token_required: whether the admin API's mutating calls need the bearer token; the
            page then shows its drain/ready buttons only once a token is entered.
    """

    def __init__(self, service: Observed, *, token_required: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        for name, content_type in _ASSETS.items():
            self.putChild(name, _Asset(name.decode(), content_type))
        self.putChild(b"stats.json", _Stats(service, token_required))
        self.putChild(b"", _ToPage(b"../"))

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()

    def render_GET(self, request: Request) -> bytes:
        return _ToPage(b"./").render_GET(request)


class _ToPage(Resource):
    """A 302 to ``location``, the page relative to where this resource is."""

    isLeaf = True

    def __init__(self, location: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.location = location

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", self.location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"the dashboard is at " + self.location + b"\n"
