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
from twisted_lb.logs import json_event, json_lines_observer


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
