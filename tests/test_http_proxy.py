"""
Unit tests of the HTTP proxy state machine, on a memory reactor with string transports.
"""

from __future__ import annotations

from typing import Any

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb import _compat as compat
from twisted_lb.backend import Backend, BackendState
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.http import proxy
from twisted_lb.http.proxy import HTTPProxyFactory, HTTPProxyProtocol
from twisted_lb.http.routing import Route, Router
from twisted_lb.pool import Pool
from twisted_lb.strategies import get_strategy

CLIENT = IPv4Address("TCP", "192.0.2.1", 5555)
GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def access_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "twisted_lb.access"]


def head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


class ProxyCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [
            Backend.from_address("10.0.0.5:8080", name="a"),
            Backend.from_address("10.0.0.6:8080", name="b"),
            Backend.from_address("10.0.0.7:8080", name="c"),
        ]
        self.pool = Pool(
            "p",
            self.backends,
            get_strategy("round_robin"),
            connect_timeout=3.0,
            retries=1,
            response_timeout=30.0,
        )
        self.factory = HTTPProxyFactory(
            self.reactor,
            self.pool,
            client_timeout=60.0,
            header_timeout=10.0,
            max_body_bytes=1000,
            max_header_bytes=2048,
            frontend="web",
        )

    def tearDown(self) -> None:
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def connect_client(self) -> tuple[HTTPProxyProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        return protocol, transport

    def accept_upstream(self, index: int = -1) -> tuple[Any, StringTransport]:
        factory = self.reactor.tcpClients[index][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse_upstream(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def close_client(self, protocol: HTTPProxyProtocol) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def drain_idle(self) -> None:
        """Let idle upstream connections time out and close them."""
        for stack in list(self.factory.upstreams.idle.values()):
            for connection in list(stack):
                connection.idle_call.cancel()
                connection.idle_call = None
                connection.connectionLost(Failure(ConnectionDone()))


class ExchangeTests(ProxyCase):
    def test_get(self) -> None:
        """
        A GET is forwarded with forwarding headers added and Host kept; the response comes
        back; the upstream connection goes back to the idle pool; one access event is logged.
        """
        client, client_transport = self.connect_client()
        with capturedLogs() as events:
            client.dataReceived(GET)
            upstream, upstream_transport = self.accept_upstream()
            head, body = head_and_body(upstream_transport.value())
            self.assertEqual(body, b"")
            lines = head.split(b"\r\n")
            self.assertEqual(lines[0], b"GET /x HTTP/1.1")
            self.assertIn(b"Host: example.com", lines)
            self.assertIn(b"X-Forwarded-For: 192.0.2.1", lines)
            self.assertIn(b"X-Forwarded-Proto: http", lines)
            upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK)
        [access] = access_events(events)
        self.assertEqual(
            (access["status"], access["backend"], access["method"], access["target"]),
            (200, "a", "GET", "/x"),
        )
        a = self.backends[0]
        self.assertEqual((a.in_flight_requests, a.requests_total, a.responses[1]), (0, 1, 1))
        self.assertEqual(a.active_connections, 0)
        self.assertEqual(
            [c.relay_transport for c in self.factory.upstreams.idle[a]], [upstream_transport]
        )
        self.close_client(client)
        self.drain_idle()

    def test_keep_alive_reuse(self) -> None:
        """A second request to the same backend reuses the idle upstream connection."""
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(OK)
        upstream_transport.clear()
        client.dataReceived(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(upstream_transport.value().startswith(b"GET /x HTTP/1.1"))
        upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK + OK)
        self.close_client(client)
        self.drain_idle()

    def test_upstream_idle_timeout(self) -> None:
        """An idle upstream connection is closed after upstream_idle_timeout (4 s)."""
        client, _ = self.connect_client()
        client.dataReceived(GET)
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(OK)
        self.close_client(client)
        self.reactor.advance(3.9)
        self.assertFalse(upstream_transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(upstream_transport.disconnecting)
        self.assertEqual(self.factory.upstreams.idle[self.backends[0]], [])

    def test_client_idle_timeout(self) -> None:
        """A keep-alive client idle for client_timeout is closed without a response."""
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        client_transport.clear()
        self.reactor.advance(59.9)
        self.assertFalse(client_transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(client_transport.value(), b"")
        self.close_client(client)
        self.drain_idle()

    def test_pipelining(self) -> None:
        """Pipelined requests are answered in order, one exchange at a time."""
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(GET + GET.replace(b"/x", b"/y"))
        self.assertEqual(client_transport.producerState, "paused")
        upstream, upstream_transport = self.accept_upstream()
        self.assertNotIn(b"/y", upstream_transport.value())
        upstream_transport.clear()
        upstream.dataReceived(OK)
        self.assertTrue(upstream_transport.value().startswith(b"GET /y HTTP/1.1"))
        upstream.dataReceived(OK.replace(b"ok", b"OK"))
        self.assertEqual(client_transport.value(), OK + OK.replace(b"ok", b"OK"))
        self.assertEqual(client_transport.producerState, "producing")
        self.close_client(client)
        self.drain_idle()

    def test_pipelined_after_a_chunked_request(self) -> None:
        """
        A chunked request (extensions, trailers) and a GET in one read: the chunk-size line
        walk ends with the first, and the second is answered after it.
        """
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        chunked = (
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;e=1\r\nabc\r\n0;f\r\nT: 1\r\n\r\n"
        )
        client.dataReceived(chunked + GET.replace(b"/x", b"/y"))
        upstream, upstream_transport = self.accept_upstream()
        self.assertTrue(upstream_transport.value().endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
        upstream_transport.clear()
        upstream.dataReceived(OK)
        self.assertTrue(upstream_transport.value().startswith(b"GET /y HTTP/1.1"))
        upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK + OK)
        self.close_client(client)
        self.drain_idle()

    def test_pipelined_before_a_bad_request(self) -> None:
        """
        Requests pipelined before a malformed one, in the same read, are answered in order;
        then the 400, and the connection closes.
        """
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(GET + GET.replace(b"/x", b"/y") + b"GET /z HTTP/1.1\r\nHost h\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        self.assertTrue(upstream_transport.value().startswith(b"GET /x HTTP/1.1"))
        upstream_transport.clear()
        upstream.dataReceived(OK)
        self.assertTrue(upstream_transport.value().startswith(b"GET /y HTTP/1.1"))
        self.assertFalse(client_transport.disconnecting)
        upstream.dataReceived(OK.replace(b"ok", b"OK"))
        answers = client_transport.value()
        self.assertTrue(answers.startswith(OK + OK.replace(b"ok", b"OK") + b"HTTP/1.1 400 "))
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_internal_error_closes(self) -> None:
        """
        An unexpected exception (here from a strategy) answers the active request 500 with
        ``Connection: close``, is logged, and nothing pipelined behind it is answered.
        """

        class Broken:
            def pick(self, backends: Any, info: Any) -> Any:
                raise RuntimeError("broken strategy")

        self.pool.strategy = Broken()
        client, client_transport = self.connect_client()
        with capturedLogs() as events:
            client.dataReceived(GET + GET.replace(b"/x", b"/y"))
        head, _body = head_and_body(client_transport.value())
        self.assertTrue(head.startswith(b"HTTP/1.1 500 "), head)
        self.assertIn(b"Connection: close", head.split(b"\r\n"))
        self.assertEqual(client_transport.value().count(b"HTTP/1.1 "), 1)
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("internal error" in str(e.get("log_format")) for e in events))
        self.close_client(client)

    def test_pipelined_connection_close(self) -> None:
        """
        ``Connection: close`` on the second of two pipelined requests takes effect after the
        second response (RFC 9112 §9.6): the first is answered keep-alive, the second with
        close, and a third behind it is never sent on.
        """
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(
            GET
            + b"GET /y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            + GET.replace(b"/x", b"/z")
        )
        upstream, upstream_transport = self.accept_upstream()
        upstream_transport.clear()
        upstream.dataReceived(OK)
        first = client_transport.value()
        self.assertEqual(first, OK)
        self.assertTrue(upstream_transport.value().startswith(b"GET /y HTTP/1.1"))
        self.assertFalse(client_transport.disconnecting)
        upstream_transport.clear()
        upstream.dataReceived(OK)
        head, body = head_and_body(client_transport.value()[len(first) :])
        self.assertIn(b"Connection: close", head.split(b"\r\n"))
        self.assertEqual(body, b"ok")
        self.assertEqual(upstream_transport.value(), b"")
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_bad_request_after_connection_close(self) -> None:
        """
        After a request that asked to close, the requests pipelined behind it, a malformed one
        included, get nothing (RFC 9112 §9.6): its response says close, and the connection ends.
        """
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(
            b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            + GET.replace(b"/x", b"/y")
            + b"GET /z HTTP/1.1\r\nHost h\r\n\r\n"
        )
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(OK)
        head, body = head_and_body(client_transport.value())
        self.assertIn(b"Connection: close", head.split(b"\r\n"))
        self.assertEqual(body, b"ok")
        self.assertNotIn(b"/y", upstream_transport.value())
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_error_before_a_bad_request(self) -> None:
        """
        A request pipelined before a malformed one whose backend refuses gets its 502 without
        ``Connection: close``; the next one its response; then the 400, which closes.
        """
        self.pool.set_backends(self.backends[:1])
        self.pool.retries = 0
        client, client_transport = self.connect_client()
        client.dataReceived(GET + GET.replace(b"/x", b"/y") + b"GET /z HTTP/1.1\r\nHost h\r\n\r\n")
        self.reactor.tcpClients[0][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )
        first = client_transport.value()
        self.assertTrue(first.startswith(b"HTTP/1.1 502 "), first)
        self.assertNotIn(b"onnection: close", first)
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        answers = client_transport.value()[len(first) :]
        self.assertTrue(answers.startswith(OK + b"HTTP/1.1 400 "), answers)
        self.assertIn(b"Connection: close", answers)
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_connection_close(self) -> None:
        """``Connection: close`` from the client: the response says so and the client closes."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        self.assertNotIn(b"onnection: close", upstream_transport.value())
        upstream.dataReceived(OK)
        head, _ = head_and_body(client_transport.value())
        self.assertIn(b"Connection: close", head.split(b"\r\n"))
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_http10_keep_alive(self) -> None:
        """An HTTP/1.0 client asking for keep-alive gets it."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        self.assertIn(b"Host: 10.0.0.5:8080", upstream_transport.value())
        upstream.dataReceived(OK)
        head, body = head_and_body(client_transport.value())
        self.assertIn(b"Connection: keep-alive", head.split(b"\r\n"))
        self.assertEqual(body, b"ok")
        self.assertFalse(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()


class FramingTests(ProxyCase):
    def exchange(
        self, request: bytes, response: bytes, close_upstream: bool = False
    ) -> tuple[bytes, bytes, StringTransport]:
        client, client_transport = self.connect_client()
        client.dataReceived(request)
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(response)
        if close_upstream:
            upstream.connectionLost(Failure(ConnectionDone()))
        sent = upstream_transport.value()
        self.close_client(client)
        self.drain_idle()
        return sent, client_transport.value(), client_transport

    def test_content_length_body(self) -> None:
        """A Content-Length request body is forwarded as it is."""
        sent, _, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", OK
        )
        head, body = head_and_body(sent)
        self.assertIn(b"Content-Length: 5", head)
        self.assertEqual(body, b"hello")

    def test_chunked_request(self) -> None:
        """A chunked request body is re-framed (chunk extensions and trailers dropped)."""
        sent, _, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
            OK,
        )
        head, body = head_and_body(sent)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    def test_chunked_response(self) -> None:
        """A chunked response is re-chunked for an HTTP/1.1 client."""
        _, received, _ = self.exchange(
            GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
        )
        head, body = head_and_body(received)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"4\r\nabcd\r\n0\r\n\r\n")

    def test_close_delimited_response(self) -> None:
        """A close-delimited response becomes chunked for an HTTP/1.1 client."""
        _, received, _transport = self.exchange(
            GET, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", close_upstream=True
        )
        head, body = head_and_body(received)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, b"b\r\nuntil close\r\n0\r\n\r\n")

    def test_http10_close_delimited(self) -> None:
        """An HTTP/1.0 client gets a chunked response close-delimited, and is closed."""
        _, received, transport = self.exchange(
            b"GET / HTTP/1.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        head, body = head_and_body(received)
        self.assertNotIn(b"chunked", head)
        self.assertEqual(body, b"hi")
        self.assertTrue(transport.disconnecting)

    def test_head(self) -> None:
        """A response to HEAD has no body even with a Content-Length, and is complete."""
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        head, body = head_and_body(client_transport.value())
        self.assertIn(b"Content-Length: 10", head)
        self.assertEqual(body, b"")
        # The upstream connection is reusable: the next request goes over it.
        client.dataReceived(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        upstream.dataReceived(OK)
        self.assertTrue(client_transport.value().endswith(OK))
        self.close_client(client)
        self.drain_idle()

    def test_204_and_304(self) -> None:
        """204 and 304 responses have no body."""
        for status in (b"204 No Content", b"304 Not Modified"):
            _, received, _ = self.exchange(GET, b"HTTP/1.1 " + status + b"\r\n\r\n")
            head, body = head_and_body(received)
            self.assertTrue(head.startswith(b"HTTP/1.1 " + status))
            self.assertEqual(body, b"")
            self.assertNotIn(b"chunked", head)

    def test_interim_responses(self) -> None:
        """A 100 Continue from the backend is forwarded before the final response."""
        _, received, _ = self.exchange(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"))

    def test_hop_by_hop_removed(self) -> None:
        """Hop-by-hop fields, and fields named in Connection, are not forwarded either way."""
        sent, received, _ = self.exchange(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nX-Secret: 1\r\n"
            b"Keep-Alive: 5\r\nTE: trailers\r\nX-Keep: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\n"
            b"Connection: keep-alive, x-hidden\r\nX-Hidden: 1\r\n\r\n",
        )
        for name in (b"X-Secret", b"Keep-Alive", b"TE:", b"Connection"):
            self.assertNotIn(name, sent)
        self.assertIn(b"X-Keep: 1", sent)
        for name in (b"X-Hidden", b"Keep-Alive"):
            self.assertNotIn(name, received)


class ErrorTests(ProxyCase):
    def assert_error(self, data: bytes, status: bytes) -> StringTransport:
        client, client_transport = self.connect_client()
        client.dataReceived(data)
        self.assertTrue(
            client_transport.value().startswith(b"HTTP/1.1 " + status),
            client_transport.value(),
        )
        self.assertTrue(client_transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.close_client(client)
        return client_transport

    def test_smuggling_payloads(self) -> None:
        """Each request-smuggling vector is answered 400 and the connection closed."""
        payloads = [
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n X: leading space\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ]
        for payload in payloads:
            self.assert_error(payload, b"400")

    def test_bad_chunk_framing(self) -> None:
        """Invalid chunk framing mid-body: 400 and close, and the backend exchange is cut."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        client.dataReceived(b"zz\r\nabc\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400"))
        self.assertTrue(upstream_transport.disconnected)
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionLost()))

    def test_other_transfer_codings(self) -> None:
        """
        A transfer coding besides chunked is answered 501 (it would reach the backend
        undeclared once the body is re-chunked), and Transfer-Encoding in HTTP/1.0 is 400.
        """
        self.assert_error(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"501",
        )
        self.assert_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400")

    def test_rejected_request_logged(self) -> None:
        """A request refused before it had an exchange still gets its access event."""
        with capturedLogs() as events:
            self.assert_error(b"GET / HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n", b"431")
        [access] = access_events(events)
        self.assertEqual((access["status"], access["backend"]), (431, "-"))

    def test_header_too_large(self) -> None:
        """A request head over max_header_bytes is answered 431."""
        self.assert_error(b"GET / HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n", b"431")

    def test_body_too_large(self) -> None:
        """A Content-Length over max_body_bytes is answered 413 before any backend is used."""
        self.assert_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", b"413")

    def test_chunked_body_too_large(self) -> None:
        """A chunked body that grows past max_body_bytes is answered 413."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        client.dataReceived(b"3e9\r\n" + b"x" * 1001 + b"\r\n")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 413"))
        self.assertTrue(upstream_transport.disconnected)
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionLost()))

    def test_lowered_limit_spares_uploads_in_flight(self) -> None:
        """
        max_body_bytes lowered (by a reload) mid-upload: the upload in flight keeps the limit
        of its head, Content-Length or chunked; the next request gets the new one.
        """
        for head, parts in [
            (b"Content-Length: 600\r\n\r\n", [b"x" * 300, b"y" * 300]),
            (
                b"Transfer-Encoding: chunked\r\n\r\n",
                [b"12c\r\n" + b"x" * 300 + b"\r\n", b"12c\r\n" + b"y" * 300 + b"\r\n0\r\n\r\n"],
            ),
        ]:
            self.factory.max_body_bytes = 1000
            client, client_transport = self.connect_client()
            client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\n" + head + parts[0])
            upstream, upstream_transport = self.accept_upstream()
            self.factory.max_body_bytes = 100  # the reload
            client.dataReceived(parts[1])
            sent = upstream_transport.value()
            self.assertIn(b"y" * 300, sent, head)
            self.assertFalse(upstream_transport.disconnecting)
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 "), head)
            client_transport.clear()
            client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n")
            self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 413"), head)
            self.close_client(client)
            self.drain_idle()

    def test_header_timeout(self) -> None:
        """A request head not in after header_timeout is answered 408."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n")
        self.reactor.advance(9.9)
        self.assertEqual(client_transport.value(), b"")
        self.reactor.advance(0.1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 408"))
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)

    def test_silent_connection(self) -> None:
        """A connection that sends nothing is closed after header_timeout without a response."""
        client, client_transport = self.connect_client()
        self.reactor.advance(10)
        self.assertEqual(client_transport.value(), b"")
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)

    def test_no_backend(self) -> None:
        """With no backend UP the answer is 503 at once, and the connection stays open."""
        for backend in self.backends:
            backend.state = BackendState.DOWN
        client, client_transport = self.connect_client()
        with capturedLogs() as events:
            client.dataReceived(GET)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 503"))
        self.assertFalse(client_transport.disconnecting)
        [access] = access_events(events)
        self.assertEqual(access["status"], 503)
        self.close_client(client)

    def test_connect_failover_then_502(self) -> None:
        """
        A refused connect goes on to the next backend; when retries run out, 502. The log
        says how many attempts are left each time.
        """
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        with capturedLogs() as events:
            self.refuse_upstream()
            self.assertEqual(len(self.reactor.tcpClients), 2)
            self.refuse_upstream()
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 502"))
        failed = [formatEvent(e) for e in events if "failed:" in e.get("log_format", "")]
        self.assertEqual(
            [line.rsplit("; ", 1)[1] for line in failed], ["attempts left: 1", "attempts left: 0"]
        )
        self.assertEqual([b.connect_failures for b in self.backends], [1, 1, 0])
        self.assertEqual([b.in_flight_requests for b in self.backends], [0, 0, 0])
        self.assertEqual([b.active_connections for b in self.backends], [0, 0, 0])
        self.close_client(client)

    def test_connect_timeout(self) -> None:
        """A connect that does not complete within connect_timeout goes to the next backend."""
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        self.reactor.advance(3.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK)
        self.close_client(client)
        self.drain_idle()

    def test_response_timeout(self) -> None:
        """No response byte within response_timeout: 504, and the connection is not reused."""
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        _, upstream_transport = self.accept_upstream()
        self.reactor.advance(30)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 504"))
        self.assertTrue(upstream_transport.disconnected)
        self.assertEqual(self.factory.upstreams.idle.get(self.backends[0], []), [])
        self.close_client(client)

    def test_request_body_stalls(self) -> None:
        """A request body that stops coming for client_timeout is answered 408."""
        client, client_transport = self.connect_client()
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        _, upstream_transport = self.accept_upstream()
        self.reactor.advance(30)
        client.dataReceived(b"de")  # activity: the count starts again
        self.reactor.advance(59.9)
        self.assertEqual(client_transport.value(), b"")
        self.reactor.advance(0.1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 408"))
        self.assertTrue(upstream_transport.disconnected)
        self.close_client(client)

    def test_response_body_stalls(self) -> None:
        """A response that stops midway for client_timeout is cut, both sides."""
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        self.reactor.advance(40)
        upstream.dataReceived(b" more")
        self.reactor.advance(59.9)
        self.assertFalse(client_transport.disconnected)
        with capturedLogs() as events:
            self.reactor.advance(0.1)
        self.assertTrue(client_transport.disconnected)
        self.assertTrue(upstream_transport.disconnected)
        self.assertTrue(any("streaming a body" in e["log_format"] for e in events))
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionLost()))

    def test_keep_alive_race_retried(self) -> None:
        """
        A reused upstream connection that closes before any response byte: the request is
        sent again once on a fresh connection, and the client never sees an error.
        """
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        client.dataReceived(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        upstream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        fresh, fresh_transport = self.accept_upstream()
        self.assertTrue(fresh_transport.value().startswith(b"POST /p HTTP/1.1"))
        fresh.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK + OK)
        self.close_client(client)
        self.drain_idle()

    def test_non_idempotent_body_not_retried(self) -> None:
        """A POST whose body was sent is not sent again when its connection fails: 502."""
        self.pool.set_backends(self.backends[:1])
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        client.dataReceived(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        upstream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client_transport.value().endswith(b"502 Bad Gateway\n"))
        self.close_client(client)

    def test_idempotent_retried_on_next_backend(self) -> None:
        """A GET whose fresh connection resets before any response goes to the next backend."""
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        upstream, _ = self.accept_upstream()
        upstream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.reactor.tcpClients[1][0], "10.0.0.6")
        second, second_transport = self.accept_upstream()
        self.assertTrue(second_transport.value().startswith(b"GET /x HTTP/1.1"))
        second.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK)
        self.close_client(client)
        self.drain_idle()

    def test_client_leaves_mid_response(self) -> None:
        """
        A client that disconnects mid-response aborts the upstream exchange; that connection
        is never reused, and nothing is logged as an error.
        """
        client, _ = self.connect_client()
        client.dataReceived(GET)
        upstream, upstream_transport = self.accept_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        with capturedLogs() as events:
            self.close_client(client)
        self.assertTrue(upstream_transport.disconnected)
        upstream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.factory.upstreams.idle.get(self.backends[0], []), [])
        self.assertEqual(
            [
                e
                for e in events
                if e.get("log_level") is not None and e["log_level"].name in ("error", "critical")
            ],
            [],
        )
        [access] = access_events(events)
        self.assertEqual(access["status"], 200)
        self.assertEqual(self.backends[0].in_flight_requests, 0)

    def test_client_leaves_while_connecting(self) -> None:
        """A client that disconnects while its backend connects cancels the attempt."""
        client, _ = self.connect_client()
        client.dataReceived(GET)
        self.close_client(client)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.backends[0].in_flight_requests, 0)
        self.assertEqual(self.backends[0].connect_failures, 0)

    def test_internal_error_while_connecting(self) -> None:
        """
        An internal error while the backend connects answers 500 and closes; the cancelled
        connect is not a connect failure, and no other backend is tried.
        """
        client, client_transport = self.connect_client()
        client.dataReceived(GET)
        client.internal_error(Failure(ZeroDivisionError()))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 500 "))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual([b.connect_failures for b in self.backends], [0, 0, 0])
        self.assertEqual([b.in_flight_requests for b in self.backends], [0, 0, 0])
        self.close_client(client)


class StrictRequestTests(ProxyCase):
    """
    What llhttp lets through and RFC 9112 or nginx refuse (issue 11, from a request-smuggling
    corpus): Host rules, HTTP versions, chunk sizes, header names with an underscore.
    """

    def refused(self, data: bytes, status: bytes, factory: HTTPProxyFactory | None = None) -> None:
        """``data`` is answered ``status`` and the connection closed; no backend is used."""
        if factory is not None:
            self.factory = factory
        client, client_transport = self.connect_client()
        with capturedLogs():
            client.dataReceived(data)
        self.assertTrue(
            client_transport.value().startswith(b"HTTP/1.1 " + status + b" "),
            (data, client_transport.value()),
        )
        self.assertTrue(client_transport.disconnecting, data)
        self.assertEqual(self.reactor.tcpClients, [], data)
        self.close_client(client)

    def forwarded(self, data: bytes, factory: HTTPProxyFactory | None = None) -> bytes:
        """``data`` reaches a backend; returns what the backend got. The exchange is closed."""
        if factory is not None:
            self.factory = factory
        client, client_transport = self.connect_client()
        with capturedLogs():
            client.dataReceived(data)
        self.assertEqual(client_transport.value(), b"", data)
        upstream, upstream_transport = self.accept_upstream()
        sent = upstream_transport.value()
        upstream.dataReceived(OK)
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionDone()))
        self.drain_idle()
        self.reactor.tcpClients.clear()
        return sent

    def unlimited(self, **options: Any) -> HTTPProxyFactory:
        """A factory like setUp's, with ``max_body_bytes = 0`` (no limit)."""
        options.setdefault("max_header_bytes", 2048)
        return HTTPProxyFactory(self.reactor, self.pool, **options)

    def test_duplicate_host(self) -> None:
        """Two Host field lines: 400 (RFC 9112 §3.2), in any case and with the same value."""
        self.refused(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", b"400")
        self.refused(b"GET / HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n", b"400")
        self.refused(b"GET / HTTP/1.0\r\nHost: a.test\r\nHOST: b.test\r\n\r\n", b"400")

    def test_http11_without_host(self) -> None:
        """HTTP/1.1 without Host: 400 (RFC 9112 §3.2); HTTP/1.0 without Host is forwarded."""
        self.refused(b"GET / HTTP/1.1\r\n\r\n", b"400")
        self.refused(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", b"400")
        sent = self.forwarded(b"GET / HTTP/1.0\r\n\r\n")
        self.assertIn(b"\r\nHost: 10.0.0.5:8080\r\n", sent)

    def test_invalid_host(self) -> None:
        """A Host that is not ``uri-host [":" port]`` is 400 (RFC 9110 §7.2, RFC 9112 §3.2)."""
        for host in [b"a b", b"a/b", b"a\\b", b"user@a", b"a:80x", b"[::1", b"a?b", b"a#b"]:
            self.refused(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", b"400")
        for host in [
            b"example.com",
            b"example.com:8080",
            b"10.0.0.1:80",
            b"[2001:db8::1]:443",
            b"my_host.test",
            b"",
            b"xn--bcher-kva.test",
            b"a%2Db",
        ]:
            sent = self.forwarded(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            self.assertIn(b"\r\nHost: " + host + b"\r\n", sent)

    def test_valid_host_cache_keeps_short_values_only(self) -> None:
        """
        Valid Host values of up to 255 bytes are cached; longer ones are checked each time
        and never kept, so the cache stays small whatever max_header_bytes is.
        """
        self.addCleanup(proxy._valid_hosts.clear)
        proxy._valid_hosts.clear()
        short, long = b"a" * 255, b"b" * 256 + b".test"
        self.assertTrue(proxy.valid_host(short))
        self.assertTrue(proxy.valid_host(long))
        self.assertEqual(proxy._valid_hosts, {short})
        sent = self.forwarded(b"GET / HTTP/1.1\r\nHost: " + long + b"\r\n\r\n")
        self.assertIn(b"\r\nHost: " + long + b"\r\n", sent)
        self.assertEqual(proxy._valid_hosts, {short})
        self.refused(b"GET / HTTP/1.1\r\nHost: " + long + b" x\r\n\r\n", b"400")

    def test_absolute_form_target_replaces_host(self) -> None:
        """
        With an absolute-form target, the target's authority replaces Host (RFC 9112 §3.2.2),
        userinfo left out, and X-Forwarded-Host and Forwarded host= follow it; HTTP/1.0
        without Host gets one.
        """
        sent = self.forwarded(b"GET http://evil.test/admin HTTP/1.1\r\nHost: good.test\r\n\r\n")
        head = sent.partition(b"\r\n\r\n")[0]
        self.assertNotIn(b"good.test", head)
        self.assertIn(b"\r\nHost: evil.test\r\n", head)
        self.assertIn(b"\r\nX-Forwarded-Host: evil.test\r\n", head)
        self.assertIn(b";host=evil.test\r\n", sent)
        sent = self.forwarded(b"GET http://u@a.test:8080?q HTTP/1.0\r\n\r\n")
        self.assertIn(b"\r\nHost: a.test:8080\r\n", sent)
        self.assertIn(b';host="a.test:8080"', sent)
        sent = self.forwarded(b"OPTIONS * HTTP/1.1\r\nHost: good.test\r\n\r\n")
        self.assertIn(b"\r\nHost: good.test\r\n", sent)

    def test_http_versions(self) -> None:
        """
        As nginx answers them: HTTP/2.0 and later 505, a version 0.x and an HTTP/2 preface
        400; HTTP/1.2 to 1.9 are served as HTTP/1.1 (RFC 9110 §2.5), keep-alive included.
        """
        for version in [b"2.0", b"3.0", b"9.9"]:
            self.refused(b"GET / HTTP/" + version + b"\r\nHost: h\r\n\r\n", b"505")
        # An HTTP/2 client with prior knowledge: 400, as nginx 1.22 answers its preface, and
        # the log says what it was.
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.refused(preface, b"400")
        client, _ = self.connect_client()
        with capturedLogs() as events:
            client.dataReceived(preface)
        self.close_client(client)
        self.assertIn(
            "frontend web: malformed request from 192.0.2.1: an HTTP/2 connection preface "
            "(PRI * HTTP/2.0); this listener speaks HTTP/1.1",
            [formatEvent(event) for event in events],
        )
        for version in [b"0.9", b"0.0"]:
            self.refused(b"GET / HTTP/" + version + b"\r\nHost: h\r\n\r\n", b"400")
        client, client_transport = self.connect_client()
        client.dataReceived(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n")
        upstream, upstream_transport = self.accept_upstream()
        self.assertTrue(upstream_transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK)
        self.assertFalse(client_transport.disconnecting)
        self.close_client(client)
        self.drain_idle()

    def test_absurd_chunk_size(self) -> None:
        """
        A chunk size over 2^52 - 1 (HAProxy's limit) is 400 before any backend is used,
        without max_body_bytes too; 2^52 - 1 itself is taken.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for size in [b"FFFFFFFFFFFFFFFF", b"10000000000000", b"000010000000000000;a=b"]:
            self.refused(head + size + b"\r\nabc", b"400", self.unlimited())
        sent = self.forwarded(head + b"FFFFFFFFFFFFF\r\nabc", self.unlimited())
        self.assertTrue(sent.endswith(b"\r\n\r\n3\r\nabc\r\n"), sent)

    def test_chunk_size_over_max_body_bytes(self) -> None:
        """A chunk size that would take the body past max_body_bytes is 413 before its data."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.refused(head + b"3e9\r\n", b"413")
        self.refused(head + b"3e8\r\n" + b"x" * 1000 + b"\r\n1\r\n", b"413")

    def test_absurd_chunk_size_split_over_reads(self) -> None:
        """The size line in one-byte reads, or after a good chunk, is still checked."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.factory = self.unlimited()
        client, client_transport = self.connect_client()
        client.dataReceived(head + b"3\r\nabc\r\nF")
        upstream, upstream_transport = self.accept_upstream()
        for byte in b"FFFFFFFFFFFFFFF\r\nxyz":
            client.dataReceived(bytes([byte]))
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(upstream_transport.disconnected)
        self.assertNotIn(b"x", upstream_transport.value().partition(b"\r\n\r\n")[2])
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionLost()))

    def test_absurd_chunk_size_mid_body(self) -> None:
        """After good chunks were streamed, an absurd one is refused before its data is sent."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.factory = self.unlimited()
        client, client_transport = self.connect_client()
        client.dataReceived(head)
        upstream, upstream_transport = self.accept_upstream()
        client.dataReceived(b"3\r\nabc\r\n")
        client.dataReceived(b"2\r\nde\r\nFFFFFFFFFFFFFFFF\r\nsecret")
        self.assertTrue(client_transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(upstream_transport.disconnected)
        body = upstream_transport.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(body, b"3\r\nabc\r\n")
        self.close_client(client)
        upstream.connectionLost(Failure(ConnectionLost()))

    def chunked_session(self, reads: list[bytes]) -> tuple[bytes, bytes]:
        """
        A chunked request in ``reads`` (the backend accepted once the head is read); returns
        what the client got and the body the backend got. Everything is closed.
        """
        self.factory = self.unlimited(max_header_bytes=8192)
        client, client_transport = self.connect_client()
        upstream = upstream_transport = None
        with capturedLogs():
            for data in reads:
                client.dataReceived(data)
                if upstream is None and self.reactor.tcpClients:
                    upstream, upstream_transport = self.accept_upstream()
        sent = b"" if upstream_transport is None else upstream_transport.value()
        if upstream is not None and not upstream_transport.disconnecting:
            upstream.dataReceived(OK)
        answer = client_transport.value()
        self.close_client(client)
        if upstream is not None:
            upstream.connectionLost(Failure(ConnectionDone()))
        self.drain_idle()
        self.reactor.tcpClients.clear()
        return answer, sent.partition(b"\r\n\r\n")[2]

    def test_chunk_size_line_limit_however_it_arrives(self) -> None:
        """
        A chunk-size line (extensions and CRLF included) of 4096 bytes is taken and one of
        4097 refused with 400, after a chunk or first, whole in one read or split anywhere:
        none of the long chunk's data reaches the backend.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for first in (b"", b"3\r\nabc\r\n"):
            for length, ok in ((4096, True), (4097, False)):
                line = b"5;a=" + b"x" * (length - 6) + b"\r\n"
                self.assertEqual(len(line), length)
                body = first + line + b"hello\r\n0\r\n\r\n"
                cuts = sorted({*range(1, len(body), 211), *range(len(body) - 30, len(body))})
                for cut in [len(body), *cuts]:
                    reads = [head + body[:cut], body[cut:]] if cut < len(body) else [head + body]
                    answer, sent = self.chunked_session([r for r in reads if r])
                    if ok:
                        self.assertEqual(answer, OK, (length, cut))
                        self.assertEqual(_dechunk(sent), first[3:6] + b"hello", (length, cut))
                    else:
                        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (length, cut))
                        self.assertNotIn(b"hello", sent, (length, cut))

    def test_empty_read_mid_chunk(self) -> None:
        """
        An empty read in the middle of a chunk sends nothing: no empty chunk, which would be
        the backend's end of the body.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        client, client_transport = self.connect_client()
        client.dataReceived(head)
        upstream, upstream_transport = self.accept_upstream()
        client.dataReceived(b"a\r\nabc")
        client.dataReceived(b"")
        client.dataReceived(b"defghij\r\n0\r\n\r\n")
        sent = upstream_transport.value().partition(b"\r\n\r\n")[2]
        self.assertEqual(sent, b"3\r\nabc\r\n7\r\ndefghij\r\n0\r\n\r\n")
        upstream.dataReceived(OK)
        self.assertEqual(client_transport.value(), OK)
        self.close_client(client)
        self.drain_idle()

    def test_chunked_body_in_small_reads(self) -> None:
        """
        A chunked body in reads of every size, extensions included, reaches the backend
        whole and in order (its data is held only while a chunk size is checked).
        """
        body = b"3;ext=1\r\nabc\r\n0000A\r\n0123456789\r\n1\r\nz\r\n0\r\nT: t\r\n\r\n"
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for step in [1, 2, 3, 5, 7, len(body)]:
            client, client_transport = self.connect_client()
            client.dataReceived(head)
            upstream, upstream_transport = self.accept_upstream()
            for at in range(0, len(body), step):
                client.dataReceived(body[at : at + step])
            sent = upstream_transport.value().partition(b"\r\n\r\n")[2]
            data = _dechunk(sent)
            self.assertEqual(data, b"abc0123456789z", (step, sent))
            self.assertTrue(sent.endswith(b"0\r\n\r\n"), (step, sent))
            upstream.dataReceived(OK)
            self.assertEqual(client_transport.value(), OK)
            self.close_client(client)
            self.drain_idle()
            self.reactor.tcpClients.clear()

    def test_underscore_header_dropped(self) -> None:
        """
        A header name with ``_`` is dropped (nginx ``underscores_in_headers off``):
        ``Transfer_Encoding`` beside Content-Length never reaches the backend. The drops are
        logged once per request, with their count and the first name.
        """
        with capturedLogs() as events:
            sent = self.forwarded(
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nX_Real_IP: 1.2.3.4"
                b"\r\nX-Ok: 1\r\nContent-Length: 3\r\n\r\nabc"
            )
        head, body = head_and_body(sent)
        self.assertNotIn(b"_", head)
        self.assertIn(b"\r\nX-Ok: 1\r\n", head)
        self.assertEqual(body, b"abc")
        self.assertEqual(
            [
                (e["count"], e["name"])
                for e in events
                if "underscores_in_headers" in e.get("log_format", "")
            ],
            [(2, "Transfer_Encoding")],
        )

    def test_many_underscore_headers_one_event(self) -> None:
        """
        A head of hundreds of underscore fields makes one log event per request, not one per
        field; the next request on the connection counts its own.
        """
        junk = b"".join(b"a_%d: x\r\n" % i for i in range(300))
        with capturedLogs() as events:
            self.forwarded(
                b"GET / HTTP/1.1\r\nHost: h\r\n" + junk + b"\r\n",
                self.unlimited(max_header_bytes=65536),
            )
            self.forwarded(b"GET / HTTP/1.1\r\nHost: h\r\nb_c: 1\r\n\r\n")
        self.assertEqual(
            [
                (e["count"], e["name"])
                for e in events
                if "underscores_in_headers" in e.get("log_format", "")
            ],
            [(300, "a_0"), (1, "b_c")],
        )

    def test_request_line_spaces_normalised(self) -> None:
        """
        llhttp, like nginx, reads ``GET  /x HTTP/1.1`` (more than one SP) as ``GET /x``
        (RFC 9112 §3 allows it); the backend always gets a request line with single spaces.
        """
        for line in [b"GET  /x HTTP/1.1", b"GET /x  HTTP/1.1", b"GET   /x   HTTP/1.1"]:
            sent = self.forwarded(line + b"\r\nHost: h\r\n\r\n")
            self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\n"), sent)

    def test_underscores_in_headers_config(self) -> None:
        """``underscores_in_headers``: false by default, a boolean, for http frontends only."""
        text = (
            '[frontends.web]\nmode = "http"\nlisten = ["tcp:8080"]\npool = "app"\n{extra}\n'
            '[pools.app]\nbackends = [{{ address = "127.0.0.1:9001" }}]\n'
        )
        config = parse_config(text.format(extra=""))
        self.assertFalse(config.frontends["web"].underscores_in_headers)
        config = parse_config(text.format(extra="underscores_in_headers = true"))
        self.assertTrue(config.frontends["web"].underscores_in_headers)
        for extra, message in [
            (
                'underscores_in_headers = "on"',
                "lb.toml: frontends.web.underscores_in_headers: must be true or false, "
                "not a string",
            ),
            (
                'underscores_in_headers = true\nmode = "tcp"',
                "lb.toml: frontends.web.underscores_in_headers: only for mode",
            ),
        ]:
            source = text.format(extra=extra)
            if 'mode = "tcp"' in extra:
                source = source.replace('mode = "http"\n', "", 1)
            with self.assertRaises(ConfigError) as raised:
                parse_config(source, "lb.toml")
            self.assertIn(message, str(raised.exception))

    def test_underscores_in_headers_kept(self) -> None:
        """With ``underscores_in_headers`` they are forwarded as received."""
        sent = self.forwarded(
            b"GET / HTTP/1.1\r\nHost: h\r\nX_Real_IP: 1.2.3.4\r\n\r\n",
            self.unlimited(underscores_in_headers=True),
        )
        self.assertIn(b"\r\nX_Real_IP: 1.2.3.4\r\n", sent)


def _dechunk(data: bytes) -> bytes:
    """The data of a chunked body (trailers ignored)."""
    out = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


class UpgradeTests(ProxyCase):
    def test_websocket_tunnel(self) -> None:
        """A 101 turns the pair into a byte tunnel with its own idle timeout."""
        client, client_transport = self.connect_client()
        client.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        upstream, upstream_transport = self.accept_upstream()
        head, _ = head_and_body(upstream_transport.value())
        self.assertIn(b"Upgrade: websocket", head.split(b"\r\n"))
        self.assertIn(b"Connection: upgrade", head.split(b"\r\n"))
        upstream_transport.clear()
        upstream.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"\r\nfrom-server"
        )
        received = client_transport.value()
        self.assertTrue(received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"Upgrade: websocket", received)
        self.assertTrue(received.endswith(b"\r\n\r\nfrom-server"))
        client.dataReceived(b"from-client")
        self.assertEqual(upstream_transport.value(), b"from-client")
        with capturedLogs() as events:
            self.reactor.advance(3600)
        self.assertTrue(client_transport.disconnecting)
        self.close_client(client)
        [access] = access_events(events)
        self.assertEqual(access["status"], 101)
        self.assertGreater(access["bytes_in"], len(b"from-client"))
        upstream.connectionLost(Failure(ConnectionDone()))


class RoutingTests(ProxyCase):
    def test_routes(self) -> None:
        """Requests are routed by host and path prefix; no match falls back to the default."""
        api = Pool(
            "api", [Backend.from_address("10.0.1.1:80", name="api1")], get_strategy("round_robin")
        )
        self.factory.router = Router([Route(api, path_prefix="/api/")], self.pool)
        client, _ = self.connect_client()
        client.dataReceived(b"GET /api/v1 HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(self.reactor.tcpClients[-1][0], "10.0.1.1")
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        client.dataReceived(GET)
        self.assertEqual(self.reactor.tcpClients[-1][0], "10.0.0.5")
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        self.close_client(client)
        self.drain_idle()


class _ResponseCollector:
    """httptools callbacks that count complete responses."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


class FuzzTests(ProxyCase):
    """Arbitrary bytes at the proxy never produce a malformed response or an error."""

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from(
                    [
                        GET,
                        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
                        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"1\r\na\r\n0\r\n\r\n",
                        b"FFFFFFFFFFFFFFFF\r\n",
                        b"Host: a\r\n",
                        b"HEAD / HTTP/1.0\r\n\r\n",
                        b"Content-Length: 5\r\n",
                        b"Transfer-Encoding: chunked\r\n",
                        b"\r\n",
                        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                        b"Connection: upgrade\r\n\r\n",
                    ]
                ),
            ),
            max_size=8,
        )
    )
    def test_arbitrary_bytes(self, chunks: list[bytes]) -> None:
        """
        For any bytes, in any chunking, the client gets well-formed HTTP responses or a close,
        every backend connection gets an answer, and nothing is logged as an error.
        """
        reactor = self.reactor = MemoryReactorClock()
        factory = HTTPProxyFactory(reactor, self.pool, max_header_bytes=512, max_body_bytes=100)
        client = factory.buildProtocol(CLIENT)
        client_transport = StringTransport(peerAddress=CLIENT)
        client.makeConnection(client_transport)
        answered = 0
        upstreams = []
        for chunk in chunks:
            if client_transport.disconnecting:
                break
            client.dataReceived(chunk)
            for _ in range(20):  # answer every request that reached a backend
                progressed = False
                while answered < len(reactor.tcpClients):
                    protocol, transport = self._accept(reactor, answered)
                    upstreams.append((protocol, transport))
                    answered += 1
                    progressed = True
                for protocol, transport in upstreams:
                    if transport.value().count(b"\r\n\r\n") and not transport.disconnecting:
                        transport.clear()
                        protocol.dataReceived(OK)
                        progressed = True
                if not progressed:
                    break
        collector = _ResponseCollector()
        parser = httptools.HttpResponseParser(collector)
        output = client_transport.value()
        # Raises on anything malformed. (A response to HEAD may stay incomplete here: this
        # parser does not know the request was HEAD and waits for its Content-Length.)
        parser.feed_data(output)
        if b"HEAD" not in b"".join(chunks) and output:
            self.assertGreaterEqual(collector.complete, 1)
        client.connectionLost(Failure(ConnectionDone()))
        for protocol, transport in upstreams:
            if not transport.disconnected:
                protocol.connectionLost(Failure(ConnectionDone()))
        factory.upstreams.close_idle()
        for protocol, _ in upstreams:
            protocol.connectionLost(Failure(ConnectionDone()))
        reactor.advance(3600)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def _accept(self, reactor: MemoryReactorClock, index: int) -> tuple[Any, StringTransport]:
        protocol = reactor.tcpClients[index][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class LingeringCloseTests(ProxyCase):
    """
    A request refused before its body is read, on a real TCP connection object (a socketpair;
    the clock is the memory reactor's): the answer is followed by a half-close, and the
    client's further bytes are read and discarded until it closes, ``lingering_timeout``
    passes without a byte, or ``lingering_time`` is up (nginx's lingering close).
    """

    def setUp(self) -> None:
        super().setUp()
        import socket

        from twisted.internet import tcp

        self.factory.lingering_time = 30.0
        self.factory.lingering_timeout = 5.0
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.protocol = self.factory.buildProtocol(CLIENT)
        self.connection = tcp.Connection(ours, self.protocol, self.reactor)
        self.connection.connected = True
        self.protocol.makeConnection(self.connection)
        self.addCleanup(self.protocol.connectionLost, Failure(ConnectionDone()))

    def refuse(self) -> bytes:
        """Send a head whose Content-Length is over max_body_bytes; return the answer."""
        self.protocol.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n" + b"u" * 100
        )
        self.reactor.advance(0)  # the end of the reactor turn
        while compat.queued(self.connection):
            self.connection.doWrite()
        if compat.write_side(self.connection) == "closing":
            self.connection.doWrite()  # the half-close itself happens in doWrite
        return self.peer.recv(65536)

    def assert_closed(self) -> None:
        """The socket is closed (aborted: whatever is still queued is dropped)."""
        self.reactor.advance(0)
        self.assertTrue(self.protocol.lost)
        self.assertFalse(self.connection.connected)
        self.assertNotIn(self.connection, self.reactor.getReaders())

    def test_half_close_then_discard(self) -> None:
        """The 413 is written, then a FIN; later bytes are read and dropped, not parsed."""
        answer = self.refuse()
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertEqual(self.peer.recv(1), b"")  # the FIN: the client reads its EOF
        self.assertEqual(compat.write_side(self.connection), "shut")
        self.assertFalse(self.protocol.lost)
        self.assertIn(self.connection, self.reactor.getReaders())
        self.protocol.dataReceived(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_closed_after_lingering_timeout(self) -> None:
        """Bytes keep it open; lingering_timeout without one closes it."""
        self.refuse()
        self.reactor.advance(4.0)
        self.protocol.dataReceived(b"u" * 100)
        self.reactor.advance(4.0)
        self.assertFalse(self.protocol.lost)
        self.reactor.advance(1.1)
        self.assert_closed()

    def test_closed_after_lingering_time(self) -> None:
        """A client that never stops sending is closed after lingering_time in all."""
        self.refuse()
        for _ in range(29):
            self.reactor.advance(1.0)
            self.protocol.dataReceived(b"u" * 100)
        self.assertFalse(self.protocol.lost)
        self.reactor.advance(1.1)
        self.assert_closed()

    def test_client_not_reading(self) -> None:
        """
        A client that neither reads nor stops sending: the response stays queued (no FIN
        yet), and the connection is still closed after lingering_time.
        """
        try:  # the client's receive buffer is full
            for _ in range(10_000):
                self.connection.socket.send(b"\0" * 65536)
        except BlockingIOError:
            pass
        self.protocol.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n"
        )
        self.assertTrue(compat.queued(self.connection))
        for _ in range(29):
            self.reactor.advance(1.0)
            self.protocol.dataReceived(b"u" * 100)
        self.reactor.advance(1.1)
        self.assert_closed()

    def test_no_lingering_when_shutting_down(self) -> None:
        """
        A refusal during a graceful shutdown (here behind a request in flight) does not
        linger: the connection closes once the response in flight is written.
        """
        self.pool.set_backends(self.backends[:1])
        self.protocol.dataReceived(GET)
        self.protocol.close("shutdown")
        self.protocol.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n"
        )
        upstream, _ = self.accept_upstream()
        upstream.dataReceived(OK)
        self.reactor.advance(0)  # the end of the reactor turn
        self.assertFalse(self.protocol.lingering)
        self.assertTrue(self.connection.disconnecting)
        self.assertIsInstance(self.connection.doWrite(), ConnectionDone)  # written, then closed
        self.assertTrue(self.peer.recv(65536).startswith(b"HTTP/1.1 200 "))
        self.drain_idle()

    def test_string_transport_closes_at_once(self) -> None:
        """A transport that can neither half-close nor send close_notify closes at once."""
        protocol, transport = self.connect_client()
        protocol.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
