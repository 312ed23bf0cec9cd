"""
The log observers (text and JSON lines) and the buffered access log, in memory and under a
real twistd.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    capturedLogs,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests._harness import (
    TWISTD,
    Process,
    environ_with,
    http_get,
    http_lb_config,
    lb_config,
    read_response,
    start_backend,
    start_lb,
)
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.interfaces import IAccessLog
from twisted_lb.logs import (
    AccessLog,
    EventAccessLog,
    json_event,
    json_lines_observer,
    text_lines_observer,
)
from twisted_lb.service import ListenError, LoadBalancerService
from twisted_lb.tap import Options, _log_output, _TwistdService


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


#: An HTTP request's fields, as the proxy gives them to IAccessLog.http.
HTTP_FIELDS = {
    "frontend": "web",
    "client": "192.0.2.1",
    "method": b"GET",
    "target": b"/x?y=1",
    "status": 200,
    "bytes_in": 30,
    "bytes_out": 90,
    "backend": "app1",
    "connect_ms": 1,
    "first_byte_ms": 2,
    "total_ms": 3,
}
HTTP_LINE = (
    '2023-11-14T22:13:20+0000 [twisted_lb.access#info] web 192.0.2.1 "GET /x?y=1" 200 '
    "in=30 out=90 backend=app1 connect_ms=1 first_byte_ms=2 total_ms=3\n"
)
TCP_FIELDS = {
    "frontend": "db",
    "client": "192.0.2.1:5555",
    "backend": "pg1",
    "bytes_in": 10,
    "bytes_out": 20,
    "duration_ms": 1500,
    "ended": "client closed",
}


class RecordingStream(io.StringIO):
    """A text stream that keeps each write apart, and counts flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000.5)
        self.out = RecordingStream()

    def access_log(self, out: object = None, **kwargs: object) -> AccessLog:
        return AccessLog(self.clock, out if out is not None else self.out, **kwargs)  # type: ignore[arg-type]

    def test_interface(self) -> None:
        """Both access logs provide IAccessLog."""
        self.assertTrue(verifyObject(IAccessLog, self.access_log()))
        self.assertTrue(verifyObject(IAccessLog, EventAccessLog()))

    def test_buffer_fills(self) -> None:
        """
        Lines wait in the buffer until it holds ``buffer_bytes``; then all of them are written
        in one write, and flushed.
        """
        log = self.access_log(buffer_bytes=3 * len(HTTP_LINE))
        log.http(**HTTP_FIELDS)
        log.http(**HTTP_FIELDS)
        self.assertEqual(self.out.writes, [])
        log.http(**HTTP_FIELDS)
        self.assertEqual(self.out.writes, [HTTP_LINE * 3])
        self.assertEqual(self.out.flushes, 1)
        log.close()
        self.assertEqual(self.out.writes, [HTTP_LINE * 3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_flush(self) -> None:
        """
        A line waits ``flush_interval`` seconds at most, counted from the first line of the
        buffer; the timer is set again by the next line after it fired.
        """
        log = self.access_log(flush_interval=1.0)
        log.http(**HTTP_FIELDS)
        self.clock.advance(0.5)
        log.http(**HTTP_FIELDS)
        self.clock.advance(0.4)
        self.assertEqual(self.out.writes, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.out.writes), 1)
        self.assertEqual(self.out.getvalue().count("\n"), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        log.tcp(**TCP_FIELDS)
        self.clock.advance(1.0)
        self.assertEqual(len(self.out.writes), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_flushes(self) -> None:
        """Closing writes what the buffer holds and cancels the timer."""
        log = self.access_log()
        log.http(**HTTP_FIELDS)
        log.tcp(**TCP_FIELDS)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        log.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.out.getvalue().splitlines()), 2)
        self.assertFalse(self.out.closed, "a stream is not closed")
        # Lines after closing are written at once, with no timer.
        log.http(**HTTP_FIELDS)
        self.assertEqual(len(self.out.getvalue().splitlines()), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unbuffered(self) -> None:
        """``buffer_bytes=0`` writes each line at once, with no timer."""
        log = self.access_log(buffer_bytes=0)
        log.http(**HTTP_FIELDS)
        log.tcp(**TCP_FIELDS)
        self.assertEqual(len(self.out.writes), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_text_lines(self) -> None:
        """
        Text lines are those of the access events under the text observer; a request with
        no response byte has ``first_byte_ms=-``.
        """
        log = self.access_log()
        log.http(**HTTP_FIELDS)
        log.http(**{**HTTP_FIELDS, "status": 503, "backend": "-", "first_byte_ms": None})
        log.tcp(**TCP_FIELDS)
        log.close()
        events = RecordingStream()
        observer = text_lines_observer(events)
        captured: list[LogEvent] = []
        event_log = EventAccessLog(Logger(namespace="twisted_lb.access", observer=captured.append))
        event_log.http(**HTTP_FIELDS)
        event_log.http(**{**HTTP_FIELDS, "status": 503, "backend": "-", "first_byte_ms": None})
        event_log.tcp(**TCP_FIELDS)
        for event in captured:
            observer({**event, "log_time": 1_700_000_000.5})
        # Twisted's own observers format the events alike, "-" included.
        self.assertEqual(
            [formatEvent(event) for event in captured[:2]],
            [line.split("] ", 1)[1] for line in events.getvalue().splitlines()[:2]],
        )
        self.assertIsNone(captured[1]["first_byte_ms"])
        self.assertEqual(self.out.getvalue(), events.getvalue())
        self.assertEqual(
            self.out.getvalue().splitlines(),
            [
                HTTP_LINE.rstrip("\n"),
                '2023-11-14T22:13:20+0000 [twisted_lb.access#info] web 192.0.2.1 "GET /x?y=1" '
                "503 in=30 out=90 backend=- connect_ms=1 first_byte_ms=- total_ms=3",
                "2023-11-14T22:13:20+0000 [twisted_lb.access#info] db 192.0.2.1:5555 -> pg1 "
                "in=10 out=20 duration_ms=1500 ended=client closed",
            ],
        )

    def test_text_lines_not_ascii(self) -> None:
        """
        Bytes of the request outside ASCII are written as their Latin-1 characters in UTF-8,
        names in UTF-8, to a file and to a stream alike, as the access events' text observer
        writes them.
        """
        fields = {
            **HTTP_FIELDS,
            "frontend": "wéb",
            "backend": "äpp1",
            "method": b"G\xc9T",
            "target": b"/caf\xe9?q=\xff",
        }
        path = self.mktemp()
        to_file = self.access_log(path)
        to_file.http(**fields)
        to_file.close()
        to_stream = self.access_log()
        to_stream.http(**fields)
        to_stream.close()
        events = RecordingStream()
        captured: list[LogEvent] = []
        EventAccessLog(Logger(namespace="twisted_lb.access", observer=captured.append)).http(
            **fields
        )
        text_lines_observer(events)({**captured[0], "log_time": 1_700_000_000.5})
        with open(path, encoding="utf-8") as f:
            written = f.read()
        self.assertEqual(written, events.getvalue())
        self.assertEqual(self.out.getvalue(), events.getvalue())
        self.assertIn('wéb 192.0.2.1 "GÉT /café?q=ÿ" ', written)
        self.assertIn(" backend=äpp1 ", written)

    def test_json_lines(self) -> None:
        """JSON lines have the keys, in order, of the access events under the JSON observer."""
        log = self.access_log(log_format="json")
        log.http(**HTTP_FIELDS)
        log.tcp(**TCP_FIELDS)
        log.close()
        http, tcp = (json.loads(line) for line in self.out.getvalue().splitlines())
        events = io.StringIO()
        observer = json_lines_observer(events)
        captured: list[LogEvent] = []
        event_log = EventAccessLog(Logger(namespace="twisted_lb.access", observer=captured.append))
        event_log.http(**HTTP_FIELDS)
        event_log.tcp(**TCP_FIELDS)
        for event in captured:
            observer({**event, "log_time": 1_700_000_000.5})
        http_event, tcp_event = (json.loads(line) for line in events.getvalue().splitlines())
        self.assertEqual(list(http.items()), list(http_event.items()))
        self.assertEqual(list(tcp.items()), list(tcp_event.items()))
        self.assertEqual(http["time"], "2023-11-14T22:13:20.500000+00:00")
        self.assertEqual(
            (http["method"], http["target"], http["status"], http["first_byte_ms"]),
            ("GET", "/x?y=1", 200, 2),
        )
        self.assertEqual(tcp["ended"], "client closed")

    def test_file(self) -> None:
        """A path is opened for appending; what was there stays."""
        path = Path(self.mktemp())
        path.write_text("before\n")
        log = self.access_log(str(path))
        log.open()
        log.http(**HTTP_FIELDS)
        self.assertEqual(path.read_text(), "before\n")
        self.clock.advance(1.0)
        self.assertEqual(path.read_text(), "before\n" + HTTP_LINE)
        log.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reopen(self) -> None:
        """
        After the file was renamed, reopening writes the buffered lines to the renamed file
        and the later ones to a new file of the old name.
        """
        path = Path(self.mktemp())
        rotated = Path(str(path) + ".1")
        log = self.access_log(str(path))
        log.open()
        log.http(**HTTP_FIELDS)
        path.rename(rotated)
        log.reopen()
        log.tcp(**TCP_FIELDS)
        log.close()
        self.assertEqual(rotated.read_text(), HTTP_LINE)
        self.assertEqual(len(path.read_text().splitlines()), 1)
        self.assertIn("ended=client closed", path.read_text())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reopen_fails_keeps_the_old_file(self) -> None:
        """
        When the new file cannot be opened, the reopen is logged as an error and the lines
        (buffered, written by the clock) keep going to the old file: none is lost.
        """
        logs = Path(self.mktemp())
        logs.mkdir()
        log = self.access_log(str(logs / "access.log"))
        log.open()
        log.http(**HTTP_FIELDS)
        logs.rename(str(logs) + ".old")  # the new file cannot be created
        with capturedLogs() as captured:
            log.reopen()
        [event] = captured
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("still writing to the old file", event["log_format"])
        log.http(**HTTP_FIELDS)
        log.http(**HTTP_FIELDS)
        self.clock.advance(1.0)
        old = Path(str(logs) + ".old") / "access.log"
        self.assertEqual(old.read_text(), HTTP_LINE * 3)
        self.assertEqual(log.lines_dropped, 0)
        log.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reopen_stream(self) -> None:
        """A stream is flushed on reopen, and reopened if it can be (twistd's LogFile)."""
        reopened = []
        self.out.reopen = lambda: reopened.append(True)  # type: ignore[attr-defined]
        log = self.access_log()
        log.http(**HTTP_FIELDS)
        log.reopen()
        self.assertEqual((self.out.getvalue(), reopened), (HTTP_LINE, [True]))
        log.close()

    def test_twistd_logfile(self) -> None:
        """
        With twistd's ``--logfile`` (a ``LogFile``), the lines go into it, and a reopen after a
        rename writes the later ones to a new file of that name.
        """
        from twisted.python.logfile import LogFile

        path = Path(self.mktemp()).absolute()
        logfile = LogFile.fromFullPath(str(path))
        self.addCleanup(logfile.close)
        log = self.access_log(logfile)
        log.http(**HTTP_FIELDS)
        path.rename(str(path) + ".old")
        log.reopen()
        log.http(**HTTP_FIELDS)
        log.close()
        self.assertEqual(
            (Path(str(path) + ".old").read_text(), path.read_text()), (HTTP_LINE, HTTP_LINE)
        )

    def test_write_error(self) -> None:
        """
        A failed write loses the buffered lines, counts them and says so in the event log;
        the next write tries again.
        """
        log = self.access_log(BrokenStream(), buffer_bytes=0)
        with capturedLogs() as captured:
            log.http(**HTTP_FIELDS)
        self.assertEqual(log.lines_dropped, 1)
        [event] = captured
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("No space left on device", event["error"])
        log.close()

    def test_bad_arguments(self) -> None:
        """A bad format, buffer size or interval is refused."""
        for kwargs in ({"log_format": "xml"}, {"buffer_bytes": -1}, {"flush_interval": 0}):
            with self.assertRaises(ValueError):
                self.access_log(**kwargs)


GLOBAL_FRONTEND = """
[frontends.web]
mode = "http"
listen = ["tcp:8080"]
pool = "app"

[pools.app]
backends = [{ address = "127.0.0.1:9001" }]
"""


class AccessLogConfigTests(SynchronousTestCase):
    def global_config(self, text: str, path: str = "/etc/lb/lb.toml") -> object:
        return parse_config("[global]\n" + text + GLOBAL_FRONTEND, path).global_config

    def problem(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.global_config(text)
        return str(caught.exception)

    def test_defaults(self) -> None:
        """The default is the default destination, with nginx's buffer=64k flush=1s."""
        config = self.global_config("")
        self.assertEqual(
            (config.access_log, config.access_log_buffer, config.access_log_flush),  # type: ignore[attr-defined]
            (True, 65536, 1.0),
        )

    def test_destinations(self) -> None:
        """true, false, "stdout", and a path, relative to the config file's directory."""
        for value, expected in (
            ("true", True),
            ("false", False),
            ('"stdout"', "stdout"),
            ('"logs/access.log"', "/etc/lb/logs/access.log"),
            ('"/var/log/lb/access.log"', "/var/log/lb/access.log"),
            ('"./stdout"', "/etc/lb/stdout"),
        ):
            self.assertEqual(self.global_config(f"access_log = {value}\n").access_log, expected)  # type: ignore[attr-defined]

    def test_errors(self) -> None:
        """Each bad value is named with the file, the key and what to write instead."""
        self.assertEqual(
            self.problem("access_log = 1\n"),
            '/etc/lb/lb.toml: global.access_log: must be true, false, "stdout" or a file '
            "path, not an integer",
        )
        self.assertEqual(
            self.problem('access_log = ""\n'),
            "/etc/lb/lb.toml: global.access_log: '' is not a file path; write one, as in "
            'access_log = "access.log", or true, false or "stdout"',
        )
        self.assertEqual(
            self.problem("access_log_buffer = -1\n"),
            "/etc/lb/lb.toml: global.access_log_buffer: must be an integer >= 0, not -1",
        )
        self.assertEqual(
            self.problem('access_log_buffer = "64k"\n'),
            "/etc/lb/lb.toml: global.access_log_buffer: must be an integer >= 0, not a string",
        )
        self.assertEqual(
            self.problem("access_log_flush = 0\n"),
            "/etc/lb/lb.toml: global.access_log_flush: must be more than 0 seconds, not 0",
        )

    def test_summary(self) -> None:
        """``twisted-lb check`` shows where the access lines go, unless it is the default."""
        from twisted_lb.cli import format_summary

        def summary(text: str) -> list[str]:
            config = parse_config("[global]\n" + text + GLOBAL_FRONTEND, "/etc/lb/lb.toml")
            return [line for line in format_summary(config).splitlines() if "access_log" in line]

        self.assertEqual(summary(""), [])
        self.assertEqual(summary("access_log = false\n"), ["global: access_log off"])
        self.assertEqual(summary('access_log = "stdout"\n'), ["global: access_log stdout"])
        self.assertEqual(
            summary('access_log = "access.log"\n'), ["global: access_log /etc/lb/access.log"]
        )


class AccessLogServiceTests(SynchronousTestCase):
    def service(self, text: str, log_output: io.StringIO | None = None) -> LoadBalancerService:
        config = parse_config("[global]\n" + text + GLOBAL_FRONTEND, "/etc/lb/lb.toml")
        return LoadBalancerService.from_config(config, MemoryReactorClock(), log_output=log_output)

    def test_destinations(self) -> None:
        """
        ``true`` writes to the log output given (twistd's), else emits events; ``false`` is
        no access log; a path or "stdout" is a buffered AccessLog.
        """
        out = io.StringIO()
        default = self.service("", out).factories["web"].access_log
        self.assertIsInstance(default, AccessLog)
        self.assertIs(default._stream, out)  # type: ignore[union-attr]
        self.assertIsInstance(self.service("").factories["web"].access_log, EventAccessLog)
        self.assertIsNone(self.service("access_log = false\n", out).factories["web"].access_log)
        configured = self.service(
            'access_log = "/var/log/a.log"\naccess_log_buffer = 10\naccess_log_flush = 0.5\n'
            'log_format = "json"\n'
        ).access_log
        assert isinstance(configured, AccessLog)
        self.assertEqual(
            (configured.path, configured.buffer_bytes, configured.flush_interval),
            ("/var/log/a.log", 10, 0.5),
        )

    def test_open_fails(self) -> None:
        """A file that cannot be opened stops start-up before anything listens."""
        path = Path(self.mktemp()).absolute() / "missing" / "access.log"
        service = self.service(f"access_log = {json.dumps(str(path))}\n")
        with self.assertRaises(ListenError) as caught:
            service.privilegedStartService()
        self.assertEqual(
            str(caught.exception),
            f"global.access_log: cannot open {path}: No such file or directory",
        )
        self.assertEqual(service.listeners[0].port, None)

    def test_stop_flushes(self) -> None:
        """Stopping writes the buffered lines once the connections are closed, and closes."""
        path = Path(self.mktemp()).absolute()
        service = self.service(f"access_log = {json.dumps(str(path))}\n")
        service.privilegedStartService()
        service.startService()
        access_log = service.access_log
        assert access_log is not None
        access_log.http(**HTTP_FIELDS)
        self.assertEqual(path.read_text(), "")
        service.stopService()
        self.assertEqual(len(path.read_text().splitlines()), 1)
        self.assertEqual(service.reactor.getDelayedCalls(), [])


def keep_alive_requests(port: int, count: int, connections: int, name: str) -> list[str]:
    """
    ``count`` GETs of distinct targets (``/NAME/CONNECTION/N``) over ``connections`` keep-alive
    connections at once, each answered 200; returns the targets. Fails after 60 s.
    """
    per_connection = count // connections
    errors: list[BaseException] = []
    targets = [f"/{name}/{c}/{n}" for c in range(connections) for n in range(per_connection)]

    def client(c: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                rfile = sock.makefile("rb")
                for n in range(per_connection):
                    sock.sendall(f"GET /{name}/{c}/{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    response = read_response(rfile)
                    if response.status != 200:
                        raise AssertionError(f"/{name}/{c}/{n}: status {response.status}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(connections)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise AssertionError(f"{count} requests not done within 60 s")
    if errors:
        raise errors[0]
    return targets


ACCESS_LINE = re.compile(r'\[twisted_lb\.access#info\] web 127\.0\.0\.1 "GET (\S+)" 200 ')


def logged_targets(*paths: Path) -> list[str]:
    """The request targets of the HTTP access lines in ``paths``, in order."""
    targets = []
    for path in paths:
        for line in path.read_text().splitlines():
            match = re.search(
                r'\[twisted_lb\.access#info\] web 127\.0\.0\.1 "GET (\S+)" 200 ', line
            )
            if match is None:
                raise AssertionError(f"{path}: not an access line: {line!r}")
            targets.append(match.group(1))
    return targets


class SIGUSR1Tests(SynchronousTestCase):
    def test_handler(self) -> None:
        """
        Under twistd, SIGUSR1 reopens the access log from the reactor thread; once stopping,
        the handler stays (the signal's default action would end the process during the
        shutdown grace) and the signal is logged and ignored.
        """
        path = Path(self.mktemp()).absolute()
        config = parse_config(
            f"[global]\naccess_log = {json.dumps(str(path))}\n" + GLOBAL_FRONTEND, "lb.toml"
        )
        reactor = MemoryReactorClock()
        calls: list[object] = []
        reactor.callFromThread = lambda f, *a, **kw: calls.append(f)  # type: ignore[method-assign]
        service = _TwistdService.from_config(config, reactor)
        previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        service.privilegedStartService()
        service.startService()
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
        [reopen] = calls
        path.rename(str(path) + ".1")
        with capturedLogs() as captured:
            reopen()  # type: ignore[operator]
        self.assertTrue(path.exists(), "reopened by its path")
        self.assertIn("SIGUSR1: reopening the access log", [e["log_format"] for e in captured])
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), handler)
        handler(signal.SIGUSR1, None)
        with capturedLogs() as captured:
            calls[-1]()  # type: ignore[operator]
        self.assertEqual(
            [e["log_format"] for e in captured], ["SIGUSR1 ignored: the balancer is stopping"]
        )


class TwistdAccessLogTests(SynchronousTestCase):
    """``[global] access_log`` under a real ``twistd -n lb``."""

    def start(self, global_lines: str) -> tuple[Process, int, Path]:
        self.backend, port = start_backend(
            "idle-close", "app1", env=environ_with(IDLE_TIMEOUT="120")
        )
        self.addCleanup(self.backend.kill)
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        config = directory / "lb.toml"
        config.write_text("[global]\n" + global_lines + http_lb_config({"app": [port]}))
        lb, lb_port = start_lb(str(config))
        self.addCleanup(lb.kill)
        return lb, lb_port, directory

    def test_rotation(self) -> None:
        """
        10,000 requests on several keep-alive connections; midway the file is renamed and
        SIGUSR1 sent, as logrotate does; after a clean stop (SIGTERM), the renamed file and
        the new one hold one line per request, none lost or written twice. The flush timer
        is an hour, so the lines reach the files only when the buffer fills, on SIGUSR1 and
        at the stop.
        """
        lb, port, directory = self.start('access_log = "access.log"\naccess_log_flush = 3600\n')
        path, rotated = directory / "access.log", directory / "access.log.1"
        first = keep_alive_requests(port, 5000, 5, "before")
        traffic: list[list[str]] = []
        during = threading.Thread(
            target=lambda: traffic.append(keep_alive_requests(port, 5000, 5, "during")),
            daemon=True,
        )
        during.start()
        # Rotate while the second half is in flight: once the backend has had a few hundred.
        self.backend.wait_for(r"REQUEST \d+ GET /during/\d+/100$")
        path.rename(rotated)
        lb.signal(signal.SIGUSR1)
        during.join(70)
        self.assertFalse(during.is_alive())
        [second] = traffic
        lb.wait_for(r"SIGUSR1: reopening the access log")
        self.assertEqual(lb.stop(), -signal.SIGTERM)  # twistd's clean stop on SIGTERM
        old, new = logged_targets(rotated), logged_targets(path)
        self.assertEqual(len(old) + len(new), 10_000)
        self.assertEqual(sorted(old + new), sorted(first + second))
        self.assertTrue(set(first) <= set(old), "lines before the rotation are in the old file")
        self.assertGreater(len(new), 0)
        self.assertNotIn("twisted_lb.access", lb.output())

    def test_stop_loses_nothing(self) -> None:
        """
        Lines still in the buffer when SIGTERM comes are written before the process exits
        (the flush timer is an hour and the buffer large); the path is relative to the
        config file's directory.
        """
        lb, port, directory = self.start(
            'access_log = "access.log"\naccess_log_flush = 3600\naccess_log_buffer = 10000000\n'
        )
        targets = keep_alive_requests(port, 500, 2, "stop")
        path = directory / "access.log"
        self.assertEqual(path.read_text(), "")
        self.assertEqual(lb.stop(), -signal.SIGTERM)  # twistd's clean stop on SIGTERM
        self.assertEqual(sorted(logged_targets(path)), sorted(targets))

    def test_stdout(self) -> None:
        """``access_log = "stdout"`` writes the lines to standard output, within the flush."""
        lb, port, _ = self.start('access_log = "stdout"\naccess_log_flush = 0.2\n')
        [target] = keep_alive_requests(port, 1, 1, "out")
        lb.wait_for(rf'\[twisted_lb\.access#info\] web 127\.0\.0\.1 "GET {target}" 200 ', 10)

    def test_off(self) -> None:
        """``access_log = false``: no access line, the other events still logged."""
        lb, port, _ = self.start("access_log = false\n")
        keep_alive_requests(port, 10, 1, "off")
        self.assertEqual(lb.stop(), -signal.SIGTERM)  # twistd's clean stop on SIGTERM
        output = lb.output()
        self.assertNotIn("twisted_lb.access", output)
        self.assertIn("twisted-lb running", output)

    def test_cannot_open(self) -> None:
        """A file that cannot be opened stops start-up, before anything listens, with why."""
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        config = directory / "lb.toml"
        config.write_text('[global]\naccess_log = "missing/access.log"\n' + lb_config([1]))
        lb = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", str(config)])
        self.addCleanup(lb.kill)
        lb.wait_for(
            rf"global\.access_log: cannot open {re.escape(str(directory))}/missing/access\.log: "
            "No such file or directory; stopping"
        )
        self.assertEqual(lb.popen.wait(20), 1)
        self.assertNotIn("listening", lb.output())
