"""
Processes for the integration tests: real backends and a real ``twistd -n lb`` on loopback.

Every wait here is bounded in time; every process is killed by the test's cleanup.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

HERE = Path(__file__).parent


def _script(name: str) -> str:
    """A console script of this environment (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


TWISTD = _script("twistd")
TWISTED_LB = _script("twisted-lb")
# twistd's own epoll reactor, which ``--reactor`` picks instead of the one ``twistd lb`` installs
# by default on Linux (twisted_lb.reactor); elsewhere twistd's default either way.
TWISTED_REACTOR = "epoll" if sys.platform.startswith("linux") else None


class Process:
    """A child process whose output lines are collected by a thread, for bounded waits."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first output line (old or new) matching ``pattern``; fails after ``timeout`` s."""
        regex = re.compile(pattern)
        for line in self.lines:
            match = regex.search(line)
            if match:
                return match
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match
        raise AssertionError(
            f"{self.args[:3]}: no line matching {pattern!r} within {timeout} s; output:\n"
            + "".join(self.lines[-40:])
        )

    def count(self, pattern: str, at_least: int = 0, timeout: float = 20.0) -> int:
        """
        How many output lines match ``pattern``, once at least ``at_least`` do (``0``: the
        lines printed so far, at once); fails after ``timeout`` s.
        """
        regex = re.compile(pattern)
        found = sum(1 for line in self.lines if regex.search(line))
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if found >= at_least else deadline - time.monotonic()
            if wait < 0:
                break
            try:
                line = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
            except queue.Empty:
                if found >= at_least:
                    return found
                break
            if line is None:
                if found >= at_least:
                    return found
                break
            self.lines.append(line)
            found += 1 if regex.search(line) else 0
        raise AssertionError(
            f"{self.args[:3]}: {found} lines matching {pattern!r}, not {at_least}, within "
            f"{timeout} s; output:\n" + "".join(self.lines[-40:])
        )

    def output(self, settle: float = 0.2) -> str:
        """Everything printed so far (after waiting ``settle`` s for stragglers)."""
        deadline = time.monotonic() + settle
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def start_backend(mode: str, name: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
    """Start ``tests/_backend.py MODE NAME``; return it and its port."""
    process = Process([sys.executable, str(HERE / "_backend.py"), mode, name], env=env)
    port = int(process.wait_for(r"^PORT (\d+)").group(1))
    return process, port


def lb_config(backends: Iterable[int], strategy: str = "round_robin", extra: str = "") -> str:
    """A one-frontend tcp config on an OS-chosen port in front of ``backends`` (ports)."""
    backend_list = ", ".join(f'{{ address = "127.0.0.1:{port}" }}' for port in backends)
    return (
        "[frontends.web]\n"
        'mode = "tcp"\n'
        'listen = ["tcp:0:interface=127.0.0.1"]\n'
        'pool = "app"\n'
        f"{extra}\n"
        "[pools.app]\n"
        f'strategy = "{strategy}"\n'
        "connect_timeout = 2.0\n"
        f"backends = [{backend_list}]\n"
    )


def http_lb_config(
    pools: Mapping[str, Iterable[int]],
    *,
    routes: Iterable[tuple[str, str]] = (),
    frontend_extra: str = "",
    pool_extra: str = "",
) -> str:
    """
    A one-frontend http config on an OS-chosen port.

    Args:
        pools: pool name to backend ports; the first pool is the frontend's ``pool``. Backends
            get their default names (``app1``, ``app2``, ...).
        routes: ``(path_prefix, pool)`` routes, in order.
        frontend_extra: more ``key = value`` lines for ``[frontends.web]``.
        pool_extra: more ``key = value`` lines for every pool.
    """
    names = list(pools)
    lines = [
        "[frontends.web]",
        'mode = "http"',
        'listen = ["tcp:0:interface=127.0.0.1"]',
        f'pool = "{names[0]}"',
        frontend_extra,
    ]
    for prefix, pool in routes:
        lines += ["[[frontends.web.routes]]", f'path_prefix = "{prefix}"', f'pool = "{pool}"']
    for name, ports in pools.items():
        backend_list = ", ".join(f'{{ address = "127.0.0.1:{port}" }}' for port in ports)
        lines += [
            f"[pools.{name}]",
            "connect_timeout = 2.0",
            pool_extra,
            f"backends = [{backend_list}]",
        ]
    return "\n".join(lines) + "\n"


def start_lb(
    config_path: str, env: dict[str, str] | None = None, reactor: str | None = None
) -> tuple[Process, int]:
    """
    Start ``twistd -n lb --config config_path`` (the command docs/ give operators), with
    ``--reactor=REACTOR`` before ``-n`` when ``reactor`` is given; return it and its frontend's
    port.
    """
    flags = [f"--reactor={reactor}"] if reactor else []
    process = Process([TWISTD, *flags, "-n", "--pidfile=", "lb", "--config", config_path], env=env)
    port = int(process.wait_for(r"frontend web listening on 127\.0\.0\.1:(\d+)").group(1))
    process.wait_for(r"twisted-lb running")
    return process, port


def http_get(port: int, timeout: float = 10.0, path: str = "/") -> str:
    """One HTTP/1.0 GET through a fresh connection; returns the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET %b HTTP/1.0\r\nHost: test\r\n\r\n" % path.encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks).decode()
    head, _, body = response.partition("\r\n\r\n")
    if not head.startswith(("HTTP/1.0 200", "HTTP/1.1 200")):
        raise AssertionError(f"unexpected response {response!r}")
    return body


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (``VmRSS`` now, ``VmHWM`` peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def environ_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Response:
    """One HTTP response as read by :func:`read_response`; header names are lowercased."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The last value of the header ``name`` (any case), or ``None``."""
        values = [value for key, value in self.headers if key == name.lower()]
        return values[-1] if values else None


def read_response(rfile: BinaryIO, method: str = "GET") -> Response:
    """
    Read one response from ``rfile`` (a socket's ``makefile("rb")``, whose socket has a
    timeout): status line, header fields and a body framed by Content-Length, chunked coding or
    the close (RFC 9112 §6.3); 1xx, 204, 304 and responses to HEAD have none.

    Raises:
        AssertionError: the connection closed before a whole response, or it is malformed.
    """
    line = rfile.readline(65537)
    if not line:
        raise AssertionError("connection closed before a response")
    version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
    status_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise AssertionError(f"malformed status line {line!r}")
    response = Response(version, int(status_text), reason)
    while True:
        line = rfile.readline(65537)
        if not line:
            raise AssertionError("connection closed in a response head")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        response.headers.append((name.strip().lower(), value.strip()))
    status = response.status
    if status < 200 or status in (204, 304) or method == "HEAD":
        return response
    if "chunked" in (response.header("transfer-encoding") or "").lower():
        parts = []
        while True:
            size_line = rfile.readline(1024)
            if not size_line:
                raise AssertionError("connection closed in a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(_read_exactly(rfile, size))
            if rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise AssertionError("chunk not followed by CRLF")
        response.body = b"".join(parts)
    elif response.header("content-length") is not None:
        response.body = _read_exactly(rfile, int(response.header("content-length") or 0))
    else:
        response.body = rfile.read()
    return response


def _read_exactly(rfile: BinaryIO, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise AssertionError(f"connection closed after {len(data)} of {size} body bytes")
    return data
