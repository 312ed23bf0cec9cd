"""
The config file: TOML in, frozen :mod:`attrs` data out, with every problem reported at once.

:func:`load_config` reads a file and :func:`parse_config` reads text; both hand the parsed tables
to :func:`config_from_dict`, which checks the whole document and either returns a :class:`Config`
or raises one :class:`ConfigError` that lists every :class:`Problem` it found. Each problem names
the file, the key path (``pools.app.backends[1].weight``) and what to write instead, so that
``twisted-lb check`` can print them as they are.

The model is plain data. This module imports nothing from the data paths; it asks
:mod:`twisted_lb.strategies` only whether a strategy name is installed, and
:mod:`twisted_lb.tls` whether the certificate, key and CA files of ``tls`` tables are usable.
Turning a :class:`Config` into listeners, pools and backends is :mod:`twisted_lb.service`'s job.

The keys and their meaning are the "Config file (TOML)" contract in ``docs/design.rst``. Keys
that the design names but this version does not implement yet (``metrics``) are errors that
say so, rather than being silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TypedDict

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_lb._address import Address, parse_address, proxy_listener

__all__ = [
    "BackendConfig",
    "CertificateConfig",
    "Config",
    "ConfigError",
    "FrontendConfig",
    "FrontendTLSConfig",
    "GlobalConfig",
    "HealthCheckConfig",
    "OutlierDetectionConfig",
    "PoolConfig",
    "PoolTLSConfig",
    "Problem",
    "RouteConfig",
    "config_from_dict",
    "format_summary",
    "load_config",
    "parse_config",
]


# -- the model ---------------------------------------------------------------------------------


def _freeze(value: object) -> object:
    """
    Make a TOML value read-only, all the way down.

    Tables become :class:`types.MappingProxyType` over a copy, arrays become tuples, and scalars
    are returned as they are.
    """
    if isinstance(value, Mapping):
        return MappingProxyType({str(key): _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _freeze_options(options: Mapping[str, object]) -> Mapping[str, object]:
    """
    Freeze ``strategy_options`` (see :func:`_freeze`).
    """
    return MappingProxyType({str(key): _freeze(item) for key, item in options.items()})


def _empty_options() -> Mapping[str, object]:
    return MappingProxyType({})


def _frontends(frontends: Mapping[str, FrontendConfig]) -> Mapping[str, FrontendConfig]:
    return MappingProxyType(dict(frontends))


def _pools(pools: Mapping[str, PoolConfig]) -> Mapping[str, PoolConfig]:
    return MappingProxyType(dict(pools))


def _backends(backends: Iterable[BackendConfig]) -> tuple[BackendConfig, ...]:
    return tuple(backends)


def _strings(strings: Iterable[str]) -> tuple[str, ...]:
    return tuple(strings)


def _routes(routes: Iterable[RouteConfig]) -> tuple[RouteConfig, ...]:
    return tuple(routes)


def _certificates(certificates: Iterable[CertificateConfig]) -> tuple[CertificateConfig, ...]:
    return tuple(certificates)


@attrs.frozen
class BackendConfig:
    """
    One backend of a pool, as written in ``[pools.NAME] backends = [...]``.

    Attributes:
        address: ``host:port``, ``[v6]:port`` or ``unix:/path``, as the file wrote it; it has
            been checked with :func:`twisted_lb._address.parse_address`.
        name: the ``name`` key, or by default the pool's name followed by the backend's
            position counting from 1 (``app1``, ``app2``, ...). Unique within the pool.
        weight: relative share of new connections, an integer >= 1.
        backup: used only when no primary (non-backup) backend of the pool is UP.
        state: the administrative state, as HAProxy's ``set server state``: ``"ready"``
            (in service), ``"drain"`` (no new connections or requests; established ones
            finish) or ``"maint"`` (out of service entirely).
    """

    address: str
    name: str
    weight: int = 1
    backup: bool = False
    state: str = "ready"


def _status_range(statuses: Iterable[int]) -> tuple[int, int]:
    low, high = statuses
    return (low, high)


@attrs.frozen
class HealthCheckConfig:
    """
    ``[pools.NAME.health_check]``: active checks of each backend of the pool (HAProxy
    ``check``, Envoy health checking). rise/fall semantics as in HAProxy's ``check``.

    An empty table means tcp checks with the defaults below.

    Attributes:
        kind: ``"tcp"``, a check passes when a connection is made; or ``"http"``, it passes
            when a ``GET`` of ``path`` is answered with a status in ``expect_status`` (and a
            body that ``expect_body`` matches, when set).
        interval: seconds between checks of an UP backend (HAProxy ``inter``).
        timeout: seconds a check may take; a check that has not passed by then fails.
        rise: consecutive passes that turn a DOWN backend UP, >= 1.
        fall: consecutive failures that turn an UP backend DOWN, >= 1.
        down_interval: seconds between checks of a DOWN backend (HAProxy ``downinter``);
            ``None`` means ``interval``.
        jitter: a fraction of the interval, 0 <= jitter < 1: each delay is drawn uniformly
            from ``[interval * (1 - jitter), interval * (1 + jitter)]`` so that checks spread
            out (HAProxy ``spread-checks``).
        path: ``http`` only: the request target, starting with ``/``, in printable ASCII;
            it may have a query.
        host: ``http`` only: the ``Host`` header, a host name or IP address with an optional
            ``:port``, as written; ``None`` sends the backend's address.
        expect_status: ``http`` only: the lowest and highest passing status code, both
            from 100 to 599, low <= high. The file writes ``"200-399"``, ``"200"`` or
            ``200``.
        expect_body: ``http`` only: a Python regular expression (:mod:`re`) searched for in
            the first 64 KiB of the response body; ``None`` accepts any body. It compiles.
    """

    kind: str = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    down_interval: float | None = None
    jitter: float = 0.1
    path: str = "/"
    host: str | None = None
    expect_status: tuple[int, int] = attrs.field(default=(200, 399), converter=_status_range)
    expect_body: str | None = None


@attrs.frozen
class OutlierDetectionConfig:
    """
    ``[pools.NAME.outlier_detection]``: passive ejection of failing backends, from the
    outcome of real traffic (Envoy outlier detection).

    Attributes:
        consecutive_failures: failed connects (and, with ``count_5xx``, 5xx responses) in a
            row that eject a backend, >= 1.
        base_ejection_time: seconds; an ejection lasts ``base_ejection_time`` times the
            number of times the backend has been ejected.
        max_ejection_time: seconds; the cap on one ejection, >= ``base_ejection_time``.
        max_ejection_percent: the largest share of the pool's backends, 0 to 100, that may
            be ejected at once; never exceeded.
        count_5xx: HTTP only: also count 5xx responses as failures.
        uneject_on_passing_check: a passing active health check ends an ejection early
            (Envoy's ``successful_active_health_check_uneject_host``).
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 50
    count_5xx: bool = False
    uneject_on_passing_check: bool = True


@attrs.frozen
class PoolTLSConfig:
    """
    ``[pools.NAME.tls]``: TLS from the balancer to the pool's backends, verified by default
    (HAProxy ``server ... ssl verify required ca-file ... sni ...``; nginx ``proxy_ssl_verify
    on``).

    Paths are absolute: a relative path in the file is resolved against the directory of the
    config file (see :class:`FrontendTLSConfig`).

    Attributes:
        server_name: the name each backend's certificate is verified against, also sent as
            SNI: a DNS name or an IP address (IPv6 without brackets). ``None`` means each
            backend's host, as its ``address`` writes it.
        ca: a PEM bundle of the CAs that backends' certificates must chain to; ``None``
            means the platform's trust store.
        client_cert: a PEM certificate (leaf first, then its chain) that the balancer
            presents to the backends, for mutual TLS; set together with ``client_key``.
        client_key: the PEM private key of ``client_cert``.
        verify: whether backends' certificates are verified. ``False`` must be written in
            the file, and the service logs a warning for it.
    """

    server_name: str | None = None
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True


@attrs.frozen
class PoolConfig:
    """
    A ``[pools.NAME]`` table: a set of backends and the strategy that picks among them.

    Instances compare by value. They are not hashable, because ``strategy_options`` is a
    mapping.

    Attributes:
        name: the table's name, which frontends refer to in their ``pool`` key.
        backends: at least one backend, in file order; names and addresses are unique.
        strategy: the name of an installed strategy plugin.
        strategy_options: the ``strategy_options`` table, handed to the strategy factory as it
            is. It is read-only: a :class:`types.MappingProxyType` in which nested tables are
            also ``MappingProxyType`` and arrays are tuples. A plain ``dict`` passed to the
            constructor is copied and frozen the same way.
        connect_timeout: seconds to wait for a backend connection before trying the next.
        retries: how many further backends to try after a failed connect, >= 0.
        response_timeout: HTTP only: seconds from the request being sent to the first byte of
            the response; past it the client is answered 504.
        upstream_idle_timeout: HTTP only: seconds an idle keep-alive connection to a backend
            is kept for reuse. The default, 4 s, is below the 5 s after which Node and other
            common backends close idle connections.
        max_idle_per_backend: HTTP only: idle upstream connections kept per backend, >= 0;
            0 disables connection reuse.
        health_check: the active checks, or ``None`` for none (backends start UP and stay
            UP as far as checks go).
        outlier_detection: passive ejection, or ``None`` for none.
        panic: when no backend is available (UP and not ejected, backups included), balance
            over every backend whose state is not ``drain`` or ``maint`` instead of refusing
            the client (503 in http): Envoy's panic mode.
        slow_start: seconds, >= 0; a backend that comes back into rotation ramps its
            effective weight linearly from 10% to 100% over this time (HAProxy
            ``slowstart``). 0 is off.
        tls: TLS to the backends, or ``None`` for plain TCP.

    The HTTP-only fields apply when the pool serves an ``http`` frontend (directly or through a
    route), and a ``tcp`` frontend ignores them, so one pool can serve both.
    """

    name: str
    backends: tuple[BackendConfig, ...] = attrs.field(converter=_backends)
    strategy: str = "round_robin"
    strategy_options: Mapping[str, object] = attrs.field(
        factory=_empty_options, converter=_freeze_options
    )
    connect_timeout: float = 5.0
    retries: int = 2
    response_timeout: float = 60.0
    upstream_idle_timeout: float = 4.0
    max_idle_per_backend: int = 128
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    panic: bool = False
    slow_start: float = 0.0
    tls: PoolTLSConfig | None = None


@attrs.frozen
class RouteConfig:
    """
    One ``[[frontends.NAME.routes]]`` table of an ``http`` frontend: which requests go to which
    pool. A frontend's routes are tried in file order, the first that matches wins, and a
    request that no route matches goes to the frontend's ``pool``.

    A route matches when every part it has matches; at least one of ``host`` and
    ``path_prefix`` is set.

    Attributes:
        pool: the name of a pool defined in the same file.
        host: an exact host name (``"api.example.com"``), or ``"*."`` and a suffix
            (``"*.example.com"``: any name that ends in ``.example.com``, not ``example.com``
            itself), in lower case; compared with the request's host without its port, case
            insensitively. IPv6 addresses are in brackets (``"[::1]"``). ``None`` matches any
            host.
        path_prefix: starts with ``/``; matches a request whose path starts with it, compared
            as plain text (``"/v1"`` also matches ``/v1x``; ``"/v1/"`` does not). ``None``
            matches any path.
    """

    pool: str
    host: str | None = None
    path_prefix: str | None = None


@attrs.frozen
class CertificateConfig:
    """
    One entry of ``certificates = [{ cert = "...", key = "..." }, ...]`` in
    ``[frontends.NAME.tls]``.

    Attributes:
        cert: a PEM file with the certificate, leaf first, then its chain (nginx
            ``ssl_certificate``); an absolute path.
        key: a PEM file with the certificate's private key (nginx ``ssl_certificate_key``);
            an absolute path.
    """

    cert: str
    key: str


@attrs.frozen
class FrontendTLSConfig:
    """
    ``[frontends.NAME.tls]``: TLS termination on every listener of the frontend, in ``tcp`` and
    ``http`` modes alike.

    Paths are absolute: a relative path in the file is resolved against the directory of the
    config file, as nginx resolves against its prefix (the current directory when the config
    did not come from a file). The files were usable when the config was checked:
    :func:`twisted_lb.tls.certificate_problem` and :func:`twisted_lb.tls.ca_problem` found
    nothing wrong with them.

    Attributes:
        certificates: at least one certificate and key. SNI picks the certificate whose
            subjectAltName matches the name the client asks for; the first is the default,
            for clients that send no name or one that none matches (HAProxy ``crt``).
        min_version: the oldest protocol accepted, ``"TLSv1.2"`` or ``"TLSv1.3"`` (nginx
            ``ssl_protocols``, HAProxy ``ssl-min-ver``).
        ciphers: an OpenSSL cipher string for TLS 1.2 (nginx ``ssl_ciphers``); ``None``
            means Mozilla's "intermediate" list. TLS 1.3 suites are not affected.
        client_ca: a PEM bundle of the CAs that client certificates must chain to (nginx
            ``ssl_client_certificate``, HAProxy ``ca-file``), or ``None``.
        verify_client: ``"none"`` (no client certificate is asked for), ``"optional"`` (one
            is asked for and verified when sent) or ``"required"`` (a client without a valid
            one is refused): nginx ``ssl_verify_client``, HAProxy ``verify``. The last two
            need ``client_ca``.
        curves: the groups (curves) of the key exchange, TLS 1.2 and 1.3, most preferred
            first, in OpenSSL's names (nginx ``ssl_ecdh_curve``, HAProxy ``curves``); each
            known to OpenSSL (:func:`twisted_lb.tls.group_problem`). The default is Mozilla's
            "intermediate" profile, :data:`twisted_lb.tls.INTERMEDIATE_GROUPS`.
    """

    certificates: tuple[CertificateConfig, ...] = attrs.field(converter=_certificates)
    min_version: str = "TLSv1.2"
    ciphers: str | None = None
    client_ca: str | None = None
    verify_client: str = "none"
    curves: tuple[str, ...] = attrs.field(
        default=("X25519", "prime256v1", "secp384r1"), converter=_strings
    )


@attrs.frozen
class FrontendConfig:
    """
    A ``[frontends.NAME]`` table: where to listen and which pool serves the clients.

    The fields from ``header_timeout`` to ``tunnel_timeout`` are for ``mode = "http"`` only.
    A ``tcp`` frontend in a file cannot set them and keeps their defaults.

    Attributes:
        name: the table's name.
        mode: ``"tcp"`` (L4 relay) or ``"http"`` (L7 HTTP/1.1 reverse proxy).
        listen: Twisted server endpoint descriptions such as
            ``"tcp:8080:interface=127.0.0.1"``; at least one, each used by one frontend only.
        pool: the name of a pool defined in the same file; for ``http``, the pool of the
            requests that no route matches.
        client_timeout: seconds a client connection may stay idle before it is closed (for
            ``http``, the keep-alive idle time between requests).
        max_connections: concurrent client connections; past it, new ones are refused.
        header_timeout: seconds to receive a whole request head; past it the client is
            answered 408.
        max_header_bytes: the largest request head, in bytes, >= 1024; a larger one is
            answered 431.
        max_body_bytes: the largest request body, in bytes, >= 0; a larger one is answered
            413. 0 means no limit.
        trusted_proxies: addresses and networks, as written, whose ``X-Forwarded-For`` and
            ``Forwarded`` headers are kept and appended to; each parses with
            :func:`ipaddress.ip_network` and ``strict=False`` (``"10.0.0.1/8"`` is
            ``10.0.0.0/8``, and a bare address is a network of one).
        routes: the routes, in file order; the first that matches a request picks its pool.
        tunnel_timeout: seconds an upgraded connection (a WebSocket tunnel after a 101
            response) may stay idle before both sides are closed; it replaces
            ``client_timeout`` once the tunnel is open.
        underscores_in_headers: whether request header fields whose names contain ``_`` are
            forwarded; when false (the default) they are dropped, as nginx's
            ``underscores_in_headers off`` does.
        tls: TLS termination on every listener, in either mode, or ``None`` for plain
            connections.
        proxy_protocol_from: addresses and networks, as written and parsed as
            ``trusted_proxies``, of the peers whose PROXY protocol header a ``haproxy:``
            listener believes; from any other peer a connection is refused. Empty (the
            default) means ``trusted_proxies``, and any peer when that is empty too. Set
            only on a frontend with a ``haproxy:`` listener; in either mode.
    """

    name: str
    mode: str
    listen: tuple[str, ...] = attrs.field(converter=_strings)
    pool: str
    client_timeout: float = 60.0
    max_connections: int = 10000
    header_timeout: float = 10.0
    max_header_bytes: int = 65536
    max_body_bytes: int = 0
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    routes: tuple[RouteConfig, ...] = attrs.field(default=(), converter=_routes)
    tunnel_timeout: float = 3600.0
    underscores_in_headers: bool = False
    tls: FrontendTLSConfig | None = None
    proxy_protocol_from: tuple[str, ...] = attrs.field(default=(), converter=_strings)


@attrs.frozen
class GlobalConfig:
    """
    The ``[global]`` table: settings of the whole process.

    Attributes:
        log_format: ``"text"``, one line of text per log event, or ``"json"``, one JSON
            object per line.
        access_log: where the access line of each HTTP request and relayed TCP connection
            goes: ``True`` for the default destination (under twistd, where twistd writes its
            log), ``"stdout"``, an absolute file path, or ``False`` for none (nginx
            ``access_log off``).
        access_log_buffer: bytes of access lines held before they are written (nginx
            ``access_log ... buffer=``); 0 writes each line at once.
        access_log_flush: seconds an access line may wait in the buffer (nginx
            ``access_log ... flush=``).
        drain_timeout: seconds a reload (or a runtime removal) lets the connections and
            requests of a removed backend, pool or frontend finish before closing the rest.
    """

    log_format: str = "text"
    access_log: bool | str = True
    access_log_buffer: int = 65536
    access_log_flush: float = 1.0
    drain_timeout: float = 30.0


@attrs.frozen
class AdminConfig:
    """
    The ``[admin]`` table: the admin API's listeners (see docs/operations.rst).

    Attributes:
        listen: Twisted server endpoint descriptions, as a frontend's ``listen``.
        socket_mode: the file mode given to each ``unix:`` listener's socket, such as
            ``0o600`` (written ``"0600"`` in the file).
        token_file: the absolute path of a file holding the bearer token that mutating
            calls must carry, or ``None`` for no token. Required when a TCP listener is not
            on a loopback address.
        state_file: the absolute path of the file where runtime changes are kept across
            restarts (HAProxy's ``server-state-file``), or ``None``.
    """

    listen: tuple[str, ...] = attrs.field(converter=_strings)
    socket_mode: int = 0o600
    token_file: str | None = None
    state_file: str | None = None


@attrs.frozen
class Config:
    """
    A whole, valid config file.

    Instances compare by value. They are not hashable, because the fields are mappings.

    Attributes:
        path: the file the config came from, as given to :func:`load_config`, or the ``path``
            given to :func:`parse_config`. Problems are reported against it, and relative
            paths in ``tls`` tables are resolved against its directory (against the current
            directory for a name in angle brackets, such as ``"<string>"``).
        frontends: frontend name to frontend, in file order (read-only).
        pools: pool name to pool, in file order (read-only). Every pool a frontend or a route
            names is here; pools that nothing uses are kept too.
        global_config: the ``[global]`` table, or its defaults when the file has none.
        admin: the ``[admin]`` table, or ``None`` when the file has none (no admin API).
    """

    path: str
    frontends: Mapping[str, FrontendConfig] = attrs.field(converter=_frontends)
    pools: Mapping[str, PoolConfig] = attrs.field(converter=_pools)
    global_config: GlobalConfig = attrs.field(factory=GlobalConfig)
    admin: AdminConfig | None = None


@attrs.frozen
class Problem:
    """
    One thing wrong with a config file.

    ``str(problem)`` is ``"{path}: {key}: {message}"``, for example
    ``lb.toml: pools.app.backends[1].wieght: unknown key (did you mean 'weight'?)``.

    Attributes:
        path: the file, as given to :func:`load_config` (or ``"<string>"``).
        key: the key path, with array indexes: ``frontends.web.listen[0]``. Table names that
            are not bare TOML keys are quoted: ``pools."my.app"``. ``"(file)"`` for problems
            with the document as a whole, ``"cannot read"`` when the file could not be read,
            and ``"line L, column C"`` for TOML syntax errors.
        message: what is wrong and how to fix it.
    """

    path: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.message}"


class ConfigError(Exception):
    """
    The config file cannot be used. ``str()`` of it is one problem per line.

    Attributes:
        problems: every problem found, in the order of the document; never empty.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# -- reading -----------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """
    Read and validate a TOML config file.

    The file is read synchronously: call this before the reactor runs, or in a thread.

    Args:
        path: the file. Problems name it as given here.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file cannot be read (``lb.toml: cannot read: ...``), is not valid TOML
            (``lb.toml: line 3, column 5: invalid TOML: ...``), or breaks the rules; in the
            last case every problem in the file is listed.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([Problem(name, "cannot read", e.strerror or str(e))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message = f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        raise ConfigError([Problem(name, "cannot read", message)]) from None
    return parse_config(text, name)


def parse_config(text: str, path: str = "<string>") -> Config:
    """
    Validate a config given as TOML text.

    Args:
        text: the document.
        path: the name problems are reported against, and :attr:`Config.path`.

    Returns:
        The validated config.

    Raises:
        ConfigError: the text is not valid TOML (one problem, ``line L, column C: invalid
            TOML: ...``), or it breaks the rules (every problem is listed).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_problem(text, path, e)]) from None
    return config_from_dict(data, path)


_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$",
    re.DOTALL,
)


def _syntax_problem(text: str, path: str, error: tomllib.TOMLDecodeError) -> Problem:
    """
    Turn a TOML syntax error into a problem keyed by its line and column (counting from 1).
    """
    message = str(error)
    match = _TOML_POSITION.match(message)
    if match is None:
        return Problem(path, "(file)", f"invalid TOML: {message}")
    message = match["message"]
    if match["line"] is not None:
        line, column = int(match["line"]), int(match["column"])
    else:
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return Problem(path, f"line {line}, column {column}", f"invalid TOML: {message}")


def config_from_dict(data: Mapping[str, object], path: str = "<dict>") -> Config:
    """
    Validate an already parsed document: the tables :func:`tomllib.loads` returns.

    Use this to build a config in code; values must have the types TOML would give them.

    Args:
        data: the top-level table.
        path: the name problems are reported against, and :attr:`Config.path`.

    Returns:
        The validated config.

    Raises:
        ConfigError: every problem found in ``data``.
    """
    return _Validator(path).config(data)


# -- validation --------------------------------------------------------------------------------

_TOP_KEYS = ("frontends", "pools", "global", "admin")
_TOP_LATER = ("metrics",)
_ADMIN_KEYS = ("listen", "socket_mode", "token_file", "state_file")
_ADMIN_LISTEN_EXAMPLE = "unix:/run/twisted-lb/admin.sock"
_GLOBAL_KEYS = (
    "log_format",
    "access_log",
    "access_log_buffer",
    "access_log_flush",
    "drain_timeout",
)
_LOG_FORMATS = ("text", "json")
_HTTP_FRONTEND_KEYS = (
    "header_timeout",
    "max_header_bytes",
    "max_body_bytes",
    "trusted_proxies",
    "routes",
    "tunnel_timeout",
    "underscores_in_headers",
)
_FRONTEND_KEYS = (
    "mode",
    "listen",
    "pool",
    "client_timeout",
    "max_connections",
    "tls",
    "proxy_protocol_from",
    *_HTTP_FRONTEND_KEYS,
)
_ROUTE_KEYS = ("host", "path_prefix", "pool")
_POOL_KEYS = (
    "strategy",
    "strategy_options",
    "connect_timeout",
    "retries",
    "response_timeout",
    "upstream_idle_timeout",
    "max_idle_per_backend",
    "backends",
    "health_check",
    "outlier_detection",
    "panic",
    "slow_start",
    "tls",
)
_BACKEND_KEYS = ("address", "name", "weight", "backup", "state")
_BACKEND_STATES = ("ready", "drain", "maint")
_MODES = ("tcp", "http")
_HTTP_CHECK_KEYS = ("path", "host", "expect_status", "expect_body")
_HEALTH_CHECK_KEYS = (
    "kind",
    "interval",
    "timeout",
    "rise",
    "fall",
    "down_interval",
    "jitter",
    *_HTTP_CHECK_KEYS,
)
_CHECK_KINDS = ("tcp", "http")
_OUTLIER_KEYS = (
    "consecutive_failures",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
    "count_5xx",
    "uneject_on_passing_check",
)
_FRONTEND_TLS_KEYS = (
    "certificates",
    "min_version",
    "ciphers",
    "client_ca",
    "verify_client",
    "curves",
)
_CERTIFICATE_KEYS = ("cert", "key")
_VERIFY_CLIENT = ("none", "optional", "required")
_OLD_TLS_VERSIONS = ("sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1", "1.0", "1.1")
_POOL_TLS_KEYS = ("server_name", "ca", "client_cert", "client_key", "verify")
# nginx's and HAProxy's names for the keys of the tls tables, where did-you-mean misses them.
_FRONTEND_TLS_ALIASES = {
    "crt": "certificates",
    "ssl_certificate": "certificates",
    "ssl_protocols": "min_version",
    "ssl-min-ver": "min_version",
    "ssl_ciphers": "ciphers",
    "ca_file": "client_ca",
    "ca-file": "client_ca",
    "ssl_client_certificate": "client_ca",
    "verify": "verify_client",
    "ssl_verify_client": "verify_client",
}
_POOL_TLS_ALIASES = {
    "sni": "server_name",
    "verifyhost": "server_name",
    "proxy_ssl_name": "server_name",
    "ca_file": "ca",
    "ca-file": "ca",
    "proxy_ssl_trusted_certificate": "ca",
    "crt": "client_cert",
    "proxy_ssl_verify": "verify",
}
# nginx's ssl_verify_client values, which did-you-mean would get wrong ("on" is not "none").
_NGINX_VERIFY_CLIENT = {"on": "required", "off": "none"}

_LISTEN_EXAMPLE = "tcp:8080:interface=127.0.0.1"
_BACKENDS_EXAMPLE = 'backends = [{ address = "127.0.0.1:9001" }]'
_MISSING = "required key is missing; add "
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ONLY_HTTP = 'only for mode = "http"; remove it or set mode = "http"'
_ONLY_HTTP_CHECK = 'only for kind = "http"; remove it or set kind = "http"'
_STATUS_EXAMPLES = 'expect_status = "200-399" (a range), "200" or 200'
_STATUS_RANGE = re.compile(r"(?P<low>[0-9]+)(?:-(?P<high>[0-9]+))?")
_STATUS_CLASS = re.compile(r"(?P<digit>[1-5])[xX][xX]")
_CHECK_HOST_EXAMPLES = "'app.internal', 'app.internal:8080' or '[2001:db8::1]'"
_ROUTE_EXAMPLE = '{ path_prefix = "/api/", pool = "api" }'
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_HOST_PORT = re.compile(r"(?P<host>[^:]*|\[[^\]]*\]):[0-9]*")
_HOST_EXAMPLES = "an exact name such as 'api.example.com' or a wildcard such as '*.example.com'"
_PROXY_EXAMPLES = "'10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'"
_CERTIFICATE_EXAMPLE = '{ cert = "site.pem", key = "site.key" }'
_CERTIFICATES_EXAMPLE = f"certificates = [{_CERTIFICATE_EXAMPLE}]"
_SERVER_NAME_EXAMPLES = "'app.internal', '10.0.0.5' or '2001:db8::1'"
_FILE_EXAMPLES = {
    "cert": '"site.pem"',
    "key": '"site.key"',
    "client_ca": '"client-ca.pem"',
    "ca": '"ca.pem"',
    "client_cert": '"client.pem"',
    "client_key": '"client.key"',
    "token_file": '"admin.token"',
    "state_file": '"/var/lib/twisted-lb/state.json"',
}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with control characters (line breaks included) escaped, as repr() does."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _describe(value: object) -> str:
    """
    Name a value's TOML type with its article: ``"a string"``, ``"an array"``.
    """
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    kind = type(value).__name__
    return {"datetime": "a date-time", "date": "a date", "time": "a time"}.get(kind, f"a {kind}")


def _quote_list(words: Iterable[str]) -> str:
    return ", ".join(repr(word) for word in words)


def _suggest(word: str, choices: Sequence[str], plural: str) -> str:
    """
    The end of a message about an unknown name: ``" (did you mean 'x'?)"`` when one of
    ``choices`` is close (:func:`difflib.get_close_matches`, as written or else in lower
    case), else ``"; valid keys are: ..."``.
    """
    close = difflib.get_close_matches(word, choices, n=1) or difflib.get_close_matches(
        word.lower(), choices, n=1
    )
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; {plural} are: {_quote_list(choices)}"


def _suggest_any_case(word: str, choices: Sequence[str], plural: str) -> str:
    """
    As :func:`_suggest`, comparing in lower case, for names such as ``"TLSv1.2"`` that are
    often written in another case (``"tlsv1.2"``) or shortened (``"1.2"``).
    """
    folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1)
    if close:
        return f" (did you mean {folded[close[0]]!r}?)"
    return f"; {plural} are: {_quote_list(choices)}"


def join_key(parent: str, key: str) -> str:
    """
    Extend a key path with a table key, quoting keys that are not bare TOML keys.
    """
    if not _BARE_KEY.fullmatch(key):
        key = _toml_string(key)
    return f"{parent}.{key}" if parent else key


def _endpoint_problem(text: str) -> str | None:
    """
    Check a server endpoint description with Twisted's own parser.

    The endpoint is built against a :class:`MemoryReactor`, so nothing listens. Parsers of
    some endpoint types look at the environment while they build (``ssl:`` reads its
    certificate files, ``systemd:`` its inherited descriptors), and their errors count.

    Returns:
        What the parser objected to, or ``None`` if the description is usable.
    """
    try:
        serverFromString(MemoryReactor(), text)
    except ValueError as e:
        return str(e)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _tls_endpoint(text: str) -> bool:
    """
    Whether a server endpoint description is Twisted's ``ssl:``, bare or under ``haproxy:``
    (endpoint types are matched without case, as Twisted matches them).
    """
    inner = proxy_listener(text)
    kind = (text if inner is None else inner).partition(":")[0]
    return kind.lower() == "ssl"


def _tls_listener_problem(text: str, where: str) -> str:
    """
    Why a frontend's ``ssl:`` or ``haproxy:ssl:`` listener is refused, and the fix: the same
    port on ``tcp:`` (``haproxy:tcp:``) with the certificate in the frontend's ``tls`` table.
    """
    inner = proxy_listener(text)
    prefix = "" if inner is None else text[: len(text) - len(inner)]
    port = (text if inner is None else inner).split(":")[1:2] or ["443"]
    fix = f"{prefix}tcp:{port[0] or '443'}"
    return (
        f"{text!r}: an ssl: listener terminates TLS with Twisted's defaults, not the policy of "
        f"[{where}.tls], and its backends would be told the scheme is http; listen on "
        f"{fix!r} and put the certificate in [{where}.tls]"
        + (
            " (the PROXY header then comes in clear before TLS, as HAProxy's send-proxy "
            "and nginx's proxy_protocol send it)"
            if inner is not None
            else ""
        )
    )


def _exposed_endpoint(text: str) -> str | None:
    """
    Where a valid server endpoint description listens when other hosts can reach it: a TCP
    (or TLS) endpoint on an address that is not loopback, or one this module cannot place
    (``systemd:``, plugins).

    Returns:
        A description such as ``"all interfaces"`` or ``"192.0.2.7"``, or ``None`` for a
        ``unix:`` socket or a loopback address.
    """
    from twisted.internet.endpoints import UNIXServerEndpoint

    endpoint = serverFromString(MemoryReactor(), text)
    if isinstance(endpoint, UNIXServerEndpoint):
        return None
    interface = getattr(endpoint, "_interface", None)
    if not isinstance(interface, str):
        return f"an address this check cannot see ({text.partition(':')[0]}:)"
    if interface in ("", "::", "0.0.0.0"):
        return "all interfaces"
    try:
        if ipaddress.ip_address(interface.partition("%")[0]).is_loopback:
            return None
    except ValueError:
        pass
    return interface


def _token_file_problem(path: str) -> str | None:
    """What is wrong with a bearer token file: unreadable, or no token on its first line."""
    try:
        with open(path, "rb") as f:
            first = f.read(4096).partition(b"\n")[0].strip()
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if not first:
        return f"{path} is empty; write the token on its first line"
    try:
        first.decode("ascii")
    except UnicodeDecodeError:
        return f"{path}: the token must be ASCII text"
    return None


class _HTTPSettings(TypedDict, total=False):
    """
    The http-only keyword arguments of :class:`FrontendConfig`.
    """

    header_timeout: float
    max_header_bytes: int
    max_body_bytes: int
    trusted_proxies: tuple[str, ...]
    routes: tuple[RouteConfig, ...]
    tunnel_timeout: float
    underscores_in_headers: bool


class _Validator:
    """
    One pass over a document, collecting problems instead of stopping at the first.

    Each method returns the model for its part of the document, or ``None`` when that part
    has problems (which are then in ``problems``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.listeners: dict[str, str] = {}
        self.pool_names: list[str] = []
        self._installed: list[str] | None = None
        # Relative paths in tls tables are relative to the config file; a name in angle
        # brackets ("<string>", "<dict>") is no file, and the current directory is used.
        self.directory = (
            "" if path.startswith("<") and path.endswith(">") else os.path.dirname(path)
        )

    def problem(self, key: str, message: str) -> None:
        # Messages may quote what the file or a parser said; keep each problem on one line.
        self.problems.append(Problem(self.path, key, _one_line(message)))

    def installed_strategies(self) -> list[str]:
        if self._installed is None:
            from twisted_lb.strategies import installed_strategies

            self._installed = sorted(installed_strategies())
        return self._installed

    # -- the document

    def config(self, data: object) -> Config:
        if not isinstance(data, Mapping):
            self.problem("(file)", f"must be a table, not {_describe(data)}")
            raise ConfigError(self.problems)
        self.check_keys(data, "", _TOP_KEYS, _TOP_LATER)
        global_config = self.global_config(data)
        raw_frontends = self.named_tables(data, "frontends", "frontend", "web")
        raw_pools = self.named_tables(data, "pools", "pool", "app")
        if raw_pools is not None:
            self.pool_names = [str(name) for name in raw_pools]

        frontends: dict[str, FrontendConfig] = {}
        for name, raw in (raw_frontends or {}).items():
            frontend = self.frontend(str(name), raw)
            if frontend is not None:
                frontends[frontend.name] = frontend
        pools: dict[str, PoolConfig] = {}
        for name, raw in (raw_pools or {}).items():
            pool = self.pool(str(name), raw)
            if pool is not None:
                pools[pool.name] = pool
        admin = self.admin(data)

        if self.problems or global_config is None:
            raise ConfigError(self.problems)
        return Config(
            path=self.path,
            frontends=frontends,
            pools=pools,
            global_config=global_config,
            admin=admin,
        )

    def admin(self, data: Mapping[str, object]) -> AdminConfig | None:
        """
        The ``[admin]`` table, or ``None`` when absent (or on a problem). A TCP listener that
        is not on a loopback address needs ``token_file``.
        """
        if "admin" not in data:
            return None
        raw = data["admin"]
        if not isinstance(raw, Mapping):
            self.problem(
                "admin",
                f'must be a table, as in [admin] listen = ["{_ADMIN_LISTEN_EXAMPLE}"], '
                f"not {_describe(raw)}",
            )
            return None
        before = len(self.problems)
        self.check_keys(raw, "admin", _ADMIN_KEYS, ())
        listen = self.listen(raw, "admin", example=_ADMIN_LISTEN_EXAMPLE)
        socket_mode = self.socket_mode(raw)
        token_file = state_file = None
        if "token_file" in raw:
            token_file = self.file_path(raw, "token_file", "admin")
            if token_file is not None:
                problem = _token_file_problem(token_file)
                if problem is not None:
                    self.problem("admin.token_file", problem)
        if "state_file" in raw:
            state_file = self.file_path(raw, "state_file", "admin")
        if listen is not None and "token_file" not in raw:
            value = raw["listen"]
            keys = ["admin.listen"] if isinstance(value, str) else None
            for index, item in enumerate(listen):
                exposed = _exposed_endpoint(item)
                if exposed is not None:
                    key = keys[0] if keys else f"admin.listen[{index}]"
                    self.problem(
                        key,
                        f"{item!r} listens on {exposed}, which other hosts can reach: set "
                        "admin.token_file (a file holding a bearer token), as in token_file = "
                        '"admin.token", or listen on loopback only, as in '
                        "'tcp:9901:interface=127.0.0.1'",
                    )
        if len(self.problems) > before or listen is None or socket_mode is None:
            return None
        return AdminConfig(
            listen=listen, socket_mode=socket_mode, token_file=token_file, state_file=state_file
        )

    def socket_mode(self, raw: Mapping[str, object]) -> int | None:
        """
        ``socket_mode``: a file mode in octal, from ``"0000"`` to ``"0777"``: a string of
        octal digits (``"0600"``, ``"600"``) or a TOML octal integer (``0o600``).
        """
        if "socket_mode" not in raw:
            return 0o600
        value = raw["socket_mode"]
        hint = 'write it in octal as a string, as in socket_mode = "0600"'
        if isinstance(value, str):
            if re.fullmatch(r"0?[0-7]{3}", value):
                return int(value, 8)
            self.problem(
                "admin.socket_mode", f"{value!r} is not a file mode from '0000' to '0777'; {hint}"
            )
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= 0o777:
                return value
            self.problem(
                "admin.socket_mode",
                f"{value} is not a file mode from 0o000 to 0o777 (a decimal 600 is not "
                f"0o600); {hint}",
            )
            return None
        self.problem(
            "admin.socket_mode",
            f'must be a string, as in socket_mode = "0600", not {_describe(value)}',
        )
        return None

    def global_config(self, data: Mapping[str, object]) -> GlobalConfig | None:
        """
        The ``[global]`` table; its defaults when the document has none.
        """
        if "global" not in data:
            return GlobalConfig()
        raw = data["global"]
        if not isinstance(raw, Mapping):
            self.problem("global", f"must be a table, as in [global], not {_describe(raw)}")
            return None
        before = len(self.problems)
        self.check_keys(raw, "global", _GLOBAL_KEYS, ())
        log_format: str | None = "text"
        if "log_format" in raw:
            log_format = self.string(raw, "log_format", "global")
            if log_format is not None and log_format not in _LOG_FORMATS:
                self.problem(
                    "global.log_format",
                    f"unknown log format {log_format!r}"
                    + _suggest(log_format, _LOG_FORMATS, "valid formats"),
                )
                log_format = None
        access_log = self.access_log(raw.get("access_log", True))
        buffer = self.integer(raw, "access_log_buffer", "global", 65536, 0)
        flush = self.seconds(raw, "access_log_flush", "global", 1.0)
        drain_timeout = self.seconds(raw, "drain_timeout", "global", 30.0)
        if (
            len(self.problems) > before
            or log_format is None
            or access_log is None
            or buffer is None
            or flush is None
            or drain_timeout is None
        ):
            return None
        return GlobalConfig(
            log_format=log_format,
            access_log=access_log,
            access_log_buffer=buffer,
            access_log_flush=flush,
            drain_timeout=drain_timeout,
        )

    def access_log(self, value: object) -> bool | str | None:
        """
        ``[global] access_log``: true, false, ``"stdout"``, or a file path, returned absolute
        (a relative path is resolved against the directory of the config file).
        """
        where = "global.access_log"
        if isinstance(value, bool):
            return value
        if not isinstance(value, str):
            self.problem(
                where,
                f'must be true, false, "stdout" or a file path, not {_describe(value)}',
            )
            return None
        if value == "stdout":
            return value
        if not value or "\0" in value or value.endswith(os.sep):
            self.problem(
                where,
                f'{value!r} is not a file path; write one, as in access_log = "access.log", '
                'or true, false or "stdout"',
            )
            return None
        return os.path.abspath(os.path.join(self.directory, value))

    def check_keys(
        self,
        table: Mapping[str, object],
        parent: str,
        valid: Sequence[str],
        later: Sequence[str],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        """
        Report each key of ``table`` that is not ``valid``: keys of ``later`` releases as not
        yet supported, the others as unknown, with a did-you-mean. ``aliases`` maps the names
        other balancers use (HAProxy's ``sni``) to the key to suggest (``server_name``).
        """
        for key in table:
            key = str(key)
            if key in valid:
                continue
            if key in later:
                self.problem(join_key(parent, key), "not yet supported in this version; remove it")
            elif aliases and key in aliases:
                self.problem(join_key(parent, key), f"unknown key (did you mean {aliases[key]!r}?)")
            else:
                self.problem(
                    join_key(parent, key), "unknown key" + _suggest(key, valid, "valid keys")
                )

    def named_tables(
        self, data: Mapping[str, object], key: str, noun: str, example: str
    ) -> Mapping[str, object] | None:
        """
        The ``frontends`` or ``pools`` table: a table of tables, at least one.
        """
        add = f"add one, as in [{key}.{example}]"
        if key not in data:
            self.problem(key, f"at least one {noun} is required; {add}")
            return None
        value = data[key]
        if not isinstance(value, Mapping):
            self.problem(
                key, f"must be a table of {noun}s, as in [{key}.{example}], not {_describe(value)}"
            )
            return None
        if not value:
            self.problem(key, f"at least one {noun} is required; {add}")
        return value

    # -- typed values

    def string(self, table: Mapping[str, object], key: str, parent: str) -> str | None:
        value = table[key]
        if not isinstance(value, str):
            self.problem(join_key(parent, key), f"must be a string, not {_describe(value)}")
            return None
        return value

    def seconds(
        self,
        table: Mapping[str, object],
        key: str,
        parent: str,
        default: float,
        zero_means: str | None = None,
    ) -> float | None:
        """
        A duration in seconds: an integer or a float, finite and > 0. Booleans are refused.

        With ``zero_means`` (such as ``"off"``), 0 is accepted too, and said to mean that.
        """
        if key not in table:
            return default
        value = table[key]
        where = join_key(parent, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(where, f"must be a number (seconds), not {_describe(value)}")
            return None
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            self.problem(where, f"must be a finite number of seconds, not {value!r}")
            return None
        if zero_means is not None and seconds < 0:
            self.problem(where, f"must be 0 ({zero_means}) or more seconds, not {value!r}")
            return None
        if zero_means is None and seconds <= 0:
            self.problem(where, f"must be more than 0 seconds, not {value!r}")
            return None
        return seconds

    def integer(
        self,
        table: Mapping[str, object],
        key: str,
        parent: str,
        default: int,
        minimum: int,
        maximum: int | None = None,
    ) -> int | None:
        """
        An integer >= ``minimum`` (and <= ``maximum``, if given). Booleans and floats (even
        ``2.0``) are refused.
        """
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            found = _describe(value)
        elif value < minimum or (maximum is not None and value > maximum):
            found = repr(value)
        else:
            return value
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        self.problem(join_key(parent, key), f"must be an integer {bounds}, not {found}")
        return None

    def boolean(
        self, table: Mapping[str, object], key: str, parent: str, default: bool
    ) -> bool | None:
        """
        ``true`` or ``false``; nothing else (not 0 or 1, not ``"yes"``).
        """
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.problem(join_key(parent, key), f"must be true or false, not {_describe(value)}")
            return None
        return value

    # -- frontends

    def frontend(self, name: str, raw: object) -> FrontendConfig | None:
        where = join_key("frontends", name)
        if not isinstance(raw, Mapping):
            self.problem(where, f"must be a table, as in [{where}], not {_describe(raw)}")
            return None
        before = len(self.problems)
        self.check_keys(raw, where, _FRONTEND_KEYS, ())

        mode = self.mode(raw, where)
        listen = self.listen(raw, where, frontend=True)
        pool = self.pool_reference(raw, where)
        client_timeout = self.seconds(raw, "client_timeout", where, 60.0)
        max_connections = self.integer(raw, "max_connections", where, 10000, minimum=1)
        http = self.http_settings(raw, where, mode)
        tls = self.frontend_tls(raw, where)
        proxy_protocol_from = self.trusted_proxies(raw, where, "proxy_protocol_from")
        if (
            proxy_protocol_from
            and listen is not None
            and not any(proxy_listener(item) is not None for item in listen)
        ):
            self.problem(
                join_key(where, "proxy_protocol_from"),
                "is for a frontend that takes the PROXY protocol, and none of its listeners "
                'does; prefix the listener with haproxy:, as in listen = ["haproxy:'
                f'{listen[0]}"], or remove proxy_protocol_from',
            )

        if (
            len(self.problems) > before
            or mode is None
            or listen is None
            or pool is None
            or client_timeout is None
            or max_connections is None
            or http is None
            or proxy_protocol_from is None
        ):
            return None
        return FrontendConfig(
            name=name,
            mode=mode,
            listen=listen,
            pool=pool,
            client_timeout=client_timeout,
            max_connections=max_connections,
            tls=tls,
            proxy_protocol_from=proxy_protocol_from,
            **http,
        )

    def mode(self, raw: Mapping[str, object], where: str) -> str | None:
        if "mode" not in raw:
            self.problem(join_key(where, "mode"), _MISSING + 'mode = "http" or mode = "tcp"')
            return None
        mode = self.string(raw, "mode", where)
        if mode is None or mode in _MODES:
            return mode
        self.problem(
            join_key(where, "mode"),
            f"unknown mode {mode!r}" + _suggest(mode, _MODES, "valid modes"),
        )
        return None

    def http_settings(
        self, raw: Mapping[str, object], where: str, mode: str | None
    ) -> _HTTPSettings | None:
        """
        The keys only ``http`` frontends may have, as keyword arguments for
        :class:`FrontendConfig`. On a ``tcp`` frontend each one present is a problem and the
        defaults are kept. When the mode is missing or invalid they are checked as for ``http``.
        """
        if mode == "tcp":
            for key in _HTTP_FRONTEND_KEYS:
                if key in raw:
                    self.problem(join_key(where, key), _ONLY_HTTP)
            return {}
        header_timeout = self.seconds(raw, "header_timeout", where, 10.0)
        max_header_bytes = self.integer(raw, "max_header_bytes", where, 65536, minimum=1024)
        max_body_bytes = self.integer(raw, "max_body_bytes", where, 0, minimum=0)
        trusted_proxies = self.trusted_proxies(raw, where)
        routes = self.routes(raw, where)
        tunnel_timeout = self.seconds(raw, "tunnel_timeout", where, 3600.0)
        underscores = self.boolean(raw, "underscores_in_headers", where, False)
        if (
            header_timeout is None
            or max_header_bytes is None
            or max_body_bytes is None
            or trusted_proxies is None
            or routes is None
            or tunnel_timeout is None
            or underscores is None
        ):
            return None
        return {
            "header_timeout": header_timeout,
            "max_header_bytes": max_header_bytes,
            "max_body_bytes": max_body_bytes,
            "trusted_proxies": trusted_proxies,
            "routes": routes,
            "tunnel_timeout": tunnel_timeout,
            "underscores_in_headers": underscores,
        }

    def trusted_proxies(
        self, raw: Mapping[str, object], where: str, name: str = "trusted_proxies"
    ) -> tuple[str, ...] | None:
        """
        ``trusted_proxies`` (or ``name``, such as ``proxy_protocol_from``): an array of
        addresses and networks, each accepted by :func:`ipaddress.ip_network` with
        ``strict=False``. They are kept as written.
        """
        if name not in raw:
            return ()
        key = join_key(where, name)
        value = raw[name]
        if not isinstance(value, list | tuple):
            self.problem(
                key,
                f'must be an array of strings, as in {name} = ["10.0.0.0/8"], '
                f"not {_describe(value)}",
            )
            return None
        proxies: list[str] = []
        ok = True
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                self.problem(item_key, f"must be a string, not {_describe(item)}")
                ok = False
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                self.problem(
                    item_key,
                    f"{item!r} is not an IP address or network; write one as in {_PROXY_EXAMPLES}",
                )
                ok = False
                continue
            proxies.append(item)
        return tuple(proxies) if ok else None

    def routes(self, raw: Mapping[str, object], where: str) -> tuple[RouteConfig, ...] | None:
        """
        ``routes``: an array of tables (``[[frontends.NAME.routes]]``), in file order. A route
        that repeats the ``host`` and ``path_prefix`` of an earlier one could never match,
        and is a problem.
        """
        if "routes" not in raw:
            return ()
        key = join_key(where, "routes")
        value = raw["routes"]
        if not isinstance(value, list | tuple):
            self.problem(
                key, f"must be an array of tables, as in [[{key}]], not {_describe(value)}"
            )
            return None
        routes: list[RouteConfig] = []
        ok = True
        seen: dict[tuple[str | None, str | None], str] = {}
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            route = self.route(item, item_key)
            if route is None:
                ok = False
                continue
            match = (route.host, route.path_prefix)
            if match in seen:
                self.problem(
                    item_key,
                    f"matches the same requests as {seen[match]}, which comes first and wins; "
                    "remove one of them",
                )
                ok = False
                continue
            seen[match] = item_key
            routes.append(route)
        return tuple(routes) if ok else None

    def route(self, raw: object, where: str) -> RouteConfig | None:
        if not isinstance(raw, Mapping):
            self.problem(where, f"must be a table, as in {_ROUTE_EXAMPLE}, not {_describe(raw)}")
            return None
        before = len(self.problems)
        self.check_keys(raw, where, _ROUTE_KEYS, ())
        if "host" not in raw and "path_prefix" not in raw:
            self.problem(
                where,
                'a route needs host, path_prefix or both, as in path_prefix = "/api/"; '
                "requests that no route matches go to the frontend's pool",
            )
        host = self.route_host(raw, where)
        path_prefix = self.path_prefix(raw, where)
        pool = self.pool_reference(raw, where)
        if len(self.problems) > before or pool is None:
            return None
        return RouteConfig(pool=pool, host=host, path_prefix=path_prefix)

    def route_host(self, raw: Mapping[str, object], where: str) -> str | None:
        """
        A route's ``host``: an exact name or ``*.suffix``, without scheme, port or path;
        returned in lower case. ``None`` when absent (or on a problem).
        """
        if "host" not in raw:
            return None
        host = self.string(raw, "host", where)
        if host is None:
            return None
        problem = _host_problem(host)
        if problem is not None:
            self.problem(join_key(where, "host"), problem)
            return None
        return host.lower()

    def path_prefix(self, raw: Mapping[str, object], where: str) -> str | None:
        """
        A route's ``path_prefix``: starts with ``/``, without query or fragment, in printable
        ASCII (as requests carry it). ``None`` when absent (or on a problem).
        """
        if "path_prefix" not in raw:
            return None
        prefix = self.string(raw, "path_prefix", where)
        if prefix is None:
            return None
        problem = _path_prefix_problem(prefix)
        if problem is not None:
            self.problem(join_key(where, "path_prefix"), problem)
            return None
        return prefix

    def listen(
        self,
        raw: Mapping[str, object],
        where: str,
        example: str = _LISTEN_EXAMPLE,
        *,
        frontend: bool = False,
    ) -> tuple[str, ...] | None:
        """
        ``listen``: one endpoint description or an array of them, each parsed by Twisted and
        used by no other listener in the file. A frontend's may not be ``ssl:`` or
        ``haproxy:ssl:``: that endpoint terminates TLS with Twisted's defaults, outside the
        frontend's ``tls`` table, and the frontend would tell its backends the scheme is http.
        """
        key = join_key(where, "listen")
        if "listen" not in raw:
            self.problem(key, _MISSING + f'listen = ["{example}"]')
            return None
        value = raw["listen"]
        items: list[tuple[str, object]]
        if isinstance(value, str):
            items = [(key, value)]
        elif isinstance(value, list | tuple):
            if not value:
                self.problem(key, f'must list at least one endpoint, as in listen = ["{example}"]')
                return None
            items = [(f"{key}[{index}]", item) for index, item in enumerate(value)]
        else:
            self.problem(key, f"must be a string or an array of strings, not {_describe(value)}")
            return None

        listen: list[str] = []
        ok = True
        for item_key, item in items:
            if not isinstance(item, str):
                self.problem(item_key, f"must be a string, not {_describe(item)}")
                ok = False
                continue
            if item in self.listeners:
                self.problem(
                    item_key,
                    f"{item!r} is already used by {self.listeners[item]}; "
                    "give each listener its own endpoint",
                )
                ok = False
                continue
            self.listeners[item] = item_key
            if frontend and _tls_endpoint(item):
                self.problem(item_key, _tls_listener_problem(item, where))
                ok = False
                continue
            error = _endpoint_problem(item)
            if error is not None:
                self.problem(
                    item_key,
                    f"{item!r} is not a valid server endpoint ({error}); "
                    f"write one as in {example!r}",
                )
                ok = False
                continue
            listen.append(item)
        return tuple(listen) if ok else None

    def pool_reference(self, raw: Mapping[str, object], where: str) -> str | None:
        key = join_key(where, "pool")
        if "pool" not in raw:
            example = self.pool_names[0] if self.pool_names else "app"
            self.problem(key, _MISSING + f"pool = {_toml_string(example)}")
            return None
        pool = self.string(raw, "pool", where)
        if pool is None or pool in self.pool_names:
            return pool
        if self.pool_names:
            hint = _suggest(pool, self.pool_names, "defined pools")
        else:
            hint = f"; define it as [{join_key('pools', pool)}]"
        self.problem(key, f"unknown pool {pool!r}{hint}")
        return None

    # -- tls

    def frontend_tls(self, raw: Mapping[str, object], where: str) -> FrontendTLSConfig | None:
        """
        ``[frontends.NAME.tls]``, or ``None`` when absent (or on a problem); the same in both
        modes. ``cert`` or ``key`` written in the table itself, as nginx's ``ssl_certificate``
        would be, are problems that show the ``certificates`` entry to write instead.
        """
        table = self.sub_table(
            raw,
            "tls",
            where,
            when_true=f"add its certificates, as in tls = {{ {_CERTIFICATES_EXAMPLE} }}",
        )
        if table is None:
            return None
        where = join_key(where, "tls")
        before = len(self.problems)
        misplaced = [key for key in _CERTIFICATE_KEYS if key in table]
        self.check_keys(
            {key: value for key, value in table.items() if key not in misplaced},
            where,
            _FRONTEND_TLS_KEYS,
            (),
            _FRONTEND_TLS_ALIASES,
        )
        if misplaced:
            cert, key = (
                _toml_string(path) if isinstance(path, str) and path else _FILE_EXAMPLES[name]
                for name in _CERTIFICATE_KEYS
                for path in [table.get(name)]
            )
            fix = f"certificates = [{{ cert = {cert}, key = {key} }}]"
            for key in misplaced:
                self.problem(join_key(where, key), f"goes in an entry of certificates; write {fix}")

        certificates = self.certificates(table, where, report_missing=not misplaced)
        min_version = self.min_version(table, where)
        ciphers: str | None = None
        if "ciphers" in table:
            ciphers = self.string(table, "ciphers", where)
            if ciphers is not None and not ciphers.strip():
                self.problem(
                    join_key(where, "ciphers"),
                    "must not be empty; leave ciphers out for Mozilla's intermediate list",
                )
        client_ca: str | None = None
        if "client_ca" in table:
            client_ca = self.file_path(table, "client_ca", where)
            if client_ca is not None:
                from twisted_lb.tls import ca_problem

                self.file_problem(join_key(where, "client_ca"), ca_problem(client_ca))
        verify_client = self.verify_client(table, where)
        curves = self.curves(table, where)

        if (
            len(self.problems) > before
            or certificates is None
            or min_version is None
            or verify_client is None
            or curves is None
        ):
            return None
        return FrontendTLSConfig(
            certificates=certificates,
            min_version=min_version,
            ciphers=ciphers,
            client_ca=client_ca,
            verify_client=verify_client,
            curves=curves,
        )

    def curves(self, table: Mapping[str, object], where: str) -> tuple[str, ...] | None:
        """
        ``curves``: a non-empty array of TLS group names that OpenSSL knows; a problem per
        unknown one, at its index.
        """
        from twisted_lb.tls import INTERMEDIATE_GROUPS, group_problem

        if "curves" not in table:
            return INTERMEDIATE_GROUPS
        key = join_key(where, "curves")
        value = table["curves"]
        example = "curves = [" + ", ".join(_toml_string(g) for g in INTERMEDIATE_GROUPS) + "]"
        if not isinstance(value, list) or not value:
            self.problem(
                key,
                f"must be a non-empty array of TLS group names, as in {example} (Mozilla's "
                f"intermediate profile, the default), not {_describe(value)}",
            )
            return None
        before = len(self.problems)
        for index, name in enumerate(value):
            item = f"{key}[{index}]"
            if not isinstance(name, str):
                self.problem(item, f"must be a string, as in {example}, not {_describe(name)}")
                continue
            problem = group_problem(name)
            if problem is not None:
                self.problem(item, problem)
        if len(self.problems) > before:
            return None
        return tuple(value)

    def certificates(
        self, table: Mapping[str, object], where: str, report_missing: bool
    ) -> tuple[CertificateConfig, ...] | None:
        """
        ``certificates``: a non-empty array of ``{ cert = "...", key = "..." }`` tables. The
        same entry may be listed twice.
        """
        key = join_key(where, "certificates")
        if "certificates" not in table:
            if report_missing:
                self.problem(key, _MISSING + _CERTIFICATES_EXAMPLE)
            return None
        value = table["certificates"]
        if not isinstance(value, list | tuple):
            message = (
                f"must be an array of tables, as in {_CERTIFICATES_EXAMPLE}, not {_describe(value)}"
            )
            if isinstance(value, Mapping):
                message += "; put the table in brackets"
            self.problem(key, message)
            return None
        if not value:
            self.problem(key, f"must list at least one certificate, as in {_CERTIFICATES_EXAMPLE}")
            return None
        certificates: list[CertificateConfig] = []
        ok = True
        for index, item in enumerate(value):
            certificate = self.certificate(item, f"{key}[{index}]")
            if certificate is None:
                ok = False
            else:
                certificates.append(certificate)
        return tuple(certificates) if ok else None

    def certificate(self, raw: object, where: str) -> CertificateConfig | None:
        """
        One entry of ``certificates``: ``cert`` and ``key``, both required, as files that
        :func:`twisted_lb.tls.certificate_problem` accepts together.
        """
        if not isinstance(raw, Mapping):
            self.problem(
                where, f"must be a table, as in {_CERTIFICATE_EXAMPLE}, not {_describe(raw)}"
            )
            return None
        before = len(self.problems)
        self.check_keys(raw, where, _CERTIFICATE_KEYS, ())
        paths: dict[str, str | None] = {}
        for name in _CERTIFICATE_KEYS:
            if name in raw:
                paths[name] = self.file_path(raw, name, where)
            else:
                self.problem(join_key(where, name), _MISSING + f"{name} = {_FILE_EXAMPLES[name]}")
                paths[name] = None
        cert, key = paths["cert"], paths["key"]
        if cert is None or key is None:
            return None
        self.certificate_files(cert, key, join_key(where, "cert"), join_key(where, "key"))
        if len(self.problems) > before:
            return None
        return CertificateConfig(cert=cert, key=key)

    def min_version(self, table: Mapping[str, object], where: str) -> str | None:
        """
        ``min_version``: one of :data:`twisted_lb.tls.TLS_VERSIONS`, as written there; SSL and
        TLS before 1.2 are refused with a word on why (RFC 8996).
        """
        if "min_version" not in table:
            return "TLSv1.2"
        version = self.string(table, "min_version", where)
        if version is None:
            return None
        from twisted_lb.tls import TLS_VERSIONS

        versions = list(TLS_VERSIONS)
        if version in versions:
            return version
        key = join_key(where, "min_version")
        if version.lower() in _OLD_TLS_VERSIONS:
            self.problem(
                key,
                f"{version!r} is older than TLS 1.2, which is no longer safe (RFC 8996); "
                'write min_version = "TLSv1.2"',
            )
        else:
            self.problem(
                key,
                f"unknown version {version!r}"
                + _suggest_any_case(version, versions, "valid versions"),
            )
        return None

    def verify_client(self, table: Mapping[str, object], where: str) -> str | None:
        """
        ``verify_client``: ``"none"``, ``"optional"`` or ``"required"``; the last two need
        ``client_ca`` in the same table (a problem on ``verify_client`` otherwise).
        """
        if "verify_client" not in table:
            return "none"
        key = join_key(where, "verify_client")
        value = table["verify_client"]
        if isinstance(value, bool):
            fix = _toml_string("required" if value else "none")
            self.problem(
                key,
                f"must be 'none', 'optional' or 'required', not a boolean; "
                f"write verify_client = {fix}",
            )
            return None
        verify = self.string(table, "verify_client", where)
        if verify is None:
            return None
        if verify not in _VERIFY_CLIENT:
            nginx = _NGINX_VERIFY_CLIENT.get(verify.lower())
            if nginx is not None:
                hint = (
                    f"; write verify_client = {_toml_string(nginx)} "
                    f"(nginx's ssl_verify_client {verify.lower()})"
                )
            else:
                hint = _suggest(verify, _VERIFY_CLIENT, "valid values")
            self.problem(key, f"unknown value {verify!r}{hint}")
            return None
        if verify != "none" and "client_ca" not in table:
            self.problem(
                key,
                f"{verify!r} needs client_ca, the CA bundle that client certificates are "
                f"verified against; add client_ca = {_FILE_EXAMPLES['client_ca']}",
            )
            return None
        return verify

    def pool_tls(self, raw: Mapping[str, object], where: str) -> PoolTLSConfig | None:
        """
        ``[pools.NAME.tls]``, or ``None`` when absent (or on a problem). ``client_cert`` and
        ``client_key`` go together; each without the other is a problem on the one written.
        """
        table = self.sub_table(raw, "tls", where)
        if table is None:
            return None
        where = join_key(where, "tls")
        before = len(self.problems)
        self.check_keys(table, where, _POOL_TLS_KEYS, (), _POOL_TLS_ALIASES)
        server_name: str | None = None
        if "server_name" in table:
            server_name = self.server_name(table, where)
        paths: dict[str, str | None] = {}
        for key in ("ca", "client_cert", "client_key"):
            if key in table:
                paths[key] = self.file_path(table, key, where)
        ca = paths.get("ca")
        if ca is not None:
            from twisted_lb.tls import ca_problem

            self.file_problem(join_key(where, "ca"), ca_problem(ca))
        client_cert, client_key = paths.get("client_cert"), paths.get("client_key")
        pairs = [
            ("client_cert", "client_key", "its private key"),
            ("client_key", "client_cert", "the certificate it is the key of"),
        ]
        for key, other, what in pairs:
            if key in table and other not in table:
                self.problem(
                    join_key(where, key),
                    f"needs {other}, {what}; add {other} = {_FILE_EXAMPLES[other]}",
                )
        if client_cert is not None and client_key is not None:
            self.certificate_files(
                client_cert,
                client_key,
                join_key(where, "client_cert"),
                join_key(where, "client_key"),
            )
        verify = self.boolean(table, "verify", where, True)
        if len(self.problems) > before or verify is None:
            return None
        return PoolTLSConfig(
            server_name=server_name,
            ca=ca,
            client_cert=client_cert,
            client_key=client_key,
            verify=verify,
        )

    def tls_server_names(
        self, tls: PoolTLSConfig, backends: Sequence[BackendConfig], where: str
    ) -> None:
        """
        With verification on and no ``server_name``, each backend's certificate is verified
        against the host of its address. A UNIX socket has none: that is a problem on
        ``server_name``, naming the first such backend.
        """
        if not tls.verify or tls.server_name is not None:
            return
        for index, backend in enumerate(backends):
            if parse_address(backend.address).kind == "unix":
                self.problem(
                    join_key(join_key(where, "tls"), "server_name"),
                    f"required when a backend is a UNIX socket, as backends[{index}] "
                    f"({backend.address!r}) is: it has no host name to verify its "
                    'certificate against; add server_name = "app.internal", a name that the '
                    "backends' certificates are for",
                )
                return

    def server_name(self, table: Mapping[str, object], where: str) -> str | None:
        """
        A pool's ``server_name``: a DNS name or an IP address, as :func:`_server_name_problem`
        allows; kept as written.
        """
        name = self.string(table, "server_name", where)
        if name is None:
            return None
        problem = _server_name_problem(name)
        if problem is not None:
            self.problem(join_key(where, "server_name"), problem)
            return None
        return name

    def file_path(self, table: Mapping[str, object], key: str, where: str) -> str | None:
        """
        A path to a file of a ``tls`` table: a non-empty string, returned as an absolute path,
        resolved against the directory of the config file when relative. Whether the file is
        usable is for :mod:`twisted_lb.tls` to say.
        """
        path = self.string(table, key, where)
        if path is None:
            return None
        if not path:
            self.problem(
                join_key(where, key),
                f"must not be empty; write a path, as in {key} = " + _FILE_EXAMPLES[key],
            )
            return None
        if "\0" in path:
            self.problem(join_key(where, key), f"{path!r}: a path cannot contain NUL characters")
            return None
        return os.path.abspath(os.path.join(self.directory, path))

    def certificate_files(self, cert: str, key: str, cert_where: str, key_where: str) -> None:
        """
        Report what :func:`twisted_lb.tls.certificate_problem` finds wrong with a certificate
        and its key: on ``key_where`` when it is about the key file, else on ``cert_where``.
        """
        from twisted_lb.tls import certificate_problem

        problem = certificate_problem(cert, key)
        if problem is not None:
            self.file_problem(key_where if _about_key(problem, cert, key) else cert_where, problem)

    def file_problem(self, where: str, problem: str | None) -> None:
        if problem is not None:
            self.problem(where, problem)

    # -- pools

    def pool(self, name: str, raw: object) -> PoolConfig | None:
        where = join_key("pools", name)
        if not isinstance(raw, Mapping):
            self.problem(where, f"must be a table, as in [{where}], not {_describe(raw)}")
            return None
        before = len(self.problems)
        self.check_keys(raw, where, _POOL_KEYS, ())

        strategy = self.strategy(raw, where)
        options = self.strategy_options(raw, where)
        if strategy is not None and options:
            options = self.check_strategy_options(strategy, options, where)
        connect_timeout = self.seconds(raw, "connect_timeout", where, 5.0)
        retries = self.integer(raw, "retries", where, 2, minimum=0)
        response_timeout = self.seconds(raw, "response_timeout", where, 60.0)
        upstream_idle_timeout = self.seconds(raw, "upstream_idle_timeout", where, 4.0)
        max_idle = self.integer(raw, "max_idle_per_backend", where, 128, minimum=0)
        backends = self.backends(name, raw, where)
        health_check = self.health_check(raw, where)
        outlier_detection = self.outlier_detection(raw, where)
        panic = self.boolean(raw, "panic", where, False)
        slow_start = self.seconds(raw, "slow_start", where, 0.0, zero_means="off")
        tls = self.pool_tls(raw, where)
        if tls is not None and backends is not None:
            self.tls_server_names(tls, backends, where)

        if (
            len(self.problems) > before
            or strategy is None
            or options is None
            or connect_timeout is None
            or retries is None
            or response_timeout is None
            or upstream_idle_timeout is None
            or max_idle is None
            or backends is None
            or panic is None
            or slow_start is None
        ):
            return None
        return PoolConfig(
            name=name,
            backends=backends,
            strategy=strategy,
            strategy_options=options,
            connect_timeout=connect_timeout,
            retries=retries,
            response_timeout=response_timeout,
            upstream_idle_timeout=upstream_idle_timeout,
            max_idle_per_backend=max_idle,
            health_check=health_check,
            outlier_detection=outlier_detection,
            panic=panic,
            slow_start=slow_start,
            tls=tls,
        )

    def sub_table(
        self, raw: Mapping[str, object], key: str, where: str, when_true: str | None = None
    ) -> Mapping[str, object] | None:
        """
        An optional table of a pool or a frontend, such as ``health_check``: ``None`` when
        absent or not a table (which is a problem). ``key = true`` is told to write
        ``key = {}`` for the defaults, or ``when_true`` when the table has no defaults.
        """
        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, Mapping):
            return value
        message = f"must be a table, as in [{join_key(where, key)}], not {_describe(value)}"
        if value is True:
            message += f"; {when_true or f'write {key} = {{}} for the defaults'}"
        elif value is False:
            message += f"; leave {key} out for none"
        self.problem(join_key(where, key), message)
        return None

    def health_check(self, raw: Mapping[str, object], where: str) -> HealthCheckConfig | None:
        """
        ``[pools.NAME.health_check]``, or ``None`` when absent (or on a problem). The keys of
        ``http`` checks are problems in a ``tcp`` check, which keeps their defaults; when
        ``kind`` is invalid they are checked as for ``http``.
        """
        table = self.sub_table(raw, "health_check", where)
        if table is None:
            return None
        where = join_key(where, "health_check")
        before = len(self.problems)
        self.check_keys(table, where, _HEALTH_CHECK_KEYS, ())

        kind: str | None = "tcp"
        if "kind" in table:
            kind = self.string(table, "kind", where)
            if kind is not None and kind not in _CHECK_KINDS:
                self.problem(
                    join_key(where, "kind"),
                    f"unknown kind {kind!r}" + _suggest(kind, _CHECK_KINDS, "valid kinds"),
                )
                kind = None
        interval = self.seconds(table, "interval", where, 2.0)
        timeout = self.seconds(table, "timeout", where, 1.0)
        rise = self.integer(table, "rise", where, 2, minimum=1)
        fall = self.integer(table, "fall", where, 3, minimum=1)
        down_interval: float | None = None
        if "down_interval" in table:
            down_interval = self.seconds(table, "down_interval", where, 0.0)
        jitter = self.jitter(table, where)

        path: str | None = "/"
        host: str | None = None
        expect_status: tuple[int, int] | None = (200, 399)
        expect_body: str | None = None
        if kind == "tcp":
            for key in _HTTP_CHECK_KEYS:
                if key in table:
                    self.problem(join_key(where, key), _ONLY_HTTP_CHECK)
        else:
            if "path" in table:
                path = self.check_path(table, where)
            if "host" in table:
                host = self.check_host(table, where)
            if "expect_status" in table:
                expect_status = self.expect_status(table, where)
            if "expect_body" in table:
                expect_body = self.expect_body(table, where)

        if (
            len(self.problems) > before
            or kind is None
            or interval is None
            or timeout is None
            or rise is None
            or fall is None
            or jitter is None
            or path is None
            or expect_status is None
        ):
            return None
        return HealthCheckConfig(
            kind=kind,
            interval=interval,
            timeout=timeout,
            rise=rise,
            fall=fall,
            down_interval=down_interval,
            jitter=jitter,
            path=path,
            host=host,
            expect_status=expect_status,
            expect_body=expect_body,
        )

    def jitter(self, table: Mapping[str, object], where: str) -> float | None:
        """
        A health check's ``jitter``: a fraction of the interval, 0 <= jitter < 1.
        """
        if "jitter" not in table:
            return 0.1
        value = table["jitter"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            found = _describe(value)
        elif not 0 <= value < 1:
            found = repr(value)
        else:
            return float(value)
        self.problem(
            join_key(where, "jitter"),
            "must be a fraction of the interval, at least 0 and less than 1, "
            f"as in jitter = 0.1, not {found}",
        )
        return None

    def check_path(self, table: Mapping[str, object], where: str) -> str | None:
        """
        An http check's ``path``: the request target, as :func:`_check_path_problem` allows.
        """
        path = self.string(table, "path", where)
        if path is None:
            return None
        problem = _check_path_problem(path)
        if problem is not None:
            self.problem(join_key(where, "path"), problem)
            return None
        return path

    def check_host(self, table: Mapping[str, object], where: str) -> str | None:
        """
        An http check's ``host``: a host name or IP address, with an optional port.
        """
        host = self.string(table, "host", where)
        if host is None:
            return None
        problem = _check_host_problem(host)
        if problem is not None:
            self.problem(join_key(where, "host"), problem)
            return None
        return host

    def expect_status(self, table: Mapping[str, object], where: str) -> tuple[int, int] | None:
        """
        An http check's ``expect_status``: ``"200-399"``, ``"200"`` or ``200``, as the lowest
        and highest passing codes, each from 100 to 599.
        """
        value = table["expect_status"]
        key = join_key(where, "expect_status")
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.problem(
                key,
                f"must be a status code or a range, as in {_STATUS_EXAMPLES}, "
                f"not {_describe(value)}",
            )
            return None
        problem = _status_problem(value)
        if problem is not None:
            self.problem(key, problem)
            return None
        if isinstance(value, int):
            return (value, value)
        match = _STATUS_RANGE.fullmatch(value)
        assert match is not None
        low = int(match["low"])
        return (low, int(match["high"] or low))

    def expect_body(self, table: Mapping[str, object], where: str) -> str | None:
        """
        An http check's ``expect_body``: a Python regular expression that compiles.
        """
        pattern = self.string(table, "expect_body", where)
        if pattern is None:
            return None
        key = join_key(where, "expect_body")
        if not pattern:
            self.problem(key, "must not be empty; leave expect_body out to accept any body")
            return None
        try:
            re.compile(pattern)
        except re.error as e:
            error = str(e)
        except OverflowError as e:  # a{4294967296}
            error = str(e)
        except RecursionError:
            error = "nested too deeply"
        else:
            return pattern
        self.problem(
            key,
            f"not a valid Python regular expression ({error}); fix it, or put a backslash "
            "before each character meant literally, as in expect_body = '\\(ok\\)'",
        )
        return None

    def outlier_detection(
        self, raw: Mapping[str, object], where: str
    ) -> OutlierDetectionConfig | None:
        """
        ``[pools.NAME.outlier_detection]``, or ``None`` when absent (or on a problem).
        ``max_ejection_time`` below ``base_ejection_time`` is a problem on the former, even
        when it is the default.
        """
        table = self.sub_table(raw, "outlier_detection", where)
        if table is None:
            return None
        where = join_key(where, "outlier_detection")
        before = len(self.problems)
        self.check_keys(table, where, _OUTLIER_KEYS, ())
        failures = self.integer(table, "consecutive_failures", where, 5, minimum=1)
        base = self.seconds(table, "base_ejection_time", where, 30.0)
        cap = self.seconds(table, "max_ejection_time", where, 300.0)
        percent = self.integer(table, "max_ejection_percent", where, 50, minimum=0, maximum=100)
        count_5xx = self.boolean(table, "count_5xx", where, False)
        uneject = self.boolean(table, "uneject_on_passing_check", where, True)
        if base is not None and cap is not None and cap < base:
            base_written = table.get("base_ejection_time", base)
            if "max_ejection_time" in table:
                message = (
                    f"must be >= base_ejection_time ({base_written!r}), "
                    f"not {table['max_ejection_time']!r}; raise it or lower base_ejection_time"
                )
            else:
                message = (
                    f"is {cap!r} by default, below base_ejection_time ({base_written!r}); "
                    f"add max_ejection_time = {base_written!r} or more, "
                    "or lower base_ejection_time"
                )
            self.problem(join_key(where, "max_ejection_time"), message)
        if (
            len(self.problems) > before
            or failures is None
            or base is None
            or cap is None
            or percent is None
            or count_5xx is None
            or uneject is None
        ):
            return None
        return OutlierDetectionConfig(
            consecutive_failures=failures,
            base_ejection_time=base,
            max_ejection_time=cap,
            max_ejection_percent=percent,
            count_5xx=count_5xx,
            uneject_on_passing_check=uneject,
        )

    def strategy(self, raw: Mapping[str, object], where: str) -> str | None:
        """
        ``strategy``: the name of an installed strategy. The default, ``round_robin``, is
        built in and not looked up.
        """
        if "strategy" not in raw:
            return "round_robin"
        strategy = self.string(raw, "strategy", where)
        if strategy is None:
            return None
        installed = self.installed_strategies()
        if strategy in installed:
            return strategy
        close = difflib.get_close_matches(strategy, installed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.problem(
            join_key(where, "strategy"),
            f"strategy {strategy!r} is not installed{hint}; "
            f"installed strategies are: {_quote_list(installed)}",
        )
        return None

    def check_strategy_options(
        self, strategy: str, options: Mapping[str, object], where: str
    ) -> Mapping[str, object] | None:
        """
        Let the strategy's factory judge its options (it raises ValueError naming a bad one).
        The strategy made for the check is thrown away.
        """
        from twisted_lb.strategies import get_strategy

        try:
            get_strategy(strategy, options)
        except ValueError as e:
            self.problem(join_key(where, "strategy_options"), f"{e}; fix or remove it")
            return None
        return options

    def strategy_options(
        self, raw: Mapping[str, object], where: str
    ) -> Mapping[str, object] | None:
        if "strategy_options" not in raw:
            return _empty_options()
        value = raw["strategy_options"]
        if not isinstance(value, Mapping):
            self.problem(
                join_key(where, "strategy_options"),
                f"must be a table, as in strategy_options = {{}}, not {_describe(value)}",
            )
            return None
        return _freeze_options(value)

    def backends(
        self, pool_name: str, raw: Mapping[str, object], where: str
    ) -> tuple[BackendConfig, ...] | None:
        key = join_key(where, "backends")
        if "backends" not in raw:
            self.problem(key, _MISSING + _BACKENDS_EXAMPLE)
            return None
        value = raw["backends"]
        if not isinstance(value, list | tuple):
            self.problem(
                key,
                f"must be an array of tables, as in {_BACKENDS_EXAMPLE}, not {_describe(value)}",
            )
            return None
        if not value:
            self.problem(key, f"must list at least one backend, as in {_BACKENDS_EXAMPLE}")
            return None

        backends: list[BackendConfig] = []
        ok = True
        names: dict[str, str] = {}
        addresses: dict[Address, str] = {}
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            default_name = f"{pool_name}{index + 1}"
            backend = self.backend(default_name, item, item_key)
            if backend is None:
                ok = False
            else:
                backends.append(backend)
            if not isinstance(item, Mapping):
                continue
            # Duplicates are checked on whatever parts of the backend are usable, so that they
            # are reported together with the backend's other problems.
            name = item.get("name", default_name)
            if isinstance(name, str) and name:
                if name in names:
                    name_key = join_key(item_key, "name") if "name" in item else item_key
                    self.problem(
                        name_key,
                        f"backend name {name!r} is already used by {names[name]}; "
                        "give each backend a unique name",
                    )
                    ok = False
                else:
                    names[name] = item_key
            address = _address_or_none(item.get("address"))
            if address is not None:
                if address in addresses:
                    self.problem(
                        join_key(item_key, "address"),
                        f"{item['address']!r} is already used by {addresses[address]}; "
                        "list each backend once and give it a higher weight instead",
                    )
                    ok = False
                else:
                    addresses[address] = item_key
        return tuple(backends) if ok else None

    def backend(self, default_name: str, raw: object, where: str) -> BackendConfig | None:
        if not isinstance(raw, Mapping):
            self.problem(
                where,
                f'must be a table, as in {{ address = "127.0.0.1:9001" }}, not {_describe(raw)}',
            )
            return None
        before = len(self.problems)
        self.check_keys(raw, where, _BACKEND_KEYS, ())

        address: str | None = None
        if "address" not in raw:
            self.problem(join_key(where, "address"), _MISSING + 'address = "127.0.0.1:9001"')
        else:
            address = self.string(raw, "address", where)
            if address is not None:
                try:
                    parse_address(address)
                except ValueError as e:
                    self.problem(join_key(where, "address"), str(e))
                    address = None

        name: str | None = default_name
        if "name" in raw:
            name = self.string(raw, "name", where)
            if name == "":
                self.problem(
                    join_key(where, "name"),
                    f"must not be empty; leave it out to use {default_name!r}",
                )
                name = None

        weight = self.integer(raw, "weight", where, 1, minimum=1)

        backup = raw.get("backup", False)
        if not isinstance(backup, bool):
            self.problem(
                join_key(where, "backup"), f"must be true or false, not {_describe(backup)}"
            )

        state: str | None = "ready"
        if "state" in raw:
            state = self.string(raw, "state", where)
            if state is not None and state not in _BACKEND_STATES:
                self.problem(
                    join_key(where, "state"),
                    f"unknown state {state!r}" + _suggest(state, _BACKEND_STATES, "valid states"),
                )
                state = None

        if (
            len(self.problems) > before
            or address is None
            or name is None
            or weight is None
            or state is None
        ):
            return None
        return BackendConfig(
            address=address, name=name, weight=weight, backup=bool(backup), state=state
        )


def _address_or_none(text: object) -> Address | None:
    """
    The parsed address, or ``None`` if ``text`` is not a valid address string.
    """
    if not isinstance(text, str):
        return None
    try:
        return parse_address(text)
    except ValueError:
        return None


def _host_problem(host: str) -> str | None:
    """
    What is wrong with a route's ``host``, or ``None`` if it is an exact name (letters,
    digits, ``-`` and ``_`` in dot-separated labels, which covers IPv4 addresses), an IPv6
    address in brackets, or ``*.`` followed by an exact name.
    """
    if not host:
        return f"must not be empty; write {_HOST_EXAMPLES}, or leave host out to match any host"
    if "://" in host:
        name = host.split("://", 1)[1].split("/", 1)[0] or "api.example.com"
        return f"write the host name only, without the scheme, as in {name!r}"
    if "/" in host:
        name = host.split("/", 1)[0] or "api.example.com"
        return (
            f"write the host name only, as in {name!r}, and the path in path_prefix; "
            "the host has no path"
        )
    port = _HOST_PORT.fullmatch(host)
    if port is not None:
        return (
            f"routes match the name without the port; write {port['host']!r} "
            "to match it on any port"
        )
    if host.startswith("["):
        if host.endswith("]") and _is_ipv6(host[1:-1]):
            return None
        return f"{host!r} is not an IPv6 address in brackets, as in '[2001:db8::1]'"
    if ":" in host:
        if _is_ipv6(host):
            return f"write IPv6 addresses in brackets, as in {f'[{host}]'!r}"
        return f"{host!r} is not a host name; write {_HOST_EXAMPLES}"
    if "*" in host:
        if host.startswith("*.") and _HOST_NAME.fullmatch(host[2:]):
            return None
        return (
            f"{host!r}: '*' is allowed only as the whole first label, "
            "as in '*.example.com', which matches any name ending in '.example.com'"
        )
    if _HOST_NAME.fullmatch(host):
        return None
    return f"{host!r} is not a host name; write {_HOST_EXAMPLES}"


def _server_name_problem(name: str) -> str | None:
    """
    What is wrong with a pool's ``server_name``, or ``None`` if it is a DNS name (labels of
    letters, digits, ``-`` and ``_``, as :data:`_HOST_NAME` allows, at most 63 characters
    each and 253 in all) or an IP address, IPv6 without brackets. There is no port, scheme,
    path or wildcard: it is the one name the backends' certificates are verified against.
    """
    if not name:
        return (
            f"must not be empty; write a name such as {_SERVER_NAME_EXAMPLES}, "
            "or leave server_name out to verify each backend's host"
        )
    if "://" in name:
        host = name.split("://", 1)[1].split("/", 1)[0] or "app.internal"
        return f"write the name only, without the scheme, as in {host!r}"
    if "/" in name:
        return f"write the name only, as in {name.split('/', 1)[0] or 'app.internal'!r}"
    if name.startswith("[") and name.endswith("]") and _is_ipv6(name[1:-1]):
        return f"write the IPv6 address without brackets, as in {name[1:-1]!r}"
    if _is_ipv6(name):
        return None
    port = _HOST_PORT.fullmatch(name)
    if port is not None:
        host = port["host"].strip("[]")
        return (
            f"write the name without the port, as in {host!r}; "
            "the port is the backend's, in its address"
        )
    if "*" in name:
        return (
            f"{name!r}: write the one name the backends' certificates are for, without '*'; "
            "a certificate for '*.example.com' is verified as, for example, 'app.example.com'"
        )
    if not name.isascii():
        try:
            ascii_name = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_name = ""
        if _HOST_NAME.fullmatch(ascii_name):
            return f"write the name in ASCII (IDNA), as in {ascii_name!r}"
        return f"{name!r} is not a host name; write {_SERVER_NAME_EXAMPLES}"
    if not _HOST_NAME.fullmatch(name):
        return f"{name!r} is not a host name; write {_SERVER_NAME_EXAMPLES}"
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return (
            f"{name!r} is too long for a DNS name (at most 63 characters between dots, 253 in all)"
        )
    return None


def _about_key(problem: str, cert: str, key: str) -> bool:
    """
    Whether a problem that :func:`twisted_lb.tls.certificate_problem` found is about the key
    file rather than the certificate file. Its messages start with the file they are about
    (``"cannot read PATH: ..."``, ``"PATH: ..."``), and a key that does not match its
    certificate is the key's problem (``"KEY does not match the certificate in CERT"``).
    When both are one file, only the messages about the private key are the key's.
    """
    if problem.startswith(f"{key} does not match "):
        return True
    if cert == key:
        return "private key" in problem
    return problem.startswith((f"cannot read {key}: ", f"{key}: "))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _path_prefix_problem(prefix: str) -> str | None:
    """
    What is wrong with a route's ``path_prefix``, or ``None`` if it is usable.
    """
    if not prefix.startswith("/"):
        if "://" in prefix:
            return "write the path only, without scheme and host; put the host name in host"
        return f"must start with '/', as in {'/' + prefix!r}"
    for char in "?#":
        if char in prefix:
            cut = prefix[: prefix.index(char)]
            return (
                "routes match the path without the query or fragment; "
                f"write {cut!r}, without the part from {char!r} on"
            )
    if not all("!" <= char <= "~" for char in prefix):
        encoded = urllib.parse.quote(prefix, safe="/%!$&'()*+,;=:@[]")
        return (
            f"{prefix!r}: write the path as requests carry it, in ASCII without spaces, "
            f"as in {encoded!r}"
        )
    return None


def _check_path_problem(path: str) -> str | None:
    """
    What is wrong with an http check's ``path``, or ``None`` if it is a request target: it
    starts with ``/``, is printable ASCII (no spaces or control characters) and has no
    fragment. A query is allowed.
    """
    if not path.startswith("/"):
        if "://" in path:
            return "write the path only, without scheme and host; put the host name in host"
        return f"must start with '/', as in {'/' + path!r}"
    if "#" in path:
        cut = path[: path.index("#")]
        return f"a request has no fragment; write {cut!r}, without the part from '#' on"
    if not all("!" <= char <= "~" for char in path):
        encoded = urllib.parse.quote(path, safe="/%!$&'()*+,;=:@[]?~")
        return (
            f"{path!r}: write the path as requests carry it, in ASCII without spaces, "
            f"as in {encoded!r}"
        )
    return None


def _check_host_problem(host: str) -> str | None:
    """
    What is wrong with an http check's ``host`` (its ``Host`` header), or ``None`` if it is a
    host name or IPv4 address (as :data:`_HOST_NAME` allows), or an IPv6 address in brackets,
    either with an optional ``:port`` from 1 to 65535.
    """
    if not host:
        return (
            f"must not be empty; write {_CHECK_HOST_EXAMPLES}, "
            "or leave host out to send the backend's address"
        )
    if "://" in host:
        name = host.split("://", 1)[1].split("/", 1)[0] or "app.internal"
        return f"write the host name only, without the scheme, as in {name!r}"
    if "/" in host:
        name = host.split("/", 1)[0] or "app.internal"
        return f"write the host name only, as in {name!r}, and the path in path"
    port: str | None = None
    if host.startswith("["):
        name, close, rest = host[1:].partition("]")
        if not close or not _is_ipv6(name) or (rest and not rest.startswith(":")):
            return f"{host!r} is not an IPv6 address in brackets, as in '[2001:db8::1]'"
        if rest:
            port = rest[1:]
    elif host.count(":") > 1:
        if _is_ipv6(host):
            return f"write IPv6 addresses in brackets, as in {f'[{host}]'!r}"
        return f"{host!r} is not a host name; write {_CHECK_HOST_EXAMPLES}"
    else:
        name, colon, rest = host.partition(":")
        if not _HOST_NAME.fullmatch(name):
            return f"{host!r} is not a host name; write {_CHECK_HOST_EXAMPLES}"
        if colon:
            port = rest
    if port is not None and not (
        port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    ):
        return f"port {port!r} in {host!r} is not a number from 1 to 65535"
    return None


def _status_problem(status: int | str) -> str | None:
    """
    What is wrong with an http check's ``expect_status``, or ``None`` if it is a status code
    (an integer or a string of one) or a range ``"LOW-HIGH"`` of them, each from 100 to 599,
    with LOW <= HIGH.
    """
    if isinstance(status, int):
        if 100 <= status <= 599:
            return None
        return (
            f"{status!r} is not an HTTP status code (100 to 599); "
            f"write one as in {_STATUS_EXAMPLES}"
        )
    match = _STATUS_RANGE.fullmatch(status)
    if match is None:
        status_class = _STATUS_CLASS.fullmatch(status)
        if status_class is not None:
            digit = status_class["digit"]
            return (
                f"{status!r}: write a class of codes as a range, "
                f'as in expect_status = "{digit}00-{digit}99"'
            )
        return f"{status!r} is not a status code or a range; write one as in {_STATUS_EXAMPLES}"
    codes = [match["low"]] if match["high"] is None else [match["low"], match["high"]]
    for code in codes:
        if len(code) != 3 or not 100 <= int(code) <= 599:
            within = f" in {status!r}" if len(codes) == 2 else ""
            return (
                f"{code!r}{within} is not an HTTP status code (100 to 599); "
                f"write one as in {_STATUS_EXAMPLES}"
            )
    if len(codes) == 2 and int(codes[0]) > int(codes[1]):
        return (
            f"{status!r} is an empty range; write the lowest code first, "
            f'as in expect_status = "{codes[1]}-{codes[0]}"'
        )
    return None


def _toml_string(text: str) -> str:
    """
    ``text`` as a TOML basic string, for key paths and examples in messages.

    Characters that are not printable (including line breaks such as U+2028) are escaped, so
    that each problem stays on one line.
    """
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


# -- summary -----------------------------------------------------------------------------------


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
    Undo :func:`_freeze` for display: read-only tables become dicts and tuples lists.
    """
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value
