"""
Pools: a named set of backends, the strategy that chooses among them, leases, and what takes
backends in and out of rotation: health verdicts, the operator's drain and maintenance,
passive outlier ejection, panic mode and slow start.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twisted_lb import _defaults as defaults
from twisted_lb.backend import Backend, BackendState, ConnectionInfo, check_weight
from twisted_lb.interfaces import IBalancingStrategy

_log = Logger()

#: The share of its weight a backend gets when its slow start begins (HAProxy and the issue's
#: "from 10% to 100%").
SLOW_START_FLOOR = 0.1


#: The upper bounds, in seconds, of the buckets of a pool's request duration histograms:
#: Prometheus client libraries' default buckets, with finer ones below 5 ms (a balancer on a
#: LAN answers in a millisecond or two) and longer ones up to the default ``response_timeout``.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class DurationHistogram:
    """
    A histogram of durations with fixed buckets: what the data path records per request
    (one bisect and two additions), read whole by the metrics at scrape time.

    A value ``v`` is counted in the first bucket whose upper bound is ``>= v`` (Prometheus'
    ``le``), or in the last, unbounded one. The counts are per bucket, not cumulative.

    Args:
        bounds: the buckets' upper bounds in seconds, increasing.

    Attributes:
        bounds: the upper bounds, in seconds.
        counts: ``len(bounds) + 1`` counts; the last is for values above every bound.
        sum: the sum of every observed value, in seconds.

    Raises:
        ValueError: ``bounds`` is empty or not strictly increasing.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"bucket bounds must be increasing, not {bounds!r}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<DurationHistogram {sum(self.counts)} values, {self.sum:.6f} s>"

    def observe(self, seconds: float) -> None:
        """Count one duration, in seconds."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class Lease:
    """
    One client's claim on a backend: counts it in ``backend.active_connections`` until released.

    Attributes:
        backend: the leased backend.
    """

    __slots__ = ("_released", "backend")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._released = False
        backend.active_connections += 1
        backend.total_connections += 1

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
        return self._released

    def release(self) -> None:
        """Give the backend back. Only the first call counts; later calls do nothing."""
        if not self._released:
            self._released = True
            self.backend.active_connections -= 1


class OutlierDetector:
    """
    Passive outlier detection: backends that fail real traffic are ejected for a while.

    This is Envoy's consecutive-failure outlier detection
    (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier):

    - the data paths report every outcome to the pool (:meth:`Pool.report_failure`,
      :meth:`Pool.report_success`, :meth:`Pool.report_response`): a connect failure, a reset
      before the response and, with ``count_5xx``, a 5xx response are failures; anything else
      is a success and resets the count;
    - ``consecutive_failures`` failures in a row eject the backend for
      ``base_ejection_time * n``, capped at ``max_ejection_time``, where ``n`` counts its
      ejections in a row, this one included;
    - ``n`` goes down by one for every ``base_ejection_time`` the backend then spends in
      service without being ejected (Envoy lowers it once per detection ``interval``);
    - an ejection that would take the ejected share of the pool above
      ``max_ejection_percent`` does not happen (strictly: with 2 backends and 50%, one may be
      ejected; with 1 backend, none);
    - an ejected backend comes back on its own when its time is up. Active health checks keep
      running meanwhile: a backend is picked only when it is UP by its checks *and* not
      ejected;
    - with ``uneject_on_passing_check`` (the default), a passing active check of a backend
      that is UP by its checks ends its ejection at once (:meth:`Pool.report_passing_check`),
      as Envoy's ``successful_active_health_check_uneject_host`` (default true) does, and as
      HAProxy brings a server that ``observe``/``on-error mark-down`` took down back by its
      checks. Like the end of its time, this resets the failure count and keeps the count of
      ejections in a row. Turn it off when the check does not exercise what real requests
      do: a backend that answers its check can still fail them.

    Args:
        reactor: provides ``IReactorTime``; ejections are timed on it.
        consecutive_failures: failures in a row that eject a backend, >= 1.
        base_ejection_time: seconds of the first ejection, > 0.
        max_ejection_time: seconds an ejection lasts at most, >= ``base_ejection_time``.
        max_ejection_percent: the largest share of the pool's backends ejected at once, in
            percent, 0..100.
        count_5xx: whether a 5xx response counts as a failure (HTTP mode).
        uneject_on_passing_check: whether a passing active health check ends an ejection.

    Raises:
        ValueError: a value is out of range.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        consecutive_failures: int = defaults.CONSECUTIVE_FAILURES,
        base_ejection_time: float = defaults.BASE_EJECTION_TIME,
        max_ejection_time: float = defaults.MAX_EJECTION_TIME,
        max_ejection_percent: int = defaults.MAX_EJECTION_PERCENT,
        count_5xx: bool = False,
        uneject_on_passing_check: bool = True,
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if not base_ejection_time > 0:
            raise ValueError("base_ejection_time must be > 0 s")
        if not max_ejection_time >= base_ejection_time:
            raise ValueError("max_ejection_time must be >= base_ejection_time")
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be in 0..100")
        self.reactor = reactor
        self.consecutive_failures = consecutive_failures
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_percent = max_ejection_percent
        self.count_5xx = count_5xx
        self.uneject_on_passing_check = uneject_on_passing_check

    def __repr__(self) -> str:
        return (
            f"<OutlierDetector {self.consecutive_failures} failures, "
            f"{self.base_ejection_time}..{self.max_ejection_time} s, "
            f"max {self.max_ejection_percent}%>"
        )

    def ejection_time(self, ejections: int) -> float:
        """
        Seconds an ejection lasts.

        Args:
            ejections: the backend's ejections in a row, this one included (>= 1).

        Returns:
            ``min(base_ejection_time * ejections, max_ejection_time)``.
        """
        return min(self.base_ejection_time * ejections, self.max_ejection_time)


class Pool:
    """
    Backends behind one strategy.

    Args:
        name: the pool's name, for logs.
        backends: its backends, in config order.
        strategy: chooses among the eligible backends.
        connect_timeout: seconds before a connection attempt to a backend is abandoned.
        retries: further backends tried after a failed connection attempt.
        response_timeout: HTTP only: seconds from a request being sent to the first byte of
            its response, else 504.
        upstream_idle_timeout: HTTP only: seconds an idle keep-alive connection to a backend
            is kept (4 s, below the 5 s of Node and other common backends).
        max_idle_per_backend: HTTP only: idle keep-alive connections kept per backend; 0
            disables reuse.
        panic: when no backend is available, offer the strategy every backend that is not
            drained or in maintenance, instead of none (Envoy's panic mode, with the panic
            threshold at 0%: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/
            upstream/load_balancing/panic_threshold).
        slow_start: seconds over which a backend that comes back into rotation ramps its
            :attr:`~twisted_lb.backend.Backend.effective_weight` linearly from 10% to 100% of
            its weight; 0 turns it off. As HAProxy's ``slowstart``, it applies to a backend
            that was out (DOWN, in maintenance, ejected), never to backends at start-up, and
            the weight is updated every ``max(1, slow_start / 20)`` seconds
            (``server_warmup`` in HAProxy's ``src/server.c``).
        outlier_detector: passive outlier detection settings; ``None`` turns it off.
        tls: TLS to the backends, a :class:`twisted_lb.tls.ClientTLS` (anything with its
            ``endpoint(reactor, backend)``); ``None`` for plain TCP.
        reactor: provides ``IReactorTime``; required for ``slow_start``. Defaults to the
            outlier detector's.

    Attributes:
        request_seconds: HTTP only: a :class:`~twisted_lb.pool.DurationHistogram` of the time
            from a request's first byte to the end of its response (or error), in seconds, over
            every request routed to this pool.
        first_byte_seconds: HTTP only: the time from a request's first byte to its backend's
            first response byte, for the requests that got one.

    Raises:
        ValueError: two backends share a name, a timeout or count is out of range, or
            ``slow_start`` is set without a reactor.
    """

    def __init__(
        self,
        name: str,
        backends: Iterable[Backend],
        strategy: IBalancingStrategy,
        *,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        retries: int = defaults.RETRIES,
        response_timeout: float = defaults.RESPONSE_TIMEOUT,
        upstream_idle_timeout: float = defaults.UPSTREAM_IDLE_TIMEOUT,
        max_idle_per_backend: int = defaults.MAX_IDLE_PER_BACKEND,
        panic: bool = False,
        slow_start: float = defaults.SLOW_START,
        outlier_detector: OutlierDetector | None = None,
        reactor: IReactorTime | None = None,
        tls: Any = None,
    ) -> None:
        for key, seconds in (
            ("connect_timeout", connect_timeout),
            ("response_timeout", response_timeout),
            ("upstream_idle_timeout", upstream_idle_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"pool {name}: {key} must be > 0 s, not {seconds}")
        if retries < 0:
            raise ValueError(f"pool {name}: retries must be >= 0")
        if max_idle_per_backend < 0:
            raise ValueError(f"pool {name}: max_idle_per_backend must be >= 0")
        if not slow_start >= 0:
            raise ValueError(f"pool {name}: slow_start must be >= 0 s, not {slow_start}")
        if reactor is None and outlier_detector is not None:
            reactor = outlier_detector.reactor
        if slow_start and reactor is None:
            raise ValueError(f"pool {name}: slow_start needs a reactor")
        self.name = name
        self.strategy = strategy
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.response_timeout = response_timeout
        self.upstream_idle_timeout = upstream_idle_timeout
        self.max_idle_per_backend = max_idle_per_backend
        self.panic = panic
        self.slow_start = slow_start
        self.outlier_detector = outlier_detector
        self.tls = tls
        self.reactor: IReactorTime | None = reactor
        self.backends: list[Backend] = []
        self.request_seconds = DurationHistogram()
        self.first_byte_seconds = DurationHistogram()
        # Timers by backend: the end of an ejection, the next slow-start step.
        self._unejections: dict[Backend, IDelayedCall] = {}
        self._warmups: dict[Backend, IDelayedCall] = {}
        # When a backend's slow start began, and when it last came back from an ejection.
        self._warming_since: dict[Backend, float] = {}
        self._returned_at: dict[Backend, float] = {}
        # When each ejected backend was ejected (a probe sent before then cannot end it).
        self._ejected_at: dict[Backend, float] = {}
        # After stop(): no new timers (reports during a shutdown's grace change no state).
        self._stopped = False
        self.set_backends(backends)

    def _clock(self) -> IReactorTime:
        """
        The reactor of slow start and ejections. Both need one: the constructor refuses
        ``slow_start`` without it and takes the outlier detector's, so this never fails for a
        pool built that way.
        """
        if self.reactor is None:
            raise RuntimeError(f"pool {self.name}: slow start and ejections need a reactor")
        return self.reactor

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.backends!r}>"

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """
        Replace the pool's membership and tell the strategy (``backends_changed``).

        Established leases on removed backends stay valid until released. Timers of removed
        backends (ejection, slow start) are cancelled.

        Raises:
            ValueError: two backends share a name.
        """
        backends = list(backends)
        names = [b.name for b in backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool {self.name}: duplicate backend names {duplicates}")
        self.backends = backends
        members = set(backends)
        for timers in (self._unejections, self._warmups):
            for backend in [b for b in timers if b not in members]:
                call = timers.pop(backend)
                if call.active():
                    call.cancel()
        for times in (self._warming_since, self._returned_at, self._ejected_at):
            for backend in [b for b in times if b not in members]:
                del times[backend]
        self._weights_changed()

    def reconfigure(
        self,
        *,
        strategy: IBalancingStrategy,
        connect_timeout: float,
        retries: int,
        response_timeout: float,
        upstream_idle_timeout: float,
        max_idle_per_backend: int,
        panic: bool,
        slow_start: float,
        outlier_detector: OutlierDetector | None,
        tls: Any,
    ) -> None:
        """
        Apply a reload's settings to this live pool, keeping its backends and their state.

        The arguments are those of the constructor. Exchanges in flight keep what they
        already have (their backend, their upstream connection); new picks, connects and
        timers use the new settings. A changed ``strategy`` is told the backends
        (``backends_changed``). Without ``slow_start``, warming backends go to full weight;
        without an ``outlier_detector``, ejected backends are back at once. Ejections in
        force keep their end time.

        Raises:
            ValueError: a value is out of range; nothing is changed then.
        """
        for key, seconds in (
            ("connect_timeout", connect_timeout),
            ("response_timeout", response_timeout),
            ("upstream_idle_timeout", upstream_idle_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"pool {self.name}: {key} must be > 0 s, not {seconds}")
        if retries < 0 or max_idle_per_backend < 0 or not slow_start >= 0:
            raise ValueError(
                f"pool {self.name}: retries, max_idle_per_backend and slow_start must be >= 0"
            )
        if slow_start and self.reactor is None:
            raise ValueError(f"pool {self.name}: slow_start needs a reactor")
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.response_timeout = response_timeout
        self.upstream_idle_timeout = upstream_idle_timeout
        self.max_idle_per_backend = max_idle_per_backend
        self.panic = panic
        self.tls = tls
        if not slow_start:
            for backend in list(self._warmups) + list(self._warming_since):
                self._end_slow_start(backend)
        self.slow_start = slow_start
        self.outlier_detector = outlier_detector
        if outlier_detector is None:
            for backend in list(self._unejections):
                call = self._unejections.pop(backend)
                if call.active():
                    call.cancel()
                self._uneject(backend)
            self._returned_at.clear()
        if strategy is not self.strategy:
            self.strategy = strategy
            self._weights_changed()

    def set_weight(self, backend: Backend, weight: int) -> None:
        """
        Change a backend's weight (HAProxy's ``set server weight``): new picks follow it at
        once, and the strategy is told (``backends_changed``). A backend in slow start keeps
        ramping, towards the new weight.

        Raises:
            ValueError: ``weight`` is not from 1 to 256, the config's range (HAProxy's).
        """
        check_weight(backend.name, weight)
        backend.weight = weight
        if backend not in self._warming_since:
            backend.effective_weight = float(weight)
        self._weights_changed()

    def _weights_changed(self) -> None:
        backends_changed = getattr(self.strategy, "backends_changed", None)
        if backends_changed is not None:
            backends_changed(list(self.backends))

    def eligible(self, exclude: Collection[Backend] = ()) -> Sequence[Backend]:
        """
        The backends a strategy may pick from now.

        - Available backends: ``UP`` and not ejected. Primaries while any primary is
          available, else backups (HAProxy's ``backup``).
        - If none is available and ``panic`` is on: every backend whose ``admin_state``
          is ready (not ``DRAINING`` or ``MAINT``), primaries and backups, whatever its
          health (Envoy's panic mode).
        - Backends in ``exclude`` (already tried for this client) are left out, but they still
          count as available primaries when deciding whether backups may serve.
        """
        primaries: list[Backend] = []
        backups: list[Backend] = []
        up = BackendState.UP
        for backend in self.backends:
            if backend.state is up and not backend.ejected:
                (backups if backend.backup else primaries).append(backend)
        tier = primaries or backups
        if not tier and self.panic:
            tier = [b for b in self.backends if b.admin_state is up]
        if exclude:
            return [b for b in tier if b not in exclude]
        return tier

    def attempts_left(self, tried: Collection[Backend]) -> int:
        """
        How many more backends a client whose connects to ``tried`` failed may be sent to: the
        ``retries`` it has left, but no more than the :meth:`eligible` backends it has not
        tried (so a pool of one backend has none left after it, whatever ``retries`` says).
        """
        left = self.retries + 1 - len(tried)
        return min(left, len(self.eligible(tried))) if left > 0 else 0

    def pick(self, info: ConnectionInfo, exclude: Collection[Backend] = ()) -> Lease | None:
        """
        Choose a backend with the strategy and lease it.

        Args:
            info: what is known of the client.
            exclude: backends already tried for this client.

        Returns:
            A lease, which the caller must release exactly once when the connection ends, or
            ``None`` when no backend is eligible or the strategy refused.

        Raises:
            RuntimeError: the strategy returned a backend that was not offered to it.
        """
        candidates = self.eligible(exclude)
        if not candidates:
            return None
        backend = self.strategy.pick(candidates, info)
        if backend is None:
            return None
        if backend not in candidates:
            raise RuntimeError(
                f"pool {self.name}: strategy {self.strategy!r} picked {backend!r}, "
                "which was not offered"
            )
        return Lease(backend)

    # -- states

    def set_healthy(self, backend: Backend, healthy: bool) -> bool:
        """
        Record the active health checks' verdict on a backend and recompute its state.

        A backend that becomes available again begins its slow start. Logging the transition
        is the caller's (the health monitor knows the reason).

        Args:
            backend: one of the pool's ``backends``.
            healthy: the verdict.

        Returns:
            Whether the backend's state changed.
        """
        was_available = backend.available
        backend.healthy = healthy
        changed = backend.refresh_state()
        self._availability_changed(backend, was_available)
        return changed

    def set_admin_state(self, backend: Backend, state: BackendState) -> bool:
        """
        Set the operator's state of a backend: ``UP`` (ready), ``DRAINING`` or ``MAINT``
        (HAProxy's ``set server state ready|drain|maint``).

        A drained or maintained backend gets no new connections or requests; established
        connections and in-flight requests finish. Back to ready, it is ``UP`` or ``DOWN`` by
        its health checks, and begins its slow start if ``UP``.

        Args:
            backend: one of the pool's ``backends``.
            state: the new administrative state.

        Returns:
            Whether the backend's state changed.

        Raises:
            ValueError: ``state`` is ``DOWN``, which only health checks decide.
        """
        if state is BackendState.DOWN:
            raise ValueError("DOWN is decided by health checks; use UP, DRAINING or MAINT")
        was_available = backend.available
        backend.admin_state = state
        changed = backend.refresh_state()
        if changed:
            _log.info(
                "pool {pool}: backend {backend} is now {state} (set by the operator)",
                pool=self.name,
                backend=backend.name,
                state=backend.state.value,
            )
        self._availability_changed(backend, was_available)
        return changed

    def _availability_changed(self, backend: Backend, was_available: bool) -> None:
        available = backend.available
        if available and not was_available:
            self._begin_slow_start(backend)
        elif was_available and not available:
            self._end_slow_start(backend)

    # -- slow start

    def _begin_slow_start(self, backend: Backend) -> None:
        if not self.slow_start or self._stopped or backend not in self.backends:
            return
        self._end_slow_start(backend, settle=False)
        self._warming_since[backend] = self._clock().seconds()
        self._warm(backend)

    def _warm(self, backend: Backend) -> None:
        """Set one slow-start step's effective weight and schedule the next step."""
        self._warmups.pop(backend, None)
        elapsed = self._clock().seconds() - self._warming_since[backend]
        if elapsed >= self.slow_start:
            self._end_slow_start(backend)
            return
        share = SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * max(elapsed, 0.0) / self.slow_start
        backend.effective_weight = backend.weight * share
        self._weights_changed()
        step = max(1.0, self.slow_start / 20)
        self._warmups[backend] = self._clock().callLater(
            min(step, self.slow_start - elapsed), self._warm, backend
        )

    def _end_slow_start(self, backend: Backend, settle: bool = True) -> None:
        call = self._warmups.pop(backend, None)
        if call is not None and call.active():
            call.cancel()
        self._warming_since.pop(backend, None)
        if settle and backend.effective_weight != backend.weight:
            backend.effective_weight = float(backend.weight)
            self._weights_changed()

    # -- outlier detection

    def report_success(self, backend: Backend) -> None:
        """
        The data path's report of a success: a connection made (L4), or a response that is
        not a failure (L7). Resets the backend's count of consecutive failures.
        """
        backend.consecutive_failures = 0

    def report_response(self, backend: Backend, status: int) -> None:
        """
        The HTTP mode's report of a response head from ``backend``: a failure when
        ``count_5xx`` is on and ``status`` is 5xx, else a success.
        """
        detector = self.outlier_detector
        if status >= 500 and detector is not None and detector.count_5xx:
            self.report_failure(backend, f"HTTP {status}")
        else:
            backend.consecutive_failures = 0

    def report_failure(self, backend: Backend, reason: str) -> None:
        """
        The data path's report of a failure of ``backend``: a connect failure, a reset before
        the response, a response timeout or, with ``count_5xx``, a 5xx. With outlier
        detection on, enough failures in a row eject the backend (see
        :class:`~twisted_lb.pool.OutlierDetector`).

        Args:
            backend: the backend that failed.
            reason: a short description for the log, such as ``"connection refused"``.
        """
        backend.consecutive_failures += 1
        detector = self.outlier_detector
        if (
            detector is None
            or self._stopped
            or backend.ejected
            or backend.consecutive_failures < detector.consecutive_failures
            or backend not in self.backends
        ):
            return
        ejected = sum(1 for b in self.backends if b.ejected)
        if (ejected + 1) * 100 > detector.max_ejection_percent * len(self.backends):
            if backend.consecutive_failures == detector.consecutive_failures:
                _log.warn(
                    "pool {pool}: backend {backend} not ejected after {count} consecutive "
                    "failures (last: {reason}): {ejected} of {total} backends are ejected "
                    "and max_ejection_percent is {percent}",
                    pool=self.name,
                    backend=backend.name,
                    count=backend.consecutive_failures,
                    reason=reason,
                    ejected=ejected,
                    total=len(self.backends),
                    percent=detector.max_ejection_percent,
                )
            return
        now = self._clock().seconds()
        returned = self._returned_at.pop(backend, None)
        if returned is not None:
            served = int(max(now - returned, 0.0) // detector.base_ejection_time)
            backend.ejections = max(backend.ejections - served, 0)
        backend.ejections += 1
        backend.ejections_total += 1
        seconds = detector.ejection_time(backend.ejections)
        was_available = backend.available
        backend.ejected = True
        self._availability_changed(backend, was_available)
        self._unejections[backend] = self._clock().callLater(seconds, self._uneject, backend)
        self._ejected_at[backend] = now
        _log.warn(
            "pool {pool}: backend {backend} ejected for {seconds:g} s after {count} "
            "consecutive failures (last: {reason}); ejection {ejections} in a row",
            pool=self.name,
            backend=backend.name,
            seconds=seconds,
            count=backend.consecutive_failures,
            reason=reason,
            ejections=backend.ejections,
        )

    def report_passing_check(
        self, backend: Backend, reason: str, started: float | None = None
    ) -> bool:
        """
        The active health checks' report that ``backend`` passed a check and is UP by them.
        With outlier detection's ``uneject_on_passing_check`` on, an ejected backend comes
        back now instead of at the end of its ejection time (Envoy's
        ``successful_active_health_check_uneject_host``; see
        :class:`~twisted_lb.pool.OutlierDetector`). A probe sent before the ejection (or at
        the same instant) says nothing about the failures that caused it, and is ignored.

        Args:
            backend: one of the pool's ``backends``.
            reason: what the check saw, for the log, such as ``"HTTP 200 in 3 ms"``.
            started: when the probe was sent, in the reactor's seconds; ``None`` for a
                report that is not about one probe.

        Returns:
            Whether this ended an ejection.
        """
        detector = self.outlier_detector
        if (
            detector is None
            or not detector.uneject_on_passing_check
            or backend not in self._unejections
            or (started is not None and started <= self._ejected_at.get(backend, -1e300))
        ):
            return False
        call = self._unejections.pop(backend)
        if call.active():
            call.cancel()
        self._uneject(backend, f": passed its health check ({reason})")
        return True

    def _uneject(self, backend: Backend, why: str = "") -> None:
        self._unejections.pop(backend, None)
        self._ejected_at.pop(backend, None)
        backend.ejected = False
        backend.consecutive_failures = 0
        self._returned_at[backend] = self._clock().seconds()
        _log.info(
            "pool {pool}: backend {backend} back from ejection{why}",
            pool=self.name,
            backend=backend.name,
            why=why,
        )
        self._availability_changed(backend, False)

    def ejection_remaining(self, backend: Backend) -> float | None:
        """
        Seconds until an ejected backend is back in rotation, or ``None`` when it is not
        ejected (for the admin API).
        """
        call = self._unejections.get(backend)
        if call is None or not call.active():
            return None
        left: float = call.getTime() - self._clock().seconds()
        return max(left, 0.0)

    def stop(self) -> None:
        """
        Cancel the pool's timers (ejections, slow start) and start no more until
        :meth:`start`: ejected backends are back in rotation and warming ones at full weight.
        Reports still count failures, but eject nothing.
        """
        self._stopped = True
        for timers in (self._unejections, self._warmups):
            for call in timers.values():
                if call.active():
                    call.cancel()
            timers.clear()
        self._warming_since.clear()
        changed = False
        for backend in self.backends:
            backend.ejected = False
            if backend.effective_weight != backend.weight:
                backend.effective_weight = float(backend.weight)
                changed = True
        if changed:
            self._weights_changed()

    def start(self) -> None:
        """Undo :meth:`stop`: ejections and slow starts happen again (a new pool is started)."""
        self._stopped = False
