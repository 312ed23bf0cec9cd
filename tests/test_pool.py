"""
Tests for :mod:`twisted_lb.pool`: states, drain and maintenance, backups, panic mode, slow
start and passive outlier detection, all on a :class:`~twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.backend import Backend, BackendState, ConnectionInfo
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.pool import OutlierDetector, Pool
from twisted_lb.service import LoadBalancerService
from twisted_lb.strategies import RoundRobin, get_strategy

NO_CLIENT = ConnectionInfo()


def backends(count: int, **kwargs: object) -> list[Backend]:
    return [
        Backend.from_address(f"127.0.0.1:{9001 + i}", name=f"b{i + 1}", **kwargs)
        for i in range(count)
    ]


def picked(pool: Pool, count: int = 1) -> list[Backend]:
    """The backends of ``count`` picks, each lease released at once."""
    result = []
    for _ in range(count):
        lease = pool.pick(NO_CLIENT)
        if lease is None:
            return result
        lease.release()
        result.append(lease.backend)
    return result


class LogCapture:
    """Collects the formatted text of every log event while in use."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))

    def __enter__(self) -> LogCapture:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


class StateTests(SynchronousTestCase):
    """Health verdicts, the operator's states and backups."""

    def test_state_from_admin_and_health(self) -> None:
        """
        DRAINING and MAINT come first; otherwise the health verdict gives UP or DOWN; DOWN
        cannot be set by the operator.
        """
        b1, b2 = backends(2)
        pool = Pool("p", [b1, b2], RoundRobin())
        self.assertTrue(pool.set_healthy(b1, False))
        self.assertIs(b1.state, BackendState.DOWN)
        self.assertTrue(pool.set_admin_state(b1, BackendState.MAINT))
        self.assertIs(b1.state, BackendState.MAINT)
        self.assertFalse(pool.set_healthy(b1, True))
        self.assertIs(b1.state, BackendState.MAINT)
        self.assertTrue(pool.set_admin_state(b1, BackendState.UP))
        self.assertIs(b1.state, BackendState.UP)
        self.assertRaises(ValueError, pool.set_admin_state, b1, BackendState.DOWN)

    def test_constructor_state(self) -> None:
        """A state given to the constructor lands in the right input."""
        down = Backend.from_address("127.0.0.1:1", state=BackendState.DOWN)
        self.assertEqual((down.healthy, down.admin_state), (False, BackendState.UP))
        drained = Backend.from_address("127.0.0.1:1", state=BackendState.DRAINING)
        self.assertEqual((drained.healthy, drained.admin_state), (True, BackendState.DRAINING))
        self.assertIs(drained.state, BackendState.DRAINING)

    def test_drain_keeps_leases(self) -> None:
        """
        A drained backend gets no new picks; a lease taken before is untouched and released
        as usual; back to ready, it is picked again.
        """
        b1, b2 = backends(2)
        pool = Pool("p", [b1, b2], RoundRobin())
        lease = pool.pick(NO_CLIENT)
        assert lease is not None
        self.assertIs(lease.backend, b1)
        pool.set_admin_state(b1, BackendState.DRAINING)
        self.assertEqual(set(picked(pool, 10)), {b2})
        self.assertEqual(b1.active_connections, 1)
        lease.release()
        self.assertEqual(b1.active_connections, 0)
        pool.set_admin_state(b1, BackendState.UP)
        self.assertEqual(set(picked(pool, 10)), {b1, b2})

    def test_backups_take_over_and_hand_back(self) -> None:
        """Backups serve only while no primary is UP."""
        primary, backup = backends(2)
        backup.backup = True
        pool = Pool("p", [primary, backup], RoundRobin())
        self.assertEqual(set(picked(pool, 4)), {primary})
        pool.set_healthy(primary, False)
        self.assertEqual(set(picked(pool, 4)), {backup})
        pool.set_healthy(primary, True)
        self.assertEqual(set(picked(pool, 4)), {primary})

    def test_attempts_left(self) -> None:
        """
        After failed connects, a client has its retries left, but no more than the eligible
        backends it has not tried: none after the only backend, whatever ``retries`` says.
        """
        b1, b2, b3 = backends(3)
        pool = Pool("p", [b1, b2, b3], RoundRobin(), retries=1)
        self.assertEqual((pool.attempts_left([b1]), pool.attempts_left([b1, b2])), (1, 0))
        pool = Pool("p", [b1, b2, b3], RoundRobin(), retries=5)
        self.assertEqual(pool.attempts_left([b1]), 2)
        pool.set_healthy(b2, False)
        self.assertEqual(pool.attempts_left([b1]), 1)
        self.assertEqual(pool.attempts_left([b1, b3]), 0)
        alone = Pool("p", backends(1), RoundRobin(), retries=2)
        self.assertEqual(alone.attempts_left(alone.backends), 0)

    def test_nothing_up(self) -> None:
        """With nothing UP and no panic, there is no pick."""
        pool = Pool("p", backends(2), RoundRobin())
        for backend in pool.backends:
            pool.set_healthy(backend, False)
        self.assertIsNone(pool.pick(NO_CLIENT))

    def test_panic(self) -> None:
        """
        With panic on and nothing available, every backend that is ready (not drained or in
        maintenance) is offered, whatever its health or ejection; as soon as one is UP again,
        only it is.
        """
        b1, b2, b3, b4 = backends(4)
        b4.backup = True
        pool = Pool("p", [b1, b2, b3, b4], RoundRobin(), panic=True)
        for backend in (b1, b2, b4):
            pool.set_healthy(backend, False)
        b2.ejected = True
        pool.set_admin_state(b3, BackendState.MAINT)
        self.assertEqual(set(picked(pool, 12)), {b1, b2, b4})
        pool.set_healthy(b1, True)
        self.assertEqual(set(picked(pool, 6)), {b1})


class SlowStartTests(SynchronousTestCase):
    """``slow_start``: HAProxy's ``slowstart``."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_ramp(self) -> None:
        """
        A backend that comes back UP starts at 10% of its weight and ramps linearly to 100%
        over ``slow_start`` seconds, in steps of ``max(1, slow_start / 20)`` seconds; then no
        timer is left.
        """
        b1, b2 = backends(2, weight=10)
        pool = Pool("p", [b1, b2], RoundRobin(), slow_start=40.0, reactor=self.clock)
        self.assertEqual(b1.effective_weight, 10.0)
        pool.set_healthy(b1, False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        pool.set_healthy(b1, True)
        seen = []
        for _ in range(20):
            seen.append(round(b1.effective_weight, 6))
            self.assertEqual(
                [c.getTime() - self.clock.seconds() for c in self.clock.getDelayedCalls()], [2.0]
            )
            self.clock.advance(2)
        self.assertEqual(seen, [round(10 * (0.1 + 0.9 * t / 40), 6) for t in range(0, 40, 2)])
        self.assertEqual(b1.effective_weight, 10.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(b2.effective_weight, 10.0)

    def test_short_ramp_steps_one_second(self) -> None:
        """A slow start shorter than 20 s is stepped every second."""
        (b1,) = backends(1, weight=2)
        pool = Pool("p", [b1], RoundRobin(), slow_start=5.0, reactor=self.clock)
        pool.set_healthy(b1, False)
        pool.set_healthy(b1, True)
        weights = []
        for _ in range(6):
            weights.append(round(b1.effective_weight, 6))
            self.clock.advance(1)
        self.assertEqual(weights, [0.2, 0.56, 0.92, 1.28, 1.64, 2.0])

    def test_not_at_start_and_cancelled(self) -> None:
        """
        No slow start for backends at start-up; going DOWN mid-ramp cancels it (and the next
        return starts from 10% again); ``stop`` cancels every timer.
        """
        (b1,) = backends(1, weight=10)
        pool = Pool("p", [b1], RoundRobin(), slow_start=10.0, reactor=self.clock)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        pool.set_healthy(b1, False)
        pool.set_healthy(b1, True)
        self.clock.advance(5)
        pool.set_healthy(b1, False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        pool.set_healthy(b1, True)
        self.assertAlmostEqual(b1.effective_weight, 1.0)
        pool.set_admin_state(b1, BackendState.MAINT)
        pool.set_admin_state(b1, BackendState.UP)
        self.assertAlmostEqual(b1.effective_weight, 1.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        pool.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_every_strategy_honours_it(self) -> None:
        """
        Every built-in strategy gives a backend at 10% of its weight a small share: about
        1/11 of the picks against an equal backend at full weight. Leases are held, so the
        load-based strategies see the load grow.
        """
        clients = [
            ConnectionInfo(IPv4Address("TCP", f"198.51.{i // 256}.{i % 256}", 40000), now=1.0)
            for i in range(2000)
        ]
        for name in (
            "round_robin",
            "least_connections",
            "least_time",
            "random",
            "two_choices",
            "source_hash",
        ):
            options: dict[str, object] = {"seed": 3} if name in ("random", "two_choices") else {}
            clock = Clock()
            b1, b2 = backends(2, weight=5)
            for backend in (b1, b2):
                backend.response_time.observe(0.01, 1.0)
            pool = Pool("p", [b1, b2], get_strategy(name, options), slow_start=100.0, reactor=clock)
            pool.set_healthy(b2, False)
            pool.set_healthy(b2, True)
            self.assertAlmostEqual(b2.effective_weight, 0.5)
            counts: Counter[Backend] = Counter()
            for client in clients:
                lease = pool.pick(client)
                assert lease is not None
                lease.backend.in_flight_requests += 1
                counts[lease.backend] += 1
            share = counts[b2] / len(clients)
            self.assertTrue(0.03 < share < 0.16, f"{name}: share {share}")
            pool.stop()


class OutlierTests(SynchronousTestCase):
    """Passive outlier detection: Envoy's consecutive-failure ejection."""

    def setUp(self) -> None:
        self.clock = Clock()

    def pool(self, count: int, **kwargs: object) -> Pool:
        settings: dict[str, object] = {
            "consecutive_failures": 3,
            "base_ejection_time": 10.0,
            "max_ejection_time": 25.0,
            "max_ejection_percent": 100,
        }
        settings.update(kwargs)
        detector = OutlierDetector(self.clock, **settings)  # type: ignore[arg-type]
        return Pool("p", backends(count), RoundRobin(), outlier_detector=detector)

    def fail(self, pool: Pool, backend: Backend, times: int) -> None:
        for _ in range(times):
            pool.report_failure(backend, "connection refused")

    def test_passing_check_ends_the_ejection(self) -> None:
        """
        A passing active check ends an ejection at once (Envoy's
        ``successful_active_health_check_uneject_host``): the timer is gone, the backend is
        picked again, its failure count is reset, and the count of ejections in a row is
        kept, so the next ejection lasts twice as long.
        """
        pool = self.pool(2)
        b1, b2 = pool.backends
        self.fail(pool, b1, 3)
        self.assertTrue(b1.ejected)
        self.clock.advance(1.0)
        with LogCapture() as log:
            self.assertTrue(pool.report_passing_check(b1, "HTTP 200 in 3 ms"))
        self.assertEqual(
            log.lines,
            ["pool p: backend b1 back from ejection: passed its health check (HTTP 200 in 3 ms)"],
        )
        self.assertFalse(b1.ejected)
        self.assertEqual(b1.consecutive_failures, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(set(picked(pool, 4)), {b1, b2})
        self.assertFalse(pool.report_passing_check(b1, "HTTP 200 in 3 ms"))  # not ejected
        self.fail(pool, b1, 3)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 20.0)
        self.assertEqual(b1.ejections, 2)

    def test_passing_check_of_a_probe_sent_before_the_ejection(self) -> None:
        """
        A probe sent before the ejection, or at the same instant, does not end it; one sent
        after it does.
        """
        pool = self.pool(2)
        b1, _b2 = pool.backends
        self.clock.advance(5.0)
        self.fail(pool, b1, 3)
        self.clock.advance(1.0)
        self.assertFalse(pool.report_passing_check(b1, "HTTP 200 in 3 ms", started=4.0))
        self.assertFalse(pool.report_passing_check(b1, "HTTP 200 in 3 ms", started=5.0))
        self.assertTrue(b1.ejected)
        self.assertTrue(pool.report_passing_check(b1, "HTTP 200 in 3 ms", started=5.5))
        self.assertFalse(b1.ejected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_passing_check_when_turned_off(self) -> None:
        """With ``uneject_on_passing_check=False`` an ejection lasts its whole time."""
        pool = self.pool(2, uneject_on_passing_check=False)
        b1, b2 = pool.backends
        self.fail(pool, b1, 3)
        self.assertFalse(pool.report_passing_check(b1, "HTTP 200 in 3 ms"))
        self.assertTrue(b1.ejected)
        self.assertEqual(set(picked(pool, 4)), {b2})
        self.clock.advance(10.0)
        self.assertFalse(b1.ejected)

    def test_passing_check_without_outlier_detection(self) -> None:
        pool = Pool("p", backends(1), RoundRobin())
        self.assertFalse(pool.report_passing_check(pool.backends[0], "HTTP 200 in 3 ms"))

    def test_uneject_on_passing_check_key(self) -> None:
        """
        ``[pools.NAME.outlier_detection] uneject_on_passing_check`` is true by default, may
        be false, and must be a boolean.
        """
        text = (
            '[frontends.web]\nmode = "http"\nlisten = ["tcp:0"]\npool = "app"\n'
            '[pools.app]\nbackends = [{ address = "127.0.0.1:9001" }]\n'
            "[pools.app.outlier_detection]\n"
        )
        default = parse_config(text, "lb.toml").pools["app"].outlier_detection
        assert default is not None
        self.assertTrue(default.uneject_on_passing_check)
        service = LoadBalancerService.from_config(
            parse_config(text + "uneject_on_passing_check = false\n", "lb.toml"), Clock()
        )
        detector = service.pools["app"].outlier_detector
        assert detector is not None
        self.assertFalse(detector.uneject_on_passing_check)
        with self.assertRaises(ConfigError) as raised:
            parse_config(text + 'uneject_on_passing_check = "yes"\n', "lb.toml")
        self.assertEqual(
            str(raised.exception),
            "lb.toml: pools.app.outlier_detection.uneject_on_passing_check: "
            "must be true or false, not a string",
        )

    def test_ejection_time_sequence(self) -> None:
        """
        Ejections last base x n, capped: 10, 20, 25, 25 s for ejections in a row; each
        ejected backend comes back on its own.
        """
        pool = self.pool(2)
        b1, b2 = pool.backends
        durations = []
        for _ in range(4):
            self.fail(pool, b1, 3)
            self.assertTrue(b1.ejected)
            self.assertEqual(set(picked(pool, 4)), {b2})
            start = self.clock.seconds()
            while b1.ejected:
                self.clock.advance(1)
            durations.append(self.clock.seconds() - start)
            self.assertEqual(b1.consecutive_failures, 0)
        self.assertEqual(durations, [10, 20, 25, 25])
        self.assertEqual(set(picked(pool, 4)), {b1, b2})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_multiplier_decays_in_service(self) -> None:
        """
        Each ``base_ejection_time`` back in service lowers the multiplier by one.
        """
        pool = self.pool(2)
        b1 = pool.backends[0]
        self.fail(pool, b1, 3)
        self.clock.advance(10)
        self.fail(pool, b1, 3)
        self.clock.advance(20)
        self.assertEqual(b1.ejections, 2)
        self.clock.advance(25)  # two bases in service: 2 -> 0
        self.fail(pool, b1, 3)
        self.assertEqual(b1.ejections, 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 10)
        pool.stop()

    def test_success_resets(self) -> None:
        """A success between failures starts the count again."""
        pool = self.pool(2)
        b1 = pool.backends[0]
        self.fail(pool, b1, 2)
        pool.report_success(b1)
        self.fail(pool, b1, 2)
        self.assertFalse(b1.ejected)
        pool.report_response(b1, 200)
        self.fail(pool, b1, 2)
        self.assertFalse(b1.ejected)

    def test_count_5xx(self) -> None:
        """5xx responses are failures only with ``count_5xx``."""
        pool = self.pool(2)
        b1 = pool.backends[0]
        for _ in range(5):
            pool.report_response(b1, 503)
        self.assertFalse(b1.ejected)
        pool = self.pool(2, count_5xx=True)
        b1 = pool.backends[0]
        for _ in range(3):
            pool.report_response(b1, 502)
        self.assertTrue(b1.ejected)
        pool.stop()

    def test_max_ejection_percent(self) -> None:
        """
        The ejected share never exceeds ``max_ejection_percent``: 2 of 4 at 50%, and a lone
        backend is never ejected at 50%. The refusal is logged once per failure streak.
        """
        pool = self.pool(4, max_ejection_percent=50)
        b1, b2, b3, b4 = pool.backends
        with LogCapture() as logs:
            for backend in (b1, b2, b3, b4):
                self.fail(pool, backend, 6)
        self.assertEqual([b.ejected for b in pool.backends], [True, True, False, False])
        refused = [line for line in logs.lines if "not ejected" in line]
        self.assertEqual(len(refused), 2, refused)
        self.assertIn("max_ejection_percent is 50", refused[0])
        self.clock.advance(10)
        self.fail(pool, b3, 3)
        self.assertTrue(b3.ejected)
        pool.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

        lone = self.pool(1, max_ejection_percent=50)
        self.fail(lone, lone.backends[0], 10)
        self.assertFalse(lone.backends[0].ejected)

    def test_log_lines(self) -> None:
        """Ejection and return are logged with the reason and the duration."""
        pool = self.pool(2)
        b1 = pool.backends[0]
        with LogCapture() as logs:
            self.fail(pool, b1, 3)
            self.clock.advance(10)
        self.assertEqual(
            [line for line in logs.lines if line.startswith("pool p")],
            [
                "pool p: backend b1 ejected for 10 s after 3 consecutive failures "
                "(last: connection refused); ejection 1 in a row",
                "pool p: backend b1 back from ejection",
            ],
        )

    def test_with_health_checks(self) -> None:
        """
        Ejection and health work together: an ejected backend that health checks take DOWN
        and back UP stays out until its ejection ends.
        """
        pool = self.pool(2)
        b1 = pool.backends[0]
        self.fail(pool, b1, 3)
        pool.set_healthy(b1, False)
        pool.set_healthy(b1, True)
        self.assertNotIn(b1, pool.eligible())
        self.clock.advance(10)
        self.assertIn(b1, pool.eligible())

    def test_ejection_starts_slow_start(self) -> None:
        """A backend back from ejection ramps up when the pool has slow start."""
        detector = OutlierDetector(self.clock, consecutive_failures=1, max_ejection_percent=100)
        b1, b2 = backends(2, weight=10)
        pool = Pool("p", [b1, b2], RoundRobin(), slow_start=10.0, outlier_detector=detector)
        pool.report_failure(b1, "reset")
        self.clock.advance(30)
        self.assertAlmostEqual(b1.effective_weight, 1.0)
        self.clock.advance(10)
        self.assertEqual(b1.effective_weight, 10.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_settings(self) -> None:
        """Out-of-range settings raise ValueError."""
        for kwargs in (
            {"consecutive_failures": 0},
            {"base_ejection_time": 0},
            {"base_ejection_time": 10.0, "max_ejection_time": 5.0},
            {"max_ejection_percent": 101},
        ):
            self.assertRaises(ValueError, OutlierDetector, self.clock, **kwargs)
        self.assertRaises(ValueError, Pool, "p", backends(1), RoundRobin(), slow_start=5.0)


class ReconfigureTests(SynchronousTestCase):
    """:meth:`Pool.reconfigure` and :meth:`Pool.set_weight`, as a reload uses them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.b1, self.b2 = backends(2, weight=10)
        self.pool = Pool(
            "p",
            [self.b1, self.b2],
            RoundRobin(),
            slow_start=40.0,
            outlier_detector=OutlierDetector(self.clock, consecutive_failures=1),
            reactor=self.clock,
        )

    def settings(self, **changes: object) -> dict[str, object]:
        pool = self.pool
        settings: dict[str, object] = {
            "strategy": pool.strategy,
            "connect_timeout": pool.connect_timeout,
            "retries": pool.retries,
            "response_timeout": pool.response_timeout,
            "upstream_idle_timeout": pool.upstream_idle_timeout,
            "max_idle_per_backend": pool.max_idle_per_backend,
            "panic": pool.panic,
            "slow_start": pool.slow_start,
            "outlier_detector": pool.outlier_detector,
            "tls": pool.tls,
        }
        settings.update(changes)
        return settings

    def test_off_ends_ejections_and_slow_starts(self) -> None:
        """
        Without an outlier detector ejected backends are back at once; without slow start
        warming backends are at full weight; no timer is left.
        """
        self.pool.report_failure(self.b1, "refused")
        self.assertTrue(self.b1.ejected)
        self.pool.set_healthy(self.b2, False)
        self.pool.set_healthy(self.b2, True)
        self.assertEqual(self.b2.effective_weight, 1.0)
        self.pool.reconfigure(**self.settings(outlier_detector=None, slow_start=0.0))  # type: ignore[arg-type]
        self.assertFalse(self.b1.ejected)
        self.assertEqual((self.b1.effective_weight, self.b2.effective_weight), (10.0, 10.0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_values_checked_first(self) -> None:
        """An out-of-range value raises ValueError and changes nothing."""
        with self.assertRaises(ValueError):
            self.pool.reconfigure(**self.settings(retries=3, connect_timeout=0.0))  # type: ignore[arg-type]
        self.assertEqual(self.pool.retries, 2)

    def test_new_strategy_and_weight(self) -> None:
        """A new strategy is told the backends; a weight change reaches the strategy."""
        strategy = RoundRobin()
        self.pool.reconfigure(**self.settings(strategy=strategy))  # type: ignore[arg-type]
        self.assertIs(self.pool.strategy, strategy)
        self.pool.set_weight(self.b2, 30)
        info = ConnectionInfo()
        picks = Counter(self.pool.pick(info).backend.name for _ in range(40))  # type: ignore[union-attr]
        self.assertEqual(picks, {self.b1.name: 10, self.b2.name: 30})
        for weight in (0, 257):
            with self.assertRaises(ValueError) as raised:
                self.pool.set_weight(self.b2, weight)
            self.assertIn(f"weight must be from 1 to 256, not {weight}", str(raised.exception))
        self.assertEqual(self.b2.weight, 30)

    def test_weight_reaches_a_ring(self) -> None:
        """A weight change rebuilds a consistent-hash ring (``backends_changed``)."""
        b1, b2 = backends(2)
        pool = Pool("p", [b1, b2], get_strategy("source_hash"), reactor=self.clock)

        def share() -> float:
            picks = Counter()
            for n in range(2000):
                info = ConnectionInfo(IPv4Address("TCP", f"10.{n // 250}.{n % 250}.1", 1))
                lease = pool.pick(info)
                assert lease is not None
                picks[lease.backend.name] += 1
                lease.release()
            return picks[b2.name] / 2000

        before = share()
        pool.set_weight(b2, 9)
        self.assertLess(abs(before - 0.5), 0.1)
        self.assertLess(abs(share() - 0.9), 0.05)
