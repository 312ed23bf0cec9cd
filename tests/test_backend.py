"""
Backend addresses, endpoints and state.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb._address import Address, parse_address
from twisted_lb.backend import Backend, BackendState, ConnectionInfo


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """``host:port``, ``[v6]:port`` and ``unix:/path`` parse to their parts."""
        self.assertEqual(parse_address("127.0.0.1:9001"), Address("tcp", "127.0.0.1", 9001))
        self.assertEqual(parse_address("app.internal:80"), Address("tcp", "app.internal", 80))
        self.assertEqual(parse_address("[::1]:9001"), Address("tcp", "::1", 9001))
        self.assertEqual(parse_address("unix:/run/a.sock"), Address("unix", path="/run/a.sock"))

    def test_round_trip(self) -> None:
        """``str()`` gives back the canonical text."""
        for text in ("127.0.0.1:9001", "[::1]:9001", "unix:/run/a.sock", "db:5432"):
            self.assertEqual(str(parse_address(text)), text)

    def test_errors(self) -> None:
        """Each malformed address raises ValueError with a message saying which form to use."""
        cases = {
            "127.0.0.1": "is not 'host:port'",
            "::1:80": "write IPv6 addresses in brackets",
            "[::1]9001": "is not '[v6]:port'",
            "[nope]:80": "is not an IPv6 address",
            "host:0": "is not a number from 1 to 65535",
            "host:70000": "is not a number from 1 to 65535",
            "host:http": "is not a number from 1 to 65535",
            "unix:": "needs a path",
            ":80": "is not 'host:port'",
        }
        for text, message in cases.items():
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_address(text)
            self.assertIn(message, str(raised.exception), text)

    @given(st.text(max_size=40))
    def test_arbitrary_text(self, text: str) -> None:
        """Any text either parses or raises ValueError; nothing else escapes."""
        try:
            address = parse_address(text)
        except ValueError:
            return
        self.assertIn(address.kind, ("tcp", "unix"))

    @given(st.integers(1, 65535), st.ip_addresses())
    def test_ip_round_trip(self, port: int, ip: object) -> None:
        """Every IP literal and port round-trips through the text form."""
        text = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
        self.assertEqual(str(parse_address(text)), text)


class BackendTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A backend is named after its address, weighs 1, is a primary and starts UP."""
        backend = Backend.from_address("127.0.0.1:9001")
        self.assertEqual(
            (backend.name, backend.weight, backend.backup, backend.state),
            ("127.0.0.1:9001", 1, False, BackendState.UP),
        )
        self.assertEqual(
            (backend.active_connections, backend.total_connections, backend.connect_failures),
            (0, 0, 0),
        )

    def test_weight(self) -> None:
        """A weight below 1 is refused."""
        with self.assertRaises(ValueError):
            Backend.from_address("127.0.0.1:9001", weight=0)

    def test_identity(self) -> None:
        """Two backends with one address are two backends."""
        self.assertNotEqual(Backend.from_address("h:1"), Backend.from_address("h:1"))

    def test_endpoints(self) -> None:
        """Each address form connects through the matching client endpoint."""
        reactor = MemoryReactorClock()
        cases = {
            "127.0.0.1:1": TCP4ClientEndpoint,
            "[::1]:1": TCP6ClientEndpoint,
            "app.internal:1": HostnameEndpoint,
            "unix:/run/a.sock": UNIXClientEndpoint,
        }
        for text, kind in cases.items():
            self.assertIsInstance(Backend.from_address(text).endpoint(reactor), kind, text)

    def test_connection_info(self) -> None:
        """``client_host`` is the IP of IP clients and None otherwise."""
        from twisted.internet.address import IPv4Address, UNIXAddress

        self.assertEqual(
            ConnectionInfo(IPv4Address("TCP", "192.0.2.7", 1)).client_host, "192.0.2.7"
        )
        self.assertIsNone(ConnectionInfo(UNIXAddress("/s")).client_host)
        self.assertIsNone(ConnectionInfo().client_host)
