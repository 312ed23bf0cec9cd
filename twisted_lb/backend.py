"""
Backends: one server behind the balancer, its state and its live counters.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint

from twisted_lb._address import Address, parse_address


class BackendState(enum.Enum):
    """
    Where a backend stands, as in HAProxy's server states.

    - ``UP``: takes new connections.
    - ``DOWN``: failed its health checks; takes none.
    - ``DRAINING``: takes no new connections; established ones finish.
    - ``MAINT``: taken out by the operator; takes none.
    """

    UP = "UP"
    DOWN = "DOWN"
    DRAINING = "DRAINING"
    MAINT = "MAINT"


@attrs.frozen
class ConnectionInfo:
    """
    What a strategy may know of the client it is choosing a backend for.

    Attributes:
        client_address: the client's transport address (``IPv4Address``, ``IPv6Address``,
            ``UNIXAddress``), or ``None`` when unknown.
    """

    client_address: IAddress | None = None

    @property
    def client_host(self) -> str | None:
        """The client's IP as text, or ``None`` for non-IP clients (UNIX sockets)."""
        host = getattr(self.client_address, "host", None)
        return host if isinstance(host, str) else None


@attrs.define(eq=False, repr=False)
class Backend:
    """
    One backend server and its live state.

    Equality is identity: two backends with the same address in two pools are two backends.

    Attributes:
        address: where the backend listens.
        name: shown in logs and summaries; defaults to the address.
        weight: relative share of new connections, >= 1.
        backup: used only while no primary backend of its pool is UP.
        state: see :class:`BackendState`. Only ``UP`` backends are picked.
        active_connections: client connections (L4) currently leased to this backend.
        total_connections: leases ever taken.
        connect_failures: connection attempts that were refused or timed out.
        bytes_in: bytes relayed from clients to this backend.
        bytes_out: bytes relayed from this backend to clients.
    """

    address: Address
    name: str = ""
    weight: int = 1
    backup: bool = False
    state: BackendState = BackendState.UP
    active_connections: int = 0
    total_connections: int = 0
    connect_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.name:
            self.name = str(self.address)
        if self.weight < 1:
            raise ValueError(f"backend {self.name}: weight must be >= 1, not {self.weight}")

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.address} {self.state.value}>"

    @classmethod
    def from_address(cls, address: str, **kwargs: Any) -> Backend:
        """
        Make a backend from an address string.

        Args:
            address: ``host:port``, ``[v6]:port`` or ``unix:/path``.
            **kwargs: the other attributes (``name``, ``weight``, ``backup``, ``state``).

        Raises:
            ValueError: the address or weight is invalid.
        """
        return cls(parse_address(address), **kwargs)

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """
        The client endpoint that connects to this backend.

        IP literals connect directly (``TCP4ClientEndpoint``/``TCP6ClientEndpoint``), names go
        through ``HostnameEndpoint`` (resolved on each connect), ``unix:`` through
        ``UNIXClientEndpoint``. Connect timeouts are the caller's to enforce (the relay cancels
        the attempt), so that they run on the injected clock.

        Args:
            reactor: provides ``IReactorTCP``/``IReactorUNIX`` and ``IReactorTime``.
        """
        address = self.address
        if address.kind == "unix":
            return UNIXClientEndpoint(reactor, address.path)
        version = address.ip_version
        if version == 4:
            return TCP4ClientEndpoint(reactor, address.host, address.port)
        if version == 6:
            return TCP6ClientEndpoint(reactor, address.host, address.port)
        return HostnameEndpoint(reactor, address.host, address.port)
