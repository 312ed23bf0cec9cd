#!/usr/bin/env python3
"""L7 benchmark: twisted-lb's HTTP mode against nginx, HAProxy and twisted.web's reverse proxy.

One run measures five paths to the same two backends (one nginx worker answering ``ok`` on two
ports), all on 127.0.0.1:

``direct``
    straight to backend 1, the ceiling for everything else;
``nginx``
    nginx ``proxy_pass`` to an ``upstream`` of both backends, one worker process, with upstream
    ``keepalive`` at twice wrk's connections (the anchor; see ``nginx_upstream_keepalive``);
``haproxy``
    HAProxy ``mode http``, ``nbthread 1``, ``http-reuse always``, both backends;
``twisted-web``
    ``twisted.web.proxy.ReverseProxyResource`` on the epoll reactor (backend 1 only: it takes
    one host and port);
``twisted-lb``
    ``twistd -n lb --config cfg.toml`` with ``mode = "http"``.

For each path it measures requests/s and p99 latency with wrk (50 keep-alive connections). With
twisted-lb in the run it also streams 1 GiB up and 1 GiB down through a second twisted-lb to a
small Python backend and records the peak RSS growth of the twisted-lb process. Then it prints
the ratios that the Performance targets in docs/design.rst ask for. See bench/README.rst.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from _common import (
    LOOPBACK,
    BenchError,
    Child,
    Children,
    bench_parser,
    busy_before,
    check_bench_args,
    find_tools,
    first_output_line,
    free_ports,
    group_cpu_seconds,
    json_settings,
    log,
    log_wrk_result,
    nginx_http_common,
    nginx_main_context,
    nginx_upstream_keepalive,
    parse_wrk,
    pass_mark,
    print_busy_warning,
    print_header,
    print_wrk_errors_warning,
    ratio_of,
    require_twisted_lb,
    rounds_note,
    run_bench,
    run_rounds,
    run_tool,
    run_wrk,
    set_log_name,
    start_backend,
    tail_text,
    tool_versions,
    twisted_lb_version,
    wait_http_ok,
    warm_up_wrk,
    write_json,
)

set_log_name("http_bench")

PATHS = ("direct", "nginx", "haproxy", "twisted-web", "twisted-lb", "twisted-lb-nolog")
RELAYS = PATHS[1:]

# (measure, numerator, denominator, comparison, target): the L7 rows of the Performance targets.
# nginx and HAProxy run without access logs; twisted-lb-nolog is twisted-lb with
# ``[global] access_log = false``, the like-for-like comparison. twisted-lb logs every request.
TARGETS = (
    ("requests/s", "twisted-lb", "nginx", ">=", 0.5),
    ("p99", "twisted-lb", "nginx", "<=", 2.0),
    ("requests/s", "twisted-lb-nolog", "nginx", ">=", 0.5),
    ("p99", "twisted-lb-nolog", "nginx", "<=", 2.0),
)
# Shown for context, without a target.
CONTEXT_RATIOS = (
    ("requests/s", "twisted-lb", "haproxy"),
    ("requests/s", "twisted-lb", "twisted-web"),
)
RSS_TARGET_MIB = 64.0  # peak RSS growth while streaming 1 GiB each way
FIXED_RATE_SHARE = 0.5  # the fixed-rate load, as a share of twisted-lb's maximum requests/s
FIXED_RATE_P99_TARGET = 2.0  # twisted-lb's p99 / nginx's at that rate
FIXED_RATE_PATHS = ("nginx", "twisted-lb")
OPEN_LOOP_SCRIPT = Path(__file__).with_name("open-loop.lua")
IDLE_TARGET_MIB = 300.0  # RSS holding 10,000 idle keep-alive client connections
TRANSFERS = ("upload", "download")

TOOL_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "curl": "curl"}

PROBE_REQUESTS = 8  # GETs on fresh connections, to see which backends a path reaches
TRANSFER_TIMEOUT = 600  # s for one streamed transfer (curl --max-time)
MIB = 1024 * 1024

REVERSE_PROXY_SCRIPT = """\
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.web import proxy, server
listen_port, backend_port = int(sys.argv[1]), int(sys.argv[2])
site = server.Site(proxy.ReverseProxyResource("127.0.0.1", backend_port, b""))
reactor.listenTCP(listen_port, site, interface="127.0.0.1")
reactor.run()
"""

# The backend for the streaming test: HTTP/1.1 with keep-alive, one thread per connection.
# POST (Content-Length body): reads and drops the body, answers 200 with the byte count.
# GET /download: answers 200 with SIZE zero bytes. Any other GET: 200 "ok".
BULK_BACKEND_SCRIPT = """\
import socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
CHUNK = 256 * 1024
ZEROS = memoryview(bytes(CHUNK))

def handle(conn):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pending = b""
    with conn:
        while True:
            while b"\\r\\n\\r\\n" not in pending:
                data = conn.recv(65536)
                if not data or len(pending) > 65536:
                    return
                pending += data
            head, _, pending = pending.partition(b"\\r\\n\\r\\n")
            lines = head.decode("latin-1").split("\\r\\n")
            method, target = lines[0].split(" ")[:2]
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip().lower()
            if "transfer-encoding" in fields:
                conn.sendall(b"HTTP/1.1 501 Not Implemented\\r\\n"
                             b"Content-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
                return
            length = int(fields.get("content-length", "0"))
            if fields.get("expect") == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\\r\\n\\r\\n")
            received = min(length, len(pending))
            pending = pending[received:]
            while received < length:
                n = conn.recv_into(view, min(CHUNK, length - received))
                if not n:
                    return
                received += n
            if method == "GET" and target == "/download":
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\n"
                             b"Content-Length: %d\\r\\n\\r\\n" % size)
                left = size
                while left:
                    n = min(CHUNK, left)
                    conn.sendall(ZEROS[:n])
                    left -= n
            else:
                body = b"%d\\n" % received if method == "POST" else b"ok\\n"
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\n"
                             b"Content-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
            if fields.get("connection") == "close":
                return

server = socket.create_server(("127.0.0.1", port))
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


# --------------------------------------------------------------------------- tools


@dataclass
class Tools:
    nginx: str
    haproxy: str
    wrk: str
    curl: str


def ensure_tools(install: bool) -> Tools:
    return Tools(**find_tools(TOOL_PACKAGES, install))


def versions_of(tools: Tools) -> dict[str, str]:
    return tool_versions(
        {
            "nginx": first_output_line([tools.nginx, "-v"]),
            "haproxy": first_output_line([tools.haproxy, "-v"]),
            "wrk": first_output_line([tools.wrk, "--version"]),
            "curl": first_output_line([tools.curl, "--version"]),
        }
    )


# --------------------------------------------------------------------------- configs


def nginx_proxy_config(tmp: Path, listen: int, backends: list[int], connections: int) -> str:
    servers = "".join(f"        server {LOOPBACK}:{port};\n" for port in backends)
    return (
        nginx_main_context(tmp, "proxy", None)
        + nginx_http_common(tmp, "proxy")
        + "    upstream app {\n"
        + servers
        + nginx_upstream_keepalive(connections)
        + "    }\n"
        + "    server {\n"
        + f"        listen {LOOPBACK}:{listen};\n"
        + "        location / {\n"
        + "            proxy_pass http://app;\n"
        + "            proxy_http_version 1.1;\n"
        + '            proxy_set_header Connection "";\n'
        + "        }\n"
        + "    }\n"
        + "}\n"
    )


def haproxy_config(listen: int, backends: list[int]) -> str:
    servers = "".join(f"    server b{n} {LOOPBACK}:{port}\n" for n, port in enumerate(backends, 1))
    return (
        "global\n"
        "    nbthread 1\n"
        "    maxconn 4096\n"
        "\n"
        "defaults\n"
        "    mode http\n"
        "    option http-keep-alive\n"
        "    http-reuse always\n"
        "    timeout connect 5s\n"
        "    timeout client 120s\n"
        "    timeout server 120s\n"
        "    timeout http-keep-alive 120s\n"
        "\n"
        "frontend bench\n"
        f"    bind {LOOPBACK}:{listen}\n"
        "    default_backend app\n"
        "\n"
        "backend app\n"
        "    balance roundrobin\n" + servers
    )


def twisted_lb_config(name: str, listen: int, backends: list[int], access_log: bool = True) -> str:
    addresses = ", ".join(f'{{ address = "{LOOPBACK}:{port}" }}' for port in backends)
    return (
        ("" if access_log else "[global]\naccess_log = false\n\n") + f"[frontends.{name}]\n"
        'mode = "http"\n'
        f'listen = ["tcp:{listen}:interface={LOOPBACK}"]\n'
        'pool = "app"\n'
        "\n"
        "[pools.app]\n"
        f"backends = [{addresses}]\n"
    )


# --------------------------------------------------------------------------- measurements


def parse_open_loop(output: str) -> dict[str, float]:
    """
    The figures ``open-loop.lua`` prints after wrk's: ``latency_p99_ms`` (and p50, p90,
    p99.9) counted from each request's slot, and wrk's own p99 as ``closed_loop_p99_ms``.

    Raises BenchError when they are missing, or when a response below 400 came without the
    ``X-Intended`` field the backend echoes (the path dropped it, so the latency is unknown);
    an error the proxy answers itself has no field, and wrk counts it among the non-2xx.
    """
    counts = re.search(r"^open-loop responses: (\d+), unstamped (\d+)$", output, re.MULTILINE)
    latency = re.search(
        r"^open-loop latency ms: p50 ([\d.]+) p90 ([\d.]+) p99 ([\d.]+) p99\.9 ([\d.]+)",
        output,
        re.MULTILINE,
    )
    if counts is None or latency is None:
        raise BenchError("no open-loop figures in wrk's output:\n" + tail_text(output))
    if int(counts.group(2)):
        raise BenchError(f"{counts.group(2)} responses below 400 came without X-Intended")
    p50, p90, p99, p999 = (float(g) for g in latency.groups())
    return {
        "closed_loop_p99_ms": parse_wrk(output).latency_p99_ms,
        "latency_p50_ms": p50,
        "latency_p90_ms": p90,
        "latency_p99_ms": p99,
        "latency_p99_9_ms": p999,
        "stamped_responses": float(counts.group(1)),
    }


def probe_backends(port: int, timeout: float = 2.0) -> tuple[list[str], list[str]]:
    """Which backends PROBE_REQUESTS GETs on one keep-alive connection reach.

    Returns the ``X-Backend`` values seen and the problems (non-200 statuses, errors). A proxy
    that balances each request, as an HTTP proxy does, reaches both backends with round robin;
    a TCP relay sends the whole connection to one.
    """
    seen: set[str] = set()
    problems: list[str] = []
    request = f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n\r\n".encode()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.settimeout(timeout)
            pending = b""
            for _ in range(PROBE_REQUESTS):
                s.sendall(request)
                while b"\r\n\r\n" not in pending:
                    chunk = s.recv(65536)
                    if not chunk or len(pending) > 65536:
                        raise OSError("connection closed before the end of a response head")
                    pending += chunk
                head, _, pending = pending.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                if lines[0].split(" ")[1:2] != ["200"]:
                    problems.append(lines[0])
                seen.add(fields.get("x-backend", "?"))
                if "content-length" not in fields:
                    raise OSError(f"a response without Content-Length: {lines[0]}")
                length = int(fields["content-length"])
                while len(pending) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("connection closed in a response body")
                    pending += chunk
                pending = pending[length:]
    except (OSError, ValueError) as e:
        problems.append(f"error: {e}")
    return sorted(seen), problems


def proc_status_kib(pid: int, name: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError) as e:
        raise BenchError(f"could not read {name} of pid {pid}: {e}") from e
    raise BenchError(f"/proc/{pid}/status has no {name}")


def reset_peak_rss(pid: int) -> None:
    """Set VmHWM back to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux 4.0+)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise BenchError(
            f"could not reset the peak RSS of pid {pid} (/proc/{pid}/clear_refs): {e}; "
            "run as root or as the same user, or use --transfer-mib 0"
        ) from e


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` for us and the children started after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise BenchError(
            f"idle: need {wanted} file descriptors, the hard limit is {hard}; "
            "raise it (ulimit -Hn) or lower --idle-connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _still_open(s: socket.socket) -> bool:
    """Whether the peer has not closed ``s`` (a non-blocking peek finds no EOF)."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def curl_transfer(
    tools: Tools, kind: str, port: int, size: int, upload_file: Path, answer_file: Path
) -> None:
    """Upload (POST) or download (GET) ``size`` bytes through 127.0.0.1:port with curl.

    curl streams the file (``-T``, not ``--data-binary``, which reads it all into memory) and
    sends ``Content-Length``; ``Expect:`` turns off the 100-continue wait.
    """
    url = f"http://{LOOPBACK}:{port}/{kind}"
    argv = [tools.curl, "-sS", "--noproxy", "*", "--max-time", str(TRANSFER_TIMEOUT)]
    if kind == "upload":
        argv += ["-o", str(answer_file), "-w", "%{http_code} %{size_upload}"]
        argv += ["-X", "POST", "-T", str(upload_file), "-H", "Expect:"]
        argv += ["-H", "Content-Type: application/octet-stream", url]
    else:
        argv += ["-o", os.devnull, "-w", "%{http_code} %{size_download}", url]
    proc = run_tool(argv, timeout=TRANSFER_TIMEOUT + 30, what=f"curl {kind}")
    if proc.returncode != 0:
        raise BenchError(
            f"curl {kind} of {size} bytes via {url} exited with {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    code, _, count = proc.stdout.strip().partition(" ")
    if code != "200" or count != str(size):
        raise BenchError(
            f"curl {kind} via {url}: status {code}, {count} of {size} bytes transferred"
        )
    if kind == "upload":
        answer = answer_file.read_text(errors="replace").strip()
        if answer != str(size):
            raise BenchError(f"upload via {url}: the backend received {answer!r} of {size} bytes")


# --------------------------------------------------------------------------- the paths


@dataclass
class Ports:
    backends: list[int]  # the two nginx backends
    bulk_backend: int  # the Python backend of the streaming test
    relays: dict[str, int]  # path -> listening port
    bulk_relay: int  # the twisted-lb of the streaming test
    idle_relay: int  # the twisted-lb of the idle-connections test


@dataclass
class Bench:
    args: argparse.Namespace
    tools: Tools
    tmp: Path
    children: Children
    ports: Ports
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rss: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    idle: list[dict[str, float]] = field(default_factory=list)
    fixed_rate: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    # Each starter returns the relay's child (None for direct) and the port to measure.

    def start_direct(self) -> tuple[Child | None, int]:
        return None, self.ports.backends[0]

    def start_nginx(self) -> tuple[Child | None, int]:
        port = self.ports.relays["nginx"]
        prefix = self.tmp / "nginx-proxy"
        config = nginx_proxy_config(prefix, port, self.ports.backends, self.args.connections)
        return self.children.start_nginx("nginx proxy", self.tools.nginx, prefix, config), port

    def start_haproxy(self) -> tuple[Child | None, int]:
        port = self.ports.relays["haproxy"]
        workdir = self.tmp / "haproxy"
        workdir.mkdir(exist_ok=True)
        conf = workdir / "haproxy.cfg"
        conf.write_text(haproxy_config(port, self.ports.backends))
        argv = [self.tools.haproxy, "-db", "-f", str(conf)]
        return self.children.start("haproxy", argv, workdir), port

    def start_twisted_web(self) -> tuple[Child | None, int]:
        port = self.ports.relays["twisted-web"]
        argv = [
            sys.executable,
            "-c",
            REVERSE_PROXY_SCRIPT,
            str(port),
            str(self.ports.backends[0]),
        ]
        return self.children.start("twisted.web ReverseProxyResource", argv), port

    def start_twisted_lb(
        self,
        name: str = "bench",
        port: int | None = None,
        backends: list[int] | None = None,
        access_log: bool = True,
    ) -> tuple[Child | None, int]:
        path = "twisted-lb" if access_log else "twisted-lb-nolog"
        port = self.ports.relays[path] if port is None else port
        config = twisted_lb_config(name, port, backends or self.ports.backends, access_log)
        workdir = self.tmp / f"{path}-{name}"
        return self.children.start_twisted_lb(f"twisted-lb {name}", workdir, config), port

    def starter(self, path: str) -> Callable[[], tuple[Child | None, int]]:
        return {
            "direct": self.start_direct,
            "nginx": self.start_nginx,
            "haproxy": self.start_haproxy,
            "twisted-web": self.start_twisted_web,
            "twisted-lb": self.start_twisted_lb,
            "twisted-lb-nolog": lambda: self.start_twisted_lb(access_log=False),
        }[path]

    def measure(self, path: str) -> dict[str, Any]:
        args = self.args
        background = busy_before(path)
        relay, port = self.starter(path)()
        try:
            wait_http_ok(relay, port)
            if relay is not None:
                log(f"{path}: started {relay.name}, pid {relay.proc.pid}")
            seen, problems = probe_backends(port)
            log(
                f"{path}: {PROBE_REQUESTS} GETs on one connection reached backends "
                f"{', '.join(seen)}"
            )
            if problems:
                log(f"{path}: warning: probe GETs: {'; '.join(problems)}")
            warm_up_wrk(self.tools.wrk, port, args, path)
            cpu_before = group_cpu_seconds(relay.proc.pid) if relay is not None else 0.0
            wrk = run_wrk(self.tools.wrk, port, args.duration, args.connections, args.threads)
            cpu = group_cpu_seconds(relay.proc.pid) - cpu_before if relay is not None else 0.0
            log_wrk_result(path, wrk)
            if relay is not None and relay.exited():
                raise relay.fail("died during the wrk run")
        finally:
            if relay is not None:
                self.children.stop(relay)
        figures = wrk.figures()
        return {
            **figures,
            # The relay's CPU (all its processes) per request wrk counted: on 2 cores wrk and
            # the backends compete with it, so this moves less with the load than requests/s.
            "cpu_us_per_request": cpu * 1e6 / figures["requests"] if figures["requests"] else 0.0,
            "backends": seen,
            "probe_problems": problems,
            "background_cpu_percent": background,
        }

    def measure_rss(self, upload_file: Path) -> dict[str, dict[str, float]]:
        """Peak RSS growth of a fresh twisted-lb while streaming the file up, then down."""
        size = self.args.transfer_mib * MIB
        relay, port = self.start_twisted_lb(
            "bulk", self.ports.bulk_relay, [self.ports.bulk_backend]
        )
        assert relay is not None
        pid = relay.proc.pid
        figures: dict[str, dict[str, float]] = {}
        try:
            wait_http_ok(relay, port)
            log(f"streaming: started {relay.name}, pid {pid}")
            for kind in TRANSFERS:
                reset_peak_rss(pid)
                before = proc_status_kib(pid, "VmRSS")
                log(f"streaming: {kind} {self.args.transfer_mib} MiB, RSS {before / 1024:.1f} MiB")
                start = time.monotonic()
                curl_transfer(
                    self.tools, kind, port, size, upload_file, self.tmp / "upload-answer.txt"
                )
                elapsed = time.monotonic() - start
                if relay.exited():
                    raise relay.fail(f"died during the {kind}")
                peak = proc_status_kib(pid, "VmHWM")
                growth = max(0, peak - before) / 1024
                log(
                    f"streaming: {kind} took {elapsed:.1f} s "
                    f"({size / MIB / elapsed:,.0f} MiB/s), peak RSS growth {growth:.1f} MiB"
                )
                figures[kind] = {
                    "rss_before_mib": before / 1024,
                    "peak_growth_mib": growth,
                    "seconds": elapsed,
                    "mib_per_s": size / MIB / elapsed,
                }
        finally:
            self.children.stop(relay)
        return figures

    def measure_fixed_rate(self, path: str, rate: float) -> dict[str, float]:
        """
        p99 latency of ``path`` under an open-loop load of ``rate`` requests/s in all.

        wrk has no open-loop mode (wrk2 is not packaged), so ``open-loop.lua`` gives it one:
        requests are offered on a fixed schedule whatever the responses, the next free one of
        the ``--connections`` connections taking the next slot, and a request sent late because
        every connection was busy is counted from its slot (coordinated omission corrected, as
        wrk2 does). The achieved rate is recorded next to the p99; it falls short of the
        offered one only when the path cannot keep up.
        """
        args = self.args
        interval_us = 1e6 * args.threads / rate
        relay, port = self.starter(path)()
        try:
            wait_http_ok(relay, port)
            warm_up_wrk(self.tools.wrk, port, args, f"{path} at {rate:,.0f} requests/s")
            wrk = run_wrk(
                self.tools.wrk,
                port,
                args.duration,
                args.connections,
                args.threads,
                script=OPEN_LOOP_SCRIPT,
                script_args=[f"{interval_us:.3f}"],
            )
            figures = {"offered_per_s": rate, **wrk.figures(), **parse_open_loop(wrk.output)}
            log(
                f"{path} at {rate:,.0f} requests/s: {wrk.requests_per_s:,.0f} achieved, "
                f"open-loop p99 {figures['latency_p99_ms']:.2f} ms (wrk's closed-loop "
                f"{figures['closed_loop_p99_ms']:.2f} ms), {wrk.non_2xx} non-2xx, "
                f"{wrk.socket_errors} socket errors"
            )
            if relay is not None and relay.exited():
                raise relay.fail("died during the fixed-rate run")
        finally:
            if relay is not None:
                self.children.stop(relay)
        return figures

    def measure_idle(self) -> dict[str, float]:
        """
        RSS of a fresh twisted-lb holding ``--idle-connections`` idle keep-alive clients.

        Each client connection sends one ``GET /``, reads the answer and then stays open and
        idle, as a browser's keep-alive connection does between page loads; the RSS is read once
        all of them are open (and again after the same number of seconds they took to open, to
        see it settle). The file descriptor limit of this process and its children is raised
        first, as an operator raises ``LimitNOFILE``.
        """
        count = self.args.idle_connections
        raise_fd_limit(count + 1024)  # each process holds one end of each connection
        relay, port = self.start_twisted_lb("idle", self.ports.idle_relay, self.ports.backends)
        assert relay is not None
        pid = relay.proc.pid
        clients: list[socket.socket] = []
        try:
            wait_http_ok(relay, port)
            before = proc_status_kib(pid, "VmRSS")
            start = time.monotonic()
            request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
            for n in range(count):
                s = socket.create_connection((LOOPBACK, port), timeout=10)
                clients.append(s)
                s.sendall(request)
                answer = s.recv(4096)
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise BenchError(f"idle: client {n} got {answer[:40]!r} instead of a 200")
            opened = time.monotonic() - start
            held = proc_status_kib(pid, "VmRSS")
            time.sleep(min(opened, 5.0))
            settled = proc_status_kib(pid, "VmRSS")
            if relay.exited():
                raise relay.fail("died holding the idle connections")
            alive = sum(1 for s in clients if _still_open(s))
            log(
                f"idle: {count} keep-alive clients opened in {opened:.1f} s, {alive} still open; "
                f"RSS {before / 1024:.1f} MiB before, {held / 1024:.1f} MiB with them, "
                f"{settled / 1024:.1f} MiB after {min(opened, 5.0):.1f} s"
            )
            if alive != count:
                raise BenchError(f"idle: twisted-lb closed {count - alive} of {count} clients")
            return {
                "connections": float(count),
                "rss_before_mib": before / 1024,
                "rss_mib": max(held, settled) / 1024,
                "open_seconds": opened,
            }
        finally:
            for s in clients:
                s.close()
            self.children.stop(relay)

    def run(self) -> None:
        backend = start_backend(self.children, self.tools.nginx, self.ports.backends, tag=True)
        bulk: Child | None = None
        upload_file = self.tmp / "upload.bin"
        if self.streaming:
            size = self.args.transfer_mib * MIB
            with upload_file.open("wb") as f:
                f.truncate(size)  # sparse: reads as zeros, takes no space
            bulk = self.children.start(
                "bulk backend",
                [
                    sys.executable,
                    "-c",
                    BULK_BACKEND_SCRIPT,
                    str(self.ports.bulk_backend),
                    str(size),
                ],
            )
            wait_http_ok(bulk, self.ports.bulk_backend)
            log(
                f"streaming backend: Python on {LOOPBACK}:{self.ports.bulk_backend}, "
                f"pid {bulk.proc.pid}"
            )

        def stream() -> None:
            if self.fixed_rate_paths and self.results.get("twisted-lb"):
                rate = FIXED_RATE_SHARE * self.results["twisted-lb"][-1]["requests_per_s"]
                for path in FIXED_RATE_PATHS:
                    figures = self.measure_fixed_rate(path, rate)
                    self.fixed_rate.setdefault(path, []).append(figures)
            if self.idle_connections:
                self.idle.append(self.measure_idle())
            if bulk is not None:
                for kind, figures in self.measure_rss(upload_file).items():
                    self.rss.setdefault(kind, []).append(figures)
                if bulk.exited():
                    raise bulk.fail("exited during the run")

        run_rounds(self.args, self.measure, self.results, backend, stream)

    @property
    def fixed_rate_paths(self) -> bool:
        return self.args.fixed_rate and all(p in self.args.paths for p in FIXED_RATE_PATHS)

    @property
    def idle_connections(self) -> bool:
        return "twisted-lb" in self.args.paths and self.args.idle_connections > 0

    @property
    def streaming(self) -> bool:
        return "twisted-lb" in self.args.paths and self.args.transfer_mib > 0


# --------------------------------------------------------------------------- report


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median of each figure over the rounds; errors are summed, backends united."""
    summary: dict[str, dict[str, Any]] = {}
    for path, rounds in results.items():
        row: dict[str, Any] = {
            key: statistics.median(r[key] for r in rounds)
            for key in (
                "requests_per_s",
                "latency_p99_ms",
                "requests",
                "cpu_us_per_request",
                "background_cpu_percent",
            )
        }
        row["non_2xx"] = sum(r["non_2xx"] for r in rounds)
        row["socket_errors"] = sum(r["socket_errors"] for r in rounds)
        row["backends"] = sorted({b for r in rounds for b in r["backends"]})
        row["probe_problems"] = [p for r in rounds for p in r["probe_problems"]]
        summary[path] = row
    return summary


def summarize_rss(rss: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        kind: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for kind, rounds in rss.items()
    }


def summarize_idle(idle: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in idle) for key in idle[0]} if idle else {}


MEASURE_KEYS = {"requests/s": "requests_per_s", "p99": "latency_p99_ms"}


def ratios(
    summary: dict[str, dict[str, Any]],
    rss_summary: dict[str, dict[str, float]],
    idle_summary: dict[str, float],
    fixed_summary: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for measure, num, den, comparison, target in TARGETS:
        value = ratio_of(summary, num, den, MEASURE_KEYS[measure])
        passed = None
        if value is not None:
            passed = value >= target if comparison == ">=" else value <= target
        rows.append(
            {
                "label": f"{num} / {den} {measure}",
                "value": value,
                "unit": "x",
                "comparison": comparison,
                "target": target,
                "pass": passed,
            }
        )
    for kind in TRANSFERS:
        growth = rss_summary[kind]["peak_growth_mib"] if kind in rss_summary else None
        rows.append(
            {
                "label": f"twisted-lb {kind} peak RSS growth",
                "value": growth,
                "unit": " MiB",
                "comparison": "<=",
                "target": RSS_TARGET_MIB,
                "pass": None if growth is None else growth <= RSS_TARGET_MIB,
            }
        )
    if all(p in fixed_summary for p in FIXED_RATE_PATHS):
        value = ratio_of(fixed_summary, "twisted-lb", "nginx", "latency_p99_ms")
        rows.append(
            {
                "label": f"twisted-lb / nginx p99 at {FIXED_RATE_SHARE:.0%} load",
                "value": value,
                "unit": "x",
                "comparison": "<=",
                "target": FIXED_RATE_P99_TARGET,
                "pass": None if value is None else value <= FIXED_RATE_P99_TARGET,
            }
        )
    if idle_summary:
        rss = idle_summary["rss_mib"]
        rows.append(
            {
                "label": f"twisted-lb RSS, {idle_summary['connections']:,.0f} idle clients",
                "value": rss,
                "unit": " MiB",
                "comparison": "<=",
                "target": IDLE_TARGET_MIB,
                "pass": rss <= IDLE_TARGET_MIB,
            }
        )
    for measure, num, den in CONTEXT_RATIOS:
        rows.append(
            {
                "label": f"{num} / {den} {measure}",
                "value": ratio_of(summary, num, den, MEASURE_KEYS[measure]),
                "unit": "x",
                "comparison": None,
                "target": None,
                "pass": None,
            }
        )
    return rows


def format_ratio_row(r: dict[str, Any]) -> str:
    if r["value"] is None:
        value = "n/a"
    elif r["unit"] == "x":
        value = f"{r['value']:.2f}x"
    else:
        value = f"{r['value']:.1f}{r['unit']}"
    if r["target"] is None:
        target, result = "-", "-"
    else:
        number = f"{r['target']:.1f}x" if r["unit"] == "x" else f"{r['target']:.0f}{r['unit']}"
        target = f"{r['comparison']} {number}"
        result = pass_mark(r["pass"])
    return f"{r['label']:<38} {value:>9} {target:>10}  {result}"


def version_number(line: str) -> str:
    """``2.6.12`` from ``HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/``."""
    match = re.search(r"\d+(?:\.\d+)+", line)
    return match.group(0) if match else "?"


def print_report(
    out: TextIO,
    args: argparse.Namespace,
    summary: dict[str, dict[str, Any]],
    rss_summary: dict[str, dict[str, float]],
    ratio_rows: list[dict[str, Any]],
    versions: dict[str, str],
    rounds_data: dict[str, list[dict[str, Any]]],
    rss_rounds: dict[str, list[dict[str, float]]],
    idle_summary: dict[str, float],
    fixed_summary: dict[str, dict[str, float]],
) -> None:
    print(
        f"\nL7 benchmark: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(keep-alive, GET / answered by nginx with a 3-byte body), 2 backends{rounds_note(args)}",
        file=out,
    )
    print(
        f"nginx {versions['nginx'].split('/')[-1]}, "
        f"HAProxy {version_number(versions['haproxy'])}, "
        f"twisted {versions['twisted']}, twisted-lb {twisted_lb_version(versions)}, "
        f"python {versions['python']}, {versions['cpus']} CPUs",
        file=out,
    )
    print("", file=out)
    print_header(
        out,
        f"{'path':<13} {'requests/s':>11} {'p99 ms':>8} {'CPU µs/req':>10} {'non-2xx':>8} "
        f"{'sock err':>9} {'backends':>9} {'busy%':>6}",
    )
    for path in PATHS:
        if path not in summary:
            continue
        row = summary[path]
        print(
            f"{path:<13} {row['requests_per_s']:>11,.0f} {row['latency_p99_ms']:>8.2f} "
            f"{row['cpu_us_per_request']:>10.1f} {row['non_2xx']:>8.0f} "
            f"{row['socket_errors']:>9.0f} {','.join(row['backends']):>9} "
            f"{row['background_cpu_percent']:>6.0f}",
            file=out,
        )
    if rss_summary:
        print(
            f"\ntwisted-lb streaming {args.transfer_mib} MiB each way (curl, Content-Length) "
            "to a Python backend",
            file=out,
        )
        print_header(
            out, f"{'transfer':<13} {'RSS before MiB':>15} {'peak growth MiB':>16} {'MiB/s':>8}"
        )
        for kind in TRANSFERS:
            if kind in rss_summary:
                r = rss_summary[kind]
                print(
                    f"{kind:<13} {r['rss_before_mib']:>15.1f} {r['peak_growth_mib']:>16.1f} "
                    f"{r['mib_per_s']:>8,.0f}",
                    file=out,
                )
    if fixed_summary:
        print(
            f"\nat a fixed rate of {FIXED_RATE_SHARE:.0%} of twisted-lb's requests/s "
            "(open-loop: bench/open-loop.lua, latency counted from each request's slot)",
            file=out,
        )
        print_header(
            out,
            f"{'path':<13} {'offered/s':>11} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'closed-loop p99':>16}",
        )
        for path, row in fixed_summary.items():
            print(
                f"{path:<13} {row['offered_per_s']:>11,.0f} {row['requests_per_s']:>11,.0f} "
                f"{row['latency_p50_ms']:>8.2f} {row['latency_p99_ms']:>8.2f} "
                f"{row['latency_p99_9_ms']:>9.2f} {row['closed_loop_p99_ms']:>16.2f}",
                file=out,
            )
    if idle_summary:
        print(
            f"\ntwisted-lb holding {idle_summary['connections']:,.0f} idle keep-alive clients "
            f"(one GET each, then idle): RSS {idle_summary['rss_before_mib']:.1f} MiB before, "
            f"{idle_summary['rss_mib']:.1f} MiB with them "
            f"(opened in {idle_summary['open_seconds']:.1f} s)",
            file=out,
        )
    print("", file=out)
    print_header(out, f"{'ratio':<38} {'value':>9} {'target':>10}  result")
    for r in ratio_rows:
        print(format_ratio_row(r), file=out)
    if args.rounds > 1:
        print(f"\nspread over {args.rounds} rounds (min - max):", file=out)
        for path in PATHS:
            if path in rounds_data:
                rps = [r["requests_per_s"] for r in rounds_data[path]]
                p99 = [r["latency_p99_ms"] for r in rounds_data[path]]
                print(
                    f"  {path:<13} requests/s {min(rps):>9,.0f} - {max(rps):<9,.0f}"
                    f" p99 ms {min(p99):.2f} - {max(p99):.2f}",
                    file=out,
                )
        for kind in TRANSFERS:
            if kind in rss_rounds:
                growth = [r["peak_growth_mib"] for r in rss_rounds[kind]]
                print(
                    f"  {kind:<13} peak RSS growth MiB {min(growth):.1f} - {max(growth):.1f}",
                    file=out,
                )
    print_busy_warning(out, rounds_data)
    print_wrk_errors_warning(out, summary)
    probe = {p: s["probe_problems"] for p, s in summary.items() if s["probe_problems"]}
    if probe:
        print(
            "\nwarning: the probe GETs before wrk had problems: "
            + "; ".join(f"{p}: {', '.join(problems)}" for p, problems in probe.items()),
            file=out,
        )
    one_backend = [
        p
        for p in ("nginx", "haproxy", "twisted-lb")
        if p in summary and len(summary[p]["backends"]) < 2
    ]
    if one_backend:
        print(
            f"\nwarning: {', '.join(one_backend)} sent all {PROBE_REQUESTS} requests of one "
            "keep-alive connection to one backend: not balancing each request (round robin "
            "should alternate), so not measuring an HTTP proxy",
            file=out,
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, PATHS, "seconds per wrk run")
    parser.add_argument(
        "--transfer-mib",
        type=int,
        default=1024,
        help="MiB streamed each way through twisted-lb for the RSS figure (0: skip; default 1024)",
    )
    parser.add_argument(
        "--no-fixed-rate",
        dest="fixed_rate",
        action="store_false",
        help="skip the p99 at a fixed rate of half twisted-lb's maximum",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=10000,
        help="idle keep-alive clients a fresh twisted-lb holds for the RSS figure (0: skip)",
    )
    args = parser.parse_args(argv)
    check_bench_args(parser, args, PATHS)
    if args.idle_connections < 0:
        parser.error("--idle-connections must not be negative")
    if args.transfer_mib < 0:
        parser.error("--transfer-mib must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path, children: Children) -> list[dict[str, Any]]:
        tools = ensure_tools(install=not args.no_install)
        versions = versions_of(tools)
        require_twisted_lb(args.paths, versions)
        ports = free_ports(3 + len(RELAYS) + 2)
        bench = Bench(
            args,
            tools,
            tmp,
            children,
            Ports(
                backends=ports[0:2],
                bulk_backend=ports[2],
                relays=dict(zip(RELAYS, ports[3 : 3 + len(RELAYS)], strict=True)),
                bulk_relay=ports[-2],
                idle_relay=ports[-1],
            ),
        )
        bench.run()
        summary = summarize(bench.results)
        rss_summary = summarize_rss(bench.rss)
        idle_summary = summarize_idle(bench.idle)
        fixed_summary = {
            path: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            for path, rounds in bench.fixed_rate.items()
        }
        ratio_rows = ratios(summary, rss_summary, idle_summary, fixed_summary)
        print_report(
            sys.stdout,
            args,
            summary,
            rss_summary,
            ratio_rows,
            versions,
            bench.results,
            bench.rss,
            idle_summary,
            fixed_summary,
        )
        if args.json:
            write_json(
                args.json,
                json_settings(
                    args, transfer_mib=args.transfer_mib, idle_connections=args.idle_connections
                ),
                versions,
                results=summary,
                rounds=bench.results,
                streaming={"results": rss_summary, "rounds": bench.rss},
                idle={"results": idle_summary, "rounds": bench.idle},
                fixed_rate={"results": fixed_summary, "rounds": bench.fixed_rate},
                ratios=ratio_rows,
            )
        return ratio_rows

    return run_bench(args, body)


if __name__ == "__main__":
    sys.exit(main())
