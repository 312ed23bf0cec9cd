"""
The PROXY protocol (v1 and v2) on ``haproxy:`` listeners: the client address it carries is the
client address everywhere (``X-Forwarded-For``, ``Forwarded``, the access log, the strategy's
``ConnectionInfo``), in http and tcp mode, over TLS too; a peer outside ``proxy_protocol_from``
is refused.

Integration tests run a real ``twistd -n lb`` with raw-socket clients that write the header
themselves, as the balancer in front would (the formats of
https://www.haproxy.org/download/3.2/doc/proxy-protocol.txt); unit tests use Twisted's fakes.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import struct
import time
from pathlib import Path

import trustme
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._harness import (
    TWISTD,
    Process,
    environ_with,
    free_port,
    read_response,
    start_backend,
    start_lb,
)
from tests.test_integration_http import LOG_ERRORS, TIMEOUT, echoed, header_values
from tests.test_integration_tls import write_pair
from twisted_lb._address import proxy_listener
from twisted_lb._frontend import ProxyHeaderFactory
from twisted_lb.backend import Backend
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.http.proxy import HTTPProxyFactory, HTTPProxyProtocol
from twisted_lb.pool import Pool
from twisted_lb.service import LoadBalancerService
from twisted_lb.strategies import get_strategy
from twisted_lb.tcp import TCPRelayFactory, _ClientSide

#: The 12 bytes every v2 header starts with (proxy-protocol.txt §2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: Where the clients of these tests say they connect from: the documentation networks.
CLIENT = "203.0.113.9"


def v1_header(source: str, source_port: int = 56324, dest: str = "192.0.2.1") -> bytes:
    """A PROXY v1 line (proxy-protocol.txt §2.1): ``PROXY TCP4 src dst sport dport``."""
    family = "TCP6" if ":" in source else "TCP4"
    if family == "TCP6" and ":" not in dest:
        dest = "2001:db8::1"
    return f"PROXY {family} {source} {dest} {source_port} 443\r\n".encode()


def v2_header(
    source: str, source_port: int = 56324, dest: str = "192.0.2.1", *, local: bool = False
) -> bytes:
    """
    A PROXY v2 binary header (proxy-protocol.txt §2.2): the signature, version 2 with the
    PROXY (or LOCAL) command, TCP over IPv4 or IPv6, then the addresses and ports.
    """
    source_ip = ipaddress.ip_address(source)
    if source_ip.version == 6:
        dest_ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
            "2001:db8::1"
        )
        family = 0x21  # AF_INET6, STREAM
    else:
        dest_ip = ipaddress.IPv4Address(dest)
        family = 0x11  # AF_INET, STREAM
    body = source_ip.packed + dest_ip.packed + struct.pack("!HH", source_port, 443)
    command = 0x20 if local else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


class ProxyProtocolCase(SynchronousTestCase):
    def start_backend(self, mode: str, name: str, **env: str) -> tuple[Process, int]:
        process, port = start_backend(mode, name, environ_with(**env) if env else None)
        self.addCleanup(process.kill)
        return process, port

    def start_lb(self, config: str) -> tuple[Process, int]:
        path = Path(self.mktemp() + ".toml")
        path.write_text(config)
        process, port = start_lb(str(path))
        self.addCleanup(process.kill)
        self.addCleanup(self.stop_and_check_log, process)
        return process, port

    def stop_and_check_log(self, lb: Process) -> None:
        lb.stop()
        bad = [line for line in lb.output().splitlines() if LOG_ERRORS.search(line)]
        self.assertEqual(bad, [], "\n" + lb.output())

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    def http_config(
        self,
        backend_port: int,
        *,
        listen: str = "haproxy:tcp:0:interface=127.0.0.1",
        extra: str = "",
    ) -> str:
        return (
            "[frontends.web]\n"
            'mode = "http"\n'
            f'listen = ["{listen}"]\n'
            'pool = "app"\n'
            f"{extra}\n"
            "[pools.app]\n"
            f'backends = [{{ address = "127.0.0.1:{backend_port}" }}]\n'
        )

    def tcp_config(self, backend_ports: list[int], *, strategy: str = "source_hash") -> str:
        backends = ", ".join(
            f'{{ address = "127.0.0.1:{port}", name = "b{i}" }}'
            for i, port in enumerate(backend_ports, 1)
        )
        return (
            "[frontends.web]\n"
            'mode = "tcp"\n'
            'listen = ["haproxy:tcp:0:interface=127.0.0.1"]\n'
            'pool = "app"\n'
            "[pools.app]\n"
            f'strategy = "{strategy}"\n'
            f"backends = [{backends}]\n"
        )


class HTTPModeTests(ProxyProtocolCase):
    def get_through(self, port: int, header: bytes, extra: bytes = b"") -> dict[str, object]:
        """One GET after ``header`` on a fresh connection; the request as the backend saw it."""
        sock = self.connect(port)
        sock.sendall(header + b"GET /who HTTP/1.1\r\nHost: site.test\r\n" + extra + b"\r\n")
        response = read_response(sock.makefile("rb"))
        self.assertEqual(response.status, 200)
        return echoed(response.body)

    def test_v1_client_address_reaches_backend_and_access_log(self) -> None:
        """
        Behind a balancer that sends a PROXY v1 line for client 203.0.113.9, the backend sees
        ``X-Forwarded-For: 203.0.113.9`` and ``Forwarded: for=203.0.113.9`` (not 127.0.0.1,
        the balancer in front), ``X-Forwarded-Proto`` stays ``http``, and the access line
        names 203.0.113.9.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(self.http_config(backend_port))
        echo = self.get_through(port, v1_header(CLIENT))
        self.assertEqual(header_values(echo, "X-Forwarded-For"), [CLIENT])
        self.assertEqual(header_values(echo, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(
            header_values(echo, "Forwarded"), [f"for={CLIENT};proto=http;host=site.test"]
        )
        lb.wait_for(rf'twisted_lb\.access#info\] web {CLIENT} "GET /who" 200 ')

    def test_v2_client_address_ipv4_and_ipv6(self) -> None:
        """
        A PROXY v2 binary header works the same, for an IPv4 client and for an IPv6 one
        (``Forwarded`` quotes and brackets it, RFC 7239 §6); the access log names both.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(self.http_config(backend_port))
        echo = self.get_through(port, v2_header(CLIENT))
        self.assertEqual(header_values(echo, "X-Forwarded-For"), [CLIENT])
        echo = self.get_through(port, v2_header("2001:db8::7"))
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["2001:db8::7"])
        self.assertEqual(
            header_values(echo, "Forwarded"), ['for="[2001:db8::7]";proto=http;host=site.test']
        )
        lb.wait_for(rf'twisted_lb\.access#info\] web {CLIENT} "GET /who" 200 ')
        lb.wait_for(r'twisted_lb\.access#info\] web 2001:db8::7 "GET /who" 200 ')

    def test_header_and_request_in_one_segment_and_keep_alive(self) -> None:
        """
        The header, a request and a second pipelined request in one send: both requests are
        answered, each with the PROXY address.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        _lb, port = self.start_lb(self.http_config(backend_port))
        sock = self.connect(port)
        request = b"GET /who HTTP/1.1\r\nHost: site.test\r\n\r\n"
        sock.sendall(v2_header(CLIENT) + request + request)
        rfile = sock.makefile("rb")
        for _ in range(2):
            response = read_response(rfile)
            self.assertEqual(response.status, 200)
            self.assertEqual(header_values(echoed(response.body), "X-Forwarded-For"), [CLIENT])

    def test_forged_forwarded_for_from_the_proxied_client_is_replaced(self) -> None:
        """
        The PROXY-given client is the peer for the trust decision on received forwarding
        fields: a client (not in trusted_proxies) that sends its own ``X-Forwarded-For`` has it
        replaced, even though the balancer in front is trusted; a client that is itself a
        trusted proxy has its ``X-Forwarded-For`` kept and appended to.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        _lb, port = self.start_lb(
            self.http_config(
                backend_port, extra='trusted_proxies = ["127.0.0.1", "198.51.100.0/24"]'
            )
        )
        forged = b"X-Forwarded-For: 10.9.9.9\r\n"
        echo = self.get_through(port, v1_header(CLIENT), forged)
        self.assertEqual(header_values(echo, "X-Forwarded-For"), [CLIENT])
        echo = self.get_through(port, v1_header("198.51.100.4"), b"X-Forwarded-For: 192.0.2.77\r\n")
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["192.0.2.77, 198.51.100.4"])

    def test_local_command_uses_the_connection_address(self) -> None:
        """
        A v2 LOCAL header (the balancer in front checking health, proxy-protocol.txt §2.2) is
        accepted, and the connection's own address is the client's.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        _lb, port = self.start_lb(self.http_config(backend_port))
        echo = self.get_through(port, v2_header(CLIENT, local=True))
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["127.0.0.1"])

    def test_connection_without_header_is_closed(self) -> None:
        """
        A client that sends a request without a PROXY header is closed unanswered, with a log
        event naming it and the frontend; the backend sees nothing.
        """
        backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(self.http_config(backend_port))
        sock = self.connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        self.assertEqual(sock.recv(1024), b"")
        lb.wait_for(r"frontend web: closed a connection from 127\.0\.0\.1:\d+: no PROXY protocol")
        self.assertNotIn("CONNECTION", backend.output())

    def test_peer_outside_proxy_protocol_from_is_refused(self) -> None:
        """
        With ``proxy_protocol_from = ["192.0.2.0/24"]``, a PROXY header from 127.0.0.1 is
        refused: the connection is closed unanswered, no backend is contacted, and a warning
        names the peer and the frontend.
        """
        backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(
            self.http_config(backend_port, extra='proxy_protocol_from = ["192.0.2.0/24"]')
        )
        sock = self.connect(port)
        try:
            sock.sendall(v1_header(CLIENT) + b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"")
        lb.wait_for(
            r"#warn\] frontend web: refused a connection from 127\.0\.0\.1:\d+: "
            r"not in proxy_protocol_from"
        )
        self.assertNotIn("CONNECTION", backend.output())
        self.assertNotIn("twisted_lb.access", lb.output())

    def test_any_peer_accepted_warns_once_at_start(self) -> None:
        """
        Without ``proxy_protocol_from`` or ``trusted_proxies``, PROXY is accepted from any
        peer, and one warning at start says so.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(self.http_config(backend_port))
        self.get_through(port, v1_header(CLIENT))
        warnings = [
            line
            for line in lb.output().splitlines()
            if "accepts the PROXY protocol from any peer" in line
        ]
        self.assertEqual(len(warnings), 1, lb.output())

    def test_trusted_proxies_is_the_default_proxy_protocol_from(self) -> None:
        """
        Without ``proxy_protocol_from``, ``trusted_proxies`` says who may send the header:
        127.0.0.1 outside it is refused.
        """
        backend, backend_port = self.start_backend("echo", "app1")
        lb, port = self.start_lb(
            self.http_config(backend_port, extra='trusted_proxies = ["10.0.0.0/8"]')
        )
        sock = self.connect(port)
        try:
            sock.sendall(v1_header(CLIENT))
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"")
        lb.wait_for(r"refused a connection from 127\.0\.0\.1:\d+: not in trusted_proxies")
        self.assertNotIn("CONNECTION", backend.output())


class TCPModeTests(ProxyProtocolCase):
    def backend_for(self, port: int, header: bytes) -> str:
        """
        The name of the backend (``http`` mode) that answers after ``header``; the connection
        is closed after the backend's FIN, as the relay passes it on as a half-close.
        """
        chunks = []
        with self.connect(port) as sock:
            sock.sendall(header + b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        response = b"".join(chunks).decode()
        self.assertTrue(response.startswith("HTTP/1.0 200"), response)
        return response.partition("\r\n\r\n")[2].strip().removeprefix("Hello from ")

    def test_source_hash_pins_by_the_proxy_address(self) -> None:
        """
        In tcp mode with ``source_hash``, the backend is picked by the PROXY header's address:
        each of eight client addresses (sent as v1 and as v2) always reaches the same backend,
        and together they reach more than one, though every connection comes from 127.0.0.1.
        The access log names each client address.
        """
        ports = [self.start_backend("http", f"b{i}")[1] for i in (1, 2, 3)]
        lb, port = self.start_lb(self.tcp_config(ports))
        clients = [f"203.0.113.{i}" for i in range(1, 9)]
        picked = {}
        for client in clients:
            answers = {
                self.backend_for(port, v1_header(client)),
                self.backend_for(port, v2_header(client)),
                self.backend_for(port, v1_header(client, source_port=40000)),
            }
            self.assertEqual(len(answers), 1, f"{client} reached {answers}")
            picked[client] = answers.pop()
        self.assertGreater(len(set(picked.values())), 1, picked)
        for client, backend in picked.items():
            lb.wait_for(rf"twisted_lb\.access#info\] web {client}:\d+ -> {backend} ")

    def test_server_speaks_first_after_header_only(self) -> None:
        """
        A connection that sends only the header (a protocol where the server speaks first)
        is relayed once the header is in: the backend's bytes reach the client.
        """
        backend, backend_port = self.start_backend("upgrade", "b1")
        lb, port = self.start_lb(self.tcp_config([backend_port], strategy="round_robin"))
        sock = self.connect(port)
        sock.sendall(v2_header(CLIENT))
        backend.wait_for(r"^CONNECTION 1")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
        self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 101"))
        sock.close()
        lb.wait_for(rf"twisted_lb\.access#info\] web {CLIENT}:56324 -> b1 ")

    def test_peer_outside_proxy_protocol_from_is_refused(self) -> None:
        """In tcp mode too, a peer outside ``proxy_protocol_from`` never reaches a backend."""
        _backend, backend_port = self.start_backend("http", "b1")
        config = self.tcp_config([backend_port]).replace(
            'pool = "app"\n', 'pool = "app"\nproxy_protocol_from = ["192.0.2.0/24"]\n', 1
        )
        lb, port = self.start_lb(config)
        sock = self.connect(port)
        try:
            sock.sendall(v1_header(CLIENT) + b"GET / HTTP/1.0\r\n\r\n")
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"")
        lb.wait_for(r"frontend web: refused a connection from 127\.0\.0\.1:\d+: not in")
        self.assertNotIn("twisted_lb.access", lb.output())


class TLSTests(ProxyProtocolCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.ca = trustme.CA()
        self.cert, self.key = write_pair(self.dir, "site", self.ca.issue_cert("site.test"))
        self.context = ssl.create_default_context()
        self.ca.configure_trust(self.context)

    def test_proxy_header_before_tls(self) -> None:
        """
        A frontend with ``[frontends.web.tls]`` on a ``haproxy:tcp:`` listener reads the PROXY
        header in clear before the TLS handshake (what HAProxy's ``send-proxy`` on an ``ssl``
        server sends); the backend sees the address and ``X-Forwarded-Proto: https``.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        tls = (
            "[frontends.web.tls]\n"
            f'certificates = [{{ cert = "{self.cert}", key = "{self.key}" }}]\n'
        )
        config = self.http_config(backend_port).replace("[pools.app]", tls + "[pools.app]")
        lb, port = self.start_lb(config)
        raw = self.connect(port)
        raw.sendall(v2_header(CLIENT))
        sock = self.context.wrap_socket(raw, server_hostname="site.test")
        self.addCleanup(sock.close)
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: site.test\r\n\r\n")
        response = read_response(sock.makefile("rb"))
        echo = echoed(response.body)
        self.assertEqual(header_values(echo, "X-Forwarded-For"), [CLIENT])
        self.assertEqual(header_values(echo, "X-Forwarded-Proto"), ["https"])
        lb.wait_for(rf'twisted_lb\.access#info\] web {CLIENT} "GET /who" 200 ')

    def test_haproxy_ssl_listener_refused_at_start(self) -> None:
        """
        A ``haproxy:ssl:`` listener would terminate TLS with Twisted's defaults (not the
        frontend's TLS policy) and tell backends the scheme is http: ``twistd`` refuses the
        config, names the key and the fix, and listens on nothing.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        listen = f"haproxy:ssl:0:interface=127.0.0.1:certKey={self.cert}:privateKey={self.key}"
        path = Path(self.mktemp() + ".toml")
        path.write_text(self.http_config(backend_port, listen=listen))
        lb = Process([TWISTD, "-n", "--pidfile=", "lb", "--config", str(path)])
        self.addCleanup(lb.kill)
        self.assertNotEqual(lb.popen.wait(TIMEOUT * 2), 0)
        output = lb.output()
        self.assertIn(
            f"{path}: frontends.web.listen[0]: {listen!r}: an ssl: listener terminates TLS",
            output,
        )
        self.assertIn("listen on 'haproxy:tcp:0' and put the certificate in", output)
        self.assertNotIn("listening on", output)


class HAProxyInFrontTests(ProxyProtocolCase):
    """
    A real HAProxy in ``mode tcp`` in front, with ``send-proxy`` (v1) or ``send-proxy-v2``,
    and over TLS to a frontend with ``[frontends.web.tls]`` (``ssl`` on HAProxy's server
    line: the header, then the handshake). The client connects to HAProxy from 127.0.0.5, so
    the balancer's peer (HAProxy, 127.0.0.1) and the client differ.
    """

    def setUp(self) -> None:
        self.haproxy = shutil.which("haproxy")
        if self.haproxy is None:
            raise SkipTest("haproxy is not installed")

    def start_haproxy(self, lb_port: int, server_options: str) -> int:
        port = free_port()
        config = Path(self.mktemp() + ".cfg")
        config.write_text(
            "global\n  maxconn 100\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n"
            "  timeout server 10s\n"
            f"listen front\n  bind 127.0.0.1:{port}\n"
            f"  server lb 127.0.0.1:{lb_port} {server_options}\n"
        )
        assert self.haproxy is not None
        process = Process([self.haproxy, "-db", "-f", str(config)])
        self.addCleanup(process.kill)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return port
            except OSError:
                if time.monotonic() > deadline or process.popen.poll() is not None:
                    raise AssertionError("haproxy did not start:\n" + process.output()) from None
                time.sleep(0.05)

    def get_via_haproxy(self, port: int) -> dict[str, object]:
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.settimeout(TIMEOUT)
        sock.bind(("127.0.0.5", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: site.test\r\n\r\n")
        response = read_response(sock.makefile("rb"))
        self.assertEqual(response.status, 200)
        return echoed(response.body)

    def test_send_proxy_v1_and_v2(self) -> None:
        """
        Through HAProxy's ``send-proxy`` and ``send-proxy-v2``, the backend sees
        ``X-Forwarded-For: 127.0.0.5``, the client's address, and the access log names it;
        HAProxy, at 127.0.0.1, is the peer that ``proxy_protocol_from`` allows.
        """
        _backend, backend_port = self.start_backend("echo", "app1")
        lb, lb_port = self.start_lb(
            self.http_config(backend_port, extra='proxy_protocol_from = ["127.0.0.1"]')
        )
        for options in ("send-proxy", "send-proxy-v2"):
            echo = self.get_via_haproxy(self.start_haproxy(lb_port, options))
            self.assertEqual(header_values(echo, "X-Forwarded-For"), ["127.0.0.5"], options)
        lb.wait_for(r'twisted_lb\.access#info\] web 127\.0\.0\.5 "GET /who" 200 ')

    def test_send_proxy_v2_then_tls(self) -> None:
        """
        HAProxy's ``send-proxy-v2 ssl`` to a frontend that terminates TLS on a ``haproxy:tcp:``
        listener: the header in clear, then TLS; the backend sees the client's address and
        ``X-Forwarded-Proto: https``.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        cert, key = write_pair(directory, "site", trustme.CA().issue_cert("site.test"))
        _backend, backend_port = self.start_backend("echo", "app1")
        tls = f'[frontends.web.tls]\ncertificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
        config = self.http_config(backend_port).replace("[pools.app]", tls + "[pools.app]")
        _lb, lb_port = self.start_lb(config)
        port = self.start_haproxy(lb_port, "send-proxy-v2 ssl verify none sni str(site.test)")
        echo = self.get_via_haproxy(port)
        self.assertEqual(header_values(echo, "X-Forwarded-For"), ["127.0.0.5"])
        self.assertEqual(header_values(echo, "X-Forwarded-Proto"), ["https"])


# -- unit tests, with fakes ---------------------------------------------------------------------

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class ProxyHeaderFactoryTests(SynchronousTestCase):
    """
    :class:`ProxyHeaderFactory` in front of the tcp relay, on a memory reactor and string
    transports (which it cannot step out of, so it passes reads on).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = Pool("p", [Backend.from_address("10.0.0.5:8080")], get_strategy("round_robin"))
        self.relay = TCPRelayFactory(self.reactor, self.pool, max_connections=2, frontend="web")

    def connect(
        self, allowed: tuple[str, ...] = (), peer: IPv4Address = PEER
    ) -> tuple[Protocol, StringTransport]:
        factory = ProxyHeaderFactory(self.relay, self.relay, allowed=allowed, timeout=5.0)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def relayed(self) -> _ClientSide:
        [front] = self.relay.connections
        assert isinstance(front, _ClientSide)
        return front

    def test_backend_picked_only_after_the_header_by_its_address(self) -> None:
        """
        A v1 header that arrives a byte at a time: no backend is contacted until its last
        byte; then the relay is built for the header's address, and what followed the header
        in the same read is relayed.
        """
        protocol, _transport = self.connect()
        header = v1_header(CLIENT, source_port=1234)
        for byte in header[:-1]:
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.reactor.tcpClients, [])
        protocol.dataReceived(header[-1:] + b"hello")
        front = self.relayed()
        self.assertEqual(front.client_address, IPv4Address("TCP", CLIENT, 1234))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(front.early_data, [b"hello"])

    def test_v2_ipv6_address_written_the_usual_way(self) -> None:
        """A v2 header's IPv6 source comes out compressed (``2001:db8::7``)."""
        protocol, _transport = self.connect()
        protocol.dataReceived(v2_header("2001:db8::7")[:10])
        protocol.dataReceived(v2_header("2001:db8::7")[10:])
        self.assertEqual(self.relayed().client_address, IPv6Address("TCP", "2001:db8::7", 56324))

    def test_local_command_keeps_the_connection_address(self) -> None:
        """v2 LOCAL: the connection's own address is the client's."""
        protocol, _transport = self.connect()
        protocol.dataReceived(v2_header(CLIENT, local=True))
        self.assertEqual(self.relayed().client_address, PEER)

    def test_not_a_header(self) -> None:
        """
        Bytes that cannot start a header, a v1 line whose address is no IP, or a bad v2
        version: closed without a backend, with an event that names the peer and the frontend.
        """
        bad = (
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 203.0.113.9,evil 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 x 2\r\n",
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
            b"\r\n\r\nnope, not v2 at all",
            V2_SIGNATURE + b"\x21\x11\x10\x01" + bytes(12),  # announces 4097 bytes
        )
        for data in bad:
            with capturedLogs() as events:
                protocol, transport = self.connect()
                protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)
            [event] = [e for e in events if "closed a connection" in e["log_format"]]
            self.assertEqual((event["frontend"], event["peer"]), ("web", "127.0.0.1:40000"))
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.relay.connections, set())
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_v2_length_limit(self) -> None:
        """
        A v2 header that announces more than 4096 bytes is refused from its first 16 bytes,
        not buffered; one of 4096 bytes (TLVs after the addresses) is read.
        """
        with capturedLogs() as events:
            protocol, transport = self.connect()
            protocol.dataReceived(V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(12))
        self.assertTrue(transport.disconnecting)
        self.assertIn(
            "PROXY protocol v2 header announces more than 4096 bytes",
            [e.get("why") for e in events],
        )
        protocol.connectionLost(Failure(ConnectionDone()))
        header = v2_header(CLIENT)
        length = struct.unpack("!H", header[14:16])[0]
        tlv = b"\xe0" + struct.pack("!H", 4096 - length - 3) + bytes(4096 - length - 3)
        header = header[:14] + struct.pack("!H", 4096) + header[16:] + tlv
        protocol, transport = self.connect()
        protocol.dataReceived(header)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.relayed().client_address, IPv4Address("TCP", CLIENT, 56324))

    def test_header_timeout(self) -> None:
        """No whole header within ``timeout`` seconds: closed, counted no more, no timer left."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"PROXY TCP4 ")
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PROXY protocol header within 5 s", [e.get("why") for e in events])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.active_connections, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_peer_outside_allowed_refused_before_reading(self) -> None:
        """A peer outside ``allowed`` is closed at once, with a warning; an allowed one is not."""
        with capturedLogs() as events:
            protocol, transport = self.connect(allowed=("192.0.2.0/24",))
        self.assertTrue(transport.disconnecting)
        [event] = [e for e in events if "refused a connection" in e["log_format"]]
        self.assertEqual(
            (event["frontend"], event["peer"], event["key"]),
            ("web", "127.0.0.1:40000", "proxy_protocol_from"),
        )
        protocol.dataReceived(v1_header(CLIENT))
        self.assertEqual((self.relay.connections, self.reactor.tcpClients), (set(), []))
        _protocol, transport = self.connect(
            allowed=("192.0.2.0/24",), peer=IPv4Address("TCP", "192.0.2.10", 1)
        )
        self.assertFalse(transport.disconnecting)

    def test_waiting_connections_count_and_close_at_shutdown(self) -> None:
        """
        Connections still waiting for their header count toward ``max_connections`` (the
        third of two is refused), and the frontend's close_connections closes them.
        """
        first, first_transport = self.connect()
        _second, second_transport = self.connect()
        with capturedLogs():
            _third, third_transport = self.connect()
        self.assertTrue(third_transport.disconnecting)
        self.assertEqual(self.relay.active_connections, 2)
        closed = self.relay.close_connections()
        self.assertTrue(first_transport.disconnecting and second_transport.disconnecting)
        for protocol in (first, _second):
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(closed), None)
        self.assertEqual(self.relay.active_connections, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_handed_over_connection_counted_once(self) -> None:
        """After its header a connection is counted by the relay alone, and forgotten once."""
        protocol, _transport = self.connect()
        protocol.dataReceived(v1_header(CLIENT))
        self.assertEqual(self.relay.active_connections, 1)
        self.assertEqual(self.relay.connections, {self.relayed()})
        # Only the relay's connect timeout is left: the header timer is cancelled.
        [connect_timeout] = self.reactor.getDelayedCalls()
        self.assertEqual(connect_timeout.getTime(), self.pool.connect_timeout)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.relay.active_connections, 0)

    def test_warns_at_start_when_any_peer_may_send_it(self) -> None:
        """Starting with no allowed peers logs one warning; with some, none."""
        for allowed, count in (((), 1), (("10.0.0.0/8",), 0)):
            factory = ProxyHeaderFactory(self.relay, self.relay, allowed=allowed)
            with capturedLogs() as events:
                factory.doStart()
                factory.doStart()  # a second listener of the same frontend
            warnings = [e for e in events if "from any peer" in e["log_format"]]
            self.assertEqual(len(warnings), count)
            factory.doStop()
            factory.doStop()


class HTTPProxyBehindHeaderTests(SynchronousTestCase):
    def test_http_protocol_built_for_the_header_address(self) -> None:
        """
        In front of the HTTP proxy, the protocol is built for the header's address (its
        ``client_ip``, which X-Forwarded-For, Forwarded and the access log use), and a
        request in the same read as the header is parsed: it is routed to a backend.
        """
        reactor = MemoryReactorClock()
        pool = Pool("p", [Backend.from_address("10.0.0.5:8080")], get_strategy("round_robin"))
        http = HTTPProxyFactory(reactor, pool, frontend="web")
        protocol = ProxyHeaderFactory(http, http).buildProtocol(PEER)
        protocol.makeConnection(StringTransport(peerAddress=PEER))
        protocol.dataReceived(v2_header(CLIENT) + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [front] = http.connections
        assert isinstance(front, HTTPProxyProtocol)
        self.assertEqual(front.client_ip, CLIENT)
        [(host, port, *_rest)] = reactor.tcpClients
        self.assertEqual((host, port), ("10.0.0.5", 8080))


class ProxyListenerTests(SynchronousTestCase):
    def test_proxy_listener(self) -> None:
        """The endpoint under ``haproxy:``, matched without case; others are not PROXY ones."""
        self.assertEqual(proxy_listener("haproxy:tcp:8080:interface=::1"), "tcp:8080:interface=::1")
        self.assertEqual(proxy_listener("HAProxy:ssl:443"), "ssl:443")
        self.assertIsNone(proxy_listener("tcp:8080"))
        self.assertIsNone(proxy_listener("haproxy"))


def frontend_toml(mode: str, listen: str, extra: str = "") -> str:
    return (
        "[frontends.web]\n"
        f'mode = "{mode}"\n'
        f'listen = ["{listen}"]\n'
        'pool = "app"\n'
        f"{extra}\n"
        "[pools.app]\n"
        'backends = [{ address = "127.0.0.1:9001" }]\n'
    )


class ConfigTests(SynchronousTestCase):
    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as raised:
            parse_config(text, "lb.toml")
        return [str(problem) for problem in raised.exception.problems]

    def test_proxy_protocol_from_in_both_modes(self) -> None:
        """``proxy_protocol_from`` is kept as written, in http and in tcp mode."""
        for mode in ("http", "tcp"):
            config = parse_config(
                frontend_toml(
                    mode, "haproxy:tcp:8080", 'proxy_protocol_from = ["10.0.0.1/8", "::1"]'
                )
            )
            self.assertEqual(config.frontends["web"].proxy_protocol_from, ("10.0.0.1/8", "::1"))

    def test_without_a_haproxy_listener(self) -> None:
        """Set on a frontend with no ``haproxy:`` listener, it is an error that gives the fix."""
        self.assertEqual(
            self.problems(frontend_toml("tcp", "tcp:8080", 'proxy_protocol_from = ["10.0.0.0/8"]')),
            [
                "lb.toml: frontends.web.proxy_protocol_from: is for a frontend that takes the "
                "PROXY protocol, and none of its listeners does; prefix the listener with "
                'haproxy:, as in listen = ["haproxy:tcp:8080"], or remove proxy_protocol_from'
            ],
        )

    def test_bad_entries(self) -> None:
        """Each entry must be an IP address or network; the key path names the bad one."""
        self.assertEqual(
            self.problems(
                frontend_toml("http", "haproxy:tcp:8080", 'proxy_protocol_from = ["lb1", 7]')
            ),
            [
                "lb.toml: frontends.web.proxy_protocol_from[0]: 'lb1' is not an IP address or "
                "network; write one as in '10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'",
                "lb.toml: frontends.web.proxy_protocol_from[1]: must be a string, not an integer",
            ],
        )
        self.assertEqual(
            self.problems(frontend_toml("tcp", "haproxy:tcp:8080", 'proxy_protocol_from = "x"')),
            [
                "lb.toml: frontends.web.proxy_protocol_from: must be an array of strings, as in "
                'proxy_protocol_from = ["10.0.0.0/8"], not a string'
            ],
        )

    def test_ssl_listeners_refused(self) -> None:
        """
        ``ssl:`` and ``haproxy:ssl:`` (any case) in a frontend are refused with the fix:
        ``tcp:`` or ``haproxy:tcp:`` on the same port and ``[frontends.web.tls]``.
        """
        self.assertEqual(
            self.problems(frontend_toml("http", "HAProxy:SSL:8443:privateKey=missing.pem")),
            [
                "lb.toml: frontends.web.listen[0]: 'HAProxy:SSL:8443:privateKey=missing.pem': "
                "an ssl: listener terminates TLS with Twisted's defaults, not the policy of "
                "[frontends.web.tls], and its backends would be told the scheme is http; "
                "listen on 'HAProxy:tcp:8443' and put the certificate in [frontends.web.tls] "
                "(the PROXY header then comes in clear before TLS, as HAProxy's send-proxy "
                "and nginx's proxy_protocol send it)"
            ],
        )
        self.assertEqual(
            self.problems(frontend_toml("tcp", "ssl:443:privateKey=k.pem")),
            [
                "lb.toml: frontends.web.listen[0]: 'ssl:443:privateKey=k.pem': an ssl: "
                "listener terminates TLS with Twisted's defaults, not the policy of "
                "[frontends.web.tls], and its backends would be told the scheme is http; "
                "listen on 'tcp:443' and put the certificate in [frontends.web.tls]"
            ],
        )


class ServiceTests(SynchronousTestCase):
    def build(self, text: str) -> LoadBalancerService:
        return LoadBalancerService.from_config(parse_config(text), MemoryReactorClock())

    def test_haproxy_listener_reads_the_header_first(self) -> None:
        """
        A ``haproxy:`` listener listens on the endpoint under the prefix, with a
        ProxyHeaderFactory around the frontend's factory; a plain listener of the same frontend
        has the frontend's factory itself.
        """
        text = frontend_toml("http", "haproxy:tcp:8080").replace(
            'listen = ["haproxy:tcp:8080"]', 'listen = ["haproxy:tcp:8080", "tcp:8081"]'
        )
        service = self.build(text)
        proxied, plain = service.listeners
        assert isinstance(proxied.factory, ProxyHeaderFactory)
        self.assertIs(proxied.factory.wrapped, service.factories["web"])
        self.assertIs(plain.factory, service.factories["web"])
        self.assertEqual(proxied.description, "haproxy:tcp:8080")

    def test_allowed_peers(self) -> None:
        """``proxy_protocol_from``, else ``trusted_proxies``, else any peer."""
        cases = (
            (
                'proxy_protocol_from = ["10.0.0.0/8"]\ntrusted_proxies = ["::1"]',
                "proxy_protocol_from",
                "10.0.0.0/8",
            ),
            ('trusted_proxies = ["::1"]', "trusted_proxies", "::1/128"),
            ("", "trusted_proxies", None),
        )
        for extra, key, network in cases:
            [listener] = self.build(frontend_toml("http", "haproxy:tcp:8080", extra)).listeners
            factory = listener.factory
            assert isinstance(factory, ProxyHeaderFactory)
            self.assertEqual(factory.allowed_key, key)
            self.assertEqual(
                [str(n) for n in factory.allowed.networks], [network] if network else []
            )

    def test_header_timeout_by_mode(self) -> None:
        """
        In http mode the header must come within the smaller of header_timeout and
        client_timeout (nginx's client_header_timeout); in tcp mode within client_timeout.
        """
        cases = (
            ("http", "", 10.0),
            ("http", "header_timeout = 30\nclient_timeout = 20", 20.0),
            ("http", "header_timeout = 3", 3.0),
            ("tcp", "client_timeout = 45", 45.0),
        )
        for mode, extra, timeout in cases:
            [listener] = self.build(frontend_toml(mode, "haproxy:tcp:8080", extra)).listeners
            factory = listener.factory
            assert isinstance(factory, ProxyHeaderFactory)
            self.assertEqual(factory.timeout, timeout, (mode, extra))

    def test_tls_frontend_header_outside_tls(self) -> None:
        """With ``[frontends.web.tls]``, the header is read before the TLS factory."""
        trust = trustme.CA()
        directory = Path(self.mktemp())
        directory.mkdir()
        cert, key = write_pair(directory, "site", trust.issue_cert("site.test"))
        tls = f'[frontends.web.tls]\ncertificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
        text = frontend_toml("http", "haproxy:tcp:8080").replace("[pools.app]", tls + "[pools.app]")
        [listener] = self.build(text).listeners
        assert isinstance(listener.factory, ProxyHeaderFactory)
        self.assertIsInstance(listener.factory.wrapped, TLSMemoryBIOFactory)
