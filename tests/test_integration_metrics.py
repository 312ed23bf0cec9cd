"""
Integration tests of ``GET /metrics``: a real ``twistd -n lb`` with an admin listener, real echo
backends on loopback, real clients; the scrape is parsed with ``prometheus_client``'s parsers
and checked with ``promtool`` (Debian's ``prometheus`` package).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests._harness import Process
from tests.test_integration_health import health_config
from tests.test_integration_http import TIMEOUT, HTTPIntegrationCase, request

HERE = Path(__file__).parent
EXAMPLES = HERE.parent / "examples"

#: A health check that takes a dead backend DOWN within about a second.
FAST_CHECK = 'kind = "http"\npath = "/healthz"\ninterval = 0.2\ntimeout = 0.5\nrise = 1\nfall = 2'

OPENMETRICS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def admin_config(ports: list[int]) -> str:
    return health_config(ports, health_check=FAST_CHECK) + (
        # (a different endpoint string from the frontend's, as the config requires)
        '[admin]\nlisten = ["tcp:0:interface=127.0.0.1:backlog=20"]\n'
    )


class MetricsCase(HTTPIntegrationCase):
    backend_processes: dict[str, Process]

    def start(self, count: int) -> tuple[list[int], int, int]:
        """``count`` echo backends behind a balancer; returns their ports, its port, its admin's."""
        self.backend_processes = {}
        ports = []
        for index in range(count):
            name = f"app{index + 1}"
            process, backend_port = self.start_backend("echo", name)
            self.backend_processes[name] = process
            ports.append(backend_port)
        lb, port = self.start_lb(admin_config(ports))
        self.lb = lb
        admin = int(lb.wait_for(r"admin API listening on 127\.0\.0\.1:(\d+)").group(1))
        return ports, port, admin

    def scrape(self, admin: int, accept: str | None = None) -> tuple[str, str]:
        """One ``GET /metrics``; returns its body and content type."""
        connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=TIMEOUT)
        try:
            response, body = request(
                connection, "GET", "/metrics", headers={"Accept": accept} if accept else {}
            )
            self.assertEqual(response.status, 200)
            return body.decode(), response.getheader("Content-Type") or ""
        finally:
            connection.close()


class ScrapeTests(MetricsCase):
    def test_counts_follow_traffic(self) -> None:
        """
        Scrapes during traffic parse; afterwards N requests have raised requests_total by N,
        split by backend as round_robin chose (exactly N/3 each), and the pool's histogram
        counted each of them.
        """
        _ports, port, admin = self.start(3)
        before = parse(self.scrape(admin)[0])
        total = 60
        errors: list[BaseException] = []

        def traffic() -> None:
            try:
                client = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
                for _ in range(total):
                    response, _ = request(client, "GET", "/")
                    assert response.status == 200, response.status
                client.close()
            except BaseException as e:
                errors.append(e)

        sender = threading.Thread(target=traffic)
        sender.start()
        scrapes = 0
        deadline = time.monotonic() + 30
        while sender.is_alive() and time.monotonic() < deadline:
            parse(self.scrape(admin)[0])
            scrapes += 1
        sender.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(scrapes, 0)
        after = parse(self.scrape(admin)[0])

        def rise(name: str, **labels: str) -> float:
            return after[key(name, **labels)] - before.get(key(name, **labels), 0.0)

        for name in ("app1", "app2", "app3"):
            self.assertEqual(
                rise("twisted_lb_backend_requests_total", pool="app", backend=name, code="2xx"),
                total / 3,
                name,
            )
        self.assertEqual(rise("twisted_lb_frontend_requests_total", frontend="web", code="2xx"), 60)
        self.assertEqual(rise("twisted_lb_pool_request_duration_seconds_count", pool="app"), 60)
        self.assertEqual(
            rise("twisted_lb_pool_request_duration_seconds_bucket", pool="app", le="+Inf"), 60
        )
        self.assertEqual(rise("twisted_lb_frontend_connections_total", frontend="web"), 1)
        self.assertGreater(rise("twisted_lb_frontend_sent_bytes_total", frontend="web"), 0)
        self.assertGreater(after[key("process_resident_memory_bytes")], 0)
        self.assertEqual(after[key("twisted_lb_config_generation")], 1)

    def test_killed_backend_shows_up_0(self) -> None:
        """A backend killed on purpose shows ``up 0`` once its health checks fail."""
        _ports, _port, admin = self.start(2)
        self.assertEqual(
            parse(self.scrape(admin)[0])[key("twisted_lb_backend_up", pool="app", backend="app2")],
            1,
        )
        backend = self.backend_processes["app2"]
        backend.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            scraped = parse(self.scrape(admin)[0])
            if scraped[key("twisted_lb_backend_up", pool="app", backend="app2")] == 0:
                break
            time.sleep(0.1)
        else:
            self.fail("app2 not up 0 within 10 s")
        self.assertEqual(scraped[key("twisted_lb_backend_up", pool="app", backend="app1")], 1)
        self.assertGreater(
            scraped[
                key(
                    "twisted_lb_backend_health_checks_total",
                    pool="app",
                    backend="app2",
                    result="fail",
                )
            ],
            0,
        )
        self.assertEqual(scraped[key("twisted_lb_pool_backends_available", pool="app")], 1)

    def test_openmetrics(self) -> None:
        """Prometheus' Accept header gets OpenMetrics, which its parser reads."""
        _ports, _port, admin = self.start(1)
        body, content_type = self.scrape(admin, accept=OPENMETRICS)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        names = {family.name for family in openmetrics_families(body)}
        self.assertIn("twisted_lb_backend_requests", names)
        self.assertIn("twisted_lb_pool_request_duration_seconds", names)


class PromtoolTests(MetricsCase):
    def setUp(self) -> None:
        self.promtool = shutil.which("promtool")
        if self.promtool is None:
            self.skipTest("promtool not found (Debian package prometheus)")

    def promtool_run(
        self, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.promtool is not None
        return subprocess.run(
            [self.promtool, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_check_metrics(self) -> None:
        """``promtool check metrics`` finds nothing to say about a real scrape after traffic."""
        _ports, port, admin = self.start(2)
        client = self.client(port)
        for _ in range(4):
            request(client, "GET", "/")
        body, _ = self.scrape(admin)
        checked = self.promtool_run("check", "metrics", stdin=body)
        self.assertEqual((checked.returncode, checked.stdout, checked.stderr), (0, "", ""))


class ExampleFilesTests(SynchronousTestCase):
    """examples/prometheus-alerts.yml and examples/grafana-dashboard.json."""

    def series_names(self) -> set[str]:
        """Every series name a scrape of a balancer can have, from the collector itself."""
        from prometheus_client.exposition import generate_latest
        from twisted.internet.testing import MemoryReactorClock

        from twisted_lb.config import load_config
        from twisted_lb.metrics import metrics_registry
        from twisted_lb.service import LoadBalancerService

        service = LoadBalancerService.from_config(
            load_config(EXAMPLES / "metrics.toml"), MemoryReactorClock()
        )
        names = set()
        for family in text_string_to_metric_families(
            generate_latest(metrics_registry(service)).decode()
        ):
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
        return names

    def referenced(self, text: str) -> set[str]:
        return set(re.findall(r"\b((?:twisted_lb|process)_[a-z_]+)\b", text))

    def test_examples_use_real_series(self) -> None:
        """Every series the alert rules and the Grafana dashboard query exists."""
        names = self.series_names()
        rules = (EXAMPLES / "prometheus-alerts.yml").read_text()
        dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
        exprs = [
            target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
        ]
        self.assertGreater(len(exprs), 20)
        self.assertIn("twisted_lb_tls_handshake_failures_total", names)
        self.assertNotIn("twisted_lb_backend_up_total", names)
        for where, text in [("alerts", rules), *(("dashboard", e) for e in exprs)]:
            self.assertLessEqual(self.referenced(text), names, where)

    def test_docs_list_every_series(self) -> None:
        """docs/metrics.rst names every series a scrape has."""
        documented = (HERE.parent / "docs" / "metrics.rst").read_text()
        missing = sorted(
            name
            for name in self.series_names()
            if not name.endswith(("_bucket", "_sum", "_count")) and f"``{name}``" not in documented
        )
        self.assertEqual(missing, [])

    def test_promtool_checks_and_tests_the_rules(self) -> None:
        """``promtool check rules`` passes, and the rules' unit tests pass."""
        promtool = shutil.which("promtool")
        if promtool is None:
            self.skipTest("promtool not found (Debian package prometheus)")
        for args in (
            ["check", "rules", "prometheus-alerts.yml"],
            ["test", "rules", "prometheus-alerts.test.yml"],
        ):
            result = subprocess.run(
                [promtool, *args],
                cwd=EXAMPLES,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("SUCCESS", result.stdout)
