"""
Reloading the config of a running ``twistd -n lb`` with SIGHUP, under load, on loopback.

The reload under load is issue 13's: 50 keep-alive clients, a WebSocket-style tunnel and a
slow 50 MB download stay open while the config is reloaded 20 times, alternating between two
files that add and remove a backend, change weights and change a route. Nothing fails, and
the traffic split follows each generation.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests._harness import TWISTED_LB, Process, start_backend, start_lb

CLIENTS = 50
RELOADS = 20
DOWNLOAD_BYTES = 50 * 1024 * 1024
#: Seconds of traffic collected in each generation before the next reload.
WINDOW = 0.4


def config(ports: dict[str, int], generation_b: bool) -> str:
    """
    The two configs the test alternates between. B adds backend b3 to pool app, gives b1
    weight 3, sends ``/v1/`` to pool alt instead of app, and replaces pool dl's backend dl
    (where the download starts) by dl2.
    """
    weight = 3 if generation_b else 1
    dl = "dl2" if generation_b else "dl"
    app = [f'{{ address = "127.0.0.1:{ports["b1"]}", name = "b1", weight = {weight} }}']
    app.append(f'{{ address = "127.0.0.1:{ports["b2"]}", name = "b2" }}')
    if generation_b:
        app.append(f'{{ address = "127.0.0.1:{ports["b3"]}", name = "b3" }}')
    return f"""
[global]
drain_timeout = 60

[frontends.web]
mode = "http"
listen = ["tcp:0:interface=127.0.0.1"]
pool = "app"
tunnel_timeout = 60

[[frontends.web.routes]]
path_prefix = "/ws"
pool = "ws"

[[frontends.web.routes]]
path_prefix = "/_bytes"
pool = "dl"

[[frontends.web.routes]]
path_prefix = "/v1/"
pool = "{"alt" if generation_b else "app"}"

[pools.app]
strategy = "round_robin"
connect_timeout = 2.0
backends = [{", ".join(app)}]

[pools.alt]
connect_timeout = 2.0
backends = [{{ address = "127.0.0.1:{ports["b4"]}", name = "b4" }}]

[pools.ws]
connect_timeout = 2.0
backends = [{{ address = "127.0.0.1:{ports["ws"]}", name = "ws" }}]

[pools.dl]
connect_timeout = 2.0
backends = [{{ address = "127.0.0.1:{ports[dl]}", name = "{dl}" }}]
"""


class Recorder:
    """What the client threads saw: each response's (start, end, path, backend), failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.responses: list[tuple[float, float, str, str]] = []
        self.failures: list[str] = []

    def response(self, start: float, end: float, path: str, backend: str) -> None:
        with self.lock:
            self.responses.append((start, end, path, backend))

    def failure(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


class ReloadUnderLoadTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.processes: list[Process] = []
        self.ports: dict[str, int] = {}
        for name in ("b1", "b2", "b3", "b4", "dl", "dl2"):
            process, port = start_backend("echo", name)
            self.processes.append(process)
            self.ports[name] = port
        process, self.ports["ws"] = start_backend("upgrade", "ws")
        self.processes.append(process)
        self.config_path = self.dir / "lb.toml"
        self.config_path.write_text(config(self.ports, generation_b=False))
        self.lb, self.port = start_lb(str(self.config_path))
        self.processes.append(self.lb)

    def tearDown(self) -> None:
        for process in self.processes:
            process.stop()

    def keep_alive_client(self, number: int, stop: threading.Event, seen: Recorder) -> None:
        """One keep-alive connection, busy until ``stop``: alternately ``/`` and ``/v1/x``."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = 0
        try:
            for sent in range(100_000):
                if stop.is_set():
                    break
                path = "/" if (number + sent) % 2 else "/v1/x"
                start = time.monotonic()
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    seen.failure(f"client {number}: {path} got {response.status}")
                    return
                seen.response(start, time.monotonic(), path, response.getheader("X-Backend", "?"))
                if response.getheader("Connection", "").lower() == "close":
                    seen.failure(f"client {number}: the balancer closed the connection")
                    return
        except Exception as e:
            seen.failure(f"client {number} after {sent} requests: {e!r}")
        finally:
            connection.close()

    def new_connections(self, stop: threading.Event, seen: Recorder, made: list[int]) -> None:
        """A new connection per request, until ``stop``: the listener never refuses one."""
        try:
            for number in range(100_000):
                if stop.is_set():
                    break
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("GET", "/", headers={"Connection": "close"})
                response = connection.getresponse()
                response.read()
                connection.close()
                if response.status != 200:
                    raise AssertionError(f"connection {number}: {response.status}")
                made.append(number)
        except Exception as e:
            seen.failure(f"new connections: {e!r}")

    def tunnel(self, stop: threading.Event, seen: Recorder, echoed: list[int]) -> None:
        """An upgraded tunnel that echoes a message every 50 ms until ``stop``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n"
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("closed before the 101")
                    head += data
                if not head.startswith(b"HTTP/1.1 101"):
                    raise AssertionError(head)
                for number in range(10_000):
                    if stop.is_set():
                        break
                    message = b"message %d\n" % number
                    sock.sendall(message)
                    got = b""
                    while len(got) < len(message):
                        data = sock.recv(4096)
                        if not data:
                            raise ConnectionError(f"tunnel closed after {number} messages")
                        got += data
                    if got != message:
                        raise AssertionError(f"tunnel echoed {got!r} for {message!r}")
                    echoed.append(number)
                    time.sleep(0.05)
        except Exception as e:
            seen.failure(f"tunnel: {e!r}")

    def download(self, progress: list[int], reloads: list[int], seen: Recorder) -> None:
        """
        ``DOWNLOAD_BYTES`` read slowly: no further than the share of the reloads done so far,
        so that it is open during all of them.
        """
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            connection.request("GET", f"/_bytes?n={DOWNLOAD_BYTES}&fill=x")
            response = connection.getresponse()
            if response.status != 200:
                raise AssertionError(response.status)
            deadline = time.monotonic() + 90
            while progress[0] < DOWNLOAD_BYTES:
                allowed = DOWNLOAD_BYTES * (reloads[0] + 1) // (RELOADS + 1)
                if progress[0] >= allowed:
                    if time.monotonic() > deadline:
                        raise TimeoutError("download stalled")
                    time.sleep(0.01)
                    continue
                data = response.read(min(256 * 1024, allowed - progress[0]))
                if not data:
                    raise ConnectionError(f"download cut at {progress[0]} bytes")
                if data.strip(b"x"):
                    raise AssertionError("download corrupted")
                progress[0] += len(data)
            if response.read(1):
                raise AssertionError("download longer than announced")
            connection.close()
        except Exception as e:
            seen.failure(f"download: {e!r}")

    def test_twenty_reloads_under_load(self) -> None:
        """
        While 50 keep-alive clients, a tunnel and a slow 50 MB download are busy, 20
        SIGHUP reloads alternate between two configs: no request fails, no connection is
        reset or closed, new connections are accepted throughout, the tunnel and the download
        complete (the download's backend drains from the first reload to its end), and in
        each generation the split is the config's (b1:b2 1:1, or b1:b2:b3 3:1:1 with /v1/ on
        pool alt).
        """
        seen = Recorder()
        stop = threading.Event()
        echoed: list[int] = []
        progress = [0]
        reloads = [0]
        threads = [
            threading.Thread(target=self.keep_alive_client, args=(n, stop, seen))
            for n in range(CLIENTS)
        ]
        threads.append(threading.Thread(target=self.tunnel, args=(stop, seen, echoed)))
        made: list[int] = []
        threads.append(threading.Thread(target=self.new_connections, args=(stop, seen, made)))
        downloader = threading.Thread(target=self.download, args=(progress, reloads, seen))
        for thread in [*threads, downloader]:
            thread.daemon = True
            thread.start()
        started = time.monotonic()
        # windows[i]: (generation is B, after its reload was logged, before the next one).
        windows: list[tuple[bool, float, float]] = []
        time.sleep(WINDOW)
        for number in range(RELOADS):
            generation_b = number % 2 == 0
            self.config_path.write_text(config(self.ports, generation_b))
            self.lb.signal(signal.SIGHUP)
            self.lb.wait_for(rf"reload: generation {number + 2} from ", timeout=10)
            applied = time.monotonic()
            reloads[0] = number + 1
            time.sleep(WINDOW)
            windows.append((generation_b, applied, time.monotonic()))
            self.assertEqual(seen.failures, [])
        downloader.join(60)
        stop.set()
        for thread in threads:
            thread.join(20)
        elapsed = time.monotonic() - started
        self.assertFalse(any(t.is_alive() for t in [*threads, downloader]))
        self.assertEqual(seen.failures, [])
        self.assertLess(elapsed, 60)
        self.assertEqual(progress[0], DOWNLOAD_BYTES)
        self.assertGreater(len(echoed), RELOADS)  # the tunnel was in use throughout
        self.assertGreater(len(made), RELOADS)  # and new connections were made throughout

        for generation_b, begin, end in windows:
            inside = [r for r in seen.responses if r[0] >= begin and r[1] <= end]
            root = Counter(backend for _, _, path, backend in inside if path == "/")
            v1 = Counter(backend for _, _, path, backend in inside if path != "/")
            total = sum(root.values())
            self.assertGreater(total, 20, (generation_b, root))
            if generation_b:
                self.assertEqual(set(root), {"b1", "b2", "b3"}, root)
                self.assertEqual(set(v1), {"b4"}, v1)
                shares = {"b1": 0.6, "b2": 0.2, "b3": 0.2}
            else:
                self.assertEqual(set(root), {"b1", "b2"}, root)
                self.assertEqual(set(v1), {"b1", "b2"}, v1)
                shares = {"b1": 0.5, "b2": 0.5}
            # The root requests are a contiguous share of one smooth weighted round robin,
            # with the /v1/ requests of the same pool interleaved in A.
            # (The new-connection client's requests to / are in these counts too.)
            for backend, share in shares.items():
                self.assertLess(abs(root[backend] / total - share), 0.12, root)

        output = self.lb.output()
        self.assertEqual(output.count("reload: generation"), RELOADS)
        self.assertIn("added backend app/b3", output)
        self.assertIn("removed backend app/b3", output)
        self.assertIn("changed backend app/b1, route web[2]", output)
        self.assertIn("drained backend app/b3, backend dl/dl2 in ", output)
        # The download's backend was removed by the first reload, and drained only when the
        # download was over, after the last one.
        drained = re.findall(r"drained backend dl/dl in ([0-9.]+) s", output)
        self.assertGreater(max(float(seconds) for seconds in drained), 3.0, drained)
        self.assertNotIn("drain_timeout", output)
        self.assertEqual(output.count("listening on"), 1)


class InvalidReloadTests(TestCase):
    timeout = 60

    def test_invalid_file_changes_nothing(self) -> None:
        """
        A SIGHUP with an invalid file logs every problem as ``twisted-lb check`` prints it,
        and the old config keeps serving; a valid file after it applies.
        """
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        backends = {}
        for name in ("b1", "b2", "b3", "b4", "dl", "dl2", "ws"):
            process, backends[name] = start_backend("echo", name)
            self.addCleanup(process.stop)
        path = directory / "lb.toml"
        path.write_text(config(backends, generation_b=False))
        lb, port = start_lb(str(path))
        self.addCleanup(lb.stop)
        bad = config(backends, generation_b=True).replace("weight = 3", "weight = 0")
        bad = bad.replace('pool = "alt"', 'pool = "nowhere"')
        path.write_text(bad)
        check = subprocess.run(
            [TWISTED_LB, "check", str(path)], capture_output=True, text=True, timeout=30
        )
        self.assertEqual(check.returncode, 1)
        problems = check.stderr.strip().splitlines()
        self.assertEqual(len(problems), 2, check.stderr)
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"reload failed with 2 problems; generation 1 stays in force")
        output = lb.output()
        for line in problems:
            self.assertIn(f"] {line}\n", output)
        names = set()
        for _ in range(6):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v1/")
            names.add(connection.getresponse().getheader("X-Backend"))
            connection.close()
        self.assertEqual(names, {"b1", "b2"})
        path.write_text(config(backends, generation_b=True))
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"reload: generation 2 from ")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/v1/")
        self.assertEqual(connection.getresponse().getheader("X-Backend"), "b4")
        connection.close()


def tcp_config(ws_port: int, name: str, drain_timeout: float) -> str:
    return f"""
[global]
drain_timeout = {drain_timeout}

[frontends.web]
mode = "tcp"
listen = ["tcp:0:interface=127.0.0.1"]
pool = "t"

[pools.t]
connect_timeout = 2.0
backends = [{{ address = "127.0.0.1:{ws_port}", name = "{name}" }}]
"""


class TCPDrainTests(TestCase):
    timeout = 60

    def echo_relay(self, port: int) -> socket.socket:
        """A relayed connection to an ``upgrade`` backend, past its 101: an echo."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("closed before the 101")
            head += data
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        return sock

    def echo(self, sock: socket.socket, message: bytes) -> bytes:
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            data = sock.recv(4096)
            if not data:
                break
            got += data
        return got

    def test_relay_keeps_its_backend_then_drain_timeout(self) -> None:
        """
        A relayed TCP connection keeps its backend when a reload replaces it, and new
        connections go to the new one; the old backend's drain ends with its last
        connection. A relay still open at drain_timeout is closed, with a log event.
        """
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        one, one_port = start_backend("upgrade", "one")
        self.addCleanup(one.stop)
        two, two_port = start_backend("upgrade", "two")
        self.addCleanup(two.stop)
        path = directory / "lb.toml"
        path.write_text(tcp_config(one_port, "one", 30))
        lb, port = start_lb(str(path))
        self.addCleanup(lb.stop)
        first = self.echo_relay(port)
        self.addCleanup(first.close)
        one.wait_for(r"^CONNECTION 1")

        path.write_text(tcp_config(two_port, "two", 30))
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"reload: generation 2 from .*: added backend t/two; removed backend t/one")
        self.assertEqual(self.echo(first, b"still one\n"), b"still one\n")
        second = self.echo_relay(port)
        self.addCleanup(second.close)
        two.wait_for(r"^CONNECTION 1")
        self.assertNotIn("CONNECTION 2", one.output())
        first.close()
        lb.wait_for(r"drained backend t/one in ")

        path.write_text(tcp_config(one_port, "one", 1))
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"reload: generation 3 from ")
        self.assertEqual(self.echo(second, b"still two\n"), b"still two\n")
        lb.wait_for(
            r"drain_timeout: closed 1 connections of backend t/two still open after 1 s",
            timeout=10,
        )
        # Aborted: the drain is bounded even if the peer reads nothing (a reset, or EOF).
        with contextlib.suppress(ConnectionResetError):
            self.assertEqual(second.recv(4096), b"")


class ShutdownSignalTests(TestCase):
    timeout = 60

    def test_sighup_during_the_shutdown_grace(self) -> None:
        """
        SIGTERM with a request in flight, then SIGHUP and SIGUSR1 0.5 s later: the signals
        are logged and ignored, the request completes, and the process exits cleanly.
        """
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        backend, backend_port = start_backend("echo", "b1")
        self.addCleanup(backend.stop)
        path = directory / "lb.toml"
        path.write_text(
            "[frontends.web]\n"
            'mode = "http"\n'
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            'pool = "app"\n'
            "[pools.app]\n"
            f'backends = ["127.0.0.1:{backend_port}"]\n'
        )
        lb, port = start_lb(str(path))
        self.addCleanup(lb.kill)
        body = b"x" * 1000
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            # The request is in flight: its head and half its body are sent.
            client.sendall(
                b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n" + body[:500]
            )
            backend.wait_for(r"REQUEST \S+ POST /upload")  # it reached the backend
            lb.signal(signal.SIGTERM)
            lb.wait_for(r"closing 1 open connections")
            time.sleep(0.5)
            lb.signal(signal.SIGHUP)
            lb.signal(signal.SIGUSR1)
            lb.wait_for(r"SIGHUP ignored: the balancer is stopping")
            lb.wait_for(r"SIGUSR1 ignored: the balancer is stopping")
            client.sendall(body[500:])
            response = b""
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                data = client.recv(65536)
                if not data:
                    break
                response += data
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:200])
        self.assertIn(b'"body_length": 1000', response)
        # twistd's clean exit after SIGTERM re-raises it (as test_logs checks); the default
        # action of SIGHUP would have ended the process with -SIGHUP, and cut the request.
        self.assertEqual(lb.popen.wait(20), -signal.SIGTERM, lb.output())
        self.assertIn("Server Shut Down.", lb.output())
