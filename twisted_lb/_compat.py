"""
The private names of other libraries that twisted-lb relies on, all in this one module.

Twisted, pyOpenSSL and pydantic keep some of what twisted-lb needs behind names that start
with ``_``. No deprecation cycle protects those names: a release may rename one, move it
or change what it means. So they are reached only through this module, and each one's entry says

- what it is,
- the versions it was checked against,
- why no public API does the job,
- what breaks if it goes.

tests/test_compat.py checks every entry against the installed libraries with real objects,
and fails naming the entry and the library's version. CI runs it on the newest Twisted and
on the oldest one pyproject.toml admits. A new use of a private name goes here, with a test.

Checked against: Twisted 26.4.0 and 26.10.0, pyOpenSSL 26.4.0, pydantic 2.14.4.

Import it as ``compat`` (``from twisted_lb import _compat as compat``), as ``_defaults`` is
imported. Never bind it as ``_compat``: attrs runs the methods it generates for a class in
that class's module globals, and its ``__repr__`` looks up attrs' own ``_compat`` there.
tests/test_compat.py checks this.

Some entries sit on the data path. For those, the module returns a function that the
caller binds once per connection. The function does the caller's whole decision and reads
the attributes directly, so a write makes no more calls than it did when the caller read
them itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from OpenSSL import SSL
from pydantic import BaseModel
from twisted.internet import endpoints, tcp
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web._newclient import ParseError

if TYPE_CHECKING:
    from pydantic._internal._model_construction import ModelMetaclass
    from twisted.internet.epollreactor import EPollReactor
else:
    ModelMetaclass = type(BaseModel)

__all__ = [
    "TWISTD_DEFAULT_PIDFILE",
    "WRAPPING_PROTOCOL",
    "HandshakeObservingTLS",
    "IOpenSSLTrustRoot",
    "ModelMetaclass",
    "ParseError",
    "V1Parser",
    "V2Parser",
    "endpoint_interface",
    "endpoint_port",
    "epoll_internals",
    "flush_tls_aggregator",
    "hold_if_idle",
    "hold_if_open",
    "native_connection",
    "native_context",
    "openssl_function",
    "queued",
    "queued_bytes",
    "send_when_idle",
    "take_sendable",
    "tls_app_buffered",
    "tls_handshake_done",
    "tls_holds_writes",
    "tls_producer",
    "tls_reason",
    "unix_endpoint_path",
    "unix_endpoint_with_mode",
    "unwrap_server_endpoint",
    "wrapped_protocol",
    "write_side",
]


# == Twisted ===================================================================================

# -- twisted.internet.abstract.FileDescriptor / tcp.Connection: the write buffer, close flags --
#
# What: FileDescriptor.write appends to ``_tempDataBuffer`` (a list) and adds to
# ``_tempDataLen``. doWrite joins that list into ``dataBuffer`` and sends from ``offset``.
# ``_writeDisconnecting`` is set by loseWriteConnection. ``_writeDisconnected`` is set once the
# queue after it is written and the write side is shut, and from then on write drops bytes.
# tcp.Connection's ``_aborting`` is set by abortConnection. ``dataBuffer`` and ``offset``
# have no leading ``_``, but they are undocumented too, so they count here as well.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: _transport.sender sends at once when nothing is queued (see its docstring).
# That takes knowing whether the connection has bytes queued or a close under way.
# ITransport offers neither. Its turn-end send adds to the buffer without startWriting,
# which no public method does.
# If it goes: sender could send bytes out of order or after a close, or hold bytes forever.
# The tests fail first (tests/test_compat.py, FileDescriptorWriteTests). queued_bytes and
# write_side are for the tests of the data paths, which watch the buffer and the half-close.


def queued(connection: tcp.Connection) -> bool:
    """Whether bytes written to ``connection`` wait in its write buffer, not yet sent."""
    c: Any = connection
    return bool(c._tempDataLen or c.offset != len(c.dataBuffer))


def queued_bytes(connection: tcp.Connection) -> int:
    """How many bytes written to ``connection`` wait in its write buffer, not yet sent."""
    c: Any = connection
    return int(len(c.dataBuffer) - c.offset + c._tempDataLen)


def write_side(connection: tcp.Connection) -> Literal["open", "closing", "shut"]:
    """
    ``connection``'s write side: ``"closing"`` once ``loseWriteConnection`` was called while
    bytes were queued, ``"shut"`` once they are written and the side is shut (a FIN; ``write``
    drops bytes from then on), else ``"open"``.
    """
    c: Any = connection
    if c._writeDisconnected:
        return "shut"
    return "closing" if c._writeDisconnecting else "open"


def send_when_idle(
    connection: tcp.Connection,
    send: Callable[[bytes], None],
    queue: Callable[[bytes], None],
) -> Callable[[bytes], None]:
    """
    For one connection, bound once: a write function. It calls ``send`` when
    ``connection.write`` would send now. It calls ``queue`` instead when bytes are queued, the
    connection is disconnecting or aborting, its write side is shut, or it is not connected.
    The check is inside the returned function, so an idle write costs no extra call.
    """
    c: Any = connection

    def write(data: bytes) -> None:
        if (
            c._tempDataLen
            or c.offset != len(c.dataBuffer)
            or c.disconnecting
            or c._writeDisconnected
            or not c.connected
            or c._aborting
        ):
            queue(data)
        else:
            send(data)

    return write


def hold_if_open(connection: tcp.Connection) -> Callable[[bytes], bool]:
    """
    For one connection, bound once: a function that adds bytes to ``connection``'s write
    buffer, as ``write`` does, without asking for writability, and returns ``True``. It does
    nothing and returns ``False`` when a close is under way or done: ``loseConnection``,
    ``loseWriteConnection`` (pending or done), ``abortConnection``, or not connected.
    Held bytes go out with the next ``doWrite``, or through :func:`take_sendable`.
    """
    c: Any = connection

    def hold(data: bytes) -> bool:
        if (
            c.disconnecting
            or c._writeDisconnecting
            or c._writeDisconnected
            or not c.connected
            or c._aborting
        ):
            return False
        # doWrite and take_sendable replace the list, so it is read at each call.
        c._tempDataBuffer.append(data)
        c._tempDataLen += len(data)
        return True

    return hold


def hold_if_idle(connection: tcp.Connection) -> Callable[[bytes], bool]:
    """
    Like :func:`hold_if_open`, but the function also refuses (``False``) while bytes are
    queued (:func:`queued`).
    """
    c: Any = connection

    def hold(data: bytes) -> bool:
        if (
            c._tempDataLen
            or c.offset != len(c.dataBuffer)
            or c.disconnecting
            or c._writeDisconnecting
            or c._writeDisconnected
            or not c.connected
            or c._aborting
        ):
            return False
        c._tempDataBuffer.append(data)
        c._tempDataLen += len(data)
        return True

    return hold


def take_sendable(connection: tcp.Connection) -> Callable[[], list[bytes] | None]:
    """
    For one connection, bound once: a function that takes out the bytes held in
    ``connection``'s write buffer (by ``write``, :func:`hold_if_open` or
    :func:`hold_if_idle`) for the caller to send, and leaves nothing held. It returns
    ``None`` and leaves them to Twisted when none are held, when older bytes are still being
    sent, or when a close is under way or done (as for :func:`hold_if_open`).
    """
    c: Any = connection

    def take() -> list[bytes] | None:
        if (
            not c._tempDataLen
            or c.offset != len(c.dataBuffer)
            or c.disconnecting
            or c._writeDisconnecting
            or c._writeDisconnected
            or not c.connected
            or c._aborting
        ):
            return None
        held: list[bytes] = c._tempDataBuffer
        c._tempDataBuffer = []
        c._tempDataLen = 0
        return held

    return take


# -- twisted.protocols.tls.TLSMemoryBIOProtocol: writes held back, the small-write aggregator --
#
# What: ``_producer`` is the producer registered with the TLS transport, or None.
# ``_appSendBuffer`` holds application bytes written before the handshake finished.
# BufferingTLSTransport's ``_aggregator`` joins small writes until the next reactor turn. Since
# 26.10 it is also swapped for a null aggregator once the connection is lost.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: whether TLS has written its close_notify yet, and the aggregation of small
# writes, have no public API. _transport.lose_connection and close_writing close the TCP
# connection under TLS once our close_notify is out. The data path's sender hands TLS whole
# responses and sends them in the same turn.
# If it goes: these read as "holding writes" (the safe side). Closes are then left to TLS, and
# the pacing hook runs at every write. A renamed _aggregator is not flushed, so a write may go
# out one turn late. (tls_producer, for the tests of the data paths, reads None.)


def tls_holds_writes(transport: TLSMemoryBIOProtocol) -> bool:
    """
    Whether ``transport`` still holds writes back, so that its close_notify is not written
    yet. That is when a producer is registered, or bytes wait for the handshake. If Twisted
    renames either attribute, the answer is ``True``.
    """
    return getattr(transport, "_producer", True) is not None or bool(
        getattr(transport, "_appSendBuffer", True)
    )


def tls_app_buffered(transport: TLSMemoryBIOProtocol) -> Callable[[], object]:
    """
    For one transport, bound once: a function whose result is true while ``transport`` holds
    application bytes back until its handshake is done (it returns the buffer itself, which
    saves a ``bool()`` per write). If Twisted renamed the attribute, the result is always
    true. ``_appSendBuffer`` is set when the transport is connected, and is reassigned but
    never deleted, so the fast function reads it directly.
    """
    t: Any = transport
    if not hasattr(transport, "_appSendBuffer"):  # not connected yet, or renamed
        return lambda: getattr(t, "_appSendBuffer", True)
    return lambda: t._appSendBuffer


def flush_tls_aggregator(transport: TLSMemoryBIOProtocol) -> None:
    """Write now what a ``BufferingTLSTransport`` holds until the next turn, if anything."""
    aggregator = getattr(transport, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()


# -- twisted.protocols.tls.TLSMemoryBIOProtocol: the end of the handshake, and why it failed ---
#
# What: ``_checkHandshakeStatus`` moves the handshake on after each read, and sets
# ``_handshakeDone`` once it completes. ``_reason`` is the Failure the TLS connection ended
# with (a handshake error, for one), or None.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: the public IHandshakeListener.handshakeCompleted goes to the wrapped protocol,
# not to the transport. The TLS error that ended a connection reaches connectionLost only as
# ConnectionLost. tls.py counts handshakes, and why they failed, for every frontend protocol
# without changing those protocols.
# If it goes: the counts of completed and failed handshakes (metrics) stay at 0. Failures are
# counted as "closed" instead of by their OpenSSL reason. tls_handshake_done, for the tests of
# the data paths, reads False.


class HandshakeObservingTLS(BufferingTLSTransport):
    """
    Twisted's TLS transport (with its aggregation of small writes). It calls
    :meth:`handshake_completed` once, when its handshake completes.
    """

    _handshake_reported = False

    def handshake_completed(self) -> None:
        """Called once, when the handshake has completed; for subclasses."""

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()  # type: ignore[no-untyped-call]
        if self._handshakeDone and not self._handshake_reported:
            self._handshake_reported = True
            self.handshake_completed()


def tls_handshake_done(transport: TLSMemoryBIOProtocol) -> bool:
    """Whether ``transport``'s handshake has completed (``False`` if Twisted renamed it)."""
    return bool(getattr(transport, "_handshakeDone", False))


def tls_producer(transport: TLSMemoryBIOProtocol) -> object:
    """
    The producer registered with ``transport``, as Twisted keeps it (wrapped in a
    ``_ProducerMembrane``), or ``None``.
    """
    return getattr(transport, "_producer", None)


def tls_reason(transport: TLSMemoryBIOProtocol) -> Failure | None:
    """Why ``transport``'s TLS connection ended (its OpenSSL error, say), or ``None``."""
    reason: Failure | None = getattr(transport, "_reason", None)
    return reason


# -- twisted.internet._sslverify.IOpenSSLTrustRoot --------------------------------------------
#
# What: the interface of what trustRootFromCertificates and platformTrust return, and what
# optionsForClientTLS takes as trustRoot.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: twisted.internet.ssl returns such objects but does not export the interface.
# tls.py only needs it for its annotations.
# If it goes: importing twisted_lb fails (tests/test_compat.py names it).

# -- twisted.protocols.haproxy._v1parser.V1Parser, _v2parser.V2Parser -------------------------
#
# What: Twisted's parsers of the PROXY protocol header, v1 (text) and v2 (binary).
# ``feed(data)`` returns ``(ProxyInfo | None, remaining bytes)``.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: the public haproxy: endpoint connects the protocol before the header is
# parsed (see docs/design.rst, Decisions). _frontend.ProxyHeaderFactory reads the header
# first, with these parsers.
# If it goes: importing twisted_lb fails, and so do haproxy: listeners. The parsers are
# small enough to copy in.

# -- twisted.web._newclient.ParseError -------------------------------------------------------
#
# What: the error Agent raises, inside ResponseFailed, for a response it cannot parse.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: twisted.web.client re-exports ResponseFailed but not ParseError.
# If it goes: importing twisted_lb fails. With the class renamed instead, an HTTP health check
# logs a bad response by its bare message instead of "bad HTTP response (...)".

# -- twisted.internet.endpoints: _WrappingProtocol --------------------------------------------
#
# What: the protocol that client endpoints put between a TCP connection and the protocol
# they connect. It passes each call on to ``_wrappedProtocol``.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: no public API connects a protocol to a client endpoint's connection directly.
# _transport.unwrap steps the wrapper out, saving one Python call per read.
# If it goes: WRAPPING_PROTOCOL is None and unwrap does nothing (each read costs one call
# more).

#: ``twisted.internet.endpoints._WrappingProtocol``, or ``None`` if Twisted has no such class.
WRAPPING_PROTOCOL: type | None = getattr(endpoints, "_WrappingProtocol", None)


def wrapped_protocol(wrapper: object) -> object:
    """The protocol a ``_WrappingProtocol`` passes calls to, or ``None``."""
    return getattr(wrapper, "_wrappedProtocol", None)


# -- twisted.internet.endpoints: what a server endpoint was built with -------------------------
#
# What: the arguments that serverFromString's endpoints keep. _TCPServerEndpoint (tcp:,
# tcp6:) has ``_port`` and ``_interface``; SSL4ServerEndpoint (ssl:) has ``_port``;
# UNIXServerEndpoint (unix:) has ``_reactor``, ``_address``, ``_backlog``, ``_mode`` and
# ``_wantPID``; the haproxy: endpoint (_WrapperServerEndpoint) has ``_wrappedEndpoint``.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: IStreamServerEndpoint has only listen(). config checks ports and warns about
# admin listeners on public interfaces without listening. admin gives a unix: socket its
# mode and removes a stale one.
# If it goes: endpoint_port and endpoint_interface return None (the config check warns that
# it cannot see the address, and checks no port range). The unix: functions raise
# AttributeError, so the admin listener cannot start.


def unwrap_server_endpoint(endpoint: object) -> object:
    """The endpoint a wrapping server endpoint (``haproxy:``) listens through, or ``endpoint``."""
    return getattr(endpoint, "_wrappedEndpoint", endpoint)


def endpoint_port(endpoint: object) -> object:
    """The port a ``tcp:``/``ssl:`` server endpoint was given, or ``None``."""
    return getattr(endpoint, "_port", None)


def endpoint_interface(endpoint: object) -> object:
    """The interface a ``tcp:`` server endpoint was given (``""`` for all), or ``None``."""
    return getattr(endpoint, "_interface", None)


def unix_endpoint_path(endpoint: endpoints.UNIXServerEndpoint) -> str:
    """The socket file a ``unix:`` server endpoint listens on."""
    path = cast(Any, endpoint)._address
    return path.decode() if isinstance(path, bytes) else str(path)


def unix_endpoint_with_mode(
    endpoint: endpoints.UNIXServerEndpoint, mode: int
) -> endpoints.UNIXServerEndpoint:
    """A copy of a ``unix:`` server endpoint, giving its socket ``mode``."""
    e = cast(Any, endpoint)
    return endpoints.UNIXServerEndpoint(
        e._reactor, e._address, backlog=e._backlog, mode=mode, wantPID=e._wantPID
    )


# -- twisted.internet.epollreactor.EPollReactor: the poller and the descriptors ----------------
#
# What: ``_poller`` is the epoll object. ``_selectables`` maps each fd to its descriptor.
# ``_doReadOrWrite(selectable, fd, event)`` handles one event (from _PollLikeMixin). All three
# are set in __init__ and never replaced.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: twisted_lb.reactor's doPoll does the parent's work, without callWithLogger
# (docs/design.rst, Proposed upstream changes). A reactor has no public API for one poll.
# If it goes: the twistd lb reactor fails at its first poll. twistd --reactor=epoll still runs
# twisted-lb.


def epoll_internals(
    reactor: EPollReactor,
) -> tuple[Any, dict[int, Any], Callable[[Any, int, int], None]]:
    """``reactor``'s epoll object, its fd-to-descriptor map and its event handler, to bind once."""
    r: Any = reactor
    return r._poller, r._selectables, r._doReadOrWrite


# -- twisted.scripts._twistd_unix.ServerOptions: the default --pidfile -------------------------
#
# What: the value that twistd's ``pidfile`` option has when none is given.
# Checked: Twisted 26.4.0, 26.10.0.
# Why private: the twistd options are in a private module. tap.py only needs to tell "not
# given" from a --pidfile someone chose.
# If it goes (or changes): twistd -n lb writes ./twistd.pid again.

#: twistd's default ``--pidfile``.
TWISTD_DEFAULT_PIDFILE = "twistd.pid"


# == pyOpenSSL =================================================================================

# -- OpenSSL._util.lib, Context._context and Connection._ssl -----------------------------------
#
# What: pyOpenSSL's cffi binding of libssl (``OpenSSL._util.lib``). It has
# SSL_CTX_set1_curves_list (OpenSSL's older name for SSL_CTX_set1_groups_list) and
# ERR_clear_error. ``Context._context`` is the SSL_CTX* that a Context wraps, and
# ``Connection._ssl`` the SSL* of a Connection (for the tests: SSL_session_reused).
# Checked: pyOpenSSL 26.4.0.
# Why private: pyOpenSSL does not wrap SSL_CTX_set1_groups_list, and its set_tmp_ecdh sets
# only one curve. tls.py sets a frontend's TLS groups (``curves``).
# If it goes: openssl_function and native_context return None. ``curves`` then gives a
# clear config error naming this pyOpenSSL; without ``curves`` nothing changes.


def openssl_function(name: str) -> Any:
    """
    The function ``name`` of pyOpenSSL's private OpenSSL bindings (``OpenSSL._util.lib``),
    or ``None`` when this pyOpenSSL lacks the module or the function.
    """
    try:
        from OpenSSL import _util
    except ImportError:
        return None
    return getattr(getattr(_util, "lib", None), name, None)


def native_context(context: SSL.Context) -> Any:
    """The ``SSL_CTX*`` that ``context`` wraps (``Context._context``), or ``None``."""
    return getattr(context, "_context", None)


def native_connection(connection: SSL.Connection) -> Any:
    """The ``SSL*`` that ``connection`` wraps (``Connection._ssl``), or ``None``."""
    return getattr(connection, "_ssl", None)


# == pydantic ==================================================================================

# -- pydantic._internal._model_construction.ModelMetaclass -----------------------------------
#
# What: the metaclass of BaseModel.
# Checked: pydantic 2.14.4 (the same since 2.0).
# Why private: config's models take their fields by position as well (``Backend("a:1", 2)``),
# which needs a metaclass __call__ override. A metaclass of a BaseModel subclass must derive
# from BaseModel's. At run time it is taken as ``type(BaseModel)``, so the private module
# is imported only by the type checker.
# If it goes: at run time nothing changes. If pydantic moves the module, mypy fails; if it
# changes how models are built, config's tests fail.
