"""
Backends: one server behind the balancer, its state and its live counters.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint

from twisted_lb import _defaults as defaults
from twisted_lb._address import Address, parse_address
from twisted_lb.interfaces import IBalancerReactor


def check_weight(name: str, weight: int) -> None:
    """
    Refuse a backend weight outside 1 to 256, the config's range (HAProxy's).

    Raises:
        ValueError: ``"backend NAME: weight must be from 1 to 256, not 0"``.
    """
    if not 1 <= weight <= defaults.MAX_WEIGHT:
        raise ValueError(
            f"backend {name}: weight must be from 1 to {defaults.MAX_WEIGHT}, not {weight}"
        )


class BackendState(enum.Enum):
    """
    Where a backend stands, as in HAProxy's server states.

    - ``UP``: takes new connections.
    - ``DOWN``: failed its health checks; takes none.
    - ``DRAINING``: takes no new connections; established ones finish.
    - ``MAINT``: taken out by the operator; takes none.
    """

    UP = "UP"
    DOWN = "DOWN"
    DRAINING = "DRAINING"
    MAINT = "MAINT"


#: Why a connection attempt to a backend failed, as counted in
#: :attr:`Backend.connect_errors`: refused, timed out (``connect_timeout``), a TLS failure
#: (handshake or verification), a failed name lookup, anything else.
CONNECT_ERROR_REASONS = ("refused", "timeout", "tls", "dns", "other")

#: Why a request or connection was tried again, as counted in :attr:`Backend.retries`
#: (counted on the backend that failed): its connection attempt failed and the next backend
#: is tried (L4 and L7); a reused keep-alive connection closed before any response byte and
#: the request is sent again on a fresh one (L7); the backend closed or reset the
#: connection before any response byte and an idempotent request goes to the next backend
#: (L7).
RETRY_REASONS = ("connect_failed", "stale_connection", "reset")

RETRY_CONNECT_FAILED = 0
RETRY_STALE_CONNECTION = 1
RETRY_RESET = 2


class PeakEWMA:
    """
    A peak-sensitive exponentially weighted moving average of response time: the "peak EWMA"
    of Finagle (``com.twitter.finagle.loadbalancer.PeakEwma``) and of Linkerd2-proxy (tower's
    ``tower::load::peak_ewma::PeakEwma``).

    It jumps up at once when a response is slower than the estimate, and comes down only
    gradually, so a backend that has just been slow keeps looking slow for a while:

    - ``observe(rtt, now)``: when ``rtt`` is above the estimate, the estimate becomes ``rtt``
      (the peak). Otherwise it becomes ``estimate * w + rtt * (1 - w)`` with
      ``w = exp(-(now - last) / decay)``, ``last`` being the time of the previous observation:
      the longer since the last observation, the more weight the new one gets (an EWMA over
      an unevenly spaced series). This is Finagle's and tower's update rule. The estimate it
      compares with is the one stored at ``last``, not the idle-decayed :meth:`value`, so the
      new estimate is never below ``rtt``, and a slower response never leaves a lower
      estimate than a faster one would.
    - ``value(now)``: the estimate discounted for idle time, ``estimate * exp(-(now - last) /
      decay)``, as Linkerd decays it each time it reads it. A backend that has not answered
      for a while looks cheaper and cheaper, so a balancer tries it again, instead of
      shunning it for good after one slow response. Reading does not change the estimate.

    Before any observation the estimate is 0. Times are seconds from the caller's injected
    clock (``reactor.seconds()``); this class reads no clock. A clock that goes back counts as
    no time elapsed.

    Args:
        decay: the time constant tau, in seconds: after ``decay`` seconds an old estimate
            keeps ``1/e`` (about 37%) of its weight. Finagle and Linkerd use 10 s.

    Raises:
        ValueError: ``decay`` is not positive.
    """

    __slots__ = ("_estimate", "_last", "decay")

    def __init__(self, decay: float = 10.0) -> None:
        if not decay > 0.0:
            raise ValueError(f"decay must be > 0 seconds, not {decay!r}")
        #: The time constant tau, in seconds.
        self.decay = decay
        self._estimate = 0.0
        self._last = 0.0

    def __repr__(self) -> str:
        return f"<PeakEWMA {self._estimate:.6f}s at {self._last:.3f}, decay {self.decay}s>"

    def observe(self, rtt: float, now: float) -> None:
        """
        Add one response time.

        Args:
            rtt: the response time, in seconds; a negative one counts as 0.
            now: the current time, in seconds, from the injected clock.
        """
        if not rtt >= 0.0:
            rtt = 0.0
        estimate = self._estimate
        if rtt >= estimate:
            self._estimate = rtt
        elif now > self._last:
            # estimate * w + rtt * (1 - w), with 1 - w = -expm1(x) exact for short gaps; kept
            # between rtt and the old estimate despite rounding.
            x = (self._last - now) / self.decay
            blended = estimate * math.exp(x) - rtt * math.expm1(x)
            self._estimate = min(max(blended, rtt), estimate)
        self._last = now

    def value(self, now: float) -> float:
        """
        The estimate, in seconds, decayed towards 0 for the time since the last observation.

        Args:
            now: the current time, in seconds, from the injected clock.

        Returns:
            ``estimate * exp(-(now - last) / decay)``; 0.0 before any observation.
        """
        estimate = self._estimate
        elapsed = now - self._last
        if estimate == 0.0 or elapsed <= 0.0:
            return estimate
        return estimate * math.exp(-elapsed / self.decay)


@attrs.frozen
class ConnectionInfo:
    """
    What a strategy may know of the client, and for L7 of the request, it is choosing a
    backend for.

    L4 fills in ``client_address`` only; the HTTP mode fills in the request's fields too.

    Attributes:
        client_address: the client's transport address (``IPv4Address``, ``IPv6Address``,
            ``UNIXAddress``), or ``None`` when unknown.
        method: the request method, such as ``b"GET"``; ``None`` in L4.
        host: the value of the request's ``Host`` header; ``None`` in L4 or when absent.
        path: the request-target as sent, such as ``b"/v1/items?page=2"``; ``None`` in L4.
        headers: the request's header fields as ``(name, value)`` pairs, in the order
            received, duplicates kept; names as sent (compare them case-insensitively).
            Empty in L4.
        now: the time of the pick, in seconds, from the data path's injected clock; for
            strategies that need time, such as ``least_time``. 0.0 when not given.
    """

    client_address: IAddress | None = None
    method: bytes | None = None
    host: bytes | None = None
    path: bytes | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()
    now: float = 0.0

    @property
    def client_host(self) -> str | None:
        """The client's IP as text, or ``None`` for non-IP clients (UNIX sockets)."""
        host = getattr(self.client_address, "host", None)
        return host if isinstance(host, str) else None

    @property
    def cookies(self) -> dict[bytes, bytes]:
        """
        The cookies of the request's ``Cookie`` headers, name to value.

        Parsed as RFC 6265 §4.2.1 ``name=value; name2=value2``, over every ``Cookie`` header
        in order. Whitespace around names and values is dropped, values are kept as sent
        (quotes included). The first occurrence of a name wins. Pairs without ``=`` or with
        an empty name are skipped; nothing raises. Parsed on each access.
        """
        cookies: dict[bytes, bytes] = {}
        for name, value in self.headers:
            if name.lower() != b"cookie":
                continue
            for pair in value.split(b";"):
                key, equals, rest = pair.partition(b"=")
                key = key.strip(b" \t")
                if equals and key and key not in cookies:
                    cookies[key] = rest.strip(b" \t")
        return cookies


@attrs.define(eq=False, repr=False)
class Backend:
    """
    One backend server and its live state.

    Equality is identity: two backends with the same address in two pools are two backends.

    Its :attr:`state` comes from two inputs, kept apart as HAProxy keeps a server's
    administrative and operational states apart: the operator's :attr:`admin_state` (``UP``
    for "ready", ``DRAINING`` or ``MAINT``) and the active health checks' verdict,
    :attr:`healthy`. Outlier ejection is a third, separate flag, :attr:`ejected`. Change them
    through the pool (:meth:`~twisted_lb.pool.Pool.set_healthy`,
    :meth:`~twisted_lb.pool.Pool.set_admin_state`), which recomputes :attr:`state` and starts
    slow start; assigning :attr:`state` directly lasts until the next change.

    Attributes:
        address: where the backend listens.
        name: shown in logs and summaries; defaults to the address.
        weight: the configured relative share of new connections, an integer from 1 to 256
            (HAProxy's range; the config's ``MAX_WEIGHT``).
        backup: used only while no primary backend of its pool is UP.
        state: see :class:`BackendState`. Only ``UP`` backends that are not :attr:`ejected`
            are picked (see :meth:`~twisted_lb.pool.Pool.eligible`). Passing ``DOWN`` to the
            constructor sets :attr:`healthy` to false; ``DRAINING`` or ``MAINT`` set
            :attr:`admin_state`.
        admin_state: the operator's state: ``UP`` (ready, the default), ``DRAINING`` or
            ``MAINT``; HAProxy's ``set server state ready|drain|maint``.
        healthy: the active health checks' verdict; true until a check says otherwise.
        ejected: taken out of rotation by passive outlier detection, until its ejection ends.
        ejections: times ejected in a row, the multiplier of the next ejection's duration.
        consecutive_failures: failures reported by the data paths since the last success.
        effective_weight: the weight strategies use, in units of :attr:`weight`: equal to it,
            except while the backend is in slow start, when it ramps from 10% to 100% of it.
        active_connections: client connections (L4) currently leased to this backend.
        total_connections: leases ever taken.
        connect_failures: connection attempts that were refused or timed out.
        bytes_in: bytes relayed from clients to this backend.
        bytes_out: bytes relayed from this backend to clients.
        in_flight_requests: HTTP requests (L7) sent to this backend and not yet answered in
            full; kept by the HTTP mode, always 0 in L4.
        requests_total: HTTP requests ever sent to this backend.
        responses: HTTP responses from this backend by status class: ``responses[0]``
            counts the 1xx, ..., ``responses[4]`` the 5xx. See :meth:`count_response`.
        response_time: a :class:`PeakEWMA` of this backend's HTTP response times, in
            seconds, fed by the HTTP mode with its injected clock; ``least_time`` reads it.
        connect_errors: failed connection attempts by reason, indexed as
            :data:`~twisted_lb.backend.CONNECT_ERROR_REASONS`; they sum to
            :attr:`connect_failures`.
        retries: retries after a failure of this backend, indexed as
            :data:`~twisted_lb.backend.RETRY_REASONS`.
        ejections_total: times passive outlier detection ejected it, ever.
        health_checks_passed: active health check probes it passed.
        health_checks_failed: active health check probes it failed.
        last_check_failure: what the last failed probe found (such as ``"connection
            refused in 0 ms"``), ``""`` before any failure; kept after it is UP again.
        last_check_failure_at: when that was, in seconds of the health monitor's clock
            (``reactor.seconds()``, POSIX time under a real reactor); 0.0 before any.
    """

    address: Address
    name: str = ""
    weight: int = 1
    backup: bool = False
    state: BackendState = BackendState.UP
    active_connections: int = 0
    total_connections: int = 0
    connect_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    in_flight_requests: int = 0
    requests_total: int = 0
    responses: list[int] = attrs.field(factory=lambda: [0] * 5)
    response_time: PeakEWMA = attrs.field(factory=PeakEWMA)
    admin_state: BackendState = BackendState.UP
    healthy: bool = True
    ejected: bool = False
    ejections: int = 0
    consecutive_failures: int = 0
    effective_weight: float = 0.0
    connect_errors: list[int] = attrs.field(factory=lambda: [0] * len(CONNECT_ERROR_REASONS))
    retries: list[int] = attrs.field(factory=lambda: [0] * len(RETRY_REASONS))
    ejections_total: int = 0
    health_checks_passed: int = 0
    health_checks_failed: int = 0
    last_check_failure: str = ""
    last_check_failure_at: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.name = str(self.address)
        check_weight(self.name, self.weight)
        if self.admin_state is BackendState.DOWN:
            raise ValueError(f"backend {self.name}: admin_state must be UP, DRAINING or MAINT")
        if self.state is BackendState.DOWN:
            self.healthy = False
        elif self.state is not BackendState.UP:
            self.admin_state = self.state
        self.refresh_state()
        if not self.effective_weight:
            self.effective_weight = float(self.weight)

    @property
    def available(self) -> bool:
        """Whether a strategy may be offered this backend (``UP`` and not ejected)."""
        return self.state is BackendState.UP and not self.ejected

    def refresh_state(self) -> bool:
        """
        Recompute :attr:`state` from :attr:`admin_state` and :attr:`healthy`: the operator's
        ``DRAINING`` or ``MAINT`` first, else ``UP`` or ``DOWN`` by the health checks.

        Returns:
            Whether :attr:`state` changed.
        """
        state: BackendState
        if self.admin_state is not BackendState.UP:
            state = self.admin_state
        else:
            state = BackendState.UP if self.healthy else BackendState.DOWN
        changed = state is not self.state
        self.state = state
        return changed

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.address} {self.state.value}>"

    def count_response(self, status: int) -> None:
        """
        Count one response in :attr:`responses` by its status class.

        Args:
            status: the HTTP status code; codes outside 100..599 are not counted.
        """
        if 100 <= status <= 599:
            self.responses[status // 100 - 1] += 1

    @classmethod
    def from_address(cls, address: str, **kwargs: Any) -> Backend:
        """
        Make a backend from an address string.

        Args:
            address: ``host:port``, ``[v6]:port`` or ``unix:/path``.
            **kwargs: the other attributes (``name``, ``weight``, ``backup``, ``state``).

        Raises:
            ValueError: the address or weight is invalid.
        """
        return cls(parse_address(address), **kwargs)

    def endpoint(self, reactor: IBalancerReactor) -> IStreamClientEndpoint:
        """
        The client endpoint that connects to this backend.

        IP literals connect directly (``TCP4ClientEndpoint``/``TCP6ClientEndpoint``), names go
        through ``HostnameEndpoint`` (resolved on each connect), ``unix:`` through
        ``UNIXClientEndpoint``. Connect timeouts are the caller's to enforce (the relay cancels
        the attempt), so that they run on the injected clock.

        Args:
            reactor: provides ``IReactorTCP``/``IReactorUNIX`` and ``IReactorTime``.
        """
        address = self.address
        if address.kind == "unix":
            return UNIXClientEndpoint(reactor, address.path)
        version = address.ip_version
        if version == 4:
            return TCP4ClientEndpoint(reactor, address.host, address.port)
        if version == 6:
            return TCP6ClientEndpoint(reactor, address.host, address.port)
        return HostnameEndpoint(reactor, address.host, address.port)
