"""
The balancer as a Twisted service: the one place where config becomes live objects.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any, Self

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from twisted_lb._address import proxy_listener
from twisted_lb._frontend import FrontendFactory, ProxyHeaderFactory
from twisted_lb.backend import Backend, BackendState
from twisted_lb.config import Config, FrontendConfig, GlobalConfig, HealthCheckConfig, join_key
from twisted_lb.health import HealthMonitor, HTTPCheck, TCPCheck
from twisted_lb.http.proxy import HTTPProxyFactory
from twisted_lb.http.routing import Route, Router
from twisted_lb.http.upstream import Upstreams
from twisted_lb.interfaces import IAccessLog, IHealthCheck
from twisted_lb.logs import AccessLog, EventAccessLog
from twisted_lb.pool import OutlierDetector, Pool
from twisted_lb.strategies import get_strategy
from twisted_lb.tcp import TCPRelayFactory
from twisted_lb.tls import ClientTLS, ServerTLS

_log = Logger()

#: Seconds that stopping waits for open connections to close before aborting them.
SHUTDOWN_GRACE = 5.0

#: A backend's ``state`` key in the config, as the backend's ``admin_state``.
_ADMIN_STATES = {
    "ready": BackendState.UP,
    "drain": BackendState.DRAINING,
    "maint": BackendState.MAINT,
}


class ListenError(Exception):
    """
    Start-up could not take what it serves with: a frontend could not listen on one of its
    ``listen`` endpoints, or the access log file could not be opened. The message names the
    config file and the key path, as a config problem does:
    ``lb.toml: frontends.web.listen[0]: cannot listen on tcp:8080: Address already in use``.
    """


class Listener(Service):
    """
    Listens on one server endpoint for one frontend while running.

    Listening starts in ``privilegedStartService`` (before twistd drops privileges), and a
    failure to listen is raised there as :class:`ListenError`, so start-up stops.

    Args:
        endpoint: where to listen.
        factory: the frontend's protocol factory, wrapped in a ``TLSMemoryBIOFactory`` when
            the frontend terminates TLS.
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
        self.factory = factory
        self.frontend = frontend
        self.description = description
        self.where = f"frontend {frontend}" if where is None else where
        self.port: IListeningPort | None = None
        self.name = f"{frontend} {description}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        if self.port is not None:
            return
        outcome: list[IListeningPort | Failure] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
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

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
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


def _access_log(
    config: GlobalConfig, reactor: Any, log_output: IO[str] | None
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


def _health_check(reactor: Any, config: HealthCheckConfig, tls: ClientTLS | None) -> IHealthCheck:
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
    ``ssl`` server); on ``haproxy:ssl:`` the endpoint's TLS is outside, so the header comes
    first inside TLS (Twisted's order). Peers allowed to send it: ``proxy_protocol_from``,
    else ``trusted_proxies``, else any.
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
        timeout=frontend.client_timeout,
    )


class LoadBalancerService(MultiService):
    """
    Every frontend, pool and listener of one config, as a service tree.

    Use :meth:`from_config`; start it as any Twisted service. Stopping it stops listening,
    then closes open connections, aborting those still open after ``SHUTDOWN_GRACE`` seconds.

    Args:
        reactor: the reactor every listener, connection and timer uses.

    Attributes:
        pools: live pools by name.
        monitors: the health monitor of each pool that has ``health_check``, by pool name.
        server_tls: the TLS termination of each frontend that has ``tls``, by frontend name.
        factories: each frontend's protocol factory, by frontend name.
        listeners: the listener services, in config order.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.pools: dict[str, Pool] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self.server_tls: dict[str, ServerTLS] = {}
        self.factories: dict[str, FrontendFactory] = {}
        self.upstreams = Upstreams(reactor)
        self.access_log: IAccessLog | None = EventAccessLog()
        self.listeners: list[Listener] = []

    @classmethod
    def from_config(
        cls, config: Config, reactor: Any, *, log_output: IO[str] | None = None
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
        """
        service = cls(reactor)
        service.access_log = _access_log(config.global_config, reactor, log_output)
        for name, pool_config in config.pools.items():
            strategy = get_strategy(pool_config.strategy, pool_config.strategy_options)
            pool_tls = None
            if pool_config.tls is not None:
                tls_config = pool_config.tls
                pool_tls = ClientTLS(
                    server_name=tls_config.server_name,
                    ca=tls_config.ca,
                    client_cert=tls_config.client_cert,
                    client_key=tls_config.client_key,
                    verify=tls_config.verify,
                )
            backends = [
                Backend.from_address(
                    b.address,
                    name=b.name,
                    weight=b.weight,
                    backup=b.backup,
                    state=_ADMIN_STATES[b.state],
                )
                for b in pool_config.backends
            ]
            outlier = pool_config.outlier_detection
            pool = service.pools[name] = Pool(
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
                outlier_detector=None
                if outlier is None
                else OutlierDetector(
                    reactor,
                    consecutive_failures=outlier.consecutive_failures,
                    base_ejection_time=outlier.base_ejection_time,
                    max_ejection_time=outlier.max_ejection_time,
                    max_ejection_percent=outlier.max_ejection_percent,
                    count_5xx=outlier.count_5xx,
                    uneject_on_passing_check=outlier.uneject_on_passing_check,
                ),
                reactor=reactor,
                tls=pool_tls,
            )
            health = pool_config.health_check
            if health is not None:
                monitor = HealthMonitor(
                    reactor,
                    pool,
                    _health_check(reactor, health, pool_tls),
                    interval=health.interval,
                    rise=health.rise,
                    fall=health.fall,
                    down_interval=health.down_interval,
                    jitter=health.jitter,
                )
                monitor.setServiceParent(service)  # type: ignore[no-untyped-call]
                service.monitors[name] = monitor
        for name, frontend in config.frontends.items():
            factory = service._frontend_factory(name, frontend, service.pools[frontend.pool])
            service.factories[name] = factory
            listen_factory: IProtocolFactory = factory
            if frontend.tls is not None:
                tls = frontend.tls
                server_tls = ServerTLS(
                    [(pair.cert, pair.key) for pair in tls.certificates],
                    min_version=tls.min_version,
                    ciphers=tls.ciphers,
                    curves=tls.curves,
                    alpn=[b"http/1.1"] if frontend.mode == "http" else (),
                    client_ca=tls.client_ca,
                    verify_client=tls.verify_client,
                )
                service.server_tls[name] = server_tls
                listen_factory = TLSMemoryBIOFactory(server_tls, False, factory)
            proxied: ProxyHeaderFactory | None = None
            for index, description in enumerate(frontend.listen):
                under_proxy = proxy_listener(description)
                endpoint = serverFromString(reactor, under_proxy or description)
                endpoint_factory = listen_factory
                if under_proxy is not None:
                    # haproxy:: the PROXY header is read around what the endpoint under it
                    # delivers (see _proxy_header_factory).
                    if proxied is None:
                        proxied = _proxy_header_factory(frontend, factory, listen_factory)
                    endpoint_factory = proxied
                listener = Listener(
                    endpoint,
                    endpoint_factory,
                    name,
                    description,
                    where=f"{config.path}: {join_key('frontends', name)}.listen[{index}]",
                )
                listener.setServiceParent(service)  # type: ignore[no-untyped-call]
                service.listeners.append(listener)
        return service

    def _frontend_factory(self, name: str, frontend: FrontendConfig, pool: Pool) -> FrontendFactory:
        """The protocol factory of one frontend: the tcp relay or the http proxy."""
        if frontend.mode == "tcp":
            return TCPRelayFactory(
                self.reactor,
                pool,
                client_timeout=frontend.client_timeout,
                max_connections=frontend.max_connections,
                frontend=name,
                access_log=self.access_log,
            )
        routes = [
            Route(self.pools[route.pool], host=route.host, path_prefix=route.path_prefix)
            for route in frontend.routes
        ]
        return HTTPProxyFactory(
            self.reactor,
            Router(routes, pool) if routes else pool,
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
            access_log=self.access_log,
        )

    def privilegedStartService(self) -> None:
        for name, pool in self.pools.items():
            _log.info(
                "pool {pool}: {count} backends ({backends}), strategy {strategy}",
                pool=name,
                count=len(pool.backends),
                backends=", ".join(f"{b.name}={b.address}" for b in pool.backends),
                strategy=type(pool.strategy).__name__,
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

    def stopService(self) -> Deferred[object]:
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
        for pool in self.pools.values():
            pool.stop()
        closing = [factory.close_connections() for factory in self.factories.values()]
        self.upstreams.close_idle()
        open_connections = sum(factory.active_connections for factory in self.factories.values())
        if open_connections:
            _log.info("closing {count} open connections", count=open_connections)
        all_closed: Deferred[Any] = DeferredList(closing, consumeErrors=True)
        timer = self.reactor.callLater(SHUTDOWN_GRACE, self._abort_connections)

        def cancel_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return all_closed.addBoth(cancel_timer)

    def _abort_connections(self) -> None:
        for factory in self.factories.values():
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
