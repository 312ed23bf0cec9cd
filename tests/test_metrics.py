"""
Unit tests of the metrics: the data paths' counters and histograms, the collector that reads
them, and ``GET /metrics``; on a memory reactor with string transports, no sockets.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.test_tls import SITE_A, Files
from twisted_lb.backend import CONNECT_ERROR_REASONS, RETRY_REASONS, Backend, BackendState
from twisted_lb.config import parse_config
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.metrics import MetricsResource, backend_badge, metrics_registry
from twisted_lb.pool import DURATION_BUCKETS, DurationHistogram
from twisted_lb.service import LoadBalancerService
from twisted_lb.tcp import TCPRelayFactory
from twisted_lb.tls import ServerTLS

CLIENT = IPv4Address("TCP", "192.0.2.1", 5555)
GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FAILED = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"

CONFIG = """
[frontends.web]
mode = "http"
listen = ["tcp:0:interface=127.0.0.1"]
pool = "app"

[frontends.raw]
mode = "tcp"
listen = ["tcp:0:interface=127.0.0.2"]
pool = "app"
max_connections = 1

[pools.app]
strategy = "round_robin"
retries = 1
backends = [
  { address = "10.0.0.5:8080", name = "a" },
  { address = "10.0.0.6:8080", name = "b" },
]
"""


def samples(registry: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels, as parsed by prometheus_client."""
    from prometheus_client.exposition import generate_latest

    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


class HistogramTests(SynchronousTestCase):
    def test_buckets_are_upper_bounds(self) -> None:
        """
        A value is counted in the first bucket whose bound is >= it (Prometheus' ``le``);
        above every bound, in the last one; the sum adds every value.
        """
        histogram = DurationHistogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 1.0, 7.0, 8.0):
            histogram.observe(value)
        self.assertEqual(histogram.counts, [2, 2, 2])
        self.assertAlmostEqual(histogram.sum, 16.65)

    def test_default_buckets(self) -> None:
        """The default bounds are DURATION_BUCKETS, with one more, unbounded, bucket."""
        histogram = DurationHistogram()
        self.assertEqual(histogram.bounds, DURATION_BUCKETS)
        self.assertEqual(len(histogram.counts), len(DURATION_BUCKETS) + 1)

    def test_rejects_unordered_bounds(self) -> None:
        for bounds in ((), (1.0, 1.0), (2.0, 1.0)):
            with self.assertRaises(ValueError):
                DurationHistogram(bounds)


class CountersCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService.from_config(parse_config(CONFIG), self.reactor)
        self.pool = self.service.pools["app"]
        self.a, self.b = self.pool.backends
        http = self.service.factories["web"]
        tcp = self.service.factories["raw"]
        assert isinstance(http, HTTPProxyFactory) and isinstance(tcp, TCPRelayFactory)
        self.http, self.tcp = http, tcp
        self.registry = metrics_registry(self.service)

    def connect(self, factory: Any) -> tuple[Any, StringTransport]:
        protocol = factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def accept_upstream(self, index: int = -1) -> tuple[Any, StringTransport]:
        protocol = self.reactor.tcpClients[index][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse_upstream(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def exchange(self, response: bytes, wait: float = 0.0) -> StringTransport:
        """One GET on a new client connection, answered by a new upstream connection."""
        protocol, client = self.connect(self.http)
        protocol.dataReceived(GET)
        upstream, _ = self.accept_upstream()
        self.reactor.advance(wait)
        upstream.dataReceived(response)
        protocol.connectionLost(Failure(ConnectionDone()))
        return client


class HTTPCounterTests(CountersCase):
    def test_exchanges(self) -> None:
        """
        Each exchange counts its response by status class on the frontend and the backend,
        its bytes each way, and its duration and time to first byte on the pool.
        """
        first = self.exchange(OK, wait=0.003)
        second = self.exchange(FAILED, wait=0.2)
        self.assertEqual(self.http.responses, [0, 1, 0, 0, 1])
        self.assertEqual((self.a.responses, self.b.responses), ([0, 1, 0, 0, 0], [0, 0, 0, 0, 1]))
        self.assertEqual(self.http.bytes_in, 2 * len(GET))
        sent = len(first.value()) + len(second.value())
        self.assertEqual(self.http.bytes_out, sent)
        self.assertEqual(self.a.bytes_in, len(GET))
        self.assertEqual(self.a.bytes_out, len(first.value()))
        self.assertEqual(self.http.accepted_connections, 2)
        histogram = self.pool.request_seconds
        self.assertEqual(histogram.counts[DURATION_BUCKETS.index(0.005)], 1)
        self.assertEqual(histogram.counts[DURATION_BUCKETS.index(0.25)], 1)
        self.assertAlmostEqual(histogram.sum, 0.203)
        self.assertEqual(sum(self.pool.first_byte_seconds.counts), 2)

    def test_refused_connect_is_counted_and_retried(self) -> None:
        """
        A refused connection counts as a connect error with reason ``refused`` and as a
        ``connect_failed`` retry of the backend that refused; a 503 with no backend tried
        counts on the frontend only.
        """
        protocol, _ = self.connect(self.http)
        protocol.dataReceived(GET)
        self.refuse_upstream()
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        refused = CONNECT_ERROR_REASONS.index("refused")
        self.assertEqual(self.a.connect_errors[refused], 1)
        self.assertEqual(sum(self.a.connect_errors), self.a.connect_failures)
        self.assertEqual(self.a.retries[RETRY_REASONS.index("connect_failed")], 1)
        self.assertEqual(self.b.responses[1], 1)
        for backend in (self.a, self.b):
            self.pool.set_admin_state(backend, BackendState.MAINT)
        protocol.dataReceived(GET)
        self.assertEqual(self.http.responses, [0, 1, 0, 0, 1])
        self.assertEqual(self.a.responses[4] + self.b.responses[4], 0)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_refused_request_is_counted(self) -> None:
        """A request the parser refuses (400) counts as a 4xx response of the frontend."""
        protocol, client = self.connect(self.http)
        protocol.dataReceived(b"NOT HTTP\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400"))
        self.assertEqual(self.http.responses, [0, 0, 0, 1, 0])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(60)


class TCPCounterTests(CountersCase):
    def test_connection_bytes_and_refusal(self) -> None:
        """
        A relayed connection counts as accepted, its bytes on the frontend when it ends;
        one past max_connections counts as refused.
        """
        protocol, _ = self.connect(self.tcp)
        backend_side, _ = self.accept_upstream()
        refused, _ = self.connect(self.tcp)
        refused.connectionLost(Failure(ConnectionDone()))
        protocol.dataReceived(b"hello")
        backend_side.dataReceived(b"hi")
        self.assertEqual((self.tcp.bytes_in, self.tcp.bytes_out), (0, 0))
        protocol.connectionLost(Failure(ConnectionDone()))
        backend_side.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.tcp.bytes_in, self.tcp.bytes_out), (5, 2))
        self.assertEqual((self.a.bytes_in, self.a.bytes_out), (5, 2))
        self.assertEqual((self.tcp.accepted_connections, self.tcp.refused_connections), (1, 1))
        self.reactor.advance(120)


class CollectorTests(CountersCase):
    def test_series_read_the_live_objects(self) -> None:
        """A scrape shows the live counters, gauges and histograms under their labels."""
        self.exchange(OK, wait=0.003)
        self.exchange(FAILED)
        self.b.response_time.observe(0.25, self.reactor.seconds())
        self.pool.set_admin_state(self.a, BackendState.DRAINING)
        self.pool.set_healthy(self.b, False)
        self.a.health_checks_failed = 3
        self.b.ejections_total = 2
        scraped = samples(self.registry)
        web, app = {"frontend": "web"}, {"pool": "app"}
        a, b = {"pool": "app", "backend": "a"}, {"pool": "app", "backend": "b"}
        expected = {
            key("twisted_lb_frontend_connections_total", **web): 2,
            key("twisted_lb_frontend_connections_active", **web): 0,
            key("twisted_lb_frontend_connections_limit", frontend="raw"): 1,
            key("twisted_lb_frontend_requests_total", code="2xx", **web): 1,
            key("twisted_lb_frontend_requests_total", code="5xx", **web): 1,
            key("twisted_lb_frontend_received_bytes_total", **web): 2 * len(GET),
            key("twisted_lb_backend_requests_total", code="2xx", **a): 1,
            key("twisted_lb_backend_requests_total", code="5xx", **b): 1,
            key("twisted_lb_backend_requests_total", code="2xx", **b): 0,
            key("twisted_lb_backend_up", **a): 1,
            key("twisted_lb_backend_up", **b): 0,
            key("twisted_lb_backend_admin_state", state="drain", **a): 1,
            key("twisted_lb_backend_admin_state", state="ready", **a): 0,
            key("twisted_lb_backend_admin_state", state="ready", **b): 1,
            key("twisted_lb_backend_available", **a): 0,
            key("twisted_lb_backend_weight", **b): 1,
            key("twisted_lb_backend_effective_weight", **b): 1,
            key("twisted_lb_backend_response_time_ewma_seconds", **b): 0.25,
            key("twisted_lb_backend_health_checks_total", result="fail", **a): 3,
            key("twisted_lb_backend_ejections_total", **b): 2,
            key("twisted_lb_backend_connect_errors_total", reason="refused", **a): 0,
            key("twisted_lb_backend_retries_total", reason="stale_connection", **a): 0,
            key("twisted_lb_pool_backends", **app): 2,
            key("twisted_lb_pool_backends_available", **app): 0,
            key("twisted_lb_pool_request_duration_seconds_count", **app): 2,
            key("twisted_lb_pool_request_duration_seconds_bucket", le="0.001", **app): 1,
            key("twisted_lb_pool_request_duration_seconds_bucket", le="0.005", **app): 2,
            key("twisted_lb_pool_request_duration_seconds_bucket", le="+Inf", **app): 2,
            key("twisted_lb_pool_time_to_first_byte_seconds_count", **app): 2,
        }
        self.assertEqual({k: scraped.get(k) for k in expected}, expected)
        self.assertAlmostEqual(
            scraped[key("twisted_lb_pool_request_duration_seconds_sum", **app)], 0.003
        )
        self.assertIn(key("process_cpu_seconds_total"), scraped)
        self.assertIn("python_info", {name for name, _ in scraped})

    def test_tls_handshakes(self) -> None:
        """A frontend that terminates TLS has its handshake counters, by reason."""
        service = LoadBalancerService(self.reactor)
        server_tls = ServerTLS([Files(self.mktemp()).pair("a", SITE_A)])
        server_tls.handshake_counts.completed = 7
        server_tls.handshake_counts.failed["http_request"] = 2
        service.server_tls["secure"] = server_tls
        scraped = samples(metrics_registry(service))
        self.assertEqual(scraped[key("twisted_lb_tls_handshakes_total", frontend="secure")], 7)
        self.assertEqual(
            scraped[
                key(
                    "twisted_lb_tls_handshake_failures_total",
                    frontend="secure",
                    reason="http_request",
                )
            ],
            2,
        )

    def test_reloads(self) -> None:
        """
        The config generation and the reload counter follow applied reloads; a refused
        reload shows as last_successful 0, with its time.
        """
        scraped = samples(self.registry)
        self.assertEqual(scraped[key("twisted_lb_config_generation")], 1)
        self.assertEqual(scraped[key("twisted_lb_reloads_total")], 0)
        self.assertEqual(scraped[key("twisted_lb_reload_last_successful")], 1)
        self.reactor.advance(5)
        self.assertTrue(self.service.apply_config(parse_config(CONFIG)).ok)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[pools.app]\nbackends = 3\n")
        self.reactor.advance(5)
        self.assertFalse(self.service.reload(path).ok)
        scraped = samples(self.registry)
        self.assertEqual(scraped[key("twisted_lb_config_generation")], 2)
        self.assertEqual(scraped[key("twisted_lb_reloads_total")], 1)
        self.assertEqual(scraped[key("twisted_lb_reload_last_successful")], 0)
        self.assertEqual(scraped[key("twisted_lb_reload_last_timestamp_seconds")], 10)
        self.assertEqual(scraped[key("twisted_lb_start_time_seconds")], 0)
        self.reactor.advance(60)

    def test_registries_are_separate(self) -> None:
        """Each service has its own registry: two in one process do not collide."""
        other = metrics_registry(LoadBalancerService(self.reactor))
        self.assertNotIn(key("twisted_lb_pool_backends", pool="app"), samples(other))
        self.assertIn(key("twisted_lb_pool_backends", pool="app"), samples(self.registry))


class BadgeTests(SynchronousTestCase):
    def test_badges(self) -> None:
        """The operator's states come first, then health, ejection, slow start."""
        backend = Backend.from_address("10.0.0.1:80", weight=4)
        self.assertEqual(backend_badge(backend), "UP")
        backend.effective_weight = 1.0
        self.assertEqual(backend_badge(backend), "SLOW START")
        backend.ejected = True
        self.assertEqual(backend_badge(backend), "EJECTED")
        backend.healthy = False
        self.assertEqual(backend_badge(backend), "DOWN")
        backend.admin_state = BackendState.DRAINING
        self.assertEqual(backend_badge(backend), "DRAIN")
        backend.admin_state = BackendState.MAINT
        self.assertEqual(backend_badge(backend), "MAINT")


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        service = LoadBalancerService.from_config(parse_config(CONFIG), MemoryReactorClock())
        self.resource = MetricsResource(metrics_registry(service))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        request = DummyRequest([b""])
        if accept is not None:
            request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
        body = self.resource.render_GET(request)  # type: ignore[arg-type]
        [content_type] = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
        return body, content_type.decode()

    def test_prometheus_text_by_default(self) -> None:
        body, content_type = self.render(None)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        self.assertIn(b"# TYPE twisted_lb_backend_up gauge", body)
        self.assertNotIn(b"# EOF", body)

    def test_openmetrics_when_asked(self) -> None:
        """Prometheus' own Accept header gets OpenMetrics, which ends with ``# EOF``."""
        body, content_type = self.render(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))


class DashboardTests(CountersCase):
    def render(self, resource: Any, path: bytes) -> tuple[bytes, str]:
        from twisted.web.resource import getChildForRequest

        request = DummyRequest(path.split(b"/"))
        child = getChildForRequest(resource, request)
        body = child.render(request)
        [content_type] = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
        return body, content_type.decode()

    def test_stats(self) -> None:
        """stats.json carries the live counters, badges and last health-check failure."""
        import json

        from twisted_lb.dashboard import DashboardResource

        self.exchange(OK, wait=0.003)
        self.pool.set_healthy(self.b, False)
        self.b.last_check_failure = "connection refused in 0 ms"
        self.b.last_check_failure_at = 2.5
        resource = DashboardResource(self.service, token_required=True)
        body, content_type = self.render(resource, b"stats.json")
        self.assertEqual(content_type, "application/json")
        data = json.loads(body)
        self.assertTrue(data["token_required"])
        [web] = [f for f in data["frontends"] if f["name"] == "web"]
        self.assertEqual(
            (web["mode"], web["accepted"], web["requests"]), ("http", 1, [0, 1, 0, 0, 0])
        )
        [pool] = data["pools"]
        self.assertEqual(pool["strategy"], "round_robin")  # as the file names it
        self.assertEqual(pool["bounds"], list(DURATION_BUCKETS))
        self.assertEqual(sum(pool["duration"]), 1)
        a, b = pool["backends"]
        self.assertEqual((a["name"], a["badge"], a["requests"][1]), ("a", "UP", 1))
        self.assertEqual(
            (b["badge"], b["last_check_failure"], b["last_check_failure_at"]),
            ("DOWN", "connection refused in 0 ms", 2.5),
        )

    def test_assets(self) -> None:
        """The page, its script and its style sheet are served from the package."""
        from twisted_lb.dashboard import DashboardResource, dashboard_page

        page, page_type = self.render(dashboard_page(), b"")
        self.assertEqual(page_type, "text/html; charset=utf-8")
        self.assertIn(b'<script src="/dashboard/dashboard.js">', page)
        resource = DashboardResource(self.service, token_required=False)
        script, script_type = self.render(resource, b"dashboard.js")
        self.assertIn(b"/dashboard/stats.json", script)
        self.assertEqual(script_type, "text/javascript; charset=utf-8")
        css, css_type = self.render(resource, b"dashboard.css")
        self.assertIn(b".badge.DOWN", css)
        self.assertEqual(css_type, "text/css; charset=utf-8")
