"""
What every frontend's protocol factory shares: the connection cap, the set of open
connections, and closing them when the balancer stops.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory


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


class FrontendFactory(Factory):
    """
    Base of :class:`~twisted_lb.tcp.TCPRelayFactory` and
    :class:`~twisted_lb.http.proxy.HTTPProxyFactory`.

    Args:
        reactor: the reactor every connection and timer of this frontend uses.
        max_connections: concurrent client connections; past it a new client is closed at once
            and counted in ``refused_connections``.
        frontend: the frontend's name, for logs.
        access_log: whether to log one access event per connection (L4) or request (L7).

    Attributes:
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
    settings: tuple[str, ...] = ("max_connections", "access_log")

    def __init__(
        self, reactor: Any, *, max_connections: int, frontend: str, access_log: bool = True
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.reactor = reactor
        self.access_log = access_log
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
