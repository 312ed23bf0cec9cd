"""
Reloading a config in place and the runtime changes, on a memory reactor: what is diffed,
what keeps its identity, how removed backends and frontends drain, and the errors.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb._frontend import ProxyHeaderFactory
from twisted_lb.backend import Backend, BackendState
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.http.upstream import UpstreamConnection
from twisted_lb.logs import AccessLog
from twisted_lb.service import (
    InvalidChange,
    LoadBalancerService,
    ReloadResult,
    UnknownBackend,
    UnknownPool,
)
from twisted_lb.tcp import TCPRelayFactory

BASE = """
[global]
drain_timeout = 10

[frontends.web]
mode = "http"
listen = ["tcp:8080:interface=127.0.0.1", "tcp:8081"]
pool = "app"
client_timeout = 30

[[frontends.web.routes]]
path_prefix = "/api/"
pool = "api"

[frontends.db]
mode = "tcp"
listen = ["tcp:5432"]
pool = "app"

[pools.app]
strategy = "round_robin"
slow_start = 20
backends = [
  { address = "127.0.0.1:9001", name = "app1" },
  { address = "127.0.0.1:9002", name = "app2", weight = 3 },
  { address = "127.0.0.1:9003", name = "app3" },
]
[pools.app.health_check]
kind = "tcp"
interval = 5

[pools.api]
backends = [{ address = "127.0.0.1:9101" }]
"""


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class HalfCloseTransport(StringTransport):
    def loseWriteConnection(self) -> None:
        pass


class ReloadCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000.0)
        self.service = LoadBalancerService.from_config(parse_config(BASE, "lb.toml"), self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        stopped = self.service.stopService()
        self.reactor.advance(10.0)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def apply(self, text: str) -> tuple[ReloadResult, list[str]]:
        with capturedLogs() as events:
            result = self.service.apply_config(parse_config(text, "lb.toml"))
        return result, texts(events)

    def idle_upstream(
        self, pool: str, backend: Backend
    ) -> tuple[UpstreamConnection, StringTransport]:
        """A keep-alive connection to ``backend``, connected and idle in the upstreams."""
        connection = UpstreamConnection(self.service.upstreams, backend, self.service.pools[pool])
        transport = StringTransport()
        connection.makeConnection(transport)
        self.service.upstreams.release(connection)
        self.assertIn(connection, self.service.upstreams.idle[backend])
        return connection, transport

    def backend(self, pool: str, name: str):  # type: ignore[no-untyped-def]
        [backend] = [b for b in self.service.pools[pool].backends if b.name == name]
        return backend

    def tcp_client(self) -> tuple[object, HalfCloseTransport, HalfCloseTransport]:
        """A client of frontend ``db`` connected through to its backend."""
        factory = self.service.factories["db"]
        front = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5555))
        client = HalfCloseTransport()
        front.makeConnection(client)
        backend_protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        backend = HalfCloseTransport()
        backend_protocol.makeConnection(backend)
        self.addCleanup(backend_protocol.connectionLost, Failure(ConnectionDone()))
        self.addCleanup(front.connectionLost, Failure(ConnectionDone()))
        return front, client, backend


class DiffTests(ReloadCase):
    def test_no_change(self) -> None:
        """Reloading the same config changes nothing, and says so; the generation goes up."""
        pool = self.service.pools["app"]
        factory = self.service.factories["web"]
        ports = [listener.port for listener in self.service.listeners]
        result, logs = self.apply(BASE)
        self.assertEqual(
            (result.ok, result.generation, result.added, result.changed, result.removed),
            (True, 2, (), (), ()),
        )
        self.assertEqual(self.service.generation, 2)
        self.assertIs(self.service.last_reload, result)
        self.assertIs(self.service.pools["app"], pool)
        self.assertIs(self.service.factories["web"], factory)
        self.assertEqual([listener.port for listener in self.service.listeners], ports)
        self.assertEqual(len(self.reactor.tcpServers), 3)
        self.assertIn("reload: generation 2 from lb.toml: no change", logs)

    def test_backend_keeps_its_state(self) -> None:
        """
        A backend that keeps its name and address is the same object: health, ejection,
        counters, EWMA and slow start are kept; its weight follows the config.
        """
        app1 = self.backend("app", "app1")
        app1.total_connections = 7
        app1.requests_total = 9
        app1.response_time.observe(0.25, self.reactor.seconds())
        self.service.pools["app"].set_healthy(app1, False)
        self.service.pools["app"].set_healthy(app1, True)  # begins its slow start
        self.assertEqual(app1.effective_weight, 0.1)
        result, _ = self.apply(BASE.replace('name = "app1" }', 'name = "app1", weight = 2 }'))
        self.assertEqual(result.changed, ("backend app/app1",))
        self.assertIs(self.backend("app", "app1"), app1)
        self.assertEqual((app1.weight, app1.total_connections, app1.requests_total), (2, 7, 9))
        self.assertGreater(app1.response_time.value(self.reactor.seconds()), 0.2)
        self.assertEqual(app1.effective_weight, 0.1)  # still warming, now towards 2
        self.reactor.advance(20.0)
        self.assertEqual(app1.effective_weight, 2.0)

    def test_backends_added_removed_and_moved(self) -> None:
        """
        A new backend is added, a missing one removed (and drained), and one whose address
        changed under the same name is a new object.
        """
        old_app3 = self.backend("app", "app3")
        text = BASE.replace(
            """  { address = "127.0.0.1:9002", name = "app2", weight = 3 },
  { address = "127.0.0.1:9003", name = "app3" },""",
            """  { address = "127.0.0.1:9013", name = "app3" },
  { address = "127.0.0.1:9004", name = "app4" },""",
        )
        result, logs = self.apply(text)
        self.assertTrue(result.ok)
        self.assertEqual(result.added, ("backend app/app4",))
        self.assertEqual(result.changed, ("backend app/app3",))
        self.assertEqual(result.removed, ("backend app/app2",))
        self.assertEqual(
            [(b.name, str(b.address)) for b in self.service.pools["app"].backends],
            [("app1", "127.0.0.1:9001"), ("app3", "127.0.0.1:9013"), ("app4", "127.0.0.1:9004")],
        )
        self.assertIsNot(self.backend("app", "app3"), old_app3)
        [summary] = [line for line in logs if line.startswith("reload:")]
        self.assertEqual(
            summary,
            "reload: generation 2 from lb.toml: added backend app/app4; changed backend app/app3;"
            " removed backend app/app2",
        )
        # Nothing used them: the drain is over at its first look.
        self.assertEqual(self.service.drains, [])
        self.assertIn("drained backend app/app2, backend app/app3 in 0.0 s", logs)

    def test_health_monitor_follows(self) -> None:
        """
        The pool's monitor is kept, takes the new settings, probes the added backend at
        once and stops probing the removed one.
        """
        monitor = self.service.monitors["app"]
        probes = len(self.reactor.tcpClients)
        text = BASE.replace("interval = 5", "interval = 7\nrise = 4").replace(
            '{ address = "127.0.0.1:9003", name = "app3" },',
            '{ address = "127.0.0.1:9004", name = "app4" },',
        )
        result, _ = self.apply(text)
        self.assertEqual(result.changed, ("pool app",))
        self.assertIs(self.service.monitors["app"], monitor)
        self.assertEqual((monitor.interval, monitor.rise), (7.0, 4))
        self.assertEqual(len(self.reactor.tcpClients), probes + 1)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 9004))
        # Without a health_check table the monitor stops, and no backend stays DOWN.
        app1 = self.backend("app", "app1")
        self.service.pools["app"].set_healthy(app1, False)
        result, _ = self.apply(
            BASE.replace('[pools.app.health_check]\nkind = "tcp"\ninterval = 5\n', "")
        )
        self.assertEqual(self.service.monitors, {})
        self.assertFalse(monitor.running)
        self.assertIs(app1.state, BackendState.UP)

    def test_strategy(self) -> None:
        """The strategy is kept while its name and options are; else a new one is made."""
        strategy = self.service.pools["app"].strategy
        self.apply(BASE.replace("slow_start = 20", "slow_start = 5"))
        self.assertIs(self.service.pools["app"].strategy, strategy)
        self.assertEqual(self.service.pools["app"].slow_start, 5.0)
        result, _ = self.apply(BASE.replace('"round_robin"', '"least_connections"'))
        self.assertEqual(result.changed, ("pool app",))
        self.assertEqual(type(self.service.pools["app"].strategy).__name__, "LeastConnections")

    def test_frontend_changed_in_place(self) -> None:
        """
        A frontend keeps its factory (and its connections): timeouts and routes change in
        place, and routes are reported by index.
        """
        factory = self.service.factories["web"]
        assert isinstance(factory, HTTPProxyFactory)
        text = BASE.replace("client_timeout = 30", "client_timeout = 45").replace(
            'path_prefix = "/api/"', 'path_prefix = "/v2/"'
        )
        result, _ = self.apply(text)
        self.assertEqual(result.changed, ("frontend web", "route web[0]"))
        self.assertIs(self.service.factories["web"], factory)
        self.assertEqual(factory.client_timeout, 45.0)
        self.assertIs(factory.router.route(b"x", b"/v2/a"), self.service.pools["api"])
        self.assertIs(factory.router.route(b"x", b"/api/a"), self.service.pools["app"])

    def test_pool_added_and_removed(self) -> None:
        """A new pool and a route to it; a pool nothing names any more is removed."""
        text = BASE.replace('pool = "api"', 'pool = "v2"').replace("[pools.api]", "[pools.v2]")
        api = self.service.pools["api"]
        result, _ = self.apply(text)
        self.assertEqual(result.added, ("pool v2",))
        self.assertEqual(result.removed, ("pool api",))
        self.assertEqual(result.changed, ("route web[0]",))
        self.assertNotIn("api", self.service.pools)
        self.assertEqual(api.backends, [])
        factory = self.service.factories["web"]
        assert isinstance(factory, HTTPProxyFactory)
        self.assertIs(factory.router.route(b"x", b"/api/"), self.service.pools["v2"])

    def test_listeners(self) -> None:
        """
        An unchanged endpoint keeps its port; a new one listens at once; a removed one stops
        listening.
        """
        [kept, dropped, db] = self.service.listeners
        kept_port, _dropped_port = kept.port, dropped.port
        text = BASE.replace('"tcp:8081"', '"tcp:8082"')
        result, _ = self.apply(text)
        self.assertEqual(result.added, ("listener web tcp:8082",))
        self.assertEqual(result.removed, ("listener web tcp:8081",))
        self.assertIs(self.service.listeners[0], kept)
        self.assertIs(kept.port, kept_port)
        self.assertIs(self.service.listeners[2], db)
        self.assertEqual(self.reactor.tcpServers[-1][0], 8082)
        self.assertIsNotNone(self.service.listeners[1].port)
        self.assertIsNone(dropped.port)
        self.assertEqual(self.service.addresses("web")[0].port, 8080)

    def test_mode_change_keeps_the_port(self) -> None:
        """
        A frontend that changes mode gets a new factory; its port stays open and hands new
        connections to the new factory, and the old factory's connections drain.
        """
        [_, _, db] = self.service.listeners
        port = db.port
        old = self.service.factories["db"]
        text = BASE.replace('[frontends.db]\nmode = "tcp"', '[frontends.db]\nmode = "http"')
        result, _ = self.apply(text)
        self.assertEqual(result.changed, ("frontend db",))
        self.assertIs(db.port, port)
        new = self.service.factories["db"]
        self.assertIsInstance(new, HTTPProxyFactory)
        self.assertIs(db.factory, new)
        [(_, entry, _, _)] = [s for s in self.reactor.tcpServers if s[0] == 5432]
        protocol = entry.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        self.assertIs(protocol.factory, new)
        self.assertIsInstance(old, TCPRelayFactory)

    def test_port_taken(self) -> None:
        """A new endpoint that cannot listen fails the reload; nothing changed."""

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError("Address already in use")

        pool = self.service.pools["app"]
        self.reactor.listenTCP = refuse  # type: ignore[method-assign]
        text = BASE.replace('"tcp:8081"', '"tcp:8082"').replace("weight = 3", "weight = 4")
        result, logs = self.apply(text)
        self.assertFalse(result.ok)
        self.assertEqual(result.generation, 1)
        [problem] = result.problems
        self.assertTrue(problem.startswith("lb.toml: frontends.web.listen[1]: "), problem)
        self.assertIn("cannot listen on tcp:8082: Address already in use", problem)
        self.assertIn(problem, logs)
        self.assertEqual(self.backend("app", "app2").weight, 3)
        self.assertIs(self.service.pools["app"], pool)
        self.assertEqual(
            [listener.description for listener in self.service.listeners][1], "tcp:8081"
        )


class ProxyListenerTests(ReloadCase):
    def test_haproxy_listener_kept_with_new_settings(self) -> None:
        """
        A ``haproxy:`` listener keeps its port; the PROXY header factory it listens with is
        new, with the new ``proxy_protocol_from``, and started in place of the old one.
        """
        text = BASE.replace('"tcp:5432"', '"haproxy:tcp:5432"')
        self.apply(text)
        [listener] = [x for x in self.service.listeners if x.frontend == "db"]
        self.assertEqual(listener.description, "haproxy:tcp:5432")
        port = listener.port
        old = listener.factory
        assert isinstance(old, ProxyHeaderFactory)
        listener._entry.doStart()  # as a real port does when it listens
        self.assertEqual(old.numPorts, 1)
        result, _ = self.apply(
            text.replace(
                'listen = ["haproxy:tcp:5432"]',
                'listen = ["haproxy:tcp:5432"]\nproxy_protocol_from = ["10.0.0.1"]',
            )
        )
        self.assertEqual(result.changed, ("frontend db",))
        self.assertIs(listener.port, port)
        new = listener.factory
        assert isinstance(new, ProxyHeaderFactory)
        self.assertIsNot(new, old)
        self.assertIs(new.frontend, self.service.factories["db"])
        self.assertEqual(str(new.allowed.networks[0]), "10.0.0.1/32")
        self.assertEqual((new.numPorts, old.numPorts), (1, 0))


class AccessLogReloadTests(ReloadCase):
    def test_destination_changes(self) -> None:
        """
        A new ``access_log`` destination is opened by the reload; every frontend writes
        there from then on, and the old log is closed, its lines written.
        """
        first, second = Path(self.mktemp()).absolute(), Path(self.mktemp()).absolute()
        self.apply(f'[global]\naccess_log = "{first}"\n' + BASE.replace("[global]\n", ""))
        log = self.service.access_log
        assert isinstance(log, AccessLog)
        self.assertTrue(first.exists())  # opened by the reload
        self.assertIs(self.service.factories["web"].access_log, log)
        result, _ = self.apply(
            f'[global]\naccess_log = "{second}"\n' + BASE.replace("[global]\n", "")
        )
        self.assertIn("global access_log", result.changed)
        new = self.service.access_log
        assert isinstance(new, AccessLog)
        self.assertEqual(new.path, str(second))
        self.assertTrue(second.exists())
        for factory in self.service.factories.values():
            self.assertIs(factory.access_log, new)
        self.assertIsNone(log._file)  # closed
        # Unchanged keys keep the same log.
        self.apply(f'[global]\naccess_log = "{second}"\n' + BASE.replace("[global]\n", ""))
        self.assertIs(self.service.access_log, new)

    def test_cannot_open(self) -> None:
        """A destination that cannot be opened fails the reload; the old log stays."""
        log = self.service.access_log
        result, _ = self.apply(
            '[global]\naccess_log = "/nonexistent/dir/access.log"\n'
            + BASE.replace("[global]\n", "")
        )
        self.assertFalse(result.ok)
        [problem] = result.problems
        self.assertIn("global.access_log: cannot open /nonexistent/dir/access.log", problem)
        self.assertIs(self.service.access_log, log)


def attributes(instance: object) -> dict[str, object]:
    """An instance's attributes: ``vars()``, or the slots of a class compiled by mypyc."""
    names = getattr(type(instance), "__mypyc_attrs__", None)
    if names is None:
        return dict(vars(instance))
    return {n: getattr(instance, n) for n in names if n != "__dict__" and hasattr(instance, n)} | {
        name: value for name, value in getattr(instance, "__dict__", {}).items()
    }


class SettingsListTests(SynchronousTestCase):
    """
    ``FrontendFactory.settings`` names every setting of the factories, so that a reload
    changes each one: a constructor argument added without it fails here.
    """

    #: Not settings: what the factory is, serves with, or counts.
    LIVE = {"reactor", "upstreams", "frontend"}

    def different(self, name: str, default: object) -> object:
        if name == "trusted_proxies":
            return ["10.0.0.0/8"]
        if name == "proto":
            return "https"
        if name == "access_log":
            return False
        if isinstance(default, bool):
            return not default
        if isinstance(default, int | float):
            return default * 2 + 1
        raise AssertionError(f"no other value known for {name}={default!r}: add one here")

    def check(self, cls: type, pool: object) -> None:
        import inspect

        reactor = MemoryReactorClock()
        live = cls(reactor, pool)
        # A class compiled by mypyc shows its parameters but not their defaults: the
        # attribute of the same name holds the default then.
        changed = {
            name: self.different(
                name,
                getattr(live, name) if parameter.default is parameter.empty else parameter.default,
            )
            for name, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY and name not in self.LIVE
        }
        fresh = cls(reactor, pool, **changed)
        live.update_settings(fresh)
        for name, value in attributes(fresh).items():
            if name in self.LIVE or name in ("connections", "_idle_waiters"):
                continue
            self.assertEqual(getattr(live, name), value, f"{cls.__name__}.{name}")

    def test_http(self) -> None:
        from twisted_lb.pool import Pool
        from twisted_lb.strategies import get_strategy

        self.check(HTTPProxyFactory, Pool("p", [], get_strategy("round_robin")))

    def test_tcp(self) -> None:
        from twisted_lb.pool import Pool
        from twisted_lb.strategies import get_strategy

        self.check(TCPRelayFactory, Pool("p", [], get_strategy("round_robin")))


class TLSReloadTests(SynchronousTestCase):
    def test_tls_files_read_again(self) -> None:
        """
        A reload reads the TLS files again: a frontend gets a new server context, and its
        port a new TLS wrapper; a file that went bad fails the reload with its problem.
        """
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("a.example")
        directory = Path(self.mktemp())
        directory.mkdir()
        cert.private_key_and_cert_chain_pem.write_to_path(str(directory / "site.pem"))
        cert.private_key_pem.write_to_path(str(directory / "site.key"))
        pem, key = directory / "site.pem", directory / "site.key"
        text = BASE + (
            f'[frontends.web.tls]\ncertificates = [{{ cert = "{pem}", key = "{key}" }}]\n'
        )
        reactor = MemoryReactorClock()
        service = LoadBalancerService.from_config(parse_config(text, "lb.toml"), reactor)
        service.startService()
        old_tls = service.server_tls["web"]
        result = service.apply_config(parse_config(text, "lb.toml"))
        self.assertTrue(result.ok)
        self.assertIsNot(service.server_tls["web"], old_tls)
        wrapper = service.listeners[0].factory
        assert isinstance(wrapper, TLSMemoryBIOFactory)
        self.assertIs(wrapper.wrappedFactory, service.factories["web"])
        (directory / "site.pem").write_text("not a certificate\n")
        with capturedLogs():
            result = service.reload(str(directory / "missing.toml"))
        self.assertFalse(result.ok)
        self.assertIn("cannot read", result.problems[0])
        self.assertIs(service.listeners[0].factory, wrapper)
        self.successResultOf(service.stopService())


class PoolTLSReloadTests(SynchronousTestCase):
    """A reload and the upstream connections a pool's ``tls`` made."""

    def setUp(self) -> None:
        import trustme

        directory = Path(self.mktemp())
        directory.mkdir()
        self.ca_path = directory / "ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.ca_path))
        self.text = BASE.replace("[pools.api]", "[pools.app.tls]\nca = 'CA'\n[pools.api]").replace(
            "CA", str(self.ca_path)
        )
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService.from_config(
            parse_config(self.text, "lb.toml"), self.reactor
        )
        self.service.startService()
        self.addCleanup(lambda: self.successResultOf(self.service.stopService()))
        self.pool = self.service.pools["app"]
        self.app1 = self.pool.backends[0]

    def connection(self) -> tuple[UpstreamConnection, StringTransport]:
        connection = UpstreamConnection(self.service.upstreams, self.app1, self.pool)
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def test_unrelated_reload_keeps_connections(self) -> None:
        """
        A reload that leaves ``tls`` alone keeps the pool's ClientTLS (its files read again
        and adopted), so idle and busy connections stay reusable.
        """
        idle, idle_transport = self.connection()
        busy, busy_transport = self.connection()
        self.service.upstreams.release(idle)
        tls = self.pool.tls
        trust = tls._trust  # type: ignore[union-attr]
        import trustme

        trustme.CA().cert_pem.write_to_path(str(self.ca_path))
        with capturedLogs():
            result = self.service.apply_config(
                parse_config(self.text.replace("slow_start = 20", "slow_start = 10"), "lb.toml")
            )
        self.assertTrue(result.ok, result.problems)
        self.assertIs(self.pool.tls, tls)
        self.assertIsNot(tls._trust, trust)  # type: ignore[union-attr]  # the new CA file
        self.service.upstreams.release(busy)
        self.assertFalse(idle_transport.disconnecting or busy_transport.disconnecting)
        self.assertIs(self.service.upstreams.take_idle(self.app1), busy)
        self.assertIs(self.service.upstreams.take_idle(self.app1), idle)

    def test_tls_change_closes_busy_connections_when_released(self) -> None:
        """
        A reload that changes ``tls``: idle connections close at once, busy ones when their
        exchange ends; none is reused with the old settings.
        """
        idle, idle_transport = self.connection()
        busy, busy_transport = self.connection()
        self.service.upstreams.release(idle)
        with capturedLogs():
            result = self.service.apply_config(
                parse_config(
                    self.text.replace("[pools.app.tls]\n", "[pools.app.tls]\nserver_name = 'b'\n"),
                    "lb.toml",
                )
            )
        self.assertTrue(result.ok, result.problems)
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(busy_transport.disconnecting)
        self.service.upstreams.release(busy)
        self.assertTrue(busy_transport.disconnecting)
        self.assertIsNone(self.service.upstreams.take_idle(self.app1))


class InvalidReloadTests(ReloadCase):
    def test_every_problem_nothing_changes(self) -> None:
        """
        An invalid file changes nothing: every problem is in the result and in the log, as
        ``twisted-lb check`` prints it, and the generation stays.
        """
        path = Path(self.mktemp())
        path.write_text(
            BASE.replace("weight = 3", "weight = 0").replace('"round_robin"', '"round_robn"')
        )
        with self.assertRaises(ConfigError) as raised:
            parse_config(path.read_text(), str(path))
        expected = tuple(problem.located() for problem in raised.exception.problems)
        self.assertEqual(len(expected), 2)
        app2 = self.backend("app", "app2")
        with capturedLogs() as events:
            result = self.service.reload(str(path))
        logs = texts(events)
        self.assertEqual((result.ok, result.generation, result.problems), (False, 1, expected))
        for line in expected:
            self.assertIn(line, logs)
        self.assertIn("reload failed with 2 problems; generation 1 stays in force", logs)
        self.assertIs(self.service.last_reload, result)
        self.assertEqual(app2.weight, 3)
        self.assertEqual(self.service.config.path, "lb.toml")

    def test_reload_default_path(self) -> None:
        """Without a path, the file the config in force came from is read again."""
        path = Path(self.mktemp())
        path.write_text(BASE.replace("weight = 3", "weight = 5"))
        self.service.apply_config(parse_config(BASE, str(path)))
        with capturedLogs():
            result = self.service.reload()
        self.assertEqual((result.ok, result.generation), (True, 3))
        self.assertEqual(self.backend("app", "app2").weight, 5)


class StoppingReloadTests(SynchronousTestCase):
    def test_reload_while_stopping_changes_nothing(self) -> None:
        """
        Once stopService has begun, reload() reads nothing and applies nothing: a failed
        result saying the balancer is stopping.
        """
        reactor = MemoryReactorClock()
        path = Path(self.mktemp())
        path.write_text(BASE)
        service = LoadBalancerService.from_config(parse_config(BASE, str(path)), reactor)
        service.privilegedStartService()
        service.startService()
        path.write_text(BASE.replace("weight = 3", "weight = 5"))
        stopped = service.stopService()
        with capturedLogs() as events:
            result = service.reload()
        self.assertEqual(
            (result.ok, result.generation, result.problems),
            (False, 1, ("the balancer is stopping; nothing was reloaded",)),
        )
        self.assertIn("reload refused: the balancer is stopping", texts(events))
        self.assertIs(service.last_reload, result)
        [app2] = [b for b in service.pools["app"].backends if b.name == "app2"]
        self.assertEqual(app2.weight, 3)
        reactor.advance(10.0)
        self.successResultOf(stopped)


class DrainTests(ReloadCase):
    def test_removed_backend_drains_then_closes(self) -> None:
        """
        A removed backend with a relayed connection takes no new one, and its connection
        runs on; after drain_timeout it is closed, with a log event, and no timer is left.
        """
        pool = self.service.pools["app"]
        front, client, backend = self.tcp_client()
        used = front.backend  # type: ignore[attr-defined]
        names = [b.name for b in pool.backends if b is not used]
        keep = "\n".join(line for line in BASE.splitlines() if str(used.address) not in line)
        result, _ = self.apply(keep + "\n")
        self.assertEqual(result.removed, (f"backend app/{used.name}",))
        self.assertEqual([b.name for b in pool.backends], names)
        [drain] = self.service.drains
        front.dataReceived(b"still relayed")  # type: ignore[attr-defined]
        self.assertEqual(backend.value(), b"still relayed")
        self.reactor.advance(9.0)
        self.assertFalse(client.disconnected)
        with capturedLogs() as events:
            self.reactor.advance(1.0)
        self.assertTrue(client.disconnected)
        self.assertTrue(backend.disconnected)
        self.assertIn(
            f"drain_timeout: closed 1 connections of backend app/{used.name} still open after 10 s",
            texts(events),
        )
        self.assertEqual(self.service.drains, [])
        self.assertFalse(drain.loop.running)

    def test_drain_ends_when_the_work_does(self) -> None:
        """A drain whose last connection ends is over at its next look; its timers go."""
        front, _client, _ = self.tcp_client()
        used = front.backend  # type: ignore[attr-defined]
        self.service.remove_backend("app", used.name)
        self.assertEqual(len(self.service.drains), 1)
        front.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        front.backend_connection_lost()  # type: ignore[attr-defined]
        with capturedLogs() as events:
            self.reactor.advance(1.0)
        self.assertIn(f"drained backend app/{used.name} in 1.0 s", texts(events))
        self.assertEqual(self.service.drains, [])

    def test_removed_frontend_drains(self) -> None:
        """
        A removed frontend stops listening; its relayed connections run until they end or
        drain_timeout closes them.
        """
        _front, client, _ = self.tcp_client()
        text = BASE.split("[frontends.db]")[0] + "[pools.app]" + BASE.split("[pools.app]")[1]
        result, _ = self.apply(text)
        self.assertEqual(result.removed, ("frontend db", "listener db tcp:5432"))
        self.assertNotIn("db", self.service.factories)
        self.assertFalse(client.disconnecting)
        self.reactor.advance(10.0)
        self.assertTrue(client.disconnected)

    def test_removed_frontend_and_backend_close_once(self) -> None:
        """
        A connection of a removed frontend that also uses a removed backend is closed once
        at drain_timeout, and counted once.
        """
        front, client, _ = self.tcp_client()
        used = front.backend  # type: ignore[attr-defined]
        text = BASE.split("[frontends.db]")[0] + "[pools.app]" + BASE.split("[pools.app]")[1]
        text = "\n".join(line for line in text.splitlines() if str(used.address) not in line)
        self.apply(text + "\n")
        with capturedLogs() as events:
            self.reactor.advance(10.0)
        self.assertTrue(client.disconnected)
        [line] = [t for t in texts(events) if t.startswith("drain_timeout")]
        self.assertEqual(
            line,
            f"drain_timeout: closed 1 connections of backend app/{used.name}, "
            "frontend db (1 connections) still open after 10 s",
        )

    def test_idle_upstreams_of_removed_backend_close(self) -> None:
        """Idle keep-alive connections to a removed backend are closed by the reload."""
        upstreams = self.service.upstreams
        app3 = self.backend("app", "app3")
        _, transport = self.idle_upstream("app", app3)
        self.apply(BASE.replace('  { address = "127.0.0.1:9003", name = "app3" },\n', ""))
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(app3, upstreams.idle)

    def test_pool_tls_change_closes_idle_upstreams(self) -> None:
        """
        Idle keep-alive connections of a pool whose TLS settings changed are closed, so that
        none is reused with the old settings; the backends themselves are kept.
        """
        upstreams = self.service.upstreams
        app1 = self.backend("app", "app1")
        idle, transport = self.idle_upstream("app", app1)
        self.apply(BASE)
        self.assertFalse(transport.disconnecting)
        result, _ = self.apply(
            BASE.replace("[pools.api]", "[pools.app.tls]\nverify = false\n[pools.api]")
        )
        self.assertEqual(result.changed, ("pool app",))
        self.assertTrue(transport.disconnecting)
        self.assertIs(self.backend("app", "app1"), app1)
        self.assertIsNotNone(self.service.pools["app"].tls)
        self.assertNotIn(idle, upstreams.idle.get(app1, []))

    def test_removed_http_frontend_closes_idle_clients(self) -> None:
        """
        A removed HTTP frontend's idle keep-alive clients are closed at once; the others
        after their response.
        """
        factory = self.service.factories["web"]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5555))
        client = StringTransport()
        protocol.makeConnection(client)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        text = BASE.replace(BASE[BASE.index("[frontends.web]") : BASE.index("[frontends.db]")], "")
        result, _ = self.apply(text)
        self.assertIn("frontend web", result.removed)
        self.assertTrue(client.disconnecting)


class RuntimeTests(ReloadCase):
    def test_state_and_weight(self) -> None:
        """Drain, maint, ready and weight change the live backend; the strategy follows."""
        self.service.monitors["app"].stopService()
        app2 = self.backend("app", "app2")
        self.service.set_backend_state("app", "app2", "drain")
        self.assertIs(app2.state, BackendState.DRAINING)
        self.service.set_backend_state("app", "app2", "maint")
        self.assertIs(app2.state, BackendState.MAINT)
        self.service.set_backend_state("app", "app2", "ready")
        self.assertIs(app2.state, BackendState.UP)
        self.reactor.advance(20.0)  # its slow start
        self.service.set_backend_weight("app", "app2", 256)  # the largest, as HAProxy's
        self.service.set_backend_weight("app", "app2", 7)
        self.assertEqual((app2.weight, app2.effective_weight), (7, 7.0))
        pool = self.service.pools["app"]
        picks = [pool.pick(object()).backend.name for _ in range(9)]  # type: ignore[arg-type, union-attr]
        self.assertEqual(picks.count("app2"), 7)

    def test_errors(self) -> None:
        """Unknown names are LookupErrors, bad values InvalidChange naming what is accepted."""
        with self.assertRaises(UnknownPool):
            self.service.set_backend_state("nope", "app1", "drain")
        with self.assertRaises(UnknownBackend) as raised:
            self.service.set_backend_weight("app", "nope", 2)
        self.assertIn("backends: app1, app2, app3", str(raised.exception))
        with self.assertRaises(InvalidChange) as invalid:
            self.service.set_backend_state("app", "app1", "down")
        self.assertIn("'ready', 'drain' or 'maint'", str(invalid.exception))
        for weight in (0, True, 2.5, 257, 20000):
            with self.assertRaises(InvalidChange) as invalid:
                self.service.set_backend_weight("app", "app1", weight)  # type: ignore[arg-type]
            self.assertIn("weight must be an integer from 1 to 256, not", str(invalid.exception))
            with self.assertRaises(InvalidChange) as invalid:
                self.service.add_backend("app", "127.0.0.1:9009", weight=weight)  # type: ignore[arg-type]
            self.assertIn("weight must be an integer from 1 to 256, not", str(invalid.exception))
        with self.assertRaises(InvalidChange):
            self.service.add_backend("app", "nowhere")
        with self.assertRaises(InvalidChange):
            self.service.add_backend("app", "127.0.0.1:9001")
        with self.assertRaises(InvalidChange):
            self.service.add_backend("app", "127.0.0.1:9009", name="app1")
        with self.assertRaises(UnknownBackend):
            self.service.remove_backend("app", "nope")
        self.assertEqual(self.service.runtime_state()["backends"], [])

    def test_add_and_remove(self) -> None:
        """An added backend is picked and probed; a removed one drains."""
        probes = len(self.reactor.tcpClients)
        backend = self.service.add_backend("app", "127.0.0.1:9009", weight=2)
        self.assertEqual(backend.name, "app4")
        self.assertIn(backend, self.service.pools["app"].backends)
        self.assertEqual(self.reactor.tcpClients[probes][:2], ("127.0.0.1", 9009))
        self.service.remove_backend("app", "app1")
        self.assertEqual(
            [b.name for b in self.service.pools["app"].backends], ["app2", "app3", "app4"]
        )
        self.assertEqual(
            self.service.runtime_state(),
            {
                "generation": 1,
                "backends": [
                    {
                        "pool": "app",
                        "backend": "app4",
                        "added": {"address": "127.0.0.1:9009", "weight": 2, "backup": False},
                    },
                    {"pool": "app", "backend": "app1", "removed": True},
                ],
            },
        )

    def test_restore(self) -> None:
        """The runtime state applies again on a fresh service; bad entries are skipped."""
        self.service.set_backend_state("app", "app2", "drain")
        self.service.set_backend_weight("app", "app2", 5)
        self.service.add_backend("api", "127.0.0.1:9102", name="api2")
        state = self.service.runtime_state()
        state["backends"].append({"pool": "gone", "backend": "x", "state": "drain"})  # type: ignore[attr-defined]
        state["backends"].append({"pool": "app", "backend": "app1", "weight": -1})  # type: ignore[attr-defined]
        state["backends"].append({"pool": "app", "backend": "app3", "weight": 10**9})  # type: ignore[attr-defined]
        state["backends"].append(  # type: ignore[attr-defined]
            {"pool": "app", "backend": "x", "added": {"address": "127.0.0.1:9", "weight": 300}}
        )
        fresh = LoadBalancerService.from_config(parse_config(BASE, "lb.toml"), self.reactor)
        problems = fresh.restore_runtime_state(state)
        self.assertEqual(len(problems), 4)
        self.assertIn("runtime state backends[2] (gone/x): no pool 'gone'", problems[0])
        self.assertIn("weight must be an integer from 1 to 256, not -1", problems[1])
        self.assertIn("weight must be an integer from 1 to 256, not 1000000000", problems[2])
        self.assertIn("weight must be an integer from 1 to 256, not 300", problems[3])
        [app2] = [b for b in fresh.pools["app"].backends if b.name == "app2"]
        self.assertEqual((app2.state, app2.weight), (BackendState.DRAINING, 5))
        self.assertEqual([b.name for b in fresh.pools["api"].backends], ["api1", "api2"])
        self.assertEqual(
            fresh.runtime_state()["backends"], self.service.runtime_state()["backends"]
        )

    def test_reload_overrides(self) -> None:
        """
        A reload replaces the runtime changes with the config, and logs the ones that
        differ from it; one the config agrees with is not overridden.
        """
        self.service.set_backend_state("app", "app2", "drain")
        self.service.set_backend_weight("app", "app1", 4)
        self.service.add_backend("app", "127.0.0.1:9009", name="extra")
        self.service.add_backend("api", "127.0.0.1:9102", name="api2")
        text = BASE.replace(
            '[{ address = "127.0.0.1:9101" }]',
            '[{ address = "127.0.0.1:9101" }, { address = "127.0.0.1:9102", name = "api2" }]',
        )
        api2 = self.backend("api", "api2")
        result, logs = self.apply(text)
        self.assertEqual(
            result.overridden,
            (
                "backend app/app2 state drain (the config says ready)",
                "backend app/app1 weight 4 (the config says 1)",
                "backend app/extra added at 127.0.0.1:9009 (not in the config)",
            ),
        )
        self.assertIs(self.backend("api", "api2"), api2)  # the config has it now: kept
        self.assertIs(self.backend("app", "app2").state, BackendState.UP)
        self.assertEqual(self.backend("app", "app1").weight, 1)
        self.assertNotIn("extra", [b.name for b in self.service.pools["app"].backends])
        self.assertEqual(self.service.runtime_state()["backends"], [])
        [summary] = [line for line in logs if line.startswith("reload:")]
        self.assertIn("overrode the runtime changes backend app/app2 state drain", summary)


class DrainTimeoutConfigTests(SynchronousTestCase):
    def test_default_and_errors(self) -> None:
        """``[global] drain_timeout``: 30 s by default; a positive number of seconds."""
        config = parse_config(BASE.replace("drain_timeout = 10", ""), "lb.toml")
        self.assertEqual(config.global_config.drain_timeout, 30.0)
        for value, message in (
            ("0", "must be more than 0 seconds, not 0"),
            ('"thirty"', "'thirty' is not a duration"),
        ):
            with self.assertRaises(ConfigError) as raised:
                parse_config(
                    BASE.replace("drain_timeout = 10", f"drain_timeout = {value}"), "lb.toml"
                )
            [problem] = raised.exception.problems
            self.assertEqual(problem.key, "global.drain_timeout")
            self.assertIn(message, problem.message)
