"""
What every frontend's protocol factory shares: the connection cap, the set of open
connections, and closing them when the balancer stops; and the PROXY protocol header read
before a ``haproxy:`` listener's connection reaches the frontend's protocol.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, ClassVar, cast
from typing import Protocol as TypingProtocol

from mypy_extensions import mypyc_attr
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from twisted_lb._compat import V1Parser, V2Parser
from twisted_lb._transport import lose_connection
from twisted_lb.http.headers import TrustedProxies
from twisted_lb.interfaces import IAccessLog, IBalancerReactor
from twisted_lb.logs import EventAccessLog

_log = Logger()


class FrontendConnection(TypingProtocol):
    """A client connection of a frontend, as its factory sees it."""

    def close(self, ended: str) -> None:
        """Close it gracefully (after the current response in HTTP), recording why."""

    def abort(self, ended: str) -> None:
        """Close it at once, dropping what is buffered."""

    def drain(self) -> None:
        """
        Its frontend was removed by a reload: finish what is under way (an HTTP response,
        a relayed TCP stream, a tunnel), then close, taking nothing new.
        """


# Compiled by mypyc (hatch_build.py), a class may be subclassed by Python classes only when it
# says so: applications may derive their own frontends from this one.
@mypyc_attr(allow_interpreted_subclasses=True)
class FrontendFactory(Factory):
    """
    Base of :class:`~twisted_lb.tcp.TCPRelayFactory` and
    :class:`~twisted_lb.http.proxy.HTTPProxyFactory`.

    Args:
        reactor: the reactor every connection and timer of this frontend uses.
        max_connections: concurrent client connections; past it a new client is closed at once
            and counted in ``refused_connections``.
        frontend: the frontend's name, for logs.
        access_log: where the access line of each connection (L4) or request (L7) goes:
            ``True`` (the default) for ``twisted.logger`` events
            (:class:`~twisted_lb.logs.EventAccessLog`), ``False`` or ``None`` for none, or an
            :class:`~twisted_lb.interfaces.IAccessLog` such as
            :class:`~twisted_lb.logs.AccessLog`.

    Attributes:
        access_log: the access log, or ``None`` when off.
        active_connections: client connections open now.
        accepted_connections: client connections admitted, ever.
        refused_connections: clients closed at once because of ``max_connections``.
        connections: the open client connections.
        bytes_in: bytes received from clients, counted when a connection (L4) or an
            exchange (L7: request head and body, tunnel bytes) ends.
        bytes_out: bytes sent to clients, counted likewise.
        responses: HTTP responses sent by status class, ``responses[0]`` the 1xx, ...,
            ``responses[4]`` the 5xx, the balancer's own errors (400, 502, 503, ...)
            included; requests whose client left before the response (499) are not
            counted. Always zeros in L4.

    Raises:
        ValueError: ``max_connections`` is not >= 1.
    """

    noisy = False

    #: The attributes :meth:`update_settings` copies: what the config sets, not live state.
    #: A subclass adds its own; a new setting must be listed to follow a reload.
    settings: ClassVar[tuple[str, ...]] = ("max_connections", "access_log")

    def __init__(
        self,
        reactor: IBalancerReactor,
        *,
        max_connections: int,
        frontend: str,
        access_log: bool | IAccessLog | None = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.reactor = reactor
        self.access_log: IAccessLog | None = (
            (EventAccessLog() if access_log else None)
            if isinstance(access_log, bool)
            else access_log
        )
        self.max_connections = max_connections
        self.frontend = frontend
        self.active_connections = 0
        self.accepted_connections = 0
        self.refused_connections = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.responses = [0] * 5
        self.connections: set[Any] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def update_settings(self, other: FrontendFactory) -> None:
        """
        Take ``other``'s settings (:attr:`settings`), keeping this factory's connections
        and counters: how a reload changes a frontend in place. New connections, and the
        next request or timer of open ones, use the new settings; the exchange in flight
        keeps its pool and backend.

        Args:
            other: a factory of the same class, built from the new config.
        """
        for name in self.settings:
            setattr(self, name, getattr(other, name))

    def admit(self, connection: FrontendConnection) -> bool:
        """
        Count a new client connection, or refuse it (False) when ``max_connections`` are
        already open.
        """
        if self.active_connections >= self.max_connections:
            self.refused_connections += 1
            return False
        self.active_connections += 1
        self.accepted_connections += 1
        self.connections.add(connection)
        return True

    def forget(self, connection: FrontendConnection) -> None:
        """Stop counting a connection that :meth:`admit` counted."""
        self.active_connections -= 1
        self.connections.discard(connection)

    def close_connections(self) -> Deferred[None]:
        """
        Close every client connection gracefully.

        Returns:
            A Deferred that fires with ``None`` once every connection of this factory is gone.
        """
        for connection in list(self.connections):
            connection.close("shutdown")
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def abort_connections(self) -> None:
        """Abort every client connection at once, dropping what is buffered."""
        for connection in list(self.connections):
            connection.abort("shutdown")

    def connection_finished(self) -> None:
        """Called by each connection when it is completely gone."""
        if not self.connections and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)


# -- the PROXY protocol ------------------------------------------------------------------------


#: The longest address block and TLVs a v2 header may announce (its 15th and 16th bytes), in
#: bytes; a longer one is refused before it is buffered. proxy-protocol.txt §2 designs both
#: formats to fit in 536 bytes (216 for the AF_UNIX addresses, the longest); 4 KiB leaves room
#: for TLVs (PP2_TYPE_SSL with a client certificate's names, cloud balancers' own).
MAX_V2_LENGTH = 4096


class ProxyHeaderFactory(Factory):
    """
    Reads the PROXY protocol header (v1 or v2, https://www.haproxy.org/download/3.2/doc/
    proxy-protocol.txt) of each connection of a ``haproxy:`` listener, then hands the
    connection to ``wrapped``, whose protocol is built with the client address the header
    carries: every use of the address (forwarding fields, access log, strategy) sees that
    one, as HAProxy's ``accept-proxy`` dictates "the layer 3/4 addresses of the incoming
    connection to be used everywhere an address is used".

    Twisted's own ``haproxy:`` wrapper connects its protocol at once and answers ``getPeer()``
    with the header's address once parsed: a protocol that reads the address when connected,
    or the tcp relay that picks its backend then, would see the balancer in front. Here the
    protocol is built and connected only once the header is parsed, and the wrapper then
    steps out of the way: Twisted's TCP and UNIX connections and its TLS transport deliver to
    the protocol directly (so the hot path and the TLS and lingering-close helpers of
    :mod:`twisted_lb._transport` are as on any listener). The protocol's transport is the
    connection's own, whose ``getPeer()`` is the balancer in front; the client address is
    the one ``buildProtocol`` got. The header is parsed by Twisted's own parsers.

    - A peer (the connection's own address) outside ``allowed`` is refused at once: its
      connection is closed and a warning names it, before any byte is read and before any
      backend is contacted (HAProxy's ``tcp-request connection reject`` on ``src``, which
      sees the real address). An empty ``allowed`` accepts any peer, with one warning when
      the factory starts.
    - A connection whose first bytes are not a valid header, a v2 header that announces more
      than :data:`MAX_V2_LENGTH` bytes, or no header within ``timeout`` seconds: the
      connection is closed, with an info event.
    - The LOCAL command (v2) and ``UNKNOWN`` (v1), which the balancer in front sends for its
      own health checks, keep the connection's own address (proxy-protocol.txt §2.1, §2.2).
    - A connection waiting for its header counts toward the frontend's ``max_connections``,
      and is closed when the frontend closes its connections.

    Args:
        wrapped: the factory that gets each connection after its header: the frontend's
            factory, or the ``TLSMemoryBIOFactory`` around it (the header then comes before
            the TLS handshake).
        frontend: the frontend's factory, for its reactor, connection count and name.
        allowed: the peers (addresses and networks, as ``trusted_proxies``) whose header is
            believed; empty for any.
        allowed_key: the config key ``allowed`` comes from, for the logs.
        timeout: seconds a connection may take to send its header.

    Raises:
        ValueError: ``timeout`` is not > 0, or an entry of ``allowed`` is no IP network.
    """

    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        frontend: FrontendFactory,
        *,
        allowed: Sequence[str] = (),
        allowed_key: str = "proxy_protocol_from",
        timeout: float = 60.0,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 s, not {timeout}")
        self.wrapped = wrapped
        self.frontend = frontend
        self.allowed = TrustedProxies(allowed)
        self.allowed_key = allowed_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ProxyHeaderFactory {self.frontend.frontend}>"

    def doStart(self) -> None:
        super().doStart()  # type: ignore[no-untyped-call]
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()
        super().doStop()  # type: ignore[no-untyped-call]

    def startFactory(self) -> None:
        if not self.allowed:
            _log.warn(
                "frontend {frontend} accepts the PROXY protocol from any peer: any client "
                "that reaches its haproxy: listeners can claim any address; set "
                "proxy_protocol_from to the balancers in front",
                frontend=self.frontend.frontend,
            )

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _ProxyHeaderProtocol(self, addr)


def _format_peer(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return "-"
    port = getattr(address, "port", "")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_address(source: IAddress | None) -> IAddress | None:
    """
    The header's source address with its IP checked and written the usual way (``::1``, not
    v2's ``0:0:0:0:0:0:0:1``), or the source as given when it is not an IP one. ``ValueError``
    when the header's text is no IP (Twisted's v1 parser takes any word).
    """
    if not isinstance(source, IPv4Address | IPv6Address):
        return source
    ip = ipaddress.ip_address(source.host)
    if isinstance(ip, ipaddress.IPv4Address):
        return IPv4Address("TCP", str(ip), source.port)
    return IPv6Address("TCP", str(ip), source.port)


class _ProxyHeaderProtocol(Protocol):
    """One connection of a :class:`ProxyHeaderFactory` until its header is read."""

    def __init__(self, factory: ProxyHeaderFactory, peer: IAddress | None) -> None:
        self.header_factory = factory
        self.peer = peer
        self.buffer = b""
        self.timer: IDelayedCall | None = None
        self.counted = False
        self.wrapped: IProtocol | None = None

    def connectionMade(self) -> None:
        factory = self.header_factory
        frontend = factory.frontend
        transport: Any = self.transport
        allowed = factory.allowed
        if allowed and getattr(self.peer, "host", None) not in allowed:
            _log.warn(
                "frontend {frontend}: refused a connection from {peer}: not in "
                "{key}, so its PROXY protocol header is not believed",
                frontend=frontend.frontend,
                peer=_format_peer(self.peer),
                key=factory.allowed_key,
            )
            lose_connection(transport)
            return
        if not frontend.admit(self):
            _log.warn(
                "frontend {frontend}: refused {client}: {limit} connections already open "
                "(max_connections)",
                frontend=frontend.frontend,
                client=_format_peer(self.peer),
                limit=frontend.max_connections,
            )
            lose_connection(transport)
            return
        self.counted = True
        self.timer = frontend.reactor.callLater(factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        wrapped = self.wrapped
        if wrapped is not None:  # a transport this wrapper could not step out of
            wrapped.dataReceived(data)
            return
        if self.timer is None:
            return  # closing
        buffer = self.buffer = self.buffer + data
        parser: V1Parser | V2Parser
        if buffer[:1] == b"\r":
            if len(buffer) < 16:
                if not V2_SIGNATURE.startswith(buffer[:12]):
                    self._refuse("no PROXY protocol header")
                return
            if buffer[:12] != V2_SIGNATURE or buffer[12] & 0xF0 != 0x20:
                self._refuse("no PROXY protocol header")
                return
            if int.from_bytes(buffer[14:16], "big") > MAX_V2_LENGTH:
                self._refuse(f"PROXY protocol v2 header announces more than {MAX_V2_LENGTH} bytes")
                return
            parser = V2Parser()
        elif b"PROXY ".startswith(buffer[:6]):
            parser = V1Parser()
        else:
            self._refuse("no PROXY protocol header")
            return
        try:
            # A new parser each time, fed all that came: Twisted's parsers buffer too.
            info, remaining = parser.feed(buffer)
            if info is None:
                return  # more to come: at most 107 bytes (v1) or the length v2 gives
            source = _client_address(info.source)
        except Exception:  # Twisted's parsers raise InvalidProxyHeader, and ValueError too
            self._refuse("malformed PROXY protocol header")
            return
        self.buffer = b""
        self._hand_over(source if source is not None else self.peer, remaining or b"")

    def _hand_over(self, client: IAddress | None, remaining: bytes) -> None:
        """Build the frontend's protocol for ``client``, and give it the connection."""
        factory = self.header_factory
        self._stop()
        protocol = factory.wrapped.buildProtocol(cast(IAddress, client))
        transport: Any = self.transport
        if protocol is None:
            transport.abortConnection()
            return
        # Counted by the frontend's protocol from now on (it admits itself when connected).
        self.counted = False
        factory.frontend.forget(self)
        if isinstance(transport, tcp.Connection) and transport.protocol is self:
            transport.protocol = protocol
        elif isinstance(transport, ProtocolWrapper) and transport.wrappedProtocol is self:
            transport.wrappedProtocol = protocol  # a wrapping transport (TLS, in embedders)
        else:
            self.wrapped = protocol  # any other transport (test fakes): pass reads on
        protocol.makeConnection(transport)
        if remaining and not getattr(transport, "disconnecting", False):
            protocol.dataReceived(remaining)

    def _refuse(self, why: str) -> None:
        _log.info(
            "frontend {frontend}: closed a connection from {peer}: {why}",
            frontend=self.header_factory.frontend.frontend,
            peer=_format_peer(self.peer),
            why=why,
        )
        self.close("PROXY protocol")

    def _timed_out(self) -> None:
        self.timer = None
        self._refuse(f"no PROXY protocol header within {self.header_factory.timeout:g} s")

    def _stop(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def close(self, ended: str) -> None:
        """Close it (nothing was relayed yet, so nothing is owed but the close)."""
        self._stop()
        if self.transport is not None:
            lose_connection(cast(Any, self.transport))

    def drain(self) -> None:
        """Its frontend was removed while it waits for its header: nothing started, close it."""
        self.close("drain")

    def abort(self, ended: str) -> None:
        """Abort the connection."""
        self._stop()
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            return
        if self.counted:
            self.counted = False
            frontend = self.header_factory.frontend
            frontend.forget(self)
            frontend.connection_finished()


#: The 12 bytes every PROXY v2 header starts with (proxy-protocol.txt §2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
