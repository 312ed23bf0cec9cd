"""Helpers shared by the benchmark scripts in bench/ (not a public API).

Child processes in their own process groups with bounded start and stop, free loopback ports,
readiness checks, installing missing tools with apt-get, the nginx backend and twisted-lb
starters, running and parsing wrk, report and JSON helpers, and ``run_bench``, the frame of each
script's ``main``. Each script calls ``set_log_name`` once so its progress lines on stderr carry
its own name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LOOPBACK = "127.0.0.1"

START_TIMEOUT = 20.0  # s for a child to start accepting connections
STOP_TIMEOUT = 5.0  # s for a child to exit after SIGTERM, before SIGKILL
APT_TIMEOUT = 900.0  # s for one apt-get command
BUSY_PERCENT = 10.0  # CPU use by others (% of all CPUs) above which the report warns of noise


class BenchError(Exception):
    """A tool or a step failed. The message says which and is shown to the user."""


_log_name = "bench"


def set_log_name(name: str) -> None:
    """The name in brackets in front of every progress line (the script's name)."""
    global _log_name
    _log_name = name


def log(message: str) -> None:
    print(f"[{_log_name}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP raise SystemExit, so ``finally`` blocks stop the children."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)


# --------------------------------------------------------------------------- tools and install


def apt_get(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("running: apt-get " + " ".join(args))
    try:
        return subprocess.run(
            ["apt-get", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"apt-get {' '.join(args)} failed: {e}") from e


def apt_install(packages: list[str]) -> None:
    """``apt-get install -y``, and ``apt-get update`` then again only if that fails."""
    if shutil.which("apt-get") is None:
        raise BenchError(f"missing {', '.join(packages)} and there is no apt-get; install them")
    if os.geteuid() != 0:
        raise BenchError(f"missing {', '.join(packages)}; run as root to install them with apt-get")
    proc = apt_get(["install", "-y", *packages])
    if proc.returncode != 0:
        update = apt_get(["update"])
        if update.returncode != 0:
            raise BenchError("apt-get update failed:\n" + tail_text(update.stderr))
        proc = apt_get(["install", "-y", *packages])
    if proc.returncode != 0:
        raise BenchError(
            f"apt-get install -y {' '.join(packages)} failed:\n" + tail_text(proc.stderr)
        )


def find_tools(
    packages: Mapping[str, str], install: bool, also_missing: Sequence[str] = ()
) -> dict[str, str]:
    """Each tool's path on PATH; ``packages`` maps tool to Debian package.

    Missing tools' packages, then ``also_missing``, are installed with apt-get first (unless
    ``install`` is false: then it fails).
    """
    missing = [pkg for tool, pkg in packages.items() if shutil.which(tool) is None]
    missing += also_missing
    if missing:
        if not install:
            raise BenchError(f"missing {', '.join(missing)} (and --no-install was given)")
        apt_install(missing)
    paths = {tool: shutil.which(tool) for tool in packages}
    for tool, path in paths.items():
        if path is None:
            raise BenchError(f"{tool} is still not on PATH after installing it")
    return {tool: path or tool for tool, path in paths.items()}


def twistd_argv() -> list[str]:
    """twistd for the interpreter running this script (twisted-lb is installed there)."""
    beside = Path(sys.executable).parent / "twistd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    # Same as the twistd console script. (``python -m twisted`` is twist, not twistd.)
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
    ]


def first_output_line(argv: list[str]) -> str:
    """The first line a command prints (stdout, else stderr), or ``?``: for version strings."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def python_module_version(module: str) -> str:
    """``module.__version__`` as the running interpreter imports it, or ``?``."""
    return first_output_line(
        [sys.executable, "-c", f"import {module}; print({module}.__version__)"]
    )


def tool_versions(
    tools: Mapping[str, str], modules: Sequence[str] = ("twisted", "twisted_lb")
) -> dict[str, str]:
    """Python's version, then ``tools`` (name to version line), the CPU count, ``modules``."""
    versions = {"python": platform.python_version(), **tools, "cpus": str(os.cpu_count())}
    for module in modules:
        versions[module] = python_module_version(module)
    if "twisted_lb" in modules:
        # Pure Python, or which modules mypyc compiled (TWISTED_LB_MYPYC=1 at install); -P
        # keeps a checkout in the current directory from shadowing the installed package.
        versions["twisted_lb build"] = first_output_line(
            [sys.executable, "-P", "-c", "from twisted_lb.cli import _version; print(_version())"]
        )
    return versions


def twisted_lb_version(versions: Mapping[str, str]) -> str:
    """twisted-lb's version and build for a report: ``0.1.0 (pure Python)``."""
    build = versions.get("twisted_lb build", "")
    return (
        build.removeprefix("twisted-lb ")
        if build.startswith("twisted-lb ")
        else versions["twisted_lb"]
    )


def require_twisted_lb(paths: Sequence[str], versions: Mapping[str, str]) -> None:
    """Fail if a path to measure is twisted-lb and this interpreter cannot import it."""
    if "twisted-lb" in paths and versions["twisted_lb"] == "?":
        raise BenchError(f"twisted_lb is not importable by {sys.executable}")


# --------------------------------------------------------------------------- child processes


def tail_text(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


class Child:
    """A child process in its own process group, its output in a log file.

    With ``err_path`` its stderr goes to that file instead (so the log holds stdout alone), and
    failures show the end of both, stderr first, in ``tail_lines`` lines.

    ``stop`` signals the whole group (nginx's workers too) while the leader is not yet reaped, so
    the group id cannot have been reused by anything else.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        cwd: Path,
        err_path: Path | None = None,
        tail_lines: int = 25,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.err_path = err_path
        self.tail_lines = tail_lines
        self._log = log_path.open("wb")
        self._err = err_path.open("wb") if err_path is not None else None
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._err or subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self._close_files()
            raise BenchError(f"could not start {name} ({argv[0]}): {e}") from e

    def _close_files(self) -> None:
        for f in (self._log, self._err):
            if f is not None and not f.closed:
                f.close()

    def exited(self) -> bool:
        """True once the process has exited, without reaping it."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signal_group(signal.SIGKILL)  # stragglers in the group, or a hung leader
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.proc.pid}) did not exit after SIGKILL")
        self._close_files()

    def output_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            if self.err_path is not None:
                text = self.err_path.read_text(errors="replace") + text
        except OSError:
            return "    (no output)"
        return tail_text(text, self.tail_lines)

    def fail(self, what: str) -> BenchError:
        status = "exited" if self.exited() else "is running"
        return BenchError(
            f"{self.name} {what} ({status}; log {self.log_path}):\n{self.output_tail()}"
        )


class Children:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        *,
        slug: str | None = None,
        split_stderr: bool = False,
        tail_lines: int = 25,
    ) -> Child:
        """Start a Child logging to tmp/SLUG.log (SLUG from the name unless given; -2, -3, ...
        added if taken). ``split_stderr``: its stderr to SLUG.err instead."""
        slug = slug or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        log_path = self.tmp / f"{slug}.log"
        n = 1
        while log_path.exists():
            n += 1
            log_path = self.tmp / f"{slug}-{n}.log"
        err_path = log_path.with_suffix(".err") if split_stderr else None
        child = Child(name, argv, log_path, cwd or self.tmp, err_path, tail_lines)
        self.running.append(child)
        return child

    def start_nginx(self, name: str, nginx: str, prefix: Path, config: str) -> Child:
        """``nginx -p PREFIX/ -c nginx.conf -g 'daemon off;'``, with ``config`` as nginx.conf."""
        prefix.mkdir(exist_ok=True)
        (prefix / "nginx.conf").write_text(config)
        argv = [nginx, "-p", f"{prefix}/", "-c", "nginx.conf", "-g", "daemon off;"]
        return self.start(name, argv, prefix)

    def start_twisted_lb(self, name: str, workdir: Path, config: str) -> Child:
        """``twistd -n lb --config lb.toml`` in ``workdir``: the command users run, as it is."""
        workdir.mkdir(exist_ok=True)
        conf = workdir / "lb.toml"
        conf.write_text(config)
        argv = [*twistd_argv(), "-n", "lb", "--config", str(conf)]
        return self.start(name, argv, workdir)

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        while self.running:
            child = self.running.pop()
            try:
                child.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {child.name}: {e}")


# --------------------------------------------------------------------------- ports and readiness


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    deadline = time.monotonic() + 10
    while len(ports) < n:
        if time.monotonic() > deadline:
            raise BenchError("could not find free loopback ports")
        ports.add(free_port())
    return sorted(ports)


def is_listening(port: int) -> bool:
    """A socket is in LISTEN on 127.0.0.1:port (read from /proc, without connecting to it)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":
                    addr, _, hexport = fields[1].partition(":")
                    if int(hexport, 16) == port and addr in ("0100007F", "00000000"):
                        return True
    except (OSError, ValueError, StopIteration):
        # No /proc: fall back to connecting (iperf3's server copes with an empty connection).
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            return False
    return False


def wait_listening(child: Child, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.exited():
            raise child.fail(f"exited before listening on {LOOPBACK}:{port}")
        if is_listening(port):
            return
        time.sleep(0.05)
    raise child.fail(f"did not listen on {LOOPBACK}:{port} within {timeout:.0f}s")


def http_get_status(port: int, timeout: float = 2.0) -> str:
    """The status line of ``GET /`` on 127.0.0.1:port, or an error string."""
    request = f"GET / HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(request)
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        return f"error: {e}"
    return data.split(b"\r\n", 1)[0].decode("latin-1") or "error: connection closed"


def wait_http_ok(child: Child | None, port: int, timeout: float = START_TIMEOUT) -> None:
    """Wait until ``GET /`` through 127.0.0.1:port answers 200 (an end-to-end check)."""
    deadline = time.monotonic() + timeout
    status = "not tried"
    while time.monotonic() < deadline:
        if child is not None and child.exited():
            raise child.fail(f"exited before serving HTTP on {LOOPBACK}:{port}")
        status = http_get_status(port)
        if re.match(r"HTTP/1\.[01] 200\b", status):
            return
        time.sleep(0.1)
    message = f"GET http://{LOOPBACK}:{port}/ did not answer 200 within {timeout:.0f}s: {status}"
    if child is not None:
        raise child.fail(message)
    raise BenchError(message)


def group_cpu_seconds(pgid: int) -> float:
    """
    User + system CPU seconds of the live processes of process group ``pgid`` (a
    :class:`Child` and, for nginx, its workers), from /proc/PID/stat; 0 without /proc.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:  # it ended meanwhile
            continue
        # proc(5): "pid (comm) state ppid pgrp ... utime stime", comm may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def cpu_busy_percent(interval: float = 1.0) -> float:
    """Share of all CPUs (0-100) busy over ``interval`` s, from /proc/stat; 0 without it."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 100.0 * (total - (idle1 - idle0)) / total if total > 0 else 0.0


def busy_before(path: str) -> float:
    """Before anything of a path runs: what the rest of the machine is doing (warned about)."""
    background = cpu_busy_percent()
    if background > BUSY_PERCENT:
        log(f"{path}: warning: other processes use {background:.0f}% of the CPUs")
    return background


# --------------------------------------------------------------------------- configs


def nginx_main_context(tmp: Path, name: str, stream_module: Path | None) -> str:
    lines = []
    if stream_module is not None:
        lines.append(f"load_module {stream_module};")
    lines += [
        "worker_processes 1;",
        f"pid {tmp / (name + '.pid')};",
        f"error_log {tmp / (name + '-error.log')} warn;",
    ]
    if os.geteuid() == 0:
        lines.append("user root;")  # else the worker drops to nobody and nginx warns
    lines.append("events { worker_connections 1024; }")
    return "\n".join(lines) + "\n"


def nginx_http_common(tmp: Path, name: str) -> str:
    """The start of an ``http {}`` block: no access log, long keep-alive, temp dirs in tmp."""
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / (name + '-' + kind)};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "http {\n"
        "    access_log off;\n"
        f"{temp_paths}"
        "    keepalive_requests 1000000;\n"
        "    keepalive_timeout 120s;\n"
    )


def nginx_upstream_keepalive(connections: int) -> str:
    """
    The keep-alive lines of an nginx ``upstream {}`` block, tuned as an operator would for
    ``connections`` concurrent clients.

    nginx's ``keepalive N`` is the number of idle upstream connections one worker caches, for
    all the upstream's servers together; with fewer than the clients in flight, nginx closes a
    backend connection after most responses and opens a new one for the next request. So the
    cache holds at least twice the load's concurrency (and 64 at least), each connection serves
    up to a million requests, and idle ones live as long as the client side's.
    """
    return (
        f"        keepalive {max(64, 2 * connections)};\n"
        "        keepalive_requests 1000000;\n"
        "        keepalive_timeout 120s;\n"
    )


def nginx_backend_config(tmp: Path, ports: Sequence[int], tag: bool = False) -> str:
    """One nginx worker answering ``ok`` over plain HTTP on each port.

    With ``tag`` each port also sends ``X-Backend: bN`` (N from 1), to tell them apart. A
    request's ``X-Intended`` field is echoed in the response, for ``open-loop.lua``.
    """
    servers = "".join(
        "    server {\n"
        f"        listen {LOOPBACK}:{port};\n"
        "        location / {\n"
        "            default_type text/plain;\n"
        + (f"            add_header X-Backend b{n};\n" if tag else "")
        # Echoed for bench/open-loop.lua; absent from responses to requests without it.
        + "            add_header X-Intended $http_x_intended;\n"
        + '            return 200 "ok\\n";\n'
        "        }\n"
        "    }\n"
        for n, port in enumerate(ports, 1)
    )
    return (
        nginx_main_context(tmp, "backend", None)
        + nginx_http_common(tmp, "backend")
        + servers
        + "}\n"
    )


def start_backend(children: Children, nginx: str, ports: Sequence[int], tag: bool = False) -> Child:
    """The nginx backend (:func:`nginx_backend_config`) in tmp/nginx-backend, answering 200."""
    prefix = children.tmp / "nginx-backend"
    config = nginx_backend_config(prefix, ports, tag)
    backend = children.start_nginx("nginx backend", nginx, prefix, config)
    for port in ports:
        wait_http_ok(backend, port)
    if len(ports) == 1:
        log(f"HTTP backend: nginx on {LOOPBACK}:{ports[0]}, pid {backend.proc.pid}")
    else:
        log(
            f"HTTP backends: nginx on {LOOPBACK} ports "
            f"{', '.join(map(str, ports))}, pid {backend.proc.pid}"
        )
    return backend


# --------------------------------------------------------------------------- wrk


def run_tool(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise BenchError(f"{what}: {argv[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what}: `{' '.join(argv)}` did not finish in {timeout:.0f}s") from e
    return proc


_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass
class WrkResult:
    requests_per_s: float
    latency_p99_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx/3xx responses
    socket_errors: int = 0  # connect, read, write and timeout errors
    non_2xx: int = 0  # responses with a status outside 200-399
    output: str = ""  # what wrk printed

    def figures(self) -> dict[str, float]:
        """The figures a round records, errors split into non-2xx and socket errors."""
        return {
            "requests_per_s": self.requests_per_s,
            "latency_p99_ms": self.latency_p99_ms,
            "requests": float(self.requests),
            "non_2xx": float(self.non_2xx),
            "socket_errors": float(self.socket_errors),
        }


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    if not (rps and p99 and total):
        raise BenchError("could not parse wrk's output:\n" + tail_text(output))
    socket_errors = 0
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        socket_errors = sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(non2xx.group(1)) if non2xx else 0
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        latency_p99_ms=float(p99.group(1)) * _LATENCY_UNITS[p99.group(2)],
        requests=int(total.group(1)),
        errors=socket_errors + non_2xx,
        socket_errors=socket_errors,
        non_2xx=non_2xx,
        output=output,
    )


def run_wrk(
    wrk: str,
    port: int,
    duration: int,
    connections: int,
    threads: int,
    scheme: str = "http",
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> WrkResult:
    """``wrk -tT -cC -dDs --latency http://127.0.0.1:port/``, bounded by duration + 60 s.

    ``scheme="https"`` measures over TLS (wrk does not verify the certificate); ``script`` is
    a Lua script for ``-s``, and ``script_args`` its arguments (after ``--``). The result's
    ``output`` is what wrk printed, for what a script adds to it.
    """
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        *(["-s", str(script)] if script is not None else []),
        f"{scheme}://{LOOPBACK}:{port}/",
        *(["--", *script_args] if script_args else []),
    ]
    proc = run_tool(argv, timeout=duration + 60, what="wrk")
    if proc.returncode != 0:
        raise BenchError(
            f"wrk exited with {proc.returncode}:\n" + tail_text(proc.stdout + proc.stderr)
        )
    return parse_wrk(proc.stdout)


def warm_up_wrk(
    wrk: str, port: int, args: argparse.Namespace, path: str, scheme: str = "http"
) -> None:
    """The --warmup run of wrk (if any), then log the command of the measured run."""
    if args.warmup > 0:
        run_wrk(wrk, port, args.warmup, args.connections, args.threads, scheme)
    https = " https" if scheme == "https" else ""
    log(f"{path}: wrk -t{args.threads} -c{args.connections} -d{args.duration}s{https}")


def log_wrk_result(path: str, wrk: WrkResult) -> None:
    log(
        f"{path}: {wrk.requests_per_s:,.0f} requests/s, p99 {wrk.latency_p99_ms:.2f} ms, "
        f"{wrk.non_2xx} non-2xx, {wrk.socket_errors} socket errors"
    )


def run_rounds(
    args: argparse.Namespace,
    measure: Callable[[str], dict[str, Any]],
    results: dict[str, list[dict[str, Any]]],
    backend: Child,
    after_round: Callable[[], None] | None = None,
) -> None:
    """--rounds times: measure each of --paths into ``results``, then ``after_round``.

    After each path the backend must still run.
    """
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            log(f"round {round_no} of {args.rounds}")
        for path in args.paths:
            results.setdefault(path, []).append(measure(path))
            if backend.exited():
                raise backend.fail("exited during the run")
        if after_round is not None:
            after_round()


# --------------------------------------------------------------------------- report


def ratio_of(
    summary: Mapping[str, Mapping[str, Any]], num: str, den: str, key: str
) -> float | None:
    """``summary[num][key] / summary[den][key]``, or None without both or with a zero divisor."""
    if num in summary and den in summary and summary[den][key] > 0:
        return summary[num][key] / summary[den][key]
    return None


def pass_mark(passed: bool | None) -> str:
    return {None: "n/a", True: "PASS", False: "MISS"}[passed]


def rounds_note(args: argparse.Namespace) -> str:
    """``, median of N rounds`` for the report's first line (empty for one round)."""
    return f", median of {args.rounds} rounds" if args.rounds > 1 else ""


def print_header(out: TextIO, header: str) -> None:
    """A table's header line, underlined."""
    print(header, file=out)
    print("-" * len(header), file=out)


def print_busy_warning(out: TextIO, rounds_data: Mapping[str, list[dict[str, Any]]]) -> None:
    """Warn when other processes used more than BUSY_PERCENT just before a measurement."""
    busy = max(
        (r["background_cpu_percent"] for rs in rounds_data.values() for r in rs), default=0.0
    )
    if busy > BUSY_PERCENT:
        print(
            f"\nwarning: other processes used up to {busy:.0f}% of the CPUs just before a "
            "measurement; the figures are noisy. Use --rounds 3 or more, or rerun when the "
            "machine is idle.",
            file=out,
        )


def print_wrk_errors_warning(out: TextIO, summary: Mapping[str, Mapping[str, Any]]) -> None:
    """Warn about the paths where wrk saw non-2xx responses or socket errors."""
    errors = {
        p: (int(s["non_2xx"]), int(s["socket_errors"]))
        for p, s in summary.items()
        if s["non_2xx"] or s["socket_errors"]
    }
    if errors:
        print(
            "\nwarning: wrk saw non-2xx responses or socket errors (those paths' figures are "
            "not comparable): "
            + ", ".join(f"{p} {n} non-2xx, {e} socket errors" for p, (n, e) in errors.items()),
            file=out,
        )


def json_settings(
    args: argparse.Namespace, options: Sequence[str] = (), **after: Any
) -> dict[str, Any]:
    """The ``settings`` of the JSON output: --duration, --connections, --threads, the script's
    ``options`` (args attributes), --warmup, --rounds, then ``after``."""
    settings: dict[str, Any] = {
        "duration_s": args.duration,
        "connections": args.connections,
        "threads": args.threads,
    }
    settings.update((name, getattr(args, name)) for name in options)
    settings.update(warmup_s=args.warmup, rounds=args.rounds, **after)
    return settings


def write_json(out: str, settings: dict[str, Any], versions: dict[str, str], **rest: Any) -> None:
    """--json OUT: settings, versions and ``rest`` in that order, indented, and log it."""
    document = {"settings": settings, "versions": versions, **rest}
    Path(out).write_text(json.dumps(document, indent=2) + "\n")
    log(f"wrote {out}")


def bench_parser(
    doc: str | None, paths: Sequence[str], duration_help: str
) -> argparse.ArgumentParser:
    """The options every benchmark script takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if doc else None,
        epilog="See bench/README.rst for how to read the output.",
    )
    parser.add_argument("--duration", type=int, default=10, help=duration_help)
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of unrecorded wrk before each run (0: none)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run all paths this many times; report medians"
    )
    parser.add_argument(
        "--paths",
        default=",".join(paths),
        help=f"comma-separated subset of {','.join(paths)} (default: all)",
    )
    parser.add_argument("--json", metavar="OUT", help="write the raw figures to OUT as JSON")
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of apt-get installing missing tools"
    )
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 3 if a target is missed")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with the logs")
    return parser


def check_bench_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, paths: Sequence[str]
) -> None:
    """Validate the options of :func:`bench_parser`; ``args.paths`` becomes a list, in order."""
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in paths]
    if unknown or not chosen:
        parser.error(f"--paths: unknown {', '.join(unknown) or '(empty)'}; choose from {paths}")
    args.paths = [p for p in paths if p in chosen]
    for name in ("duration", "connections", "threads", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")


# --------------------------------------------------------------------------- main


def run_bench(
    args: argparse.Namespace, body: Callable[[Path, Children], list[dict[str, Any]]]
) -> int:
    """A script's main after parsing: ``body(tmp, children)`` measures and reports.

    ``body`` returns the ratio rows; exit status 3 if one missed its target (``"pass"`` false)
    and --fail-on-miss was given, else 0; 1 on a BenchError, 130 on Ctrl-C. The children are
    always stopped; the temp dir (``/tmp/NAME-*``, NAME from the log name) is kept after a
    failure or with --keep-tmp.
    """
    exit_on_signals()
    tmp = Path(tempfile.mkdtemp(prefix=_log_name.replace("_", "-") + "-"))
    children = Children(tmp)
    failed = True
    try:
        ratio_rows = body(tmp, children)
        failed = False
        missed = any(r["pass"] is False for r in ratio_rows)
        return 3 if (missed and args.fail_on_miss) else 0
    except BenchError as e:
        print(f"{_log_name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_log_name}: interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if args.keep_tmp or failed:
            log(f"logs and configs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
