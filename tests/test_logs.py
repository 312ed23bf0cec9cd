"""
The JSON lines log format, in memory and under a real twistd.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests._harness import http_get, lb_config, start_backend, start_lb
from twisted_lb.logs import json_event, json_lines_observer, text_lines_observer
from twisted_lb.tap import Options, _log_output


class JSONEventTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """An event becomes time, level, namespace, message and its own fields."""
        out = io.StringIO()
        observer = json_lines_observer(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        Logger(namespace="twisted_lb.access").info(
            "{frontend} {status}", frontend="web", status=200, backend=object()
        )
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(
            {k: record[k] for k in ("level", "namespace", "message", "frontend", "status")},
            {
                "level": "info",
                "namespace": "twisted_lb.access",
                "message": "web 200",
                "frontend": "web",
                "status": 200,
            },
        )
        self.assertIsInstance(record["backend"], str)
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT")

    def test_failure(self) -> None:
        """A failure event carries its traceback."""
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        record = json_event(
            {"log_format": "oops", "log_level": LogLevel.critical, "log_failure": failure}
        )
        self.assertIn("ZeroDivisionError", record["failure"])
        self.assertEqual(record["level"], "critical")


class TextLinesTests(SynchronousTestCase):
    def observe(self, **event: object) -> str:
        out = io.StringIO()
        text_lines_observer(out)({"log_time": 1_700_000_000.5, **event})
        return out.getvalue()

    def test_access_line(self) -> None:
        """An HTTP access event is one line, built from its fields; no response shows '-'."""
        line = self.observe(
            log_namespace="twisted_lb.access",
            log_level=LogLevel.info,
            log_format="unused",
            frontend="web",
            client="192.0.2.1",
            method="GET",
            target="/x",
            status=503,
            bytes_in=30,
            bytes_out=90,
            backend="-",
            connect_ms=0,
            first_byte_ms=None,
            total_ms=1,
        )
        self.assertEqual(
            line,
            '2023-11-14T22:13:20+0000 [twisted_lb.access#info] web 192.0.2.1 "GET /x" 503 '
            "in=30 out=90 backend=- connect_ms=0 first_byte_ms=- total_ms=1\n",
        )

    def test_other_events(self) -> None:
        """Other events are formatted from their format string, with a failure's traceback."""
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        text = self.observe(
            log_namespace="twisted_lb.tcp",
            log_level=LogLevel.warn,
            log_format="pool {pool}: trouble",
            pool="app",
            log_failure=failure,
        )
        first, *rest = text.splitlines()
        self.assertEqual(first, "2023-11-14T22:13:20+0000 [twisted_lb.tcp#warn] pool app: trouble")
        self.assertIn("ZeroDivisionError", "\n".join(rest))


class LogOutputTests(SynchronousTestCase):
    def output_for(self, parent: dict[str, object]) -> object:
        options = Options()
        options.parent = parent  # type: ignore[attr-defined]
        return _log_output(options)

    def test_stdout(self) -> None:
        """In the foreground without --logfile, or with --logfile=-, the log goes to stdout."""
        import sys

        self.assertIs(self.output_for({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(self.output_for({"nodaemon": False, "logfile": "-"}), sys.stdout)

    def test_logfile(self) -> None:
        """Otherwise it goes to --logfile, as twistd's own log would."""
        path = Path(self.mktemp())
        output = self.output_for({"nodaemon": False, "logfile": str(path)})
        self.addCleanup(output.close)  # type: ignore[attr-defined]
        output.write("hello\n")  # type: ignore[attr-defined]
        output.flush()  # type: ignore[attr-defined]
        self.assertEqual(path.read_text(), "hello\n")


class TwistdJSONTests(SynchronousTestCase):
    def test_access_lines_are_json(self) -> None:
        """With ``[global] log_format = "json"``, twistd writes one JSON object per line."""
        backend, port = start_backend("http", "backend1")
        self.addCleanup(backend.kill)
        path = Path(self.mktemp() + ".toml")
        path.write_text('[global]\nlog_format = "json"\n' + lb_config([port]))
        lb, lb_port = start_lb(str(path))
        self.addCleanup(lb.kill)
        http_get(lb_port)
        lb.wait_for(r'"namespace":"twisted_lb.access"')
        lb.stop()
        records = [json.loads(line) for line in lb.output().splitlines() if line.strip()]
        [access] = [r for r in records if r["namespace"] == "twisted_lb.access"]
        self.assertEqual((access["frontend"], access["backend"]), ("web", "app1"))
        self.assertGreater(access["bytes_out"], 0)
