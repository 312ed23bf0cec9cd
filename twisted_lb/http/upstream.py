"""
The upstream side of the HTTP proxy: connections to backends and the keep-alive pool.

Each backend has a stack of idle connections; the most recently used one is taken first, as
nginx's ``keepalive`` cache does, so the connections least likely to have been closed by the
backend are reused. An idle connection is closed after the pool's ``upstream_idle_timeout``
(default 4 s, below the 5 s keep-alive timeout of Node and other common backends, so the
balancer closes first), and at most ``max_idle_per_backend`` are kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_lb._transport import (
    ReadGate,
    RelayTransport,
    connect,
    sender,
    sends_at_once,
    unwrap,
)
from twisted_lb.backend import Backend
from twisted_lb.interfaces import IBalancerReactor
from twisted_lb.pool import Pool

_log = Logger()


class ResponseHandler(TypingProtocol):
    """
    What an upstream connection reports to while it carries one exchange.

    The response's status line and header fields are not reported one by one: the connection
    collects them (:attr:`UpstreamConnection.reason_parts`, :attr:`UpstreamConnection.headers`)
    and :meth:`response_headers_complete` reads them there.
    """

    #: Pauses the client's reading; the connection registers it as its transport's producer
    #: while the exchange's request waits in its write buffer.
    gate: ReadGate

    def response_headers_complete(self) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self) -> None: ...
    def response_upgraded(self, data: bytes) -> None: ...
    def response_malformed(self, error: Exception) -> None: ...
    def upstream_lost(self, connection: UpstreamConnection, reason: Failure) -> None: ...
    def tunnel_data(self, data: bytes) -> None: ...
    def internal_error(self, failure: Failure) -> None: ...
    def batch_begin(self) -> None: ...
    def batch_end(self) -> None: ...


class UpstreamConnection(Protocol):
    """
    One connection to a backend. It parses responses with ``httptools.HttpResponseParser``
    (llhttp) and reports them to the exchange it carries; while idle it belongs to
    :class:`Upstreams`.

    Attributes:
        backend: the backend it is connected to.
        pool: the pool whose settings (idle timeout, idle cap) apply.
        tls: the pool's :class:`~twisted_lb.tls.ClientTLS` (or ``None``) when it connected:
            once a reload gives the pool another, the connection is closed when released
            instead of being reused with the old settings.
        handler: the exchange using it, or ``None`` while idle.
        requests: exchanges it has carried (more than 0 means it is being reused).
        reusable: whether it may go back to the idle stack after the current exchange.
        tunnel: after a 101 response, bytes are passed through unparsed.
        reason_parts: the reason phrase of the response being parsed, in the pieces llhttp
            gave it.
        headers: the header fields of the response being parsed, as received (trailer fields
            of a chunked body are not added).
        pacing: the handler's gate while it is registered as the producer of this
            connection's transport (see :meth:`pace_handler`), else ``None``.
    """

    def __init__(self, upstreams: Upstreams, backend: Backend, pool: Pool) -> None:
        self.upstreams = upstreams
        self.backend = backend
        self.pool = pool
        self.tls = pool.tls
        self.handler: ResponseHandler | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.requests = 0
        self.reusable = True
        self.tunnel = False
        self.lost = False
        self.idle_call: IDelayedCall | None = None
        self.idle_deadline: float | None = None
        self.relay_transport: RelayTransport | None = None
        self.send: Any = None
        self.gate: ReadGate | None = None
        self.reason_parts: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.pacing: ReadGate | None = None
        self.paces_lazily = False

    def connectionMade(self) -> None:
        self.relay_transport = cast(RelayTransport, self.transport)
        unwrap(self)
        # Requests go out at the end of the reactor turn, like responses (see the proxy).
        self.send = sender(self.relay_transport, self.pace_handler, at_turn_end=True)
        self.paces_lazily = sends_at_once(self.relay_transport)
        self.gate = ReadGate(self.relay_transport)

    def attach(self, handler: ResponseHandler) -> None:
        """
        Carry ``handler``'s exchange. The client's reading then follows this connection's
        write buffer: over TCP from the first write that has to be queued (see
        :func:`~twisted_lb._transport.sender`; the usual small request never queues a byte,
        and registering a producer per exchange is not free), over other transports at once.
        """
        self.handler = handler
        self.requests += 1
        if not self.paces_lazily:
            self.pace_handler()

    def pace_handler(self) -> None:
        """Register the handler's gate as this transport's producer, once per exchange."""
        handler = self.handler
        if handler is not None and self.pacing is None and self.relay_transport is not None:
            self.pacing = handler.gate
            self.relay_transport.registerProducer(handler.gate, True)

    def unpace_handler(self) -> None:
        """Unregister the handler's gate, if registered, and lift the pause it may be under."""
        gate, self.pacing = self.pacing, None
        if gate is not None:
            if self.relay_transport is not None and not self.lost:
                self.relay_transport.unregisterProducer()
            gate.resume("consumer")

    def new_parser(self) -> None:
        """Start parsing afresh (after a response to HEAD, whose body llhttp would await)."""
        self.parser = httptools.HttpResponseParser(self)

    def dataReceived(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            # An idle connection has nothing to say; whatever it says, it is not reusable.
            self.reusable = False
            self.upstreams.discard(self)
            cast(RelayTransport, self.transport).loseConnection()
            return
        if self.tunnel:
            handler.tunnel_data(data)
            return
        handler.batch_begin()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self.tunnel = True
            self.reusable = False
            handler.response_upgraded(data[offset:])
        except httptools.HttpParserCallbackError as e:
            self.reusable = False
            handler.internal_error(Failure(e.__context__ or e))
        except httptools.HttpParserError as e:
            self.reusable = False
            handler.response_malformed(e)
        finally:
            handler.batch_end()

    # httptools callbacks. The head is collected here, without a call to the handler per
    # field: these run for every response, several times each.

    def on_message_begin(self) -> None:
        self.reason_parts = []
        self.headers = []
        self.in_head = True

    def on_status(self, status: bytes) -> None:
        self.reason_parts.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.handler is not None:
            self.handler.response_headers_complete()

    def on_body(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.response_body(data)

    def on_message_complete(self) -> None:
        if self.handler is not None:
            self.handler.response_complete()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.reusable = False
        self.idle_deadline = None
        if self.idle_call is not None:
            if self.idle_call.active():
                self.idle_call.cancel()
            self.idle_call = None
        handler, self.handler = self.handler, None
        if handler is None:
            self.upstreams.discard(self)
        else:
            handler.upstream_lost(self, reason)

    def close(self) -> None:
        """Close it (after writing what is queued)."""
        self.reusable = False
        if self.relay_transport is not None and not self.lost:
            self.relay_transport.loseConnection()

    def abort(self) -> None:
        """Close it at once, dropping what is queued: an exchange was cut short."""
        self.reusable = False
        if self.relay_transport is not None and not self.lost:
            self.relay_transport.abortConnection()


class Upstreams:
    """
    Connections to backends, shared by every HTTP frontend of a balancer.

    Args:
        reactor: connects and runs the idle timers (``IReactorTCP``, ``IReactorTime``).

    Attributes:
        idle: idle connections per backend, the most recently used last.
        connections_made: connections opened so far, for tests and metrics.
    """

    def __init__(self, reactor: IBalancerReactor) -> None:
        self.reactor = reactor
        self.idle: dict[Backend, list[UpstreamConnection]] = {}
        self.connections_made = 0
        #: Backends being drained (removed by a reload or at runtime): their connections
        #: close after their exchange instead of going back to the idle stack.
        self.retired: set[Backend] = set()

    def take_idle(self, backend: Backend) -> UpstreamConnection | None:
        """
        The most recently used idle connection to ``backend``, or ``None``.

        Its idle timer is left to fire: it finds the connection busy and lets go (a lazy
        timer costs nothing per request; cancelling and re-arming would cost a heap
        operation each).
        """
        stack = self.idle.get(backend)
        while stack:
            connection = stack.pop()
            connection.idle_deadline = None
            if not connection.lost and connection.reusable:
                return connection
        return None

    def connect(self, backend: Backend, pool: Pool) -> Deferred[UpstreamConnection]:
        """
        Open a new connection to ``backend``, abandoned after ``pool.connect_timeout`` s.

        Returns:
            A Deferred that fires with the connection, or fails with the connect error
            (``ConnectionRefusedError``, ``twisted.internet.error.TimeoutError``, ...).
        """
        connection = UpstreamConnection(self, backend, pool)
        connecting = connect(self.reactor, backend, connection, pool.connect_timeout, pool.tls)

        def connected(protocol: object) -> UpstreamConnection:
            self.connections_made += 1
            return connection

        return connecting.addCallback(connected)

    def release(self, connection: UpstreamConnection) -> None:
        """
        Take back a connection after its exchange: keep it idle if it can be reused, was made
        with the pool's TLS of now (a reload may have changed it) and the backend's idle
        stack has room, else close it.
        """
        connection.handler = None
        pool = connection.pool
        if connection.lost:
            return
        if (
            not connection.reusable
            or pool.max_idle_per_backend == 0
            or connection.tls is not pool.tls
            or (self.retired and connection.backend in self.retired)
        ):
            connection.close()
            return
        stack = self.idle.setdefault(connection.backend, [])
        if len(stack) >= pool.max_idle_per_backend:
            connection.close()
            return
        stack.append(connection)
        connection.idle_deadline = self.reactor.seconds() + pool.upstream_idle_timeout
        if connection.idle_call is None:
            connection.idle_call = self.reactor.callLater(
                pool.upstream_idle_timeout, self._idle_timeout, connection
            )

    def _idle_timeout(self, connection: UpstreamConnection) -> None:
        connection.idle_call = None
        deadline = connection.idle_deadline
        if deadline is None:
            return  # in use again; the next release arms a timer
        left = deadline - self.reactor.seconds()
        if left > 1e-6:
            connection.idle_call = self.reactor.callLater(left, self._idle_timeout, connection)
            return
        self.discard(connection)
        connection.close()

    def discard(self, connection: UpstreamConnection) -> None:
        """Forget an idle connection (it closed, or spoke out of turn)."""
        if connection.idle_call is not None:
            if connection.idle_call.active():
                connection.idle_call.cancel()
            connection.idle_call = None
        stack = self.idle.get(connection.backend)
        if stack and connection in stack:
            stack.remove(connection)

    def close_idle(self, backends: Iterable[Backend] | None = None) -> None:
        """
        Close idle connections and cancel their timers: every one, or those to ``backends``
        (a reload changed how their pool connects, such as its TLS settings).
        """
        if backends is not None:
            for backend in backends:
                for connection in list(self.idle.pop(backend, ())):
                    self.discard(connection)
                    connection.close()
            return
        for stack in list(self.idle.values()):
            for connection in list(stack):
                self.discard(connection)
                connection.close()
        self.idle.clear()

    def retire(self, backends: Iterable[Backend]) -> None:
        """
        Drain ``backends``: close their idle connections now, and each busy one after its
        exchange (instead of keeping it idle), until :meth:`forget_retired`.
        """
        backends = list(backends)
        self.retired.update(backends)
        self.close_idle(backends)

    def forget_retired(self, backends: Iterable[Backend]) -> None:
        """Stop tracking drained backends (their drain is over)."""
        self.retired.difference_update(backends)
