#!/usr/bin/env python3
"""L4 benchmark: twisted-lb's TCP relay against nginx ``stream`` and Twisted's portforward.

One run measures four paths to the same backends, all on 127.0.0.1:

``direct``
    straight to the backend, the ceiling for everything else;
``nginx-stream``
    nginx's ``stream`` proxy, one worker process (the anchor);
``portforward``
    ``twisted.protocols.portforward.ProxyFactory`` on the epoll reactor;
``twisted-lb``
    ``twistd -n lb --config cfg.toml`` with ``mode = "tcp"``.

For each path it measures requests/s and p99 latency with wrk (50 keep-alive connections against
an nginx that answers ``ok``) and Gbit/s with iperf3 (one stream), then prints the ratios that
the Performance targets in docs/design.rst ask for. See bench/README.rst.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
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
    nginx_main_context,
    pass_mark,
    print_busy_warning,
    print_header,
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
    wait_listening,
    warm_up_wrk,
    write_json,
)

set_log_name("tcp_bench")

PATHS = ("direct", "nginx-stream", "portforward", "twisted-lb")

# (measure, numerator, denominator, minimum ratio): the L4 rows of the Performance targets.
TARGETS = (
    ("requests/s", "twisted-lb", "portforward", 1.0),
    ("requests/s", "twisted-lb", "nginx-stream", 0.5),
    ("Gbit/s", "twisted-lb", "nginx-stream", 1.0),
)

TOOL_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "iperf3": "iperf3"}
STREAM_MODULE_PACKAGE = "libnginx-mod-stream"
STREAM_MODULE_FILE = "ngx_stream_module.so"
NGINX_MODULE_CONF_DIRS = (
    Path("/etc/nginx/modules-enabled"),
    Path("/usr/share/nginx/modules-available"),
)

PORTFORWARD_SCRIPT = """\
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory
args = [int(a) for a in sys.argv[1:]]
for listen_port, backend_port in zip(args[::2], args[1::2]):
    reactor.listenTCP(listen_port, ProxyFactory("127.0.0.1", backend_port), interface="127.0.0.1")
reactor.run()
"""


# --------------------------------------------------------------------------- tools and install


def nginx_build_info(nginx: str) -> str:
    """``nginx -V`` output (nginx prints it on stderr)."""
    try:
        proc = subprocess.run(
            [nginx, "-V"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"`{nginx} -V` failed: {e}") from e
    return proc.stderr + proc.stdout


def find_stream_module(nginx: str) -> tuple[bool, Path | None]:
    """Where nginx's stream module is: ``(needed, path)``.

    ``needed`` is False when nginx was built with the stream module compiled in, so no
    ``load_module`` line is needed. Otherwise ``path`` is the module file, or None if missing.
    Debian ships it in libnginx-mod-stream as /usr/lib/nginx/modules/ngx_stream_module.so, with
    a ``load_module modules/ngx_stream_module.so;`` snippet (relative to nginx's prefix) in
    /usr/share/nginx/modules-available and a symlink to it in /etc/nginx/modules-enabled.
    """
    info = nginx_build_info(nginx)
    if re.search(r"--with-stream(\s|$)", info):
        return False, None
    if "--with-stream=dynamic" not in info:
        # Built without any stream support; the Debian module package will not fit it either,
        # but a module file next to it is still the best bet.
        log("nginx -V shows no --with-stream; looking for a stream module anyway")
    prefix_match = re.search(r"--prefix=(\S+)", info)
    prefix = Path(prefix_match.group(1)) if prefix_match else Path("/usr/share/nginx")
    candidates: list[Path] = []
    modules_match = re.search(r"--modules-path=(\S+)", info)
    if modules_match:
        candidates.append(Path(modules_match.group(1)) / STREAM_MODULE_FILE)
    candidates.append(Path("/usr/lib/nginx/modules") / STREAM_MODULE_FILE)
    for conf_dir in NGINX_MODULE_CONF_DIRS:
        if not conf_dir.is_dir():
            continue
        for conf in sorted(conf_dir.iterdir()):
            try:
                text = conf.read_text()
            except OSError:
                continue
            for m in re.finditer(r"^\s*load_module\s+(\S+?);", text, re.MULTILINE):
                module = Path(m.group(1).strip("\"'"))
                if module.name == STREAM_MODULE_FILE:
                    candidates.append(module if module.is_absolute() else prefix / module)
    for candidate in candidates:
        if candidate.is_file():
            return True, candidate.resolve()
    return True, None


@dataclass
class Tools:
    nginx: str
    wrk: str
    iperf3: str
    stream_module: Path | None  # None: compiled in, no load_module line


def ensure_tools(install: bool) -> Tools:
    missing_module = []
    if shutil.which("nginx") is not None:
        needed, module = find_stream_module(shutil.which("nginx") or "nginx")
        if needed and module is None:
            missing_module.append(STREAM_MODULE_PACKAGE)
    else:
        missing_module.append(STREAM_MODULE_PACKAGE)
    paths = find_tools(TOOL_PACKAGES, install, missing_module)
    needed, module = find_stream_module(paths["nginx"])
    if needed and module is None:
        raise BenchError(
            f"nginx's stream module ({STREAM_MODULE_FILE}) not found; "
            f"install {STREAM_MODULE_PACKAGE}"
        )
    return Tools(**paths, stream_module=module)


def versions_of(tools: Tools) -> dict[str, str]:
    return tool_versions(
        {
            "nginx": first_output_line([tools.nginx, "-v"]),
            "wrk": first_output_line([tools.wrk, "--version"]),
            "iperf3": first_output_line([tools.iperf3, "--version"]),
        }
    )


# --------------------------------------------------------------------------- configs


def nginx_stream_config(
    tmp: Path, stream_module: Path | None, routes: list[tuple[int, int]]
) -> str:
    servers = "".join(
        f"    server {{ listen {LOOPBACK}:{listen}; proxy_pass {LOOPBACK}:{backend}; }}\n"
        for listen, backend in routes
    )
    return nginx_main_context(tmp, "stream", stream_module) + "stream {\n" + servers + "}\n"


def twisted_lb_config(routes: list[tuple[str, int, int]], client_timeout: float | None) -> str:
    parts = []
    for name, listen, _backend in routes:
        parts.append(f"[frontends.bench_{name}]")
        parts.append('mode = "tcp"')
        parts.append(f'listen = ["tcp:{listen}:interface={LOOPBACK}"]')
        parts.append(f'pool = "{name}"')
        if client_timeout is not None:
            parts.append(f"client_timeout = {client_timeout:.1f}")
        parts.append("")
    for name, _listen, backend in routes:
        parts.append(f"[pools.{name}]")
        parts.append(f'backends = [{{ address = "{LOOPBACK}:{backend}" }}]')
        parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------- measurements


def run_iperf3(
    tools: Tools, children: Children, tmp: Path, backend_port: int, port: int, duration: int
) -> float:
    """Gbit/s received through 127.0.0.1:port, with a fresh iperf3 server on backend_port."""
    server = children.start(
        "iperf3 server", [tools.iperf3, "-s", "-B", LOOPBACK, "-p", str(backend_port)], cwd=tmp
    )
    try:
        wait_listening(server, backend_port)
        argv = [
            tools.iperf3,
            "-c",
            LOOPBACK,
            "-p",
            str(port),
            "-t",
            str(duration),
            "-J",
            "--connect-timeout",
            "5000",
        ]
        proc = run_tool(argv, timeout=duration + 60, what="iperf3")
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = {}
        if proc.returncode != 0 or "error" in report:
            message = report.get("error") or tail_text(proc.stdout + proc.stderr)
            raise BenchError(f"iperf3 client through port {port} failed: {message}")
        try:
            bps = float(report["end"]["sum_received"]["bits_per_second"])
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"iperf3's JSON has no end.sum_received.bits_per_second: {e}") from e
        return bps / 1e9
    finally:
        children.stop(server)


# --------------------------------------------------------------------------- the paths


@dataclass
class Ports:
    http_backend: int
    iperf_backend: int
    relays: dict[str, tuple[int, int]]  # path -> (http port, iperf port)


@dataclass
class Bench:
    args: argparse.Namespace
    tools: Tools
    tmp: Path
    children: Children
    ports: Ports
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    # Each starter returns the relay's child (None for direct) and the two ports to measure.

    def start_direct(self) -> tuple[Child | None, int, int]:
        return None, self.ports.http_backend, self.ports.iperf_backend

    def start_nginx_stream(self) -> tuple[Child | None, int, int]:
        http_port, iperf_port = self.ports.relays["nginx-stream"]
        prefix = self.tmp / "nginx-stream"
        config = nginx_stream_config(
            prefix,
            self.tools.stream_module,
            [(http_port, self.ports.http_backend), (iperf_port, self.ports.iperf_backend)],
        )
        relay = self.children.start_nginx("nginx stream", self.tools.nginx, prefix, config)
        return relay, http_port, iperf_port

    def start_portforward(self) -> tuple[Child | None, int, int]:
        http_port, iperf_port = self.ports.relays["portforward"]
        argv = [
            sys.executable,
            "-c",
            PORTFORWARD_SCRIPT,
            str(http_port),
            str(self.ports.http_backend),
            str(iperf_port),
            str(self.ports.iperf_backend),
        ]
        return self.children.start("twisted portforward", argv), http_port, iperf_port

    def start_twisted_lb(self) -> tuple[Child | None, int, int]:
        http_port, iperf_port = self.ports.relays["twisted-lb"]
        # iperf3's control connection is idle while the test runs; keep it under the timeout.
        idle = self.args.duration + self.args.warmup + 30
        client_timeout = float(idle) if idle > 60 else None
        config = twisted_lb_config(
            [
                ("http", http_port, self.ports.http_backend),
                ("iperf", iperf_port, self.ports.iperf_backend),
            ],
            client_timeout,
        )
        relay = self.children.start_twisted_lb("twisted-lb", self.tmp / "twisted-lb", config)
        return relay, http_port, iperf_port

    def starter(self, path: str) -> Callable[[], tuple[Child | None, int, int]]:
        return {
            "direct": self.start_direct,
            "nginx-stream": self.start_nginx_stream,
            "portforward": self.start_portforward,
            "twisted-lb": self.start_twisted_lb,
        }[path]

    def measure(self, path: str) -> dict[str, float]:
        args = self.args
        background = busy_before(path)
        relay, http_port, iperf_port = self.starter(path)()
        try:
            if relay is not None:
                wait_listening(relay, iperf_port)
                log(f"{path}: started {relay.name}, pid {relay.proc.pid}")
            wait_http_ok(relay, http_port)
            warm_up_wrk(self.tools.wrk, http_port, args, path)
            cpu_before = group_cpu_seconds(relay.proc.pid) if relay is not None else 0.0
            wrk = run_wrk(self.tools.wrk, http_port, args.duration, args.connections, args.threads)
            cpu = group_cpu_seconds(relay.proc.pid) - cpu_before if relay is not None else 0.0
            log(
                f"{path}: {wrk.requests_per_s:,.0f} requests/s, "
                f"p99 {wrk.latency_p99_ms:.2f} ms, {wrk.errors} errors"
            )
            if relay is not None and relay.exited():
                raise relay.fail("died during the wrk run")
            log(f"{path}: iperf3 -t {args.duration}")
            gbps = run_iperf3(
                self.tools,
                self.children,
                self.tmp,
                self.ports.iperf_backend,
                iperf_port,
                args.duration,
            )
            log(f"{path}: {gbps:.2f} Gbit/s")
            if relay is not None and relay.exited():
                raise relay.fail("died during the iperf3 run")
        finally:
            if relay is not None:
                self.children.stop(relay)
        return {
            "requests_per_s": wrk.requests_per_s,
            "latency_p99_ms": wrk.latency_p99_ms,
            "requests": float(wrk.requests),
            # The relay's CPU (all its processes) per request of the wrk run (see http_bench).
            "cpu_us_per_request": cpu * 1e6 / wrk.requests if wrk.requests else 0.0,
            "wrk_errors": float(wrk.errors),
            "gbit_per_s": gbps,
            "background_cpu_percent": background,
        }

    def run(self) -> None:
        backend = start_backend(self.children, self.tools.nginx, [self.ports.http_backend])
        run_rounds(self.args, self.measure, self.results, backend)


# --------------------------------------------------------------------------- report


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median of each figure over the rounds (wrk errors are summed)."""
    summary = {}
    for path, rounds in results.items():
        row = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        row["wrk_errors"] = sum(r["wrk_errors"] for r in rounds)
        summary[path] = row
    return summary


MEASURE_KEYS = {"requests/s": "requests_per_s", "Gbit/s": "gbit_per_s"}


def ratios(summary: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for measure, num, den, target in TARGETS:
        value = ratio_of(summary, num, den, MEASURE_KEYS[measure])
        rows.append(
            {
                "measure": measure,
                "numerator": num,
                "denominator": den,
                "ratio": value,
                "target": target,
                "pass": None if value is None else value >= target,
            }
        )
    return rows


def print_report(
    out: TextIO,
    args: argparse.Namespace,
    summary: dict[str, dict[str, float]],
    ratio_rows: list[dict[str, Any]],
    versions: dict[str, str],
    rounds_data: dict[str, list[dict[str, float]]],
) -> None:
    print(
        f"\nL4 benchmark: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(keep-alive, 3-byte body), iperf3 -t {args.duration} (1 stream){rounds_note(args)}",
        file=out,
    )
    print(
        f"nginx {versions['nginx'].split('/')[-1]}, twisted {versions['twisted']}, "
        f"twisted-lb {twisted_lb_version(versions)}, python {versions['python']}, "
        f"{versions['cpus']} CPUs",
        file=out,
    )
    print("", file=out)
    print_header(
        out,
        f"{'path':<14} {'requests/s':>12} {'p99 ms':>9} {'CPU µs/req':>10} {'wrk errors':>11} "
        f"{'Gbit/s':>9} {'busy%':>6}",
    )
    for path in PATHS:
        if path not in summary:
            continue
        row = summary[path]
        print(
            f"{path:<14} {row['requests_per_s']:>12,.0f} {row['latency_p99_ms']:>9.2f} "
            f"{row['cpu_us_per_request']:>10.1f} {row['wrk_errors']:>11.0f} "
            f"{row['gbit_per_s']:>9.2f} {row['background_cpu_percent']:>6.0f}",
            file=out,
        )
    print("", file=out)
    print_header(out, f"{'ratio':<40} {'value':>7} {'target':>9}  result")
    for r in ratio_rows:
        label = f"{r['numerator']} / {r['denominator']} {r['measure']}"
        value = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        result = pass_mark(r["pass"])
        print(
            f"{label:<40} {value:>7} {'>= ' + format(r['target'], '.1f') + 'x':>9}  {result}",
            file=out,
        )
    if args.rounds > 1:
        print(f"\nspread over {args.rounds} rounds (min - max):", file=out)
        for path in PATHS:
            if path in rounds_data:
                rps = [r["requests_per_s"] for r in rounds_data[path]]
                gbps = [r["gbit_per_s"] for r in rounds_data[path]]
                print(
                    f"  {path:<14} requests/s {min(rps):>9,.0f} - {max(rps):<9,.0f}"
                    f" Gbit/s {min(gbps):.2f} - {max(gbps):.2f}",
                    file=out,
                )
    errors = {p: int(s["wrk_errors"]) for p, s in summary.items() if s["wrk_errors"]}
    print_busy_warning(out, rounds_data)
    if errors:
        print(
            "\nwarning: wrk saw socket errors or non-2xx responses (those paths' figures "
            "are not comparable): " + ", ".join(f"{p} {n}" for p, n in errors.items()),
            file=out,
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, PATHS, "seconds per wrk/iperf3 run")
    args = parser.parse_args(argv)
    check_bench_args(parser, args, PATHS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path, children: Children) -> list[dict[str, Any]]:
        tools = ensure_tools(install=not args.no_install)
        versions = versions_of(tools)
        require_twisted_lb(args.paths, versions)
        ports = free_ports(2 + 2 * 3)
        relays = {
            path: (ports[2 + 2 * i], ports[3 + 2 * i])
            for i, path in enumerate(("nginx-stream", "portforward", "twisted-lb"))
        }
        bench = Bench(args, tools, tmp, children, Ports(ports[0], ports[1], relays))
        bench.run()
        summary = summarize(bench.results)
        ratio_rows = ratios(summary)
        print_report(sys.stdout, args, summary, ratio_rows, versions, bench.results)
        if args.json:
            write_json(
                args.json,
                json_settings(args),
                versions,
                results=summary,
                rounds=bench.results,
                ratios=ratio_rows,
            )
        return ratio_rows

    return run_bench(args, body)


if __name__ == "__main__":
    sys.exit(main())
