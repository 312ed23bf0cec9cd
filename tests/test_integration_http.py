"""
Integration tests: a real ``twistd -n lb`` in http mode, real backends, real clients, loopback.

The backends are the ``echo``, ``upgrade``, ``idle-close`` and ``silent`` modes of
``tests/_backend.py``; the clients are ``http.client`` and raw sockets.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._backend import pattern
from tests._harness import (
    TWISTED_REACTOR,
    Process,
    environ_with,
    free_port,
    http_lb_config,
    read_response,
    rss_bytes,
    start_backend,
    start_lb,
)

MB = 1024 * 1024

#: Seconds any single socket operation of a client may take.
TIMEOUT = 10.0

#: What must never appear in the balancer's log: a traceback, an unhandled error (in a
#: Deferred, or logged by the reactor), an event at the error or critical level.
LOG_ERRORS = re.compile(r"Traceback|Unhandled|#(error|critical)\]|\[-\].*\berror\b", re.I)


class HTTPIntegrationCase(SynchronousTestCase):
    def start_backend(self, mode: str, name: str, **env: str) -> tuple[Process, int]:
        process, port = start_backend(mode, name, environ_with(**env) if env else None)
        self.addCleanup(process.kill)
        return process, port

    def start_lb(
        self, config: str, env: dict[str, str] | None = None, reactor: str | None = None
    ) -> tuple[Process, int]:
        path = Path(self.mktemp() + ".toml")
        path.write_text(config)
        process, port = start_lb(str(path), env=env, reactor=reactor)
        self.addCleanup(process.kill)
        self.addCleanup(self.stop_and_check_log, process)
        return process, port

    def echo_lb(self, **config: Any) -> tuple[Process, Process, int]:
        """One echo backend (``app1``) behind a balancer; returns both and its port."""
        backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(http_lb_config({"app": [backend_port]}, **config))
        return backend, lb, port

    def assert_clean_log(self, lb: Process) -> None:
        """Nothing in the balancer's log is an error, a traceback or an unhandled failure."""
        bad = [line for line in lb.output().splitlines() if LOG_ERRORS.search(line)]
        self.assertEqual(bad, [], "\n" + lb.output())

    def stop_and_check_log(self, lb: Process) -> None:
        """
        Stop the balancer with SIGTERM, as an operator would (so that what only shows at
        shutdown, such as a Deferred's unhandled error, is logged too), and check its log.
        """
        lb.stop()
        self.assert_clean_log(lb)

    def connect(self, port: int, timeout: float = TIMEOUT) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.addCleanup(sock.close)
        return sock

    def client(self, port: int) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.addCleanup(connection.close)
        return connection


def request(
    connection: http.client.HTTPConnection,
    method: str,
    target: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on ``connection``; returns the response and its whole body."""
    connection.request(method, target, body=body, headers=headers or {})
    response = connection.getresponse()
    return response, response.read()


def echoed(body: bytes) -> dict[str, Any]:
    """The request as the echo backend saw it."""
    result: dict[str, Any] = json.loads(body)
    return result


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    """The values of the header ``name`` the echo backend received, in order."""
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


def lines_matching(process: Process, pattern_: str, settle: float = 0.2) -> list[str]:
    regex = re.compile(pattern_)
    return [line for line in process.output(settle).splitlines() if regex.search(line)]


def read_slowly(test: SynchronousTestCase, sock: Any, total: int, pause: float) -> None:
    """
    Read a 200 response to ``GET /_bytes?n=TOTAL&fill=d`` from ``sock`` in 32 KiB reads with
    ``pause`` seconds between them, as a slow client; check its Content-Length and every byte.
    """
    buffered = b""
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        test.assertTrue(data, "closed in the response head")
        buffered += data
    head, _, body = buffered.partition(b"\r\n\r\n")
    test.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
    test.assertIn(f"\r\ncontent-length: {total}".encode(), head.lower())
    received, wrong = len(body), len(body) - body.count(b"d")
    while received < total:
        data = sock.recv(32 * 1024)
        test.assertTrue(data, f"closed after {received} of {total} bytes")
        received += len(data)
        wrong += len(data) - data.count(b"d")
        time.sleep(pause)
    test.assertEqual((received, wrong), (total, 0))


class ExchangeTests(HTTPIntegrationCase):
    def test_get(self) -> None:
        """
        A GET reaches the backend with its target, ``Host`` and duplicate headers in order,
        plus ``X-Forwarded-For``; the response comes back, and the access log has a line for it.
        """
        _backend, lb, port = self.echo_lb()
        sock = self.connect(port)
        sock.sendall(
            b"GET /hello?x=1 HTTP/1.1\r\nHost: example.test\r\nX-Dup: 1\r\nX-Other: o\r\n"
            b"X-Dup: 2\r\n\r\n"
        )
        response = read_response(sock.makefile("rb"))
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("x-backend"), "app1")
        echo = echoed(response.body)
        self.assertEqual((echo["method"], echo["target"]), ("GET", "/hello?x=1"))
        self.assertEqual(header_values(echo, "Host"), ["example.test"])
        self.assertEqual(header_values(echo, "X-Dup"), ["1", "2"])
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(echo["body_length"], 0)
        lb.wait_for(
            r'twisted_lb\.access#info\] web 127\.0\.0\.1 "GET /hello\?x=1" 200 in=\d+ '
            r"out=\d+ backend=app1 connect_ms=\d+ first_byte_ms=\d+ total_ms=\d+"
        )

    def test_post_with_content_length(self) -> None:
        """A POST's 200 kB body reaches the backend whole; so does a PUT's, on the same client."""
        _backend, _lb, port = self.echo_lb()
        client = self.client(port)
        for method, size in (("POST", 200_000), ("PUT", 3)):
            body = pattern(size)
            response, data = request(client, method, "/upload", body)
            self.assertEqual(response.status, 200)
            echo = echoed(data)
            self.assertEqual(echo["method"], method)
            self.assertEqual(header_values(echo, "Content-Length"), [str(size)])
            self.assertEqual(header_values(echo, "Transfer-Encoding"), [])
            self.assertEqual(echo["body_length"], size)
            self.assertEqual(echo["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_chunked_request_body(self) -> None:
        """A chunked request body (of 100 uneven chunks) is received whole by the backend."""
        _backend, _lb, port = self.echo_lb()
        parts = [pattern(97 * i + 1) for i in range(100)]
        response, data = request(self.client(port), "POST", "/chunked", iter(parts))
        self.assertEqual(response.status, 200)
        echo = echoed(data)
        self.assertEqual(header_values(echo, "Transfer-Encoding"), ["chunked"])
        self.assertEqual(header_values(echo, "Content-Length"), [])
        self.assertEqual(echo["body_length"], sum(map(len, parts)))
        self.assertEqual(echo["body_sha256"], hashlib.sha256(b"".join(parts)).hexdigest())
        self.assertGreaterEqual(echo["chunks"], 1)

    def test_chunked_response(self) -> None:
        """A chunked response of 1 MB arrives whole, chunked, on a connection kept alive."""
        _backend, _lb, port = self.echo_lb()
        client = self.client(port)
        response, data = request(client, "GET", "/_bytes?n=1000000&chunked=1")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(data, pattern(1_000_000))
        response, data = request(client, "GET", "/again")
        self.assertEqual(response.status, 200)
        self.assertEqual(echoed(data)["connection"], 1)

    def test_close_delimited_response(self) -> None:
        """
        A close-delimited response (no length, ``Connection: close``) reaches an HTTP/1.1
        client whole.
        """
        _backend, _lb, port = self.echo_lb()
        response, data = request(self.client(port), "GET", "/_bytes?n=300000&close=1")
        self.assertEqual(response.status, 200)
        self.assertEqual(data, pattern(300_000))

    def test_expect_100_continue(self) -> None:
        """
        A client that sends ``Expect: 100-continue`` and waits gets ``100 Continue`` before
        it sends the body, then the final 200; the backend has the whole body.
        """
        _backend, _lb, port = self.echo_lb()
        sock = self.connect(port)
        rfile = sock.makefile("rb")
        sock.sendall(
            b"POST /expect HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = read_response(rfile, "POST")
        self.assertEqual((interim.version, interim.status), ("HTTP/1.1", 100))
        sock.sendall(b"hello world")
        final = read_response(rfile, "POST")
        self.assertEqual(final.status, 200)
        echo = echoed(final.body)
        self.assertEqual(echo["body_length"], 11)
        self.assertEqual(echo["body_sha256"], hashlib.sha256(b"hello world").hexdigest())
        self.assertEqual(header_values(echo, "Expect"), ["100-continue"])


class ReactorTests(HTTPIntegrationCase):
    """
    ``twistd -n lb`` runs on twisted_lb.reactor on Linux without being asked (the shipped
    command is the fast one), and ``--reactor`` still picks another, which must serve the same
    exchanges.
    """

    def exchanges(self, reactor: str | None) -> tuple[Process, list[int]]:
        _backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(http_lb_config({"app": [backend_port]}), reactor=reactor)
        sock = self.connect(port)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = sock.makefile("rb")
        targets = [echoed(read_response(reader).body)["target"] for _ in range(2)]
        self.assertEqual(targets, ["/a", "/b"])
        connection = self.client(port)
        statuses = [request(connection, "POST", "/c", body=b"x" * 70000)[0].status]
        statuses += [request(connection, "GET", "/d")[0].status for _ in range(3)]
        return lb, statuses

    def test_reactor_option_wins(self) -> None:
        """Pipelined and keep-alive requests through the reactor ``--reactor`` names."""
        if TWISTED_REACTOR is None:
            raise SkipTest("twisted_lb.reactor is Linux only")
        lb, statuses = self.exchanges(TWISTED_REACTOR)
        self.assertEqual(statuses, [200] * 4)
        lb.wait_for(r"reactor class: twisted\.internet\.epollreactor\.EPollReactor")
        self.assertNotIn("twisted_lb.reactor", lb.output())

    def test_lb_reactor_by_default(self) -> None:
        """Without ``--reactor``, twistd names twisted_lb's reactor at start (Linux)."""
        if TWISTED_REACTOR is None:
            raise SkipTest("twisted_lb.reactor is Linux only")
        lb, statuses = self.exchanges(None)
        self.assertEqual(statuses, [200] * 4)
        lb.wait_for(r"reactor class: twisted_lb\.reactor\.EPollReactor")


class KeepAliveTests(HTTPIntegrationCase):
    def test_sequential_requests_reuse_a_backend_connection(self) -> None:
        """50 sequential requests over one client connection make at most 3 backend ones."""
        _backend, _lb, port = self.echo_lb()
        client = self.client(port)
        seen = set()
        for i in range(50):
            response, data = request(client, "GET", f"/ka/{i}")
            self.assertEqual(response.status, 200)
            seen.add(echoed(data)["connection"])
            if i == 0:
                client_socket = client.sock
        self.assertIs(client.sock, client_socket)  # the client connection was kept alive
        self.assertLessEqual(int(response.getheader("X-Connections") or 0), 3)
        self.assertLessEqual(len(seen), 3)

    def test_several_client_connections_share_backend_connections(self) -> None:
        """
        50 rounds over 3 client connections, each sending in turn (150 requests, POSTs
        among them), make at most 3 backend connections.
        """
        _backend, _lb, port = self.echo_lb()
        clients = [self.client(port) for _ in range(3)]
        for i in range(50):
            for j, client in enumerate(clients):
                if (i + j) % 4 == 0:
                    response, _ = request(client, "POST", f"/ka/{i}/{j}", b"body")
                else:
                    response, _ = request(client, "GET", f"/ka/{i}/{j}")
                self.assertEqual(response.status, 200)
        self.assertLessEqual(int(response.getheader("X-Connections") or 0), 3)

    def test_pipelined_requests_answered_in_order(self) -> None:
        """Six requests written at once on one connection get their responses in order."""
        _backend, _lb, port = self.echo_lb()
        sock = self.connect(port)
        rfile = sock.makefile("rb")
        sent = [
            ("GET", "/p/1", b""),
            ("POST", "/p/2", b"two"),
            ("HEAD", "/p/3", b""),
            ("GET", "/_bytes?n=70000&chunked=1", b""),
            ("DELETE", "/p/5", b""),
            ("GET", "/p/6", b""),
        ]
        data = b"".join(
            f"{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
            for method, target, body in sent
        )
        sock.sendall(data)
        responses = [read_response(rfile, method) for method, _, _ in sent]
        self.assertEqual([r.status for r in responses], [200] * 6)
        for (method, target, body), response in zip(sent, responses, strict=True):
            if method == "HEAD":
                self.assertEqual(response.body, b"")
                self.assertIsNotNone(response.header("content-length"))
            elif target.startswith("/_bytes"):
                self.assertEqual(response.body, pattern(70000))
            else:
                echo = echoed(response.body)
                self.assertEqual((echo["method"], echo["target"]), (method, target))
                self.assertEqual(echo["body_length"], len(body))
        # Still usable afterwards.
        sock.sendall(b"GET /p/7 HTTP/1.1\r\nHost: test\r\n\r\n")
        self.assertEqual(echoed(read_response(rfile).body)["target"], "/p/7")


class KeepAliveRaceTests(HTTPIntegrationCase):
    LANES = 3
    ROUNDS = 12
    #: The backends' keep-alive idle time, in seconds; requests are spaced around it.
    IDLE = 0.5

    def test_reused_connection_closed_before_response_is_retried(self) -> None:
        """
        A backend that answers one request per connection and closes it, unanswered, when the
        next request comes: the second GET of a client, sent over the reused connection, is
        sent again on a fresh one and answered (the keep-alive race, made certain).
        """
        backend, backend_port = self.start_backend("idle-close", "once", ANSWER_LIMIT="1")
        config = http_lb_config({"app": [backend_port]}, pool_extra="upstream_idle_timeout = 10.0")
        _lb, port = self.start_lb(config)
        client = self.client(port)
        for target, connection in (("/first", 1), ("/second", 2), ("/third", 3)):
            response, data = request(client, "GET", target)
            self.assertEqual(
                (response.status, data), (200, f"{target} on connection {connection}\n".encode())
            )
        self.assertEqual(
            lines_matching(backend, r"^DROPPED "), ["DROPPED 1 GET /second", "DROPPED 2 GET /third"]
        )

    def test_backend_closing_idle_connections_gives_no_502(self) -> None:
        """
        Backends close connections idle for 0.5 s, a little late (50 ms), dropping a request
        that arrives meanwhile; the balancer keeps idle connections for 10 s, so it does reuse
        connections the backend is closing. Requests spaced 0.4 to 0.6 s apart, 36 of them in
        three lanes at once (one client connection and one backend each), all get a 200:
        a request that meets the race is sent again on a fresh connection. (About 6 s: the
        backends' idle time is short, as the race only needs the request to land in the 50 ms
        between the backend's timeout and its close; a quarter of the spacings do.)
        """
        lanes, rounds = self.LANES, self.ROUNDS
        names = ["a", "b", "c"][:lanes]
        backends, ports = [], []
        for name in names:
            backend, backend_port = self.start_backend(
                "idle-close", name, IDLE_TIMEOUT=str(self.IDLE), CLOSE_LAG="0.05"
            )
            backends.append(backend)
            ports.append(backend_port)
        config = http_lb_config(
            {name: [backend_port] for name, backend_port in zip(names, ports, strict=True)},
            routes=[(f"/{name}/", name) for name in names[1:]],
            pool_extra="upstream_idle_timeout = 10.0",
        )
        lb, port = self.start_lb(config)
        probes = lanes * rounds
        results: list[list[tuple[float, int]]] = [[] for _ in range(lanes)]
        errors: list[str] = []

        def spacing(lane: int, round_: int) -> float:
            return self.IDLE - 0.1 + 0.2 * (round_ * lanes + lane) / (probes - 1)

        def run(lane: int) -> None:
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            target, wait = f"/{names[lane]}/warm-up", 0.0
            try:
                request(client, "GET", target)
                for round_ in range(rounds):
                    wait = spacing(lane, round_)
                    time.sleep(wait)
                    target = f"/{names[lane]}/{round_}"
                    response, _ = request(client, "GET", target)
                    results[lane].append((wait, response.status))
            except Exception as e:
                errors.append(f"GET {target} (after {wait:.3f} s idle): {e!r}")
            finally:
                client.close()

        threads = [threading.Thread(target=run, args=(lane,), daemon=True) for lane in range(lanes)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + rounds * (self.IDLE + 0.1) + 30
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "lanes did not finish in time")
        if errors:
            self.fail("\n".join(errors) + "\n\nbalancer log:\n" + lb.output())
        statuses = [status for lane in results for _, status in lane]
        self.assertEqual(len(statuses), probes)
        races = sum(len(lines_matching(backend, r"^RACE ")) for backend in backends)
        connections = sum(len(lines_matching(backend, r"^CONNECTION ")) for backend in backends)
        sys.stderr.write(
            f"\nkeep-alive race: {probes} probes, {races} met a closing connection, "
            f"{connections} backend connections, statuses {sorted(set(statuses))}\n"
        )
        self.assertEqual(
            [
                (lane, wait, status)
                for lane, r in enumerate(results)
                for wait, status in r
                if status != 200
            ],
            [],
        )
        # The test did probe the race: some requests reached a connection being closed.
        self.assertGreaterEqual(races, 1)
        self.assertNotIn(" 502 ", "".join(lines_matching(lb, r"twisted_lb\.access")))


class UpgradeTests(HTTPIntegrationCase):
    def test_websocket_echo(self) -> None:
        """
        An Upgrade request gets 101 from the backend through the balancer; then bytes flow
        both ways (also bytes sent right behind the request, and 1 MB at once), and closing
        the client closes the backend's connection.
        """
        backend, backend_port = self.start_backend("upgrade", "ws")
        lb, port = self.start_lb(http_lb_config({"app": [backend_port]}))
        sock = self.connect(port)
        rfile = sock.makefile("rb")
        sock.sendall(
            b"GET /chat HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            b"early bytes"
        )
        response = read_response(rfile)
        self.assertEqual(response.status, 101)
        self.assertEqual(response.header("upgrade"), "websocket")
        self.assertEqual((response.header("connection") or "").lower(), "upgrade")
        self.assertEqual(rfile.read(len(b"early bytes")), b"early bytes")
        for i in range(5):
            message = f"message {i}".encode()
            sock.sendall(message)
            self.assertEqual(rfile.read(len(message)), message)
        blob = pattern(MB)
        writer = threading.Thread(target=sock.sendall, args=(blob,), daemon=True)
        writer.start()
        self.assertEqual(rfile.read(len(blob)), blob)
        writer.join(TIMEOUT)
        rfile.close()
        sock.close()
        backend.wait_for(r"^CLOSED 1 ")
        lb.wait_for(r'"GET /chat" 101 ')


class MemoryTests(HTTPIntegrationCase):
    TOTAL = 100 * MB

    def reset_peak(self, pid: int) -> int:
        """Reset the peak (VmHWM) to now, so that start-up peaks do not count; RSS now."""
        baseline = rss_bytes(pid)
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        return baseline

    def test_upload_to_slow_backend(self) -> None:
        """
        100 MB up, with Content-Length, to a backend that reads slowly, grows the balancer's
        resident memory by less than 32 MB.
        """
        total = self.TOTAL
        _backend, lb, port = self.echo_lb()
        baseline = self.reset_peak(lb.pid)
        sock = self.connect(port, timeout=60)
        started = time.monotonic()
        sock.sendall(
            f"POST /_slow/upload HTTP/1.1\r\nHost: test\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        block = b"u" * (64 * 1024)
        digest = hashlib.sha256()
        left = total
        while left > 0:
            data = block[: min(left, len(block))]
            sock.sendall(data)
            digest.update(data)
            left -= len(data)
        response = read_response(sock.makefile("rb"), "POST")
        elapsed = time.monotonic() - started
        self.assertEqual(response.status, 200)
        echo = echoed(response.body)
        self.assertEqual(echo["body_length"], total)
        self.assertEqual(echo["body_sha256"], digest.hexdigest())
        growth = rss_bytes(lb.pid, "VmHWM") - baseline
        sys.stderr.write(f"\n100 MB up in {elapsed:.1f} s, RSS growth {growth / MB:.1f} MB\n")
        self.assertLess(growth, 32 * MB)

    def test_download_by_slow_client(self) -> None:
        """
        100 MB down, with Content-Length, to a client that reads slowly, grows the balancer's
        resident memory by less than 32 MB.
        """
        total = self.TOTAL
        _backend, lb, port = self.echo_lb()
        baseline = self.reset_peak(lb.pid)
        sock = self.connect(port, timeout=60)
        started = time.monotonic()
        sock.sendall(f"GET /_bytes?n={total}&fill=d HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        read_slowly(self, sock, total, pause=0.001)
        elapsed = time.monotonic() - started
        growth = rss_bytes(lb.pid, "VmHWM") - baseline
        sys.stderr.write(f"\n100 MB down in {elapsed:.1f} s, RSS growth {growth / MB:.1f} MB\n")
        self.assertLess(growth, 32 * MB)


_HEAD = b"POST /smuggle HTTP/1.1\r\nHost: test\r\n"
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"

#: Request smuggling payloads (RFC 9112 §6.1, §6.3, §5.2, §7.1, §11.2; the classic CL.TE and
#: TE.CL of Linhart et al., 2005); each must get a 400 and a close.
SMUGGLING = {
    "Content-Length and Transfer-Encoding": _HEAD
    + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
    + _SMUGGLED,
    "Transfer-Encoding and Content-Length": _HEAD
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n"
    b"\r\n0\r\n\r\n",
    "two different Content-Lengths": _HEAD
    + b"Content-Length: 5\r\nContent-Length: 45\r\n\r\nhello"
    + _SMUGGLED,
    "invalid Content-Length": _HEAD + b"Content-Length: +5\r\n\r\nhello" + _SMUGGLED,
    "Transfer-Encoding: gzip": _HEAD + b"Transfer-Encoding: gzip\r\n\r\n" + _SMUGGLED,
    "Transfer-Encoding: chunked, gzip": _HEAD
    + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "Transfer-Encoding: chunked then gzip": _HEAD
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "obs-fold": b"GET /smuggle HTTP/1.1\r\nHost: test\r\nX-Folded: a\r\n b\r\n\r\n",
    "obs-fold of Transfer-Encoding": _HEAD
    + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "space before the colon": _HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "bad chunk size": _HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk data longer than its size": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "NUL in the target": b"GET /smu\x00ggle HTTP/1.1\r\nHost: test\r\n\r\n",
}


class SmugglingTests(HTTPIntegrationCase):
    def test_payloads_answered_400_and_closed(self) -> None:
        """
        Each smuggling payload, on its own connection, is answered 400 and the connection
        closed; the backend never sees any of them: afterwards, a good request is the first
        request on the first connection the backend accepted.
        """
        backend, _lb, port = self.echo_lb()
        failures = []
        for name, payload in SMUGGLING.items():
            sock = self.connect(port)
            sock.sendall(payload)
            chunks = []
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            except TimeoutError:
                failures.append(f"{name}: not closed within {TIMEOUT} s")
            except ConnectionResetError:
                pass  # closed with unread bytes: a reset may follow the 400
            answer = b"".join(chunks)
            if not answer.startswith(b"HTTP/1.1 400 "):
                failures.append(f"{name}: answered {answer[:200]!r}")
            elif answer.count(b"HTTP/1.1 ") != 1:
                failures.append(f"{name}: more than one response: {answer!r}")
            sock.close()
        _, data = request(self.client(port), "GET", "/control")
        echo = echoed(data)
        if failures:
            self.fail("\n".join(failures))
        self.assertEqual((echo["connections"], echo["requests"]), (1, 1))
        self.assertEqual(lines_matching(backend, r"^REQUEST "), ["REQUEST 1 GET /control"])


_CHUNKED = _HEAD + b"Transfer-Encoding: chunked\r\n\r\n"

#: What an external request-smuggling corpus found let through (issue 11): each payload, with
#: the status it must get before the connection closes, without reaching the backend.
STRICT = {
    "duplicate Host": (
        b"GET /smuggle HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        400,
    ),
    "HTTP/1.1 without Host": (b"GET /smuggle HTTP/1.1\r\nX: 1\r\n\r\n", 400),
    "invalid Host": (b"GET /smuggle HTTP/1.1\r\nHost: a.test/b\r\n\r\n", 400),
    "HTTP/2.0 on the HTTP/1 parser": (b"GET /smuggle HTTP/2.0\r\nHost: test\r\n\r\n", 505),
    "HTTP/3.0": (b"GET /smuggle HTTP/3.0\r\nHost: test\r\n\r\n", 505),
    "HTTP/2 prior-knowledge preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "HTTP/0.9 with a version": (b"GET /smuggle HTTP/0.9\r\nHost: test\r\n\r\n", 400),
    "chunk size FFFFFFFFFFFFFFFF": (_CHUNKED + b"FFFFFFFFFFFFFFFF\r\nabc", 400),
    "chunk size 2^52": (_CHUNKED + b"10000000000000\r\nabc", 400),
}


class StrictRequestTests(HTTPIntegrationCase):
    def answer(self, port: int, payload: bytes) -> bytes:
        """Send ``payload`` on a new connection; everything received until the close."""
        sock = self.connect(port)
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except ConnectionResetError:
            pass  # closed with unread bytes: a reset may follow the answer
        sock.close()
        return b"".join(chunks)

    def test_refused_and_closed(self) -> None:
        """
        Each case of :data:`STRICT`, on its own connection of a frontend without
        ``max_body_bytes``, gets its status and a close; the backend sees none of them.
        """
        backend, _lb, port = self.echo_lb()
        failures = []
        for name, (payload, status) in STRICT.items():
            try:
                answer = self.answer(port, payload)
            except TimeoutError:
                failures.append(f"{name}: not closed within {TIMEOUT} s")
                continue
            if not answer.startswith(b"HTTP/1.1 %d " % status):
                failures.append(f"{name}: answered {answer[:200]!r}, not {status}")
            elif answer.count(b"HTTP/1.1 ") != 1:
                failures.append(f"{name}: more than one response: {answer!r}")
        _, data = request(self.client(port), "GET", "/control")
        if failures:
            self.fail("\n".join(failures))
        self.assertEqual(lines_matching(backend, r"^REQUEST "), ["REQUEST 1 GET /control"])
        self.assertEqual(echoed(data)["connections"], 1)

    def test_chunk_size_over_max_body_bytes(self) -> None:
        """With max_body_bytes, a chunk size that would pass it is 413 before its data."""
        _backend, _lb, port = self.echo_lb(frontend_extra="max_body_bytes = 1000")
        answer = self.answer(port, _CHUNKED + b"3e9\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    def test_still_served(self) -> None:
        """HTTP/1.0 without Host, and HTTP/1.2 (as 1.1, RFC 9110 §2.5), are served."""
        _backend, _lb, port = self.echo_lb()
        sock = self.connect(port)
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        response = read_response(sock.makefile("rb"))
        self.assertEqual(response.status, 200)
        self.assertEqual(echoed(response.body)["target"], "/old")
        sock = self.connect(port)
        rfile = sock.makefile("rb")
        for _ in range(2):  # keep-alive, as HTTP/1.1
            sock.sendall(b"GET /minor HTTP/1.2\r\nHost: test\r\n\r\n")
            response = read_response(rfile)
            self.assertEqual(response.status, 200)
            self.assertEqual(echoed(response.body)["target"], "/minor")

    def test_underscore_headers_dropped(self) -> None:
        """
        ``Transfer_Encoding: chunked`` beside Content-Length, and ``X_Forwarded_For``, never
        reach the backend (nginx ``underscores_in_headers off``); the request is served by its
        Content-Length, and the drop is logged.
        """
        _backend, lb, port = self.echo_lb()
        sock = self.connect(port)
        sock.sendall(
            b"POST /u HTTP/1.1\r\nHost: test\r\nTransfer_Encoding: chunked\r\n"
            b"X_Forwarded_For: 203.0.113.9\r\nContent-Length: 5\r\n\r\nhello"
        )
        response = read_response(sock.makefile("rb"))
        self.assertEqual(response.status, 200)
        echo = echoed(response.body)
        self.assertEqual([name for name, _ in echo["headers"] if "_" in name], [])
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["127.0.0.1"])
        lb.wait_for(r"dropped 2 header field\(s\) .*the first 'Transfer_Encoding' .*underscores")

    def test_underscores_in_headers_kept(self) -> None:
        """With ``underscores_in_headers = true`` they are forwarded as received."""
        _backend, _lb, port = self.echo_lb(frontend_extra="underscores_in_headers = true")
        _, data = request(self.client(port), "GET", "/u", headers={"X_Real_IP": "1.2.3.4"})
        self.assertEqual(header_values(echoed(data), "X_Real_IP"), ["1.2.3.4"])


class LingeringCloseTests(HTTPIntegrationCase):
    def test_413_reaches_a_client_still_sending(self) -> None:
        """
        A 4 MB upload refused with 413 at its head: the client, still sending, finishes its
        upload without a reset, reads the whole 413 and then the end of the stream. The
        balancer half-closes and reads on, as nginx's lingering close, instead of closing a
        socket with unread bytes (which makes the kernel send a reset that can destroy the
        response before the client reads it).
        """
        _backend, lb, port = self.echo_lb(frontend_extra="max_body_bytes = 1024")
        total = 4 * MB
        for attempt in range(3):
            sock = self.connect(port, timeout=30)
            sock.sendall(
                f"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: {total}\r\n\r\n".encode()
            )
            errors: list[OSError] = []

            def upload(sock: socket.socket = sock, errors: list[OSError] = errors) -> None:
                try:
                    sock.sendall(b"u" * total)
                except OSError as e:
                    errors.append(e)

            thread = threading.Thread(target=upload, daemon=True)
            thread.start()
            thread.join(30)
            self.assertFalse(thread.is_alive(), "upload stuck")
            self.assertEqual(errors, [], f"attempt {attempt}")
            response = read_response(sock.makefile("rb"), "POST")
            self.assertEqual(response.status, 413)
            self.assertEqual(response.body, b"413 Content Too Large\n")
            self.assertEqual(sock.recv(1), b"")
            sock.close()
        lb.wait_for(r'"POST /up" 413 ')


class ErrorTests(HTTPIntegrationCase):
    def assert_error_responses(self, port: int, status: int, target: str) -> None:
        """
        A GET and then a POST with a body, on one client connection, each get ``status``
        (as :func:`~twisted_lb.http.errors.error_response` writes it). The connection stays
        open between them unless the first response says ``Connection: close``.
        """
        sock = self.connect(port)
        rfile = sock.makefile("rb")
        for method, body in (("GET", b""), ("POST", b"data")):
            sock.sendall(
                f"{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
                "\r\n".encode()
                + body
            )
            try:
                response = read_response(rfile, method)
            except (AssertionError, OSError) as e:
                self.fail(f"{method} {target}: no response ({e!r}) on a kept-alive connection")
            reason = {502: "Bad Gateway", 504: "Gateway Timeout"}[status]
            self.assertEqual(
                (response.status, response.body), (status, f"{status} {reason}\n".encode())
            )
            if (response.header("connection") or "").lower() == "close":
                self.assertEqual(rfile.read(1), b"")
                sock = self.connect(port)
                rfile = sock.makefile("rb")

    def test_502_when_backend_port_is_closed(self) -> None:
        """A backend that refuses connections: GET and POST get 502, and the failure is logged."""
        lb, port = self.start_lb(http_lb_config({"app": [free_port()]}))
        self.assert_error_responses(port, 502, "/")
        lb.wait_for(r"connect to backend app1 \(127\.0\.0\.1:\d+\) in pool app failed")
        lb.wait_for(r'"POST /" 502 ')

    def test_502_when_backend_closes_without_answering(self) -> None:
        """
        A backend that closes each connection when a request arrives, unanswered: a GET
        (tried on each backend of the pool) and a POST with a body (never sent twice) get 502.
        """
        backend, backend_port = self.start_backend("idle-close", "rude", ANSWER_LIMIT="0")
        lb, port = self.start_lb(http_lb_config({"app": [backend_port]}))
        self.assert_error_responses(port, 502, "/rude")
        lb.wait_for(r"backend app1 in pool app closed the connection before responding")
        self.assertEqual(
            lines_matching(backend, r"^DROPPED "), ["DROPPED 1 GET /rude", "DROPPED 2 POST /rude"]
        )

    def test_503_when_no_backend_is_available(self) -> None:
        """
        A pool whose strategy refuses every request (a strategy plugin from the plugin path;
        with no health checks yet, backends are never DOWN) answers 503, without connecting.
        """
        plugin_root = Path(self.mktemp())
        plugins = plugin_root / "twisted_lb" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "refuse_all.py").write_text(
            "from twisted.plugin import IPlugin\n"
            "from zope.interface import implementer\n"
            "from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory\n"
            "\n"
            "@implementer(IBalancingStrategy)\n"
            "class RefuseAll:\n"
            "    def pick(self, backends, info):\n"
            "        return None\n"
            "\n"
            "@implementer(IPlugin, IStrategyFactory)\n"
            "class RefuseAllFactory:\n"
            "    name = 'refuse_all'\n"
            "    def __call__(self, options):\n"
            "        return RefuseAll()\n"
            "\n"
            "refuse_all = RefuseAllFactory()\n"
        )
        backend, backend_port = self.start_backend("echo", "app1")
        config = http_lb_config({"app": [backend_port]}, pool_extra='strategy = "refuse_all"')
        lb, port = self.start_lb(config, env=environ_with(PYTHONPATH=str(plugin_root)))
        response, data = request(self.client(port), "GET", "/")
        self.assertEqual(response.status, 503)
        self.assertEqual(data, b"503 Service Unavailable\n")
        lb.wait_for(r"no backend available in pool app")
        self.assertEqual(lines_matching(backend, r"^CONNECTION "), [])

    def test_504_when_backend_does_not_answer(self) -> None:
        """
        With ``response_timeout = 1.0``, a backend that accepts and never answers gives a 504
        after about 1 s, and the balancer closes that backend connection.
        """
        backend, backend_port = self.start_backend("silent", "mute")
        config = http_lb_config({"app": [backend_port]}, pool_extra="response_timeout = 1.0")
        lb, port = self.start_lb(config)
        started = time.monotonic()
        response, data = request(self.client(port), "GET", "/slow")
        elapsed = time.monotonic() - started
        self.assertEqual(response.status, 504)
        self.assertEqual(data, b"504 Gateway Timeout\n")
        self.assertTrue(0.9 <= elapsed < 5, elapsed)
        lb.wait_for(r"backend app1 in pool app sent no response within 1\.0 s")
        backend.wait_for(r"^CLOSED 1 ")

    def test_client_disconnects_mid_response(self) -> None:
        """
        A client that goes away in the middle of a 64 MB response: the balancer closes that
        backend connection (the backend's write fails), logs no error, and the next request
        goes over a new backend connection.
        """
        backend, lb, port = self.echo_lb()
        sock = self.connect(port)
        sock.sendall(b"GET /_bytes?n=67108864&fill=z HTTP/1.1\r\nHost: test\r\n\r\n")
        received = 0
        while received < 512 * 1024:
            data = sock.recv(65536)
            self.assertTrue(data)
            received += len(data)
        sock.close()
        closed = backend.wait_for(r"^CLOSED 1 (\S+)")
        self.assertNotEqual(closed.group(1), "closed")  # the peer's doing, not the backend's
        response, data = request(self.client(port), "GET", "/after")
        self.assertEqual(response.status, 200)
        self.assertEqual(
            (echoed(data)["connection"], response.getheader("X-Connections")), (2, "2")
        )
        lb.wait_for(r'"GET /_bytes\?n=67108864&fill=z" \d+ ')
        self.assert_clean_log(lb)

    def test_client_disconnects_before_response(self) -> None:
        """
        A client that goes away while the backend is still thinking: the balancer closes that
        backend connection, logs the request as 499 and no error.
        """
        backend, backend_port = self.start_backend("silent", "mute")
        lb, port = self.start_lb(http_lb_config({"app": [backend_port]}))
        sock = self.connect(port)
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: test\r\n\r\n")
        backend.wait_for(r"^CONNECTION 1")
        time.sleep(0.2)  # let the request reach the backend
        sock.close()
        backend.wait_for(r"^CLOSED 1 ")
        lb.wait_for(r'"GET /wait" 499 ')
        self.assert_clean_log(lb)
