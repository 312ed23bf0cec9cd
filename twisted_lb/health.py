"""
Active health checks: each backend of a pool is probed on a schedule, and rise/fall turns the
probes' results into verdicts that take backends out of rotation and bring them back.

- :class:`TCPCheck` connects and closes: HAProxy's layer-4 ``check``.
- :class:`HTTPCheck` sends a ``GET`` and checks the status and, optionally, the body:
  HAProxy's ``option httpchk`` with ``http-check expect status``/``rstring``, Envoy's HTTP
  health checker with ``expected_statuses``.
- :class:`HealthMonitor` runs one probe loop per backend with HAProxy's ``inter``,
  ``downinter``, ``rise``, ``fall`` and ``spread-checks`` (Envoy's ``interval``,
  ``unhealthy_interval``, ``healthy_threshold``, ``unhealthy_threshold`` and jitter), and
  hands each verdict change to :meth:`Pool.set_healthy <twisted_lb.pool.Pool.set_healthy>`.

References: https://docs.haproxy.org/3.2/configuration.html#5.2-check and
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from twisted_lb import _defaults as defaults
from twisted_lb._address import Address, host_problem
from twisted_lb._compat import ParseError
from twisted_lb._transport import _OneProtocolFactory, describe_error
from twisted_lb.backend import Backend
from twisted_lb.http.routing import path_problem
from twisted_lb.interfaces import IBalancerReactor, IHealthCheck
from twisted_lb.pool import Pool

_log = Logger()

#: The most of a response body :class:`HTTPCheck` reads, in bytes; past it the connection is
#: closed and the check decides on what it has.
MAX_BODY_BYTES = 64 * 1024

#: The ``User-Agent`` of :class:`HTTPCheck`'s requests, so backends can tell checks apart
#: in their access logs.
USER_AGENT = b"twisted-lb-health-check"

#: What connects a check to a backend, called as ``endpoint(reactor, backend)``.
EndpointFactory = Callable[[Any, Backend], IStreamClientEndpoint]


@attrs.frozen
class ProbeResult:
    """
    The outcome of one probe of one backend.

    Attributes:
        ok: whether the backend passed.
        detail: what happened, for logs, such as ``"HTTP 200 in 3 ms"``, ``"HTTP 503 in 12
            ms"``, ``"connected in 1 ms"``, ``"connection refused in 0 ms"``, ``"timed out
            after 1000 ms"`` or ``"body did not match 'ready' (HTTP 200 in 4 ms)"``.
    """

    ok: bool
    detail: str


def _backend_endpoint(reactor: IBalancerReactor, backend: Backend) -> IStreamClientEndpoint:
    return backend.endpoint(reactor)


def _millis(seconds: float) -> int:
    return round(max(seconds, 0.0) * 1000)


def _describe(failure: Failure) -> str:
    """A short text for a failed probe: the innermost error's message."""
    reason = failure.value
    when = ""
    if isinstance(reason, ResponseNeverReceived):
        when = " before the response"
    elif isinstance(reason, ResponseFailed):
        when = " during the response"
    # Agent wraps the errors of a request in these, with the real ones in ``reasons``.
    wrappers = (
        ResponseFailed,
        ResponseNeverReceived,
        RequestGenerationFailed,
        RequestTransmissionFailed,
    )
    while isinstance(reason, wrappers) and reason.reasons:
        reason = reason.reasons[0].value
    if isinstance(reason, error.ConnectionDone | error.ConnectionLost):
        return "connection closed" + when
    if isinstance(reason, ParseError):
        return f"bad HTTP response ({reason.args[0]})"
    return describe_error(reason)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"health check timeout must be > 0 s, not {timeout!r}")


class _TimedProbe:
    """
    One probe's clock: it times the probe from its start, gives up on it after ``timeout``
    seconds, and turns its errors into failed results.
    """

    def __init__(self, reactor: IBalancerReactor, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._started: float = reactor.seconds()

    def took(self) -> str:
        """The time since the start, as ``"in 12 ms"``."""
        return f"in {_millis(self._reactor.seconds() - self._started)} ms"

    def run(self, work: Deferred[ProbeResult]) -> Deferred[ProbeResult]:
        """
        Watch the probe's ``work``.

        Returns:
            A Deferred that fires with the work's result; with ``ok=False`` and the error's
            description when the work fails; or with ``ok=False, "timed out after N ms"``
            after ``timeout`` seconds, when the work is cancelled (which closes its
            connection). Cancelling it cancels the work and the timer, and it fails with
            ``CancelledError``. Whatever the work does afterwards is ignored.
        """
        cancelled = timed_out = False

        def cancel(outcome: Deferred[ProbeResult]) -> None:
            nonlocal cancelled
            cancelled = True
            if timer.active():
                timer.cancel()
            work.cancel()

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            work.cancel()  # which fires it at once, and so finish()

        def finish(result: ProbeResult | Failure) -> None:
            if timer.active():
                timer.cancel()
            if cancelled:
                return  # Deferred.cancel fails the outcome with CancelledError
            if timed_out:
                result = ProbeResult(False, f"timed out after {_millis(self._timeout)} ms")
            elif isinstance(result, Failure):
                result = ProbeResult(False, f"{_describe(result)} {self.took()}")
            outcome.callback(result)

        outcome: Deferred[ProbeResult] = Deferred(cancel)
        timer: IDelayedCall = self._reactor.callLater(self._timeout, time_out)
        work.addBoth(finish)
        return outcome


@implementer(IHandshakeListener)
class _CloseAtOnce(Protocol):
    """
    Closes the connection as soon as it is made: a layer-4 check needs nothing more. Over
    TLS, "made" means the handshake, with the backend's verification, has completed.

    Attributes:
        done: fires with ``None`` when the connection is made (and is being closed), or fails
            with the reason it was lost before (such as a TLS verification error).
            Cancelling it aborts the connection.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(self._abort)

    def _abort(self, done: Deferred[None]) -> None:
        if self.transport is not None:
            cast(Any, self.transport).abortConnection()

    def connectionMade(self) -> None:
        if not isinstance(self.transport, TLSMemoryBIOProtocol):
            self._made()

    def handshakeCompleted(self) -> None:
        self._made()

    def _made(self) -> None:
        assert self.transport is not None
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)


@implementer(IHealthCheck)
class TCPCheck:
    """
    A layer-4 check: connect to the backend, then close the connection cleanly. It passes
    when the connection is made. This is HAProxy's ``check`` on a server without ``option
    httpchk`` (https://docs.haproxy.org/3.2/configuration.html#5.2-check), and Envoy's TCP
    health checker with an empty payload.

    Args:
        reactor: provides ``IReactorTime`` and what the endpoint needs (``IReactorTCP``,
            ``IReactorUNIX``).
        timeout: seconds the connection may take, else the check fails with ``"timed out
            after N ms"`` and the attempt is abandoned.
        endpoint: ``endpoint(reactor, backend)`` makes the client endpoint the check connects
            through; by default :meth:`Backend.endpoint <twisted_lb.backend.Backend.endpoint>`.
            A TLS-wrapping endpoint makes this a TLS check.

    Raises:
        ValueError: ``timeout`` is not positive.
    """

    def __init__(
        self,
        reactor: IBalancerReactor,
        timeout: float = defaults.CHECK_TIMEOUT,
        endpoint: EndpointFactory | None = None,
    ) -> None:
        _check_timeout(timeout)
        self._reactor = reactor
        self._endpoint = endpoint or _backend_endpoint
        #: Seconds before the check gives up.
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<TCPCheck timeout {self.timeout:g} s>"

    def probe(self, backend: Backend) -> Deferred[ProbeResult]:
        """
        Connect to ``backend`` and close.

        Returns:
            A Deferred that fires with ``ProbeResult(True, "connected in N ms")``, or with
            ``ok=False`` and ``"connection refused in N ms"``, ``"timed out after N ms"`` or
            another error's message. It never fails, except with ``CancelledError`` when
            cancelled; cancelling stops the connection attempt.
        """
        timed = _TimedProbe(self._reactor, self.timeout)
        protocol = _CloseAtOnce()
        connecting: Deferred[Any]
        try:
            endpoint = self._endpoint(self._reactor, backend)
            connecting = endpoint.connect(_OneProtocolFactory(protocol))
        except Exception:
            connecting = fail()
        connecting.addCallback(lambda _: protocol.done)
        return timed.run(
            connecting.addCallback(lambda _: ProbeResult(True, f"connected {timed.took()}"))
        )


class _BodyReader(Protocol):
    """
    Reads a response body up to :data:`MAX_BODY_BYTES`, keeping it only when asked to, and
    stops the transport past the cap.

    Attributes:
        done: fires with the body (empty when not kept; at most :data:`MAX_BODY_BYTES`) when
            it ends or reaches the cap, or fails with why it could not be read. Cancelling it
            stops the transport.
    """

    def __init__(self, keep: bool) -> None:
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())
        self._keep = keep
        self._chunks: list[bytes] = []
        self._received = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        room = MAX_BODY_BYTES - self._received
        if self._keep:
            self._chunks.append(data[:room])
        self._received += len(data)
        if self._received > MAX_BODY_BYTES:
            self._stop()
            self.done.callback(b"".join(self._chunks))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)

    def _stop(self) -> None:
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()


@implementer(IAgentEndpointFactory, IStreamClientEndpoint)
class _QuietEndpoint:
    """
    The one endpoint an Agent connects through for one probe. It hides the Agent's connection
    factory behind a quiet one, which does not log "Starting factory" at every check.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._endpoint.connect(_QuietFactory(factory))


class _QuietFactory(Factory):
    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory

    def buildProtocol(self, addr: Any) -> IProtocol | None:  # type: ignore[override]
        return self._factory.buildProtocol(addr)


def _default_host(address: Address, server_name: str | None = None, https: bool = False) -> str:
    """
    The ``Host`` of a check (RFC 9110 §7.2): ``server_name`` or else the backend's host, then
    the backend's port unless it is the scheme's default (443 with ``https``, else 80).
    """
    if address.kind == "unix":
        return server_name or "localhost"
    name = server_name or address.host
    host = f"[{name}]" if ":" in name else name
    return host if address.port == (443 if https else 80) else f"{host}:{address.port}"


_STATUS_EXAMPLES = 'expect_status = "200-399" (a range), "200" or 200'
_STATUS_RANGE = re.compile(r"(?P<low>[0-9]+)(?:-(?P<high>[0-9]+))?")
_STATUS_CLASS = re.compile(r"(?P<digit>[1-5])[xX][xX]")


def parse_expect_status(value: int | str) -> tuple[int, int]:
    """
    The passing statuses of an http check, as config writes them: a code from 100 to 599
    (``200`` or ``"200"``) or a range ``"LOW-HIGH"`` (``"200-399"``).

    Returns:
        ``(low, high)``, inclusive: ``(200, 399)``.

    Raises:
        ValueError: not a code or a range (``"2xx"`` gets the range to write), a code outside
            100-599, or a range whose low end is above its high end.
    """
    match = _STATUS_RANGE.fullmatch(value) if isinstance(value, str) else None
    if isinstance(value, str) and match is None:
        status_class = _STATUS_CLASS.fullmatch(value)
        if status_class is not None:
            digit = status_class["digit"]
            raise ValueError(
                f"{value!r}: write a class of codes as a range, "
                f'as in expect_status = "{digit}00-{digit}99"'
            )
        raise ValueError(
            f"{value!r} is not a status code or a range; write one as in {_STATUS_EXAMPLES}"
        )
    codes = [value] if match is None else [code for code in match.groups() if code is not None]
    for code in codes:
        if len(str(code)) != 3 or not 100 <= int(code) <= 599:
            within = f" in {value!r}" if len(codes) == 2 else ""
            raise ValueError(
                f"{code!r}{within} is not an HTTP status code (100 to 599); "
                f"write one as in {_STATUS_EXAMPLES}"
            )
    low, high = int(codes[0]), int(codes[-1])
    if low > high:
        raise ValueError(
            f"{value!r} is an empty range; write the lowest code first, "
            f'as in expect_status = "{high}-{low}"'
        )
    return (low, high)


def expect_body_problem(pattern: str) -> str | None:
    """What is wrong with an http check's ``expect_body`` (a Python regular expression)."""
    if not pattern:
        return "must not be empty; leave expect_body out to accept any body"
    try:
        re.compile(pattern)
    except (re.error, OverflowError) as e:  # OverflowError: a{4294967296}
        error = str(e)
    except RecursionError:
        error = "nested too deeply"
    else:
        return None
    return (
        f"not a valid Python regular expression ({error}); fix it, or put a backslash "
        "before each character meant literally, as in expect_body = '\\(ok\\)'"
    )


@implementer(IHealthCheck)
class HTTPCheck:
    """
    An HTTP check: ``GET path`` over HTTP/1.1, with ``Connection: close``. It passes when the
    status is in ``expect_status`` and, if ``expect_body`` is set, the body matches it. This is
    HAProxy's ``option httpchk`` with ``http-check expect status`` and ``rstring``
    (https://docs.haproxy.org/3.2/configuration.html#4.2-option%20httpchk,
    https://docs.haproxy.org/3.2/configuration.html#4.2-http-check%20expect), and Envoy's
    HTTP health checker with ``expected_statuses``.

    The request carries ``Host`` and ``User-Agent: twisted-lb-health-check`` (:data:`USER_AGENT`).
    At most :data:`MAX_BODY_BYTES` of the body are read: kept, decoded as UTF-8 (invalid bytes
    replaced) and searched with ``expect_body`` when it is set, else discarded as they
    arrive. Past the cap the connection is closed and the check decides on what it read.

    Args:
        reactor: provides ``IReactorTime`` and what the endpoint needs.
        timeout: seconds for the whole check (connect, response, body), else it fails with
            ``"timed out after N ms"`` and its connection is aborted.
        path: the request target, from ``/``, query included (``"/healthz?full=1"``).
        host: the ``Host`` header; by default ``server_name``, else the backend's host,
            followed by ``:port`` unless the backend's port is the scheme's default (80, or
            443 with ``https``); ``localhost`` for UNIX sockets without ``server_name``.
        expect_status: the passing status codes, inclusive: ``(200, 399)``.
        expect_body: a regular expression (:func:`re.search`) the body must match.
        endpoint: ``endpoint(reactor, backend)`` makes the client endpoint the check connects
            through; by default :meth:`Backend.endpoint <twisted_lb.backend.Backend.endpoint>`.
            A TLS-wrapping endpoint makes this an HTTPS check.
        server_name: the host of the default ``Host``: a TLS pool's ``server_name``, so that
            the check asks for the virtual host that the backend's certificate is verified
            for and the pool's requests go to, as the SNI names it.
        https: whether ``endpoint`` speaks TLS; the default ``Host`` then leaves out port 443
            instead of port 80, and the request's URI is ``https://``.

    Raises:
        ValueError: ``timeout`` is not positive, or a value the config's key refuses, with
            its message: ``path`` (:func:`~twisted_lb.http.routing.path_problem`), ``host``
            (the config's ``host_problem``), ``expect_body``
            (:func:`expect_body_problem`), or an ``expect_status`` not within 100..599.
    """

    def __init__(
        self,
        reactor: IBalancerReactor,
        timeout: float = defaults.CHECK_TIMEOUT,
        path: str = defaults.CHECK_PATH,
        host: str | None = None,
        expect_status: tuple[int, int] = defaults.CHECK_EXPECT_STATUS,
        expect_body: str | None = None,
        endpoint: EndpointFactory | None = None,
        server_name: str | None = None,
        https: bool = False,
    ) -> None:
        _check_timeout(timeout)
        problems = {
            "path": path_problem(path, query=True),
            "host": None if host is None else host_problem(host, route=False),
            "expect_body": None if expect_body is None else expect_body_problem(expect_body),
        }
        low, high = expect_status
        if not 100 <= low <= high <= 599:
            problems["expect_status"] = f"must be a range within 100-599, not {expect_status!r}"
        for key, problem in problems.items():
            if problem is not None:
                raise ValueError(f"health check {key}: {problem}")
        self._pattern = None if expect_body is None else re.compile(expect_body)
        self._reactor = reactor
        self._endpoint = endpoint or _backend_endpoint
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        #: Seconds for the whole check.
        self.timeout = timeout
        #: The request target.
        self.path = path
        #: The ``Host`` header, or ``None`` for ``server_name`` or the backend's address.
        self.host = host
        #: The host of the default ``Host``, or ``None`` for the backend's host.
        self.server_name = server_name
        #: Whether the check speaks TLS.
        self.https = https
        #: The passing status codes, inclusive.
        self.expect_status = expect_status
        #: The regular expression the body must match, or ``None``.
        self.expect_body = expect_body

    def __repr__(self) -> str:
        return f"<HTTPCheck GET {self.path} timeout {self.timeout:g} s>"

    def probe(self, backend: Backend) -> Deferred[ProbeResult]:
        """
        Request ``path`` from ``backend`` and judge the response.

        Returns:
            A Deferred that fires with ``ProbeResult(True, "HTTP 200 in N ms")``, or with
            ``ok=False`` and ``"HTTP 503 in N ms"``, ``"body did not match 'ready' (HTTP 200
            in N ms)"``, ``"connection refused in N ms"``, ``"timed out after N ms"`` or
            another error's message. It never fails, except with ``CancelledError`` when
            cancelled; cancelling aborts the connection.
        """
        timed = _TimedProbe(self._reactor, self.timeout)
        requesting: Deferred[IResponse]
        try:
            host = (
                self.host or _default_host(backend.address, self.server_name, self.https)
            ).encode("ascii")
            headers = Headers({b"Host": [host], b"User-Agent": [USER_AGENT]})
            endpoint = _QuietEndpoint(self._endpoint(self._reactor, backend))
            agent = Agent.usingEndpointFactory(self._reactor, endpoint, pool=self._pool)
            scheme = b"https://" if self.https else b"http://"
            requesting = agent.request(b"GET", scheme + host + self.path.encode(), headers)
        except Exception:
            requesting = fail()
        return timed.run(requesting.addCallback(self._read, timed))

    def _read(self, response: IResponse, timed: _TimedProbe) -> Deferred[ProbeResult]:
        status = response.code
        low, high = self.expect_status
        passed = low <= status <= high
        reader = _BodyReader(keep=passed and self._pattern is not None)
        response.deliverBody(reader)

        def judge(body: bytes) -> ProbeResult:
            head = f"HTTP {status} {timed.took()}"
            if passed and self._pattern is not None:
                text = body.decode("utf-8", errors="replace")
                if self._pattern.search(text) is None:
                    return ProbeResult(False, f"body did not match '{self.expect_body}' ({head})")
            return ProbeResult(passed, head)

        return reader.done.addCallback(judge)


@attrs.define(eq=False)
class _Watch:
    """One backend's probe loop: its verdict, its consecutive counts and what is pending."""

    backend: Backend
    healthy: bool
    checked: bool = False
    passes: int = 0
    failures: int = 0
    timer: IDelayedCall | None = None
    probing: Deferred[ProbeResult] | None = None
    probe_started: float = 0.0  # when the probe in flight (or the last one) was sent


class HealthMonitor(Service):
    """
    Probes every backend of a pool with a health check, and takes backends out of rotation
    and back with rise/fall, as HAProxy's ``check`` with ``inter``, ``downinter``, ``rise``,
    ``fall`` and ``spread-checks`` (https://docs.haproxy.org/3.2/configuration.html#5.2-check,
    #5.2-inter, #5.2-rise, #5.2-fall) and Envoy's active health checking
    (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking).

    - :meth:`startService` probes every backend of ``pool.backends`` at once. Backends added
      to the pool later are probed when :meth:`backends_changed` is called (a reload and the
      runtime changes call it), else from the next start; a result for a backend that has
      left the pool is ignored, and its loop ends.
    - A backend starts from its recorded verdict (:attr:`Backend.healthy
      <twisted_lb.backend.Backend.healthy>`, true for a new backend), so it counts as UP until
      its first probe completes. A first failed probe marks an UP backend DOWN at once
      (HAProxy starts servers at the lowest health that is still UP).
    - After that, ``fall`` consecutive failures take an UP backend DOWN, and ``rise``
      consecutive passes bring a DOWN backend UP. A pass resets the count of failures and a
      failure the count of passes, so one failure among passes does not flap.
    - Each backend's next probe is scheduled when its result arrives: after ``interval``
      seconds while the backend is UP, ``down_interval`` while it is DOWN, each multiplied by
      a factor drawn uniformly from ``[1 - jitter, 1 + jitter]``, so that the probes of many
      backends and balancers do not fall into step.
    - A passing probe of a backend that is UP by its checks, and ejected by outlier
      detection, is reported with :meth:`Pool.report_passing_check
      <twisted_lb.pool.Pool.report_passing_check>`, which ends the ejection unless
      ``uneject_on_passing_check`` is off (Envoy's
      ``successful_active_health_check_uneject_host``).
    - A verdict change is applied with :meth:`Pool.set_healthy
      <twisted_lb.pool.Pool.set_healthy>` and logged with its reason:
      ``pool app: backend app2 DOWN after 3 failed checks (last: HTTP 503 in 12 ms)`` (a
      warning; fields ``pool``, ``backend``, ``address``, ``state``, ``count``, ``checks``,
      ``reason``), ``pool app: backend app2 UP after 2 passed checks (last: HTTP 200 in 3
      ms)``, ``pool app: backend app2 DOWN after its first check failed (last: connection
      refused in 0 ms)``.
    - Each result is counted on the :class:`~twisted_lb.backend.Backend`
      (``health_checks_passed``, ``health_checks_failed``), and a failure's detail is kept in
      its ``last_check_failure``, with the time in ``last_check_failure_at``, for the metrics
      and the dashboard.
    - :meth:`stopService` cancels every pending probe and timer; no result that arrives later
      changes anything. The service can be started again.

    Args:
        reactor: provides ``IReactorTime``; probes are scheduled on it.
        pool: the backends to watch and where verdicts go.
        check: probes one backend.
        interval: seconds between probes of an UP backend (HAProxy's ``inter``).
        rise: consecutive passes that bring a DOWN backend UP, >= 1.
        fall: consecutive failures that take an UP backend DOWN, >= 1.
        down_interval: seconds between probes of a DOWN backend (HAProxy's ``downinter``,
            Envoy's ``unhealthy_interval``); by default ``interval``.
        jitter: the fraction by which each delay varies at random, 0 <= jitter < 1 (0.1:
            +/-10%, as HAProxy's ``spread-checks 10``).
        rng: draws the jitter; by default a new ``random.Random()``. Pass a seeded one for
            repeatable schedules.

    Raises:
        ValueError: ``interval`` or ``down_interval`` is not positive, ``rise`` or ``fall`` is
            below 1, or ``jitter`` is outside ``[0, 1)``.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        pool: Pool,
        check: IHealthCheck,
        *,
        interval: float = defaults.CHECK_INTERVAL,
        rise: int = defaults.CHECK_RISE,
        fall: int = defaults.CHECK_FALL,
        down_interval: float | None = None,
        jitter: float = defaults.CHECK_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if down_interval is None:
            down_interval = interval
        for key, seconds in (("interval", interval), ("down_interval", down_interval)):
            if not seconds > 0:
                raise ValueError(
                    f"pool {pool.name}: health check {key} must be > 0 s, not {seconds!r}"
                )
        for key, count in (("rise", rise), ("fall", fall)):
            if count < 1:
                raise ValueError(
                    f"pool {pool.name}: health check {key} must be >= 1, not {count!r}"
                )
        if not 0 <= jitter < 1:
            raise ValueError(
                f"pool {pool.name}: health check jitter must be in [0, 1), not {jitter!r}"
            )
        self._reactor = reactor
        self._rng = rng or random.Random()
        self._watches: dict[Backend, _Watch] = {}
        self._last: dict[Backend, ProbeResult] = {}
        #: The pool whose backends are watched.
        self.pool = pool
        #: The health check.
        self.check = check
        #: Seconds between probes of an UP backend.
        self.interval = interval
        #: Seconds between probes of a DOWN backend.
        self.down_interval = down_interval
        #: Consecutive passes that bring a DOWN backend UP.
        self.rise = rise
        #: Consecutive failures that take an UP backend DOWN.
        self.fall = fall
        #: The fraction by which each delay varies at random.
        self.jitter = jitter

    def __repr__(self) -> str:
        return f"<HealthMonitor pool {self.pool.name} {self.check!r}>"

    def last_result(self, backend: Backend) -> ProbeResult | None:
        """
        The result of the last completed probe of ``backend``, or ``None`` before any (or for
        a backend this monitor does not watch). Kept after :meth:`stopService`.
        """
        return self._last.get(backend)

    def reconfigure(
        self,
        check: IHealthCheck,
        *,
        interval: float,
        rise: int,
        fall: int,
        down_interval: float | None = None,
        jitter: float = 0.1,
    ) -> None:
        """
        Apply a reload's settings (the constructor's arguments) without losing what is
        known: each backend keeps its verdict and its counts of passes and failures. Probes
        in flight finish with the old check; the next probe of each backend uses the new one,
        and is scheduled with the new intervals.

        Raises:
            ValueError: as the constructor; nothing is changed then.
        """
        HealthMonitor(
            self._reactor,
            self.pool,
            check,
            interval=interval,
            rise=rise,
            fall=fall,
            down_interval=down_interval,
            jitter=jitter,
        )
        self.check = check
        self.interval = interval
        self.down_interval = interval if down_interval is None else down_interval
        self.rise = rise
        self.fall = fall
        self.jitter = jitter

    def backends_changed(self) -> None:
        """
        Follow a change of the pool's membership while running: probe added backends now,
        and stop probing removed ones (their pending probe is cancelled).
        """
        if not self.running:
            return
        backends = list(self.pool.backends)
        members = set(backends)
        for backend in [b for b in self._watches if b not in members]:
            watch = self._watches.pop(backend)
            self._last.pop(backend, None)
            timer, watch.timer = watch.timer, None
            if timer is not None and timer.active():
                timer.cancel()
            probing, watch.probing = watch.probing, None
            if probing is not None:
                probing.cancel()
        for backend in backends:
            if backend not in self._watches:
                watch = self._watches[backend] = _Watch(backend, healthy=backend.healthy)
                self._probe(watch)

    def startService(self) -> None:
        """Probe every backend of the pool now, and keep probing each on its schedule."""
        super().startService()  # type: ignore[no-untyped-call]
        backends = list(self.pool.backends)
        self._last = {b: r for b, r in self._last.items() if b in backends}
        self._watches = {b: _Watch(b, healthy=b.healthy) for b in backends}
        for watch in list(self._watches.values()):
            self._probe(watch)

    def stopService(self) -> None:
        """Cancel every probe in flight and every scheduled one."""
        super().stopService()  # type: ignore[no-untyped-call]
        watches = list(self._watches.values())
        self._watches = {}
        for watch in watches:
            timer, watch.timer = watch.timer, None
            if timer is not None and timer.active():
                timer.cancel()
            probing, watch.probing = watch.probing, None
            if probing is not None:
                probing.cancel()

    def _probe(self, watch: _Watch) -> None:
        watch.timer = None
        watch.probe_started = self._reactor.seconds()
        probing: Deferred[ProbeResult]
        try:
            probing = self.check.probe(watch.backend)
        except Exception:
            probing = fail()
        watch.probing = probing
        probing.addBoth(self._probed, watch)

    def _probed(self, result: ProbeResult | Failure, watch: _Watch) -> None:
        watch.probing = None
        backend = watch.backend
        if self._watches.get(backend) is not watch:
            return  # stopped or restarted meanwhile: a stale result, or our own cancellation
        if backend not in self.pool.backends:
            del self._watches[backend]
            self._last.pop(backend, None)
            return
        if isinstance(result, Failure):
            # IHealthCheck.probe must not fail; count it as a failed check all the same.
            _log.failure(
                "pool {pool}: health check {check!r} of backend {backend} failed",
                result,
                pool=self.pool.name,
                check=self.check,
                backend=backend.name,
            )
            result = ProbeResult(False, _describe(result))
        self._last[backend] = result
        if result.ok:
            backend.health_checks_passed += 1
        else:
            backend.health_checks_failed += 1
            backend.last_check_failure = result.detail
            backend.last_check_failure_at = self._reactor.seconds()
        first = not watch.checked
        watch.checked = True
        was_healthy = watch.healthy
        if result.ok:
            watch.failures = 0
            watch.passes += 1
            if not was_healthy and watch.passes >= self.rise:
                watch.healthy = True
        else:
            watch.passes = 0
            watch.failures += 1
            if was_healthy and (first or watch.failures >= self.fall):
                watch.healthy = False
        self._schedule(watch)
        if watch.healthy != was_healthy:
            self._apply(watch, first, result)
        if result.ok and watch.healthy and backend.ejected:
            self.pool.report_passing_check(backend, result.detail, watch.probe_started)

    def _schedule(self, watch: _Watch) -> None:
        seconds = self.interval if watch.healthy else self.down_interval
        seconds *= self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        watch.timer = self._reactor.callLater(seconds, self._probe, watch)

    def _apply(self, watch: _Watch, first: bool, result: ProbeResult) -> None:
        backend = watch.backend
        count = watch.passes if watch.healthy else watch.failures
        checks = "passed check" if watch.healthy else "failed check"
        if first and not watch.healthy:
            text = "pool {pool}: backend {backend} {state} after its first check failed"
        else:
            text = "pool {pool}: backend {backend} {state} after {count} {checks}"
        emit = _log.info if watch.healthy else _log.warn
        emit(
            text + " (last: {reason})",
            pool=self.pool.name,
            backend=backend.name,
            address=str(backend.address),
            state="UP" if watch.healthy else "DOWN",
            count=count,
            checks=checks if count == 1 else checks + "s",
            reason=result.detail,
        )
        try:
            self.pool.set_healthy(backend, watch.healthy)
        except Exception:
            _log.failure(
                "pool {pool}: could not mark backend {backend} {state}",
                pool=self.pool.name,
                backend=backend.name,
                state="UP" if watch.healthy else "DOWN",
            )
