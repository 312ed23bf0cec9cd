"""Helpers shared by the benchmark scripts in bench/ (not a public API).

Child processes in their own process groups with bounded start and stop, free loopback ports,
readiness checks, installing missing tools with apt-get, and running and parsing wrk. Each
script calls ``set_log_name`` once so its progress lines on stderr carry its own name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


# --------------------------------------------------------------------------- child processes


def tail_text(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


class Child:
    """A child process in its own process group, its output in a log file.

    ``stop`` signals the whole group (nginx's workers too) while the leader is not yet reaped, so
    the group id cannot have been reused by anything else.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self._log.close()
            raise BenchError(f"could not start {name} ({argv[0]}): {e}") from e

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
        if not self._log.closed:
            self._log.close()

    def output_tail(self) -> str:
        try:
            return tail_text(self.log_path.read_text(errors="replace"))
        except OSError:
            return "    (no output)"

    def fail(self, what: str) -> BenchError:
        status = "exited" if self.exited() else "is running"
        return BenchError(
            f"{self.name} {what} ({status}; log {self.log_path}):\n{self.output_tail()}"
        )


class Children:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[Child] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Child:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        log_path = self.tmp / f"{slug}.log"
        n = 1
        while log_path.exists():
            n += 1
            log_path = self.tmp / f"{slug}-{n}.log"
        child = Child(name, argv, log_path, cwd or self.tmp)
        self.running.append(child)
        return child

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
    )


def run_wrk(
    wrk: str, port: int, duration: int, connections: int, threads: int, scheme: str = "http"
) -> WrkResult:
    """``wrk -tT -cC -dDs --latency http://127.0.0.1:port/``, bounded by duration + 60 s.

    ``scheme="https"`` measures over TLS (wrk does not verify the certificate).
    """
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        f"{scheme}://{LOOPBACK}:{port}/",
    ]
    proc = run_tool(argv, timeout=duration + 60, what="wrk")
    if proc.returncode != 0:
        raise BenchError(
            f"wrk exited with {proc.returncode}:\n" + tail_text(proc.stdout + proc.stderr)
        )
    return parse_wrk(proc.stdout)


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
