"""
The admin API (twisted_lb.admin), its ``[admin]`` table and ``twisted-lb ctl``.

Unit tests drive the twisted.web site in memory (a real ``Site`` over a ``StringTransport``,
the balancer built from a config on a ``MemoryReactorClock``); integration tests run a real
``twistd -n lb`` with its admin API on a UNIX socket and on loopback TCP, with real clients
(``http.client``, ``curl`` and the ``twisted-lb ctl`` command).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests._harness import (
    TWISTD,
    TWISTED_LB,
    Process,
    http_lb_config,
    read_response,
    start_backend,
    start_lb,
)
from twisted_lb.admin import MAX_BODY_BYTES, check_token, read_state_file, write_state_file
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.service import LoadBalancerService

TIMEOUT = 10.0
FRONTEND = """\
[frontends.web]
mode = "http"
listen = ["tcp:0:interface=127.0.0.1"]
pool = "app"
"""
POOL = """\
[pools.app]
backends = [
  { address = "127.0.0.1:9001", name = "app1" },
  { address = "127.0.0.1:9002", name = "app2", weight = 2 },
]
"""


def short_directory(test: SynchronousTestCase) -> str:
    """A fresh directory with a short path (a UNIX socket path has at most 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="lbadm", dir="/tmp")
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


def problems(text: str, path: str = "/etc/lb/lb.toml") -> list[str]:
    try:
        parse_config(text, path)
    except ConfigError as e:
        return [f"{p.key}: {p.message}" for p in e.problems]
    return []


class AdminConfigTests(SynchronousTestCase):
    """The ``[admin]`` table and its errors."""

    def test_no_table_no_admin(self) -> None:
        """Without ``[admin]`` there is no admin API."""
        config = parse_config(FRONTEND + POOL)
        self.assertIsNone(config.admin)
        service = LoadBalancerService.from_config(config, MemoryReactorClock())
        self.assertIsNone(service.admin)

    def test_keys(self) -> None:
        """
        Every key is read; ``socket_mode`` is octal in a string (or a TOML octal integer);
        relative paths are relative to the config file's directory.
        """
        directory = short_directory(self)
        Path(directory, "admin.token").write_text("s3cret\n")
        config = parse_config(
            FRONTEND
            + POOL
            + "[admin]\n"
            + 'listen = ["unix:/run/lb/admin.sock", "tcp:9901:interface=0.0.0.0"]\n'
            + 'socket_mode = "0660"\ntoken_file = "admin.token"\nstate_file = "state.json"\n',
            os.path.join(directory, "lb.toml"),
        )
        assert config.admin is not None
        self.assertEqual(
            config.admin.listen, ("unix:/run/lb/admin.sock", "tcp:9901:interface=0.0.0.0")
        )
        self.assertEqual(config.admin.socket_mode, 0o660)
        self.assertEqual(config.admin.token_file, os.path.join(directory, "admin.token"))
        self.assertEqual(config.admin.state_file, os.path.join(directory, "state.json"))
        octal = parse_config(
            FRONTEND + POOL + '[admin]\nlisten = "unix:a.sock"\nsocket_mode = 0o640'
        )
        assert octal.admin is not None
        self.assertEqual(octal.admin.socket_mode, 0o640)

    def test_defaults(self) -> None:
        """socket_mode 0600, no token, no state file; loopback and UNIX need no token."""
        config = parse_config(
            FRONTEND
            + POOL
            + "[admin]\nlisten = ['unix:a.sock', 'tcp:9901:interface=127.0.0.1', "
            + "'tcp6:9902:interface=\\:\\:1']\n"
        )
        assert config.admin is not None
        self.assertEqual(config.admin.socket_mode, 0o600)
        self.assertIsNone(config.admin.token_file)
        self.assertIsNone(config.admin.state_file)

    def test_non_loopback_needs_token(self) -> None:
        """
        A TCP listener that other hosts can reach, without token_file, is a config error on
        its key path; the balancer does not start.
        """
        fix = (
            "set admin.token_file (a file holding a bearer token), as in token_file = "
            "\"admin.token\", or listen on loopback only, as in 'tcp:9901:interface=127.0.0.1'"
        )
        self.assertEqual(
            problems(
                FRONTEND
                + POOL
                + "[admin]\nlisten = ['unix:a.sock', 'tcp:9901', 'tcp:9902:interface=192.0.2.7']"
            ),
            [
                f"admin.listen[1]: 'tcp:9901' listens on all interfaces, which other hosts "
                f"can reach: {fix}",
                f"admin.listen[2]: 'tcp:9902:interface=192.0.2.7' listens on 192.0.2.7, which "
                f"other hosts can reach: {fix}",
            ],
        )
        self.assertEqual(
            problems(FRONTEND + POOL + "[admin]\nlisten = 'tcp:9901:interface=0.0.0.0'"),
            [
                "admin.listen: 'tcp:9901:interface=0.0.0.0' listens on all interfaces, which "
                f"other hosts can reach: {fix}"
            ],
        )

    def test_errors(self) -> None:
        """Each bad value is reported on its key, with the fix."""
        self.assertEqual(
            problems(FRONTEND + POOL + "[admin]\nsocket_mode = 600\ntokenfile = 'x'\n"),
            [  # in the order of the document: the table's missing key at its header
                'admin.listen: required key is missing; add listen = ["unix:/run/twisted-lb/'
                'admin.sock"]',
                "admin.socket_mode: 600 is not a file mode from 0o000 to 0o777 (a decimal 600 "
                'is not 0o600); write it in octal as a string, as in socket_mode = "0600"',
                "admin.tokenfile: unknown key (did you mean 'token_file'?)",
            ],
        )
        self.assertEqual(
            problems(FRONTEND + POOL + "[admin]\nlisten = []\nsocket_mode = 'rw-------'\n"),
            [
                'admin.listen: must list at least one endpoint, as in listen = ["unix:/run/'
                'twisted-lb/admin.sock"]',
                "admin.socket_mode: 'rw-------' is not a file mode from '0000' to '0777'; "
                'write it in octal as a string, as in socket_mode = "0600"',
            ],
        )
        self.assertEqual(
            problems("admin = 'unix:a.sock'\n" + FRONTEND + POOL),
            [
                "admin: must be a table, as in [admin] listen = "
                '["unix:/run/twisted-lb/admin.sock"], not a string'
            ],
        )
        self.assertEqual(
            problems(
                FRONTEND
                + POOL
                + "[admin]\nlisten = ['tcp:0:interface=127.0.0.1', 'nope:1']\nsocket_mode = true"
            ),
            [
                "admin.listen[0]: 'tcp:0:interface=127.0.0.1' is already used by "
                "frontends.web.listen[0]; give each listener its own endpoint",
                "admin.listen[1]: 'nope:1' is not a valid server endpoint (Unknown endpoint "
                "type: 'nope'); write one as in 'unix:/run/twisted-lb/admin.sock'",
                'admin.socket_mode: must be a string, as in socket_mode = "0600", not a boolean',
            ],
        )

    def test_summary(self) -> None:
        """``twisted-lb check`` shows the admin listeners last."""
        from twisted_lb.cli import format_summary

        config = parse_config(
            FRONTEND
            + POOL
            + "[admin]\nlisten = ['unix:/run/a.sock', 'tcp:9901:interface=127.0.0.1']\n"
            "state_file = '/var/lib/lb/state.json'\nallowed_hosts = ['lb1.internal', '.lb']\n",
            "/etc/lb/lb.toml",
        )
        self.assertEqual(
            format_summary(config).splitlines()[-1],
            "admin listen unix:/run/a.sock, tcp:9901:interface=127.0.0.1 "
            "(socket_mode 0600, no token, state_file /var/lib/lb/state.json, "
            "allowed_hosts lb1.internal .lb)",
        )

    def test_token_file_problems(self) -> None:
        """A token file that is missing or empty is a config error on admin.token_file."""
        directory = short_directory(self)
        Path(directory, "empty.token").write_text("\n")
        path = os.path.join(directory, "lb.toml")
        self.assertEqual(
            problems(FRONTEND + POOL + "[admin]\nlisten = 'tcp:9901'\ntoken_file = 'no'\n", path),
            [f"admin.token_file: cannot read {directory}/no: No such file or directory"],
        )
        self.assertEqual(
            problems(
                FRONTEND + POOL + "[admin]\nlisten = 'tcp:9901'\ntoken_file = 'empty.token'\n",
                path,
            ),
            [
                f"admin.token_file: {directory}/empty.token is empty; write the token on its "
                "first line"
            ],
        )


class _FakeRequest:
    """Just what :func:`check_token` reads of a request."""

    def __init__(self, authorization: bytes | None) -> None:
        self.authorization = authorization

    def getHeader(self, name: bytes) -> bytes | None:
        assert name == b"authorization"
        return self.authorization


class TokenTests(SynchronousTestCase):
    def test_check_token(self) -> None:
        """A bearer token (RFC 6750 §2.1), the scheme in any case; nothing else passes."""
        cases = [
            (None, False),
            (b"Bearer s3cret", True),
            (b"bearer s3cret", True),
            (b"Bearer  s3cret ", True),
            (b"Bearer s3cre", False),
            (b"Bearer s3cretX", False),
            (b"Basic s3cret", False),
            (b"s3cret", False),
            (b"", False),
        ]
        for header, expected in cases:
            self.assertEqual(
                check_token(_FakeRequest(header), "s3cret"),  # type: ignore[arg-type]
                expected,
                header,
            )
        self.assertTrue(check_token(_FakeRequest(None), None))  # type: ignore[arg-type]


class StateFileTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """The file is written whole (temp + rename), and read back; no temporary is left."""
        directory = short_directory(self)
        path = os.path.join(directory, "state.json")
        self.assertIsNone(read_state_file(path))
        write_state_file(path, {"format": 1, "runtime": {"pools": {"app": {}}}})
        write_state_file(path, {"format": 1, "runtime": {"pools": {"api": {}}}})
        self.assertEqual(read_state_file(path), {"pools": {"api": {}}})
        self.assertEqual(os.listdir(directory), ["state.json"])

    def test_planted_symlinks_are_not_followed(self) -> None:
        """
        A symlink planted at the old, predictable temporary name (or at the file itself) is
        not written through: the victim file is untouched, and the state file is a new file.
        """
        directory = short_directory(self)
        path = os.path.join(directory, "state.json")
        victim = os.path.join(directory, "victim")
        Path(victim).write_text("precious\n")
        os.symlink(victim, os.path.join(directory, f".state.json.{os.getpid()}.tmp"))
        write_state_file(path, {"format": 1, "runtime": {}})
        self.assertEqual(Path(victim).read_text(), "precious\n")
        os.unlink(path)
        os.symlink(victim, path)
        write_state_file(path, {"format": 1, "runtime": {}})
        self.assertEqual(Path(victim).read_text(), "precious\n")
        self.assertFalse(os.path.islink(path))
        self.assertEqual(read_state_file(path), {})
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_bad_files(self) -> None:
        """A file that is not a state file is refused with the reason."""
        directory = short_directory(self)
        path = os.path.join(directory, "state.json")
        for text, reason in [
            ("{", "not JSON"),
            ('{"format": 2, "runtime": {}}', "not a twisted-lb state file of format 1"),
            ('{"format": 1, "runtime": []}', "its 'runtime' member is not an object"),
            ("[" * 60000, "not usable JSON: it is nested too deeply"),
        ]:
            Path(path).write_text(text)
            with self.assertRaises(ValueError) as caught:
                read_state_file(path)
            self.assertIn(reason, str(caught.exception))

    def test_unwritable(self) -> None:
        """Writing into a missing directory raises, and leaves nothing behind."""
        directory = short_directory(self)
        with self.assertRaises(OSError):
            write_state_file(os.path.join(directory, "missing", "state.json"), {"format": 1})
        self.assertEqual(os.listdir(directory), [])


# -- the API in memory -------------------------------------------------------------------------


def memory_site(test: SynchronousTestCase, token: str | None = None, extra: str = "") -> Any:
    """The admin site of a balancer built from FRONTEND + POOL on a MemoryReactorClock."""
    directory = short_directory(test)
    admin = "[admin]\nlisten = ['unix:" + directory + "/a.sock']\n"
    if token is not None:
        Path(directory, "admin.token").write_text(token + "\n")
        admin += "token_file = 'admin.token'\n"
    admin += extra
    config = parse_config(FRONTEND + POOL + admin, os.path.join(directory, "lb.toml"))
    reactor = MemoryReactorClock()
    service = LoadBalancerService.from_config(config, reactor)
    assert service.admin is not None
    return service, service.admin.site


def exchange(site: Any, raw: bytes) -> Any:
    """Send one raw request to the site over a StringTransport; parse the response."""
    import io

    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    response = read_response(io.BytesIO(transport.value()), raw.partition(b" ")[0].decode())
    response.closed = transport.disconnecting  # type: ignore[attr-defined]
    protocol.connectionLost(None)
    return response


def request(
    site: Any,
    method: str,
    path: str,
    body: object = None,
    token: str | None = None,
    raw_body: bytes | None = None,
    headers: tuple[str, ...] | None = None,
) -> tuple[int, Any, Any]:
    """
    One request to the site; ``headers`` replaces the default ``Host: 127.0.0.1:9901`` and
    (on a mutating call) ``Content-Type: application/json``.
    """
    data = raw_body if raw_body is not None else b"" if body is None else json.dumps(body).encode()
    if headers is None:
        headers = ("Host: 127.0.0.1:9901",)
        if method not in ("GET", "HEAD"):
            headers += ("Content-Type: application/json",)
    head = [f"{method} {path} HTTP/1.1", *headers, f"Content-Length: {len(data)}"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    response = exchange(site, ("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return response.status, response, json.loads(response.body) if response.body else None


class APIReadTests(SynchronousTestCase):
    """The read-only endpoints over the live objects, and the request errors."""

    def setUp(self) -> None:
        self.service, self.site = memory_site(self)

    def test_pools(self) -> None:
        """GET pools lists each backend's state, weights, counters and EWMA."""
        status, response, body = request(self.site, "GET", "/api/v1/pools")
        self.assertEqual((status, response.header("content-type")), (200, "application/json"))
        [pool] = body["pools"]
        self.assertEqual((pool["name"], pool["strategy"]), ("app", "round_robin"))  # the file's
        self.assertEqual([b["name"] for b in pool["backends"]], ["app1", "app2"])
        app2 = pool["backends"][1]
        self.assertEqual(
            {k: app2[k] for k in ("address", "state", "admin_state", "health", "weight")},
            {
                "address": "127.0.0.1:9002",
                "state": "UP",
                "admin_state": "ready",
                "health": "unchecked",
                "weight": 2,
            },
        )
        for key in (
            "effective_weight",
            "active_connections",
            "in_flight_requests",
            "requests_total",
            "responses",
            "ejected",
            "ejection_remaining",
            "response_time_ewma",
        ):
            self.assertIn(key, app2)
        backend = self.service.pools["app"].backends[0]
        backend.active_connections = 3
        backend.requests_total = 7
        _, _, one = request(self.site, "GET", "/api/v1/pools/app/backends/app1")
        self.assertEqual((one["active_connections"], one["requests_total"]), (3, 7))

    def test_ejection_time_left(self) -> None:
        """An ejected backend shows the seconds left of its ejection."""
        directory = short_directory(self)
        config = parse_config(
            FRONTEND
            + POOL
            + "[pools.app.outlier_detection]\nconsecutive_failures = 1\nbase_ejection_time = 30\n"
            + "max_ejection_percent = 100\n[admin]\nlisten = ['unix:"
            + directory
            + "/a.sock']\n"
        )
        reactor = MemoryReactorClock()
        service = LoadBalancerService.from_config(config, reactor)
        pool = service.pools["app"]
        pool.report_failure(pool.backends[0], "connection refused")
        reactor.advance(10)
        assert service.admin is not None
        _, _, body = request(service.admin.site, "GET", "/api/v1/pools/app/backends/app1")
        self.assertEqual((body["ejected"], body["ejection_remaining"]), (True, 20.0))
        pool.stop()

    def test_status(self) -> None:
        """GET status: version, uptime, config path, generation, last reload."""
        status, _, body = request(self.site, "GET", "/api/v1/status")
        self.assertEqual(status, 200)
        self.assertEqual(body["config"], self.service.config.path)
        self.assertEqual(body["generation"], 1)
        self.assertIsNone(body["last_reload"])
        self.assertEqual(body["pid"], os.getpid())
        self.assertIn("version", body)
        self.assertIn("uptime", body)

    def test_frontends(self) -> None:
        """GET frontends: mode, pool, routes, listeners, connections."""
        status, _, body = request(self.site, "GET", "/api/v1/frontends")
        self.assertEqual(status, 200)
        [frontend] = body["frontends"]
        self.assertEqual(
            {k: frontend[k] for k in ("name", "mode", "pool", "routes", "active_connections")},
            {"name": "web", "mode": "http", "pool": "app", "routes": [], "active_connections": 0},
        )
        self.assertEqual(frontend["listeners"][0]["endpoint"], "tcp:0:interface=127.0.0.1")

    def test_head(self) -> None:
        """HEAD is GET without the body."""
        response = exchange(self.site, b"HEAD /api/v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.header("content-type"), "application/json")

    def test_directories(self) -> None:
        """
        ``/dashboard`` and ``/dashboard/`` are 302 to the page (``/``); ``/api`` and
        ``/api/`` are the JSON 404 that points at ``/api/v1/``, not twisted.web's 405.
        """
        for path, location in [("/dashboard", "./"), ("/dashboard/", "../")]:
            for method in ("GET", "HEAD"):
                response = exchange(
                    self.site, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
                )
                self.assertEqual((response.status, response.header("location")), (302, location))
                self.assertEqual(urljoin(f"http://127.0.0.1{path}", location), "http://127.0.0.1/")
        for path in ("/api", "/api/"):
            status, _, body = request(self.site, "GET", path)
            self.assertEqual(
                (status, body["error"]), (404, f"no such path {path}; the API is under /api/v1/")
            )

    def test_not_found(self) -> None:
        """Unknown endpoints, pools and backends are 404, naming what exists."""
        status, _, body = request(self.site, "GET", "/api/v1/nope")
        self.assertEqual(status, 404)
        self.assertIn("no such endpoint /api/v1/nope", body["error"])
        status, _, body = request(self.site, "GET", "/api/v1/pools/ap")
        self.assertEqual(
            (status, body["error"], body["pools"]), (404, "unknown pool 'ap'", ["app"])
        )
        status, _, body = request(
            self.site, "PATCH", "/api/v1/pools/app/backends/app9", {"state": "drain"}
        )
        self.assertEqual(
            (status, body["error"], body["backends"]),
            (404, "pool 'app' has no backend 'app9'", ["app1", "app2"]),
        )
        self.assertEqual(request(self.site, "GET", "/api/v2/status")[0], 404)

    def test_method_not_allowed(self) -> None:
        """A method an endpoint does not have is 405 with Allow."""
        status, response, body = request(self.site, "DELETE", "/api/v1/pools")
        self.assertEqual((status, response.header("allow")), (405, "GET"))
        self.assertEqual(body["allowed"], ["GET"])
        status, response, _ = request(self.site, "GET", "/api/v1/reload")
        self.assertEqual((status, response.header("allow")), (405, "POST"))
        status, response, _ = request(self.site, "PUT", "/api/v1/pools/app/backends/app1", {})
        self.assertEqual((status, response.header("allow")), (405, "GET, PATCH, DELETE"))

    def test_bad_bodies(self) -> None:
        """Bad JSON, a body that is not an object and unknown fields are 400 with the reason."""
        path = "/api/v1/pools/app/backends/app1"
        status, _, body = request(self.site, "PATCH", path, raw_body=b'{"state": ')
        self.assertEqual(status, 400)
        self.assertTrue(body["error"].startswith("the body is not valid JSON: "), body)
        status, _, body = request(self.site, "PATCH", path, ["drain"])
        self.assertEqual((status, body["error"]), (400, "the body must be a JSON object, not list"))
        status, _, body = request(self.site, "PATCH", path, {"state": "drain", "wieght": 2})
        self.assertEqual(
            (status, body["error"]), (400, "unknown field 'wieght'; accepted fields: state, weight")
        )
        status, _, body = request(self.site, "PATCH", path, {})
        self.assertEqual(status, 400)
        status, _, body = request(self.site, "PATCH", path, raw_body=b"[" * 60000)
        self.assertEqual(
            (status, body["error"]), (400, "the body is not usable JSON: it is nested too deeply")
        )

    def test_deeply_nested_state_file_at_start(self) -> None:
        """A state file nested too deeply is ignored at start, with a log event."""
        from twisted.logger import capturedLogs

        directory = short_directory(self)
        state = os.path.join(directory, "state.json")
        Path(state).write_text("[" * 60000)
        service, _ = memory_site(self, extra=f"state_file = '{state}'\n")
        with capturedLogs() as events:
            service.admin.restore_state()
        [event] = [e for e in events if "ignored" in e.get("log_format", "")]
        self.assertEqual(
            (event["path"], event["reason"]), (state, "not usable JSON: it is nested too deeply")
        )

    def test_too_large(self) -> None:
        """A body over the limit is 413, and the connection closes; nothing is applied."""
        big = json.dumps({"state": "drain", "pad": "x" * MAX_BODY_BYTES}).encode()
        status, response, body = request(
            self.site, "PATCH", "/api/v1/pools/app/backends/app1", raw_body=big
        )
        self.assertEqual((status, response.header("connection")), (413, "close"))
        self.assertTrue(response.closed)
        self.assertIn(str(MAX_BODY_BYTES), body["error"])
        self.assertEqual(self.service.pools["app"].backends[0].admin_state.value, "UP")
        chunked = exchange(
            self.site,
            b"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"8000\r\n" + b" " * 0x8000 + b"\r\n") * 3
            + b"0\r\n\r\n",
        )
        self.assertEqual((chunked.status, chunked.closed), (413, True))
        ok = exchange(self.site, b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertFalse(ok.closed)

    def test_invalid_changes(self) -> None:
        """An invalid state or weight is 400 with the accepted values; nothing half-applies."""
        path = "/api/v1/pools/app/backends/app1"
        status, _, body = request(self.site, "PATCH", path, {"state": "down", "weight": 5})
        self.assertEqual(
            (status, body["error"], body["accepted"]),
            (
                400,
                "invalid state 'down'; accepted: ready, drain, maint",
                ["ready", "drain", "maint"],
            ),
        )
        for weight in (0, -1, "2", 2.5, True, 257, 20000):
            status, _, body = request(
                self.site, "PATCH", path, {"state": "drain", "weight": weight}
            )
            self.assertEqual(status, 400, weight)
            self.assertIn("must be an integer from 1 to 256", body["error"])
            self.assertEqual(body["accepted"], {"minimum": 1, "maximum": 256})
            status, _, body = request(
                self.site,
                "POST",
                "/api/v1/pools/app/backends",
                {"address": "127.0.0.1:9009", "weight": weight},
            )
            self.assertEqual(status, 400, weight)
            self.assertIn("must be an integer from 1 to 256", body["error"])
        self.assertEqual(len(self.service.pools["app"].backends), 2)
        backend = self.service.pools["app"].backends[0]
        self.assertEqual((backend.admin_state.value, backend.weight), ("UP", 1))


class CrossSiteTests(SynchronousTestCase):
    """
    A web page cannot drive a tokenless loopback admin API: no text/plain JSON (CSRF), no
    other site's Origin, no Host that is a name (DNS rebinding), no framing.
    """

    def setUp(self) -> None:
        self.service, self.site = memory_site(self)
        self.path = "/api/v1/pools/app/backends"
        self.add = {"address": "127.0.0.1:9009", "name": "evil"}

    def names(self) -> list[str]:
        return [b.name for b in self.service.pools["app"].backends]

    def test_mutating_calls_need_json(self) -> None:
        """text/plain, a form or no Content-Type: 415 with the reason, nothing changed."""
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = ("Host: 127.0.0.1:9901",)
            if content_type is not None:
                headers += (f"Content-Type: {content_type}",)
            status, _, body = request(self.site, "POST", self.path, self.add, headers=headers)
            self.assertEqual(status, 415, content_type)
            self.assertIn("needs Content-Type: application/json", body["error"])
            for method, target in [
                ("POST", "/api/v1/reload"),
                ("DELETE", self.path + "/app1"),
                ("PATCH", self.path + "/app1"),
            ]:
                self.assertEqual(request(self.site, method, target, headers=headers)[0], 415)
        self.assertEqual(self.names(), ["app1", "app2"])
        headers = ("Host: 127.0.0.1:9901", "Content-Type: application/json; charset=utf-8")
        status, _, _ = request(self.site, "POST", self.path, self.add, headers=headers)
        self.assertEqual(status, 201)

    def test_foreign_origin(self) -> None:
        """Another site's Origin is 403; the listener's own origin is accepted."""
        json_ = "Content-Type: application/json"
        for origin in ("http://evil.example", "null", "http://127.0.0.1:9902"):
            headers = ("Host: 127.0.0.1:9901", json_, f"Origin: {origin}")
            status, response, body = request(
                self.site, "POST", self.path, self.add, headers=headers
            )
            self.assertEqual(status, 403, origin)
            self.assertIn("cross-origin request refused", body["error"])
            self.assertEqual(response.header("x-frame-options"), "DENY")
        self.assertEqual(self.names(), ["app1", "app2"])
        headers = ("Host: 127.0.0.1:9901", json_, "Origin: http://127.0.0.1:9901")
        self.assertEqual(request(self.site, "POST", self.path, self.add, headers=headers)[0], 201)

    def test_host_names_are_refused(self) -> None:
        """
        A Host that is a name other than localhost is 421, reads included (a rebound page
        could read the API); IP literals and localhost, with or without a port, pass.
        """
        for host in ("evil.example", "evil.example:9901", "127.0.0.1.nip.io", "[::1", "a:b"):
            status, _, body = request(self.site, "GET", "/api/v1/pools", headers=(f"Host: {host}",))
            self.assertEqual(status, 421, host)
            self.assertIn("is not this admin listener's address", body["error"])
            status, _, _ = request(
                self.site, "GET", "/dashboard/stats.json", headers=(f"Host: {host}",)
            )
            self.assertEqual(status, 421, host)
        json_ = "Content-Type: application/json"
        status, _, _ = request(
            self.site, "POST", self.path, self.add, headers=("Host: evil.example", json_)
        )
        self.assertEqual((status, self.names()), (421, ["app1", "app2"]))
        for host in (
            "127.0.0.1",
            "127.0.0.1:9901",
            "[::1]:9901",
            "[::1]",
            "localhost:9901",
            "LOCALHOST",
        ):
            status, _, _ = request(self.site, "GET", "/api/v1/pools", headers=(f"Host: {host}",))
            self.assertEqual(status, 200, host)

    def test_allowed_hosts(self) -> None:
        """
        ``allowed_hosts`` admits those names (any case and port, a trailing dot), and a
        leading-dot entry its domain and every name under it; other names are still 421.
        """
        _, site = memory_site(self, extra="allowed_hosts = ['lb1.internal', '.lb.example']\n")
        for host in (
            "lb1.internal",
            "LB1.Internal:9901",
            "lb1.internal.",
            "lb.example",
            "a.b.lb.example:9901",
        ):
            status, _, _ = request(site, "GET", "/api/v1/pools", headers=(f"Host: {host}",))
            self.assertEqual(status, 200, host)
        for host in (
            "x.lb1.internal",
            "evillb.example",
            "lb.example.evil",
            "evil.example",
            "[lb1.internal]:9901",  # no name goes in brackets
            ".lb.example",
            "a..lb.example",
        ):
            status, _, body = request(site, "GET", "/api/v1/pools", headers=(f"Host: {host}",))
            self.assertEqual(status, 421, host)
            self.assertIn("or add the name to [admin] allowed_hosts", body["error"])
        json_ = "Content-Type: application/json"
        status, _, _ = request(
            site, "POST", self.path, self.add, headers=("Host: lb1.internal:9901", json_)
        )
        self.assertEqual(status, 201)

    def test_unix_socket_has_no_host_check(self) -> None:
        """Over the UNIX socket any Host is accepted (curl --unix-socket http://lb/...)."""
        import io

        from twisted.internet.address import UNIXAddress

        protocol = self.site.buildProtocol(UNIXAddress(None))
        transport = StringTransport(
            hostAddress=UNIXAddress(b"/run/a.sock"), peerAddress=UNIXAddress(None)
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /api/v1/status HTTP/1.1\r\nHost: lb\r\n\r\n")
        response = read_response(io.BytesIO(transport.value()), "GET")
        protocol.connectionLost(None)
        self.assertEqual(response.status, 200)

    def test_no_framing(self) -> None:
        """The API, the dashboard and its assets say they may not be framed (clickjacking)."""
        for path in ("/api/v1/status", "/", "/dashboard/stats.json", "/metrics", "/nothing"):
            response = exchange(self.site, f"GET {path} HTTP/1.1\r\nHost: [::1]\r\n\r\n".encode())
            self.assertEqual(response.header("x-frame-options"), "DENY", path)
            self.assertEqual(
                response.header("content-security-policy"), "frame-ancestors 'none'", path
            )


class APIChangeTests(SynchronousTestCase):
    """The mutating calls in memory: each applies, answers the new state, saves the state."""

    def setUp(self) -> None:
        self.directory = short_directory(self)
        self.state_path = os.path.join(self.directory, "state.json")
        self.service, self.site = memory_site(self, extra=f"state_file = '{self.state_path}'\n")

    def saved(self) -> dict[str, Any]:
        return dict(json.loads(Path(self.state_path).read_text()))

    def test_patch(self) -> None:
        """PATCH sets state and weight together; the state file holds them."""
        status, _, body = request(
            self.site, "PATCH", "/api/v1/pools/app/backends/app2", {"state": "maint", "weight": 7}
        )
        self.assertEqual(status, 200)
        self.assertEqual(
            (body["admin_state"], body["state"], body["weight"]), ("maint", "MAINT", 7)
        )
        backend = self.service.pools["app"].backends[1]
        self.assertEqual((backend.admin_state.value, backend.weight), ("MAINT", 7))
        saved = self.saved()
        self.assertEqual((saved["format"], saved["config"]), (1, self.service.config.path))
        self.assertEqual(saved["runtime"], self.service.runtime_state())
        self.assertTrue(saved["runtime"]["backends"])

    def test_add_and_remove(self) -> None:
        """POST adds a backend (201, Location); DELETE drains and removes it (202)."""
        status, response, body = request(
            self.site,
            "POST",
            "/api/v1/pools/app/backends",
            {"address": "127.0.0.1:9003", "name": "app3", "weight": 2},
        )
        self.assertEqual(
            (status, response.header("location")), (201, "/api/v1/pools/app/backends/app3")
        )
        self.assertEqual(
            (body["name"], body["address"], body["weight"]), ("app3", "127.0.0.1:9003", 2)
        )
        self.assertEqual(
            [b.name for b in self.service.pools["app"].backends], ["app1", "app2", "app3"]
        )
        status, _, body = request(
            self.site, "POST", "/api/v1/pools/app/backends", {"address": "127.0.0.1:9003"}
        )
        self.assertEqual(status, 400)
        self.assertIn("already backend app3", body["error"])
        status, _, body = request(self.site, "POST", "/api/v1/pools/app/backends", {"name": "x"})
        self.assertEqual(status, 400)
        self.assertIn("address is required", body["error"])
        status, _, body = request(self.site, "DELETE", "/api/v1/pools/app/backends/app1")
        self.assertEqual((status, body["removed"]), (202, "app1"))
        self.assertEqual([b.name for b in self.service.pools["app"].backends], ["app2", "app3"])
        self.assertEqual(self.saved()["runtime"], self.service.runtime_state())
        for drain in list(self.service.drains):
            drain.cancel()

    def test_unwritable_state_file(self) -> None:
        """The change is in force; the answer and the log say the file was not written."""
        shutil.rmtree(self.directory)
        status, _, body = request(
            self.site, "PATCH", "/api/v1/pools/app/backends/app1", {"state": "drain"}
        )
        self.assertEqual(status, 200)
        self.assertIn("could not be written", body["warning"])
        self.assertEqual(self.service.pools["app"].backends[0].admin_state.value, "DRAINING")

    def test_reload(self) -> None:
        """POST reload: 200 with the result when valid; 422 with the problems when not."""
        path = self.service.config.path
        text = Path(path).read_text() if os.path.exists(path) else None
        self.assertIsNone(text)  # memory_site's config has no file yet: write it
        Path(path).write_text(
            FRONTEND
            + POOL.replace("weight = 2", "weight = 4")
            + "[admin]\nlisten = ['unix:"
            + self.directory
            + "/a.sock']\n"
            + f"state_file = '{self.state_path}'\n"
        )
        status, _, body = request(self.site, "POST", "/api/v1/reload")
        self.assertEqual((status, body["ok"], body["generation"]), (200, True, 2), body)
        self.assertEqual(self.service.pools["app"].backends[1].weight, 4)
        Path(path).write_text(FRONTEND + POOL.replace("weight = 2", "wieght = 2"))
        status, _, body = request(self.site, "POST", "/api/v1/reload")
        self.assertEqual((status, body["ok"], body["generation"]), (422, False, 2))
        self.assertEqual(body["error"], "the config file is invalid; nothing changed")
        self.assertEqual(len(body["problems"]), 1)
        self.assertIn("pools.app.backends[1].wieght: unknown key", body["problems"][0])
        _, _, status_body = request(self.site, "GET", "/api/v1/status")
        self.assertEqual(status_body["last_reload"]["ok"], False)
        self.assertEqual(status_body["generation"], 2)
        status, _, body = request(self.site, "POST", "/api/v1/reload", {"path": "/etc/passwd"})
        self.assertEqual(
            (status, body["error"]), (400, "unknown field 'path'; this call takes no fields")
        )


class APITokenTests(SynchronousTestCase):
    """With a token: mutating calls need it; reads do not."""

    def setUp(self) -> None:
        self.service, self.site = memory_site(self, token="s3cret")

    def test_mutating_calls_need_the_token(self) -> None:
        """No token or a wrong one: 401 with WWW-Authenticate, a log event, nothing changed."""
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = "/api/v1/pools/app/backends/app1"
        for token in (None, "wrong"):
            status, response, body = request(self.site, "PATCH", path, {"state": "drain"}, token)
            self.assertEqual(status, 401)
            self.assertEqual(response.header("www-authenticate"), 'Bearer realm="twisted-lb"')
            self.assertIn("Authorization: Bearer", body["error"])
        for method, target in [
            ("POST", "/api/v1/reload"),
            ("DELETE", path),
            ("POST", "/api/v1/pools/app/backends"),
        ]:
            self.assertEqual(request(self.site, method, target)[0], 401)
        self.assertEqual(self.service.pools["app"].backends[0].admin_state.value, "UP")
        refused = [e for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refused), 5)
        self.assertEqual(
            [e["reason"] for e in refused[:2]], ["no bearer token", "wrong bearer token"]
        )

    def test_reads_need_no_token(self) -> None:
        """GETs are answered without the token, as Envoy's admin and HAProxy's stats page."""
        for path in ("/api/v1/status", "/api/v1/pools", "/api/v1/frontends"):
            self.assertEqual(request(self.site, "GET", path)[0], 200)


class AdminClientTests(SynchronousTestCase):
    def test_default_socket_unreachable(self) -> None:
        """
        Without ``--socket`` or ``--url``, an unreachable API is named by the default socket's
        path, with how to give the right one.
        """
        from twisted_lb import cli

        missing = os.path.join(short_directory(self), "admin.sock")
        self.patch(cli, "DEFAULT_ADMIN_SOCKET", missing)
        client = cli.AdminClient(timeout=5)
        self.assertEqual(client.where(), f"unix:{missing}")
        with self.assertRaises(cli.CtlError) as raised:
            client.call("GET", "status")
        self.assertEqual(raised.exception.status, cli.CTL_UNREACHABLE)
        self.assertEqual(
            str(raised.exception),
            f"cannot reach the admin API at unix:{missing}: [Errno 2] No such file or directory "
            "(the default socket; pass --socket with the unix: path of the config's [admin] "
            "listen, or --url http://127.0.0.1:PORT for its tcp: one)",
        )


class AdminListenerTests(SynchronousTestCase):
    """The listeners, on the real reactor's sockets."""

    def stop(self, service: Any) -> None:
        """Stop a started admin service; its ports close in the reactor's next iterations."""
        from twisted.internet import reactor

        stopped: list[object] = []
        service.stopService().addBoth(stopped.append)
        for _ in range(50):
            if stopped:
                break
            reactor.iterate(0.01)
        self.assertEqual(len(stopped), 1)

    def test_embedded_start_restores_state(self) -> None:
        """
        Started with startService alone (embedded, no privilegedStartService), the admin
        service restores the state file before it listens.
        """
        from twisted.internet import reactor

        directory = short_directory(self)
        state = os.path.join(directory, "state.json")
        write_state_file(
            state,
            {
                "format": 1,
                "runtime": {
                    "backends": [
                        {"pool": "app", "backend": "app2", "state": "drain", "weight": 3},
                        {"pool": "gone", "backend": "x", "state": "drain"},
                    ]
                },
            },
        )
        config = parse_config(
            FRONTEND
            + POOL
            + f"[admin]\nlisten = ['unix:{directory}/a.sock']\nstate_file = '{state}'\n"
        )
        service = LoadBalancerService.from_config(config, reactor)
        assert service.admin is not None
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service.admin.startService()
        backend = service.pools["app"].backends[1]
        self.assertEqual((backend.admin_state.value, backend.weight), ("DRAINING", 3))
        skipped = [e["problem"] for e in events if "skipped" in e.get("log_format", "")]
        self.assertEqual(len(skipped), 1)
        self.assertIn("gone", skipped[0])
        self.stop(service.admin)

    def test_socket_mode(self) -> None:
        """A UNIX admin socket gets socket_mode; a stale socket file is replaced."""
        from twisted.internet import reactor

        directory = short_directory(self)
        path = os.path.join(directory, "admin.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays, nothing accepts on it
        for mode in (0o600, 0o660):
            config = parse_config(
                FRONTEND + POOL + f"[admin]\nlisten = ['unix:{path}']\nsocket_mode = '{mode:04o}'\n"
            )
            service = LoadBalancerService.from_config(config, reactor)
            assert service.admin is not None
            service.admin.privilegedStartService()
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), mode)
            self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
            self.stop(service.admin)
            self.assertFalse(os.path.exists(path))
        with open(path, "w") as f:
            f.write("not a socket")
        config = parse_config(FRONTEND + POOL + f"[admin]\nlisten = ['unix:{path}']\n")
        service = LoadBalancerService.from_config(config, reactor)
        assert service.admin is not None
        from twisted_lb.service import ListenError

        with self.assertRaises(ListenError) as caught:
            service.admin.privilegedStartService()
        self.assertIn(f"admin: cannot listen on unix:{path}", str(caught.exception))
        self.assertEqual(service.admin.site.numPorts, 0)
        self.assertEqual(
            [c for c in reactor.getDelayedCalls() if "_updateLogDateTime" in repr(c)], []
        )
        self.assertEqual(Path(path).read_text(), "not a socket")

    def test_socket_mode_while_listening_starts(self) -> None:
        """
        The socket is no wider than socket_mode at any moment: when listen() is called
        (Twisted's port chmods it between bind and listen) and after.
        """
        from twisted.internet import reactor

        path = os.path.join(short_directory(self), "admin.sock")
        seen: list[int] = []
        listen = socket.socket.listen

        def recording(sock: socket.socket, *args: Any) -> None:
            if sock.family == socket.AF_UNIX:
                seen.append(stat.S_IMODE(os.stat(path).st_mode))
            listen(sock, *args)

        self.patch(socket.socket, "listen", recording)
        config = parse_config(FRONTEND + POOL + f"[admin]\nlisten = ['unix:{path}']\n")
        service = LoadBalancerService.from_config(config, reactor)
        assert service.admin is not None
        service.admin.privilegedStartService()
        self.assertEqual(seen, [0o600])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.stop(service.admin)


# -- a real twistd -----------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


class AdminProcess:
    """A twistd balancer with an admin socket (and a TCP admin listener with a token)."""

    def __init__(self, lb: Process, port: int, socket_path: str, admin_port: int, token: str):
        self.lb = lb
        self.port = port
        self.socket_path = socket_path
        self.admin_port = admin_port
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        tcp: bool = False,
    ) -> tuple[int, Any]:
        connection: http.client.HTTPConnection
        if tcp:
            connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=TIMEOUT)
        else:
            connection = UnixHTTPConnection(self.socket_path)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method != "GET":
            headers["Content-Type"] = "application/json"
        data = None if body is None else json.dumps(body).encode()
        try:
            connection.request(method, "/api/v1/" + path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def ctl(self, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
        """``twisted-lb ctl --socket ... ARGS``, as an operator runs it."""
        return ctl("--socket", self.socket_path, *args)


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTED_LB, "ctl", *args], capture_output=True, text=True, timeout=30, check=False
    )


class AdminIntegrationCase(SynchronousTestCase):
    def start_backend(self, name: str) -> tuple[Process, int]:
        process, port = start_backend("echo", name)
        self.addCleanup(process.kill)
        return process, port

    def write_config(self, ports: list[int], directory: str, extra: str = "") -> str:
        Path(directory, "admin.token").write_text("s3cret\n")
        os.chmod(os.path.join(directory, "admin.token"), 0o600)
        config = http_lb_config({"app": ports}) + (
            "[admin]\n"
            f'listen = ["unix:{directory}/admin.sock", "tcp:0:interface=127.0.0.1:backlog=20"]\n'
            'token_file = "admin.token"\n'
            f"{extra}"
        )
        path = os.path.join(directory, "lb.toml")
        Path(path).write_text(config)
        return path

    def start_admin_lb(self, path: str) -> AdminProcess:
        lb, port = start_lb(path)
        self.addCleanup(lb.kill)
        directory = os.path.dirname(path)
        admin_port = int(lb.wait_for(r"admin API listening on 127\.0\.0\.1:(\d+)").group(1))
        lb.wait_for(r"admin API listening on unix:.*\(mode 0600\)")
        return AdminProcess(lb, port, f"{directory}/admin.sock", admin_port, "s3cret")

    def backend_of(self, port: int) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            return str(response.getheader("X-Backend"))
        finally:
            connection.close()


class AdminIntegrationTests(AdminIntegrationCase):
    def test_twistd(self) -> None:
        """
        Under twistd: the socket has mode 0600; reads work over the socket and over TCP
        without the token; a change over TCP needs the token; ctl shows status and pools.
        """
        _, port1 = self.start_backend("app1")
        _, port2 = self.start_backend("app2")
        directory = short_directory(self)
        path = self.write_config([port1, port2], directory)
        os.chmod(os.path.join(directory, "admin.token"), 0o644)
        admin = self.start_admin_lb(path)
        self.assertEqual(stat.S_IMODE(os.stat(admin.socket_path).st_mode), 0o600)
        admin.lb.wait_for(r"admin: token_file .*admin\.token can be read by other users")

        status, body = admin.call("GET", "status")
        self.assertEqual((status, body["generation"]), (200, 1))
        self.assertEqual(body["config"], os.path.join(directory, "lb.toml"))
        status, body = admin.call("GET", "pools", tcp=True)
        self.assertEqual([b["name"] for b in body["pools"][0]["backends"]], ["app1", "app2"])
        status, body = admin.call("GET", "frontends", tcp=True)
        self.assertEqual(body["frontends"][0]["listeners"][0]["address"], f"127.0.0.1:{admin.port}")

        change = {"weight": 3}
        self.assertEqual(admin.call("PATCH", "pools/app/backends/app2", change, tcp=True)[0], 401)
        self.assertEqual(
            admin.call("PATCH", "pools/app/backends/app2", change, token="nope", tcp=True)[0], 401
        )
        admin.lb.wait_for(r"admin API: refused PATCH /api/v1/pools/app/backends/app2 from 127")
        status, body = admin.call("PATCH", "pools/app/backends/app2", change, "s3cret", tcp=True)
        self.assertEqual((status, body["weight"]), (200, 3))

        # curl, as docs/operations.rst shows it
        out = subprocess.run(
            ["curl", "-sS", "--unix-socket", admin.socket_path, "http://lb/api/v1/pools"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        self.assertEqual(json.loads(out)["pools"][0]["backends"][1]["weight"], 3)

        shown = admin.ctl("status")
        self.assertEqual(shown.returncode, 0, shown.stderr)
        rows = dict(line.split(None, 1) for line in shown.stdout.splitlines()[2:])
        self.assertEqual(rows["generation"], "1")
        self.assertEqual(rows["config"], f"{directory}/lb.toml")
        self.assertIn("last reload  none since start", shown.stdout)
        table = admin.ctl("pools")
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        self.assertEqual(
            lines[0].split()[:7],
            ["POOL", "BACKEND", "ADDRESS", "STATE", "ADMIN", "HEALTH", "WEIGHT"],
        )
        self.assertEqual(
            lines[2].split()[:7],
            ["app", "app2", f"127.0.0.1:{port2}", "UP", "ready", "unchecked", "3"],
        )
        as_json = admin.ctl("--json", "pools")
        self.assertEqual(json.loads(as_json.stdout)["pools"][0]["backends"][1]["weight"], 3)

    def test_ctl_exit_codes(self) -> None:
        """0 done; 1 refused (unknown pool, bad token, invalid value); 2 usage; 3 unreachable."""
        _, port1 = self.start_backend("app1")
        directory = short_directory(self)
        admin = self.start_admin_lb(self.write_config([port1], directory))
        token = ("--token-file", f"{directory}/admin.token")
        done = admin.ctl(*token, "weight", "app", "app1", "4")
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertIn("pool app: backend app1", done.stdout)
        refused = admin.ctl(*token, "drain", "nope", "app1")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("404: unknown pool 'nope'", refused.stderr)
        unauthorised = admin.ctl("drain", "app", "app1")
        self.assertEqual(unauthorised.returncode, 1)
        self.assertIn("401", unauthorised.stderr)
        invalid = admin.ctl(*token, "weight", "app", "app1", "0")
        self.assertEqual(invalid.returncode, 1)
        self.assertIn("must be an integer from 1 to 256, not 0", invalid.stderr)
        self.assertEqual(admin.ctl("weight", "app", "app1").returncode, 2)
        self.assertEqual(ctl("--socket", "a", "--url", "http://b", "status").returncode, 2)
        unreachable = ctl("--socket", f"{directory}/nothing.sock", "status")
        self.assertEqual(unreachable.returncode, 3)
        self.assertIn(
            f"cannot reach the admin API at unix:{directory}/nothing.sock", unreachable.stderr
        )
        self.assertNotIn("the default socket", unreachable.stderr)
        tcp = ctl("--url", f"http://127.0.0.1:{admin.admin_port}", *token, "maint", "app", "app1")
        self.assertEqual(tcp.returncode, 0, tcp.stderr)
        _, body = admin.call("GET", "pools/app/backends/app1")
        self.assertEqual((body["admin_state"], body["weight"]), ("maint", 4))

    def test_non_loopback_without_token_does_not_start(self) -> None:
        """twistd refuses to start, naming the key; nothing listens."""
        directory = short_directory(self)
        path = os.path.join(directory, "lb.toml")
        Path(path).write_text(
            http_lb_config({"app": [9]}) + "[admin]\nlisten = ['tcp:0:interface=0.0.0.0']\n"
        )
        done = subprocess.run(
            [TWISTD, "-n", "lb", "--config", path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn(
            f"{path}: admin.listen[0]: 'tcp:0:interface=0.0.0.0' listens on all interfaces",
            done.stderr,
        )
        self.assertNotIn("listening", done.stdout + done.stderr)


class DrainTests(AdminIntegrationCase):
    def test_drain_through_ctl(self) -> None:
        """
        ``ctl drain``: the backend gets no new requests, and its in-flight slow download
        completes; ``ctl ready`` brings it back.
        """
        _, port1 = self.start_backend("app1")
        _, port2 = self.start_backend("app2")
        directory = short_directory(self)
        admin = self.start_admin_lb(self.write_config([port1, port2], directory))
        token = ("--token-file", f"{directory}/admin.token")

        size = 8 * 1024 * 1024
        slow = socket.create_connection(("127.0.0.1", admin.port), timeout=TIMEOUT)
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        rfile = slow.makefile("rb")
        # round robin: the first request goes to app1
        slow.sendall(b"GET /_bytes?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        head = rfile.readline()
        self.assertIn(b"200", head)
        headers = {}
        while (line := rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        self.assertEqual(headers["x-backend"], "app1")
        self.assertEqual(len(rfile.read(65536)), 65536)

        drained = admin.ctl(*token, "drain", "app", "app1")
        self.assertEqual(drained.returncode, 0, drained.stderr)
        self.assertIn("admin drain", drained.stdout)
        _, body = admin.call("GET", "pools/app/backends/app1")
        self.assertEqual((body["state"], body["in_flight_requests"]), ("DRAINING", 1))

        self.assertEqual([self.backend_of(admin.port) for _ in range(6)], ["app2"] * 6)

        received = 65536
        while received < size:
            chunk = rfile.read(min(1 << 20, size - received))
            self.assertTrue(chunk, f"download cut after {received} bytes")
            received += len(chunk)
        self.assertEqual(received, size)

        ready = admin.ctl(*token, "ready", "app", "app1")
        self.assertEqual(ready.returncode, 0, ready.stderr)
        self.assertIn("app1", {self.backend_of(admin.port) for _ in range(4)})


class StateFileIntegrationTests(AdminIntegrationCase):
    def test_state_survives_restart(self) -> None:
        """A drain and a weight set through the API are in force again after a restart."""
        _, port1 = self.start_backend("app1")
        _, port2 = self.start_backend("app2")
        directory = short_directory(self)
        path = self.write_config([port1, port2], directory, 'state_file = "state.json"\n')
        admin = self.start_admin_lb(path)
        token = ("--token-file", f"{directory}/admin.token")
        self.assertEqual(admin.ctl(*token, "drain", "app", "app1").returncode, 0)
        self.assertEqual(admin.ctl(*token, "weight", "app", "app2", "5").returncode, 0)
        saved = json.loads(Path(directory, "state.json").read_text())
        self.assertEqual(saved["format"], 1)
        admin.lb.stop()

        again = self.start_admin_lb(path)
        again.lb.wait_for(r"runtime changes restored from .*state\.json")
        _, body = again.call("GET", "pools/app")
        backends = {b["name"]: b for b in body["backends"]}
        self.assertEqual(backends["app1"]["admin_state"], "drain")
        self.assertEqual(backends["app2"]["weight"], 5)


class ChangeIntegrationTests(AdminIntegrationCase):
    def test_add_remove_reload_through_ctl(self) -> None:
        """
        ``ctl add`` puts a backend in rotation, ``ctl remove`` takes it out; ``ctl reload``
        applies a valid file (exit 0) and refuses an invalid one with its problems (exit 1).
        """
        _, port1 = self.start_backend("app1")
        _, port2 = self.start_backend("app2")
        directory = short_directory(self)
        path = self.write_config([port1], directory)
        admin = self.start_admin_lb(path)
        token = ("--token-file", f"{directory}/admin.token")

        added = admin.ctl(*token, "add", "app", f"127.0.0.1:{port2}", "--name", "extra")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertIn(f"pool app: backend extra (127.0.0.1:{port2}) added", added.stdout)
        seen = {self.backend_of(admin.port) for _ in range(4)}
        self.assertEqual(seen, {"app1", "app2"})
        self.assertEqual(admin.ctl(*token, "add", "app", "nonsense").returncode, 1)

        removed = admin.ctl(*token, "remove", "app", "extra")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertIn("backend extra is draining, then removed", removed.stdout)
        self.assertEqual({self.backend_of(admin.port) for _ in range(4)}, {"app1"})

        Path(path).write_text(
            Path(path).read_text().replace("connect_timeout = 2.0", "retries = 1")
        )
        reloaded = admin.ctl(*token, "reload")
        self.assertEqual(reloaded.returncode, 0, reloaded.stderr)
        self.assertIn("reload applied: generation 2", reloaded.stdout)
        self.assertIn("  changed: pool app", reloaded.stdout)

        Path(path).write_text(Path(path).read_text().replace("retries = 1", "retries = -1"))
        refused = admin.ctl(*token, "reload")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("reload refused: the config is invalid; generation 2 stays", refused.stderr)
        self.assertIn(f"{path}: pools.app.retries: must be an integer >= 0, not -1", refused.stderr)
        as_json = admin.ctl(*token, "--json", "reload")
        self.assertEqual(as_json.returncode, 1)
        self.assertEqual(json.loads(as_json.stdout)["ok"], False)
        status = admin.ctl("status")
        self.assertIn("FAILED (1 problem) at ", status.stdout)

    def test_error_statuses_over_the_socket(self) -> None:
        """Every error status, from the real balancer, over its real sockets."""
        _, port1 = self.start_backend("app1")
        directory = short_directory(self)
        path = self.write_config([port1], directory, "allowed_hosts = ['lb1.internal']\n")
        admin = self.start_admin_lb(path)
        backend = "pools/app/backends/app1"
        cases: list[tuple[str, str, object, str | None, int]] = [
            ("PATCH", backend, {"state": "drain"}, None, 401),
            ("PATCH", backend, {"state": "drain"}, "wrong", 401),
            ("PATCH", backend, {"state": "gone"}, "s3cret", 400),
            ("PATCH", backend, {"colour": "red"}, "s3cret", 400),
            ("PATCH", backend, {"weight": 0}, "s3cret", 400),
            ("PATCH", "pools/nope/backends/app1", {"state": "drain"}, "s3cret", 404),
            ("PATCH", "pools/app/backends/nope", {"state": "drain"}, "s3cret", 404),
            ("GET", "nope", None, None, 404),
            ("POST", "pools", {}, "s3cret", 405),
        ]
        for method, path, body, token, expected in cases:
            for tcp in (False, True):
                status, answer = admin.call(method, path, body, token, tcp=tcp)
                self.assertEqual(status, expected, (method, path, body, token, answer))
                self.assertEqual(answer["status"], expected)
        for raw, expected in [(b'{"state": "dr', 400), (b"x" * (MAX_BODY_BYTES + 1), 413)]:
            connection = UnixHTTPConnection(admin.socket_path)
            connection.request(
                "PATCH",
                f"/api/v1/{backend}",
                body=raw,
                headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            self.assertEqual(response.status, expected)
            self.assertEqual(json.loads(response.read())["status"], expected)
            connection.close()
        # A web page's tricks, over loopback TCP: text/plain JSON, a rebound Host name.
        for headers, expected in [
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/json", "Host": "evil.example:80"}, 421),
            ({"Content-Type": "application/json", "Host": "lb2.internal"}, 421),
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ]:
            connection = http.client.HTTPConnection("127.0.0.1", admin.admin_port, timeout=TIMEOUT)
            connection.request(
                "PATCH",
                f"/api/v1/{backend}",
                body=b'{"state": "drain"}',
                headers={"Authorization": "Bearer s3cret", **headers},
            )
            response = connection.getresponse()
            self.assertEqual(response.status, expected, headers)
            self.assertEqual(response.getheader("X-Frame-Options"), "DENY")
            response.read()
            connection.close()
        _, body = admin.call("GET", backend)
        self.assertEqual((body["admin_state"], body["weight"]), ("ready", 1))
        # A name of allowed_hosts passes (any case and port), as ctl --url http://NAME:PORT
        # sends it.
        connection = http.client.HTTPConnection("127.0.0.1", admin.admin_port, timeout=TIMEOUT)
        connection.request(
            "PATCH",
            f"/api/v1/{backend}",
            body=b'{"weight": 3}',
            headers={
                "Authorization": "Bearer s3cret",
                "Content-Type": "application/json",
                "Host": f"LB1.internal:{admin.admin_port}",
            },
        )
        response = connection.getresponse()
        self.assertEqual(response.status, 200, response.read())
        connection.close()
        _, body = admin.call("GET", backend)
        self.assertEqual(body["weight"], 3)
        # A browser that asks for /dashboard is sent to the page.
        connection = http.client.HTTPConnection("127.0.0.1", admin.admin_port, timeout=TIMEOUT)
        connection.request("GET", "/dashboard")
        response = connection.getresponse()
        response.read()
        self.assertEqual(response.status, 302)
        page = urljoin("/dashboard", response.getheader("Location") or "")
        connection.request("GET", page)
        response = connection.getresponse()
        self.assertEqual((page, response.status), ("/", 200))
        self.assertIn(b'<script src="/dashboard/dashboard.js">', response.read())
        connection.close()

    def test_sighup_reload_rewrites_the_state_file(self) -> None:
        """
        A SIGHUP reload overrides the runtime changes, and the state file says so: after a
        restart the config's values are in force, not the overridden change.
        """
        _, port1 = self.start_backend("app1")
        directory = short_directory(self)
        path = self.write_config([port1], directory, 'state_file = "state.json"\n')
        admin = self.start_admin_lb(path)
        token = ("--token-file", f"{directory}/admin.token")
        self.assertEqual(admin.ctl(*token, "drain", "app", "app1").returncode, 0)
        state = Path(directory, "state.json")
        self.assertEqual(len(json.loads(state.read_text())["runtime"]["backends"]), 1)
        admin.lb.signal(signal.SIGHUP)
        admin.lb.wait_for(r"reload: generation 2")
        deadline = time.monotonic() + TIMEOUT
        while json.loads(state.read_text())["generation"] != 2:
            self.assertLess(time.monotonic(), deadline, state.read_text())
            time.sleep(0.05)
        self.assertEqual(json.loads(state.read_text())["runtime"]["backends"], [])
        admin.lb.stop()
        again = self.start_admin_lb(path)
        _, body = again.call("GET", "pools/app/backends/app1")
        self.assertEqual(body["admin_state"], "ready")
