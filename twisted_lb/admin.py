"""
The admin API: JSON over HTTP on the ``[admin]`` listeners, served by twisted.web, off the data
path.

Everything is under ``/api/v1/`` (see docs/operations.rst for the reference):

- ``GET status``, ``GET frontends``, ``GET pools``, ``GET pools/{pool}``,
  ``GET pools/{pool}/backends/{backend}``: what runs now;
- ``PATCH pools/{pool}/backends/{backend}`` with ``{"state": "ready"|"drain"|"maint",
  "weight": N}``: HAProxy's ``set server state`` and ``set server weight``;
- ``POST pools/{pool}/backends``: add a backend (HAProxy's ``add server``); ``DELETE
  pools/{pool}/backends/{backend}``: remove one once it has drained (``del server``);
- ``POST reload``: read the config file again and apply the difference.

Reads need no token, as Envoy's admin endpoint and HAProxy's stats page without ``stats auth``;
mutating calls (``PATCH``, ``POST``, ``DELETE``) need the bearer token of ``token_file`` when
one is configured, and are refused with 401 and a log event without it. After each accepted
mutating call the runtime changes in force are written to ``state_file`` (write to a temporary
file, then rename), and they are restored when the balancer starts again, as HAProxy's
``server-state-file``.

The root also serves ``/metrics`` (:mod:`twisted_lb.metrics`), and ``/`` and ``/dashboard/``
(:mod:`twisted_lb.dashboard`), which need no token either.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

from twisted.application.service import MultiService
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_lb import __version__
from twisted_lb import _compat as compat
from twisted_lb._address import is_host_name
from twisted_lb.backend import Backend, BackendState
from twisted_lb.config import (
    MAX_WEIGHT,
    AdminConfig,
    Config,
    ConfigError,
    Problem,
    weight_problem,
)
from twisted_lb.dashboard import DashboardResource, dashboard_page
from twisted_lb.interfaces import IBalancerReactor
from twisted_lb.metrics import MetricsResource, Observed, metrics_registry, strategy_name
from twisted_lb.pool import Pool
from twisted_lb.service import ListeningService

_log = Logger()


class Balancer(Observed, Protocol):
    """
    What the admin API uses of :class:`~twisted_lb.service.LoadBalancerService`: what the
    metrics read (:class:`~twisted_lb.metrics.Observed`), and the config, the health
    monitors, the listeners, the reload and the runtime changes (their errors:
    ``UnknownPool`` and ``UnknownBackend`` are answered 404, ``InvalidChange`` 400).
    """

    @property
    def config(self) -> Config: ...
    @property
    def monitors(self) -> Mapping[str, Any]: ...
    @property
    def listeners(self) -> Sequence[Any]: ...
    def reload(self, path: str | None = None) -> Any: ...
    def set_backend_state(self, pool: str, backend: str, state: str) -> None: ...
    def set_backend_weight(self, pool: str, backend: str, weight: int) -> None: ...
    def add_backend(
        self,
        pool: str,
        address: str,
        name: str | None = None,
        weight: int = 1,
        backup: bool = False,
    ) -> Backend: ...
    def remove_backend(self, pool: str, backend: str) -> None: ...
    def runtime_state(self) -> Mapping[str, object]: ...
    def restore_runtime_state(self, state: Mapping[str, object]) -> list[str]: ...


#: The largest request body the API reads, in bytes; a larger one is answered 413.
MAX_BODY_BYTES = 65536

#: Seconds an admin connection may stay idle, or take to send its request.
ADMIN_TIMEOUT = 60.0

#: The admin states a backend may be given, as HAProxy's ``set server state``.
ADMIN_STATES = ("ready", "drain", "maint")

#: The version of the state file's layout.
STATE_FILE_FORMAT = 1

_STATE_NAMES = {
    BackendState.UP: "ready",
    BackendState.DRAINING: "drain",
    BackendState.MAINT: "maint",
}
_MUTATING = (b"POST", b"PATCH", b"PUT", b"DELETE")


def read_token(path: str) -> str:
    """
    The bearer token of a ``token_file``: its first line, without surrounding whitespace.

    Raises:
        OSError: the file cannot be read.
        ValueError: its first line is empty or not ASCII.
    """
    with open(path, "rb") as f:
        first = f.read(4096).partition(b"\n")[0].strip()
    if not first:
        raise ValueError(f"{path} is empty; write the token on its first line")
    try:
        return first.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the token must be ASCII text") from None


def check_token(request: Request, token: str | None) -> bool:
    """
    Whether a request carries the bearer token (``Authorization: Bearer TOKEN``, RFC 6750
    §2.1), compared in constant time. With no token configured (``None``) every request passes.
    """
    if token is None:
        return True
    header = request.getHeader(b"authorization")
    if header is None:
        return False
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(value.strip(), token.encode("ascii"))


class APIError(Exception):
    """
    A request the API refuses: the status and a JSON body ``{"error": message, ...}``.

    Args:
        status: the HTTP status code.
        message: what is wrong and how to fix it.
        headers: more response headers (``Allow``, ``WWW-Authenticate``).
        **details: more members of the JSON body (``accepted``, ``problems``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[bytes, bytes] | None = None,
        **details: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.details = details


def host_allowed(host: bytes, allowed: Sequence[str] = ()) -> bool:
    """
    Whether a ``Host`` header value names the admin listener by an IP literal (``127.0.0.1``,
    ``[::1]``, with or without a port), as ``localhost``, or by a name of ``allowed`` (the
    ``[admin] allowed_hosts`` entries: ``lb1.internal``, or ``.internal`` for that name and
    every name under it; any port, any case, a trailing dot or none). Any other name may be a
    DNS rebinding: a page of ``evil.example`` whose name now resolves to 127.0.0.1 sends its
    own name as the Host (the allow-list of Host values, as Kubernetes' and Envoy's admin
    guidance, Django's ``ALLOWED_HOSTS`` and the webpack dev server's ``allowedHosts`` do).
    """
    text = host.strip().lower().decode("latin-1")
    bracketed = text.startswith("[")
    if bracketed:
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return False
    else:
        literal, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
        if colon and not port.isdigit():
            return False
    if literal in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        name = literal.removesuffix(".")
        if bracketed or not is_host_name(name):  # only a name DNS could resolve
            return False
        for entry in allowed:
            entry = entry.lower().removesuffix(".")
            if name == entry.removeprefix(".") or (entry[:1] == "." and name.endswith(entry)):
                return True
        return False
    return True


def _origin_refusal(request: Request) -> tuple[int, str] | None:
    """
    Why a request is refused before any resource sees it (DNS rebinding, cross-site requests),
    as the status and the reason, or ``None``.
    """
    host = request.getHeader(b"host")
    over_unix = getattr(request.getHost(), "host", None) is None
    allowed = getattr(request.channel.site, "allowed_hosts", ())  # type: ignore[attr-defined]
    if host is not None and not over_unix and not host_allowed(host, allowed):
        return (
            421,
            f"Host {host.decode('latin-1')!r} is not this admin listener's address: "
            "use its IP address (http://127.0.0.1:PORT/) or localhost, or add the name to "
            "[admin] allowed_hosts",
        )
    origin = request.getHeader(b"origin")
    if origin is not None:
        scheme = b"https://" if request.isSecure() else b"http://"
        if host is None or origin.strip().lower() != scheme + host.strip().lower():
            return (
                403,
                f"cross-origin request refused: Origin {origin.decode('latin-1')!r} is not "
                "this admin listener's own origin",
            )
    return None


class AdminRequest(Request):
    """
    A twisted.web request that keeps at most :data:`MAX_BODY_BYTES` of its body: the rest is
    read and dropped, and :attr:`too_large` is set, so that the API answers 413 and closes
    the connection after the answer.

    Every response says it may not be framed (``X-Frame-Options: DENY``, CSP
    ``frame-ancestors 'none'``); a request whose ``Host`` is not an IP literal,
    ``localhost`` or one of the site's ``allowed_hosts`` (on TCP; a UNIX socket has no Host
    check) is answered 421, one whose ``Origin`` is another site's 403, before any resource
    sees it (see :func:`host_allowed`).
    """

    too_large = False
    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse_body()
            length = 0
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY_BYTES:
            self._refuse_body()
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def process(self) -> None:
        self.setHeader(b"x-frame-options", b"DENY")  # type: ignore[no-untyped-call]
        self.setHeader(  # type: ignore[no-untyped-call]
            b"content-security-policy", b"frame-ancestors 'none'"
        )
        refusal = _origin_refusal(self)
        if refusal is None:
            super().process()  # type: ignore[no-untyped-call]
            return
        status, reason = refusal
        _log.warn(
            "admin API: refused {method} {path} from {client}: {reason}",
            method=(self.method or b"").decode("latin-1"),
            path=(self.path or b"").decode("latin-1"),
            client=_client(self),
            reason=reason,
        )
        self.site = self.channel.site  # type: ignore[attr-defined]
        self.setResponseCode(status)
        self.setHeader(b"content-type", b"application/json")  # type: ignore[no-untyped-call]
        self.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        self.write(_json({"error": reason, "status": status}))  # type: ignore[no-untyped-call]
        self.finish()  # type: ignore[no-untyped-call]

    def _refuse_body(self) -> None:
        self.too_large = True
        # The channel closes after this response (HTTPChannel.requestDone), and says so.
        self.channel.persistent = False
        self.responseHeaders.setRawHeaders(b"connection", [b"close"])


class AdminSite(Site):
    """
    The admin API's site: :class:`AdminRequest`, no access log line per request.

    Attributes:
        allowed_hosts: the host names a TCP request's ``Host`` may give besides IP literals
            and ``localhost`` (``[admin] allowed_hosts``; see :func:`host_allowed`).
    """

    noisy = False
    requestFactory = AdminRequest
    allowed_hosts: Sequence[str] = ()

    def log(self, request: Any) -> None:
        pass


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=False).encode() + b"\n"


def _path_segment(segment: bytes) -> str:
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(404, "not found: a path segment is not UTF-8") from None


def _not_allowed(method: bytes, allowed: tuple[str, ...]) -> NoReturn:
    raise APIError(
        405,
        f"method {method.decode('latin-1')} not allowed here; allowed: {', '.join(allowed)}",
        {b"Allow": ", ".join(allowed).encode()},
        allowed=list(allowed),
    )


class APIResource(Resource):
    """
    ``/api/v1/``: every endpoint of the admin API, dispatched on the path after it.

    Args:
        service: the running balancer.
        token: the bearer token mutating calls need, or ``None``.
        saved: called after each accepted mutating call (the admin service writes the state
            file); returns a warning to add to the response, or ``None``.
        reloaded: called after a reload was applied.
    """

    isLeaf = True

    def __init__(
        self,
        service: Balancer,
        token: str | None,
        saved: Callable[[], str | None] | None = None,
        reloaded: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.service = service
        self.token = token
        self.saved = saved
        self.reloaded = reloaded

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        method = request.method or b"GET"
        try:
            status, body = self._dispatch(request, method)
        except APIError as e:
            status = e.status
            body = {"error": e.message, "status": e.status, **e.details}
            for name, value in e.headers.items():
                request.setHeader(name, value)
        except Exception:
            _log.failure("admin API: {method} {path} failed", method=method, path=request.path)
            status, body = 500, {"error": "internal error; see the balancer's log", "status": 500}
        request.setResponseCode(status)
        return _json(body)  # twisted.web sends no body in answer to HEAD

    # -- dispatch

    def _dispatch(self, request: Request, method: bytes) -> tuple[int, object]:
        segments = list(request.postpath or [])
        if segments and segments[-1] == b"":
            segments.pop()
        path = [_path_segment(s) for s in segments]
        handlers = self._route(path)
        if handlers is None:
            raise APIError(
                404,
                f"no such endpoint /api/v1/{'/'.join(path)}; see docs/operations.rst",
            )
        allowed = tuple(handlers)
        name = method.decode("latin-1")
        if name == "HEAD" and "GET" in handlers:
            name = "GET"
        handler = handlers.get(name)
        if handler is None:
            _not_allowed(method, allowed)
        if method in _MUTATING:
            content_type = request.getHeader(b"content-type") or b""
            if content_type.partition(b";")[0].strip().lower() != b"application/json":
                raise APIError(
                    415,
                    f"{name} needs Content-Type: application/json (even with no body), so that "
                    "a web page cannot send it cross-site; got "
                    + (repr(content_type.decode("latin-1")) if content_type else "none"),
                    accepted=["application/json"],
                )
            if not check_token(request, self.token):
                self._refuse(request, method)
            if getattr(request, "too_large", False):
                raise APIError(
                    413,
                    f"the request body is larger than {MAX_BODY_BYTES} bytes",
                    limit=MAX_BODY_BYTES,
                )
            status, body = handler(request)
            if 200 <= status < 300 and self.saved is not None:
                warning = self.saved()
                if warning is not None and isinstance(body, dict):
                    body["warning"] = warning
            return status, body
        return handler(request)

    def _route(self, path: list[str]) -> dict[str, Callable[[Request], tuple[int, object]]] | None:
        match path:
            case ["status"]:
                return {"GET": lambda r: (200, self.status())}
            case ["frontends"]:
                return {"GET": lambda r: (200, {"frontends": self.frontends()})}
            case ["pools"]:
                return {"GET": lambda r: (200, {"pools": self.pools()})}
            case ["pools", pool]:
                return {"GET": lambda r: (200, self.pool(self._pool(pool)))}
            case ["pools", pool, "backends"]:
                return {
                    "GET": lambda r: (200, {"backends": self.backends(self._pool(pool))}),
                    "POST": lambda r: self.add_backend(r, pool),
                }
            case ["pools", pool, "backends", backend]:
                return {
                    "GET": lambda r: (200, self.backend(*self._backend(pool, backend))),
                    "PATCH": lambda r: self.change_backend(r, pool, backend),
                    "DELETE": lambda r: self.remove_backend(r, pool, backend),
                }
            case ["reload"]:
                return {"POST": self.reload}
        return None

    def _refuse(self, request: Request, method: bytes) -> NoReturn:
        given = request.getHeader(b"authorization")
        _log.warn(
            "admin API: refused {method} {path} from {client}: {reason}",
            method=method.decode("latin-1"),
            path=(request.path or b"").decode("latin-1"),
            client=_client(request),
            reason="no bearer token" if given is None else "wrong bearer token",
        )
        raise APIError(
            401,
            "this call needs the admin token: send Authorization: Bearer TOKEN, the token "
            "being the first line of admin.token_file",
            {b"WWW-Authenticate": b'Bearer realm="twisted-lb"'},
        )

    # -- lookups and bodies

    def _pool(self, name: str) -> Pool:
        pool = self.service.pools.get(name)
        if pool is None:
            raise APIError(404, f"unknown pool {name!r}", pools=sorted(self.service.pools))
        return pool

    def _backend(self, pool_name: str, name: str) -> tuple[Pool, Backend]:
        pool = self._pool(pool_name)
        for backend in pool.backends:
            if backend.name == name:
                return pool, backend
        raise APIError(
            404,
            f"pool {pool_name!r} has no backend {name!r}",
            backends=[b.name for b in pool.backends],
        )

    def _body(self, request: Request, allowed: Mapping[str, str]) -> dict[str, Any]:
        """
        The request body as a JSON object whose members are all in ``allowed`` (name to a
        description of its type, for the error messages). An empty body is ``{}``.
        """
        content = request.content
        raw = content.read() if content is not None else b""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        except RecursionError:
            raise APIError(400, "the body is not usable JSON: it is nested too deeply") from None
        if not isinstance(value, dict):
            raise APIError(400, f"the body must be a JSON object, not {type(value).__name__}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            accepted = (
                f"accepted fields: {', '.join(allowed)}" if allowed else "this call takes no fields"
            )
            raise APIError(400, f"unknown field {unknown[0]!r}; {accepted}", accepted=dict(allowed))
        return value

    # -- reads

    def status(self) -> dict[str, object]:
        """``GET /api/v1/status``."""
        service = self.service
        last = service.last_reload
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(service.reactor.seconds() - service.started, 3),
            "started": service.started,
            "config": service.config.path,
            "generation": service.generation,
            "last_reload": None if last is None else reload_result_json(last),
        }

    def frontends(self) -> list[dict[str, object]]:
        """``GET /api/v1/frontends``."""
        service = self.service
        result = []
        for name, frontend in service.config.frontends.items():
            factory = service.factories.get(name)
            listeners = [
                {
                    "endpoint": listener.description,
                    "address": None if listener.port is None else _address(listener.port),
                }
                for listener in service.listeners
                if listener.frontend == name
            ]
            result.append(
                {
                    "name": name,
                    "mode": frontend.mode,
                    "pool": frontend.pool,
                    "routes": [
                        {"host": r.host, "path_prefix": r.path_prefix, "pool": r.pool}
                        for r in frontend.routes
                    ],
                    "tls": frontend.tls is not None,
                    "listeners": listeners,
                    "active_connections": 0 if factory is None else factory.active_connections,
                    "refused_connections": 0 if factory is None else factory.refused_connections,
                    "max_connections": frontend.max_connections,
                }
            )
        return result

    def pools(self) -> list[dict[str, object]]:
        """``GET /api/v1/pools``."""
        return [self.pool(pool) for pool in self.service.pools.values()]

    def pool(self, pool: Pool) -> dict[str, object]:
        """One pool and its backends."""
        return {
            "name": pool.name,
            "strategy": strategy_name(self.service, pool),
            "health_check": pool.name in self.service.monitors,
            "outlier_detection": pool.outlier_detector is not None,
            "slow_start": pool.slow_start,
            "panic": pool.panic,
            "backends": self.backends(pool),
        }

    def backends(self, pool: Pool) -> list[dict[str, object]]:
        return [self.backend(pool, backend) for backend in pool.backends]

    def backend(self, pool: Pool, backend: Backend) -> dict[str, object]:
        """One backend's state and counters, as ``GET`` shows them."""
        now = self.service.reactor.seconds()
        ejection_left = pool.ejection_remaining(backend)
        checked = pool.name in self.service.monitors
        return {
            "name": backend.name,
            "address": str(backend.address),
            "backup": backend.backup,
            "state": backend.state.value,
            "admin_state": _STATE_NAMES.get(backend.admin_state, backend.admin_state.value),
            "health": ("up" if backend.healthy else "down") if checked else "unchecked",
            "ejected": backend.ejected,
            "ejection_remaining": None if ejection_left is None else round(ejection_left, 3),
            "ejections": backend.ejections,
            "weight": backend.weight,
            "effective_weight": round(backend.effective_weight, 3),
            "active_connections": backend.active_connections,
            "in_flight_requests": backend.in_flight_requests,
            "total_connections": backend.total_connections,
            "requests_total": backend.requests_total,
            "responses": {f"{n + 1}xx": count for n, count in enumerate(backend.responses)},
            "connect_failures": backend.connect_failures,
            "consecutive_failures": backend.consecutive_failures,
            "bytes_in": backend.bytes_in,
            "bytes_out": backend.bytes_out,
            "response_time_ewma": round(backend.response_time.value(now), 6),
        }

    # -- changes

    def change_backend(self, request: Request, pool_name: str, name: str) -> tuple[int, object]:
        """
        ``PATCH /api/v1/pools/{pool}/backends/{backend}`` with ``state`` and/or ``weight``.
        Both are checked before either is applied.
        """
        body = self._body(
            request,
            {
                "state": "one of " + ", ".join(ADMIN_STATES),
                "weight": f"an integer from 1 to {MAX_WEIGHT}",
            },
        )
        pool, backend = self._backend(pool_name, name)
        if not body:
            raise APIError(
                400, "nothing to change: send state, weight or both", accepted=["state", "weight"]
            )
        state = body.get("state")
        if "state" in body and state not in ADMIN_STATES:
            raise APIError(
                400,
                f"invalid state {state!r}; accepted: {', '.join(ADMIN_STATES)}",
                accepted=list(ADMIN_STATES),
            )
        weight = body.get("weight")
        if "weight" in body:
            _check_weight(weight)
        service = self.service
        with _service_errors():
            if weight is not None:
                service.set_backend_weight(pool_name, name, weight)
            if state is not None:
                service.set_backend_state(pool_name, name, state)
        _log.info(
            "admin API: pool {pool}: backend {backend} set to {change} by {client}",
            pool=pool_name,
            backend=name,
            change=", ".join(f"{k} {v}" for k, v in body.items()),
            client=_client(request),
        )
        return 200, self.backend(pool, backend)

    def add_backend(self, request: Request, pool_name: str) -> tuple[int, object]:
        """``POST /api/v1/pools/{pool}/backends`` with ``address`` and optional fields."""
        body = self._body(
            request,
            {
                "address": "host:port, [v6]:port or unix:/path (required)",
                "name": "a string",
                "weight": f"an integer from 1 to {MAX_WEIGHT}",
                "backup": "true or false",
            },
        )
        pool = self._pool(pool_name)
        address = body.get("address")
        if not isinstance(address, str):
            raise APIError(
                400,
                "address is required: a string, host:port, [v6]:port or unix:/path",
                accepted=["address", "name", "weight", "backup"],
            )
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise APIError(400, f"invalid name {name!r}; accepted: a non-empty string")
        weight = body.get("weight", 1)
        _check_weight(weight)
        backup = body.get("backup", False)
        if not isinstance(backup, bool):
            raise APIError(400, f"invalid backup {backup!r}; accepted: true or false")
        with _service_errors():
            backend = self.service.add_backend(
                pool_name, address, name=name, weight=weight, backup=backup
            )
        _log.info(
            "admin API: pool {pool}: backend {backend} ({address}) added by {client}",
            pool=pool_name,
            backend=backend.name,
            address=str(backend.address),
            client=_client(request),
        )
        request.setHeader(
            b"location",
            f"/api/v1/pools/{pool_name}/backends/{backend.name}".encode(),
        )
        return 201, self.backend(pool, backend)

    def remove_backend(self, request: Request, pool_name: str, name: str) -> tuple[int, object]:
        """``DELETE /api/v1/pools/{pool}/backends/{backend}``: it drains, then goes."""
        self._body(request, {})
        pool, backend = self._backend(pool_name, name)
        with _service_errors():
            self.service.remove_backend(pool_name, name)
        _log.info(
            "admin API: pool {pool}: backend {backend} removed by {client}; it drains first",
            pool=pool_name,
            backend=name,
            client=_client(request),
        )
        return 202, {"removed": name, "pool": pool_name, "draining": self.backend(pool, backend)}

    def reload(self, request: Request) -> tuple[int, object]:
        """
        ``POST /api/v1/reload``: 200 with the result when the file was applied; 422 (RFC 9110
        §15.5.21, the request was understood but the file cannot be applied) with the result
        and its ``problems`` when it is invalid, in which case nothing changed.
        """
        self._body(request, {})
        result = self.service.reload()
        if result.ok and self.reloaded is not None:
            self.reloaded()
        _log.info(
            "admin API: reload requested by {client}: {outcome}",
            client=_client(request),
            outcome="applied" if result.ok else "refused (invalid config)",
        )
        body = reload_result_json(result)
        if not result.ok:
            body["error"] = "the config file is invalid; nothing changed"
            return 422, body
        return 200, body


def _check_weight(weight: object) -> None:
    """Refuse (400) a weight the config refuses (:func:`~twisted_lb.config.weight_problem`)."""
    problem = weight_problem(weight)
    if problem is not None:
        raise APIError(
            400,
            f"invalid weight {weight!r}: {problem}, as the config's weight",
            accepted={"minimum": 1, "maximum": MAX_WEIGHT},
        )


@contextlib.contextmanager
def _service_errors() -> Any:
    """Turn the service's refusals into API errors: unknown names 404, invalid changes 400."""
    from twisted_lb.service import InvalidChange, UnknownBackend, UnknownPool

    try:
        yield
    except (UnknownPool, UnknownBackend) as e:
        raise APIError(404, str(e).strip("'\"")) from None
    except InvalidChange as e:
        raise APIError(400, str(e)) from None


def reload_result_json(result: Any) -> dict[str, object]:
    """A ``ReloadResult`` as JSON: its fields, tuples as lists."""
    return {
        "ok": result.ok,
        "generation": result.generation,
        "at": result.at,
        "added": list(result.added),
        "changed": list(result.changed),
        "removed": list(result.removed),
        "overridden": list(result.overridden),
        "problems": list(result.problems),
    }


def _client(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is None:
        return "unix socket"
    return f"{host}:{getattr(address, 'port', '?')}"


def _address(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", b"?")
        return "unix:" + (name.decode() if isinstance(name, bytes) else str(name))
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"  # type: ignore[attr-defined]


class _NotFound(Resource):
    """A JSON 404 for a path outside the API and the other children of the root."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        path = (request.path or b"").decode("latin-1")
        return _json({"error": f"no such path {path}; the API is under /api/v1/", "status": 404})


class _Directory(Resource):
    """
    A resource whose unknown children, and itself (``/api``), are :class:`_NotFound` (not
    twisted.web's HTML, nor its 405 for a resource without a page).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


def admin_resource(
    service: Balancer,
    token: str | None,
    saved: Callable[[], str | None] | None = None,
    reloaded: Callable[[], None] | None = None,
) -> Resource:
    """
    The admin site's root: ``/api/v1/`` is :class:`APIResource`; ``/metrics`` is
    :class:`~twisted_lb.metrics.MetricsResource`, ``/`` the dashboard's page and
    ``/dashboard/`` its assets and ``stats.json`` (:mod:`twisted_lb.dashboard`).

    Args:
        service: the running balancer.
        token: the bearer token mutating calls need, or ``None`` for none.
        saved: called after each accepted mutating call; see :class:`APIResource`.
        reloaded: called after a reload through the API was applied.
    """
    root = _Directory()
    api = _Directory()
    root.putChild(b"api", api)
    api.putChild(b"v1", APIResource(service, token, saved, reloaded))
    root.putChild(b"metrics", MetricsResource(metrics_registry(service)))
    root.putChild(b"", dashboard_page())
    root.putChild(b"dashboard", DashboardResource(service, token_required=token is not None))
    return root


# -- the state file ----------------------------------------------------------------------------


def write_state_file(path: str, state: Mapping[str, object]) -> None:
    """
    Write ``state`` as JSON to ``path`` atomically: to a new temporary file in the same
    directory (:func:`tempfile.mkstemp`: an unpredictable name, created exclusively with mode
    0600, so no symlink planted there is followed), flushed to disk, then renamed over
    ``path`` (which replaces a symlink there rather than following it), so a crash leaves the
    old file or the new one. The fsync blocks the calling thread (the reactor's) for as long
    as the disk takes, a few milliseconds: it runs only after an accepted change or a reload.

    Raises:
        OSError: the directory is not writable, the disk is full, ...
    """
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(_json(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_state_file(path: str) -> dict[str, Any] | None:
    """
    The runtime changes a state file holds (``runtime``), or ``None`` when there is no file.

    Raises:
        ValueError: the file is not a state file of this format (the message says why).
        OSError: it exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    except RecursionError:
        raise ValueError("not usable JSON: it is nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FILE_FORMAT:
        raise ValueError(f"not a twisted-lb state file of format {STATE_FILE_FORMAT}")
    runtime = data.get("runtime")
    if not isinstance(runtime, dict):
        raise ValueError("its 'runtime' member is not an object")
    return runtime


# -- listening ---------------------------------------------------------------------------------


class AdminListener(ListeningService):
    """
    Listens on one ``[admin] listen`` endpoint while running. A ``unix:`` socket is never
    wider than ``socket_mode``: it is created under a umask that allows no more, its endpoint
    carries the mode (a ``unix:`` endpoint is rebuilt with it), and it is chmodded once
    listening. A stale socket file left by a killed process is removed first, as HAProxy does.

    Args:
        endpoint: where to listen.
        site: the admin site.
        description: the endpoint description from the config, for logs and errors.
        socket_mode: the file mode of a ``unix:`` socket.
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, site: Site, description: str, socket_mode: int
    ) -> None:
        self.endpoint = _with_mode(endpoint, socket_mode)
        self.site = site
        self.description = description
        self.socket_mode = socket_mode
        self.port: IListeningPort | None = None
        self.name = f"admin {description}"

    @property
    def socket_path(self) -> str | None:
        """The file of a ``unix:`` listener, else ``None``."""
        if isinstance(self.endpoint, UNIXServerEndpoint):
            return compat.unix_endpoint_path(self.endpoint)
        return None

    def privilegedStartService(self) -> None:
        from twisted_lb.service import ListenError

        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            return
        path = self.socket_path
        if path is not None:
            _remove_stale_socket(path)
            mask = os.umask(0o777 & ~self.socket_mode)
        outcome: list[IListeningPort | Failure] = []
        started = self.site.numPorts
        try:
            self.endpoint.listen(self.site).addBoth(outcome.append)
        finally:
            if path is not None:
                os.umask(mask)
        result = outcome[0] if outcome else None
        if result is None or isinstance(result, Failure):
            if self.site.numPorts > started:
                # A UNIX port starts its factory before it binds, and does not stop it when
                # the bind fails; stop it here, or its timer (the log's date) is left behind.
                self.site.doStop()
            reason = "did not listen" if result is None else result.getErrorMessage()
            raise ListenError(f"admin: cannot listen on {self.description}: {reason}")
        self.port = result
        if path is not None:
            os.chmod(path, self.socket_mode)
        _log.info(
            "admin API listening on {address}{mode}",
            address=_address(result),
            mode="" if path is None else f" (mode {self.socket_mode:04o})",
        )


def _with_mode(endpoint: IStreamServerEndpoint, mode: int) -> IStreamServerEndpoint:
    """
    A ``unix:`` endpoint that gives its socket ``mode`` itself: Twisted's UNIX port chmods
    the socket to the endpoint's mode (0666 by default) between bind() and listen(), so a
    later chmod alone would leave a moment in which any user could connect.
    """
    if not isinstance(endpoint, UNIXServerEndpoint):
        return endpoint
    return compat.unix_endpoint_with_mode(endpoint, mode)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nothing accepts on (left by a killed process); keep anything else."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


class AdminService(MultiService):
    """
    The ``[admin]`` table, live: the site, one :class:`AdminListener` per ``listen`` entry,
    and the state file, restored when the service starts (before the reactor runs, so before
    any request is served) and written after each accepted change.

    Args:
        service: the balancer the API controls.
        config: the ``[admin]`` table.
        reactor: builds the listeners' endpoints.

    Raises:
        ConfigError: an endpoint cannot be built, or the token file cannot be read.
    """

    def __init__(self, service: Balancer, config: AdminConfig, reactor: IBalancerReactor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.balancer = service
        self.config = config
        self.name = "admin"
        path = service.config.path
        problems: list[Problem] = []
        token = None
        if config.token_file is not None:
            try:
                token = read_token(config.token_file)
            except (OSError, ValueError) as e:
                message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                problems.append(
                    Problem(path, "admin.token_file", f"cannot use {config.token_file}: {message}")
                )
        self.token = token
        self.root = admin_resource(service, token, self.save_state, self._reloaded)
        self.site = AdminSite(self.root, timeout=ADMIN_TIMEOUT, reactor=reactor)  # type: ignore[no-untyped-call]
        self.site.allowed_hosts = config.allowed_hosts
        self.listeners: list[AdminListener] = []
        for index, description in enumerate(config.listen):
            try:
                endpoint = serverFromString(reactor, description)
            except Exception as e:
                problems.append(Problem(path, f"admin.listen[{index}]", str(e)))
                continue
            listener = AdminListener(endpoint, self.site, description, config.socket_mode)
            listener.setServiceParent(self)  # type: ignore[no-untyped-call]
            self.listeners.append(listener)
        if problems:
            raise ConfigError(problems)

    _restored = False

    def privilegedStartService(self) -> None:
        self._before_listening()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        self._before_listening()  # when started without privilegedStartService (embedded)
        super().startService()  # type: ignore[no-untyped-call]

    def _before_listening(self) -> None:
        if self._restored:
            return
        self._restored = True
        path = self.config.token_file
        with contextlib.suppress(OSError):
            if path is not None and os.stat(path).st_mode & 0o077:
                _log.warn(
                    "admin: token_file {path} can be read by other users; chmod 600 it",
                    path=path,
                )
        self.restore_state()

    def restore_state(self) -> None:
        """Re-apply the runtime changes of ``state_file``; a bad file is logged and skipped."""
        path = self.config.state_file
        if path is None:
            return
        try:
            runtime = read_state_file(path)
        except (OSError, ValueError) as e:
            _log.warn(
                "admin: state_file {path} ignored: {reason}",
                path=path,
                reason=e.strerror if isinstance(e, OSError) and e.strerror else str(e),
            )
            return
        if runtime is None:
            return
        skipped = self.balancer.restore_runtime_state(runtime)
        for problem in skipped:
            _log.warn("admin: state_file {path}: skipped: {problem}", path=path, problem=problem)
        _log.info("admin: runtime changes restored from {path}", path=path)

    def save_state(self) -> str | None:
        """
        Write the runtime changes in force to ``state_file``, if there is one.

        Returns:
            ``None``, or a warning (for the API response) when the file could not be written;
            the failure is logged too.
        """
        path = self.config.state_file
        if path is None:
            return None
        service = self.balancer
        state = {
            "format": STATE_FILE_FORMAT,
            "saved_at": service.reactor.seconds(),
            "config": service.config.path,
            "generation": service.generation,
            "runtime": service.runtime_state(),
        }
        try:
            write_state_file(path, state)
        except OSError as e:
            _log.error(
                "admin: cannot write state_file {path}: {reason}; the change is in force but "
                "will not survive a restart",
                path=path,
                reason=e.strerror or str(e),
            )
            reason = e.strerror or str(e)
            return f"the change is in force, but state_file {path} could not be written: {reason}"
        return None

    def _reloaded(self) -> None:
        """After a reload: warn when ``[admin]`` changed, which takes a restart."""
        if self.balancer.config.admin != self.config:
            _log.warn(
                "admin: the [admin] table of {path} changed; the admin API keeps its old "
                "settings until the balancer restarts",
                path=self.balancer.config.path,
            )

    def reloaded(self) -> None:
        """
        After a reload by SIGHUP: write the state file again (the reload overrode the
        runtime changes), and warn when ``[admin]`` changed, which takes a restart. (A
        reload through the API does both itself.)
        """
        self.save_state()
        self._reloaded()

    def addresses(self) -> list[str]:
        """Where the running listeners listen, as ``host:port`` or ``unix:/path``."""
        return [_address(listener.port) for listener in self.listeners if listener.port is not None]
