"""
L4: the TCP relay.

Each client connection is paired with one backend connection chosen by the pool's strategy, and
bytes flow both ways under flow control, as in ``twisted.protocols.portforward``: the client is
paused until its backend connects, then each transport is registered as the other's streaming
producer, so a slow peer pauses the fast one instead of filling memory.

On top of ``portforward`` the relay adds: failover to the next backend when a connection attempt
is refused or times out (``connect_timeout``, ``retries``), half-close in both directions (as
nginx's ``proxy_half_close`` and HAProxy's tunnel mode), an idle timeout (``client_timeout``), a
cap on concurrent clients (``max_connections``), live byte counters on each backend, and one
access event per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_lb import _defaults as defaults
from twisted_lb._frontend import FrontendFactory
from twisted_lb._transport import (
    FULL_READ_BYTES,
    RelayTransport,
    connect,
    connect_error_reason,
    describe_error,
    lose_connection,
    read_more,
    sender,
)
from twisted_lb.backend import RETRY_CONNECT_FAILED, Backend, ConnectionInfo
from twisted_lb.interfaces import IAccessLog, IBalancerReactor
from twisted_lb.pool import Lease, Pool

_log = Logger()


def _end_writes(transport: RelayTransport) -> None:
    """
    Pass on the other side's end of stream: a TCP half-close (FIN), keeping the other
    direction open. Over TLS, a full close with ``close_notify`` after what is buffered:
    Twisted's TLS transport has no half-close (its ``loseWriteConnection`` would shut the
    socket under it without ``close_notify``), and it closes only once no producer is
    registered.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport.unregisterProducer()
        lose_connection(transport)
    else:
        transport.loseWriteConnection()


# How a relayed connection ended, as written in its access event.
ENDED_CLIENT = "client closed"
ENDED_BACKEND = "backend closed"
ENDED_IDLE = "idle timeout"
ENDED_NO_BACKEND = "no backend available"
ENDED_CONNECT_FAILED = "backend connect failed"
ENDED_MAX_CONNECTIONS = "max connections reached"

# Seconds of slack when comparing the idle deadline with the clock (float sums).
_EPSILON = 1e-6


# Before the relay's protocols: compiled by mypyc, their annotations name it when they are made.
class TCPRelayFactory(FrontendFactory):
    """
    Builds the relay for each client connection of one frontend (L4, tcp mode).

    Args:
        reactor: provides ``IReactorTCP`` (and ``IReactorUNIX`` for ``unix:`` backends) and
            ``IReactorTime``; all connects and timers use it.
        pool: where backends are picked, with the pool's ``connect_timeout`` (seconds) and
            ``retries``.
        client_timeout: seconds with no bytes in either direction after which a pair is
            closed (HAProxy ``timeout client``/``timeout server`` in tcp mode).
        max_connections: concurrent client connections; past it a new client is closed at once
            and counted in ``refused_connections``.
        frontend: the frontend's name, for logs.
        access_log: the access log (see :class:`~twisted_lb._frontend.FrontendFactory`).

    Attributes:
        active_connections: client connections open now.
        refused_connections: clients closed at once because of ``max_connections``.

    Raises:
        ValueError: ``client_timeout`` is not > 0 or ``max_connections`` is not >= 1.
    """

    def __init__(
        self,
        reactor: IBalancerReactor,
        pool: Pool,
        *,
        client_timeout: float = defaults.CLIENT_TIMEOUT,
        max_connections: int = defaults.MAX_CONNECTIONS,
        frontend: str = "tcp",
        access_log: bool | IAccessLog | None = True,
    ) -> None:
        if client_timeout <= 0:
            raise ValueError("client_timeout must be > 0 s")
        super().__init__(
            reactor, max_connections=max_connections, frontend=frontend, access_log=access_log
        )
        self.pool = pool
        self.client_timeout = client_timeout

    settings: ClassVar[tuple[str, ...]] = (*FrontendFactory.settings, "pool", "client_timeout")

    def __repr__(self) -> str:
        return f"<TCPRelayFactory {self.frontend} -> {self.pool.name}>"

    def info(self, address: IAddress | None) -> ConnectionInfo:
        """What the strategy is told about a client."""
        return ConnectionInfo(client_address=address)

    def buildProtocol(self, addr: IAddress | None) -> _ClientSide:  # type: ignore[override]
        return _ClientSide(self, addr)


@implementer(IHalfCloseableProtocol)
class _BackendSide(Protocol):
    """The relay's connection to the backend; forwards to its client side."""

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.relay_transport: RelayTransport | None = None
        self.send: Callable[[bytes], None] | None = None
        self.read_closed = False
        self.write_closed = False

    def connectionMade(self) -> None:
        self.relay_transport = cast(RelayTransport, self.transport)
        self.send = sender(self.relay_transport)

    def dataReceived(self, data: bytes) -> None:
        client = self.client
        client.client_send(data)
        size = len(data)
        if size >= FULL_READ_BYTES:
            read_more(self.transport)
        client.bytes_out += size
        client.backend.bytes_out += size
        client.last_activity = client.seconds()

    def readConnectionLost(self) -> None:
        # The backend sent FIN: pass it on to the client, keep the other direction open.
        self.read_closed = True
        client = self.client
        if not client.client_lost:
            _end_writes(client.client_transport)
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.read_closed and self.write_closed and self.relay_transport is not None:
            self.relay_transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.backend_connection_lost()


@implementer(IHalfCloseableProtocol)
class _ClientSide(Protocol):
    """
    One client connection of a :class:`TCPRelayFactory`: picks, connects and relays.

    Attributes:
        bytes_in: bytes relayed from the client to the backend.
        bytes_out: bytes relayed from the backend to the client.
    """

    factory: TCPRelayFactory
    client_transport: RelayTransport
    client_send: Callable[[bytes], None]
    backend: Backend

    def __init__(self, factory: TCPRelayFactory, address: IAddress | None) -> None:
        self.factory = factory
        # The pool this connection's picks and retries use, even if a reload gives the
        # frontend another one meanwhile.
        self.pool = factory.pool
        self.client_address = address
        self.seconds = factory.reactor.seconds
        self.started = 0.0
        self.last_activity = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.tried: list[Backend] = []
        self.lease: Lease | None = None
        self.backend_side: _BackendSide | None = None
        self.backend_transport: RelayTransport | None = None
        self.backend_send: Callable[[bytes], None] | None = None
        self.connecting: Deferred[IProtocol] | None = None
        self.idle_call: IDelayedCall | None = None
        self.early_data: list[bytes] = []
        self.pending_eof = False
        self.counted = False
        self.client_lost = False
        self.backend_lost = False
        self.read_closed = False
        self.write_closed = False
        self.ended: str | None = None
        self.logged = False

    # Client events.

    def connectionMade(self) -> None:
        factory = self.factory
        self.client_transport = cast(RelayTransport, self.transport)
        self.client_send = sender(self.client_transport)
        self.started = self.last_activity = self.seconds()
        if not factory.admit(self):
            self.ended = ENDED_MAX_CONNECTIONS
            _log.warn(
                "frontend {frontend}: refused {client}: {limit} connections already open "
                "(max_connections)",
                frontend=factory.frontend,
                client=_format_address(self.client_address),
                limit=factory.max_connections,
            )
            lose_connection(self.client_transport)
            return
        self.counted = True
        # Read nothing from the client until there is somewhere to send it.
        self.client_transport.pauseProducing()
        self._connect_next()

    def dataReceived(self, data: bytes) -> None:
        backend_send = self.backend_send
        if backend_send is None:
            # Only while paused: some transports (TLS) may still deliver what they buffered.
            self.early_data.append(data)
            return
        backend_send(data)
        size = len(data)
        if size >= FULL_READ_BYTES:
            read_more(self.transport)
        self.bytes_in += size
        self.backend.bytes_in += size
        self.last_activity = self.seconds()

    def readConnectionLost(self) -> None:
        # The client sent FIN: pass it on to the backend, keep the other direction open.
        self.read_closed = True
        if self.backend_transport is None:
            self.pending_eof = True
        elif not self.backend_lost:
            _end_writes(self.backend_transport)
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self.write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.read_closed and self.write_closed:
            lose_connection(self.client_transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client_lost = True
        factory = self.factory
        if self.counted:
            self.counted = False
            factory.forget(self)
        if self.idle_call is not None:
            if self.idle_call.active():
                self.idle_call.cancel()
            self.idle_call = None
        if self.ended is None:
            self.ended = ENDED_CLIENT
        if self.connecting is not None:
            # The failure callback releases the lease and finishes.
            self.connecting.cancel()
            return
        if self.backend_transport is not None and not self.backend_lost:
            self.backend_transport.unregisterProducer()
            self.backend_transport.loseConnection()
        self._finish()

    # Connecting to a backend.

    def _connect_next(self) -> None:
        factory = self.factory
        pool = self.pool
        lease = pool.pick(factory.info(self.client_address), self.tried)
        if lease is None:
            self.ended = ENDED_CONNECT_FAILED if self.tried else ENDED_NO_BACKEND
            if not self.tried:
                _log.warn(
                    "frontend {frontend}: no backend available in pool {pool} for {client}",
                    frontend=factory.frontend,
                    pool=pool.name,
                    client=_format_address(self.client_address),
                )
            lose_connection(self.client_transport)
            return
        self.lease = lease
        self.backend = backend = lease.backend
        self.tried.append(backend)
        side = _BackendSide(self)
        connecting = connect(factory.reactor, backend, side, pool.connect_timeout, pool.tls)
        self.connecting = connecting
        connecting.addCallbacks(
            self._backend_connected, self._backend_failed, (side,), errbackArgs=(lease,)
        )

    def _backend_connected(self, protocol: IProtocol, side: _BackendSide) -> None:
        self.connecting = None
        backend_transport = side.relay_transport
        assert backend_transport is not None
        self.backend_side = side
        self.backend_transport = backend_transport
        self.pool.report_success(self.backend)
        self.backend_send = side.send
        client_transport = self.client_transport
        # Each transport is the other's producer: a full write buffer on one side pauses
        # reading on the other (portforward.ProxyClient.connectionMade).
        backend_transport.registerProducer(cast(IPushProducer, client_transport), True)
        client_transport.registerProducer(cast(IPushProducer, backend_transport), True)
        self.last_activity = self.seconds()
        for data in self.early_data:
            self.dataReceived(data)
        self.early_data = []
        if self.pending_eof:
            _end_writes(backend_transport)
        client_transport.resumeProducing()
        self._schedule_idle_check(self.factory.client_timeout)

    def _backend_failed(self, failure: Failure, lease: Lease) -> None:
        self.connecting = None
        lease.release()
        backend = lease.backend
        factory = self.factory
        if self.client_lost:
            # The client left while we were connecting; the attempt was cancelled.
            self._finish()
            return
        backend.connect_failures += 1
        backend.connect_errors[connect_error_reason(failure.value)] += 1
        reason = describe_error(failure.value)
        self.pool.report_failure(backend, reason)
        attempts_left = self.pool.attempts_left(self.tried)
        _log.warn(
            "frontend {frontend}: connect to backend {backend} ({address}) in pool {pool} "
            "failed: {reason}; attempts left: {left}",
            frontend=factory.frontend,
            backend=backend.name,
            address=str(backend.address),
            pool=self.pool.name,
            reason=reason,
            left=attempts_left,
        )
        if attempts_left > 0:
            backend.retries[RETRY_CONNECT_FAILED] += 1
            self._connect_next()
        else:
            self.ended = ENDED_CONNECT_FAILED
            lose_connection(self.client_transport)

    # Idle timeout.

    def _schedule_idle_check(self, delay: float) -> None:
        self.idle_call = self.factory.reactor.callLater(delay, self._check_idle)

    def _check_idle(self) -> None:
        self.idle_call = None
        remaining = self.last_activity + self.factory.client_timeout - self.seconds()
        if remaining > _EPSILON:
            self._schedule_idle_check(remaining)
            return
        self.close(ENDED_IDLE)

    # Ending.

    def close(self, ended: str) -> None:
        """Close the client (and so the backend) connection, recording why."""
        if self.ended is None:
            self.ended = ended
        if not self.client_lost:
            lose_connection(self.client_transport)
        if self.backend_transport is not None and not self.backend_lost:
            self.backend_transport.loseConnection()

    def abort(self, ended: str) -> None:
        """Abort both connections at once, dropping what is buffered."""
        if self.ended is None:
            self.ended = ended
        if self.backend_transport is not None and not self.backend_lost:
            self.backend_transport.abortConnection()
        if not self.client_lost:
            self.client_transport.abortConnection()

    def drain(self) -> None:
        """A relayed stream has no request boundary to close at: it runs until it ends."""

    def backend_connection_lost(self) -> None:
        """The backend connection is gone: close the client once it has its data."""
        self.backend_lost = True
        if not self.client_lost:
            if self.ended is None:
                self.ended = ENDED_BACKEND
            self.client_transport.unregisterProducer()
            lose_connection(self.client_transport)
        self._finish()

    def _finish(self) -> None:
        """Release the lease and log the access event, once both sides are gone."""
        if self.logged or not self.client_lost:
            return
        if self.backend_transport is not None and not self.backend_lost:
            return
        self.logged = True
        if self.lease is not None:
            self.lease.release()
        factory = self.factory
        factory.bytes_in += self.bytes_in
        factory.bytes_out += self.bytes_out
        access_log = factory.access_log
        if access_log is not None:
            lease = self.lease
            access_log.tcp(
                factory.frontend,
                _format_address(self.client_address),
                lease.backend.name if lease is not None and self.backend_transport else "-",
                self.bytes_in,
                self.bytes_out,
                round((self.seconds() - self.started) * 1000),
                self.ended or "-",
            )
        factory.connection_finished()


def _format_address(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        name = getattr(address, "name", None)
        return f"unix:{name!s}" if name else "-"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
