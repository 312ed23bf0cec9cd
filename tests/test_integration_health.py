"""
Integration tests of health: a real ``twistd -n lb``, real backends on loopback, real clients.

Active checks (http and tcp), passive outlier ejection driven by real failing traffic, backups,
the operator's ``state`` key, and the answer when nothing is UP. The backends are the ``echo``
mode of ``tests/_backend.py``, whose ``/healthz`` status (and every other answer's status) is
switched with ``/_set?health=N`` and ``/_set?status=N`` sent to the backend directly.

Intervals are short (0.2-0.5 s) so each test takes a few seconds; every wait is bounded.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterable

from tests.test_integration_http import TIMEOUT, HTTPIntegrationCase, request


def health_config(
    ports: Iterable[int],
    *,
    mode: str = "http",
    backend_extra: dict[int, str] | None = None,
    pool_extra: str = "",
    health_check: str | None = None,
    outlier_detection: str | None = None,
) -> str:
    """
    A one-frontend config on an OS-chosen port with one pool, ``app``, of backends ``app1``,
    ``app2``, ... on ``ports``.

    Args:
        backend_extra: more ``key = value`` text for a backend's inline table, by its index.
        pool_extra: more ``key = value`` lines for ``[pools.app]``.
        health_check: the lines of ``[pools.app.health_check]``, or ``None`` for no checks.
        outlier_detection: the lines of ``[pools.app.outlier_detection]``, or ``None``.
    """
    extra = backend_extra or {}
    entries = []
    for index, port in enumerate(ports):
        more = f", {extra[index]}" if index in extra else ""
        entries.append(f'{{ address = "127.0.0.1:{port}"{more} }}')
    lines = [
        "[frontends.web]",
        f'mode = "{mode}"',
        'listen = ["tcp:0:interface=127.0.0.1"]',
        'pool = "app"',
        "[pools.app]",
        "connect_timeout = 2.0",
        pool_extra,
        f"backends = [{', '.join(entries)}]",
    ]
    if health_check is not None:
        lines += ["[pools.app.health_check]", health_check]
    if outlier_detection is not None:
        lines += ["[pools.app.outlier_detection]", outlier_detection]
    return "\n".join(lines) + "\n"


def set_backend(port: int, query: str) -> None:
    """Send ``/_set?QUERY`` to an echo backend directly."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        response, _ = request(connection, "GET", f"/_set?{query}")
        assert response.status == 200, response.status
    finally:
        connection.close()


class HealthCase(HTTPIntegrationCase):
    def echo_backends(self, count: int) -> list[int]:
        return [self.start_backend("echo", f"app{i + 1}")[1] for i in range(count)]

    def served_by(self, connection: http.client.HTTPConnection, count: int) -> list[str]:
        """The ``X-Backend`` of ``count`` requests through the balancer (200s only)."""
        names = []
        for _ in range(count):
            response, _ = request(connection, "GET", "/")
            self.assertEqual(response.status, 200)
            names.append(response.getheader("X-Backend") or "?")
        return names

    def wait_until_served_only_by(
        self, connection: http.client.HTTPConnection, names: set[str], limit: float
    ) -> float:
        """
        Send requests every 20 ms until 10 in a row are served by ``names`` only; return the
        seconds it took until the first of those 10.
        """
        start = time.monotonic()
        streak_start: float | None = None
        streak = 0
        while time.monotonic() - start < limit:
            now = time.monotonic()
            served = self.served_by(connection, 1)[0]
            if served in names:
                if streak == 0:
                    streak_start = now
                streak += 1
                if streak >= 10:
                    assert streak_start is not None
                    return streak_start - start
            else:
                streak = 0
            time.sleep(0.02)
        self.fail(f"not served by {sorted(names)} only within {limit} s")


class ActiveCheckTests(HealthCase):
    def test_failing_healthz_taken_out_and_back(self) -> None:
        """
        A backend whose ``/healthz`` turns 503 gets no new requests after about
        ``fall x interval + timeout``, and gets them again about ``rise x interval`` after it
        recovers; both transitions are logged with their reason.
        """
        app1, app2 = self.echo_backends(2)
        lb, port = self.start_lb(
            health_config(
                [app1, app2],
                health_check=(
                    'kind = "http"\npath = "/healthz"\ninterval = 0.5\ntimeout = 0.5\n'
                    "rise = 2\nfall = 3"
                ),
            )
        )
        client = self.client(port)
        self.assertEqual(set(self.served_by(client, 4)), {"app1", "app2"})

        set_backend(app1, "health=503")
        taken_out = self.wait_until_served_only_by(client, {"app2"}, limit=10)
        # Three failed checks, the first at most one interval (+10% jitter) after the switch:
        # between 2 x 0.45 s and 3 x 0.55 s + the check time; with slack for a busy machine.
        self.assertTrue(0.8 <= taken_out <= 4.0, taken_out)
        lb.wait_for(
            r"pool app: backend app1 DOWN after 3 failed checks \(last: HTTP 503 in \d+ ms\)"
        )
        self.assertEqual(set(self.served_by(client, 10)), {"app2"})

        set_backend(app1, "health=200")
        start = time.monotonic()
        lb.wait_for(
            r"pool app: backend app1 UP after 2 passed checks \(last: HTTP 200 in \d+ ms\)",
            timeout=10,
        )
        back = time.monotonic() - start
        self.assertTrue(0.4 <= back <= 3.0, back)
        self.assertEqual(set(self.served_by(client, 4)), {"app1", "app2"})

    def test_killed_backend_down_through_tcp_check(self) -> None:
        """
        A backend process that dies goes DOWN through the tcp check, and the balancer keeps
        answering from the other one.
        """
        first, app1 = self.start_backend("echo", "app1")
        _, app2 = self.start_backend("echo", "app2")
        lb, port = self.start_lb(
            health_config([app1, app2], health_check="interval = 0.3\ntimeout = 0.3\nfall = 2")
        )
        client = self.client(port)
        self.assertEqual(set(self.served_by(client, 4)), {"app1", "app2"})
        first.kill()
        lb.wait_for(
            r"pool app: backend app1 DOWN after 2 failed checks "
            r"\(last: connection refused in \d+ ms\)",
            timeout=10,
        )
        self.assertEqual(set(self.served_by(client, 10)), {"app2"})

    def test_down_at_start_up(self) -> None:
        """
        A backend that is not there at start-up goes DOWN after its first failed check, not
        after ``fall`` of them.
        """
        _, app1 = self.start_backend("echo", "app1")
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead = unused.getsockname()[1]
        lb, port = self.start_lb(
            health_config([app1, dead], health_check="interval = 5.0\nfall = 3")
        )
        lb.wait_for(
            r"pool app: backend app2 DOWN after its first check failed "
            r"\(last: connection refused in \d+ ms\)",
            timeout=5,
        )
        self.assertEqual(set(self.served_by(self.client(port), 6)), {"app1"})


class OutlierTests(HealthCase):
    def test_ejected_by_failing_traffic(self) -> None:
        """
        A backend that answers 500 to real requests is ejected after
        ``consecutive_failures`` of them (``count_5xx``), comes back on its own after
        ``base_ejection_time``, and is ejected for twice as long the next time.
        """
        app1, app2 = self.echo_backends(2)
        set_backend(app1, "status=500")
        lb, port = self.start_lb(
            health_config(
                [app1, app2],
                outlier_detection=(
                    "consecutive_failures = 3\nbase_ejection_time = 1.0\n"
                    "max_ejection_percent = 50\ncount_5xx = true"
                ),
            )
        )
        client = self.client(port)
        statuses = []
        for _ in range(20):
            response, _ = request(client, "GET", "/")
            statuses.append((response.status, response.getheader("X-Backend")))
        # Round robin: requests 1, 3 and 5 reach app1 and fail; then it is out.
        self.assertEqual(statuses.count((500, "app1")), 3, statuses)
        self.assertEqual(statuses[6:], [(200, "app2")] * 14)
        lb.wait_for(
            r"pool app: backend app1 ejected for 1 s after 3 consecutive failures "
            r"\(last: HTTP 500\); ejection 1 in a row"
        )
        lb.wait_for(r"pool app: backend app1 back from ejection", timeout=5)
        for _ in range(8):
            request(client, "GET", "/")
        lb.wait_for(r"backend app1 ejected for 2 s after 3 consecutive failures", timeout=5)

    def test_passing_check_ends_the_ejection(self) -> None:
        """
        A backend ejected for 30 s by failing traffic is back at its next passing active
        check (Envoy's default); with ``uneject_on_passing_check = false`` it stays out.
        """
        (backend1, app1), (_, app2) = (self.start_backend("echo", f"app{i}") for i in (1, 2))
        set_backend(app1, "status=500")  # real requests fail; /healthz still answers 200
        outliers = "consecutive_failures = 2\nbase_ejection_time = 30.0\ncount_5xx = true"
        healthz = r"REQUEST \d+ GET /healthz"
        check = 'kind = "http"\npath = "/healthz"\ninterval = 0.3\nrise = 1'
        for uneject, line in (
            ("", r"backend app1 back from ejection: passed its health check \(HTTP 200 in"),
            ("\nuneject_on_passing_check = false", None),
        ):
            lb, port = self.start_lb(
                health_config(
                    [app1, app2], health_check=check, outlier_detection=outliers + uneject
                )
            )
            client = self.client(port)
            for _ in range(4):
                request(client, "GET", "/")
            lb.wait_for(r"backend app1 ejected for 30 s after 2 consecutive failures")
            if line is not None:
                lb.wait_for(line, timeout=5)
            else:
                # Three checks after the ejection, which pass, and it is still out.
                backend1.count(healthz, backend1.count(healthz) + 3, timeout=10)
                self.assertNotIn("back from ejection", lb.output())
                self.assertEqual(set(self.served_by(client, 4)), {"app2"})
            lb.stop()

    def test_connect_failures_eject(self) -> None:
        """
        Refused connections count as failures: with a dead backend and no active checks,
        requests are retried on the other backend and the dead one is ejected.
        """
        first, app1 = self.start_backend("echo", "app1")
        _, app2 = self.start_backend("echo", "app2")
        first.kill()
        lb, port = self.start_lb(
            health_config(
                [app1, app2],
                outlier_detection="consecutive_failures = 2\nbase_ejection_time = 30.0",
            )
        )
        client = self.client(port)
        self.assertEqual(set(self.served_by(client, 10)), {"app2"})
        lb.wait_for(r"backend app1 ejected for 30 s after 2 consecutive failures")
        self.assertEqual(len(lb.output().split("connect to backend app1")), 3)


class AvailabilityTests(HealthCase):
    def test_all_down_answers_503_at_once(self) -> None:
        """With every backend DOWN, a request is answered 503 in well under 100 ms."""
        first, app1 = self.start_backend("echo", "app1")
        second, app2 = self.start_backend("echo", "app2")
        lb, port = self.start_lb(
            health_config([app1, app2], health_check="interval = 0.2\ntimeout = 0.2\nfall = 1")
        )
        first.kill()
        second.kill()
        for name in ("app1", "app2"):
            lb.wait_for(rf"backend {name} DOWN after", timeout=5)
        for _ in range(3):
            start = time.monotonic()
            response, data = request(self.client(port), "GET", "/")
            elapsed = time.monotonic() - start
            self.assertEqual((response.status, data), (503, b"503 Service Unavailable\n"))
            self.assertLess(elapsed, 0.1)

    def test_all_down_tcp_closes_at_once(self) -> None:
        """In tcp mode, with every backend DOWN, a client is closed at once."""
        first, app1 = self.start_backend("echo", "app1")
        lb, port = self.start_lb(
            health_config([app1], mode="tcp", health_check="interval = 0.2\nfall = 1")
        )
        first.kill()
        lb.wait_for(r"backend app1 DOWN after", timeout=5)
        start = time.monotonic()
        sock = self.connect(port)
        self.assertEqual(sock.recv(1024), b"")
        self.assertLess(time.monotonic() - start, 0.1)

    def test_backups_take_over_and_hand_back(self) -> None:
        """
        A backup serves only while the primary is DOWN, and hands back when it is UP again.
        """
        primary, backup = self.echo_backends(2)
        lb, port = self.start_lb(
            health_config(
                [primary, backup],
                backend_extra={1: "backup = true"},
                health_check=(
                    'kind = "http"\npath = "/healthz"\ninterval = 0.2\ntimeout = 0.5\n'
                    "rise = 1\nfall = 1"
                ),
            )
        )
        client = self.client(port)
        self.assertEqual(set(self.served_by(client, 6)), {"app1"})
        set_backend(primary, "health=503")
        self.wait_until_served_only_by(client, {"app2"}, limit=5)
        set_backend(primary, "health=200")
        self.wait_until_served_only_by(client, {"app1"}, limit=5)
        self.assertIn("backend app1 UP after 1 passed check", lb.output())

    def test_drain_and_maint_states(self) -> None:
        """Backends with ``state = "drain"`` or ``"maint"`` in the config get no requests."""
        ports = self.echo_backends(3)
        _, port = self.start_lb(
            health_config(ports, backend_extra={1: 'state = "drain"', 2: 'state = "maint"'})
        )
        self.assertEqual(set(self.served_by(self.client(port), 6)), {"app1"})
