"""
The ``twisted-lb`` command: ``check`` a config file, print the config's JSON ``schema``, run the
``demo``, or ``ctl`` a running balancer through its admin API.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.machinery
import importlib.util
import json
import os
import pkgutil
import socket
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, TextIO, cast

from twisted.internet.interfaces import IReactorTCP
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_lb import __version__
from twisted_lb.config import (
    Config,
    ConfigError,
    FrontendTLSConfig,
    HealthCheckConfig,
    OutlierDetectionConfig,
    PoolConfig,
    PoolTLSConfig,
    RouteConfig,
    json_schema_text,
    load_config,
    parse_config,
)
from twisted_lb.interfaces import IBalancerReactor
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
            err.write(problem.located() + "\n")
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


def format_summary(config: Config) -> str:
    """
    Describe a valid config on one screen: the ``[global]`` settings that differ from their
    defaults; each frontend with its mode, its TLS, its routes (``http``), the pools it uses
    with their TLS to the backends, health check, outlier detection, slow start and panic
    mode when set, and their backends with their state when it is not ``ready``; then the
    pools nothing uses, under ``unused:``.

    A pool used several times is described in full the first time only.

    Example::

        lb.toml: OK
        frontend web (http) listen tcp:8443:interface=127.0.0.1 -> pool app
          tls: 2 certificates (first: /etc/lb/site.pem), min TLSv1.2
          route host=api.example.com path_prefix=/v1/ -> pool api
          pool app: round_robin, connect_timeout 5.0 s, retries 2
            tls to backends: verify server_name=app.internal, ca=/etc/lb/ca.pem
            health http GET /healthz every 2.0 s, timeout 1.0 s, rise 2, fall 3, expect 200-399
            outliers: eject after 5 failures for 30.0 s (max 300.0 s), at most 50%
            slow start 30.0 s, panic: all backends when none is UP
            app1  127.0.0.1:9001  weight 1
            big   127.0.0.1:9002  weight 3  drain
          pool api: round_robin, connect_timeout 5.0 s, retries 2
            api1  127.0.0.1:9101  weight 1

    Args:
        config: a config returned by :func:`load_config` or :func:`parse_config`.

    Returns:
        The lines, joined with newlines, without a final newline.
    """
    lines = [f"{config.path}: OK"]
    if config.global_config.log_format != "text":
        lines.append(f"global: log_format {config.global_config.log_format}")
    access_log = config.global_config.access_log
    if access_log is False:
        lines.append("global: access_log off")
    elif isinstance(access_log, str):
        lines.append(f"global: access_log {access_log}")
    shown: set[str] = set()
    for frontend in config.frontends.values():
        lines.append(
            f"frontend {frontend.name} ({frontend.mode}) listen {', '.join(frontend.listen)}"
            f" -> pool {frontend.pool}"
        )
        if frontend.tls is not None:
            lines.append(f"  {_frontend_tls_summary(frontend.tls)}")
        used = [frontend.pool]
        for route in frontend.routes:
            lines.append(f"  {_route_summary(route)}")
            if route.pool not in used:
                used.append(route.pool)
        for name in used:
            pool = config.pools.get(name)
            if pool is None:
                lines.append(f"  pool {name}: (not defined)")
            elif pool.name in shown:
                lines.append(f"  pool {pool.name}: (as above)")
            else:
                shown.add(pool.name)
                lines.extend(_pool_summary(pool))
    unused = [pool for name, pool in config.pools.items() if name not in shown]
    if unused:
        lines.append("unused:")
        for pool in unused:
            lines.extend(_pool_summary(pool))
    admin = config.admin
    if admin is not None:
        settings = [f"socket_mode {admin.socket_mode:04o}"]
        settings.append(f"token {admin.token_file}" if admin.token_file else "no token")
        if admin.state_file:
            settings.append(f"state_file {admin.state_file}")
        if admin.allowed_hosts:
            settings.append(f"allowed_hosts {' '.join(admin.allowed_hosts)}")
        lines.append(f"admin listen {', '.join(admin.listen)} ({', '.join(settings)})")
    return "\n".join(lines)


def _route_summary(route: RouteConfig) -> str:
    """
    ``route host=api.example.com path_prefix=/v1/ -> pool api``, with the parts it has.
    """
    parts = ["route"]
    if route.host is not None:
        parts.append(f"host={route.host}")
    if route.path_prefix is not None:
        parts.append(f"path_prefix={route.path_prefix}")
    return f"{' '.join(parts)} -> pool {route.pool}"


def _pool_summary(pool: PoolConfig) -> list[str]:
    """
    A pool's line and its backends' lines, in aligned columns, indented under a frontend.
    """
    options = ""
    if pool.strategy_options:
        pairs = ", ".join(f"{key}={_thaw(value)!r}" for key, value in pool.strategy_options.items())
        options = f" ({pairs})"
    lines = [
        f"  pool {pool.name}: {pool.strategy}{options}, "
        f"connect_timeout {pool.connect_timeout} s, retries {pool.retries}"
    ]
    if pool.tls is not None:
        lines.append(f"    {_pool_tls_summary(pool.tls)}")
    if pool.health_check is not None:
        lines.extend(_health_check_summary(pool.health_check))
    if pool.outlier_detection is not None:
        lines.append(f"    {_outlier_detection_summary(pool.outlier_detection)}")
    extras = []
    if pool.slow_start:
        extras.append(f"slow start {pool.slow_start} s")
    if pool.panic:
        extras.append("panic: all backends when none is UP")
    if extras:
        lines.append(f"    {', '.join(extras)}")
    name_width = max(len(backend.name) for backend in pool.backends)
    address_width = max(len(backend.address) for backend in pool.backends)
    for backend in pool.backends:
        line = (
            f"    {backend.name:<{name_width}}  {backend.address:<{address_width}}"
            f"  weight {backend.weight}"
        )
        if backend.backup:
            line += "  backup"
        if backend.state != "ready":
            line += f"  {backend.state}"
        lines.append(line)
    return lines


def _frontend_tls_summary(tls: FrontendTLSConfig) -> str:
    """
    ``tls: 2 certificates (first: /etc/lb/site.pem), min TLSv1.2``, and whether client
    certificates are asked for.
    """
    count = len(tls.certificates)
    line = (
        f"tls: {count} certificate{'s' if count > 1 else ''} "
        f"(first: {tls.certificates[0].cert}), min {tls.min_version}"
    )
    if tls.verify_client != "none":
        line += f", client certs {tls.verify_client}"
    return line


def _pool_tls_summary(tls: PoolTLSConfig) -> str:
    """
    ``tls to backends: verify server_name=app.internal, ca=/etc/lb/ca.pem`` (each backend's
    host and the platform's trust store by default), or ``verify OFF``; and the client
    certificate, for mutual TLS.
    """
    if tls.verify:
        line = (
            f"tls to backends: verify server_name={tls.server_name or '(backend host)'}, "
            f"ca={tls.ca or '(system trust store)'}"
        )
    else:
        line = "tls to backends: verify OFF"
        if tls.server_name is not None:
            line += f", server_name={tls.server_name}"
    if tls.client_cert is not None:
        line += f", client cert {tls.client_cert}"
    return line


def _health_check_summary(check: HealthCheckConfig) -> list[str]:
    """
    ``health http GET /healthz every 2.0 s, timeout 1.0 s, rise 2, fall 3, expect 200-399``,
    indented under its pool, and a second line with the ``Host``, the body pattern, the
    down interval and the jitter when they are set or not the default.
    """
    what = f"http GET {check.path}" if check.kind == "http" else "tcp connect"
    line = (
        f"    health {what} every {check.interval} s, timeout {check.timeout} s, "
        f"rise {check.rise}, fall {check.fall}"
    )
    more = []
    if check.kind == "http":
        low, high = check.expect_status
        line += f", expect {low}" if low == high else f", expect {low}-{high}"
        if check.host is not None:
            more.append(f"Host {check.host}")
        if check.expect_body is not None:
            more.append(f"body ~ {check.expect_body!r}")
    if check.down_interval is not None:
        more.append(f"every {check.down_interval} s when DOWN")
    if check.jitter != 0.1:
        more.append(f"jitter {check.jitter}")
    if not more:
        return [line]
    return [line, f"      {', '.join(more)}"]


def _outlier_detection_summary(outliers: OutlierDetectionConfig) -> str:
    """
    ``outliers: eject after 5 failures for 30.0 s (max 300.0 s), at most 50%``, and whether
    5xx responses count.
    """
    line = (
        f"outliers: eject after {outliers.consecutive_failures} failures "
        f"for {outliers.base_ejection_time} s (max {outliers.max_ejection_time} s), "
        f"at most {outliers.max_ejection_percent}%"
    )
    if outliers.count_5xx:
        line += ", 5xx counted"
    return line


def _thaw(value: object) -> object:
    """
    Undo the config's freezing for display: read-only tables become dicts and tuples lists.
    """
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


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


def _start_demo_backends(reactor: IReactorTCP, count: int, base_port: int) -> list[int]:
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
    from twisted.internet import reactor as global_reactor

    # Twisted types it as the interfaces most reactors provide; ours provides these too.
    reactor = cast(IBalancerReactor, global_reactor)

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


#: Where ``twisted-lb ctl`` looks for the admin API without ``--socket`` or ``--url``.
DEFAULT_ADMIN_SOCKET = "/run/twisted-lb/admin.sock"

#: Exit statuses of ``twisted-lb ctl`` (docs/operations.rst).
CTL_OK = 0
CTL_REFUSED = 1
CTL_USAGE = 2
CTL_UNREACHABLE = 3


class CtlError(Exception):
    """``twisted-lb ctl`` could not talk to the admin API; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = CTL_UNREACHABLE) -> None:
        super().__init__(message)
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 client connection over a UNIX socket (``curl --unix-socket``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """
    A blocking client of the admin API (see :mod:`twisted_lb.admin`), for ``twisted-lb ctl``.

    Args:
        socket_path: the admin API's UNIX socket, or ``None`` to use ``url``.
        url: ``http://host:port`` of a TCP admin listener.
        token: the bearer token for mutating calls, or ``None``.
        timeout: seconds to wait for the connection and for each response.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.socket_path = socket_path
        self.url = url
        self.token = token
        self.timeout = timeout

    def where(self) -> str:
        """The admin API this client talks to: the URL, or ``unix:`` and the socket's path."""
        if self.url is not None:
            return self.url
        return f"unix:{self.socket_path or DEFAULT_ADMIN_SOCKET}"

    def _connection(self) -> http.client.HTTPConnection:
        if self.url is None:
            return _UnixHTTPConnection(self.socket_path or DEFAULT_ADMIN_SOCKET, self.timeout)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.netloc, timeout=self.timeout)
        if parts.scheme != "http" or not parts.netloc:
            raise CtlError(f"--url {self.url!r}: write it as http://127.0.0.1:9901", CTL_USAGE)
        return http.client.HTTPConnection(parts.netloc, timeout=self.timeout)

    def call(
        self, method: str, path: str, body: Mapping[str, object] | None = None
    ) -> tuple[int, Any]:
        """
        One API call; ``path`` is under ``/api/v1/``.

        Returns:
            The status and the decoded JSON body.

        Raises:
            CtlError: the API could not be reached, or its answer is not JSON.
        """
        prefix = ""
        if self.url is not None:
            prefix = urllib.parse.urlsplit(self.url).path.rstrip("/")
        headers = {"Accept": "application/json"}
        if method != "GET":
            # Every mutating call says JSON, a body or not: the API refuses others (415).
            headers["Content-Type"] = "application/json"
        data = None if body is None else json.dumps(body).encode()
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = self._connection()
        target = (
            prefix
            + "/api/v1/"
            + "/".join(urllib.parse.quote(part, safe="") for part in path.split("/"))
        )
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as e:
            hint = ""
            if self.url is None and self.socket_path is None:
                hint = (
                    " (the default socket; pass --socket with the unix: path of the config's "
                    "[admin] listen, or --url http://127.0.0.1:PORT for its tcp: one)"
                )
            raise CtlError(f"cannot reach the admin API at {self.where()}: {e}{hint}") from None
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise CtlError(
                f"{self.where()} answered {response.status} with something that is not JSON; "
                "is it twisted-lb's admin API?"
            ) from None


def _table(rows: Sequence[Sequence[object]]) -> str:
    """Rows as left-aligned columns, two spaces apart; the first row is the heading."""
    texts = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in texts) for i in range(len(texts[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in texts
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}h{minutes:02d}m{seconds:02d}s" if hours or days else f"{minutes}m{seconds:02d}s"
    return f"{days}d{text}" if days else text


def _format_reload(result: Mapping[str, Any]) -> str:
    lines = []
    if result.get("ok"):
        lines.append(f"reload applied: generation {result.get('generation')}")
    else:
        lines.append(
            f"reload refused: the config is invalid; generation {result.get('generation')} stays"
        )
    for key in ("added", "changed", "removed", "overridden"):
        items = result.get(key) or []
        if items:
            lines.append(f"  {key}: {', '.join(items)}")
    lines.extend(f"  {problem}" for problem in result.get("problems") or [])
    return "\n".join(lines)


def _format_status(status: Mapping[str, Any]) -> str:
    last = status.get("last_reload")
    if last is None:
        reload_line = "none since start"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("at", 0)))
        count = len(last.get("problems") or [])
        outcome = "ok" if last.get("ok") else f"FAILED ({count} problem{'s' * (count != 1)})"
        reload_line = f"{outcome} at {when}"
    return _table(
        [
            ["twisted-lb", status.get("version")],
            ["pid", status.get("pid")],
            ["uptime", _duration(float(status.get("uptime") or 0))],
            ["config", status.get("config")],
            ["generation", status.get("generation")],
            ["last reload", reload_line],
        ]
    )


def _format_pools(pools: Sequence[Mapping[str, Any]]) -> str:
    rows: list[list[object]] = [
        [
            "POOL",
            "BACKEND",
            "ADDRESS",
            "STATE",
            "ADMIN",
            "HEALTH",
            "WEIGHT",
            "EFFECTIVE",
            "CONNS",
            "IN-FLIGHT",
            "REQUESTS",
            "EWMA-MS",
        ]
    ]
    for pool in pools:
        for b in pool.get("backends", []):
            state = b["state"] + (" ejected" if b.get("ejected") else "")
            if b.get("ejection_remaining") is not None:
                state += f" ({b['ejection_remaining']:.0f}s)"
            rows.append(
                [
                    pool["name"],
                    b["name"],
                    b["address"] + (" (backup)" if b.get("backup") else ""),
                    state,
                    b["admin_state"],
                    b["health"],
                    b["weight"],
                    f"{b['effective_weight']:g}",
                    b["active_connections"],
                    b["in_flight_requests"],
                    b["requests_total"],
                    f"{b['response_time_ewma'] * 1000:.1f}",
                ]
            )
    return _table(rows)


def _format_backend(pool: str, backend: Mapping[str, Any], verb: str) -> str:
    return (
        f"pool {pool}: backend {backend['name']} ({backend['address']}) {verb}: "
        f"state {backend['state']}, admin {backend['admin_state']}, weight {backend['weight']}"
    )


def ctl(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    Run one ``twisted-lb ctl`` command against the admin API.

    Returns:
        :data:`CTL_OK` (0) when the call succeeded; :data:`CTL_REFUSED` (1) when the API
        refused it (an unknown pool, an invalid state, a bad token) or the reload found the
        file invalid, after printing why; :data:`CTL_USAGE` (2) for a bad command line;
        :data:`CTL_UNREACHABLE` (3) when the API could not be reached.
    """
    token = None
    if args.token_file is not None:
        try:
            with open(args.token_file, "rb") as f:
                token = f.read(4096).partition(b"\n")[0].strip().decode("ascii")
        except (OSError, UnicodeDecodeError) as e:
            err.write(f"twisted-lb ctl: cannot read --token-file {args.token_file}: {e}\n")
            return CTL_USAGE
    client = AdminClient(args.socket, args.url, token, args.timeout)
    command = args.ctl_command
    method, path, body = "GET", command, None
    if command in ("drain", "ready", "maint"):
        method, path = "PATCH", f"pools/{args.pool}/backends/{args.backend}"
        body = {"state": command}
    elif command == "weight":
        method, path = "PATCH", f"pools/{args.pool}/backends/{args.backend}"
        body = {"weight": args.weight}
    elif command == "add":
        method, path = "POST", f"pools/{args.pool}/backends"
        body = {"address": args.address, "weight": args.weight, "backup": args.backup}
        if args.name is not None:
            body["name"] = args.name
    elif command == "remove":
        method, path = "DELETE", f"pools/{args.pool}/backends/{args.backend}"
    elif command == "reload":
        method = "POST"
    try:
        status, answer = client.call(method, path, body)
    except CtlError as e:
        err.write(f"twisted-lb ctl: {e}\n")
        return e.status
    ok = 200 <= status < 300
    if args.json:
        out.write(json.dumps(answer, indent=2) + "\n")
    elif command == "reload" and isinstance(answer, dict) and "ok" in answer:
        (out if ok else err).write(_format_reload(answer) + "\n")
    elif not ok:
        message = answer.get("error") if isinstance(answer, dict) else answer
        err.write(f"twisted-lb ctl: {status}: {message}\n")
    elif command == "status":
        out.write(_format_status(answer) + "\n")
    elif command == "pools":
        out.write(_format_pools(answer["pools"]) + "\n")
    elif command == "remove":
        out.write(f"pool {args.pool}: backend {args.backend} is draining, then removed\n")
    else:
        verb = "added" if command == "add" else "changed"
        out.write(_format_backend(args.pool, answer, verb) + "\n")
    if ok and isinstance(answer, dict) and answer.get("warning"):
        err.write(f"twisted-lb ctl: warning: {answer['warning']}\n")
    return CTL_OK if ok else CTL_REFUSED


def _ctl_parser(commands: Any) -> None:
    """The ``ctl`` subcommand and its commands."""
    parser = commands.add_parser(
        "ctl",
        help="talk to a running balancer's admin API",
        description="Show and change a running balancer through its admin API ([admin] in the "
        "config). Exit status: 0 done, 1 refused by the balancer (or an invalid reload), "
        "2 usage, 3 cannot reach the admin API.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the admin API's UNIX socket (default {DEFAULT_ADMIN_SOCKET})",
    )
    where.add_argument("--url", help="a TCP admin listener, as http://127.0.0.1:9901")
    parser.add_argument(
        "--token-file", metavar="FILE", help="file whose first line is the admin bearer token"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for an answer (default 30)"
    )
    sub = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="version, uptime, config, generation, last reload")
    sub.add_parser("pools", help="every pool's backends, their state and counters")
    for name, about in (
        ("drain", "take no new requests; those in flight finish (HAProxy state drain)"),
        ("ready", "back in rotation (HAProxy state ready)"),
        ("maint", "out of rotation (HAProxy state maint)"),
        ("remove", "drain a backend, then remove it"),
    ):
        command = sub.add_parser(name, help=about)
        command.add_argument("pool")
        command.add_argument("backend")
    weight = sub.add_parser("weight", help="set a backend's weight (HAProxy set weight)")
    weight.add_argument("pool")
    weight.add_argument("backend")
    weight.add_argument("weight", type=int)
    add = sub.add_parser("add", help="add a backend to a pool")
    add.add_argument("pool")
    add.add_argument("address", help="host:port, [v6]:port or unix:/path")
    add.add_argument("--name", help="the backend's name (default: the address)")
    add.add_argument("--weight", type=int, default=1, help="its weight (default 1)")
    add.add_argument("--backup", action="store_true", help="a backup backend")
    sub.add_parser("reload", help="read the config file again and apply it")


def compiled_modules() -> list[str]:
    """
    The modules of ``twisted_lb`` and ``twisted_lb.http`` that this installation loads as
    extension modules (compiled by mypyc: ``TWISTED_LB_MYPYC=1`` at install, see
    ``hatch_build.py``), by name; ``[]`` for a pure-Python installation. Nothing is imported.
    """
    import twisted_lb.http

    found = []
    for package in (twisted_lb, twisted_lb.http):
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            spec = importlib.util.find_spec(module.name)
            origin = spec.origin if spec is not None else None
            if origin and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
                found.append(module.name)
    return sorted(found)


def _version() -> str:
    compiled = compiled_modules()
    if not compiled:
        return f"twisted-lb {__version__} (pure Python)"
    names = ", ".join(name.removeprefix("twisted_lb.") for name in compiled)
    return f"twisted-lb {__version__} (compiled with mypyc: {names})"


class _VersionAction(argparse.Action):
    """``--version``: like argparse's, unwrapped, and looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(_version())
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twisted-lb`` console script."""
    parser = argparse.ArgumentParser(prog="twisted-lb", description="The twisted-lb load balancer.")
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the version, and whether its hot modules are compiled",
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
    _ctl_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return ctl(args)
    if args.command == "check":
        return check(args.config)
    if args.command == "schema":
        return schema()
    if args.backends < 1:
        parser.error("--backends must be at least 1")
    return demo(args.port, args.backends, args.strategy, args.backend_port, args.mode)


if __name__ == "__main__":
    raise SystemExit(main())
