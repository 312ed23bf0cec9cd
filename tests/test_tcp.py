"""
Unit tests of the L4 relay, with a memory reactor and string transports: no sockets.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb import _compat as compat
from twisted_lb._transport import (
    RELAY_BUFFER_BYTES,
    ReadGate,
    close_writing,
    flush_sends,
    read_more,
    sends_at_once,
    unwrap,
)
from twisted_lb._transport import sender as _sender
from twisted_lb.backend import Backend, BackendState
from twisted_lb.pool import Pool
from twisted_lb.strategies import get_strategy
from twisted_lb.tcp import TCPRelayFactory, _ClientSide

CLIENT = IPv4Address("TCP", "192.0.2.1", 5555)


class HalfCloseTransport(StringTransport):
    """A string transport that also records ``loseWriteConnection``."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def access_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "twisted_lb.access"]


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [
            Backend.from_address("10.0.0.5:8080", name="a"),
            Backend.from_address("10.0.0.6:8080", name="b"),
            Backend.from_address("10.0.0.7:8080", name="c"),
            Backend.from_address("10.0.0.8:8080", name="d"),
        ]
        self.pool = Pool(
            "p", self.backends, get_strategy("round_robin"), connect_timeout=3.0, retries=2
        )
        self.factory = TCPRelayFactory(
            self.reactor, self.pool, client_timeout=30.0, max_connections=2, frontend="f"
        )

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def connect_client(self) -> tuple[_ClientSide, HalfCloseTransport]:
        front = self.factory.buildProtocol(CLIENT)
        client = HalfCloseTransport(peerAddress=CLIENT)
        front.makeConnection(client)
        return front, client

    def accept_backend(self, index: int = -1) -> tuple[Any, HalfCloseTransport]:
        """Complete the connection attempt ``index`` of the memory reactor."""
        _host, _port, backend_factory, _timeout, _bind = self.reactor.tcpClients[index]
        transport = HalfCloseTransport()
        protocol = backend_factory.buildProtocol(None)
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse_backend(self, index: int = -1) -> None:
        backend_factory = self.reactor.tcpClients[index][2]
        backend_factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def close_both(self, front: _ClientSide, backend_protocol: Any) -> None:
        front.connectionLost(Failure(ConnectionDone()))
        backend_protocol.connectionLost(Failure(ConnectionDone()))

    def test_pauses_client_until_backend_connects(self) -> None:
        """
        A new client is paused until its backend connection is made; then each transport
        is the other's producer, and bytes flow both ways.
        """
        front, client = self.connect_client()
        self.assertEqual(client.producerState, "paused")
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("10.0.0.5", 8080)])
        backend_protocol, backend = self.accept_backend()
        self.assertEqual(client.producerState, "producing")
        self.assertIs(backend.producer, client)
        self.assertIs(client.producer, backend)
        front.dataReceived(b"hello")
        self.assertEqual(backend.value(), b"hello")
        backend_protocol.dataReceived(b"world!")
        self.assertEqual(client.value(), b"world!")
        a = self.backends[0]
        self.assertEqual((a.bytes_in, a.bytes_out, a.active_connections), (5, 6, 1))
        self.close_both(front, backend_protocol)
        self.assertEqual(a.active_connections, 0)
        self.assertEqual(a.total_connections, 1)

    def test_flow_control(self) -> None:
        """
        A backend that cannot keep up pauses reading from the client, and a client that cannot
        keep up pauses reading from the backend: nothing is buffered without bound.
        """
        front, client = self.connect_client()
        backend_protocol, backend = self.accept_backend()
        # The backend's write buffer is full: its transport pauses its producer, the client.
        backend.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        backend.producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")
        client.producer.pauseProducing()
        self.assertEqual(backend.producerState, "paused")
        self.close_both(front, backend_protocol)

    def test_failover_on_refused(self) -> None:
        """
        A refused connect goes on to the next backend; the failure is counted on the
        backend that refused and logged, and the client is not closed.
        """
        front, client = self.connect_client()
        with capturedLogs() as events:
            self.refuse_backend()
        self.assertEqual(self.backends[0].connect_failures, 1)
        self.assertEqual(self.backends[0].active_connections, 0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.6", 8080))
        [warning] = [e for e in events if "failed" in e["log_format"]]
        self.assertEqual((warning["backend"], warning["left"]), ("a", 2))
        self.assertFalse(client.disconnecting)
        self.assertEqual(client.producerState, "paused")
        backend_protocol, _backend = self.accept_backend()
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(self.backends[1].active_connections, 1)
        self.close_both(front, backend_protocol)

    def test_retries_exhausted(self) -> None:
        """
        After ``retries`` further attempts fail, the client is closed, every lease is
        released and one access event says why.
        """
        front, client = self.connect_client()
        with capturedLogs() as events:
            for _ in range(3):
                self.refuse_backend()
            self.assertEqual(len(self.reactor.tcpClients), 3)  # 1 + retries
            self.assertTrue(client.disconnecting)
            front.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([b.connect_failures for b in self.backends], [1, 1, 1, 0])
        self.assertEqual([b.active_connections for b in self.backends], [0, 0, 0, 0])
        [access] = access_events(events)
        self.assertEqual(access["ended"], "backend connect failed")
        self.assertEqual(self.factory.active_connections, 0)

    def test_connect_timeout(self) -> None:
        """
        A connect that does not complete within ``connect_timeout`` is abandoned and the
        next backend is tried.
        """
        self.connect_client()
        self.reactor.advance(2.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        with capturedLogs() as events:
            self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.backends[0].connect_failures, 1)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        [warning] = [e for e in events if "failed" in e["log_format"]]
        self.assertIn("connect_timeout", warning["reason"])
        self.reactor.advance(3.0)
        self.reactor.advance(3.0)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertEqual([b.connect_failures for b in self.backends], [1, 1, 1, 0])
        self.assertEqual([b.active_connections for b in self.backends], [0, 0, 0, 0])

    def test_no_backend_up(self) -> None:
        """With no backend UP the client is closed at once, with no connect attempt."""
        for backend in self.backends:
            backend.state = BackendState.DOWN
        with capturedLogs() as events:
            front, client = self.connect_client()
            self.assertTrue(client.disconnecting)
            front.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reactor.tcpClients, [])
        [access] = access_events(events)
        self.assertEqual((access["ended"], access["backend"]), ("no backend available", "-"))

    def test_client_leaves_while_connecting(self) -> None:
        """A client that disconnects mid-connect cancels the attempt and frees its lease."""
        front, _client = self.connect_client()
        self.assertEqual(self.backends[0].active_connections, 1)
        front.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.backends[0].active_connections, 0)
        self.assertEqual(self.backends[0].connect_failures, 0)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_half_close_both_ways(self) -> None:
        """
        A FIN from the client is passed on to the backend while the backend may still
        answer; then the backend's FIN is passed to the client, and both close.
        """
        front, client = self.connect_client()
        backend_protocol, backend = self.accept_backend()
        front.readConnectionLost()
        self.assertTrue(backend.write_closed)
        self.assertFalse(backend.disconnecting)
        backend_protocol.dataReceived(b"late answer")
        self.assertEqual(client.value(), b"late answer")
        backend_protocol.writeConnectionLost()
        backend_protocol.readConnectionLost()
        self.assertTrue(client.write_closed)
        self.assertTrue(backend.disconnecting)
        front.writeConnectionLost()
        self.assertTrue(client.disconnecting)
        self.close_both(front, backend_protocol)

    def test_half_close_before_connect(self) -> None:
        """A FIN that arrives before the backend connects is passed on once it does."""
        front, _client = self.connect_client()
        front.readConnectionLost()
        backend_protocol, backend = self.accept_backend()
        self.assertTrue(backend.write_closed)
        self.close_both(front, backend_protocol)

    def test_backend_closes(self) -> None:
        """When the backend closes, the client is closed and the access event says so."""
        front, client = self.connect_client()
        backend_protocol, _backend = self.accept_backend()
        with capturedLogs() as events:
            backend_protocol.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(client.disconnecting)
            front.connectionLost(Failure(ConnectionDone()))
        [access] = access_events(events)
        self.assertEqual(access["ended"], "backend closed")
        self.assertEqual(access["backend"], "a")

    def test_idle_timeout(self) -> None:
        """
        A pair with no bytes either way for ``client_timeout`` seconds is closed; each byte
        relayed in either direction restarts the count.
        """
        front, client = self.connect_client()
        backend_protocol, backend = self.accept_backend()
        self.reactor.advance(20)
        front.dataReceived(b"x")
        self.reactor.advance(20)
        backend_protocol.dataReceived(b"y")
        self.reactor.advance(29.9)
        self.assertFalse(client.disconnecting)
        with capturedLogs() as events:
            self.reactor.advance(0.1)
            self.assertTrue(client.disconnecting)
            self.assertTrue(backend.disconnecting)
            self.close_both(front, backend_protocol)
        [access] = access_events(events)
        self.assertEqual(access["ended"], "idle timeout")
        self.assertEqual(access["duration_ms"], 70000)
        self.assertEqual((access["bytes_in"], access["bytes_out"]), (1, 1))

    def test_max_connections(self) -> None:
        """Past ``max_connections`` a new client is closed at once and counted."""
        first = self.connect_client()
        second = self.connect_client()
        with capturedLogs() as events:
            third, third_client = self.connect_client()
            self.assertTrue(third_client.disconnecting)
            third.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.refused_connections, 1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        [access] = access_events(events)
        self.assertEqual(access["ended"], "max connections reached")
        # When one leaves, a new client is accepted again.
        first[0].connectionLost(Failure(ConnectionDone()))
        fourth, fourth_client = self.connect_client()
        self.assertFalse(fourth_client.disconnecting)
        for front, _ in (second, (fourth, fourth_client)):
            front.connectionLost(Failure(ConnectionDone()))

    def test_access_event(self) -> None:
        """One access event per connection: client, backend, bytes each way, duration, end."""
        front, _client = self.connect_client()
        backend_protocol, _backend = self.accept_backend()
        front.dataReceived(b"12345")
        backend_protocol.dataReceived(b"1234567")
        self.reactor.advance(1.5)
        with capturedLogs() as events:
            front.connectionLost(Failure(ConnectionDone()))
            backend_protocol.connectionLost(Failure(ConnectionDone()))
        [access] = access_events(events)
        self.assertEqual(
            {k: access[k] for k in ("frontend", "client", "backend", "bytes_in", "bytes_out")},
            {
                "frontend": "f",
                "client": "192.0.2.1:5555",
                "backend": "a",
                "bytes_in": 5,
                "bytes_out": 7,
            },
        )
        self.assertEqual((access["duration_ms"], access["ended"]), (1500, "client closed"))

    def test_close_connections(self) -> None:
        """``close_connections`` closes every pair and fires once all are gone."""
        front, client = self.connect_client()
        backend_protocol, backend = self.accept_backend()
        closed = self.factory.close_connections()
        self.assertNoResult(closed)
        self.assertTrue(client.disconnecting)
        self.assertTrue(backend.disconnecting)
        self.close_both(front, backend_protocol)
        self.assertIsNone(self.successResultOf(closed))

    def test_unix_backend(self) -> None:
        """A ``unix:`` backend is connected through the reactor's UNIX support."""
        pool = Pool("u", [Backend.from_address("unix:/run/app.sock")], get_strategy("random"))
        factory = TCPRelayFactory(self.reactor, pool)
        front = factory.buildProtocol(CLIENT)
        front.makeConnection(HalfCloseTransport())
        self.assertEqual(self.reactor.unixClients[0][0], "/run/app.sock")
        front.connectionLost(Failure(ConnectionDone()))


class _CountingSocket:
    """A socket whose ``send`` calls are counted; everything else is the socket's."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        sent: int = self._sock.send(data)
        self.sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class SenderTests(SynchronousTestCase):
    """
    ``_sender`` on a real TCP connection object over a socketpair (the reactor's turns run by
    hand): it sends at the end of the reactor turn when nothing is queued, and otherwise
    leaves ordering, closing and flow control to Twisted's ``write``.
    """

    def setUp(self) -> None:
        import socket

        from twisted.internet import tcp

        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        self.peer.setblocking(False)
        self.socket = _CountingSocket(ours)
        self.connection = tcp.Connection(self.socket, Protocol(), self.reactor)
        self.connection.connected = True

    def read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:  # closed
                return b"".join(chunks)
            chunks.append(chunk)

    def end_turn(self) -> None:
        """Run what the reactor runs before its next poll (``callLater(0)`` calls)."""
        self.reactor.advance(0)

    def test_sends_at_once_when_idle(self) -> None:
        """With nothing queued, the bytes are sent now and nothing waits for writability."""
        send = _sender(self.connection)
        send(b"hello")
        self.assertEqual(self.read_all(), b"hello")
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_sends_at_turn_end(self) -> None:
        """
        With ``at_turn_end``, the writes of one reactor turn are sent when it ends, together
        in one ``send``, and nothing waits for writability.
        """
        send = _sender(self.connection, at_turn_end=True)
        send(b"hello")
        send(b", world")
        self.assertEqual(self.read_all(), b"")
        self.end_turn()
        self.assertEqual(self.read_all(), b"hello, world")
        self.assertEqual(self.socket.sends, [12])
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        send(b"again")  # the next turn
        self.end_turn()
        self.assertEqual(self.read_all(), b"again")

    def test_flush_sends(self) -> None:
        """``flush_sends`` sends what waits for the end of the turn now, and only once."""
        send = _sender(self.connection, at_turn_end=True)
        send(b"now")
        flush_sends(self.connection)
        self.assertEqual(self.read_all(), b"now")
        self.end_turn()
        self.assertEqual(self.socket.sends, [3])
        flush_sends(StringTransport())  # nothing held for it: nothing to do

    def test_lose_connection_sends_held_bytes(self) -> None:
        """``loseConnection`` after a write: the bytes go out first, then the close."""
        send = _sender(self.connection, at_turn_end=True)
        send(b"bye")
        self.connection.loseConnection()
        self.end_turn()
        self.assertEqual(self.reactor.getWriters(), [self.connection])
        self.assertIsInstance(self.connection.doWrite(), ConnectionDone)
        self.assertEqual(self.read_all(), b"bye")

    def test_abort_drops_held_bytes(self) -> None:
        """``abortConnection`` drops what waits for the end of the turn, as its queue."""
        send = _sender(self.connection, at_turn_end=True)
        send(b"dropped")
        self.connection.abortConnection()
        self.end_turn()
        self.assertEqual(self.read_all(), b"")
        self.assertEqual(self.socket.sends, [])

    def test_write_in_between_keeps_order(self) -> None:
        """A ``write`` of the transport's own between two sends keeps its place."""
        send = _sender(self.connection, at_turn_end=True)
        send(b"a")
        self.connection.write(b"b")
        send(b"c")
        self.end_turn()
        self.assertEqual(self.read_all(), b"abc")
        self.assertIsNone(self.connection.doWrite())  # nothing left: it stops waiting
        self.assertEqual(self.reactor.getWriters(), [])

    def test_failing_backlog_hook_spares_other_connections(self) -> None:
        """
        An error raised while one connection's bytes are sent at the end of the turn is
        logged, and the other connections' bytes still go out.
        """
        import socket

        from twisted.internet import tcp

        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        other = tcp.Connection(ours, Protocol(), self.reactor)
        other.connected = True

        def broken() -> None:
            raise RuntimeError("hook failed")

        _sender(other, broken, at_turn_end=True)(b"x" * (8 << 20))  # more than the socket takes
        send = _sender(self.connection, at_turn_end=True)
        send(b"still sent")
        with capturedLogs() as events:
            self.end_turn()
        self.assertEqual(self.read_all(), b"still sent")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("end of the reactor turn", events[0].get("log_format"))

    def test_tls_over_tcp_gets_nodelay(self) -> None:
        """
        A TLS transport is written to record by record, and the TCP connection under it gets
        TCP_NODELAY: otherwise the last record of a response waits for a delayed ACK.
        """
        import socket

        from twisted.internet import tcp
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        self.addCleanup(ours.close)
        theirs, _ = listener.accept()
        self.addCleanup(theirs.close)
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        tls = TLSMemoryBIOProtocol(
            TLSMemoryBIOFactory(CertificateOptions(), True, Factory.forProtocol(Protocol)),
            Protocol(),
        )
        tls.transport = tcp.Connection(ours, tls, self.reactor)
        send: Any = _sender(tls)
        # TLSMemoryBIOProtocol's own write, without BufferingTLSTransport's next-turn
        # aggregation of small writes.
        self.assertEqual((send.func, send.args), (TLSMemoryBIOProtocol.write, (tls,)))
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_read_more(self) -> None:
        """A bulk connection reads RELAY_BUFFER_BYTES at once; others keep Twisted's 64 KiB."""
        self.assertEqual(self.connection.bufferSize, 64 * 1024)
        read_more(self.connection)
        self.assertEqual(self.connection.bufferSize, RELAY_BUFFER_BYTES)
        read_more(StringTransport())  # not a TCP connection: nothing to do

    def test_queues_behind_queued_data(self) -> None:
        """With bytes already queued, new bytes queue behind them: order is kept."""
        self.queues_behind_queued_data(at_turn_end=False)

    def test_queues_behind_queued_data_at_turn_end(self) -> None:
        self.queues_behind_queued_data(at_turn_end=True)

    def queues_behind_queued_data(self, at_turn_end: bool) -> None:
        send = _sender(self.connection, at_turn_end=at_turn_end)
        self.connection.write(b"first ")
        send(b"second")
        self.end_turn()
        self.assertEqual(self.read_all(), b"")
        self.assertEqual(self.reactor.getWriters(), [self.connection])
        self.connection.doWrite()
        self.assertEqual(self.read_all(), b"first second")

    def test_remainder_queued_and_producer_paused(self) -> None:
        """
        What the socket does not take at once is queued, and a full queue pauses the
        registered producer, as ``write`` does.
        """
        self.remainder_queued_and_producer_paused(at_turn_end=False)

    def test_remainder_queued_and_producer_paused_at_turn_end(self) -> None:
        self.remainder_queued_and_producer_paused(at_turn_end=True)

    def remainder_queued_and_producer_paused(self, at_turn_end: bool) -> None:
        producer = StringTransport()
        self.connection.registerProducer(producer, True)
        send = _sender(self.connection, at_turn_end=at_turn_end)
        data = b"x" * (8 << 20)
        send(data)
        self.end_turn()
        queued = compat.queued_bytes(self.connection)
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(data))
        self.assertEqual(producer.producerState, "paused")
        received = self.read_all()
        for _ in range(10_000):  # each round moves up to a socket buffer's worth
            if not compat.queued(self.connection):
                break
            self.connection.doWrite()
            received += self.read_all()
        self.assertEqual(received, data)
        self.assertEqual(producer.producerState, "producing")

    def test_other_transports_use_write(self) -> None:
        """Transports that are not Twisted TCP connections get their own ``write``."""
        transport = StringTransport()
        self.assertEqual(_sender(transport), transport.write)
        self.assertFalse(sends_at_once(transport))
        self.assertTrue(sends_at_once(self.connection))

    def test_on_backlog(self) -> None:
        """
        ``on_backlog`` is called before each write that queues bytes, not when all are sent:
        a producer it registers then is paused by that very write.
        """
        self.on_backlog(at_turn_end=False)

    def test_on_backlog_at_turn_end(self) -> None:
        """With ``at_turn_end``, it is called when the turn's bytes are sent and some remain."""
        self.on_backlog(at_turn_end=True)

    def on_backlog(self, at_turn_end: bool) -> None:
        producer = StringTransport()
        calls: list[int] = []

        def on_backlog() -> None:
            calls.append(compat.queued_bytes(self.connection))
            if self.connection.producer is None:
                self.connection.registerProducer(producer, True)

        send = _sender(self.connection, on_backlog, at_turn_end=at_turn_end)
        send(b"small")
        self.end_turn()
        self.assertEqual(calls, [])
        self.assertEqual(self.read_all(), b"small")
        send(b"x" * (8 << 20))  # more than the socket takes: the rest is queued
        if at_turn_end:
            self.assertEqual(calls, [])  # not before the turn ends
            self.end_turn()
        self.assertEqual(calls, [0])
        self.assertEqual(producer.producerState, "paused")
        send(b"more")  # behind queued bytes
        self.assertEqual(len(calls), 2)
        self.assertGreater(calls[1], 0)


class TLSSenderTests(SynchronousTestCase):
    """
    ``_sender`` on Twisted's TLS transport over a real TCP connection object (a socketpair, no
    reactor loop), after a real handshake with a pyOpenSSL client on the other end: records go
    out at once, and ``on_backlog`` comes just before one has to be queued.
    """

    def setUp(self) -> None:
        import socket
        import tempfile

        import trustme
        from OpenSSL import SSL
        from twisted.internet import tcp
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from twisted_lb.tls import ServerTLS

        leaf = trustme.CA().issue_cert("localhost")
        directory = tempfile.mkdtemp(prefix="twisted_lb_tls_sender_")
        self.addCleanup(shutil.rmtree, directory)
        cert, key = os.path.join(directory, "leaf.pem"), os.path.join(directory, "leaf.key")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        options = ServerTLS([(cert, key)])
        self.reactor = MemoryReactorClock()
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setblocking(False)
        peer.setblocking(False)
        factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Protocol))
        self.tls: Any = factory.buildProtocol(None)
        self.connection = tcp.Connection(ours, self.tls, self.reactor)
        self.connection.connected = True
        self.tls.makeConnection(self.connection)
        self.peer = peer
        self.client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), peer)
        self.client.set_connect_state()
        for _ in range(20):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                if compat.tls_handshake_done(self.tls):
                    break
            self.connection.doRead()
            while compat.queued(self.connection):
                self.connection.doWrite()
        self.assertTrue(compat.tls_handshake_done(self.tls))

    def read_all(self) -> bytes:
        from OpenSSL import SSL

        chunks = []
        while True:
            try:
                chunks.append(self.client.recv(1 << 16))
            except SSL.WantReadError:
                return b"".join(chunks)

    def test_records_sent_at_once(self) -> None:
        """Without ``at_turn_end``, a small write reaches the peer now."""
        send = _sender(self.tls)
        send(b"hello")
        self.assertEqual(self.read_all(), b"hello")
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_records_sent_at_turn_end(self) -> None:
        """
        A small write reaches the peer when the reactor turn ends; nothing waits for
        writability or a backlog.
        """
        calls: list[None] = []
        send = _sender(self.tls, lambda: calls.append(None), at_turn_end=True)
        self.assertTrue(sends_at_once(self.tls))
        send(b"hello")
        self.assertEqual(self.read_all(), b"")
        self.reactor.advance(0)
        self.assertEqual(self.read_all(), b"hello")
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(calls, [])

    def test_on_backlog(self) -> None:
        """
        A write larger than the socket takes calls ``on_backlog`` before its first record is
        queued: the producer it registers on the TLS transport is paused by that very write,
        and everything arrives, in order, once the queue drains.
        """
        producer = StringTransport()
        calls: list[int] = []

        def on_backlog() -> None:
            calls.append(compat.queued_bytes(self.connection))
            if compat.tls_producer(self.tls) is None:
                self.tls.registerProducer(producer, True)

        send = _sender(self.tls, on_backlog, at_turn_end=True)
        data = bytes(range(256)) * (32 << 10)  # 8 MiB
        send(data)
        self.reactor.advance(0)
        self.assertEqual(calls[0], 0)
        self.assertEqual(producer.producerState, "paused")
        self.assertEqual(self.reactor.getWriters(), [self.connection])
        received = self.read_all()
        for _ in range(10_000):
            if not compat.queued(self.connection):
                break
            self.connection.doWrite()
            received += self.read_all()
        self.assertEqual(received, data)
        self.assertEqual(producer.producerState, "producing")

    def test_close_writing_sends_held_records(self) -> None:
        """
        ``close_writing`` sends the records held for the end of the turn, then close_notify,
        then the FIN: the peer reads the data, the TLS close and its EOF without another turn.
        """
        from OpenSSL import SSL

        send = _sender(self.tls, at_turn_end=True)
        send(b"last")
        self.assertTrue(close_writing(self.tls))
        self.assertEqual(self.client.recv(1 << 16), b"last")
        self.assertRaises(SSL.ZeroReturnError, self.client.recv, 1)
        self.assertEqual(self.peer.recv(1), b"")

    def test_sender_twice(self) -> None:
        """A second sender for the same TLS transport replaces the first; bytes go out once."""
        first: list[None] = []
        _sender(self.tls, lambda: first.append(None))
        send = _sender(self.tls)
        send(b"once")
        self.reactor.advance(0)
        self.assertEqual(self.read_all(), b"once")
        self.assertEqual(first, [])


class UnwrapTests(SynchronousTestCase):
    def test_endpoint_wrapper_removed(self) -> None:
        """A protocol a client endpoint wrapped gets its TCP connection's reads directly."""
        import socket

        from twisted.internet import tcp
        from twisted.internet.defer import Deferred
        from twisted.internet.endpoints import _WrappingProtocol

        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        protocol = Protocol()
        wrapper = _WrappingProtocol(Deferred(), protocol)
        connection = tcp.Connection(ours, wrapper, MemoryReactorClock())
        protocol.makeConnection(connection)
        unwrap(protocol)
        self.assertIs(connection.protocol, protocol)
        unwrap(protocol)  # already unwrapped: nothing changes
        self.assertIs(connection.protocol, protocol)

    def test_other_transports_left_alone(self) -> None:
        """Not a TCP connection, or not Twisted's endpoint wrapper: nothing changes."""
        import socket

        from twisted.internet import tcp

        protocol = Protocol()
        protocol.makeConnection(StringTransport())
        unwrap(protocol)  # no error
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        other = Protocol()
        connection = tcp.Connection(ours, other, MemoryReactorClock())
        protocol.transport = connection
        unwrap(protocol)
        self.assertIs(connection.protocol, other)


class ReadGateTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        """Reading resumes only when the last reason to pause is gone."""
        transport = StringTransport()
        gate = ReadGate(transport)
        gate.pause("upstream")
        gate.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        gate.resume("upstream")
        self.assertEqual(transport.producerState, "paused")
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_stop_producing_keeps_connection(self) -> None:
        """
        When its consumer goes away, the gate drops that consumer's pause and closes nothing:
        a backend connection dying must not take the client connection with it.
        """
        transport = StringTransport()
        gate = ReadGate(transport)
        gate.pauseProducing()
        gate.stopProducing()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")
