"""
The ``twisted-lb`` command: ``check`` a config file, print the config's JSON ``schema``, or run
the ``demo``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_lb import __version__
from twisted_lb.config import (
    ConfigError,
    format_summary,
    json_schema_text,
    load_config,
    parse_config,
)
from twisted_lb.service import ListenError, LoadBalancerService


def check(path: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    Validate a config file with the config schema alone: no reactor, nothing listens.

    Each problem is printed as ``lb.toml: KEY: MESSAGE``, followed by `` (line N)`` when the
    TOML line of the key is known.

    Returns:
        0 after printing a summary to ``out``, or 1 after printing every problem to ``err``.
    """
    try:
        config = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            line = "" if problem.line is None else f" (line {problem.line})"
            err.write(f"{problem}{line}\n")
        return 1
    out.write(format_summary(config) + "\n")
    return 0


def schema(out: TextIO = sys.stdout) -> int:
    """
    Print the JSON Schema of the config file, the one shipped as
    ``twisted_lb/lb.schema.json``, for editors (taplo, Even Better TOML).

    Returns:
        0.
    """
    out.write(json_schema_text())
    return 0


_DEMO_BACKEND_PAGE = "Hello from backend {number} (pid {pid})\n"
_DEMO_API_PAGE = "Hello from the api pool: {path} (pid {pid})\n"


def _demo_config(
    mode: str, port: int, backend_ports: Sequence[int], api_port: int, strategy: str
) -> str:
    backends = ",\n".join(
        f'  {{ address = "127.0.0.1:{p}", name = "backend{i}" }}'
        for i, p in enumerate(backend_ports, 1)
    )
    routes = (
        '[[frontends.demo.routes]]\npath_prefix = "/api/"\npool = "api"\n\n'
        if mode == "http"
        else ""
    )
    return (
        "[frontends.demo]\n"
        f'mode = "{mode}"\n'
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        'pool = "demo"\n'
        "\n"
        f"{routes}"
        "[pools.demo]\n"
        f'strategy = "{strategy}"\n'
        "connect_timeout = 2.0\n"
        f"backends = [\n{backends},\n]\n"
        "\n"
        "[pools.api]\n"
        f'backends = [{{ address = "127.0.0.1:{api_port}", name = "api1" }}]\n'
    )


def _start_demo_backends(reactor: Any, count: int, base_port: int) -> list[int]:
    """
    Listen with one small twisted.web site per demo backend, and one more for the api pool;
    return their ports, the api backend's last.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Page(Resource):
        isLeaf = True

        def __init__(self, number: int) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.number = number

        def render_GET(self, request: Request) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            if self.number > count:
                path = (request.uri or b"").decode("latin-1")
                return _DEMO_API_PAGE.format(path=path, pid=os.getpid()).encode()
            return _DEMO_BACKEND_PAGE.format(number=self.number, pid=os.getpid()).encode()

    class _QuietSite(Site):
        """A demo backend: no log line per request (the balancer logs each one)."""

        noisy = False

        def log(self, request: Any) -> None:
            pass

    ports = []
    for number in range(1, count + 2):  # the last one serves the api pool
        wanted = base_port + number - 1 if base_port else 0
        site = _QuietSite(Page(number))  # type: ignore[no-untyped-call]
        outcome: list[Any] = []
        endpoint = TCP4ServerEndpoint(reactor, wanted, interface="127.0.0.1")
        endpoint.listen(site).addBoth(outcome.append)
        port = outcome[0]
        if not hasattr(port, "getHost"):
            raise ListenError(
                f"demo backend {number} cannot listen on 127.0.0.1:{wanted}: "
                f"{port.getErrorMessage()} (use --backend-port 0 to let the system choose)"
            )
        ports.append(port.getHost().port)
    return ports


def demo(port: int, backends: int, strategy: str, backend_port: int, mode: str = "http") -> int:
    """
    Run demo backends and a balancer in front of them until Ctrl-C.

    The ``demo`` pool has ``backends`` backends; one more backend serves the ``api`` pool, to
    which an http-mode frontend routes ``/api/``.

    Args:
        port: the balancer's port on 127.0.0.1 (0: the system chooses).
        backends: how many demo backends the ``demo`` pool has.
        strategy: the ``demo`` pool's strategy.
        backend_port: the first backend's port; the others follow, the api backend last
            (0: the system chooses).
        mode: ``"http"`` (L7, with the ``/api/`` route) or ``"tcp"`` (L4).

    Returns:
        The process exit status.
    """
    from twisted_lb.reactor import install_default

    install_default()  # the reactor ``twistd lb`` runs on, unless one is installed already
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    try:
        *backend_ports, api_port = _start_demo_backends(reactor, backends, backend_port)
        config = parse_config(_demo_config(mode, port, backend_ports, api_port, strategy), "<demo>")
        service = LoadBalancerService.from_config(config, reactor)
        service.startService()
    except (ConfigError, ListenError) as e:
        sys.stderr.write(f"twisted-lb demo: {e}\n")
        return 1
    [address] = service.addresses("demo")
    url = f"http://127.0.0.1:{address.port}/"  # type: ignore[attr-defined]
    backend_list = ", ".join(f"127.0.0.1:{p}" for p in backend_ports)
    routed = (
        f"\nRequests under /api/ are routed to the api pool (127.0.0.1:{api_port}):\n"
        f"    curl {url}api/hello\n"
        if mode == "http"
        else ""
    )
    print(
        f"twisted-lb demo: {backends} backends ({backend_list}) behind an {mode}-mode frontend\n"
        f"balancer: {url}  strategy: {strategy}\n"
        "\n"
        "Try it a few times and watch the backends take turns:\n"
        f"    curl {url}\n"
        f"{routed}"
        "\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twisted-lb`` console script."""
    parser = argparse.ArgumentParser(prog="twisted-lb", description="The twisted-lb load balancer.")
    parser.add_argument(
        "--version", action="version", version=f"twisted-lb {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="validate a config file and summarise it")
    check_parser.add_argument("config", help="path of the TOML config file")
    commands.add_parser("schema", help="print the JSON Schema of the config file")
    demo_parser = commands.add_parser(
        "demo", help="run demo backends with a balancer in front of them"
    )
    demo_parser.add_argument("--port", type=int, default=8080, help="balancer port (default 8080)")
    demo_parser.add_argument(
        "--backends", type=int, default=3, help="number of demo backends (default 3)"
    )
    demo_parser.add_argument(
        "--strategy", default="round_robin", help="balancing strategy (default round_robin)"
    )
    demo_parser.add_argument(
        "--mode",
        choices=["http", "tcp"],
        default="http",
        help="http (L7, with an /api/ route to a second pool) or tcp (L4); default http",
    )
    demo_parser.add_argument(
        "--backend-port",
        type=int,
        default=9001,
        help="first backend port, the others follow (default 9001; 0 lets the system choose)",
    )
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.config)
    if args.command == "schema":
        return schema()
    if args.backends < 1:
        parser.error("--backends must be at least 1")
    return demo(args.port, args.backends, args.strategy, args.backend_port, args.mode)


if __name__ == "__main__":
    raise SystemExit(main())
