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
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).parent


def _script(name: str) -> str:
    """A console script of this environment (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


TWISTD = _script("twistd")
TWISTED_LB = _script("twisted-lb")


class Process:
    """A child process whose output lines are collected by a thread, for bounded waits."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
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


def start_lb(config_path: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
    """Start ``twistd -n lb --config config_path``; return it and its frontend's port."""
    process = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", config_path], env=env)
    port = int(process.wait_for(r"frontend web listening on 127\.0\.0\.1:(\d+)").group(1))
    process.wait_for(r"twisted-lb running")
    return process, port


def http_get(port: int, timeout: float = 10.0) -> str:
    """One HTTP/1.0 GET through a fresh connection; returns the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks).decode()
    head, _, body = response.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.0 200"):
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
