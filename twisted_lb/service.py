"""
The balancer as a Twisted service: the one place where config becomes live objects.

It also changes them while they run: a reload (:meth:`LoadBalancerService.reload`) applies a
new config file's difference to the live objects in place, and the runtime changes
(:meth:`~LoadBalancerService.set_backend_state`, ...) are what the admin API calls. See
docs/design.rst, "Reloading the config".
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any, Self

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_lb._address import parse_address, proxy_listener
from twisted_lb._frontend import FrontendFactory, ProxyHeaderFactory
from twisted_lb.backend import Backend, BackendState
from twisted_lb.config import (
    BackendConfig,
    Config,
    ConfigError,
    FrontendConfig,
    GlobalConfig,
    HealthCheckConfig,
    PoolConfig,
    Problem,
    join_key,
    load_config,
    weight_problem,
)
from twisted_lb.health import HealthMonitor, HTTPCheck, TCPCheck
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.http.routing import Route, Router
from twisted_lb.http.upstream import Upstreams
from twisted_lb.interfaces import IAccessLog, IBalancerReactor, IBalancingStrategy, IHealthCheck
from twisted_lb.logs import AccessLog, EventAccessLog
from twisted_lb.pool import OutlierDetector, Pool
from twisted_lb.strategies import get_strategy
from twisted_lb.tcp import TCPRelayFactory
from twisted_lb.tls import ClientTLS, ServerTLS, TLSConfigError

if TYPE_CHECKING:
    from twisted_lb.admin import AdminService

_log = Logger()

#: Seconds that stopping waits for open connections to close before aborting them.
SHUTDOWN_GRACE = 5.0

#: Seconds between two looks at whether a drain is over.
DRAIN_CHECK_INTERVAL = 1.0

#: A backend's ``state`` key in the config, as the backend's ``admin_state``.
_ADMIN_STATES = {
    "ready": BackendState.UP,
    "drain": BackendState.DRAINING,
    "maint": BackendState.MAINT,
}
_STATE_NAMES = {state: name for name, state in _ADMIN_STATES.items()}


class ListenError(Exception):
    """
    Start-up could not take what it serves with: a frontend could not listen on one of its
    ``listen`` endpoints, or the access log file could not be opened. The message names the
    config file and the key path, as a config problem does:
    ``lb.toml: frontends.web.listen[0]: cannot listen on tcp:8080: Address already in use``.
    """


class UnknownPool(LookupError):  # noqa: N818 (the name the admin API contract uses)
    """A runtime change named a pool the config in force does not have."""


class UnknownBackend(LookupError):  # noqa: N818
    """A runtime change named a backend its pool does not have."""


class InvalidChange(ValueError):  # noqa: N818
    """A runtime change is not valid; the message names the accepted values."""


@attrs.frozen
class ReloadResult:
    """
    The outcome of one reload attempt.

    Attributes:
        ok: whether the new config was applied. When false, nothing changed.
        generation: the config generation in force after the attempt (1 at start, +1 per
            applied reload).
        at: when the attempt was made, in POSIX seconds (``reactor.seconds()``).
        added: what the reload added, such as ``"pool api"``, ``"backend app/app3"``,
            ``"listener web tcp:8081"``, ``"route web[1]"``, ``"frontend admin"``.
        changed: what it changed in place, in the same words.
        removed: what it removed (and is draining), in the same words.
        overridden: the runtime changes it replaced, such as
            ``"backend app/app2 state drain (the config says ready)"``.
        problems: why it was not applied, each line as ``twisted-lb check`` prints it
            (``lb.toml: pools.app.backends[1].weight: ...``); empty when ``ok``.
    """

    ok: bool
    generation: int
    at: float
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


class _ListenerFactory(Factory):
    """
    What a :class:`Listener`'s port listens with: it hands each connection to the
    frontend's factory of the moment, so that a reload can give the port another one
    (a frontend changed mode, or TLS was turned on or off) without closing it. One call per
    connection, none per request.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory

    @property
    def factory(self) -> IProtocolFactory:
        """The factory connections go to now."""
        return self._factory

    @factory.setter
    def factory(self, factory: IProtocolFactory) -> None:
        # The port started this one (doStart) and will stop it: the factory it hands to
        # is started and stopped in its place, as if the port listened with it.
        old, self._factory = self._factory, factory
        if factory is not old and self.numPorts:
            factory.doStart()
            old.doStop()

    def doStart(self) -> None:
        super().doStart()  # type: ignore[no-untyped-call]
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()
        super().doStop()  # type: ignore[no-untyped-call]

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        return self._factory.buildProtocol(addr)


class ListeningService(Service):
    """
    A service that holds one listening port while it runs. Subclasses listen in
    ``privilegedStartService`` (before twistd drops privileges) and set :attr:`port`;
    ``startService`` listens then if that did not run (an embedding program that only calls
    ``startService``), and ``stopService`` stops listening.

    Attributes:
        port: the listening port while running, else ``None``.
    """

    port: IListeningPort | None = None

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()  # type: ignore[no-untyped-call]
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        result = port.stopListening()
        if isinstance(result, Deferred):
            result.addBoth(lambda _: stopped.callback(None))
        else:
            stopped.callback(None)
        return stopped


class Listener(ListeningService):
    """
    Listens on one server endpoint for one frontend while running.

    Listening starts in ``privilegedStartService`` (before twistd drops privileges), and a
    failure to listen is raised there as :class:`ListenError`, so start-up stops.

    Args:
        endpoint: where to listen.
        factory: the frontend's protocol factory, wrapped in a ``TLSMemoryBIOFactory`` when
            the frontend terminates TLS. A reload may replace it (:attr:`factory`) while the
            port stays open.
        frontend: the frontend's name, for logs.
        description: the endpoint description from the config, for logs.
        where: what a :class:`ListenError` starts with: the config file and the key path of
            the description, as ``"lb.toml: frontends.web.listen[0]"``; by default
            ``"frontend NAME"``.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        frontend: str,
        description: str,
        where: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._entry = _ListenerFactory(factory)
        self.frontend = frontend
        self.description = description
        self.where = f"frontend {frontend}" if where is None else where
        self.port: IListeningPort | None = None
        self.name = f"{frontend} {description}"

    @property
    def factory(self) -> IProtocolFactory:
        """The factory new connections go to; assigning it takes effect at once."""
        return self._entry.factory

    @factory.setter
    def factory(self, factory: IProtocolFactory) -> None:
        self._entry.factory = factory

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            return
        outcome: list[IListeningPort | Failure] = []
        self.endpoint.listen(self._entry).addBoth(outcome.append)
        if not outcome:
            raise ListenError(f"{self.where}: {self.description} did not listen")
        result = outcome[0]
        if isinstance(result, Failure):
            raise ListenError(
                f"{self.where}: cannot listen on {self.description}: {_listen_error(result)}"
            )
        self.port = result
        _log.info(
            "frontend {frontend} listening on {address}",
            frontend=self.frontend,
            address=_describe(result.getHost()),
        )


def _access_log(
    config: GlobalConfig, reactor: IReactorTime, log_output: IO[str] | None
) -> IAccessLog | None:
    """The access log ``[global]`` asks for (see :meth:`LoadBalancerService.from_config`)."""
    destination = config.access_log
    if destination is False:
        return None
    out: IO[str] | str
    if destination is True:
        if log_output is None:
            return EventAccessLog()
        out = log_output
    elif destination == "stdout":
        out = sys.stdout
    else:
        out = destination
    return AccessLog(
        reactor,
        out,
        log_format=config.log_format,
        buffer_bytes=config.access_log_buffer,
        flush_interval=config.access_log_flush,
    )


def _health_check(
    reactor: IBalancerReactor, config: HealthCheckConfig, tls: ClientTLS | None
) -> IHealthCheck:
    """
    The check a ``[pools.NAME.health_check]`` table describes; over TLS, verified as the
    pool's traffic is, when the pool has ``tls``, and then asking for the pool's
    ``server_name`` in ``Host`` unless the check sets its own.
    """
    endpoint = tls.endpoint if tls is not None else None
    if config.kind == "tcp":
        return TCPCheck(reactor, config.timeout, endpoint=endpoint)
    return HTTPCheck(
        reactor,
        config.timeout,
        path=config.path,
        host=config.host,
        expect_status=config.expect_status,
        expect_body=config.expect_body,
        endpoint=endpoint,
        server_name=tls.server_name if tls is not None else None,
        https=tls is not None,
    )


def _listen_error(failure: Failure) -> str:
    """
    Why listening failed, in a few words: the OS's for a socket error (``"Address already in
    use"``, not Twisted's ``"Couldn't listen on 127.0.0.1:8080: [Errno 98] ..."``).
    """
    error = failure.value
    cause = error.socketError if isinstance(error, CannotListenError) else error
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return failure.getErrorMessage()


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return f"unix:{getattr(address, 'name', '?')!s}"
    port = getattr(address, "port", "?")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _proxy_header_factory(
    frontend: FrontendConfig, factory: FrontendFactory, listen_factory: IProtocolFactory
) -> ProxyHeaderFactory:
    """
    What a frontend's ``haproxy:`` listeners listen with: the PROXY header is read first, then
    the connection goes to ``listen_factory``. With ``[frontends.NAME.tls]`` that is the TLS
    factory, so the header comes before the TLS handshake (HAProxy's ``send-proxy`` on an
    ``ssl`` server); the config check refuses ``haproxy:ssl:``. Peers allowed to send it:
    ``proxy_protocol_from``, else ``trusted_proxies``, else any.
    """
    if frontend.proxy_protocol_from:
        allowed, key = frontend.proxy_protocol_from, "proxy_protocol_from"
    else:
        allowed, key = frontend.trusted_proxies, "trusted_proxies"
    return ProxyHeaderFactory(
        listen_factory,
        factory,
        allowed=allowed,
        allowed_key=key,
        # In http mode the header is part of the request head: header_timeout, as nginx reads
        # it under client_header_timeout.
        timeout=min(frontend.header_timeout, frontend.client_timeout)
        if frontend.mode == "http"
        else frontend.client_timeout,
    )


def _access_settings(config: GlobalConfig) -> tuple[object, ...]:
    """The ``[global]`` keys the access log is built from."""
    return (
        config.access_log,
        config.access_log_buffer,
        config.access_log_flush,
        config.log_format,
    )


def _pool_settings(config: PoolConfig) -> PoolConfig:
    """A pool's config without its backends: what decides whether "pool X" changed."""
    return config.model_copy(update={"backends": ()})


def _frontend_settings(config: FrontendConfig) -> FrontendConfig:
    """A frontend's config without its listeners and routes, which are reported apart."""
    return config.model_copy(update={"listen": (), "routes": ()})


@attrs.define
class _PoolPlan:
    """One pool of a config that is about to be applied."""

    config: PoolConfig
    pool: Pool
    new: bool
    strategy: IBalancingStrategy
    tls: ClientTLS | None
    outlier: OutlierDetector | None
    check: IHealthCheck | None
    # The pool's backends after the reload, in config order: kept objects and new ones.
    backends: list[Backend]
    # Kept backends and the config they take.
    kept: list[tuple[Backend, BackendConfig]]
    # When the pool keeps its live ClientTLS (its tls table did not change): the files read
    # again for this reload, which the live one adopts when the reload is applied.
    tls_files: ClientTLS | None = None


@attrs.define
class _Plan:
    """Everything a config needs that can fail, built before anything live changes."""

    config: Config
    pools: dict[str, _PoolPlan]
    factories: dict[str, FrontendFactory]
    server_tls: dict[str, ServerTLS]
    # New listen descriptions: (frontend, index, description) -> endpoint.
    endpoints: dict[str, tuple[str, int, IStreamServerEndpoint]]
    # The access log, and whether it is a new one (its [global] keys changed).
    access_log: IAccessLog | None
    access_log_changed: bool


class _Drain:
    """
    Removed backends and frontends finishing their work: no new connections or requests
    go to them, in-flight work completes, and after ``timeout`` seconds what is left is
    closed, with a log event. It is in ``service.drains`` until it is over.

    Args:
        service: the balancer, whose connections are looked through.
        what: what is drained, for logs (``"backend app/app3"``).
        backends: backends whose leases are waited for.
        factories: removed frontends' factories whose connections are waited for.
        timeout: seconds (``[global] drain_timeout``).
    """

    def __init__(
        self,
        service: LoadBalancerService,
        what: list[str],
        backends: Iterable[Backend],
        factories: Iterable[FrontendFactory],
        timeout: float,
    ) -> None:
        self.service = service
        self.what = what
        self.backends = set(backends)
        self.factories = list(factories)
        self.timeout = timeout
        self.started = service.reactor.seconds()
        service.upstreams.retire(self.backends)
        for factory in self.factories:
            for connection in list(factory.connections):
                connection.drain()
        self.timer: IDelayedCall | None = service.reactor.callLater(timeout, self._expire)
        service.drains.append(self)
        self.loop = LoopingCall(self._check)
        self.loop.clock = service.reactor
        self.loop.start(min(DRAIN_CHECK_INTERVAL, timeout), now=True)

    def busy(self) -> int:
        """Connections and requests still using what is drained."""
        count = sum(len(factory.connections) for factory in self.factories)
        for backend in self.backends:
            count += max(backend.active_connections, backend.in_flight_requests)
        return count

    def _check(self) -> None:
        if self.busy() == 0:
            _log.info(
                "drained {what} in {seconds:.1f} s",
                what=", ".join(self.what),
                seconds=self.service.reactor.seconds() - self.started,
            )
            self._end()

    def _expire(self) -> None:
        self.timer = None
        # Each connection once: one of a removed frontend may also use a removed backend.
        left: dict[Any, None] = {}
        for factory in self.factories:
            left.update(dict.fromkeys(factory.connections))
        if self.backends:
            for factory in self.service.all_factories():
                for connection in factory.connections:
                    lease = getattr(connection, "lease", None)
                    if lease is not None and not lease.released and lease.backend in self.backends:
                        left[connection] = None
        for connection in left:
            connection.abort("drain")
        _log.warn(
            "drain_timeout: closed {count} connections of {what} still open after {timeout:g} s",
            count=len(left),
            what=", ".join(self.what),
            timeout=self.timeout,
        )
        self._end()

    def _end(self) -> None:
        self.cancel()
        if self in self.service.drains:
            self.service.drains.remove(self)

    def cancel(self) -> None:
        """Stop the drain's timers (the balancer is stopping, or the drain is over)."""
        if self.loop.running:
            self.loop.stop()
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.service.upstreams.forget_retired(self.backends)


class LoadBalancerService(MultiService):
    """
    Every frontend, pool and listener of one config, as a service tree.

    Use :meth:`from_config`; start it as any Twisted service. Stopping it stops listening,
    then closes open connections, aborting those still open after ``SHUTDOWN_GRACE`` seconds.
    :meth:`reload` applies a new config file in place (docs/design.rst, "Reloading the
    config"); the runtime changes last until the next reload.

    Args:
        reactor: the reactor every listener, connection and timer uses.

    Attributes:
        config: the config in force.
        generation: 1 at start, +1 per applied reload.
        started: ``reactor.seconds()`` when the service started (or was made, before).
        last_reload: the last reload attempt's result; ``None`` before any.
        pools: live pools by name.
        monitors: the health monitor of each pool that has ``health_check``, by pool name.
        server_tls: the TLS termination of each frontend that has ``tls``, by frontend name.
        factories: each frontend's protocol factory, by frontend name.
        listeners: the listener services, in config order.
        drains: the drains in progress (removed backends and frontends).
    """

    def __init__(self, reactor: IBalancerReactor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        # Nothing yet: what the first config is diffed against (a file needs a frontend and a
        # pool, so this one is built without validation).
        self.config = Config.model_construct(
            path="<none>",
            frontends=MappingProxyType({}),
            pools=MappingProxyType({}),
            global_config=GlobalConfig(),
            admin=None,
        )
        self.generation = 1
        self.started: float = reactor.seconds()
        self.last_reload: ReloadResult | None = None
        self.pools: dict[str, Pool] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self.server_tls: dict[str, ServerTLS] = {}
        self.factories: dict[str, FrontendFactory] = {}
        self.upstreams = Upstreams(reactor)
        self.access_log: IAccessLog | None = EventAccessLog()
        self._log_output: IO[str] | None = None
        self.listeners: list[Listener] = []
        self.drains: list[_Drain] = []
        # Runtime changes in force, by (pool, backend): "state", "weight", "added" (the
        # address, weight and backup of a backend added at runtime), "removed".
        self._runtime: dict[tuple[str, str], dict[str, Any]] = {}
        self.admin: AdminService | None = None

    @classmethod
    def from_config(
        cls, config: Config, reactor: IBalancerReactor, *, log_output: IO[str] | None = None
    ) -> Self:
        """
        Build the live objects for a validated config. Nothing listens until the service starts.

        The config is trusted as it is: :func:`twisted_lb.config.config_from_dict` has checked
        everything, strategy options, endpoints and TLS files included.

        Args:
            config: from :func:`twisted_lb.config.load_config`.
            reactor: the reactor to run on.
            log_output: where ``[global] access_log = true`` (the default) writes the access
                lines, buffered (twistd's log output, under twistd); ``None``: they are
                ``twisted.logger`` events (:class:`~twisted_lb.logs.EventAccessLog`).

        The config is trusted as :mod:`twisted_lb.config` validated it (strategies and their
        options, endpoints, TLS files); nothing is checked twice.

        Raises:
            ConfigError: a TLS file became unusable after the config was checked; the problem
                is reported the way ``check`` reports them.
        """
        service = cls(reactor)
        service._log_output = log_output
        plan = service._prepare(config, initial=True)
        listeners, _ = service._listen_new(plan)  # not running: nothing listens yet
        service._commit(plan, listeners)
        if config.admin is not None:
            from twisted_lb.admin import AdminService  # admin imports this module

            service.admin = AdminService(service, config.admin, reactor)
            service.admin.setServiceParent(service)  # type: ignore[no-untyped-call]
        return service

    # -- building

    def _prepare(self, config: Config, initial: bool = False) -> _Plan:
        """
        Build every new object ``config`` needs, changing nothing live.

        Args:
            config: the config to apply.
            initial: whether this is the service's first config (from :meth:`from_config`).

        Raises:
            ConfigError: with every problem found.
        """
        problems: list[Problem] = []
        pools: dict[str, _PoolPlan] = {}
        reactor = self.reactor
        for name, pool_config in config.pools.items():
            where = join_key("pools", name)
            live = self.pools.get(name)
            old = self.config.pools.get(name)
            if (
                live is not None
                and old is not None
                and (old.strategy, old.strategy_options)
                == (pool_config.strategy, pool_config.strategy_options)
            ):
                strategy = live.strategy
            else:
                # The schema had the plugin check the options (twisted_lb.config).
                strategy = get_strategy(pool_config.strategy, pool_config.strategy_options)
            pool_tls = None
            if pool_config.tls is not None:
                tls_config = pool_config.tls
                try:
                    pool_tls = ClientTLS(
                        server_name=tls_config.server_name,
                        ca=tls_config.ca,
                        client_cert=tls_config.client_cert,
                        client_key=tls_config.client_key,
                        verify=tls_config.verify,
                    )
                except TLSConfigError as e:
                    problems.append(Problem(config.path, join_key(where, "tls"), str(e)))
                    continue
            tls_files = None
            if (
                pool_tls is not None
                and live is not None
                and live.tls is not None
                and old is not None
                and old.tls == pool_config.tls
            ):
                # Same settings: keep the live object, so that the connections it made stay
                # reusable (Upstreams.release closes those made with another pool.tls); it
                # adopts the files read again here when the reload is applied.
                tls_files, pool_tls = pool_tls, live.tls
            outlier = pool_config.outlier_detection
            if live is not None and old is not None and old.outlier_detection == outlier:
                detector = live.outlier_detector
            else:
                detector = (
                    None
                    if outlier is None
                    else OutlierDetector(
                        reactor,
                        consecutive_failures=outlier.consecutive_failures,
                        base_ejection_time=outlier.base_ejection_time,
                        max_ejection_time=outlier.max_ejection_time,
                        max_ejection_percent=outlier.max_ejection_percent,
                        count_5xx=outlier.count_5xx,
                        uneject_on_passing_check=outlier.uneject_on_passing_check,
                    )
                )
            by_name = {b.name: b for b in live.backends} if live is not None else {}
            backends: list[Backend] = []
            kept: list[tuple[Backend, BackendConfig]] = []
            for backend_config in pool_config.backends:
                existing = by_name.get(backend_config.name)
                if existing is not None and existing.address == parse_address(
                    backend_config.address
                ):
                    backends.append(existing)
                    kept.append((existing, backend_config))
                    continue
                backends.append(
                    Backend.from_address(
                        backend_config.address,
                        name=backend_config.name,
                        weight=backend_config.weight,
                        backup=backend_config.backup,
                        state=_ADMIN_STATES[backend_config.state],
                    )
                )
            health = pool_config.health_check
            check = None if health is None else _health_check(reactor, health, pool_tls)
            if live is None:
                live = Pool(
                    name,
                    backends,
                    strategy,
                    connect_timeout=pool_config.connect_timeout,
                    retries=pool_config.retries,
                    response_timeout=pool_config.response_timeout,
                    upstream_idle_timeout=pool_config.upstream_idle_timeout,
                    max_idle_per_backend=pool_config.max_idle_per_backend,
                    panic=pool_config.panic,
                    slow_start=pool_config.slow_start,
                    outlier_detector=detector,
                    reactor=reactor,
                    tls=pool_tls,
                )
                new = True
            else:
                new = False
            pools[name] = _PoolPlan(
                pool_config,
                live,
                new,
                strategy,
                pool_tls,
                detector,
                check,
                backends,
                kept,
                tls_files,
            )
        factories: dict[str, FrontendFactory] = {}
        server_tls: dict[str, ServerTLS] = {}
        endpoints: dict[str, tuple[str, int, IStreamServerEndpoint]] = {}
        live_descriptions = {listener.description for listener in self.listeners}
        access_log = self.access_log
        access_log_changed = initial or _access_settings(
            self.config.global_config
        ) != _access_settings(config.global_config)
        if access_log_changed:
            access_log = _access_log(config.global_config, reactor, self._log_output)
        for name, frontend in config.frontends.items():
            where = join_key("frontends", name)
            factory = self._frontend_factory(name, frontend, pools, access_log)
            if factory is None:
                continue  # a pool's problem is already reported
            factories[name] = factory
            if frontend.tls is not None:
                tls = frontend.tls
                try:
                    server_tls[name] = ServerTLS(
                        [(pair.cert, pair.key) for pair in tls.certificates],
                        min_version=tls.min_version,
                        ciphers=tls.ciphers,
                        curves=tls.curves,
                        alpn=[b"http/1.1"] if frontend.mode == "http" else (),
                        client_ca=tls.client_ca,
                        verify_client=tls.verify_client,
                    )
                except TLSConfigError as e:
                    problems.append(Problem(config.path, join_key(where, "tls"), str(e)))
            for index, description in enumerate(frontend.listen):
                if description in live_descriptions:
                    continue
                # The schema parsed each description with the same parser (on a memory
                # reactor); the TLS files below may have changed since, so they are read
                # again and a failure is a problem of this reload.
                under_proxy = proxy_listener(description)
                endpoint = serverFromString(reactor, under_proxy or description)
                endpoints[description] = (name, index, endpoint)
        if (
            not problems
            and access_log_changed
            and not initial
            and self.running
            and isinstance(access_log, AccessLog)
        ):
            # Opened now, so that a file that cannot be opened fails the reload.
            try:
                access_log.open()
            except OSError as e:
                problems.append(
                    Problem(
                        config.path,
                        "global.access_log",
                        f"cannot open {access_log.path}: {e.strerror or e}",
                    )
                )
        if problems:
            raise ConfigError(problems)
        return _Plan(
            config,
            pools,
            factories,
            server_tls,
            endpoints,
            access_log,
            access_log_changed and not initial,
        )

    def _frontend_factory(
        self,
        name: str,
        frontend: FrontendConfig,
        pools: Mapping[str, _PoolPlan],
        access_log: IAccessLog | None,
    ) -> FrontendFactory | None:
        """The protocol factory of one frontend: the tcp relay or the http proxy."""
        default = pools.get(frontend.pool)
        if default is None:
            return None
        if frontend.mode == "tcp":
            return TCPRelayFactory(
                self.reactor,
                default.pool,
                client_timeout=frontend.client_timeout,
                max_connections=frontend.max_connections,
                frontend=name,
                access_log=access_log,
            )
        routes = []
        for route in frontend.routes:
            route_pool = pools.get(route.pool)
            if route_pool is None:
                return None
            routes.append(Route(route_pool.pool, host=route.host, path_prefix=route.path_prefix))
        return HTTPProxyFactory(
            self.reactor,
            Router(routes, default.pool) if routes else default.pool,
            upstreams=self.upstreams,
            client_timeout=frontend.client_timeout,
            header_timeout=frontend.header_timeout,
            max_header_bytes=frontend.max_header_bytes,
            max_body_bytes=frontend.max_body_bytes,
            trusted_proxies=frontend.trusted_proxies,
            tunnel_timeout=frontend.tunnel_timeout,
            underscores_in_headers=frontend.underscores_in_headers,
            proto="https" if frontend.tls is not None else "http",
            max_connections=frontend.max_connections,
            frontend=name,
            access_log=access_log,
        )

    def _listen_new(self, plan: _Plan) -> tuple[dict[str, Listener], list[Problem]]:
        """
        Make the listeners of the new listen descriptions; while running, listen at once,
        so that a port that cannot be had fails the reload before anything changed.
        """
        made: dict[str, Listener] = {}
        problems: list[Problem] = []
        for description, (name, index, endpoint) in plan.endpoints.items():
            key = f"{join_key(join_key('frontends', name), 'listen')}[{index}]"
            where = f"{plan.config.path}: {key}"
            listener = Listener(endpoint, plan.factories[name], name, description, where=where)
            made[description] = listener
            if not self.running:
                continue
            try:
                listener.privilegedStartService()
            except ListenError as e:
                message = str(e).removeprefix(f"{where}: ")
                problems.append(Problem(plan.config.path, key, message))
        if problems:
            for listener in made.values():
                listener.stopService()
        return made, problems

    def _commit(
        self, plan: _Plan, new_listeners: Mapping[str, Listener]
    ) -> tuple[list[str], list[str], list[str], list[str]]:
        """
        Apply a prepared plan to the live objects; nothing here fails. Listening, which
        can, is done before by :meth:`_listen_new`, which makes ``new_listeners``.

        Returns:
            What was added, changed and removed, and the runtime changes overridden.
        """
        config = plan.config
        old = self.config
        added: list[str] = []
        changed: list[str] = []
        removed: list[str] = []
        overridden = self._overridden(config)
        self._runtime.clear()
        drained_backends: list[Backend] = []
        drained_what: list[str] = []
        drained_factories: list[FrontendFactory] = []

        # Pools and backends.
        for name, plan_pool in plan.pools.items():
            pool_config = plan_pool.config
            pool = plan_pool.pool
            if plan_pool.new:
                self.pools[name] = pool
                if self.running:
                    pool.start()
                added.append(f"pool {name}")
            else:
                old_config = old.pools[name]
                if _pool_settings(old_config) != _pool_settings(pool_config):
                    changed.append(f"pool {name}")
                old_backends = {b.name: b for b in old_config.backends}
                for backend, backend_config in plan_pool.kept:
                    if backend.weight != backend_config.weight:
                        pool.set_weight(backend, backend_config.weight)
                    backend.backup = backend_config.backup
                    state = _ADMIN_STATES[backend_config.state]
                    if backend.admin_state is not state:
                        pool.set_admin_state(backend, state)
                    if old_backends.get(backend.name) != backend_config:
                        changed.append(f"backend {name}/{backend.name}")
                members = set(plan_pool.backends)
                gone = [b for b in pool.backends if b not in members]
                kept_names = {b.name for b, _ in plan_pool.kept}
                for backend in plan_pool.backends:
                    if backend.name not in kept_names:
                        if backend.name in {b.name for b in gone}:
                            changed.append(f"backend {name}/{backend.name}")
                        else:
                            added.append(f"backend {name}/{backend.name}")
                new_names = {b.name for b in plan_pool.backends}
                for backend in gone:
                    if backend.name not in new_names:
                        removed.append(f"backend {name}/{backend.name}")
                    drained_what.append(f"backend {name}/{backend.name}")
                drained_backends.extend(gone)
                pool.reconfigure(
                    strategy=plan_pool.strategy,
                    connect_timeout=pool_config.connect_timeout,
                    retries=pool_config.retries,
                    response_timeout=pool_config.response_timeout,
                    upstream_idle_timeout=pool_config.upstream_idle_timeout,
                    max_idle_per_backend=pool_config.max_idle_per_backend,
                    panic=pool_config.panic,
                    slow_start=pool_config.slow_start,
                    outlier_detector=plan_pool.outlier,
                    tls=plan_pool.tls,
                )
                pool.set_backends(plan_pool.backends)
                if plan_pool.tls is not None and plan_pool.tls_files is not None:
                    plan_pool.tls.adopt(plan_pool.tls_files)
                if old_config.tls != pool_config.tls:
                    # Reused connections would keep the old TLS settings (or none): the idle
                    # ones close now, the busy ones when they are released (their tls is
                    # not pool.tls any more).
                    self.upstreams.close_idle(pool.backends)
            self._apply_health(name, pool_config.health_check, plan_pool)
        for name in [n for n in self.pools if n not in plan.pools]:
            pool = self.pools.pop(name)
            monitor = self.monitors.pop(name, None)
            if monitor is not None:
                monitor.disownServiceParent()  # type: ignore[no-untyped-call]
            removed.append(f"pool {name}")
            drained_what.append(f"pool {name}")
            drained_backends.extend(pool.backends)
            pool.set_backends([])
            pool.stop()

        # Frontends.
        listen_factories: dict[str, IProtocolFactory] = {}
        for name, fresh in plan.factories.items():
            frontend = config.frontends[name]
            live = self.factories.get(name)
            factory: FrontendFactory
            if live is not None and type(live) is type(fresh):
                live.update_settings(fresh)
                factory = live
                old_frontend = old.frontends[name]
                if _frontend_settings(old_frontend) != _frontend_settings(frontend):
                    changed.append(f"frontend {name}")
                old_routes, new_routes = old_frontend.routes, frontend.routes
                for index in range(max(len(old_routes), len(new_routes))):
                    if index >= len(old_routes):
                        added.append(f"route {name}[{index}]")
                    elif index >= len(new_routes):
                        removed.append(f"route {name}[{index}]")
                    elif old_routes[index] != new_routes[index]:
                        changed.append(f"route {name}[{index}]")
            else:
                if live is not None:
                    drained_factories.append(live)
                    drained_what.append(f"frontend {name} ({len(live.connections)} connections)")
                    changed.append(f"frontend {name}")
                else:
                    added.append(f"frontend {name}")
                factory = fresh
                self.factories[name] = factory
            server_tls = plan.server_tls.get(name)
            if server_tls is not None:
                previous = self.server_tls.get(name)
                if previous is not None:
                    server_tls.handshake_counts = previous.handshake_counts
                self.server_tls[name] = server_tls
                listen_factories[name] = server_tls.wrap(factory)
            else:
                self.server_tls.pop(name, None)
                listen_factories[name] = factory
        for name in [n for n in self.factories if n not in plan.factories]:
            factory = self.factories.pop(name)
            self.server_tls.pop(name, None)
            removed.append(f"frontend {name}")
            drained_factories.append(factory)
            drained_what.append(f"frontend {name} ({len(factory.connections)} connections)")

        # Listeners, by endpoint description: an unchanged one keeps its port.
        wanted = {
            description: name
            for name, frontend in config.frontends.items()
            for description in frontend.listen
        }
        proxied: dict[str, ProxyHeaderFactory] = {}

        def endpoint_factory(frontend_name: str, description: str) -> IProtocolFactory:
            """What the listener of ``description`` hands its connections to."""
            if proxy_listener(description) is None:
                return listen_factories[frontend_name]
            # haproxy:: the PROXY header is read around what the endpoint under it
            # delivers (see _proxy_header_factory); one per frontend and reload.
            header = proxied.get(frontend_name)
            if header is None:
                header = proxied[frontend_name] = _proxy_header_factory(
                    config.frontends[frontend_name],
                    self.factories[frontend_name],
                    listen_factories[frontend_name],
                )
            return header

        by_description = {listener.description: listener for listener in self.listeners}
        for description, listener in by_description.items():
            if description not in wanted:
                removed.append(f"listener {listener.frontend} {description}")
                listener.disownServiceParent()  # type: ignore[no-untyped-call]
                continue
            frontend_name = wanted[description]
            if listener.frontend != frontend_name:
                changed.append(f"listener {frontend_name} {description}")
                listener.frontend = frontend_name
            listener.factory = endpoint_factory(frontend_name, description)
        for description, listener in new_listeners.items():
            listener.factory = endpoint_factory(listener.frontend, description)
            by_description[description] = listener
            added.append(f"listener {listener.frontend} {description}")
            listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self.listeners = [by_description[description] for description in wanted]

        if old.frontends and old.global_config.log_format != config.global_config.log_format:
            _log.warn(
                "global.log_format: the event log stays {old} until the next start "
                "(the access lines follow the new format now)",
                old=old.global_config.log_format,
            )
        if plan.access_log_changed:
            previous_log, self.access_log = self.access_log, plan.access_log
            changed.append("global access_log")
            for factory in [*self.all_factories(), *drained_factories]:
                factory.access_log = plan.access_log
            if isinstance(previous_log, AccessLog):
                previous_log.close()  # its lines are written; later ones would go straight out
        elif plan.access_log is not self.access_log:
            self.access_log = plan.access_log  # the first config's
        self.config = config
        if drained_backends or drained_factories:
            _Drain(
                self,
                drained_what,
                drained_backends,
                drained_factories,
                config.global_config.drain_timeout,
            )
        return added, changed, removed, overridden

    def _apply_health(
        self, name: str, health: HealthCheckConfig | None, plan_pool: _PoolPlan
    ) -> None:
        """Start, change or stop a pool's health monitor after its pool was updated."""
        monitor = self.monitors.get(name)
        if health is None or plan_pool.check is None:
            if monitor is not None:
                del self.monitors[name]
                monitor.disownServiceParent()  # type: ignore[no-untyped-call]
                # Without checks a backend is UP (as at start): none is left DOWN for good.
                for backend in plan_pool.pool.backends:
                    if not backend.healthy:
                        plan_pool.pool.set_healthy(backend, True)
            return
        if monitor is None:
            monitor = HealthMonitor(
                self.reactor,
                plan_pool.pool,
                plan_pool.check,
                interval=health.interval,
                rise=health.rise,
                fall=health.fall,
                down_interval=health.down_interval,
                jitter=health.jitter,
            )
            self.monitors[name] = monitor
            monitor.setServiceParent(self)  # type: ignore[no-untyped-call]
            return
        monitor.reconfigure(
            plan_pool.check,
            interval=health.interval,
            rise=health.rise,
            fall=health.fall,
            down_interval=health.down_interval,
            jitter=health.jitter,
        )
        monitor.backends_changed()

    # -- reloading

    def reload(self, path: str | None = None) -> ReloadResult:
        """
        Read a config file, validate it in full and, if it is valid, apply it in place
        (:meth:`apply_config`). SIGHUP under twistd and the admin API's reload call this.

        The file is read synchronously, on the reactor thread: a reload is rare and the
        file is small.

        Args:
            path: the file; by default the one the config in force came from.

        Returns:
            The result, also kept as :attr:`last_reload`. A bad file never raises: the result
            has ``ok`` false and every problem, each problem is logged as ``twisted-lb
            check`` prints it, and nothing changes. While the service is stopping, the
            result is a failure whose problem says so, and nothing is read.
        """
        if self._stopping:
            _log.warn("reload refused: the balancer is stopping")
            result = ReloadResult(
                ok=False,
                generation=self.generation,
                at=self.reactor.seconds(),
                problems=("the balancer is stopping; nothing was reloaded",),
            )
            self.last_reload = result
            return result
        path = path if path is not None else self.config.path
        try:
            config = load_config(path)
        except ConfigError as e:
            return self._failed(e.problems)
        return self.apply_config(config)

    def apply_config(self, config: Config) -> ReloadResult:
        """
        Apply a validated config to the live objects, changing only what differs.

        What is diffed, what keeps its identity (listeners by endpoint description, pools
        and frontends by name, backends by name and address) and what established
        connections keep is in docs/design.rst, "Reloading the config". Removed backends,
        pools and frontends drain, bounded by ``[global] drain_timeout``. The runtime
        changes in force are replaced by the config, and those that differ from it are
        reported as ``overridden``.

        Returns:
            The result, also kept as :attr:`last_reload`: ``ok`` false (nothing changed)
            when something the config needs cannot be built (a TLS file, a strategy's
            options, a port to listen on); else ``ok`` with ``generation`` + 1 and one
            summary log event.
        """
        try:
            plan = self._prepare(config)
        except ConfigError as e:
            return self._failed(e.problems)
        listeners, problems = self._listen_new(plan)
        if problems:
            if plan.access_log_changed and isinstance(plan.access_log, AccessLog):
                plan.access_log.close()
            return self._failed(problems)
        added, changed, removed, overridden = self._commit(plan, listeners)
        self.generation += 1
        result = ReloadResult(
            ok=True,
            generation=self.generation,
            at=self.reactor.seconds(),
            added=tuple(added),
            changed=tuple(changed),
            removed=tuple(removed),
            overridden=tuple(overridden),
        )
        self.last_reload = result
        parts = [
            f"{word} {', '.join(items)}"
            for word, items in (("added", added), ("changed", changed), ("removed", removed))
            if items
        ]
        if overridden:
            parts.append(f"overrode the runtime changes {', '.join(overridden)}")
        _log.info(
            "reload: generation {generation} from {path}: {summary}",
            generation=self.generation,
            path=config.path,
            summary="; ".join(parts) if parts else "no change",
            added=list(added),
            changed=list(changed),
            removed=list(removed),
            overridden=list(overridden),
        )
        return result

    def _failed(self, problems: Iterable[Problem]) -> ReloadResult:
        lines = tuple(problem.located() for problem in problems)
        # Warnings, not errors: the process is fine and keeps the config in force.
        for line in lines:
            _log.warn("{problem}", problem=line)
        _log.warn(
            "reload failed with {count} {noun}; generation {generation} stays in force",
            count=len(lines),
            noun="problem" if len(lines) == 1 else "problems",
            generation=self.generation,
        )
        result = ReloadResult(
            ok=False, generation=self.generation, at=self.reactor.seconds(), problems=lines
        )
        self.last_reload = result
        return result

    def _overridden(self, config: Config) -> list[str]:
        """The runtime changes in force that ``config`` undoes, in words."""
        lines: list[str] = []
        for (pool_name, backend_name), change in self._runtime.items():
            pool_config = config.pools.get(pool_name)
            backend_config = None
            if pool_config is not None:
                backend_config = next(
                    (b for b in pool_config.backends if b.name == backend_name), None
                )
            who = f"backend {pool_name}/{backend_name}"
            if "added" in change:
                address = change["added"]["address"]
                if backend_config is None or parse_address(backend_config.address) != parse_address(
                    address
                ):
                    lines.append(f"{who} added at {address} (not in the config)")
            if change.get("removed") and backend_config is not None:
                lines.append(f"{who} removed (the config has it)")
            if backend_config is None:
                if "added" not in change and not change.get("removed"):
                    lines.append(f"{who} changed (not in the config)")
                continue
            if "state" in change and change["state"] != backend_config.state:
                lines.append(
                    f"{who} state {change['state']} (the config says {backend_config.state})"
                )
            if "weight" in change and change["weight"] != backend_config.weight:
                lines.append(
                    f"{who} weight {change['weight']} (the config says {backend_config.weight})"
                )
        return lines

    def all_factories(self) -> list[FrontendFactory]:
        """The frontends' factories, and those of removed frontends still draining."""
        factories = list(self.factories.values())
        for drain in self.drains:
            factories.extend(f for f in drain.factories if f not in factories)
        return factories

    # -- runtime changes

    def _pool(self, pool: str) -> Pool:
        live = self.pools.get(pool)
        if live is None:
            raise UnknownPool(f"no pool {pool!r}; pools: {', '.join(sorted(self.pools)) or '-'}")
        return live

    def _backend(self, pool: str, backend: str) -> tuple[Pool, Backend]:
        live = self._pool(pool)
        for candidate in live.backends:
            if candidate.name == backend:
                return live, candidate
        names = ", ".join(b.name for b in live.backends) or "-"
        raise UnknownBackend(f"pool {pool} has no backend {backend!r}; backends: {names}")

    def set_backend_state(self, pool: str, backend: str, state: str) -> None:
        """
        Set a backend's administrative state (HAProxy's ``set server state``), until the
        next reload.

        Args:
            pool: the pool's name.
            backend: the backend's name.
            state: ``"ready"``, ``"drain"`` (no new connections or requests; established
                ones finish) or ``"maint"`` (the same, and health checks' verdicts do not
                bring it back).

        Raises:
            UnknownPool: no such pool.
            UnknownBackend: no such backend in it.
            InvalidChange: ``state`` is not one of the three.
        """
        live, target = self._backend(pool, backend)
        admin_state = _ADMIN_STATES.get(state) if isinstance(state, str) else None
        if admin_state is None:
            raise InvalidChange(f"state must be 'ready', 'drain' or 'maint', not {state!r}")
        live.set_admin_state(target, admin_state)
        self._runtime.setdefault((pool, backend), {})["state"] = state
        _log.info(
            "runtime change: pool {pool}: backend {backend} state {state}",
            pool=pool,
            backend=backend,
            state=state,
        )

    def set_backend_weight(self, pool: str, backend: str, weight: int) -> None:
        """
        Set a backend's weight (HAProxy's ``set server weight``), until the next reload.
        New picks follow it at once; a backend in slow start ramps towards it.

        Args:
            pool: the pool's name.
            backend: the backend's name.
            weight: an integer from 1 to ``MAX_WEIGHT`` (256), as the
                config's ``weight``.

        Raises:
            UnknownPool: no such pool.
            UnknownBackend: no such backend in it.
            InvalidChange: ``weight`` is not an integer from 1 to 256 (the message says so).
        """
        live, target = self._backend(pool, backend)
        problem = weight_problem(weight)
        if problem is not None:
            raise InvalidChange(f"weight {problem}")
        live.set_weight(target, weight)
        self._runtime.setdefault((pool, backend), {})["weight"] = weight
        _log.info(
            "runtime change: pool {pool}: backend {backend} weight {weight}",
            pool=pool,
            backend=backend,
            weight=weight,
        )

    def add_backend(
        self,
        pool: str,
        address: str,
        name: str | None = None,
        weight: int = 1,
        backup: bool = False,
    ) -> Backend:
        """
        Add a backend to a pool until the next reload (HAProxy's ``add server``). It is
        health-checked at once if the pool has checks, and picked while it is UP.

        Args:
            pool: the pool's name.
            address: ``host:port``, ``[v6]:port`` or ``unix:/path``.
            name: its name; by default the first free one of ``POOL1``, ``POOL2``, ...
            weight: an integer from 1 to ``MAX_WEIGHT`` (256).
            backup: whether it serves only while no primary is UP.

        Returns:
            The new backend.

        Raises:
            UnknownPool: no such pool.
            InvalidChange: the address is malformed or already in the pool, the name is
                taken or empty, or the weight is not an integer from 1 to 256.
        """
        live = self._pool(pool)
        try:
            parsed = parse_address(address)
        except (ValueError, TypeError) as e:
            raise InvalidChange(f"address: {e}") from None
        problem = weight_problem(weight)
        if problem is not None:
            raise InvalidChange(f"weight {problem}")
        names = {b.name for b in live.backends}
        if name is None:
            number = len(live.backends) + 1
            while f"{pool}{number}" in names:
                number += 1
            name = f"{pool}{number}"
        if not isinstance(name, str) or not name:
            raise InvalidChange("name must be a non-empty string")
        if name in names:
            raise InvalidChange(f"pool {pool} already has a backend named {name!r}")
        for other in live.backends:
            if other.address == parsed:
                raise InvalidChange(
                    f"{address!r} is already backend {other.name} of pool {pool}; "
                    "change its weight instead"
                )
        backend = Backend(parsed, name=name, weight=weight, backup=bool(backup))
        live.set_backends([*live.backends, backend])
        monitor = self.monitors.get(pool)
        if monitor is not None:
            monitor.backends_changed()
        change = self._runtime.setdefault((pool, name), {})
        if change.pop("removed", False):
            change.clear()
        change["added"] = {"address": str(parsed), "weight": weight, "backup": bool(backup)}
        _log.info(
            "runtime change: pool {pool}: added backend {backend} at {address}",
            pool=pool,
            backend=name,
            address=str(parsed),
        )
        return backend

    def remove_backend(self, pool: str, backend: str) -> None:
        """
        Remove a backend from a pool until the next reload (HAProxy's ``del server``, with
        the drain first): it gets no new connections or requests, its established ones
        finish, and after ``[global] drain_timeout`` seconds those left are closed.

        Raises:
            UnknownPool: no such pool.
            UnknownBackend: no such backend in it.
        """
        live, target = self._backend(pool, backend)
        live.set_backends([b for b in live.backends if b is not target])
        monitor = self.monitors.get(pool)
        if monitor is not None:
            monitor.backends_changed()
        change = self._runtime.setdefault((pool, backend), {})
        if "added" in change:
            del self._runtime[(pool, backend)]
        else:
            change.clear()
            change["removed"] = True
        _log.info(
            "runtime change: pool {pool}: removed backend {backend}; draining it",
            pool=pool,
            backend=backend,
        )
        _Drain(
            self,
            [f"backend {pool}/{backend}"],
            [target],
            [],
            self.config.global_config.drain_timeout,
        )

    def runtime_state(self) -> dict[str, object]:
        """
        The runtime changes in force, as JSON-able data for :meth:`restore_runtime_state`
        (HAProxy's ``server-state-file``)::

            {"generation": 3, "backends": [
                {"pool": "app", "backend": "app2", "state": "drain", "weight": 5},
                {"pool": "app", "backend": "app9",
                 "added": {"address": "127.0.0.1:9009", "weight": 1, "backup": false}},
                {"pool": "app", "backend": "app3", "removed": true}]}
        """
        entries: list[dict[str, object]] = []
        for (pool, backend), change in self._runtime.items():
            entry: dict[str, object] = {"pool": pool, "backend": backend}
            for key in ("added", "removed", "state", "weight"):
                if key in change:
                    value = change[key]
                    entry[key] = dict(value) if isinstance(value, dict) else value
            entries.append(entry)
        return {"generation": self.generation, "backends": entries}

    def restore_runtime_state(self, state: Mapping[str, object]) -> list[str]:
        """
        Apply the runtime changes of :meth:`runtime_state`'s data again (at start, from the
        state file). Each entry is applied on its own: additions, removals, then states and
        weights.

        Returns:
            A line per entry that was skipped and why (unknown pool or backend, an invalid
            value, a malformed entry); empty when everything applied.
        """
        problems: list[str] = []
        raw = state.get("backends", []) if isinstance(state, Mapping) else None
        if not isinstance(raw, list):
            return ["runtime state: 'backends' must be a list"]
        for index, entry in enumerate(raw):
            where = f"runtime state backends[{index}]"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: must be an object")
                continue
            pool, backend = entry.get("pool"), entry.get("backend")
            if not isinstance(pool, str) or not isinstance(backend, str):
                problems.append(f"{where}: 'pool' and 'backend' must be strings")
                continue
            try:
                added = entry.get("added")
                if added is not None:
                    if not isinstance(added, Mapping) or not isinstance(added.get("address"), str):
                        raise InvalidChange("'added' must be an object with an 'address'")
                    self.add_backend(
                        pool,
                        str(added["address"]),
                        name=backend,
                        weight=added.get("weight", 1),
                        backup=bool(added.get("backup", False)),
                    )
                if entry.get("removed"):
                    self.remove_backend(pool, backend)
                    continue
                if "state" in entry:
                    self.set_backend_state(pool, backend, entry["state"])
                if "weight" in entry:
                    self.set_backend_weight(pool, backend, entry["weight"])
            except (LookupError, ValueError) as e:
                problems.append(f"{where} ({pool}/{backend}): {e}; skipped")
        return problems

    # -- running

    def privilegedStartService(self) -> None:
        from twisted_lb.metrics import strategy_name  # (metrics.py imports this module)

        for name, pool in self.pools.items():
            _log.info(
                "pool {pool}: strategy {strategy}, backends {backends}",
                pool=name,
                count=len(pool.backends),
                backends=", ".join(f"{b.name}={b.address}" for b in pool.backends),
                strategy=strategy_name(self, pool),
            )
            if pool.tls is not None and not pool.tls.verify:
                _log.warn(
                    "pool {pool}: TLS to the backends is NOT verified (tls.verify = false): "
                    "anyone on the path can impersonate them",
                    pool=name,
                )
        access_log = self.access_log
        if isinstance(access_log, AccessLog):
            try:
                access_log.open()
            except OSError as e:
                raise ListenError(
                    f"global.access_log: cannot open {access_log.path}: {e.strerror or e}"
                ) from None
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def reopen_access_log(self) -> None:
        """
        Write the access lines buffered so far, then open the access log file again by its
        path (on SIGUSR1 under twistd, after log rotation renamed it; as nginx reopens its
        logs on USR1). With ``access_log = true`` under twistd with ``--logfile``, that file
        is reopened.
        """
        if isinstance(self.access_log, AccessLog):
            self.access_log.reopen()

    def reload_certificates(self) -> list[str]:
        """
        Read every frontend's certificate files again, and every pool's ``ca``,
        ``client_cert`` and ``client_key`` (on SIGHUP under twistd). New TLS handshakes use
        the new files, the health checks' included; established connections are untouched. A
        frontend or pool whose new files are unusable keeps its old ones, and the reason is
        logged.

        Returns:
            What has TLS files to read, as ``"frontend web"`` and ``"pool app"``, in config
            order, whether or not each reload succeeded; empty when there is none.
        """
        tried: list[str] = []
        for name, server_tls in self.server_tls.items():
            tried.append(f"frontend {name}")
            self._reload_tls("frontend", name, "certificates", server_tls.reload)
        for name, pool in self.pools.items():
            if pool.tls is not None and pool.tls.has_files:
                tried.append(f"pool {name}")
                self._reload_tls("pool", name, "TLS files", pool.tls.reload)
        return tried

    def _reload_tls(self, kind: str, name: str, what: str, reload: Callable[[], list[str]]) -> None:
        # The event carries ``frontend=`` or ``pool=`` too, as the other events about them do.
        fields: dict[str, Any] = {"kind": kind, "name": name, "what": what, kind: name}
        try:
            problems = reload()
        except Exception:
            _log.failure("{kind} {name}: {what} not reloaded, keeping the old ones", **fields)
            return
        if problems:
            _log.warn(
                "{kind} {name}: {what} not reloaded, keeping the old ones: {problems}",
                problems="; ".join(problems),
                **fields,
            )
        else:
            _log.info("{kind} {name}: {what} reloaded", **fields)

    def startService(self) -> None:
        self._stopping = False
        self.started = self.reactor.seconds()
        for pool in self.pools.values():
            pool.start()
        super().startService()  # type: ignore[no-untyped-call]
        # After the reactor's startup phase, so signal handlers (SIGTERM) are installed.
        self.reactor.callWhenRunning(self._log_running)

    def _log_running(self) -> None:
        if self.running:
            frontends, pools = len(self.factories), len(self.pools)
            _log.info(
                "twisted-lb running: {frontends} {frontend_noun}, {pools} {pool_noun}",
                frontends=frontends,
                frontend_noun="frontend" if frontends == 1 else "frontends",
                pools=pools,
                pool_noun="pool" if pools == 1 else "pools",
            )

    _stopping = False

    def stopService(self) -> Deferred[object]:
        self._stopping = True
        stopped: Deferred[object] = Deferred()
        listeners_stopped = super().stopService()  # type: ignore[no-untyped-call]
        listeners_stopped.addCallback(lambda _: self._close_connections())
        # Last, once every connection has written its access line.
        listeners_stopped.addBoth(self._close_access_log)
        listeners_stopped.addBoth(stopped.callback)
        return stopped

    def _close_access_log(self, result: object) -> object:
        if isinstance(self.access_log, AccessLog):
            self.access_log.close()
        return result

    def _close_connections(self) -> Deferred[Any]:
        factories = self.all_factories()
        for drain in list(self.drains):
            drain.cancel()
        self.drains.clear()
        for pool in self.pools.values():
            pool.stop()
        closing = [factory.close_connections() for factory in factories]
        self.upstreams.close_idle()
        open_connections = sum(factory.active_connections for factory in factories)
        if open_connections:
            _log.info("closing {count} open connections", count=open_connections)
        all_closed: Deferred[Any] = DeferredList(closing, consumeErrors=True)
        timer = self.reactor.callLater(SHUTDOWN_GRACE, self._abort_connections, factories)

        def cancel_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return all_closed.addBoth(cancel_timer)

    def _abort_connections(self, factories: list[FrontendFactory]) -> None:
        for factory in factories:
            if factory.connections:
                _log.warn(
                    "frontend {frontend}: aborting {count} connections still open after {grace} s",
                    frontend=factory.frontend,
                    count=len(factory.connections),
                    grace=SHUTDOWN_GRACE,
                )
            factory.abort_connections()

    def addresses(self, frontend: str) -> list[IAddress]:
        """The addresses a running frontend listens on (useful with ``tcp:0``)."""
        return [
            listener.port.getHost()
            for listener in self.listeners
            if listener.frontend == frontend and listener.port is not None
        ]
