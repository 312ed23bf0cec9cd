"""
Tests for :mod:`twisted_lb.strategies`: the built-in strategies, their factories and lookup.

Strategies are checked with hypothesis properties. The random ones get a seeded
``random.Random`` and their hypothesis tests are derandomized, so every run is the same.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import twisted_lb.plugins
from twisted_lb.backend import Backend, BackendState, ConnectionInfo, PeakEWMA
from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory
from twisted_lb.plugins import twisted_lb_strategies
from twisted_lb.pool import Lease, Pool
from twisted_lb.strategies import (
    LeastConnections,
    LeastTime,
    RoundRobin,
    SourceHash,
    StrategyFactory,
    TwoChoices,
    UnknownStrategyError,
    WeightedRandom,
    get_strategy,
    installed_strategies,
)

BUILTINS = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "least_time": LeastTime,
    "random": WeightedRandom,
    "two_choices": TwoChoices,
    "source_hash": SourceHash,
}

NO_CLIENT = ConnectionInfo()

# 2000 distinct client IPs for the hash ring tests.
CLIENTS = [
    ConnectionInfo(IPv4Address("TCP", f"198.51.{i // 256}.{i % 256}", 40000)) for i in range(2000)
]

weights_lists = st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6)
loads = st.tuples(st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=20))

# For the tests whose outcome depends on a random source: the same examples on every run.
repeatable = settings(derandomize=True, deadline=None, max_examples=25)
quick = settings(deadline=None, max_examples=50)


def make_backends(weights: Sequence[int], prefix: str = "b") -> list[Backend]:
    """Backends named ``<prefix>0``, ``<prefix>1``, ... with the given weights."""
    return [
        Backend.from_address(f"10.0.{i // 250}.{i % 250 + 1}:80", name=f"{prefix}{i}", weight=w)
        for i, w in enumerate(weights)
    ]


def loaded_backends(spec: Sequence[tuple[int, int]]) -> list[Backend]:
    """Backends from ``(weight, active_connections)`` pairs."""
    backends = make_backends([weight for weight, _active in spec])
    for backend, (_weight, active) in zip(backends, spec, strict=True):
        backend.active_connections = active
    return backends


# (weight, in_flight_requests, response time in seconds or None for never observed)
timed = st.tuples(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=20),
    st.one_of(st.none(), st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.5, 2.0])),
)


# The same with response times that are powers of two: read at time 0 (no decay), the costs
# are exact in floats, so ties are ties.
exact_timed = st.tuples(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=20),
    st.one_of(st.none(), st.sampled_from([0.0625, 0.125, 0.25, 0.5, 1.0, 2.0])),
)


def timed_backends(spec: Sequence[tuple[int, int, float | None]]) -> list[Backend]:
    """Backends from ``(weight, in_flight_requests, rtt)``, each rtt observed at time 0."""
    backends = make_backends([weight for weight, _in_flight, _rtt in spec])
    for backend, (_weight, in_flight, rtt) in zip(backends, spec, strict=True):
        backend.in_flight_requests = in_flight
        if rtt is not None:
            backend.response_time.observe(rtt, 0.0)
    return backends


def cost(backend: Backend, now: float) -> float:
    """The least_time cost, computed the plain way."""
    return backend.response_time.value(now) * (backend.in_flight_requests + 1) / backend.weight


def ratio(backend: Backend) -> Fraction:
    return Fraction(backend.active_connections, backend.weight)


def picks(
    strategy: IBalancingStrategy,
    backends: Sequence[Backend],
    count: int,
    info: ConnectionInfo = NO_CLIENT,
) -> list[Backend]:
    result = []
    for _ in range(count):
        backend = strategy.pick(backends, info)
        assert backend is not None
        result.append(backend)
    return result


def ring(backends: Sequence[Backend]) -> SourceHash:
    strategy = SourceHash()
    strategy.backends_changed(backends)
    return strategy


def assign(strategy: SourceHash, offered: Sequence[Backend]) -> list[Backend | None]:
    return [strategy.pick(offered, client) for client in CLIENTS]


class GetStrategyTests(SynchronousTestCase):
    """
    :func:`get_strategy` and :func:`installed_strategies` find the built-ins as plugins.
    """

    def test_installed_lists_builtins(self) -> None:
        """
        The built-ins are installed, and the list is sorted.
        """
        installed = installed_strategies()
        self.assertTrue(set(BUILTINS) <= set(installed))
        self.assertEqual(installed, sorted(installed))

    def test_get_each_builtin(self) -> None:
        """
        Each built-in name makes a new strategy of its class, which provides
        IBalancingStrategy.
        """
        for name, cls in BUILTINS.items():
            first = get_strategy(name)
            self.assertIsInstance(first, cls)
            self.assertTrue(verifyObject(IBalancingStrategy, first))
            self.assertIsNot(get_strategy(name, {}), first)

    def test_factories_provide_interfaces(self) -> None:
        """
        The dropin binds one IPlugin + IStrategyFactory per built-in, under its name, and
        getPlugins finds each.
        """
        found = {f.name: f for f in getPlugins(IStrategyFactory, twisted_lb.plugins)}
        for name in BUILTINS:
            factory = getattr(twisted_lb_strategies, name)
            self.assertIsInstance(factory, StrategyFactory)
            self.assertTrue(verifyObject(IStrategyFactory, factory))
            self.assertTrue(verifyObject(IPlugin, factory))
            self.assertEqual(factory.name, name)
            self.assertIs(found[name], factory)

    def test_unknown_name(self) -> None:
        """
        An unknown name raises UnknownStrategyError, a ValueError, listing the installed names.
        """
        with self.assertRaises(UnknownStrategyError) as caught:
            get_strategy("round_robbin")
        error = caught.exception
        self.assertIsInstance(error, ValueError)
        self.assertEqual(error.name, "round_robbin")
        self.assertEqual(error.installed, installed_strategies())
        for name in BUILTINS:
            self.assertIn(name, str(error))
        self.assertEqual(
            str(error).partition(";")[0],
            "strategy 'round_robbin' is not installed (did you mean 'round_robin'?)",
        )

    def test_unknown_name_alias(self) -> None:
        """Another balancer's name for a strategy is answered with ours, as config does."""
        for theirs, ours in [("leastconn", "least_connections"), ("ip_hash", "source_hash")]:
            with self.assertRaises(UnknownStrategyError) as caught:
                get_strategy(theirs)
            self.assertIn(f"(did you mean {ours!r}?)", str(caught.exception))

    def test_unknown_option(self) -> None:
        """
        An unknown option is a ValueError naming it and the accepted options.
        """
        with self.assertRaises(ValueError) as caught:
            get_strategy("round_robin", {"sede": 1})
        self.assertIn("'sede'", str(caught.exception))
        self.assertIn("accepted options: none", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            get_strategy("two_choices", {"sede": 1})
        self.assertIn("'sede'", str(caught.exception))
        self.assertIn("accepted options: seed", str(caught.exception))

    def test_bad_option_type(self) -> None:
        """
        An option of the wrong type is a ValueError naming it; a bool is not an int.
        """
        for value in ["1", 1.5, True]:
            with self.assertRaises(ValueError) as caught:
                get_strategy("random", {"seed": value})
            self.assertIn("'seed' must be int", str(caught.exception))

    def test_seed_option(self) -> None:
        """
        The same seed gives the same picks.
        """
        backends = make_backends([1, 2, 3, 4])
        for name in ["random", "two_choices"]:
            first = picks(get_strategy(name, {"seed": 42}), backends, 50)
            second = picks(get_strategy(name, {"seed": 42}), backends, 50)
            self.assertEqual(first, second)
            self.assertEqual(len(set(first)), 4)

    def test_rng_and_seed(self) -> None:
        """
        Giving both an rng and a seed is a ValueError.
        """
        for cls in [WeightedRandom, TwoChoices]:
            self.assertRaises(ValueError, cls, random.Random(1), seed=1)

    def test_factory_passes_options(self) -> None:
        """
        A StrategyFactory calls its strategy with the options as keyword arguments, and
        passes none that were not given.
        """
        calls: list[dict[str, object]] = []

        def strategy(**options: object) -> IBalancingStrategy:
            calls.append(options)
            return RoundRobin()

        factory = StrategyFactory("mine", strategy, {"level": int, "mode": str})
        factory({"level": 3})
        factory({})
        self.assertEqual(calls, [{"level": 3}, {}])
        self.assertEqual(repr(factory), "<StrategyFactory mine>")


class RoundRobinTests(SynchronousTestCase):
    """
    ``round_robin``: smooth weighted round robin.
    """

    def test_provides_interface(self) -> None:
        """
        RoundRobin provides IBalancingStrategy.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, RoundRobin()))

    def test_nginx_sequence(self) -> None:
        """
        Weights 5, 1, 1 give a a b a c a a, again and again, as in nginx.
        """
        backends = make_backends([5, 1, 1])
        names = {backends[0]: "a", backends[1]: "b", backends[2]: "c"}
        sequence = "".join(names[b] for b in picks(RoundRobin(), backends, 21))
        self.assertEqual(sequence, "aabacaa" * 3)

    def test_equal_weights_cycle(self) -> None:
        """
        Equal weights take turns in order.
        """
        backends = make_backends([2, 2, 2])
        self.assertEqual(picks(RoundRobin(), backends, 6), backends * 2)

    @quick
    @given(weights_lists, st.integers(min_value=1, max_value=4))
    def test_weights_exact(self, weights: list[int], rounds: int) -> None:
        """
        Over ``sum(weights) * k`` picks each backend is picked exactly ``weight * k`` times.
        """
        backends = make_backends(weights)
        counts = Counter(picks(RoundRobin(), backends, sum(weights) * rounds))
        self.assertEqual([counts[b] for b in backends], [w * rounds for w in weights])

    @quick
    @given(weights_lists)
    def test_smooth(self, weights: list[int]) -> None:
        """
        In any window of ``n`` consecutive picks a backend of weight ``w`` is picked between
        ``floor(w / total * n) - 1`` and ``ceil(w / total * n) + 1`` times.
        """
        backends = make_backends(weights)
        total = sum(weights)
        sequence = picks(RoundRobin(), backends, 2 * total)
        for backend in backends:
            prefix = [0]
            for picked in sequence:
                prefix.append(prefix[-1] + (picked is backend))
            for start in range(len(sequence)):
                for end in range(start + 1, len(sequence) + 1):
                    count = prefix[end] - prefix[start]
                    share = Fraction(backend.weight * (end - start), total)
                    self.assertLessEqual(count, math.ceil(share) + 1)
                    self.assertGreaterEqual(count, math.floor(share) - 1)

    @quick
    @given(
        weights_lists.filter(lambda ws: len(ws) >= 2),
        st.lists(st.lists(st.booleans(), min_size=6, max_size=6), max_size=30),
    )
    def test_offered_set_changes(self, weights: list[int], masks: list[list[bool]]) -> None:
        """
        While the offered set changes, only offered backends are picked; once all are offered
        again, each backend gets within 2 of ``3 * weight`` picks in the next ``3 * sum(weights)``.
        """
        backends = make_backends(weights)
        strategy = RoundRobin()
        for mask in masks:
            offered = [b for b, on in zip(backends, mask, strict=False) if on] or backends[:1]
            self.assertIn(strategy.pick(offered, NO_CLIENT), offered)
        counts = Counter(picks(strategy, backends, sum(weights) * 3))
        for backend in backends:
            self.assertLessEqual(abs(counts[backend] - 3 * backend.weight), 2)

    def test_backends_changed(self) -> None:
        """
        After a backend leaves the pool, the others go on in their smooth order.
        """
        backends = make_backends([5, 1, 1, 4])
        strategy = RoundRobin()
        strategy.backends_changed(backends)
        picks(strategy, backends, 5)
        strategy.backends_changed(backends[:3])
        counts = Counter(picks(strategy, backends[:3], 7 * 4))
        self.assertLessEqual(abs(counts[backends[0]] - 20), 1)


class LeastConnectionsTests(SynchronousTestCase):
    """
    ``least_connections``: fewest active connections per weight, ties in turn.
    """

    def test_provides_interface(self) -> None:
        """
        LeastConnections provides IBalancingStrategy.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, LeastConnections()))

    @quick
    @given(st.lists(loads, min_size=1, max_size=8), st.integers(min_value=0, max_value=5))
    def test_minimal_ratio(self, spec: list[tuple[int, int]], earlier: int) -> None:
        """
        The picked backend has the lowest ``active_connections / weight``.
        """
        backends = loaded_backends(spec)
        strategy = LeastConnections()
        picked = picks(strategy, backends, earlier + 1)[-1]
        self.assertEqual(ratio(picked), min(ratio(b) for b in backends))

    @quick
    @given(st.lists(loads, min_size=1, max_size=8), st.integers(min_value=1, max_value=3))
    def test_ties_rotate(self, spec: list[tuple[int, int]], rounds: int) -> None:
        """
        While loads do not change, the least loaded backends are picked in turn, in order.
        """
        backends = loaded_backends(spec)
        lowest = min(ratio(b) for b in backends)
        tied = [b for b in backends if ratio(b) == lowest]
        self.assertEqual(picks(LeastConnections(), backends, len(tied) * rounds), tied * rounds)

    def test_cross_multiplication(self) -> None:
        """
        3 connections on weight 4 (0.75) are less than 1 on weight 1, and 2 on weight 3
        (0.667) less than that.
        """
        backends = loaded_backends([(1, 1), (4, 3), (3, 2)])
        self.assertIs(LeastConnections().pick(backends, NO_CLIENT), backends[2])

    @quick
    @given(weights_lists, st.integers(min_value=0, max_value=60))
    def test_leases_follow_weights(self, weights: list[int], count: int) -> None:
        """
        Picking through a pool and holding the leases keeps each backend's load within one
        connection of its weighted share.
        """
        backends = make_backends(weights)
        pool = Pool("p", backends, LeastConnections())
        leases = [pool.pick(NO_CLIENT) for _ in range(count)]
        self.assertNotIn(None, leases)
        total = sum(weights)
        for backend in backends:
            share = Fraction(count * backend.weight, total)
            self.assertLess(abs(backend.active_connections - share), backend.weight + 1)


class LeastTimeTests(SynchronousTestCase):
    """
    ``least_time``: lowest peak-EWMA response time x (in-flight requests + 1) / weight.
    """

    def test_provides_interface(self) -> None:
        """
        LeastTime provides IBalancingStrategy, and its plugin takes no options.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, LeastTime()))
        self.assertEqual(repr(LeastTime()), "<LeastTime>")
        self.assertIn("least_time", installed_strategies())
        self.assertIsInstance(get_strategy("least_time"), LeastTime)
        with self.assertRaises(ValueError) as caught:
            get_strategy("least_time", {"decay": 5.0})
        self.assertIn("accepted options: none", str(caught.exception))

    @quick
    @given(
        st.lists(timed, min_size=1, max_size=8),
        st.floats(min_value=0.0, max_value=60.0),
        st.integers(min_value=0, max_value=5),
    )
    def test_minimal_cost(
        self, spec: list[tuple[int, int, float | None]], now: float, earlier: int
    ) -> None:
        """
        The picked backend has the lowest ``value(now) * (in_flight + 1) / weight``, whatever
        was picked before.
        """
        backends = timed_backends(spec)
        strategy = LeastTime()
        info = ConnectionInfo(now=now)
        for _ in range(earlier):
            strategy.pick(backends, info)
        picked = strategy.pick(backends, info)
        assert picked is not None
        lowest = min(cost(b, now) for b in backends)
        self.assertLessEqual(cost(picked, now), lowest * (1 + 1e-9))

    @quick
    @given(st.lists(exact_timed, min_size=1, max_size=8), st.integers(min_value=1, max_value=3))
    def test_ties_rotate(self, spec: list[tuple[int, int, float | None]], rounds: int) -> None:
        """
        While costs do not change, the cheapest backends are picked in turn, in order; with
        no response times yet, that is every backend.
        """
        backends = timed_backends(spec)
        costs = [
            Fraction(b.response_time.value(0.0)) * (b.in_flight_requests + 1) / b.weight
            for b in backends
        ]
        tied = [b for b, c in zip(backends, costs, strict=True) if c == min(costs)]
        info = ConnectionInfo(now=0.0)
        self.assertEqual(picks(LeastTime(), backends, len(tied) * rounds, info), tied * rounds)
        fresh = make_backends([weight for weight, _in_flight, _rtt in spec])
        self.assertEqual(picks(LeastTime(), fresh, len(fresh) * rounds, info), fresh * rounds)

    def test_unobserved_first(self) -> None:
        """
        A backend with no response time yet costs 0, so it is picked before the others, even
        with requests in flight.
        """
        backends = timed_backends([(1, 0, 0.001), (1, 5, None), (1, 0, 0.002)])
        self.assertIs(LeastTime().pick(backends, ConnectionInfo(now=0.0)), backends[1])

    def test_in_flight(self) -> None:
        """
        Requests in flight multiply the response time: 0.1 s with 3 in flight (0.4) costs
        more than 0.3 s with none, which costs more than 0.1 s with 1 (0.2).
        """
        backends = timed_backends([(1, 3, 0.1), (1, 0, 0.3)])
        self.assertIs(LeastTime().pick(backends, ConnectionInfo()), backends[1])
        backends = timed_backends([(1, 1, 0.1), (1, 0, 0.3)])
        self.assertIs(LeastTime().pick(backends, ConnectionInfo()), backends[0])

    def test_weight(self) -> None:
        """
        The cost is divided by the weight: 0.1 s with 3 in flight on weight 4 (0.1) is less
        than 0.1 s with 1 in flight on weight 1 (0.2).
        """
        backends = timed_backends([(1, 1, 0.1), (4, 3, 0.1)])
        self.assertIs(LeastTime().pick(backends, ConnectionInfo()), backends[1])

    def test_now(self) -> None:
        """
        The estimates are read at ``info.now``: a backend slow at time 0 becomes the cheaper
        one once its estimate has decayed below the other's.
        """
        backends = make_backends([1, 1])
        backends[0].response_time.observe(1.0, 0.0)
        backends[1].response_time.observe(0.5, 9.0)
        strategy = LeastTime()
        self.assertIs(strategy.pick(backends, ConnectionInfo(now=9.0)), backends[0])
        self.assertIs(strategy.pick(backends, ConnectionInfo(now=0.0)), backends[1])

    @quick
    @given(
        st.floats(min_value=0.01, max_value=5.0),
        st.floats(min_value=1.5, max_value=100.0),
        st.floats(min_value=1.0, max_value=30.0),
    )
    def test_idle_backend_tried_again(self, fast: float, slowdown: float, decay: float) -> None:
        """
        A backend that was slow gets no requests while a fast one answers, but its estimate
        decays while it is idle, so it is picked again after about
        ``decay * ln(slow / fast)`` seconds.
        """
        slow = fast * slowdown
        backends = make_backends([1, 1])
        for backend in backends:
            backend.response_time = PeakEWMA(decay)
        backends[0].response_time.observe(slow, 0.0)
        backends[1].response_time.observe(fast, 0.0)
        strategy = LeastTime()
        step = decay / 20
        crossing = decay * math.log(slowdown)
        now = 0.0
        while True:
            now += step
            picked = strategy.pick(backends, ConnectionInfo(now=now))
            if picked is backends[0]:
                break
            self.assertIs(picked, backends[1])
            backends[1].response_time.observe(fast, now)
            self.assertLess(now, crossing + 2 * step)
        self.assertGreater(now, crossing - step)

    def test_through_pool(self) -> None:
        """
        Behind a pool, leased requests in flight steer the picks: with equal response times
        the requests spread evenly.
        """
        backends = make_backends([1, 1, 1])
        for backend in backends:
            backend.response_time.observe(0.05, 0.0)
        pool = Pool("p", backends, get_strategy("least_time"))
        for _ in range(30):
            lease = pool.pick(ConnectionInfo(now=1.0))
            assert lease is not None
            lease.backend.in_flight_requests += 1
        self.assertEqual([b.in_flight_requests for b in backends], [10, 10, 10])


class WeightedRandomTests(SynchronousTestCase):
    """
    ``random``: weighted random choice, with an injectable random source.
    """

    def test_provides_interface(self) -> None:
        """
        WeightedRandom provides IBalancingStrategy.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, WeightedRandom()))

    def test_single_backend(self) -> None:
        """
        One backend is always picked.
        """
        backends = make_backends([3])
        self.assertEqual(picks(WeightedRandom(), backends, 3), backends * 3)

    @repeatable
    @given(weights_lists)
    def test_frequencies(self, weights: list[int]) -> None:
        """
        Over 4000 picks each backend's count is within 5 standard deviations of
        ``4000 * weight / total``.
        """
        backends = make_backends(weights)
        trials = 4000
        counts = Counter(picks(WeightedRandom(random.Random(1234)), backends, trials))
        total = sum(weights)
        for backend in backends:
            p = backend.weight / total
            sigma = math.sqrt(trials * p * (1 - p))
            self.assertLessEqual(abs(counts[backend] - trials * p), 5 * sigma + 1)

    def test_injected_rng(self) -> None:
        """
        The injected random source is the one used.
        """
        backends = make_backends([1, 1, 1, 1])
        first = picks(WeightedRandom(random.Random(7)), backends, 40)
        second = picks(WeightedRandom(random.Random(7)), backends, 40)
        self.assertEqual(first, second)


class TwoChoicesTests(SynchronousTestCase):
    """
    ``two_choices``: the less loaded of two weighted random draws.
    """

    def test_provides_interface(self) -> None:
        """
        TwoChoices provides IBalancingStrategy.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, TwoChoices()))

    def test_single_backend(self) -> None:
        """
        One backend is always picked.
        """
        backends = make_backends([2])
        self.assertEqual(picks(TwoChoices(), backends, 3), backends * 3)

    @quick
    @given(loads, loads, st.integers(min_value=0, max_value=2**32))
    def test_two_backends_less_loaded(
        self, first: tuple[int, int], second: tuple[int, int], seed: int
    ) -> None:
        """
        Of two backends with different loads the less loaded is always picked: the two
        draws are distinct.
        """
        backends = loaded_backends([first, second])
        if ratio(backends[0]) == ratio(backends[1]):
            return
        lighter = min(backends, key=ratio)
        self.assertEqual(picks(TwoChoices(random.Random(seed)), backends, 20), [lighter] * 20)

    @quick
    @given(st.lists(loads, min_size=2, max_size=8), st.integers(min_value=0, max_value=2**32))
    def test_never_most_loaded(self, spec: list[tuple[int, int]], seed: int) -> None:
        """
        A backend more loaded than all others is never picked.
        """
        backends = loaded_backends(spec)
        for picked in picks(TwoChoices(random.Random(seed)), backends, 20):
            self.assertTrue(any(ratio(b) >= ratio(picked) for b in backends if b is not picked))

    @repeatable
    @given(weights_lists)
    def test_frequencies_equal_loads(self, weights: list[int]) -> None:
        """
        With equal loads the first draw wins, so over 4000 picks each backend's count is within
        5 standard deviations of ``4000 * weight / total``.
        """
        backends = make_backends(weights)
        trials = 4000
        counts = Counter(picks(TwoChoices(random.Random(99)), backends, trials))
        total = sum(weights)
        for backend in backends:
            p = backend.weight / total
            sigma = math.sqrt(trials * p * (1 - p))
            self.assertLessEqual(abs(counts[backend] - trials * p), 5 * sigma + 1)

    def test_balances_leases(self) -> None:
        """
        Holding 800 leases over 8 equal backends, two choices keeps every backend within 4 of
        the mean (plain random spreads far wider).
        """
        backends = make_backends([1] * 8)
        pool = Pool("p", backends, TwoChoices(random.Random(3)))
        for _ in range(800):
            pool.pick(NO_CLIENT)
        for backend in backends:
            self.assertLessEqual(abs(backend.active_connections - 100), 4)


class SourceHashTests(SynchronousTestCase):
    """
    ``source_hash``: a ketama consistent hash ring on the client IP.
    """

    def test_provides_interface(self) -> None:
        """
        SourceHash provides IBalancingStrategy.
        """
        self.assertTrue(verifyObject(IBalancingStrategy, SourceHash()))

    @quick
    @given(
        st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=8),
        st.ip_addresses(),
    )
    def test_same_client_same_backend(self, weights: list[int], ip: object) -> None:
        """
        The same IP goes to the same backend, in this ring and in a new one over the same
        backends.
        """
        backends = make_backends(weights)
        address = (
            IPv6Address("TCP", str(ip), 1) if ":" in str(ip) else IPv4Address("TCP", str(ip), 1)
        )
        client = ConnectionInfo(address)
        strategy = ring(backends)
        picked = strategy.pick(backends, client)
        self.assertIs(strategy.pick(backends, client), picked)
        self.assertIs(ring(backends).pick(backends, client), picked)

    def test_spreads_clients(self) -> None:
        """
        Every backend of an equal-weight ring gets clients.
        """
        backends = make_backends([1] * 5)
        counts = Counter(assign(ring(backends), backends))
        for backend in backends:
            self.assertGreater(counts[backend], 2000 / 5 / 2)

    @settings(deadline=None, max_examples=10)
    @given(st.integers(min_value=1, max_value=12))
    def test_add_backend(self, n: int) -> None:
        """
        Adding one backend to ``n`` moves fewer than ``2 / (n + 1)`` of the clients, and every
        client that moves goes to the new backend.
        """
        backends = make_backends([1] * (n + 1))
        before = assign(ring(backends[:n]), backends[:n])
        after = assign(ring(backends), backends)
        moved = [new for old, new in zip(before, after, strict=True) if old is not new]
        self.assertLess(len(moved) / len(CLIENTS), 2 / (n + 1))
        self.assertGreater(len(moved), 0)
        self.assertEqual(set(moved), {backends[n]})

    @settings(deadline=None, max_examples=10)
    @given(st.integers(min_value=2, max_value=10), st.data())
    def test_backend_down_moves_only_its_clients(self, n: int, data: st.DataObject) -> None:
        """
        A backend that is not offered (DOWN) loses its clients to the others, the others keep
        theirs, and its clients come back when it is offered again.
        """
        backends = make_backends([1] * n)
        gone = backends[data.draw(st.integers(min_value=0, max_value=n - 1))]
        strategy = ring(backends)
        before = assign(strategy, backends)
        offered = [b for b in backends if b is not gone]
        during = assign(strategy, offered)
        for old, new in zip(before, during, strict=True):
            if old is gone:
                self.assertIn(new, offered)
            else:
                self.assertIs(new, old)
        self.assertEqual(assign(strategy, backends), before)

    def test_removed_backend_moves_only_its_clients(self) -> None:
        """
        A backend removed from the pool (``backends_changed``) loses only its clients, to the
        same backends as when it is only DOWN.
        """
        backends = make_backends([1, 2, 1, 1])
        strategy = ring(backends)
        before = assign(strategy, backends)
        down = assign(strategy, backends[:2] + backends[3:])
        strategy.backends_changed(backends[:2] + backends[3:])
        removed = assign(strategy, backends[:2] + backends[3:])
        self.assertEqual(removed, down)
        self.assertEqual(
            [new for old, new in zip(before, removed, strict=True) if old is not new],
            [new for old, new in zip(before, removed, strict=True) if old is backends[2]],
        )

    def test_weights(self) -> None:
        """
        A weight-3 backend gets about 3 times the clients of a weight-1 backend.
        """
        for weights in [[1, 3], [1, 1, 3, 1], [3, 1, 1, 1, 1, 1, 1]]:
            backends = make_backends(weights)
            counts = Counter(b.weight if b else 0 for b in assign(ring(backends), backends))
            per_unit = counts[1] / weights.count(1)
            self.assertTrue(2 <= counts[3] / per_unit <= 4, (weights, counts))

    def test_lazy_ring(self) -> None:
        """
        Without ``backends_changed``, the ring is built from the offered backends on the first
        pick, and clients land as on a ring built in advance.
        """
        backends = make_backends([1, 2, 3])
        self.assertEqual(assign(SourceHash(), backends), assign(ring(backends), backends))

    def test_offered_backend_not_on_ring(self) -> None:
        """
        An offered backend missing from the ring is added to it; the others keep their points.
        """
        backends = make_backends([1, 1, 1, 1])
        strategy = ring(backends[:3])
        self.assertEqual(assign(strategy, backends), assign(ring(backends), backends))
        self.assertEqual(assign(strategy, backends[:3]), assign(ring(backends), backends[:3]))

    def test_clients_without_ip(self) -> None:
        """
        UNIX-socket clients and clients of unknown address hash as the empty host: one stable
        backend.
        """
        backends = make_backends([1, 1, 1, 1, 1])
        strategy = ring(backends)
        unix = ConnectionInfo(UNIXAddress(b"/run/lb.sock"))
        picked = strategy.pick(backends, NO_CLIENT)
        self.assertIsNotNone(picked)
        self.assertIs(strategy.pick(backends, unix), picked)
        self.assertIs(ring(backends).pick(backends, NO_CLIENT), picked)


class PoolTests(SynchronousTestCase):
    """
    Each built-in strategy behind a :class:`~twisted_lb.pool.Pool`.
    """

    def strategy(self, name: str) -> IBalancingStrategy:
        options: dict[str, object] = {"seed": 5} if name in ("random", "two_choices") else {}
        return get_strategy(name, options)

    @quick
    @given(
        st.sampled_from(sorted(BUILTINS)),
        st.lists(
            st.tuples(st.integers(min_value=1, max_value=3), st.sampled_from(BackendState)),
            min_size=1,
            max_size=6,
        ),
        st.lists(st.booleans(), min_size=6, max_size=6),
        st.integers(min_value=1, max_value=30),
    )
    def test_only_up_and_backups_last(
        self,
        name: str,
        spec: list[tuple[int, BackendState]],
        backup: list[bool],
        count: int,
    ) -> None:
        """
        Only UP backends are picked; backups only while no primary is UP; nothing when none
        is UP. Every lease released (twice) brings the active counts back to 0.
        """
        backends = make_backends([weight for weight, _state in spec])
        for backend, (_weight, state), is_backup in zip(backends, spec, backup, strict=False):
            backend.state = state
            backend.backup = is_backup
        pool = Pool("p", backends, self.strategy(name))
        up = [b for b in backends if b.state is BackendState.UP]
        primaries_up = [b for b in up if not b.backup]
        leases = [pool.pick(client) for client in CLIENTS[:count]]
        if not up:
            self.assertEqual(leases, [None] * count)
            return
        for lease in leases:
            assert lease is not None
            self.assertIs(lease.backend.state, BackendState.UP)
            self.assertEqual(lease.backend.backup, not primaries_up)
        self.assertEqual(sum(b.active_connections for b in backends), count)
        self.assertEqual(sum(b.total_connections for b in backends), count)
        for lease in leases:
            assert lease is not None
            lease.release()
            lease.release()
            self.assertTrue(lease.released)
        self.assertEqual([b.active_connections for b in backends], [0] * len(backends))

    def test_exclude(self) -> None:
        """
        A backend already tried for this client is not picked again.
        """
        for name in BUILTINS:
            backends = make_backends([1, 1, 1])
            pool = Pool("p", backends, self.strategy(name))
            for client in CLIENTS[:20]:
                first = pool.pick(client)
                assert first is not None
                second = pool.pick(client, exclude=[first.backend])
                assert second is not None
                self.assertIsNot(second.backend, first.backend)

    def test_source_hash_down_and_added(self) -> None:
        """
        Through a pool, a DOWN backend's clients move and the others stay; a backend added
        with ``set_backends`` takes clients only from the others.
        """
        backends = make_backends([1, 1, 1, 1])
        pool = Pool("p", backends[:3], get_strategy("source_hash"))

        def current() -> list[Backend]:
            leases = [pool.pick(client) for client in CLIENTS]
            result = []
            for lease in leases:
                assert isinstance(lease, Lease)
                lease.release()
                result.append(lease.backend)
            return result

        before = current()
        backends[1].state = BackendState.DOWN
        during = current()
        for old, new in zip(before, during, strict=True):
            if old is backends[1]:
                self.assertIsNot(new, backends[1])
            else:
                self.assertIs(new, old)
        backends[1].state = BackendState.UP
        self.assertEqual(current(), before)
        pool.set_backends(backends)
        after = current()
        moved = {new for old, new in zip(before, after, strict=True) if old is not new}
        self.assertEqual(moved, {backends[3]})
