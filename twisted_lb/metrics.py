"""
Prometheus metrics of a running balancer, served as ``GET /metrics`` on the admin listener.

The data paths only add to plain integer attributes of the live objects (frontend factories,
pools, backends, TLS terminations; see :class:`~twisted_lb.Backend` and :class:`~twisted_lb.Pool`).
:class:`LoadBalancerCollector` reads them when Prometheus scrapes, so a scrape costs the data
path nothing, and a reload that replaces objects is seen at the next scrape. Rendering is
``prometheus_client``'s: the Prometheus text format, or OpenMetrics when the ``Accept``
header asks for it (``prometheus_client.exposition.choose_encoder``).

Every series is listed in ``docs/metrics.rst``. Names follow Prometheus' naming practice
(https://prometheus.io/docs/practices/naming/): the ``twisted_lb_`` prefix, base units
(seconds, bytes), ``_total`` for counters. Labels are ``frontend``, ``pool``, ``backend``,
a status class ``code`` (``1xx`` .. ``5xx``, as HAProxy's exporter does), and small fixed
``reason``/``result``/``state`` sets: no per-path or per-client label, so the number of
series is bounded by the config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Request

from twisted_lb import __version__
from twisted_lb.backend import CONNECT_ERROR_REASONS, RETRY_REASONS, Backend, BackendState
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.pool import DurationHistogram, Pool
from twisted_lb.tls import ServerTLS

if TYPE_CHECKING:
    from twisted_lb.config import Config

__all__ = [
    "STATUS_CLASSES",
    "LoadBalancerCollector",
    "MetricsResource",
    "Observed",
    "backend_badge",
    "metrics_registry",
]

#: The values of the ``code`` label: HTTP status classes, indexed as the counters are.
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

#: A backend's ``admin_state`` as the ``state`` label, in the config's and the API's words.
ADMIN_STATES = {
    BackendState.UP: "ready",
    BackendState.DRAINING: "drain",
    BackendState.MAINT: "maint",
}

_PREFIX = "twisted_lb_"


class Observed(Protocol):
    """
    What the metrics and the dashboard read of a
    :class:`~twisted_lb.service.LoadBalancerService`: its live objects, by name, and its
    reload state.
    """

    @property
    def reactor(self) -> Any: ...
    @property
    def factories(self) -> Mapping[str, Any]: ...
    @property
    def server_tls(self) -> Mapping[str, ServerTLS]: ...
    @property
    def pools(self) -> Mapping[str, Pool]: ...
    @property
    def generation(self) -> int: ...
    @property
    def started(self) -> float: ...
    @property
    def last_reload(self) -> Any: ...
    @property
    def config(self) -> Config: ...


def strategy_name(service: Observed, pool: Pool) -> str:
    """
    The name of ``pool``'s strategy as the config file writes it (``"round_robin"``, the
    plugin's name), for the admin API and the dashboard; for a pool the config does not have
    (built in code), its strategy's class name.
    """
    configured = service.config.pools.get(pool.name)
    return configured.strategy if configured is not None else type(pool.strategy).__name__


def backend_badge(backend: Backend) -> str:
    """
    The one word the dashboard shows for a backend, most important first: ``MAINT`` or
    ``DRAIN`` (the operator's), ``DOWN`` (its health checks), ``EJECTED`` (outlier
    detection), ``SLOW START`` (back in rotation at a reduced effective weight), else ``UP``.
    """
    if backend.admin_state is BackendState.MAINT:
        return "MAINT"
    if backend.admin_state is BackendState.DRAINING:
        return "DRAIN"
    if not backend.healthy:
        return "DOWN"
    if backend.ejected:
        return "EJECTED"
    if backend.effective_weight < backend.weight:
        return "SLOW START"
    return "UP"


def _histogram(
    name: str, documentation: str, label: str, rows: list[tuple[str, DurationHistogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, histogram in rows:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        buckets.append(("+Inf", cumulative + histogram.counts[-1]))
        family.add_metric([value], buckets, histogram.sum)
    return family


class LoadBalancerCollector:
    """
    A ``prometheus_client`` collector of one
    :class:`~twisted_lb.service.LoadBalancerService`:
    each :meth:`collect` reads the service's frontends, TLS terminations, pools and backends
    as they are at that moment.

    Args:
        service: the balancer whose live objects are read.
    """

    def __init__(self, service: Observed) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        """Every series of the balancer (not the process ones), read now."""
        yield from self._info()
        yield from self._reloads()
        yield from self._frontends()
        yield from self._pools()
        yield from self._backends()

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            _PREFIX + "build_info", "Always 1; the version of twisted-lb.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info

    def _reloads(self) -> Iterator[Metric]:
        service = self.service
        last = service.last_reload
        started = GaugeMetricFamily(
            _PREFIX + "start_time_seconds",
            "When the balancer started, in seconds since the epoch.",
            value=service.started,
        )
        generation = GaugeMetricFamily(
            _PREFIX + "config_generation",
            "The config generation in force: 1 at start, +1 per applied reload.",
            value=service.generation,
        )
        reloads = CounterMetricFamily(
            _PREFIX + "reloads",
            "Reloads applied since the start (a refused one changes nothing and is not counted; "
            "see twisted_lb_reload_last_successful).",
            value=service.generation - 1,
        )
        successful = GaugeMetricFamily(
            _PREFIX + "reload_last_successful",
            "0 if the last reload attempt was refused (its file is invalid), else 1.",
            value=1 if last is None or last.ok else 0,
        )
        at = GaugeMetricFamily(
            _PREFIX + "reload_last_timestamp_seconds",
            "When the last reload was attempted, in seconds since the epoch; the start time "
            "before any.",
            value=service.started if last is None else last.at,
        )
        yield from (started, generation, reloads, successful, at)

    def _frontends(self) -> Iterator[Metric]:
        service = self.service
        accepted = CounterMetricFamily(
            _PREFIX + "frontend_connections",
            "Client connections accepted by the frontend.",
            labels=["frontend"],
        )
        refused = CounterMetricFamily(
            _PREFIX + "frontend_connections_refused",
            "Client connections closed at once because max_connections were open.",
            labels=["frontend"],
        )
        active = GaugeMetricFamily(
            _PREFIX + "frontend_connections_active",
            "Client connections open now.",
            labels=["frontend"],
        )
        limit = GaugeMetricFamily(
            _PREFIX + "frontend_connections_limit",
            "The frontend's max_connections.",
            labels=["frontend"],
        )
        received = CounterMetricFamily(
            _PREFIX + "frontend_received_bytes",
            "Bytes received from clients, counted when a connection (tcp) or an exchange "
            "(http) ends.",
            labels=["frontend"],
        )
        sent = CounterMetricFamily(
            _PREFIX + "frontend_sent_bytes",
            "Bytes sent to clients, counted when a connection (tcp) or an exchange (http) ends.",
            labels=["frontend"],
        )
        requests = CounterMetricFamily(
            _PREFIX + "frontend_requests",
            "HTTP responses sent to clients by status class, the balancer's own errors included.",
            labels=["frontend", "code"],
        )
        for name, factory in service.factories.items():
            labels = [name]
            accepted.add_metric(labels, factory.accepted_connections)
            refused.add_metric(labels, factory.refused_connections)
            active.add_metric(labels, factory.active_connections)
            limit.add_metric(labels, factory.max_connections)
            received.add_metric(labels, factory.bytes_in)
            sent.add_metric(labels, factory.bytes_out)
            if isinstance(factory, HTTPProxyFactory):
                for code, count in zip(STATUS_CLASSES, factory.responses, strict=True):
                    requests.add_metric([name, code], count)
        handshakes = CounterMetricFamily(
            _PREFIX + "tls_handshakes",
            "TLS handshakes with clients completed by the frontend.",
            labels=["frontend"],
        )
        failures = CounterMetricFamily(
            _PREFIX + "tls_handshake_failures",
            "TLS handshakes with clients that failed, by OpenSSL's reason, or closed when "
            "the connection ended first.",
            labels=["frontend", "reason"],
        )
        for name, server_tls in service.server_tls.items():
            counts = server_tls.handshake_counts
            handshakes.add_metric([name], counts.completed)
            for reason, count in sorted(counts.failed.items()):
                failures.add_metric([name, reason], count)
        yield from (accepted, refused, active, limit, received, sent, requests)
        yield from (handshakes, failures)

    def _pools(self) -> Iterator[Metric]:
        pools = self.service.pools
        available = GaugeMetricFamily(
            _PREFIX + "pool_backends_available",
            "Backends of the pool that may be picked now: UP and not ejected.",
            labels=["pool"],
        )
        backends = GaugeMetricFamily(
            _PREFIX + "pool_backends", "Backends of the pool.", labels=["pool"]
        )
        for name, pool in pools.items():
            available.add_metric([name], sum(1 for b in pool.backends if b.available))
            backends.add_metric([name], len(pool.backends))
        yield available
        yield backends
        yield _histogram(
            _PREFIX + "pool_request_duration_seconds",
            "HTTP request duration, from the request's first byte to the end of its response.",
            "pool",
            [(name, pool.request_seconds) for name, pool in pools.items()],
        )
        yield _histogram(
            _PREFIX + "pool_time_to_first_byte_seconds",
            "HTTP time to first byte, from the request's first byte to the backend's first "
            "response byte.",
            "pool",
            [(name, pool.first_byte_seconds) for name, pool in pools.items()],
        )

    def _backends(self) -> Iterator[Metric]:
        labels = ["pool", "backend"]

        def gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(_PREFIX + name, documentation, labels=[*labels, *extra])

        def counter(
            name: str, documentation: str, extra: tuple[str, ...] = ()
        ) -> CounterMetricFamily:
            return CounterMetricFamily(_PREFIX + name, documentation, labels=[*labels, *extra])

        up = gauge("backend_up", "1 if the backend passes its health checks, else 0.")
        admin = gauge(
            "backend_admin_state",
            "1 for the backend's administrative state (ready, drain, maint), 0 for the others.",
            ("state",),
        )
        ejected = gauge("backend_ejected", "1 while outlier detection has ejected the backend.")
        available = gauge(
            "backend_available", "1 if the backend may be picked now: UP and not ejected."
        )
        active = gauge(
            "backend_connections_active",
            "Leases held on the backend now: client connections (tcp), requests (http).",
        )
        leases = counter(
            "backend_connections",
            "Leases taken on the backend: connections (tcp), requests (http).",
        )
        in_flight = gauge(
            "backend_requests_in_flight", "HTTP requests sent to the backend and not answered."
        )
        requests = counter(
            "backend_requests",
            "HTTP responses from the backend by status class.",
            ("code",),
        )
        ewma = gauge(
            "backend_response_time_ewma_seconds",
            "Peak EWMA of the backend's HTTP response time (what least_time reads).",
        )
        weight = gauge("backend_weight", "The backend's configured weight.")
        effective = gauge(
            "backend_effective_weight",
            "The weight strategies use: below the weight during slow start.",
        )
        sent = counter("backend_sent_bytes", "Bytes relayed from clients to the backend.")
        received = counter("backend_received_bytes", "Bytes relayed from the backend to clients.")
        connect_errors = counter(
            "backend_connect_errors",
            "Failed connection attempts to the backend, by reason.",
            ("reason",),
        )
        retries = counter(
            "backend_retries",
            "Retries after a failure of the backend, by reason.",
            ("reason",),
        )
        ejections = counter("backend_ejections", "Times outlier detection ejected the backend.")
        checks = counter(
            "backend_health_checks",
            "Active health check probes of the backend, by result (pass, fail).",
            ("result",),
        )
        now = self.service.reactor.seconds()
        for pool_name, pool in self.service.pools.items():
            for backend in pool.backends:
                ids = [pool_name, backend.name]
                up.add_metric(ids, 1 if backend.healthy else 0)
                for state, word in ADMIN_STATES.items():
                    admin.add_metric([*ids, word], 1 if backend.admin_state is state else 0)
                ejected.add_metric(ids, 1 if backend.ejected else 0)
                available.add_metric(ids, 1 if backend.available else 0)
                active.add_metric(ids, backend.active_connections)
                leases.add_metric(ids, backend.total_connections)
                in_flight.add_metric(ids, backend.in_flight_requests)
                for code, count in zip(STATUS_CLASSES, backend.responses, strict=True):
                    requests.add_metric([*ids, code], count)
                ewma.add_metric(ids, backend.response_time.value(now))
                weight.add_metric(ids, backend.weight)
                effective.add_metric(ids, backend.effective_weight)
                sent.add_metric(ids, backend.bytes_in)
                received.add_metric(ids, backend.bytes_out)
                errors = backend.connect_errors
                for reason, count in zip(CONNECT_ERROR_REASONS, errors, strict=True):
                    connect_errors.add_metric([*ids, reason], count)
                for reason, count in zip(RETRY_REASONS, backend.retries, strict=True):
                    retries.add_metric([*ids, reason], count)
                ejections.add_metric(ids, backend.ejections_total)
                checks.add_metric([*ids, "pass"], backend.health_checks_passed)
                checks.add_metric([*ids, "fail"], backend.health_checks_failed)
        yield from (up, admin, ejected, available, active, leases, in_flight, requests, ewma)
        yield from (weight, effective, sent, received, connect_errors, retries, ejections, checks)


def metrics_registry(service: Observed) -> CollectorRegistry:
    """
    A registry of its own for one balancer (not ``prometheus_client``'s global one): the
    balancer's :class:`LoadBalancerCollector`, and ``prometheus_client``'s process collector
    (CPU seconds, memory, open files, start time: ``process_*``) and platform collector
    (``python_info``).
    """
    registry = CollectorRegistry()
    registry.register(LoadBalancerCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """
    ``GET /metrics``: the registry in the Prometheus text format (``text/plain;
    version=0.0.4``), or in OpenMetrics (``application/openmetrics-text``) when the request's
    ``Accept`` header asks for it, as Prometheus does when it scrapes.

    Args:
        registry: what to render, from :func:`metrics_registry`.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept")
        encoder, content_type = choose_encoder(accept or "")
        output = encoder(self.registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return output
