"""
Writing to Twisted transports from the data paths (the L4 relay and the L7 proxy).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import types
import weakref
from collections.abc import Callable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error, tcp
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IFileDescriptorReceiver,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_lb import _compat as compat
from twisted_lb.interfaces import IBalancerReactor

#: Bytes a bulk connection of the L4 relay reads at once, and queues for writing before the
#: other side is paused (``bufferSize`` of Twisted's TCP transports, 64 KiB by default). Fewer,
#: larger reads cost less per byte: measured with bench/tcp_bench.py, 256 KiB took bulk
#: relaying from about 11 to 15 Gbit/s. But CPython allocates the whole size for every
#: ``recv`` before shrinking it, which costs small messages about 4 µs a read (HTTP requests/s
#: fell 11%), so connections start at 64 KiB and :func:`read_more` raises a connection whose
#: read filled its buffer. At most about this much is buffered per direction per connection.
RELAY_BUFFER_BYTES = 256 * 1024

#: A read this large filled Twisted's default buffer: the connection is moving bulk data.
FULL_READ_BYTES = 64 * 1024


def read_more(transport: object) -> None:
    """Let a Twisted TCP connection read :data:`RELAY_BUFFER_BYTES` at once from now on."""
    if isinstance(transport, tcp.Connection):
        cast(Any, transport).bufferSize = RELAY_BUFFER_BYTES


class RelayTransport(TypingProtocol):
    """
    The transport methods the relay uses: TCP, UNIX and TLS transports all have them, but a
    TLS transport's ``loseWriteConnection`` is no TLS half-close (see ``tcp._end_writes``).
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def getPeer(self) -> IAddress: ...


def sends_at_once(transport: object) -> bool:
    """
    Whether :func:`sender` gives ``transport`` a write that sends at once and calls its
    ``on_backlog`` before queueing: Twisted's own TCP and UNIX connections, and Twisted's TLS
    transport (``TLSMemoryBIOProtocol``) over one of them. For any other transport it gives
    ``transport.write``, which never calls ``on_backlog``.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = getattr(transport, "transport", None)
    return isinstance(transport, tcp.Connection)


def close_writing(transport: RelayTransport) -> bool:
    """
    End ``transport``'s writing side after what is written, and keep reading: for a lingering
    close. Returns whether it could; if not, nothing was done.

    - Twisted's own TCP and UNIX connections half-close (``loseWriteConnection``: a FIN once
      the queue is written).
    - Twisted's TLS transport (``TLSMemoryBIOProtocol``) sends close_notify once the queue is
      written, and the TCP connection under it half-closes after it when it went out at once,
      as nginx's lingering close does over TLS. Waiting for the peer's close_notify, TLS keeps
      reading and delivering what the peer still sends (RFC 8446 §6.1 lets the peer send
      until it sends its own); the TCP connection stays open until the peer closes or the
      caller aborts.
    - Anything else (test fakes) cannot.
    """
    if isinstance(transport, tcp.Connection):
        transport.loseWriteConnection()
        return True
    lower = getattr(transport, "transport", None)
    if isinstance(transport, TLSMemoryBIOProtocol) and isinstance(lower, tcp.Connection):
        transport.loseConnection()
        flush_sends(lower)  # the close_notify, if it waits for the end of the turn
        if not _tls_waiting(transport) and not _queued(lower):
            # The close_notify is with the kernel: FIN after it. Not with loseWriteConnection:
            # once Twisted marks the write side shut, the TLS transport's own close (when the
            # peer's close_notify arrives) ends the TCP connection synchronously, inside TLS's
            # handling of that close_notify, which then reads from the TLS state it has just
            # dropped (an AttributeError). Unmarked, that close takes its usual next turn; a
            # later TLS write meets EPIPE, which ends the connection the usual way.
            with contextlib.suppress(OSError):
                lower.socket.shutdown(socket.SHUT_WR)
        return True
    return False


def _queued(connection: Any) -> bool:
    """Whether ``connection`` (a ``tcp.Connection``) has bytes queued, not yet sent."""
    return compat.queued(connection)


def _tls_waiting(transport: TLSMemoryBIOProtocol) -> bool:
    """
    Whether ``transport`` still holds writes back (a registered producer, bytes queued before
    the handshake), so that its close_notify is not written yet.
    """
    return compat.tls_holds_writes(transport)


class _SendQueue:
    """
    The sends waiting for the end of the current reactor turn, one queue per reactor.

    A data path's write appends to its connection's write buffer and queues that connection
    here, once per turn; a single ``callLater(0)`` then sends each queued connection's buffer,
    after every event of the turn is handled (Twisted runs it before it polls again). What one
    turn writes to a peer goes out together, and the peers are woken together: a sleeping
    process, and the CPU it sleeps on, are woken once per turn instead of once per response.
    This is Netty's ``FlushConsolidationHandler``, and what Twisted's own TLS transport does
    for small writes (``BufferingTLSTransport``).
    """

    __slots__ = ("call", "pending", "reactor")

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.pending: dict[object, Callable[[], None]] = {}
        self.call: Any = None

    def add(self, connection: object, flush: Callable[[], None]) -> None:
        """Call ``flush`` at the end of this turn, once, for ``connection``."""
        self.pending[connection] = flush
        if self.call is None:
            self.call = self.reactor.callLater(0, self.run)

    def flush(self, connection: object) -> None:
        """Send what ``connection`` has waiting now, instead of at the end of the turn."""
        flush = self.pending.pop(connection, None)
        if flush is not None:
            flush()

    def run(self) -> None:
        self.call = None
        # Emptied in place: senders hold this dict.
        flushes = list(self.pending.values())
        self.pending.clear()
        for flush in flushes:
            try:
                flush()
            except Exception:
                # One connection's failure (a bug in a backlog hook) must not keep the others'
                # bytes from going out.
                _log.failure("sending at the end of the reactor turn")


_log = Logger()
_send_queues: weakref.WeakKeyDictionary[Any, _SendQueue] = weakref.WeakKeyDictionary()


def _send_queue(reactor: IReactorTime) -> _SendQueue:
    queue = _send_queues.get(reactor)
    if queue is None:
        queue = _send_queues[reactor] = _SendQueue(reactor)
    return queue


def flush_sends(transport: object) -> None:
    """
    Send now what :func:`sender` holds for ``transport`` (a TCP connection, or the one under a
    TLS transport) until the end of the reactor turn. Nothing happens for other transports,
    or when nothing is held.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = getattr(transport, "transport", None)
    if isinstance(transport, tcp.Connection):
        queue = _send_queues.get(transport.reactor)
        if queue is not None:
            queue.flush(transport)


def sender(
    transport: RelayTransport,
    on_backlog: Callable[[], None] | None = None,
    *,
    at_turn_end: bool = False,
) -> Callable[[bytes], None]:
    """
    The function a data path writes to ``transport`` with.

    For Twisted's own TCP and UNIX connections (``tcp.Connection``), a write that does not wait
    for writability when nothing is queued: Twisted's ``write`` would register for it and send
    on the next reactor turn, two ``epoll_ctl`` calls and a loop iteration more per write, where
    nginx and HAProxy send before waiting. It calls the socket's ``send`` as
    ``FileDescriptor.doWrite`` would; whatever is not sent goes through ``write``, which queues
    it, waits for writability and pauses the producer when the queue is full, so byte order and
    flow control are unchanged. When:

    - ``at_turn_end`` is false (the L4 relay), the bytes are sent at once;
    - ``at_turn_end`` is true (the L7 proxy), they join the connection's write buffer and are
      sent once every event of the current reactor turn is handled (one ``callLater(0)`` per
      turn for all connections; see :class:`_SendQueue`). What one turn writes to a connection
      goes out in one ``send``, and what it writes to all connections goes out together, so a
      process waiting at the other end (a client, a backend) is woken once per turn instead of
      once per response. As the bytes are in Twisted's buffer, ``loseConnection`` sends them
      before it closes and ``abortConnection`` drops them; :func:`flush_sends` sends them now.

    TCP ones get ``TCP_NODELAY`` (as nginx's ``tcp_nodelay`` and HAProxy do), so a small write
    is not held back waiting for the ACK of the previous one. Any other transport (test fakes)
    gets its ``write``.

    A TLS transport (``TLSMemoryBIOProtocol``) gets its ``write`` without Twisted's next-turn
    aggregation of small writes (the data paths already hand it whole responses and relayed
    chunks). When it runs over a ``tcp.Connection``, that connection gets ``TCP_NODELAY``, and
    its ``write``, which TLS calls with each record it produces, becomes the sending write
    above, ``on_backlog`` and ``at_turn_end`` included: so the records go out at once or at
    the end of the turn too, and ``on_backlog`` is called just before a record has to be
    queued. It is also called before a write while TLS itself holds application bytes back
    (mid-handshake). The write of the TCP connection is one per connection: a second
    ``sender`` for the same TLS transport replaces the first one's (the data paths make one
    sender per transport).

    ``on_backlog``, when given, is called before each write that queues bytes for
    writability (see :func:`sends_at_once`): a producer that only matters once bytes are
    queued can be registered then, rather than for every exchange (the usual small exchange
    never queues a byte). It is called before the queueing ``write``, so a producer it
    registers is paused by that very write when the queue is full.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        return _tls_sender(transport, on_backlog, at_turn_end)
    if not sends_at_once(transport):
        return transport.write
    connection: Any = transport
    if connection.socket.family in (socket.AF_INET, socket.AF_INET6):
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if at_turn_end:
        return _TurnEndSender(connection, on_backlog).write
    at_once = _SocketSender(connection, on_backlog)
    # Twisted's write buffer and close flags, read inside the function (see _compat).
    return compat.send_when_idle(connection, at_once.send_now, at_once.queue)


class _SocketSender:
    """
    :func:`sender`'s writes to one ``tcp.Connection`` that send at once: :meth:`send_now`
    when nothing is queued and no close is under way, else :meth:`queue` (Twisted's write).

    Attributes:
        twisted_write: the connection's class's ``write`` (its own attribute may be a sender
            already, under TLS), bound to it: queues bytes for writability, keeping order and
            closes.
        on_backlog: called before each write that queues bytes, or ``None``.
        socket_send: the socket's ``send``.
    """

    __slots__ = ("on_backlog", "socket_send", "twisted_write")

    def __init__(self, connection: Any, on_backlog: Callable[[], None] | None) -> None:
        self.twisted_write: Callable[[bytes], None] = types.MethodType(
            type(connection).write, connection
        )
        self.on_backlog = on_backlog
        self.socket_send: Callable[[bytes], int] = connection.socket.send

    def send_now(self, data: bytes) -> None:
        """The socket's ``send``, as ``doWrite`` would; what it does not take is queued."""
        try:
            sent = self.socket_send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.queue(data)  # doWrite meets the error again and closes the connection
            return
        if sent != len(data):
            self.queue(data[sent:])

    def queue(self, data: bytes) -> None:
        """Queued already, or closing: Twisted's write keeps the order and the close."""
        if self.on_backlog is not None:
            self.on_backlog()
        self.twisted_write(data)


class _TurnEndSender(_SocketSender):
    """
    :func:`sender`'s writes to one ``tcp.Connection`` that wait for the end of the reactor
    turn: :meth:`write` holds bytes in the connection's own write buffer and queues the
    connection on its reactor's :class:`_SendQueue`, which calls :meth:`flush` once every
    event of the turn is handled.

    Attributes:
        connection: the connection, the key of the send queue's ``pending``.
        send_queue: its reactor's :class:`_SendQueue`; ``pending``, its dict.
        take_sendable, hold_if_open, hold_if_idle: Twisted's write buffer and close flags,
            bound once for this connection (see :mod:`twisted_lb._compat`).
    """

    __slots__ = (
        "connection",
        "hold_if_idle",
        "hold_if_open",
        "pending",
        "send_queue",
        "take_sendable",
    )

    def __init__(self, connection: Any, on_backlog: Callable[[], None] | None) -> None:
        super().__init__(connection, on_backlog)
        self.connection = connection
        self.send_queue = _send_queue(connection.reactor)
        self.pending = self.send_queue.pending
        self.take_sendable = compat.take_sendable(connection)
        self.hold_if_open = compat.hold_if_open(connection)
        self.hold_if_idle = compat.hold_if_idle(connection)

    def write(self, data: bytes) -> None:
        """Hold ``data`` for the end of the turn, or queue it behind older bytes or a close."""
        if self.connection in self.pending:
            if not self.hold_if_open(data):
                # As Twisted's write would: it drops bytes written after a half-close.
                self.twisted_write(data)
            return
        if self.hold_if_idle(data):
            self.send_queue.add(self.connection, self.flush)
            return
        self.queue(data)

    def flush(self) -> None:
        """Send what the connection holds; nothing when it is sent already or Twisted's."""
        buffered = self.take_sendable()
        if buffered is None:
            # Sent already (by doWrite, or another sender's flush), or Twisted has it: queued
            # behind older bytes or closing, it waits for writability; aborted, it is dropped.
            return
        self.send_now(buffered[0] if len(buffered) == 1 else b"".join(buffered))


def _tls_sender(
    transport: TLSMemoryBIOProtocol, on_backlog: Callable[[], None] | None, at_turn_end: bool
) -> Callable[[bytes], None]:
    """:func:`sender` for Twisted's TLS transport."""
    compat.flush_tls_aggregator(transport)
    write = functools.partial(TLSMemoryBIOProtocol.write, transport)
    lower = getattr(transport, "transport", None)
    if not isinstance(lower, tcp.Connection):
        return write
    # TLS hands each record to lower.write: that becomes a sending write with the backlog hook.
    # This must be an attribute of this one connection, which TLS owns (Twisted's
    # TLSMemoryBIOProtocol offers no other way to choose how its records are written).
    lower.write = sender(lower, on_backlog, at_turn_end=at_turn_end)  # type: ignore[method-assign]
    if on_backlog is None:
        return write
    backlog_hook = on_backlog
    app_buffered = compat.tls_app_buffered(transport)

    def send(data: bytes) -> None:
        if app_buffered():
            backlog_hook()
        write(data)

    return send


def lose_connection(transport: RelayTransport) -> None:
    """
    Close ``transport`` after what is written to it.

    Over TLS (``TLSMemoryBIOProtocol``), ``loseConnection`` sends close_notify and then waits
    for the peer's close_notify before closing the TCP connection under it. A peer that never
    sends one, or one whose reading the proxy has paused (a connection being closed reads no
    more requests), would hold the connection open for ever. As nginx does, and as RFC 8446
    §6.1 allows, the TCP connection is closed once our close_notify is written. When TLS is
    still waiting to send (a producer registered, data queued before the handshake), it is
    left to TLS.
    """
    transport.loseConnection()
    if isinstance(transport, TLSMemoryBIOProtocol):
        lower = transport.transport
        # If TLS still waits to send, it is left to close on its own.
        if lower is not None and not _tls_waiting(transport):
            lower.loseConnection()


_WRAPPING_PROTOCOL = compat.WRAPPING_PROTOCOL


def unwrap(protocol: IProtocol) -> None:
    """
    Let ``protocol``'s TCP or UNIX connection deliver to it directly, when a client endpoint
    connected it through Twisted's forwarding wrapper (``twisted.internet.endpoints``'
    ``_WrappingProtocol``, whose ``dataReceived`` and ``connectionLost`` only pass the call on:
    one Python call more for every read). Call it from ``connectionMade``. Anything else (a
    TLS transport, another wrapper, an already unwrapped protocol) is left as it is; so is a
    protocol that is half-closeable or takes file descriptors or TLS handshakes, which the
    wrapper forwards too.
    """
    transport = getattr(protocol, "transport", None)
    if _WRAPPING_PROTOCOL is None or not isinstance(transport, tcp.Connection):
        return
    wrapper = transport.protocol
    if (
        isinstance(wrapper, _WRAPPING_PROTOCOL)
        and compat.wrapped_protocol(wrapper) is protocol
        and not (
            IHalfCloseableProtocol.providedBy(protocol)
            or IFileDescriptorReceiver.providedBy(protocol)
            or IHandshakeListener.providedBy(protocol)
        )
    ):
        transport.protocol = protocol


@implementer(IPushProducer)
class ReadGate:
    """
    Pauses a transport's reading while any reason to pause remains.

    Twisted's ``pauseProducing``/``resumeProducing`` are not counted: one ``resumeProducing``
    undoes any number of pauses. The HTTP proxy pauses a client for several independent
    reasons (its backend connection's write buffer is full, a pipelined request waits its
    turn, no backend is connected yet), so it pauses through a gate, which resumes the
    transport only when the last reason is gone. As an ``IPushProducer`` the gate can be
    registered with another transport, whose full write buffer becomes the reason
    ``"consumer"``.

    Args:
        transport: the transport whose reading is gated.
    """

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: RelayTransport) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        """Stop reading for ``reason`` (once per reason; repeating it changes nothing)."""
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        """Drop ``reason``; reading resumes when no reason is left."""
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause("consumer")

    def resumeProducing(self) -> None:
        self.resume("consumer")

    def stopProducing(self) -> None:
        """
        The consumer is gone (Twisted calls this when the transport the gate was registered
        with loses its connection, before its protocol hears of it). Its pause no longer
        applies; whether the gated connection lives on is for the protocol to decide (the
        HTTP proxy may retry on a fresh backend connection), so nothing is closed here.
        """
        self.resume("consumer")


class _OneProtocolFactory(Factory):
    """Hands the endpoint the one protocol made for one connection attempt."""

    noisy = False

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> IProtocol:  # type: ignore[override]
        return self._protocol


def describe_error(reason: BaseException | None) -> str:
    """
    A short, stable text for why a backend connection failed, for logs and health checks:
    ``"connection refused"``, ``"TLS: certificate verify failed"`` (the last reason of
    OpenSSL's error queue), a service_identity name mismatch, or the error's own message.
    """
    if isinstance(reason, error.ConnectionRefusedError | ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, SSL.Error):
        queue = reason.args[0] if reason.args else None
        if isinstance(queue, list) and queue and isinstance(queue[-1], tuple):
            return f"TLS: {queue[-1][-1]}"
        return f"TLS: {reason}"
    if reason is None:
        return "unknown error"
    return str(reason).strip().rstrip(".") or type(reason).__name__


def connect_error_reason(reason: BaseException | None) -> int:
    """
    Why a connection attempt to a backend failed, as an index into
    :data:`twisted_lb.backend.CONNECT_ERROR_REASONS`: ``refused``, ``timeout``
    (``connect_timeout`` or the kernel's), ``tls`` (handshake or verification), ``dns`` (a
    failed name lookup) or ``other``. Bounded, for the metrics' ``reason`` label.
    """
    if isinstance(reason, error.ConnectionRefusedError | ConnectionRefusedError):
        return 0
    if isinstance(reason, ConnectTimeoutError | error.TCPTimedOutError | TimeoutError):
        return 1
    if isinstance(reason, SSL.Error | VerificationError):
        return 2
    if isinstance(reason, error.DNSLookupError):
        return 3
    return 4


def _connect_timed_out(result: object, timeout: float) -> Failure:
    return Failure(ConnectTimeoutError(f"no connection after {timeout:g} s (connect_timeout)"))


@implementer(IHandshakeListener)
class _TLSHandshake(Protocol):
    """
    Stands in for a protocol over TLS until the handshake is done, then hands the TLS
    transport to it: the protocol is connected only once the backend is verified, and no
    wrapper stays between the two afterwards.

    Args:
        protocol: the protocol to connect when the handshake completes.
        done: fired with ``protocol`` then, or failed with the reason the connection was lost
            before (a verification failure: ``OpenSSL.SSL.Error`` or
            ``service_identity.VerificationError``).
    """

    def __init__(self, protocol: IProtocol, done: Deferred[IProtocol]) -> None:
        self.protocol = protocol
        self.done = done

    def handshakeCompleted(self) -> None:
        tls: Any = self.transport
        tls.wrappedProtocol = self.protocol
        self.protocol.makeConnection(tls)
        if not self.done.called:
            self.done.callback(self.protocol)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)


def _connect_tls(
    reactor: IBalancerReactor, backend: Any, protocol: IProtocol, tls: Any
) -> Deferred[IProtocol]:
    """Connect over TLS with ``tls.endpoint(reactor, backend)``; fire after the handshake."""
    tcp_connect: Deferred[IProtocol] | None = None
    waiter: _TLSHandshake | None = None

    def cancel(result: Deferred[IProtocol]) -> None:
        if tcp_connect is not None and not tcp_connect.called:
            tcp_connect.cancel()
        elif waiter is not None and waiter.transport is not None:
            cast(Any, waiter.transport).abortConnection()

    handshaken: Deferred[IProtocol] = Deferred(cancel)
    waiter = _TLSHandshake(protocol, handshaken)
    try:
        endpoint = tls.endpoint(reactor, backend)
    except Exception:
        # Such as a TLSConfigError: no name to verify a unix: backend by.
        return fail()
    tcp_connect = endpoint.connect(_OneProtocolFactory(waiter))

    def failed(failure: Failure) -> None:
        if not handshaken.called:
            handshaken.errback(failure)

    tcp_connect.addErrback(failed)
    return handshaken


def connect(
    reactor: IBalancerReactor, backend: Any, protocol: IProtocol, timeout: float, tls: Any = None
) -> Deferred[IProtocol]:
    """
    Connect ``protocol`` to ``backend`` through its client endpoint, abandoning the attempt
    after ``timeout`` seconds on the reactor's clock.

    Args:
        tls: ``None`` for plain TCP, or the pool's :class:`twisted_lb.tls.ClientTLS`: the
            connection goes through ``tls.endpoint(reactor, backend)`` and counts as made only
            when the TLS handshake, with the backend's verification, has completed.

    Returns:
        A Deferred that fires when ``protocol`` is connected, or fails with the connect error
        (``ConnectionRefusedError``; ``twisted.internet.error.TimeoutError`` naming
        ``connect_timeout``, which covers the TLS handshake too; a TLS verification error).
        Cancelling it stops the attempt.
    """
    connecting: Deferred[IProtocol]
    if tls is None:
        connecting = backend.endpoint(reactor).connect(_OneProtocolFactory(protocol))
    else:
        connecting = _connect_tls(reactor, backend, protocol, tls)
    connecting.addTimeout(timeout, reactor, _connect_timed_out)
    return connecting
