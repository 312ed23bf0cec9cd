"""
LoadBalancerService on a memory reactor: config to live objects, listening, stopping.
"""

from __future__ import annotations

import errno

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.backend import BackendState
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.service import SHUTDOWN_GRACE, ListenError, LoadBalancerService
from twisted_lb.tap import Options

CONFIG = """
[frontends.web]
mode = "tcp"
listen = ["tcp:8080:interface=127.0.0.1", "tcp:8081"]
pool = "app"
client_timeout = 30
max_connections = 50

[pools.app]
strategy = "least_connections"
connect_timeout = 1.5
retries = 1
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9002", weight = 3, name = "big" },
  { address = "127.0.0.1:9003", backup = true },
]
"""


class HalfCloseTransport(StringTransport):
    def loseWriteConnection(self) -> None:
        pass


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService.from_config(
            parse_config(CONFIG, "lb.toml"), self.reactor
        )

    def test_live_objects(self) -> None:
        """Pools, backends and frontends are built as the config says."""
        pool = self.service.pools["app"]
        self.assertEqual(
            [(b.name, str(b.address), b.weight, b.backup) for b in pool.backends],
            [
                ("app1", "127.0.0.1:9001", 1, False),
                ("big", "127.0.0.1:9002", 3, False),
                ("app3", "127.0.0.1:9003", 1, True),
            ],
        )
        self.assertEqual((pool.connect_timeout, pool.retries), (1.5, 1))
        self.assertEqual(type(pool.strategy).__name__, "LeastConnections")
        factory = self.service.factories["web"]
        self.assertEqual((factory.client_timeout, factory.max_connections), (30.0, 50))
        self.assertIs(factory.pool, pool)
        self.assertEqual(len(self.service.listeners), 2)
        self.assertEqual(self.reactor.tcpServers, [])  # nothing listens before start

    def test_access_log_off(self) -> None:
        """``[global] access_log = false`` turns the access events of every frontend off."""
        config = parse_config("[global]\naccess_log = false\n" + CONFIG, "lb.toml")
        service = LoadBalancerService.from_config(config, self.reactor)
        self.assertFalse(service.factories["web"].access_log)
        self.assertTrue(self.service.factories["web"].access_log)

    def test_strategy_options_rejected(self) -> None:
        """
        A strategy that rejects its options is a config problem with its key path, reported
        with the other problems of the file.
        """
        text = CONFIG.replace("[pools.app]", '[pools.app]\nstrategy_options = { seed = "x" }')
        text = text.replace('strategy = "least_connections"', 'strategy = "random"')
        text = text.replace("retries = 1", "retries = -1")
        with self.assertRaises(ConfigError) as raised:
            parse_config(text, "lb.toml")
        self.assertEqual(
            sorted(p.key for p in raised.exception.problems),
            ["pools.app.retries", "pools.app.strategy_options"],
        )
        [problem] = [p for p in raised.exception.problems if "options" in p.key]
        self.assertEqual((problem.path, problem.key), ("lb.toml", "pools.app.strategy_options"))
        self.assertIn("'seed' must be int", problem.message)

    def test_start_and_stop(self) -> None:
        """Starting listens on every endpoint and logs where; stopping stops listening."""
        with capturedLogs() as events:
            self.service.privilegedStartService()
            self.service.startService()
        self.assertEqual(
            [(port, interface) for port, _f, _b, interface in self.reactor.tcpServers],
            [(8080, "127.0.0.1"), (8081, "")],
        )
        listening = [e for e in events if "listening on" in e["log_format"]]
        self.assertEqual(len(listening), 2)
        # Each pool's line names its strategy as the file does.
        self.assertIn(
            "pool app: strategy least_connections, backends app1=127.0.0.1:9001, "
            "big=127.0.0.1:9002, app3=127.0.0.1:9003",
            [formatEvent(e) for e in events],
        )
        stopped = self.service.stopService()
        self.successResultOf(stopped)
        self.assertEqual([listener.port for listener in self.service.listeners], [None, None])

    def test_running_line_counts(self) -> None:
        """
        The line that says the balancer runs counts frontends and pools in words that agree
        with the numbers: "1 frontend, 1 pool", "2 frontends, 2 pools".
        """
        second = CONFIG.replace("[frontends.web]", "[frontends.admin]", 1).replace(
            "[pools.app]", "[pools.other]"
        )
        second = second.replace('pool = "app"', 'pool = "other"').replace("808", "909")
        for text, line in (
            (CONFIG, "twisted-lb running: 1 frontend, 1 pool"),
            (CONFIG + second, "twisted-lb running: 2 frontends, 2 pools"),
        ):
            reactor = MemoryReactorClock()
            service = LoadBalancerService.from_config(parse_config(text, "lb.toml"), reactor)
            with capturedLogs() as events:
                service.privilegedStartService()
                service.startService()
                reactor.run()
            self.assertIn(line, [formatEvent(e) for e in events])
            self.successResultOf(service.stopService())

    def test_listen_failure(self) -> None:
        """
        A frontend that cannot listen raises ListenError naming the config file, the key path
        of the endpoint and why, as a config problem would.
        """
        config = parse_config(
            CONFIG.replace('"tcp:8081"', '"unix:/nonexistent/dir/lb.sock"'), "lb.toml"
        )
        service = LoadBalancerService.from_config(config, self.reactor)
        self.reactor.listenUNIX = self.refuse  # type: ignore[method-assign]
        with self.assertRaises(ListenError) as raised:
            service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "lb.toml: frontends.web.listen[1]: cannot listen on unix:/nonexistent/dir/lb.sock: "
            "No such file or directory",
        )

    def test_port_in_use(self) -> None:
        """A port in use: the OS's reason, without Twisted's wrapping of it."""
        config = parse_config(CONFIG, "/etc/lb.toml")
        service = LoadBalancerService.from_config(config, self.reactor)

        def in_use(port: int, *args: object, **kwargs: object) -> None:
            raise CannotListenError("127.0.0.1", port, OSError(errno.EADDRINUSE, "Address in use"))

        self.reactor.listenTCP = in_use  # type: ignore[method-assign,assignment]
        with self.assertRaises(ListenError) as raised:
            service.privilegedStartService()
        self.assertEqual(
            str(raised.exception),
            "/etc/lb.toml: frontends.web.listen[0]: cannot listen on "
            "tcp:8080:interface=127.0.0.1: Address in use",
        )

    def refuse(self, *args: object, **kwargs: object) -> None:
        raise OSError("No such file or directory")

    def test_stop_closes_connections(self) -> None:
        """
        Stopping closes open connections and waits for them; those still open after the
        grace period are aborted.
        """
        self.service.startService()
        factory = self.service.factories["web"]
        front = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        client = HalfCloseTransport()
        front.makeConnection(client)
        backend_factory = self.reactor.tcpClients[-1][2]
        backend_protocol = backend_factory.buildProtocol(None)
        backend = HalfCloseTransport()
        backend_protocol.makeConnection(backend)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.assertTrue(client.disconnecting)
        self.reactor.advance(SHUTDOWN_GRACE)
        self.assertTrue(client.disconnected)
        self.assertTrue(backend.disconnected)
        front.connectionLost(Failure(ConnectionDone()))
        backend_protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.service.pools["app"].backends[0].state, BackendState.UP)


HEALTH_CONFIG = """
[frontends.web]
mode = "http"
listen = ["tcp:8080:interface=127.0.0.1"]
pool = "app"

[pools.app]
panic = true
slow_start = 10.0
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9002", state = "drain" },
  { address = "127.0.0.1:9003", state = "maint" },
  { address = "127.0.0.1:9004" },
]
[pools.app.health_check]
kind = "http"
path = "/healthz"
interval = 3.0
[pools.app.outlier_detection]
consecutive_failures = 1
max_ejection_percent = 100
"""


class HealthWiringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = LoadBalancerService.from_config(
            parse_config(HEALTH_CONFIG, "lb.toml"), self.reactor
        )
        self.pool = self.service.pools["app"]

    def test_live_objects(self) -> None:
        """The pool gets its states, panic, slow start, detector and monitor from the config."""
        self.assertEqual(
            [b.state for b in self.pool.backends],
            [BackendState.UP, BackendState.DRAINING, BackendState.MAINT, BackendState.UP],
        )
        self.assertEqual((self.pool.panic, self.pool.slow_start), (True, 10.0))
        detector = self.pool.outlier_detector
        assert detector is not None
        self.assertEqual((detector.consecutive_failures, detector.base_ejection_time), (1, 30.0))
        monitor = self.service.monitors["app"]
        self.assertIs(monitor.pool, self.pool)
        self.assertEqual(type(monitor.check).__name__, "HTTPCheck")

    def test_no_timer_outlives_stop(self) -> None:
        """
        Starting probes every backend; a failure reported while stopping ejects nothing, and
        once stopped no timer is left: not the monitor's, not an ejection, not a slow start.
        """
        self.service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 4)  # one probe per backend
        first = self.pool.backends[0]
        self.pool.report_failure(first, "connection refused")
        self.assertTrue(first.ejected)
        stopped = self.service.stopService()
        self.pool.report_failure(self.pool.backends[3], "connection refused")
        self.pool.set_healthy(self.pool.backends[3], False)
        self.pool.set_healthy(self.pool.backends[3], True)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual([b.ejected for b in self.pool.backends], [False] * 4)
        self.assertEqual([b.effective_weight for b in self.pool.backends], [1.0] * 4)
        # Started again, the pool ejects again.
        self.service.startService()
        self.pool.report_failure(first, "connection refused")
        self.assertTrue(first.ejected)
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class OptionsTests(SynchronousTestCase):
    def test_config_required(self) -> None:
        """``twistd lb`` without ``--config`` is a usage error that says how to call it."""
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as raised:
            Options().parseOptions([])
        self.assertIn("--config is required", str(raised.exception))

    def test_config(self) -> None:
        options = Options()
        options.parseOptions(["--config", "lb.toml"])
        self.assertEqual(options["config"], "lb.toml")
