"""
Tests of the active health checks and the health monitor, on a memory reactor with string
transports and fake checks: no sockets, no sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_lb.backend import Backend, BackendState
from twisted_lb.health import (
    MAX_BODY_BYTES,
    HealthMonitor,
    HTTPCheck,
    ProbeResult,
    TCPCheck,
)
from twisted_lb.interfaces import IHealthCheck
from twisted_lb.pool import OutlierDetector, Pool
from twisted_lb.strategies import get_strategy

PASS = ProbeResult(True, "HTTP 200 in 3 ms")
FAIL = ProbeResult(False, "HTTP 503 in 12 ms")


@implementer(IHealthCheck)
class FakeCheck:
    """
    A health check whose probes wait until the test answers them.

    Args:
        on_cancel: what a cancelled probe fires with; by default it fails with
            ``CancelledError``, as Twisted's Deferreds do.
    """

    def __init__(self, on_cancel: ProbeResult | None = None) -> None:
        self.pending: list[tuple[Backend, Deferred[ProbeResult]]] = []
        self.cancelled: list[Backend] = []
        self.on_cancel = on_cancel

    def probe(self, backend: Backend) -> Deferred[ProbeResult]:
        def cancel(d: Deferred[ProbeResult]) -> None:
            self.cancelled.append(backend)
            if self.on_cancel is not None:
                d.callback(self.on_cancel)

        probing: Deferred[ProbeResult] = Deferred(cancel)
        self.pending.append((backend, probing))
        return probing

    def waiting(self) -> list[Backend]:
        """The backends whose probe is in flight, in the order probed."""
        return [b for b, d in self.pending if not d.called]

    def answer(self, backend: Backend, result: ProbeResult) -> None:
        """Complete the oldest pending probe of ``backend``."""
        for i, (b, d) in enumerate(self.pending):
            if b is backend and not d.called:
                del self.pending[i]
                d.callback(result)
                return
        raise AssertionError(f"no probe of {backend!r} in flight")


@implementer(IHealthCheck)
class InstantCheck:
    """A health check that answers at once, from a list of results, then always ``last``."""

    def __init__(self, results: list[ProbeResult] | None = None, last: ProbeResult = PASS):
        self.results = list(results or [])
        self.last = last
        self.probes = 0

    def probe(self, backend: Backend) -> Deferred[ProbeResult]:
        self.probes += 1
        return succeed(self.results.pop(0) if self.results else self.last)


def health_events(events: Sequence[LogEvent]) -> list[tuple[LogLevel, str]]:
    return [
        (e["log_level"], formatEvent(e))
        for e in events
        if e.get("log_namespace") == "twisted_lb.health"
    ]


class FakeTests(SynchronousTestCase):
    def test_fakes_provide_the_interface(self) -> None:
        """The fakes of this module are health checks, as the real ones are."""
        verifyObject(IHealthCheck, FakeCheck())
        verifyObject(IHealthCheck, InstantCheck())


class MonitorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.app1 = Backend.from_address("10.0.0.1:8080", name="app1")
        self.app2 = Backend.from_address("10.0.0.2:8080", name="app2")
        self.pool = Pool("app", [self.app1, self.app2], get_strategy("round_robin"))
        self.check = FakeCheck()

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def monitor(self, check: IHealthCheck | None = None, **kwargs: Any) -> HealthMonitor:
        kwargs.setdefault("jitter", 0.0)
        monitor = HealthMonitor(self.clock, self.pool, check or self.check, **kwargs)

        def stop() -> None:
            if monitor.running:
                monitor.stopService()

        self.addCleanup(stop)
        return monitor

    def delay(self) -> float:
        """Seconds until the one scheduled probe."""
        [call] = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def answer_round(self, result: ProbeResult, backend: Backend | None = None) -> None:
        """Answer the probe of ``backend`` (default app1), then run the clock to its next one."""
        backend = backend or self.app1
        self.check.answer(backend, result)
        self.clock.advance(self.delay())

    def test_rejects_bad_values(self) -> None:
        """Intervals must be positive, rise and fall at least 1, jitter in [0, 1)."""
        cases: list[dict[str, Any]] = [
            {"interval": 0.0},
            {"interval": -1.0},
            {"down_interval": 0.0},
            {"rise": 0},
            {"fall": 0},
            {"jitter": -0.1},
            {"jitter": 1.0},
        ]
        for kwargs in cases:
            with self.assertRaises(ValueError, msg=str(kwargs)) as raised:
                HealthMonitor(self.clock, self.pool, self.check, **kwargs)
            self.assertIn("pool app: health check", str(raised.exception))

    def test_probe_sent_before_the_ejection_does_not_end_it(self) -> None:
        """
        A probe in flight when real traffic ejects the backend passes, but it was sent before
        the failures: the ejection stays. The next probe, sent after it, ends it.
        """
        detector = OutlierDetector(
            self.clock, consecutive_failures=1, max_ejection_percent=100, base_ejection_time=30.0
        )
        self.pool = Pool(
            "app", [self.app1, self.app2], get_strategy("round_robin"), outlier_detector=detector
        )
        monitor = self.monitor(interval=2.0, rise=1, fall=1)
        monitor.startService()
        self.check.answer(self.app1, PASS)
        self.check.answer(self.app2, PASS)
        self.clock.advance(2.0)  # app1's next probe is sent
        self.pool.report_failure(self.app1, "HTTP 500")  # ejected for 30 s
        self.clock.advance(0.5)
        self.check.answer(self.app1, PASS)  # the probe sent before the ejection
        self.assertTrue(self.app1.ejected)
        self.check.answer(self.app2, PASS)
        self.clock.advance(2.0)  # a probe sent after the ejection
        self.check.answer(self.app1, PASS)
        self.assertFalse(self.app1.ejected)
        monitor.stopService()
        self.pool.stop()

    def test_passing_check_ends_an_ejection(self) -> None:
        """
        A backend ejected by outlier detection comes back at its next passing check, long
        before its ejection time is up, when it is UP by its checks; one that is DOWN comes
        back when its checks bring it UP (rise), not at its first passing check.
        """
        detector = OutlierDetector(self.clock, consecutive_failures=1, max_ejection_percent=100)
        self.pool = Pool(
            "app", [self.app1, self.app2], get_strategy("round_robin"), outlier_detector=detector
        )
        monitor = self.monitor(interval=2.0, rise=2, fall=1)
        monitor.startService()
        self.check.answer(self.app2, PASS)
        self.check.answer(self.app1, PASS)
        self.pool.report_failure(self.app1, "HTTP 500")
        self.assertTrue(self.app1.ejected)
        self.clock.advance(2.0)  # app1 and app2 are probed again
        with capturedLogs() as events:
            self.check.answer(self.app1, PASS)
        self.assertFalse(self.app1.ejected)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "pool app: backend app1 back from ejection: passed its health check "
                "(HTTP 200 in 3 ms)"
            ],
        )
        # DOWN and ejected: the first pass leaves it ejected, the second (rise) ends both.
        self.check.answer(self.app2, FAIL)
        self.assertEqual(self.app2.state, BackendState.DOWN)
        self.pool.report_failure(self.app2, "HTTP 500")
        self.assertTrue(self.app2.ejected)
        self.clock.advance(2.0)
        self.check.answer(self.app2, PASS)
        self.assertTrue(self.app2.ejected)
        self.clock.advance(2.0)
        self.check.answer(self.app2, PASS)
        self.assertEqual(self.app2.state, BackendState.UP)
        self.assertFalse(self.app2.ejected)
        monitor.stopService()
        self.pool.stop()

    def test_start_probes_every_backend_at_once(self) -> None:
        """
        Starting probes every backend of the pool at once; each counts as UP until its first
        probe completes, and nothing is scheduled while a probe is in flight.
        """
        monitor = self.monitor()
        monitor.startService()
        self.assertEqual(self.check.waiting(), [self.app1, self.app2])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.app1.state, self.app2.state), (BackendState.UP, BackendState.UP))
        self.assertIsNone(monitor.last_result(self.app1))
        monitor.stopService()

    def test_counts_results_and_keeps_last_failure(self) -> None:
        """
        Each result is counted on its backend as passed or failed, and the last failure's
        detail and time stay on the backend after it passes again.
        """
        monitor = self.monitor(interval=2.0, rise=1)
        monitor.startService()
        self.assertEqual(self.app1.last_check_failure, "")
        self.clock.advance(1.0)
        self.check.answer(self.app1, FAIL)
        self.check.answer(self.app2, PASS)
        self.assertEqual(self.app1.last_check_failure, FAIL.detail)
        self.assertEqual(self.app1.last_check_failure_at, 1.0)
        self.clock.advance(2.0)
        self.check.answer(self.app1, PASS)
        self.check.answer(self.app2, PASS)
        self.assertEqual((self.app1.health_checks_passed, self.app1.health_checks_failed), (1, 1))
        self.assertEqual((self.app2.health_checks_passed, self.app2.health_checks_failed), (2, 0))
        self.assertEqual(self.app1.last_check_failure, FAIL.detail)
        self.assertEqual(self.app2.last_check_failure, "")
        monitor.stopService()

    def test_first_failure_marks_down_at_once(self) -> None:
        """A first failed probe takes the backend DOWN at once, whatever ``fall`` is."""
        monitor = self.monitor(fall=3)
        monitor.startService()
        refused = ProbeResult(False, "connection refused in 0 ms")
        with capturedLogs() as events:
            self.check.answer(self.app2, refused)
        self.assertEqual(self.app2.state, BackendState.DOWN)
        self.assertFalse(self.app2.healthy)
        self.assertEqual(self.app1.state, BackendState.UP)
        self.assertEqual(monitor.last_result(self.app2), refused)
        self.assertEqual(
            health_events(events),
            [
                (
                    LogLevel.warn,
                    "pool app: backend app2 DOWN after its first check failed "
                    "(last: connection refused in 0 ms)",
                )
            ],
        )
        [event] = events
        self.assertEqual(
            (event["pool"], event["backend"], event["state"], event["reason"]),
            ("app", "app2", "DOWN", "connection refused in 0 ms"),
        )
        monitor.stopService()

    def test_fall(self) -> None:
        """
        After a first pass, ``fall`` consecutive failures take an UP backend DOWN, with one
        warning that gives the count and the last result.
        """
        self.pool.set_backends([self.app1])
        monitor = self.monitor(fall=3)
        monitor.startService()
        self.answer_round(PASS)
        self.answer_round(FAIL)
        self.answer_round(FAIL)
        self.assertEqual(self.app1.state, BackendState.UP)
        with capturedLogs() as events:
            self.check.answer(self.app1, FAIL)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        self.assertEqual(
            health_events(events),
            [
                (
                    LogLevel.warn,
                    "pool app: backend app1 DOWN after 3 failed checks (last: HTTP 503 in 12 ms)",
                )
            ],
        )
        [event] = events
        self.assertEqual((event["count"], event["address"]), (3, "10.0.0.1:8080"))
        # More failures say nothing more.
        self.clock.advance(self.delay())
        with capturedLogs() as events:
            self.check.answer(self.app1, FAIL)
        self.assertEqual(health_events(events), [])
        monitor.stopService()

    def test_rise(self) -> None:
        """``rise`` consecutive passes bring a DOWN backend UP, with one info event."""
        self.pool.set_backends([self.app1])
        monitor = self.monitor(rise=2)
        monitor.startService()
        self.answer_round(FAIL)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        self.answer_round(PASS)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        with capturedLogs() as events:
            self.check.answer(self.app1, PASS)
        self.assertEqual(self.app1.state, BackendState.UP)
        self.assertTrue(self.app1.healthy)
        self.assertEqual(
            health_events(events),
            [
                (
                    LogLevel.info,
                    "pool app: backend app1 UP after 2 passed checks (last: HTTP 200 in 3 ms)",
                )
            ],
        )
        monitor.stopService()

    def test_counts_of_one_are_singular(self) -> None:
        """With ``rise=1`` and ``fall=1``, the events speak of one check."""
        self.pool.set_backends([self.app1])
        monitor = self.monitor(rise=1, fall=1)
        monitor.startService()
        with capturedLogs() as events:
            self.answer_round(PASS)
            self.answer_round(FAIL)
            self.answer_round(PASS)
        self.assertEqual(
            [text for _, text in health_events(events)],
            [
                "pool app: backend app1 DOWN after 1 failed check (last: HTTP 503 in 12 ms)",
                "pool app: backend app1 UP after 1 passed check (last: HTTP 200 in 3 ms)",
            ],
        )
        monitor.stopService()

    def test_single_failure_among_passes_does_not_flap(self) -> None:
        """A pass resets the count of failures, and a failure the count of passes."""
        self.pool.set_backends([self.app1])
        monitor = self.monitor(rise=2, fall=2)
        monitor.startService()
        with capturedLogs() as events:
            self.answer_round(PASS)
            for _ in range(5):
                self.answer_round(FAIL)
                self.assertEqual(self.app1.state, BackendState.UP)
                self.answer_round(PASS)
            self.answer_round(FAIL)
            self.answer_round(FAIL)
            self.assertEqual(self.app1.state, BackendState.DOWN)
            for _ in range(5):
                self.answer_round(PASS)
                self.assertEqual(self.app1.state, BackendState.DOWN)
                self.answer_round(FAIL)
        self.assertEqual(len(health_events(events)), 1)
        monitor.stopService()

    @given(
        rise=st.integers(1, 4),
        fall=st.integers(1, 4),
        results=st.lists(st.booleans(), max_size=40),
    )
    def test_rise_fall_model(self, rise: int, fall: int, results: list[bool]) -> None:
        """
        Over any sequence of results, the backend's verdict is that of a simple model of
        rise/fall, each change is logged once, and one probe is scheduled after each result.
        """
        clock = Clock()
        backend = Backend.from_address("10.0.0.1:8080", name="app1")
        pool = Pool("app", [backend], get_strategy("round_robin"))
        check = InstantCheck([PASS if ok else FAIL for ok in results[:1]])
        monitor = HealthMonitor(clock, pool, check, rise=rise, fall=fall, jitter=0.0)
        up, passes, failures, changes = True, 0, 0, 0
        with capturedLogs() as events:
            monitor.startService()
            for i, ok in enumerate(results):
                if i:
                    check.last = PASS if ok else FAIL
                    clock.advance(2.0)
                was_up = up
                if ok:
                    passes, failures = passes + 1, 0
                    up = up or passes >= rise
                else:
                    passes, failures = 0, failures + 1
                    up = up and not (i == 0 or failures >= fall)
                changes += up != was_up
                self.assertEqual(backend.healthy, up)
                self.assertEqual(len(clock.getDelayedCalls()), 1)
            monitor.stopService()
        self.assertEqual(len(health_events(events)), changes)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_interval_and_down_interval(self) -> None:
        """
        The next probe is scheduled when a result arrives: ``interval`` after it while the
        backend is UP, ``down_interval`` while it is DOWN.
        """
        self.pool.set_backends([self.app1])
        monitor = self.monitor(interval=2.0, down_interval=5.0, rise=2, fall=1)
        monitor.startService()
        self.check.answer(self.app1, PASS)
        self.assertEqual(self.delay(), 2.0)
        self.clock.advance(1.9)
        self.assertEqual(self.check.waiting(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.check.waiting(), [self.app1])
        self.check.answer(self.app1, FAIL)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        self.assertEqual(self.delay(), 5.0)
        self.clock.advance(4.9)
        self.assertEqual(self.check.waiting(), [])
        self.clock.advance(0.1)
        self.answer_round(PASS)
        self.check.answer(self.app1, PASS)
        self.assertEqual(self.app1.state, BackendState.UP)
        self.assertEqual(self.delay(), 2.0)
        monitor.stopService()

    def test_down_interval_defaults_to_interval(self) -> None:
        monitor = self.monitor(interval=3.0)
        self.assertEqual(monitor.down_interval, 3.0)

    def test_jitter_bounds(self) -> None:
        """
        With jitter, each delay is ``interval`` times a factor drawn uniformly from
        ``[1 - jitter, 1 + jitter]``: all within bounds, and not all the same.
        """
        self.pool.set_backends([self.app1])
        check = InstantCheck([FAIL] * 100, last=PASS)
        monitor = self.monitor(
            check, interval=2.0, down_interval=10.0, jitter=0.2, rng=random.Random(7)
        )
        monitor.startService()
        delays = []
        for _ in range(300):
            delays.append(self.delay())
            self.clock.advance(delays[-1])
        monitor.stopService()
        down, up = delays[:100], delays[101:]
        for seconds, span in ((down, (8.0, 12.0)), (up, (1.6, 2.4))):
            self.assertTrue(all(span[0] <= s <= span[1] for s in seconds), (span, seconds))
            self.assertGreater(len(set(seconds)), len(seconds) // 2)
            # Spread over the range, not bunched at one end.
            self.assertLess(min(seconds), span[0] + (span[1] - span[0]) * 0.2)
            self.assertGreater(max(seconds), span[1] - (span[1] - span[0]) * 0.2)

    def test_jitter_is_repeatable_with_a_seeded_rng(self) -> None:
        delays = []
        for _ in range(2):
            clock = Clock()
            monitor = HealthMonitor(clock, self.pool, InstantCheck(), rng=random.Random(3))
            monitor.startService()
            delays.append(sorted(c.getTime() for c in clock.getDelayedCalls()))
            monitor.stopService()
        self.assertEqual(delays[0], delays[1])

    def test_no_jitter_gives_exactly_the_interval(self) -> None:
        self.pool.set_backends([self.app1])
        monitor = self.monitor(InstantCheck(), interval=2.5, jitter=0.0)
        monitor.startService()
        for _ in range(20):
            self.assertEqual(self.delay(), 2.5)
            self.clock.advance(2.5)
        monitor.stopService()

    def test_stop_cancels_probes_in_flight(self) -> None:
        """Stopping cancels every probe in flight; nothing is scheduled afterwards."""
        monitor = self.monitor()
        monitor.startService()
        monitor.stopService()
        self.assertEqual(self.check.cancelled, [self.app1, self.app2])
        self.assertEqual(self.check.waiting(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(monitor.running)

    def test_stop_cancels_timers(self) -> None:
        """Stopping cancels every scheduled probe."""
        monitor = self.monitor()
        monitor.startService()
        self.check.answer(self.app1, PASS)
        self.check.answer(self.app2, FAIL)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        monitor.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.check.waiting(), [])

    def test_result_after_stop_changes_nothing(self) -> None:
        """
        A probe that answers its cancellation with a result (a failed one, here) changes no
        state and schedules nothing.
        """
        self.check = FakeCheck(on_cancel=ProbeResult(False, "cancelled"))
        monitor = self.monitor()
        monitor.startService()
        with capturedLogs() as events:
            monitor.stopService()
        self.assertEqual(self.check.cancelled, [self.app1, self.app2])
        self.assertEqual((self.app1.state, self.app2.state), (BackendState.UP, BackendState.UP))
        self.assertIsNone(monitor.last_result(self.app1))
        self.assertEqual(health_events(events), [])

    def test_restart(self) -> None:
        """
        A stopped monitor starts again: it probes every backend at once, and a backend it
        had marked DOWN stays DOWN until ``rise`` passes.
        """
        self.pool.set_backends([self.app1])
        monitor = self.monitor(rise=2)
        monitor.startService()
        self.answer_round(FAIL)
        monitor.stopService()
        self.assertEqual(self.check.cancelled, [self.app1])
        monitor.startService()
        self.assertEqual(self.check.waiting(), [self.app1])
        self.answer_round(PASS)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        self.check.answer(self.app1, PASS)
        self.assertEqual(self.app1.state, BackendState.UP)
        monitor.stopService()

    def test_backend_removed_from_pool(self) -> None:
        """A result for a backend that left the pool is ignored, and its probes end."""
        monitor = self.monitor()
        monitor.startService()
        self.pool.set_backends([self.app1])
        self.check.answer(self.app2, FAIL)
        self.assertEqual(self.app2.state, BackendState.UP)
        self.assertIsNone(monitor.last_result(self.app2))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.check.answer(self.app1, PASS)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        monitor.stopService()

    def test_backends_added_are_probed_from_the_next_start(self) -> None:
        app3 = Backend.from_address("10.0.0.3:8080", name="app3")
        monitor = self.monitor()
        monitor.startService()
        self.pool.set_backends([self.app1, self.app2, app3])
        self.assertEqual(self.check.waiting(), [self.app1, self.app2])
        monitor.stopService()
        monitor.startService()
        self.assertEqual(self.check.waiting(), [self.app1, self.app2, app3])
        monitor.stopService()

    def test_last_result(self) -> None:
        """``last_result`` gives each backend's latest result, and keeps it after a stop."""
        monitor = self.monitor()
        monitor.startService()
        self.check.answer(self.app1, PASS)
        self.assertEqual(monitor.last_result(self.app1), PASS)
        self.assertIsNone(monitor.last_result(self.app2))
        self.clock.advance(self.delay())
        self.check.answer(self.app1, FAIL)
        self.assertEqual(monitor.last_result(self.app1), FAIL)
        monitor.stopService()
        self.assertEqual(monitor.last_result(self.app1), FAIL)

    def test_a_failing_check_counts_as_a_failed_check(self) -> None:
        """
        A check whose probe fails or raises, against the interface's contract, is logged and
        counts as a failed check; the probes go on.
        """

        @implementer(IHealthCheck)
        class BrokenCheck:
            def probe(self, backend: Backend) -> Deferred[ProbeResult]:
                raise RuntimeError("broken check")

        self.pool.set_backends([self.app1])
        monitor = self.monitor(BrokenCheck())
        monitor.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.app1.state, BackendState.DOWN)
        self.assertEqual(monitor.last_result(self.app1), ProbeResult(False, "broken check"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        monitor.stopService()


def connect(
    reactor: MemoryReactorClock, index: int = -1, disconnection: bool = True
) -> tuple[Any, StringTransport]:
    """
    Complete the connection attempt ``index`` of the memory reactor, with a transport whose
    ``loseConnection`` tells the protocol at once (``disconnection``) or does nothing more
    than note it, as a real one would until the next reactor turn.
    """
    factory = reactor.tcpClients[index][2]
    protocol: Any = factory.buildProtocol(None)
    transport: StringTransport
    if disconnection:
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
    else:
        transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def refuse(reactor: MemoryReactorClock, index: int = -1) -> None:
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(reactor.connectors[index], Failure(ConnectionRefusedError()))


class TCPCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = Backend.from_address("10.0.0.5:8080", name="app1")
        self.check = TCPCheck(self.reactor, timeout=1.0)
        self.results: list[ProbeResult | Failure] = []

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def probe(self) -> None:
        self.check.probe(self.backend).addBoth(self.results.append)

    def test_provides_the_interface(self) -> None:
        verifyObject(IHealthCheck, self.check)

    def test_rejects_bad_timeout(self) -> None:
        for timeout in (0.0, -1.0):
            self.assertRaises(ValueError, TCPCheck, self.reactor, timeout=timeout)

    def test_connected(self) -> None:
        """The check passes once connected, and closes the connection at once."""
        with capturedLogs() as events:
            self.probe()
            self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("10.0.0.5", 8080)])
            self.reactor.advance(0.001)
            _protocol, transport = connect(self.reactor)
        self.assertFalse(transport.connected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.results, [ProbeResult(True, "connected in 1 ms")])
        self.assertEqual(events, [])

    def test_refused(self) -> None:
        self.probe()
        refuse(self.reactor)
        self.assertEqual(self.results, [ProbeResult(False, "connection refused in 0 ms")])

    def test_other_error(self) -> None:
        """Other errors are described by their message."""
        self.probe()
        self.reactor.advance(0.25)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(DNSLookupError("no such host"))
        )
        self.assertEqual(
            self.results, [ProbeResult(False, "DNS lookup failed: no such host in 250 ms")]
        )

    def test_timeout(self) -> None:
        """After ``timeout`` seconds the check fails and the connection attempt is stopped."""
        self.probe()
        self.reactor.advance(0.999)
        self.assertEqual(self.results, [])
        self.reactor.advance(0.001)
        self.assertEqual(self.results, [ProbeResult(False, "timed out after 1000 ms")])
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_cancel(self) -> None:
        """Cancelling stops the attempt and the timer; the Deferred fails with CancelledError."""
        probing = self.check.probe(self.backend)
        probing.cancel()
        self.failureResultOf(probing, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_connects_through_the_endpoint_hook(self) -> None:
        calls = []

        def endpoint(reactor: Any, backend: Backend) -> IStreamClientEndpoint:
            calls.append((reactor, backend))
            return TCP4ClientEndpoint(reactor, "192.0.2.9", 9999)

        self.check = TCPCheck(self.reactor, endpoint=endpoint)
        self.probe()
        self.assertEqual(calls, [(self.reactor, self.backend)])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("192.0.2.9", 9999)])
        connect(self.reactor)
        self.assertEqual(self.results, [ProbeResult(True, "connected in 0 ms")])

    def test_endpoint_hook_that_raises(self) -> None:
        def endpoint(reactor: Any, backend: Backend) -> IStreamClientEndpoint:
            raise ValueError("no TLS context")

        self.check = TCPCheck(self.reactor, endpoint=endpoint)
        self.probe()
        self.assertEqual(self.results, [ProbeResult(False, "no TLS context in 0 ms")])


class HTTPCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = Backend.from_address("10.0.0.5:8080", name="app1")
        self.results: list[ProbeResult | Failure] = []

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def probe(self, backend: Backend | None = None, **kwargs: Any) -> tuple[Any, StringTransport]:
        """Start a probe with an HTTPCheck of ``kwargs`` and connect it."""
        check = HTTPCheck(self.reactor, **kwargs)
        check.probe(backend or self.backend).addBoth(self.results.append)
        return connect(self.reactor)

    def request_head(self, transport: StringTransport) -> list[bytes]:
        head, _, body = cast(bytes, transport.value()).partition(b"\r\n\r\n")
        self.assertEqual(body, b"")
        return head.split(b"\r\n")

    def test_provides_the_interface(self) -> None:
        verifyObject(IHealthCheck, HTTPCheck(self.reactor))

    def test_rejects_bad_values(self) -> None:
        """A bad value is a ValueError naming the key, with the config's message for it."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"timeout": 0.0}, "timeout must be > 0 s"),
            ({"path": "healthz"}, "path: must start with '/', as in '/healthz'"),
            ({"path": "/a b"}, "path: '/a b': write the path as requests carry it"),
            ({"path": "/\u00e9"}, "as in '/%C3%A9'"),
            ({"path": "/#top"}, "a request has no fragment"),
            ({"host": ""}, "host: must not be empty"),
            ({"host": "a b"}, "host: 'a b' is not a host name"),
            ({"host": "a/b"}, "host: write the host name only, as in 'a'"),
            ({"host": "app:99999"}, "port '99999' in 'app:99999' is not a number"),
            ({"expect_status": (99, 200)}, "expect_status: must be a range within 100-599"),
            ({"expect_status": (300, 200)}, "expect_status"),
            ({"expect_status": (200, 600)}, "expect_status"),
            ({"expect_body": "("}, "expect_body: not a valid Python regular expression"),
        ]
        for kwargs, message in cases:
            with self.assertRaises(ValueError, msg=repr(kwargs)) as raised:
                HTTPCheck(self.reactor, **kwargs)
            self.assertIn(message, str(raised.exception), repr(kwargs))

    def test_request(self) -> None:
        """
        The check sends ``GET path`` with the backend's ``host:port`` as ``Host``, its
        ``User-Agent`` and ``Connection: close``.
        """
        _protocol, transport = self.probe(path="/healthz?full=1")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.5", 8080))
        head = self.request_head(transport)
        self.assertEqual(head[0], b"GET /healthz?full=1 HTTP/1.1")
        self.assertEqual(
            sorted(head[1:]),
            [
                b"Connection: close",
                b"Host: 10.0.0.5:8080",
                b"User-Agent: twisted-lb-health-check",
            ],
        )
        transport.loseConnection()
        self.assertEqual(
            self.results, [ProbeResult(False, "connection closed before the response in 0 ms")]
        )

    def test_host(self) -> None:
        """
        ``Host`` is the ``host`` option when given, else the backend's address: without
        ``:80``, IPv6 in brackets.
        """
        for address, host, expected in [
            ("10.0.0.5:8080", "app.example.com", b"Host: app.example.com"),
            ("10.0.0.5:80", None, b"Host: 10.0.0.5"),
            ("[::1]:8080", None, b"Host: [::1]:8080"),
            ("[::1]:80", None, b"Host: [::1]"),
        ]:
            _protocol, transport = self.probe(Backend.from_address(address), host=host)
            self.assertIn(expected, self.request_head(transport))
            transport.loseConnection()

    def test_host_of_a_tls_pool(self) -> None:
        """
        Over TLS (``https``) the default ``Host`` is the pool's ``server_name``, with the
        backend's port unless it is 443, as the check's certificate and SNI name it; without
        ``server_name``, the backend's address without ``:443``. ``host`` still wins.
        """
        for address, kwargs, expected in [
            ("10.0.0.5:8443", {"server_name": "app.internal"}, b"Host: app.internal:8443"),
            ("10.0.0.5:443", {"server_name": "app.internal"}, b"Host: app.internal"),
            ("10.0.0.5:443", {}, b"Host: 10.0.0.5"),
            ("10.0.0.5:80", {}, b"Host: 10.0.0.5:80"),
            ("10.0.0.5:443", {"server_name": "2001:db8::1"}, b"Host: [2001:db8::1]"),
            ("10.0.0.5:443", {"server_name": "app.internal", "host": "x.test"}, b"Host: x.test"),
        ]:
            _protocol, transport = self.probe(Backend.from_address(address), https=True, **kwargs)
            self.assertIn(expected, self.request_head(transport))
            transport.loseConnection()

    def test_unix_backend_host(self) -> None:
        check = HTTPCheck(self.reactor)
        probing = check.probe(Backend.from_address("unix:/run/app.sock"))
        [(path, factory, _timeout, _check_pid)] = self.reactor.unixClients
        self.assertEqual(path, "/run/app.sock")
        transport = StringTransportWithDisconnection()
        protocol = factory.buildProtocol(None)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertIn(b"Host: localhost", self.request_head(transport))
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.successResultOf(probing), ProbeResult(True, "HTTP 204 in 0 ms"))

    def test_status_outside_the_range_fails(self) -> None:
        protocol, transport = self.probe()
        self.reactor.advance(0.012)
        protocol.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        self.assertEqual(self.results, [ProbeResult(False, "HTTP 503 in 12 ms")])
        self.assertFalse(transport.connected)

    def test_status_in_the_range_passes(self) -> None:
        protocol, transport = self.probe()
        self.reactor.advance(0.003)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.results, [ProbeResult(True, "HTTP 200 in 3 ms")])
        self.assertFalse(transport.connected)

    def test_expect_status(self) -> None:
        """The range is inclusive at both ends."""
        for status, ok in [(200, False), (201, True), (204, True), (205, False)]:
            protocol, _transport = self.probe(expect_status=(201, 204))
            protocol.dataReceived(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
            self.assertEqual(self.results.pop(), ProbeResult(ok, f"HTTP {status} in 0 ms"))

    def test_body_matches(self) -> None:
        """
        With ``expect_body``, the body is read to its end and searched; the body may be
        close-delimited, and it is decoded as UTF-8 with invalid bytes replaced.
        """
        protocol, transport = self.probe(expect_body=r"status: \w+ ready")
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n\xff\xfe status: ")
        self.reactor.advance(0.004)
        self.assertEqual(self.results, [])
        protocol.dataReceived(b"all ready\n")
        self.assertEqual(self.results, [])
        transport.loseConnection()
        self.assertEqual(self.results, [ProbeResult(True, "HTTP 200 in 4 ms")])

    def test_body_does_not_match(self) -> None:
        protocol, _transport = self.probe(expect_body="ready")
        self.reactor.advance(0.004)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting")
        self.assertEqual(
            self.results, [ProbeResult(False, "body did not match 'ready' (HTTP 200 in 4 ms)")]
        )

    def test_body_not_searched_when_the_status_fails(self) -> None:
        protocol, _transport = self.probe(expect_body="ready")
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nready")
        self.assertEqual(self.results, [ProbeResult(False, "HTTP 500 in 0 ms")])

    def test_body_cap(self) -> None:
        """
        At most MAX_BODY_BYTES of the body are read: past them the transport is stopped and
        the check decides on what it read, whether it keeps the body or not.
        """
        cases = [
            ("^a+$", ProbeResult(True, "HTTP 200 in 0 ms")),
            ("b", ProbeResult(False, "body did not match 'b' (HTTP 200 in 0 ms)")),
            (None, ProbeResult(True, "HTTP 200 in 0 ms")),
        ]
        for expect_body, expected in cases:
            protocol, transport = self.probe(expect_body=expect_body)
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
            protocol.dataReceived(b"a" * MAX_BODY_BYTES)
            self.assertEqual(self.results, [])
            self.assertEqual(transport.producerState, "producing")
            protocol.dataReceived(b"b" * 10)
            self.assertEqual(transport.producerState, "stopped")
            self.assertEqual(self.results, [expected])
            protocol.dataReceived(b"b" * 1000)  # ignored
            transport.loseConnection()
            self.assertEqual(self.results, [expected])
            self.results.clear()

    def test_refused(self) -> None:
        check = HTTPCheck(self.reactor)
        check.probe(self.backend).addBoth(self.results.append)
        refuse(self.reactor)
        self.assertEqual(self.results, [ProbeResult(False, "connection refused in 0 ms")])

    def test_not_http(self) -> None:
        """A backend that does not speak HTTP fails with the parser's complaint."""
        HTTPCheck(self.reactor).probe(self.backend).addBoth(self.results.append)
        protocol, transport = connect(self.reactor, disconnection=False)
        protocol.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.assertEqual(
            self.results, [ProbeResult(False, "bad HTTP response (wrong number of parts) in 0 ms")]
        )
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_timeout_while_connecting(self) -> None:
        check = HTTPCheck(self.reactor, timeout=1.0)
        check.probe(self.backend).addBoth(self.results.append)
        self.reactor.advance(1.0)
        self.assertEqual(self.results, [ProbeResult(False, "timed out after 1000 ms")])
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)

    def test_timeout_waiting_for_the_response(self) -> None:
        """The timeout covers the response: when it expires the connection is aborted."""
        protocol, transport = self.probe(timeout=0.5)
        self.reactor.advance(0.499)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.results, [])
        self.reactor.advance(0.001)
        self.assertEqual(self.results, [ProbeResult(False, "timed out after 500 ms")])
        self.assertTrue(transport.disconnected)
        self.assertFalse(transport.connected)

    def test_timeout_reading_the_body(self) -> None:
        """The timeout covers the body too: when it expires the transport is stopped."""
        protocol, transport = self.probe(expect_body="ready")
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nrea")
        self.reactor.advance(1.0)
        self.assertEqual(self.results, [ProbeResult(False, "timed out after 1000 ms")])
        self.assertEqual(transport.producerState, "stopped")
        protocol.dataReceived(b"dy")
        transport.loseConnection()
        self.assertEqual(len(self.results), 1)

    def test_cancel(self) -> None:
        """Cancelling aborts the connection and leaves no timer; it fails with CancelledError."""
        check = HTTPCheck(self.reactor)
        probing = check.probe(self.backend)
        _protocol, transport = connect(self.reactor)
        probing.cancel()
        self.failureResultOf(probing, CancelledError)
        self.assertTrue(transport.disconnected)

    def test_connects_through_the_endpoint_hook(self) -> None:
        """The check connects only through ``endpoint(reactor, backend)``, and quietly."""
        calls = []

        def endpoint(reactor: Any, backend: Backend) -> IStreamClientEndpoint:
            calls.append((reactor, backend))
            return TCP4ClientEndpoint(reactor, "192.0.2.9", 9999)

        with capturedLogs() as events:
            protocol, _transport = self.probe(endpoint=endpoint)
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(calls, [(self.reactor, self.backend)])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("192.0.2.9", 9999)])
        self.assertEqual(self.results, [ProbeResult(True, "HTTP 200 in 0 ms")])
        self.assertEqual(events, [])


class MonitorWithHTTPCheckTests(SynchronousTestCase):
    """The monitor and the HTTP check together, driven as a user's backend would."""

    def test_backend_goes_down_and_comes_back(self) -> None:
        reactor = MemoryReactorClock()
        app1 = Backend.from_address("10.0.0.1:8080", name="app1")
        pool = Pool("app", [app1], get_strategy("round_robin"))
        check = HTTPCheck(reactor, path="/healthz", timeout=1.0)
        monitor = HealthMonitor(reactor, pool, check, interval=2.0, rise=2, fall=3, jitter=0.1)

        def respond(response: bytes | None) -> None:
            if response is None:
                refuse(reactor)
            else:
                protocol, _transport = connect(reactor)
                protocol.dataReceived(response)

        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        busy = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        states = []
        with capturedLogs() as events:
            monitor.startService()
            for response in [ok, busy, busy, busy, None, ok, ok, ok]:
                respond(response)
                states.append(app1.state.value)
                [call] = reactor.getDelayedCalls()
                reactor.advance(call.getTime() - reactor.seconds())
            self.assertEqual(len(reactor.tcpClients), 9)
            monitor.stopService()
        self.assertEqual(states, ["UP", "UP", "UP", "DOWN", "DOWN", "DOWN", "UP", "UP"])
        self.assertEqual(
            [text for _, text in health_events(events)],
            [
                "pool app: backend app1 DOWN after 3 failed checks (last: HTTP 503 in 0 ms)",
                "pool app: backend app1 UP after 2 passed checks (last: HTTP 200 in 0 ms)",
            ],
        )
        self.assertEqual(monitor.last_result(app1), ProbeResult(True, "HTTP 200 in 0 ms"))
        self.assertTrue(reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])
