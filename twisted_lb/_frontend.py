"""
What every frontend's protocol factory shares: the connection cap, the set of open
connections, and closing them when the balancer stops.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory

from twisted_lb.interfaces import IAccessLog
from twisted_lb.logs import EventAccessLog


class FrontendConnection(TypingProtocol):
    """A client connection of a frontend, as its factory sees it."""

    def close(self, ended: str) -> None:
        """Close it gracefully (after the current response in HTTP), recording why."""

    def abort(self, ended: str) -> None:
        """Close it at once, dropping what is buffered."""


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
        refused_connections: clients closed at once because of ``max_connections``.
        connections: the open client connections.

    Raises:
        ValueError: ``max_connections`` is not >= 1.
    """

    noisy = False

    def __init__(
        self,
        reactor: Any,
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
        self.refused_connections = 0
        self.connections: set[Any] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def admit(self, connection: FrontendConnection) -> bool:
        """
        Count a new client connection, or refuse it (False) when ``max_connections`` are
        already open.
        """
        if self.active_connections >= self.max_connections:
            self.refused_connections += 1
            return False
        self.active_connections += 1
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
