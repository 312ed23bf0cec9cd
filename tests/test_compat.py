"""
twisted_lb._compat: each private name of Twisted, pyOpenSSL and pydantic that twisted-lb relies
on still exists, has the shape it is used with, and behaves as relied upon, checked with the
real classes (real loopback TCP sockets, real TLS handshakes, Twisted's own parsers). A failure
names the entry and the library's version, so that a new release's breakage reads as such.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import OpenSSL
import pydantic
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from pydantic import BaseModel
from twisted.internet import endpoints, epollreactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from zope.interface import implementer

import twisted
from twisted_lb import _compat

TWISTED = f"Twisted {twisted.__version__}"
PYOPENSSL = f"pyOpenSSL {OpenSSL.__version__}"
PYDANTIC = f"pydantic {pydantic.VERSION}"


@contextmanager
def entry(name: str, library: str) -> Iterator[None]:
    """Turn any failure inside into one that names the ``_compat`` entry and the version."""
    try:
        yield
    except Exception as e:
        raise AssertionError(
            f"twisted_lb._compat: {name} no longer holds on {library}: "
            f"{type(e).__name__}: {e} (see its comment in twisted_lb/_compat.py)"
        ) from e


def loopback_tcp_pair(case: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on 127.0.0.1 (ours non-blocking), closed on cleanup."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    case.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname(), timeout=5)
    peer, _ = listener.accept()
    case.addCleanup(ours.close)
    case.addCleanup(peer.close)
    ours.setblocking(False)
    peer.setblocking(False)
    # Small buffers, so that a write of a few MiB cannot complete while the peer reads nothing.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return ours, peer


def drain(peer: socket.socket) -> int:
    """Read (and drop) what ``peer`` has; how many bytes; -1 once the other end's FIN came."""
    total = 0
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return total
        except ConnectionResetError:
            return -1
        if not chunk:
            return -1
        total += len(chunk)


class FileDescriptorWriteTests(SynchronousTestCase):
    """
    The write buffer and close flags of ``FileDescriptor``/``tcp.Connection``
    (``_tempDataBuffer``, ``_tempDataLen``, ``dataBuffer``/``offset``, ``_writeDisconnecting``,
    ``_writeDisconnected``, ``_aborting``), on a real TCP connection on loopback whose reactor
    turns are run by hand.
    """

    NAME = "FileDescriptor write buffer (_tempDataLen, _writeDisconnected, ...)"

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        ours, self.peer = loopback_tcp_pair(self)
        self.connection = tcp.Connection(ours, Protocol(), self.reactor)
        self.connection.connected = True

    def write_until_blocked(self) -> bytes:
        """Write more than the socket takes, and run ``doWrite`` until the socket is full."""
        data = os.urandom(1024) * 4096  # 4 MiB
        self.connection.write(data)
        for _ in range(1000):
            before = _compat.queued(self.connection) and self.connection.offset
            self.connection.doWrite()
            if self.connection.offset == before:
                break
        return data

    def decisions(self) -> dict[str, bool]:
        """
        What each of the entry's functions decides for the connection now: whether
        ``send_when_idle`` would queue, and whether ``hold_if_open``, ``hold_if_idle`` and
        ``take_sendable`` would refuse. What a probe changes is checked, then undone.
        """
        c: Any = self.connection
        chose: list[str] = []
        _compat.send_when_idle(c, lambda _: chose.append("send"), lambda _: chose.append("queue"))(
            b"probe"
        )
        decided = {"queues": chose == ["queue"]}
        for name in ("hold_if_open", "hold_if_idle"):
            before = (list(c._tempDataBuffer), c._tempDataLen)
            held = getattr(_compat, name)(c)(b"probe")
            decided[f"{name} refuses"] = not held
            if held:
                self.assertEqual(c._tempDataBuffer, [*before[0], b"probe"])
                self.assertEqual(c._tempDataLen, before[1] + 5)
            else:
                self.assertEqual((c._tempDataBuffer, c._tempDataLen), before)
            c._tempDataBuffer, c._tempDataLen = before
        before = (list(c._tempDataBuffer), c._tempDataLen)
        taken = _compat.take_sendable(c)()
        decided["take_sendable refuses"] = taken is None
        if taken is not None:
            self.assertEqual(taken, before[0])
            self.assertEqual((c._tempDataBuffer, c._tempDataLen), ([], 0))
        c._tempDataBuffer, c._tempDataLen = before
        return decided

    def test_idle(self) -> None:
        """A connected connection with nothing written: nothing queued, no close under way."""
        with entry(self.NAME, TWISTED):
            c = self.connection
            self.assertFalse(_compat.queued(c))
            self.assertEqual(c._tempDataLen, 0)
            self.assertEqual((_compat.queued_bytes(c), _compat.write_side(c)), (0, "open"))
            self.assertEqual(
                self.decisions(),
                {
                    "queues": False,
                    "hold_if_open refuses": False,
                    "hold_if_idle refuses": False,
                    "take_sendable refuses": True,  # nothing to take
                },
            )

    def test_counts_bytes_a_write_could_not_send(self) -> None:
        """
        ``write`` holds its bytes (``_tempDataLen`` counts them) until ``doWrite`` picks them
        up; what the socket did not take stays in ``dataBuffer`` from ``offset``.
        """
        with entry(self.NAME, TWISTED):
            c = self.connection
            c.write(b"x" * 1000)
            c.write(b"y" * 234)
            self.assertEqual(c._tempDataLen, 1234)
            self.assertTrue(_compat.queued(c))
            self.assertEqual(_compat.queued_bytes(c), 1234)
            self.assertEqual(
                self.decisions(),
                {
                    "queues": True,
                    "hold_if_open refuses": False,
                    "hold_if_idle refuses": True,
                    "take_sendable refuses": False,
                },
            )
            c.doWrite()
            self.assertEqual(drain(self.peer), 1234)
            self.assertFalse(_compat.queued(c))
            data = self.write_until_blocked()
            self.assertEqual(c._tempDataLen, 0)
            self.assertNotEqual(c.offset, len(c.dataBuffer))
            self.assertTrue(_compat.queued(c))
            unsent = len(c.dataBuffer) - c.offset
            self.assertEqual(_compat.queued_bytes(c), unsent)
            self.assertGreater(unsent, 0)
            self.assertLess(unsent, len(data))
            c.write(b"more")  # held behind the bytes being sent: not for the taking
            self.assertEqual(
                self.decisions(),
                {
                    "queues": True,
                    "hold_if_open refuses": False,
                    "hold_if_idle refuses": True,
                    "take_sendable refuses": True,
                },
            )

    def test_hold_and_take(self) -> None:
        """
        Bytes held with ``hold_if_open``/``hold_if_idle`` are what ``write`` would hold:
        ``doWrite`` sends them; or ``take_sendable`` takes them out and leaves nothing held.
        """
        with entry(self.NAME, TWISTED):
            c = self.connection
            hold = _compat.hold_if_open(c)
            self.assertTrue(_compat.hold_if_idle(c)(b"one "))
            self.assertTrue(hold(b"two"))
            self.assertEqual(c._tempDataLen, 7)
            self.assertEqual(self.reactor.getWriters(), [])  # no writability asked for
            c.startWriting()
            c.doWrite()
            self.assertEqual(self.peer.recv(100), b"one two")
            self.assertFalse(_compat.queued(c))
            self.assertTrue(hold(b"three"))
            self.assertEqual(_compat.take_sendable(c)(), [b"three"])
            self.assertEqual(c._tempDataLen, 0)
            self.assertFalse(_compat.queued(c))
            self.assertTrue(hold(b"four"))  # the holder still works on the new list
            self.assertEqual(_compat.take_sendable(c)(), [b"four"])

    def test_half_close_with_data_pending(self) -> None:
        """
        ``loseWriteConnection`` with bytes pending sets ``_writeDisconnecting``; once they are
        sent, ``_writeDisconnected`` is set, a FIN follows, and ``write`` drops bytes.
        """
        closed = {
            "queues": True,
            "hold_if_open refuses": True,
            "hold_if_idle refuses": True,
            "take_sendable refuses": True,
        }
        with entry(self.NAME, TWISTED):
            c = self.connection
            self.write_until_blocked()
            c.loseWriteConnection()
            self.assertEqual(self.decisions(), closed)
            self.assertFalse(c._writeDisconnected)  # not yet: the queue is not written
            self.assertEqual(_compat.write_side(c), "closing")
            fin = False
            for _ in range(10_000):
                fin = drain(self.peer) == -1
                if fin:
                    break
                if _compat.queued(c) or not c._writeDisconnected:
                    c.doWrite()
            self.assertTrue(fin, "no FIN after the queue was written")
            self.assertTrue(c._writeDisconnected)
            self.assertEqual(_compat.write_side(c), "shut")
            self.assertFalse(_compat.queued(c))
            # Nothing queued, but a send now would go after the FIN: all still say so.
            self.assertEqual(self.decisions(), closed)
            c.write(b"late")
            self.assertEqual(c._tempDataLen, 0)

    def test_lose_connection_with_data_pending(self) -> None:
        """``loseConnection`` with bytes pending sets ``disconnecting`` until they are sent."""
        with entry(self.NAME, TWISTED):
            c = self.connection
            self.write_until_blocked()
            c.loseConnection()
            self.assertTrue(c.disconnecting)
            self.assertEqual(
                self.decisions(),
                {
                    "queues": True,
                    "hold_if_open refuses": True,
                    "hold_if_idle refuses": True,
                    "take_sendable refuses": True,
                },
            )

    def test_abort(self) -> None:
        """
        ``abortConnection`` sets ``_aborting`` at once (and drops what was queued); the
        holding functions refuse from then on.
        """
        with entry(self.NAME, TWISTED):
            c = self.connection
            c.write(b"dropped")
            c.abortConnection()
            self.assertTrue(c._aborting)
            decided = self.decisions()
            self.assertTrue(decided["take_sendable refuses"])
            self.assertTrue(decided["hold_if_open refuses"])
            self.assertTrue(decided["hold_if_idle refuses"])
            self.reactor.advance(0)  # connectionLost
            self.assertFalse(c.connected)
            self.assertEqual(drain(self.peer), -1)

    def test_abort_when_idle(self) -> None:
        """
        After ``abortConnection`` with nothing queued, ``send_when_idle`` queues too (to
        Twisted's write, which keeps the bytes from the socket): nothing written after an
        abort is sent.
        """
        with entry(self.NAME, TWISTED):
            self.connection.abortConnection()
            self.assertTrue(self.decisions()["queues"])


def _tls_pair(
    case: SynchronousTestCase,
    server_protocol: type | None = None,
    client_ca: trustme.CA | None = None,
) -> tuple[Any, Any, Any, Clock]:
    """A TLS server and client, in memory (iosim), not yet pumped: (client, server, pump)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    server_options = CertificateOptions(
        privateKey=serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None),
        certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),
    )
    trusted = client_ca or ca
    client_options = optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(trusted.cert_pem.bytes())
    )
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_options, False, Factory.forProtocol(Protocol), clock=clock
    )
    if server_protocol is not None:
        server_factory.protocol = server_protocol
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(Protocol), clock=clock
    )
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        greet=False,
    )
    case.addCleanup(lambda: clock.advance(1))  # the aggregators' timers
    return client, server, pump, clock


class TLSWriteStateTests(SynchronousTestCase):
    """
    ``TLSMemoryBIOProtocol._producer``/``_appSendBuffer`` and ``BufferingTLSTransport``'s
    ``_aggregator``, on a real TLS handshake in memory.
    """

    NAME = "TLSMemoryBIOProtocol _producer/_appSendBuffer/_aggregator"

    def test_holds_writes_until_the_handshake(self) -> None:
        """Bytes written before the handshake are held back; after it, nothing is."""
        with entry(self.NAME, TWISTED):
            client, server, pump, clock = _tls_pair(self)
            buffered = _compat.tls_app_buffered(client)
            TLSMemoryBIOProtocol.write(client, b"early")  # as _transport's sender writes
            self.assertTrue(buffered())
            self.assertFalse(_compat.tls_handshake_done(client))
            self.assertTrue(_compat.tls_holds_writes(client))
            pump.flush()
            clock.advance(0)
            pump.flush()
            self.assertTrue(client._handshakeDone)
            self.assertTrue(_compat.tls_handshake_done(client))
            self.assertFalse(buffered())
            self.assertFalse(_compat.tls_holds_writes(client))
            self.assertFalse(_compat.tls_holds_writes(server))
            # The fast function reads the attribute itself: bound before any bytes, it sees them.
            self.assertTrue(hasattr(server, "_appSendBuffer"))

    def test_producer_holds_writes(self) -> None:
        """A producer registered with the TLS transport counts as holding writes back."""
        with entry(self.NAME, TWISTED):
            client, _server, pump, clock = _tls_pair(self)
            pump.flush()
            clock.advance(0)
            pump.flush()
            producer = StringTransport()
            client.registerProducer(producer, True)
            self.assertTrue(_compat.tls_holds_writes(client))
            self.assertIsNotNone(_compat.tls_producer(client))  # the producer, wrapped
            client.unregisterProducer()
            self.assertFalse(_compat.tls_holds_writes(client))
            self.assertIsNone(_compat.tls_producer(client))

    def test_aggregator_flush(self) -> None:
        """
        ``BufferingTLSTransport`` holds small writes until the next turn;
        ``flush_tls_aggregator`` writes them now.
        """
        with entry(self.NAME, TWISTED):
            client, server, pump, clock = _tls_pair(self)
            received: list[bytes] = []
            server.wrappedProtocol.dataReceived = received.append
            pump.flush()
            clock.advance(0)
            pump.flush()
            client.write(b"small")
            pump.flush()
            self.assertEqual(received, [])  # held until the turn ends
            _compat.flush_tls_aggregator(client)
            pump.flush()
            self.assertEqual(b"".join(received), b"small")


class _Counting(_compat.HandshakeObservingTLS):
    completed = 0
    lost: tuple[Failure | None, Failure] | None = None

    def handshake_completed(self) -> None:
        self.completed += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = (_compat.tls_reason(self), reason)  # as tls._CountingTLSProtocol reads it
        super().connectionLost(reason)


class TLSHandshakeTests(SynchronousTestCase):
    """``TLSMemoryBIOProtocol._checkHandshakeStatus``, ``_handshakeDone`` and ``_reason``."""

    NAME = "TLSMemoryBIOProtocol _checkHandshakeStatus/_handshakeDone/_reason"

    def test_completed_once(self) -> None:
        """``handshake_completed`` is called once, when the server's handshake completes."""
        with entry(self.NAME, TWISTED):
            client, server, pump, clock = _tls_pair(self, server_protocol=_Counting)
            self.assertIsInstance(server, _Counting)
            self.assertEqual(server.completed, 0)
            pump.flush()
            clock.advance(0)
            pump.flush()
            self.assertTrue(server._handshakeDone)
            self.assertEqual(server.completed, 1)
            client.write(b"more")
            clock.advance(0)
            pump.flush()
            self.assertEqual(server.completed, 1)
            self.assertIsNone(_compat.tls_reason(server))

    def test_failure_reason(self) -> None:
        """
        When a handshake fails, the transport's ``connectionLost`` is given a bare
        ConnectionLost, and ``_reason`` has the OpenSSL error (the client's alert).
        """
        with entry(self.NAME, TWISTED):
            _client, server, pump, clock = _tls_pair(
                self, server_protocol=_Counting, client_ca=trustme.CA()
            )
            for _ in range(10):
                pump.flush()
                clock.advance(0)
            self.assertEqual(server.completed, 0)
            assert server.lost is not None, "the server's connection was not lost"
            tls_reason, given = server.lost
            self.assertIsInstance(tls_reason, Failure)
            assert tls_reason is not None
            self.assertIsInstance(tls_reason.value, SSL.Error)
            self.assertIn("unknown ca", str(tls_reason.value))
            self.assertNotIsInstance(given.value, SSL.Error)


class ReexportTests(SynchronousTestCase):
    """The private classes ``_compat`` re-exports exist and work as used."""

    def test_trust_root(self) -> None:
        """What ``trustRootFromCertificates`` and ``platformTrust`` return provide it."""
        with entry("twisted.internet._sslverify.IOpenSSLTrustRoot", TWISTED):
            ca = trustme.CA()
            root = trustRootFromCertificates([Certificate.loadPEM(ca.cert_pem.bytes())])
            self.assertTrue(_compat.IOpenSSLTrustRoot.providedBy(root))
            self.assertTrue(_compat.IOpenSSLTrustRoot.providedBy(platformTrust()))
            optionsForClientTLS("localhost", trustRoot=root)

    def test_proxy_v1(self) -> None:
        """``V1Parser`` parses a PROXY v1 header and gives back what follows it."""
        with entry("twisted.protocols.haproxy._v1parser.V1Parser", TWISTED):
            self.assertEqual(_compat.V1Parser().feed(b"PROXY TCP4 192.0.2.1 "), (None, None))
            info, rest = _compat.V1Parser().feed(
                b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 80\r\nGET /"
            )
            assert info is not None
            self.assertEqual(info.source, IPv4Address("TCP", "192.0.2.1", 5555))
            self.assertEqual(info.destination, IPv4Address("TCP", "198.51.100.2", 80))
            self.assertEqual(rest, b"GET /")

    def test_proxy_v2(self) -> None:
        """``V2Parser`` parses a PROXY v2 header and gives back what follows it."""
        with entry("twisted.protocols.haproxy._v2parser.V2Parser", TWISTED):
            header = (
                b"\r\n\r\n\x00\r\nQUIT\n"
                + b"\x21\x11"  # v2 PROXY; TCP over IPv4
                + (12).to_bytes(2, "big")
                + socket.inet_aton("192.0.2.1")
                + socket.inet_aton("198.51.100.2")
                + (5555).to_bytes(2, "big")
                + (80).to_bytes(2, "big")
            )
            self.assertEqual(_compat.V2Parser().feed(header[:20]), (None, None))
            info, rest = _compat.V2Parser().feed(header + b"GET /")
            assert info is not None
            self.assertEqual(info.source, IPv4Address("TCP", "192.0.2.1", 5555))
            self.assertEqual(rest, b"GET /")

    def test_model_metaclass(self) -> None:
        """
        BaseModel's metaclass is the class the type checker is told of, and a subclass of it
        can take fields by position, as config's models do.
        """
        with entry("pydantic._internal._model_construction.ModelMetaclass", PYDANTIC):
            from pydantic._internal._model_construction import ModelMetaclass

            self.assertIs(_compat.ModelMetaclass, ModelMetaclass)
            self.assertIs(type(BaseModel), ModelMetaclass)

            class Positional(_compat.ModelMetaclass):
                def __call__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
                    kwargs.update(zip(cls.model_fields, args, strict=False))
                    return super().__call__(**kwargs)

            class Point(BaseModel, metaclass=Positional):
                x: int
                y: int = 0

            self.assertEqual(Point(3, 4), Point(x=3, y=4))

    def test_twistd_pidfile(self) -> None:
        """twistd's ``--pidfile`` defaults to ``TWISTD_DEFAULT_PIDFILE``."""
        if sys.platform == "win32":
            raise self.skipTest("twistd has no --pidfile on Windows")
        with entry("twisted.scripts._twistd_unix.ServerOptions pidfile", TWISTED):
            from twisted.scripts._twistd_unix import ServerOptions

            options = ServerOptions()
            self.assertEqual(options["pidfile"], _compat.TWISTD_DEFAULT_PIDFILE)
            options.parseOptions(["--nodaemon"])
            self.assertEqual(options["pidfile"], os.path.abspath(_compat.TWISTD_DEFAULT_PIDFILE))


class WrappingProtocolTests(SynchronousTestCase):
    """``twisted.internet.endpoints._WrappingProtocol`` and its ``_wrappedProtocol``."""

    NAME = "twisted.internet.endpoints._WrappingProtocol"

    def test_client_endpoint_wraps(self) -> None:
        """A client endpoint's connection gets a ``_WrappingProtocol`` that passes calls on."""
        with entry(self.NAME, TWISTED):
            assert _compat.WRAPPING_PROTOCOL is not None
            reactor = MemoryReactor()
            received: list[bytes] = []
            protocol = Protocol()
            protocol.dataReceived = received.append  # type: ignore[method-assign]
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", 80)
            endpoint.connect(Factory.forProtocol(lambda: protocol))
            [(_host, _port, factory, _timeout, _bind)] = reactor.tcpClients
            wrapper = factory.buildProtocol(None)
            self.assertIsInstance(wrapper, _compat.WRAPPING_PROTOCOL)
            self.assertIs(_compat.wrapped_protocol(wrapper), protocol)
            wrapper.makeConnection(StringTransport())
            wrapper.dataReceived(b"passed on")
            self.assertEqual(received, [b"passed on"])
            self.assertIsNone(_compat.wrapped_protocol(Protocol()))


class ServerEndpointTests(SynchronousTestCase):
    """What serverFromString's endpoints keep: ``_port``, ``_interface``, ``_wrappedEndpoint``."""

    NAME = "server endpoints' _port/_interface/_wrappedEndpoint"

    def test_tcp(self) -> None:
        with entry(self.NAME, TWISTED):
            endpoint = serverFromString(MemoryReactor(), "tcp:8080:interface=127.0.0.1")
            self.assertEqual(_compat.endpoint_port(endpoint), 8080)
            self.assertEqual(_compat.endpoint_interface(endpoint), "127.0.0.1")
            everywhere = serverFromString(MemoryReactor(), "tcp6:8080")
            self.assertEqual(_compat.endpoint_interface(everywhere), "::")
            anywhere = serverFromString(MemoryReactor(), "tcp:1")
            self.assertEqual(_compat.endpoint_interface(anywhere), "")

    def test_haproxy(self) -> None:
        with entry(self.NAME, TWISTED):
            wrapper = serverFromString(MemoryReactor(), "haproxy:tcp:8081:interface=127.0.0.2")
            inner = _compat.unwrap_server_endpoint(wrapper)
            self.assertIsNot(inner, wrapper)
            self.assertIsInstance(inner, TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint)
            self.assertEqual(_compat.endpoint_port(inner), 8081)
            self.assertEqual(_compat.endpoint_interface(inner), "127.0.0.2")
            plain = serverFromString(MemoryReactor(), "tcp:1")
            self.assertIs(_compat.unwrap_server_endpoint(plain), plain)

    def test_ssl(self) -> None:
        with entry(self.NAME, TWISTED):
            leaf = trustme.CA().issue_cert("localhost")
            directory = tempfile.mkdtemp(prefix="twisted_lb_compat_")
            path = os.path.join(directory, "k.pem")
            self.addCleanup(os.rmdir, directory)
            self.addCleanup(os.remove, path)
            leaf.private_key_and_cert_chain_pem.write_to_path(path)
            endpoint = serverFromString(MemoryReactor(), f"ssl:8443:privateKey={path}")
            self.assertEqual(_compat.endpoint_port(endpoint), 8443)


class UNIXEndpointTests(TestCase):
    """``UNIXServerEndpoint``'s ``_reactor``, ``_address``, ``_backlog``, ``_wantPID``."""

    NAME = "UNIXServerEndpoint _reactor/_address/_backlog/_wantPID"

    @inlineCallbacks
    def test_with_mode(self) -> Generator[Deferred[Any], Any, None]:
        """The copy listens on the same file, with the mode given, and the other arguments."""
        from twisted.internet import reactor

        with entry(self.NAME, TWISTED):
            directory = tempfile.mkdtemp(prefix="twisted_lb_compat_")
            self.addCleanup(os.rmdir, directory)
            path = os.path.join(directory, "admin.sock")
            original = serverFromString(reactor, f"unix:{path}:backlog=7:lockfile=1")
            self.assertEqual(_compat.unix_endpoint_path(original), path)
            copy = _compat.unix_endpoint_with_mode(original, 0o600)
            self.assertEqual(_compat.unix_endpoint_path(copy), path)
            self.assertIs(copy._reactor, reactor)
            self.assertEqual((copy._backlog, copy._wantPID, copy._mode), (7, True, 0o600))
            port = yield copy.listen(Factory.forProtocol(Protocol))
            self.addCleanup(port.stopListening)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)


class ParseErrorTests(TestCase):
    """``twisted.web._newclient.ParseError``: Agent's error for a response it cannot parse."""

    @inlineCallbacks
    def test_agent_fails_with_it(self) -> Generator[Deferred[Any], Any, None]:
        from twisted.internet import reactor

        class NotHTTP(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
                self.transport.loseConnection()

        with entry("twisted.web._newclient.ParseError", TWISTED):
            port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Factory.forProtocol(NotHTTP)
            )
            self.addCleanup(port.stopListening)
            pool = HTTPConnectionPool(reactor, persistent=False)
            self.addCleanup(pool.closeCachedConnections)
            agent = Agent(reactor, pool=pool)
            url = f"http://127.0.0.1:{port.getHost().port}/".encode()
            failure = yield self.assertFailure(agent.request(b"GET", url), ResponseFailed)
            [reason] = failure.reasons
            self.assertIsInstance(reason.value, _compat.ParseError)
            self.assertIsInstance(reason.value.args[0], str)


@implementer(IHalfCloseableProtocol)
class _Reader(Protocol):
    def __init__(self) -> None:
        self.reads = 0

    def doRead(self) -> None:
        self.reads += 1


class EPollTests(SynchronousTestCase):
    """``EPollReactor._poller``, ``_selectables`` and ``_doReadOrWrite``."""

    NAME = "EPollReactor _poller/_selectables/_doReadOrWrite"

    def test_internals(self) -> None:
        """They are the reactor's poller and descriptors, and the handler reads a reader."""
        if not hasattr(epollreactor, "EPollReactor"):
            raise self.skipTest("no epoll here")
        with entry(self.NAME, TWISTED):
            reactor = epollreactor.EPollReactor()
            poller, selectables, handle = _compat.epoll_internals(reactor)
            self.addCleanup(poller.close)
            ours, peer = socket.socketpair()
            self.addCleanup(ours.close)
            self.addCleanup(peer.close)
            reader: Any = _Reader()
            reader.fileno = ours.fileno
            reader.logPrefix = lambda: "reader"
            reader.connectionLost = lambda reason: None
            before = dict(selectables)  # the reactor's waker
            reactor.addReader(reader)
            self.assertIs(selectables[ours.fileno()], reader)
            peer.send(b"x")
            events = poller.poll(1, len(selectables))
            self.assertEqual([fd for fd, _event in events], [ours.fileno()])
            handle(reader, ours.fileno(), events[0][1])
            self.assertEqual(reader.reads, 1)
            reactor.removeReader(reader)
            self.assertEqual(selectables, before)
            self.assertEqual(_compat.epoll_internals(reactor)[:2], (poller, selectables))


class OpenSSLBindingTests(SynchronousTestCase):
    """
    pyOpenSSL's ``OpenSSL._util.lib`` functions, ``Context._context`` and
    ``Connection._ssl``.
    """

    NAME = (
        "OpenSSL._util.lib SSL_CTX_set1_curves_list/ERR_clear_error/SSL_session_reused, "
        "Context._context, Connection._ssl"
    )

    def test_set_groups(self) -> None:
        """The groups of a real context are set, and an unknown one is refused."""
        with entry(self.NAME, PYOPENSSL):
            set_groups = _compat.openssl_function("SSL_CTX_set1_curves_list")
            clear = _compat.openssl_function("ERR_clear_error")
            self.assertTrue(callable(set_groups))
            self.assertTrue(callable(clear))
            self.assertIsNone(_compat.openssl_function("no_such_function"))
            context = SSL.Context(SSL.TLS_METHOD)
            native = _compat.native_context(context)
            self.assertIsNotNone(native)
            self.assertEqual(set_groups(native, b"X25519:P-256"), 1)
            self.assertEqual(set_groups(native, b"no-such-group"), 0)
            clear()
            # The context is still usable: pyOpenSSL sees no error left on the queue.
            connection = SSL.Connection(context, None)
            connection.set_connect_state()
            session_reused = _compat.openssl_function("SSL_session_reused")
            self.assertEqual(session_reused(_compat.native_connection(connection)), 0)


class ImportNameTests(SynchronousTestCase):
    def test_never_bound_as_underscore_compat(self) -> None:
        """
        No module of twisted_lb binds the name ``_compat`` (they import it as ``compat``):
        attrs runs the ``__repr__`` it generates in the class's module globals, where that
        name would hide attrs' own ``_compat``, and ``repr()`` would raise AttributeError.
        """
        import importlib
        import pkgutil

        import twisted_lb
        from twisted_lb.config import Problem

        for info in pkgutil.walk_packages(twisted_lb.__path__, "twisted_lb."):
            module = importlib.import_module(info.name)
            self.assertNotIn("_compat", vars(module), f"{info.name} binds _compat")
        self.assertEqual(
            repr(Problem("a", "b", "c")), "Problem(path='a', key='b', message='c', line=None)"
        )
