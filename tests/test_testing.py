"""
:mod:`twisted_lb.testing`: the fakes for plugin authors, and the sample plugin of
docs/strategies.rst (``first_free``) tested with them, as a plugin author would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import twisted_lb.plugins
from twisted_lb import Backend, ConnectionInfo
from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory
from twisted_lb.strategies import get_strategy
from twisted_lb.testing import (
    FakePool,
    StrategyError,
    client_address,
    connection_info,
    make_backends,
    verify_plugin,
)

# The plugin of docs/strategies.rst ("An example plugin"), as a plugin author writes it.


@implementer(IBalancingStrategy)
class FirstFree:
    """
    Picks the first backend with fewer than max_active connections per unit of weight,
    else the least loaded one.
    """

    def __init__(self, max_active: int) -> None:
        self.max_active = max_active

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        for backend in backends:
            if backend.active_connections < self.max_active * backend.effective_weight:
                return backend
        return min(backends, key=lambda b: b.active_connections / b.effective_weight)


@implementer(IPlugin, IStrategyFactory)
class FirstFreeFactory:
    """
    Makes FirstFree strategies. Option: max_active (int >= 1, default 100).
    """

    name = "first_free"

    def __call__(self, options: Mapping[str, object]) -> FirstFree:
        unknown = sorted(set(options) - {"max_active"})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; first_free takes 'max_active'")
        max_active = options.get("max_active", 100)
        if not isinstance(max_active, int) or max_active < 1:
            raise ValueError(f"max_active must be an integer >= 1, not {max_active!r}")
        return FirstFree(max_active)


first_free = FirstFreeFactory()


class FirstFreeTests(SynchronousTestCase):
    """The sample plugin, tested with twisted_lb.testing as docs/strategies.rst shows."""

    def test_plugin(self) -> None:
        """The factory is a plugin, and makes a strategy; bad options are refused."""
        self.assertIsInstance(verify_plugin(first_free), FirstFree)
        with self.assertRaises(ValueError):
            verify_plugin(first_free, {"max_active": 0})
        with self.assertRaises(ValueError):
            verify_plugin(first_free, {"max_actve": 2})

    def test_fills_backends_in_order(self) -> None:
        """Each backend takes max_active connections before the next gets any."""
        pool = FakePool(verify_plugin(first_free, {"max_active": 2}), make_backends(3))
        picks = [pool.pick() for _ in range(5)]
        self.assertEqual(pool.names(picks), ["app1", "app1", "app2", "app2", "app3"])
        pool.release("app1")
        self.assertEqual(pool.names([pool.pick()]), ["app1"])

    def test_all_full_goes_to_least_loaded(self) -> None:
        pool = FakePool(verify_plugin(first_free, {"max_active": 1}), make_backends(2))
        self.assertEqual(pool.names(pool.pick() for _ in range(4)), ["app1", "app2"] * 2)

    def test_weight_and_health(self) -> None:
        """A weight-2 backend takes twice as many; a DOWN backend is not offered."""
        pool = FakePool(
            verify_plugin(first_free, {"max_active": 1}), make_backends(2, weights=[2, 1])
        )
        self.assertEqual(pool.names(pool.pick() for _ in range(3)), ["app1", "app1", "app2"])
        pool.release_all()
        pool.set_healthy("app1", False)
        self.assertEqual(pool.offered(), [pool.backend("app2")])
        self.assertEqual(pool.count(3), {"app2": 3})


@implementer(IBalancingStrategy)
class Stranger:
    """A broken strategy: it picks a backend it was not offered."""

    def __init__(self) -> None:
        self.outsider = Backend.from_address("203.0.113.1:80", name="outsider")

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        return self.outsider


class NotAStrategy:
    def choose(self, backends: Sequence[Backend]) -> Backend:
        return backends[0]


class FakePoolTests(SynchronousTestCase):
    def test_catches_a_pick_that_was_not_offered(self) -> None:
        pool = FakePool(Stranger(), make_backends(2))
        with self.assertRaises(StrategyError) as raised:
            pool.pick()
        self.assertIn("outsider", str(raised.exception))
        self.assertIn("offered ['app1', 'app2']", str(raised.exception))

    def test_refuses_what_is_not_a_strategy(self) -> None:
        with self.assertRaises(StrategyError) as raised:
            FakePool(NotAStrategy(), make_backends(1))  # type: ignore[arg-type]
        self.assertIn("does not provide IBalancingStrategy", str(raised.exception))

    def test_offers_what_the_balancer_offers(self) -> None:
        """UP primaries, then backups; excluded backends left out; panic offers all."""
        backends = make_backends(2) + make_backends(1, backup=True)[:1]
        backends[2].name = "backup1"
        pool = FakePool(get_strategy("round_robin"), backends)
        self.assertEqual(pool.names(pool.offered()), ["app1", "app2"])
        self.assertEqual(pool.names(pool.offered(exclude=["app1"])), ["app2"])
        pool.set_healthy("app1", False)
        pool.set_healthy("app2", False)
        self.assertEqual(pool.names(pool.offered()), ["backup1"])
        pool.set_healthy("backup1", False)
        self.assertIsNone(pool.pick())
        panicking = FakePool(get_strategy("round_robin"), make_backends(2), panic=True)
        panicking.set_healthy("app1", False)
        panicking.set_healthy("app2", False)
        self.assertEqual(panicking.names(panicking.offered()), ["app1", "app2"])

    def test_count_shares(self) -> None:
        """``count`` releases every pick: round robin honours weights exactly."""
        pool = FakePool(get_strategy("round_robin"), make_backends(3, weights=[3, 2, 1]))
        self.assertEqual(pool.count(600), {"app1": 300, "app2": 200, "app3": 100})
        self.assertEqual([b.active_connections for b in pool.backends], [0, 0, 0])
        self.assertEqual(len(pool.picks), 600)

    def test_http_requests_and_responses_on_the_clock(self) -> None:
        """
        With ``http``, picks are requests in flight until ``respond``, which advances the
        clock and feeds the response time: least_time then prefers the faster backend.
        """
        clock = Clock()
        pool = FakePool(get_strategy("least_time"), make_backends(2), clock=clock, http=True)
        first, second = pool.pick(), pool.pick()
        assert first is not None and second is not None
        self.assertEqual([b.in_flight_requests for b in pool.backends], [1, 1])
        pool.respond(first, 0.5)
        pool.respond(second, 0.01)
        self.assertEqual(clock.seconds(), 0.51)
        self.assertEqual([b.in_flight_requests for b in pool.backends], [0, 0])
        pool.release_all()
        self.assertEqual(pool.count(5), {second.name: 5})
        with self.assertRaises(ValueError):
            pool.respond(first, -1.0)

    def test_backends_changed_and_lookups(self) -> None:
        strategy = get_strategy("source_hash")
        pool = FakePool(strategy, make_backends(2))
        info = connection_info("198.51.100.23:5555")
        before = pool.pick(info)
        pool.set_backends([*pool.backends, *make_backends(3)[2:]])
        self.assertEqual(len(pool.backends), 3)
        self.assertIsNotNone(pool.pick(info))
        self.assertIsNotNone(before)
        with self.assertRaises(KeyError):
            pool.backend("nope")
        with self.assertRaises(ValueError):
            pool.release("app3")


class VerifyPluginTests(SynchronousTestCase):
    def test_every_installed_strategy(self) -> None:
        """The built-in plugins pass the checks a plugin author's would."""
        factories = list(getPlugins(IStrategyFactory, twisted_lb.plugins))
        self.assertGreaterEqual(len(factories), 6)
        for factory in factories:
            verify_plugin(factory)

    def test_refuses_a_class_or_a_plain_object(self) -> None:
        """The class itself (not an instance), or a factory without IPlugin, is refused."""
        with self.assertRaises(StrategyError) as raised:
            verify_plugin(FirstFreeFactory)
        self.assertIn("does not provide", str(raised.exception))

        @implementer(IStrategyFactory)
        class NoPlugin:
            name = "x"

            def __call__(self, options: Mapping[str, object]) -> FirstFree:
                return FirstFree(1)

        with self.assertRaises(StrategyError) as raised:
            verify_plugin(NoPlugin())
        self.assertIn("IPlugin", str(raised.exception))

    def test_refuses_a_factory_that_makes_no_strategy(self) -> None:
        @implementer(IPlugin, IStrategyFactory)
        class Broken:
            name = "broken"

            def __call__(self, options: Mapping[str, object]) -> object:
                return NotAStrategy()

        with self.assertRaises(StrategyError):
            verify_plugin(Broken())

        @implementer(IPlugin, IStrategyFactory)
        class Nameless:
            name = ""

            def __call__(self, options: Mapping[str, object]) -> FirstFree:
                return FirstFree(1)

        with self.assertRaises(StrategyError):
            verify_plugin(Nameless())


class BuilderTests(SynchronousTestCase):
    def test_make_backends(self) -> None:
        backends = make_backends(2, weights=[1, 3], active_connections=4)
        self.assertEqual(
            [(b.name, str(b.address), b.weight, b.active_connections) for b in backends],
            [("app1", "192.0.2.1:8080", 1, 4), ("app2", "192.0.2.2:8080", 3, 4)],
        )
        for bad in ({"count": 0}, {"count": 2, "weights": [1]}, {"count": 1, "weights": [0]}):
            self.assertRaises(ValueError, make_backends, **bad)

    def test_client_address(self) -> None:
        self.assertEqual(
            client_address("198.51.100.7:5555"), IPv4Address("TCP", "198.51.100.7", 5555)
        )
        self.assertEqual(client_address("198.51.100.7"), IPv4Address("TCP", "198.51.100.7", 40000))
        self.assertEqual(
            client_address("[2001:db8::7]:5555"), IPv6Address("TCP", "2001:db8::7", 5555)
        )
        self.assertEqual(client_address("2001:db8::7"), IPv6Address("TCP", "2001:db8::7", 40000))
        self.assertEqual(client_address("unix:/run/lb.sock"), UNIXAddress("/run/lb.sock"))
        for bad in ("client.example:80", "198.51.100.7:x", "[2001:db8::7]:x"):
            self.assertRaises(ValueError, client_address, bad)

    def test_connection_info(self) -> None:
        """The http proxy's fields, as bytes; the Host and Cookie headers among the headers."""
        info = connection_info(
            "198.51.100.7:5555",
            method="GET",
            host="app.example",
            path="/cart",
            headers=[("X-User", "42")],
            cookies={"session": "abc", "lang": "en"},
            now=12.5,
        )
        self.assertEqual(info.client_host, "198.51.100.7")
        self.assertEqual(
            (info.method, info.host, info.path, info.now), (b"GET", b"app.example", b"/cart", 12.5)
        )
        self.assertEqual(
            list(info.headers),
            [(b"Host", b"app.example"), (b"X-User", b"42"), (b"Cookie", b"session=abc; lang=en")],
        )
        self.assertEqual(info.cookies, {b"session": b"abc", b"lang": b"en"})
        self.assertIsNone(connection_info(None).client_address)
        self.assertEqual(
            connection_info(), ConnectionInfo(IPv4Address("TCP", "198.51.100.7", 40000))
        )
