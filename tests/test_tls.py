"""
Tests of TLS termination and TLS to backends, in memory: certificates from ``trustme``, files
in a temporary directory, handshakes between two ``TLSMemoryBIOProtocol`` pumped by
``twisted.test.iosim``. No sockets.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import trustme
from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import (
    IOPump,
    connect,
    connectedServerAndClient,
    makeFakeClient,
    makeFakeServer,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_lb import _compat as compat
from twisted_lb import tls as tls_module
from twisted_lb.backend import Backend
from twisted_lb.config import ConfigError, parse_config
from twisted_lb.tls import (
    INTERMEDIATE_CIPHERS,
    INTERMEDIATE_GROUPS,
    TLS_VERSIONS,
    ClientTLS,
    ServerTLS,
    TLSConfigError,
    ca_problem,
    certificate_problem,
    group_problem,
    handshake_failure_reason,
    pair_problem,
)

CA = trustme.CA()
OTHER_CA = trustme.CA()


@implementer(IHandshakeListener)
class Peer(Protocol):
    """One end of a connection: records the handshake, the bytes and the reason it ended."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.received = b""
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason

    @property
    def tls(self) -> TLSMemoryBIOProtocol:
        assert isinstance(self.transport, TLSMemoryBIOProtocol)
        return self.transport

    @property
    def connection(self) -> SSL.Connection:
        connection = self.tls.getHandle()
        assert isinstance(connection, SSL.Connection)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """
    A TLS client as a browser or curl would be, with the knobs the tests turn: SNI, ALPN,
    protocol versions, a client certificate, a session to resume, the groups (curves) it
    offers. It verifies nothing.
    """

    def __init__(
        self,
        server_name: str | None = None,
        *,
        alpn: list[bytes] | None = None,
        min_version: int | None = None,
        max_version: int | None = None,
        ciphers: bytes | None = None,
        cert: str | None = None,
        key: str | None = None,
        session: SSL.Session | None = None,
        groups: bytes | None = None,
    ) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        if groups is not None:  # (pyOpenSSL has no wrapper for SSL_CTX_set1_groups_list)
            set_groups = compat.openssl_function("SSL_CTX_set1_curves_list")
            assert set_groups(compat.native_context(self.context), groups) == 1
        if min_version is not None:
            self.context.set_min_proto_version(min_version)
        if max_version is not None:
            self.context.set_max_proto_version(max_version)
        if ciphers is not None:
            self.context.set_cipher_list(ciphers)
        if cert is not None and key is not None:
            self.context.use_certificate_chain_file(cert)
            self.context.use_privatekey_file(key)
        if alpn:
            self.context.set_alpn_protos(alpn)
        self.server_name = server_name
        self.session = session

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N803
        connection = SSL.Connection(self.context, None)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name.encode("ascii"))
        if self.session is not None:
            connection.set_session(self.session)
        return connection


class PeerFactory(Factory):
    """Builds :class:`Peer` and keeps them: a TLS wrapper forgets its protocol when lost."""

    protocol = Peer

    def __init__(self) -> None:
        self.built: list[Peer] = []

    def buildProtocol(self, addr: Any) -> Peer:
        peer = Peer()
        peer.factory = self
        self.built.append(peer)
        return peer


def handshake(server: Any, client: Any) -> tuple[Peer, Peer, IOPump]:
    """
    Connect a TLS client to a TLS server in memory and pump until both are quiet.

    Returns:
        ``(client_peer, server_peer, pump)``.
    """
    clock = Clock()
    servers, clients = PeerFactory(), PeerFactory()
    server_factory = TLSMemoryBIOFactory(server, False, servers, clock=clock)
    client_factory = TLSMemoryBIOFactory(client, True, clients, clock=clock)
    _client, _server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    [client_peer], [server_peer] = clients.built, servers.built
    return client_peer, server_peer, pump


class Files:
    """Writes trustme certificates and keys as PEM files in a directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def pair(self, name: str, cert: trustme.LeafCert) -> tuple[str, str]:
        """Write ``name.pem`` (leaf then chain) and ``name.key``; return their paths."""
        cert_path, key_path = self.path(name + ".pem"), self.path(name + ".key")
        with open(cert_path, "wb") as f:
            f.write(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(key_path)
        return cert_path, key_path

    def ca(self, name: str, ca: trustme.CA) -> str:
        path = self.path(name + ".pem")
        ca.cert_pem.write_to_path(path)
        return path

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def leaf(cert: trustme.LeafCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


def resumed(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session; pyOpenSSL has no wrapper of this call."""
    session_reused = compat.openssl_function("SSL_session_reused")
    return bool(session_reused(compat.native_connection(connection)))


def served(client: Peer) -> x509.Certificate:
    """The certificate the server presented to ``client``."""
    peer = client.tls.getPeerCertificate()
    assert peer is not None
    certificate: x509.Certificate = peer.to_cryptography()
    return certificate


DEFAULT = CA.issue_cert("default.example")
SITE_A = CA.issue_cert("a.example")
SITE_C = CA.issue_cert("c.example", "*.b.example")
LOOPBACK = CA.issue_cert("127.0.0.1")
CLIENT = CA.issue_cert("client.example")
STRANGER = OTHER_CA.issue_cert("client.example")


class ProblemTests(SynchronousTestCase):
    """:func:`certificate_problem` and :func:`ca_problem`: one line per unusable file."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.cert, self.key = self.files.pair("site", SITE_A)

    def test_usable(self) -> None:
        """A certificate with its own key, a CA bundle: no problem."""
        self.assertIsNone(certificate_problem(self.cert, self.key))
        self.assertIsNone(ca_problem(self.files.ca("ca", CA)))

    def test_missing_file(self) -> None:
        """A file that cannot be read is named, with the system's reason."""
        missing = self.files.path("missing.pem")
        self.assertEqual(
            certificate_problem(missing, self.key),
            f"cannot read {missing}: No such file or directory",
        )
        self.assertEqual(
            certificate_problem(self.cert, missing),
            f"cannot read {missing}: No such file or directory",
        )
        self.assertEqual(ca_problem(missing), f"cannot read {missing}: No such file or directory")

    def test_not_pem(self) -> None:
        """A certificate file without a PEM certificate; a key file without a PEM key."""
        junk = self.files.write("junk.pem", b"hello\n")
        self.assertEqual(certificate_problem(junk, self.key), f"{junk}: no PEM certificate found")
        self.assertEqual(certificate_problem(self.cert, junk), f"{junk}: not a PEM private key")
        self.assertEqual(ca_problem(junk), f"{junk}: no PEM certificate found")
        # A certificate where the key should be is not a key either.
        self.assertEqual(
            certificate_problem(self.cert, self.cert), f"{self.cert}: not a PEM private key"
        )

    def test_key_mismatch(self) -> None:
        """The key of another certificate."""
        _other_cert, other_key = self.files.pair("other", SITE_C)
        self.assertEqual(
            certificate_problem(self.cert, other_key),
            f"{other_key} does not match the certificate in {self.cert}",
        )

    def test_file_at_fault(self) -> None:
        """:func:`pair_problem` says which file of the pair is at fault, for the key path."""
        _other_cert, other_key = self.files.pair("other", SITE_C)
        missing = self.files.path("missing.pem")
        junk = self.files.write("junk.pem", b"hello\n")
        with open(self.cert, "rb") as cert_file, open(self.key, "rb") as key_file:
            combined = self.files.write("both.pem", cert_file.read() + key_file.read())
        for cert, key, fault in [
            (missing, self.key, "cert"),
            (junk, self.key, "cert"),
            (self.cert, missing, "key"),
            (self.cert, junk, "key"),
            (self.cert, self.cert, "key"),
            (self.cert, other_key, "key"),
            (junk, junk, "cert"),
        ]:
            self.assertEqual(
                pair_problem(cert, key), (fault, certificate_problem(cert, key)), (cert, key)
            )
        self.assertIsNone(pair_problem(combined, combined))

    def test_expired(self) -> None:
        """A certificate past its notAfter, with the date and what to do."""
        expired = CA.issue_cert(
            "old.example",
            not_before=datetime(2025, 1, 1, tzinfo=UTC),
            not_after=datetime(2026, 1, 1, tzinfo=UTC),
        )
        cert, key = self.files.pair("old", expired)
        self.assertIsNone(certificate_problem(cert, key, now=datetime(2025, 6, 1, tzinfo=UTC)))
        self.assertEqual(
            certificate_problem(cert, key, now=datetime(2026, 6, 1, tzinfo=UTC)),
            f"{cert}: the certificate expired on 2026-01-01 (notAfter); renew it",
        )
        self.assertEqual(
            certificate_problem(cert, key, now=datetime(2024, 6, 1, tzinfo=UTC)),
            f"{cert}: the certificate is not valid before 2025-01-01 00:00:00 UTC "
            "(notBefore); check the clock or wait",
        )

    def test_refused_by_openssl(self) -> None:
        """
        A pair that parses but that OpenSSL refuses at its security level (a 1024-bit RSA
        key) is a problem for ``check`` too, and ServerTLS and reload say the same.
        """
        from datetime import timedelta

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(weak.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(weak, hashes.SHA256())
        )
        cert = self.files.write("weak.pem", certificate.public_bytes(serialization.Encoding.PEM))
        key = self.files.write(
            "weak.key",
            weak.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        expected = f"{cert}: OpenSSL refused it: ee key too small"
        self.assertEqual(certificate_problem(cert, key), expected)
        with self.assertRaises(TLSConfigError) as raised:
            ServerTLS([(cert, key)])
        self.assertEqual(str(raised.exception), expected)
        server = ServerTLS([(self.cert, self.key)])
        with open(self.cert, "wb") as f, open(cert, "rb") as weak_cert:
            f.write(weak_cert.read())
        with open(self.key, "wb") as f, open(key, "rb") as weak_key:
            f.write(weak_key.read())
        self.assertEqual(server.reload(), [f"{self.cert}: OpenSSL refused it: ee key too small"])

    def test_encrypted_key(self) -> None:
        """An encrypted key is refused with how to decrypt it."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(SITE_A.private_key_pem.bytes(), None)
        encrypted = self.files.write(
            "locked.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
        problem = certificate_problem(self.cert, encrypted)
        assert problem is not None
        self.assertTrue(problem.startswith(f"{encrypted}: the private key is encrypted"), problem)


class ServerConfigTests(SynchronousTestCase):
    """Settings :class:`ServerTLS` refuses, with :class:`TLSConfigError`."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.pair = self.files.pair("a", SITE_A)

    def test_provides_interface(self) -> None:
        """ServerTLS is a server connection creator, as TLSMemoryBIOFactory takes."""
        verifyObject(IOpenSSLServerConnectionCreator, ServerTLS([self.pair]))

    def test_defaults(self) -> None:
        """Mozilla intermediate: TLS 1.2 and up, the intermediate cipher list."""
        self.assertEqual(TLS_VERSIONS, ("TLSv1.2", "TLSv1.3"))
        self.assertIn("ECDHE-ECDSA-AES128-GCM-SHA256", INTERMEDIATE_CIPHERS.split(":"))

    def test_bad_settings(self) -> None:
        """Each bad setting raises a TLSConfigError that names it, as the config words it."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"min_version": "TLSv1.1"}, "min_version: 'TLSv1.1' is older than TLS 1.2"),
            ({"min_version": "tlsv1.3"}, "unknown version 'tlsv1.3' (did you mean 'TLSv1.3'?)"),
            ({"verify_client": "on"}, 'write verify_client = "required"'),
            ({"verify_client": "requird"}, "(did you mean 'required'?)"),
            ({"ciphers": " "}, "ciphers: must not be empty"),
            ({"verify_client": "required"}, "client_ca"),
            ({"alpn": [b""]}, "ALPN"),
            ({"ciphers": "NOT-A-CIPHER"}, "ciphers"),
            ({"curves": ["X25519", "X447"]}, "unknown TLS group 'X447'"),
            ({"curves": []}, "curves"),
            ({"curves": "X25519"}, "curves"),
        ]
        for kwargs, word in cases:
            with self.assertRaises(TLSConfigError) as raised:
                ServerTLS([self.pair], **kwargs)
            self.assertIn(word, str(raised.exception))
        with self.assertRaises(TLSConfigError):
            ServerTLS([])

    def test_unusable_files(self) -> None:
        """Every unusable file is reported in the one message."""
        missing = self.files.path("missing.pem")
        junk = self.files.write("junk.pem", b"junk")
        with self.assertRaises(TLSConfigError) as raised:
            ServerTLS(
                [self.pair, (missing, self.pair[1])], client_ca=junk, verify_client="optional"
            )
        self.assertEqual(
            str(raised.exception),
            f"cannot read {missing}: No such file or directory; {junk}: no PEM certificate found",
        )

    def test_expired(self) -> None:
        """An expired certificate is not served."""
        cert, key = self.files.pair(
            "old",
            CA.issue_cert(
                "old.example",
                not_before=datetime(2019, 1, 1, tzinfo=UTC),
                not_after=datetime(2020, 1, 1, tzinfo=UTC),
            ),
        )
        with self.assertRaises(TLSConfigError) as raised:
            ServerTLS([(cert, key)])
        self.assertIn("expired on 2020-01-01", str(raised.exception))


class GroupTests(SynchronousTestCase):
    """The groups (curves) of the key exchange: Mozilla's intermediate profile by default."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.pair = self.files.pair("a", SITE_A)

    def test_default_is_intermediate(self) -> None:
        """X25519, prime256v1 and secp384r1 (Mozilla guidelines 5.7 ``tls_curves``)."""
        self.assertEqual(INTERMEDIATE_GROUPS, ("X25519", "prime256v1", "secp384r1"))

    def test_group_problem(self) -> None:
        """OpenSSL's names (and aliases) are known; anything else, or a list, is a problem."""
        for name in ["X25519", "X448", "prime256v1", "P-256", "secp384r1", "ffdhe2048"]:
            self.assertIsNone(group_problem(name), name)
        for name in ["X447", "", "X25519:X448", "secp256k2", "x\u00e9"]:
            problem = group_problem(name)
            assert problem is not None, name
            self.assertIn(f"unknown TLS group {name!r}", problem)
            self.assertIn("X25519, prime256v1, secp384r1", problem)

    def test_without_the_private_bindings(self) -> None:
        """
        A pyOpenSSL without the private bindings the groups are set with gives a clear
        error (config problem, TLSConfigError), not an AttributeError.
        """
        self.patch(tls_module, "_set1_curves_list", None)
        problem = group_problem("X25519")
        assert problem is not None
        self.assertIn("does not expose OpenSSL's SSL_CTX_set1_curves_list", problem)
        with self.assertRaises(TLSConfigError) as raised:
            ServerTLS([self.pair])
        self.assertIn("SSL_CTX_set1_curves_list", str(raised.exception))

    def test_config_key(self) -> None:
        """``[frontends.NAME.tls] curves``: default, set, and each bad entry at its index."""
        cert, key = self.pair

        def config(curves: str) -> str:
            return (
                '[frontends.web]\nmode = "http"\nlisten = ["tcp:8443"]\npool = "app"\n'
                f'[frontends.web.tls]\ncertificates = [{{ cert = "{cert}", key = "{key}" }}]\n'
                f'{curves}\n[pools.app]\nbackends = [{{ address = "127.0.0.1:8080" }}]\n'
            )

        tls = parse_config(config("")).frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.curves, ("X25519", "prime256v1", "secp384r1"))
        tls = parse_config(config('curves = ["X448", "P-521"]')).frontends["web"].tls
        assert tls is not None
        self.assertEqual(tls.curves, ("X448", "P-521"))
        cases = {
            'curves = ["X25519", "X447", 7]': [
                ("frontends.web.tls.curves[1]", "unknown TLS group 'X447'; OpenSSL knows"),
                ("frontends.web.tls.curves[2]", "must be a string"),
            ],
            "curves = []": [("frontends.web.tls.curves", "must be a non-empty array")],
            'curves = "X25519"': [("frontends.web.tls.curves", "must be a non-empty array")],
        }
        for text, expected in cases.items():
            with self.assertRaises(ConfigError) as raised:
                parse_config(config(text), "lb.toml")
            problems = raised.exception.problems
            self.assertEqual([p.key for p in problems], [key for key, _ in expected], text)
            for problem, (_, words) in zip(problems, expected, strict=True):
                self.assertIn(words, problem.message)
                self.assertIn("lb.toml", str(problem))

    def test_client_outside_the_groups_fails(self) -> None:
        """A client offering only X448 fails the handshake; X25519 gets through."""
        server_tls = ServerTLS([self.pair])
        client, server, _pump = handshake(server_tls, RawClient(groups=b"X448"))
        self.assertEqual((client.handshakes, server.handshakes), (0, 0))
        assert server.lost is not None
        self.assertIsInstance(server.lost.value, SSL.Error)
        client, server, _pump = handshake(server_tls, RawClient(groups=b"X25519"))
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        client, server, _pump = handshake(
            ServerTLS([self.pair], curves=["X448"]), RawClient(groups=b"X448")
        )
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))


class SNITests(SynchronousTestCase):
    """The certificate is chosen by the client's server name (RFC 6066 §3)."""

    def setUp(self) -> None:
        files = Files(self.mktemp())
        self.server = ServerTLS(
            [
                files.pair("default", DEFAULT),
                files.pair("a", SITE_A),
                files.pair("c", SITE_C),
            ]
        )

    def served_for(self, server_name: str | None) -> x509.Certificate:
        client, server, _pump = handshake(self.server, RawClient(server_name))
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        return served(client)

    def test_names(self) -> None:
        """Each certificate's DNS names, in order."""
        self.assertEqual(
            self.server.names,
            [["default.example"], ["a.example"], ["c.example", "*.b.example"]],
        )

    def test_exact_names(self) -> None:
        """A name of the second certificate gets it; a name of the third gets that."""
        self.assertEqual(self.served_for("a.example"), leaf(SITE_A))
        self.assertEqual(self.served_for("c.example"), leaf(SITE_C))
        self.assertEqual(self.served_for("A.Example"), leaf(SITE_A))

    def test_wildcard(self) -> None:
        """``*.b.example`` covers one label: x.b.example, not y.x.b.example, not b.example."""
        self.assertEqual(self.served_for("x.b.example"), leaf(SITE_C))
        self.assertEqual(self.served_for("y.x.b.example"), leaf(DEFAULT))
        self.assertEqual(self.served_for("b.example"), leaf(DEFAULT))

    def test_default(self) -> None:
        """No SNI, or a name no certificate has, gets the first certificate."""
        self.assertEqual(self.served_for(None), leaf(DEFAULT))
        self.assertEqual(self.served_for("unknown.example"), leaf(DEFAULT))

    def test_data_flows(self) -> None:
        """After an SNI switch the connection carries data both ways."""
        client, server, pump = handshake(self.server, RawClient("x.b.example"))
        client.transport.write(b"ping")  # type: ignore[union-attr]
        server.transport.write(b"pong")  # type: ignore[union-attr]
        pump.flush()
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))

    def test_session_resumption(self) -> None:
        """
        Sessions are resumed, TLS 1.2 and 1.3, on the default certificate and on one that
        SNI selected.
        """
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            for name in (None, "a.example"):
                client = RawClient(name, max_version=version)
                first, server, pump = handshake(self.server, client)
                self.assertFalse(resumed(first.connection))
                # A TLS 1.3 ticket comes after the handshake, with the first data.
                server.tls.write(b"hello")
                pump.flush()
                client.session = first.connection.get_session()
                again, _server, _pump = handshake(self.server, client)
                self.assertTrue(resumed(again.connection), (version, name))
                self.assertEqual(served(again), served(first))


class ALPNTests(SynchronousTestCase):
    """ALPN (RFC 7301) on the server side."""

    def setUp(self) -> None:
        self.server = ServerTLS([Files(self.mktemp()).pair("a", SITE_A)], alpn=[b"http/1.1"])

    def test_negotiated(self) -> None:
        """A client offering http/1.1 gets it."""
        client, server, _pump = handshake(self.server, RawClient(alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(client.tls.negotiatedProtocol, b"http/1.1")
        self.assertEqual(server.tls.negotiatedProtocol, b"http/1.1")

    def test_no_overlap(self) -> None:
        """A client offering only h2 gets no protocol, and the handshake still succeeds."""
        client, server, _pump = handshake(self.server, RawClient(alpn=[b"h2"]))
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertIsNone(client.tls.negotiatedProtocol)
        self.assertIsNone(server.tls.negotiatedProtocol)

    def test_no_alpn(self) -> None:
        """A client that does not use ALPN is served too."""
        client, _server, _pump = handshake(self.server, RawClient())
        self.assertEqual(client.handshakes, 1)
        self.assertIsNone(client.tls.negotiatedProtocol)


class VersionTests(SynchronousTestCase):
    """``min_version``."""

    def setUp(self) -> None:
        self.pair = Files(self.mktemp()).pair("a", SITE_A)

    def assert_failed(self, client: Peer, server: Peer) -> None:
        self.assertEqual(server.handshakes, 0)
        self.assertEqual(client.handshakes, 0)
        assert client.lost is not None and server.lost is not None
        self.assertIsInstance(client.lost.value, SSL.Error)

    def test_tls12_client_against_tls13_minimum(self) -> None:
        """A client limited to TLS 1.2 fails against min_version TLSv1.3."""
        server_tls = ServerTLS([self.pair], min_version="TLSv1.3")
        client, server, _pump = handshake(server_tls, RawClient(max_version=SSL.TLS1_2_VERSION))
        self.assert_failed(client, server)
        self.assertIsInstance(server.lost.value, SSL.Error)  # type: ignore[union-attr]
        ok, _server, _pump = handshake(server_tls, RawClient())
        self.assertEqual(ok.connection.get_protocol_version_name(), "TLSv1.3")

    def test_tls11_refused_by_default(self) -> None:
        """A TLS 1.1 client fails against the default (OpenSSL may refuse before we do)."""
        client, server, _pump = handshake(
            ServerTLS([self.pair]),
            RawClient(
                min_version=SSL.TLS1_1_VERSION,
                max_version=SSL.TLS1_1_VERSION,
                ciphers=b"DEFAULT:@SECLEVEL=0",
            ),
        )
        self.assert_failed(client, server)

    def test_tls12_accepted_by_default(self) -> None:
        client, _server, _pump = handshake(
            ServerTLS([self.pair]), RawClient(max_version=SSL.TLS1_2_VERSION)
        )
        self.assertEqual(client.connection.get_protocol_version_name(), "TLSv1.2")


class ClientCertificateTests(SynchronousTestCase):
    """``verify_client``, as nginx's ``ssl_verify_client``."""

    def setUp(self) -> None:
        files = Files(self.mktemp())
        self.pair = files.pair("a", SITE_A)
        self.c_pair = files.pair("c", SITE_C)
        self.ca = files.ca("ca", CA)
        self.good = files.pair("client", CLIENT)
        self.stranger = files.pair("stranger", STRANGER)

    def server(self, verify_client: str) -> ServerTLS:
        return ServerTLS([self.pair], client_ca=self.ca, verify_client=verify_client)

    def assert_refused(self, client: Peer, server: Peer) -> None:
        """The server ended the handshake with an error; the client got an alert."""
        self.assertEqual(server.handshakes, 0)
        assert server.lost is not None and client.lost is not None
        self.assertIsInstance(server.lost.value, SSL.Error)
        self.assertIsInstance(client.lost.value, SSL.Error)

    def test_required_without_certificate(self) -> None:
        client, server, _pump = handshake(self.server("required"), RawClient())
        self.assert_refused(client, server)

    def test_required_with_certificate(self) -> None:
        cert, key = self.good
        _client, server, _pump = handshake(self.server("required"), RawClient(cert=cert, key=key))
        self.assertEqual(server.handshakes, 1)
        self.assertIsNone(server.lost)
        peer = server.tls.getPeerCertificate()
        assert peer is not None
        self.assertEqual(peer.to_cryptography(), leaf(CLIENT))

    def test_required_from_another_ca(self) -> None:
        cert, key = self.stranger
        client, server, _pump = handshake(self.server("required"), RawClient(cert=cert, key=key))
        self.assert_refused(client, server)
        self.assertIn("certificate verify failed", str(server.lost.value))  # type: ignore[union-attr]

    def test_optional_without_certificate(self) -> None:
        client, server, _pump = handshake(self.server("optional"), RawClient())
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertIsNone(server.tls.getPeerCertificate())

    def test_optional_from_another_ca(self) -> None:
        """``optional`` still refuses a certificate that does not verify."""
        cert, key = self.stranger
        client, server, _pump = handshake(self.server("optional"), RawClient(cert=cert, key=key))
        self.assert_refused(client, server)

    def test_after_sni_switch(self) -> None:
        """Client certificates are verified the same on every SNI certificate."""
        server_tls = ServerTLS(
            [self.pair, self.c_pair], client_ca=self.ca, verify_client="required"
        )
        cert, key = self.good
        client, server, _pump = handshake(server_tls, RawClient("x.b.example", cert=cert, key=key))
        self.assertEqual(server.handshakes, 1)
        self.assertEqual(served(client), leaf(SITE_C))
        cert, key = self.stranger
        client, server, _pump = handshake(server_tls, RawClient("x.b.example", cert=cert, key=key))
        self.assert_refused(client, server)
        client, server, _pump = handshake(server_tls, RawClient("x.b.example"))
        self.assert_refused(client, server)

    def test_none_asks_for_nothing(self) -> None:
        cert, key = self.good
        _client, server, _pump = handshake(
            ServerTLS([self.pair], client_ca=self.ca), RawClient(cert=cert, key=key)
        )
        self.assertEqual(server.handshakes, 1)
        self.assertIsNone(server.tls.getPeerCertificate())


class ReloadTests(SynchronousTestCase):
    """:meth:`ServerTLS.reload`."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.cert, self.key = self.files.pair("site", SITE_A)
        self.server = ServerTLS([(self.cert, self.key)])

    def test_new_files_for_new_handshakes(self) -> None:
        """After a reload new handshakes get the new certificate; open connections go on."""
        before, before_server, pump = handshake(self.server, RawClient())
        self.assertEqual(served(before), leaf(SITE_A))
        self.files.pair("site", SITE_C)
        self.assertEqual(self.server.reload(), [])
        self.assertEqual(self.server.names, [["c.example", "*.b.example"]])
        after, _server, _pump = handshake(self.server, RawClient())
        self.assertEqual(served(after), leaf(SITE_C))
        before.transport.write(b"still here")  # type: ignore[union-attr]
        pump.flush()
        self.assertEqual(before_server.received, b"still here")

    def test_bad_file_keeps_old(self) -> None:
        """An unusable new file keeps every old context, and the problem is returned."""
        self.files.pair("site", SITE_C)
        self.files.write("site.key", b"not a key")
        self.assertEqual(self.server.reload(), [f"{self.key}: not a PEM private key"])
        client, _server, _pump = handshake(self.server, RawClient())
        self.assertEqual(served(client), leaf(SITE_A))
        self.assertEqual(self.server.names, [["a.example"]])

    def test_mismatch_keeps_old(self) -> None:
        """A certificate replaced without its key is a problem, not a half-reload."""
        self.files.pair("other", SITE_C)
        os.replace(self.files.path("other.pem"), self.cert)
        self.assertEqual(
            self.server.reload(), [f"{self.key} does not match the certificate in {self.cert}"]
        )
        client, _server, _pump = handshake(self.server, RawClient())
        self.assertEqual(served(client), leaf(SITE_A))


class ClientTLSTests(SynchronousTestCase):
    """:class:`ClientTLS`: verified TLS to backends."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.ca = self.files.ca("ca", CA)
        self.other_ca = self.files.ca("other-ca", OTHER_CA)
        self.server = ServerTLS(
            [self.files.pair("a", SITE_A), self.files.pair("c", SITE_C)], alpn=[b"http/1.1"]
        )
        self.backend = Backend.from_address("a.example:443", name="app1")

    def test_provides_interface(self) -> None:
        creator = ClientTLS(ca=self.ca).creator(self.backend)
        verifyObject(IOpenSSLClientConnectionCreator, creator)
        verifyObject(
            IOpenSSLClientConnectionCreator,
            ClientTLS(ca=self.ca, verify=False).creator(self.backend),
        )

    def test_verified(self) -> None:
        """The right CA and the backend's host name: connected."""
        client, server, _pump = handshake(self.server, ClientTLS(ca=self.ca).creator(self.backend))
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertIsNone(client.lost)
        self.assertEqual(server.connection.get_servername(), b"a.example")

    def test_server_name(self) -> None:
        """``server_name`` is verified and sent as SNI, whatever the backend's address."""
        backend = Backend.from_address("10.0.0.7:443")
        tls = ClientTLS(ca=self.ca, server_name="x.b.example")
        client, server, _pump = handshake(self.server, tls.creator(backend))
        self.assertEqual(client.handshakes, 1)
        self.assertEqual(server.connection.get_servername(), b"x.b.example")
        self.assertEqual(served(client), leaf(SITE_C))

    def test_wrong_ca(self) -> None:
        """A chain from an untrusted CA fails, and the reason says verify failed."""
        tls = ClientTLS(ca=self.other_ca)
        client, _server, _pump = handshake(self.server, tls.creator(self.backend))
        self.assertEqual(client.handshakes, 0)
        assert client.lost is not None
        self.assertIsInstance(client.lost.value, SSL.Error)
        self.assertIn("certificate verify failed", str(client.lost.value))

    def test_wrong_name(self) -> None:
        """A trusted certificate for another name fails, naming the mismatch."""
        tls = ClientTLS(ca=self.ca, server_name="wrong.example")
        client, _server, _pump = handshake(self.server, tls.creator(self.backend))
        self.assertEqual(client.handshakes, 0)
        assert client.lost is not None
        self.assertIsInstance(client.lost.value, VerificationError)
        self.assertIn("wrong.example", str(client.lost.value))

    def test_unverified(self) -> None:
        """verify=False connects despite the wrong CA and name, and still sends SNI."""
        tls = ClientTLS(ca=self.other_ca, server_name="x.b.example", verify=False)
        client, server, _pump = handshake(self.server, tls.creator(self.backend))
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        self.assertEqual(server.connection.get_servername(), b"x.b.example")
        self.assertEqual(served(client), leaf(SITE_C))

    def test_ip_address(self) -> None:
        """An IP-literal backend is verified against the certificate's IP address SANs."""
        server = ServerTLS([self.files.pair("ip", LOOPBACK)])
        tls = ClientTLS(ca=self.ca)
        client, srv, _pump = handshake(server, tls.creator(Backend.from_address("127.0.0.1:8443")))
        self.assertEqual(client.handshakes, 1)
        self.assertIsNone(srv.connection.get_servername())
        wrong, _srv, _pump = handshake(server, tls.creator(Backend.from_address("127.0.0.2:8443")))
        self.assertEqual(wrong.handshakes, 0)
        assert wrong.lost is not None
        self.assertIsInstance(wrong.lost.value, VerificationError)
        self.assertIn("127.0.0.2", str(wrong.lost.value))

    def test_mutual_tls(self) -> None:
        """client_cert/client_key are presented to a backend that requires one."""
        cert, key = self.files.pair("client", CLIENT)
        backend_tls = ServerTLS(
            [self.files.pair("a", SITE_A)], client_ca=self.ca, verify_client="required"
        )
        tls = ClientTLS(ca=self.ca, client_cert=cert, client_key=key)
        client, server, pump = handshake(backend_tls, tls.creator(self.backend))
        pump.flush()
        self.assertEqual(server.handshakes, 1)
        self.assertIsNone(client.lost)
        peer = server.tls.getPeerCertificate()
        assert peer is not None
        self.assertEqual(peer.to_cryptography(), leaf(CLIENT))

    def test_cached_per_backend(self) -> None:
        tls = ClientTLS(ca=self.ca)
        self.assertIs(tls.creator(self.backend), tls.creator(self.backend))
        other = Backend.from_address("a.example:443", name="app2")
        self.assertIsNot(tls.creator(other), tls.creator(self.backend))

    def test_config_errors(self) -> None:
        cert, _key = self.files.pair("client", CLIENT)
        with self.assertRaises(TLSConfigError) as raised:
            ClientTLS(client_cert=cert)
        self.assertIn("client_key", str(raised.exception))
        missing = self.files.path("missing.pem")
        with self.assertRaises(TLSConfigError) as raised:
            ClientTLS(ca=missing)
        self.assertEqual(str(raised.exception), f"cannot read {missing}: No such file or directory")
        with self.assertRaises(TLSConfigError) as raised:
            ClientTLS(client_cert=cert, client_key=self.files.pair("c", SITE_C)[1])
        self.assertIn("does not match", str(raised.exception))
        with self.assertRaises(TLSConfigError) as raised:
            ClientTLS(ca=self.ca).creator(Backend.from_address("unix:/run/app.sock"))
        self.assertIn("server_name", str(raised.exception))

    def test_endpoint(self) -> None:
        """
        ``endpoint(reactor, backend)`` connects to the backend's address and speaks verified
        TLS over it, as the relay and the health checks use it.
        """
        reactor = MemoryReactorClock()
        backend = Backend.from_address("127.0.0.1:8443")
        endpoint = ClientTLS(ca=self.ca).endpoint(reactor, backend)
        connected: list[IProtocol] = []
        endpoint.connect(Factory.forProtocol(Peer)).addCallback(connected.append)
        [(host, port, factory, _timeout, _bind)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8443))

        clock = Clock()
        server_factory = TLSMemoryBIOFactory(
            ServerTLS([self.files.pair("ip", LOOPBACK)]),
            False,
            Factory.forProtocol(Peer),
            clock=clock,
        )
        server_tls = server_factory.buildProtocol(None)
        client_protocol = factory.buildProtocol(None)
        pump = connect(
            server_tls,
            makeFakeServer(server_tls),
            client_protocol,
            makeFakeClient(client_protocol),
            clock=clock,
        )
        pump.flush()
        [peer] = connected
        assert isinstance(peer, Peer)
        self.assertEqual(peer.handshakes, 1)
        self.assertIsNone(peer.lost)


class ClientReloadTests(SynchronousTestCase):
    """:meth:`ClientTLS.reload`: the pool's ``ca``, ``client_cert`` and ``client_key`` again."""

    def setUp(self) -> None:
        self.files = Files(self.mktemp())
        self.ca = self.files.ca("ca", CA)
        self.backend = Backend.from_address("a.example:443", name="app1")
        self.server = ServerTLS([self.files.pair("a", SITE_A)])
        self.other_server = ServerTLS([self.files.pair("other", OTHER_CA.issue_cert("a.example"))])

    def test_new_ca_for_new_connections(self) -> None:
        """After a reload, new connections verify against the new CA bundle."""
        tls = ClientTLS(ca=self.ca)
        self.assertEqual(handshake(self.server, tls.creator(self.backend))[0].handshakes, 1)
        self.files.ca("ca", OTHER_CA)
        # Nothing changes before the reload: the bundle was read once.
        self.assertEqual(handshake(self.server, tls.creator(self.backend))[0].handshakes, 1)
        self.assertEqual(tls.reload(), [])
        old_backend, _server, _pump = handshake(self.server, tls.creator(self.backend))
        self.assertEqual(old_backend.handshakes, 0)
        self.assertIn("certificate verify failed", str(old_backend.lost))
        self.assertEqual(handshake(self.other_server, tls.creator(self.backend))[0].handshakes, 1)

    def test_bad_file_keeps_old(self) -> None:
        """An unusable new file keeps the old CA and client certificate; the problem is returned."""
        cert, key = self.files.pair("client", CLIENT)
        tls = ClientTLS(ca=self.ca, client_cert=cert, client_key=key)
        self.files.write("ca.pem", b"not a certificate\n")
        self.files.write("client.key", b"not a key")
        self.assertEqual(
            tls.reload(),
            [f"{self.ca}: no PEM certificate found", f"{key}: not a PEM private key"],
        )
        # The backend trusts CA's client certificates (a copy: ca.pem is broken now).
        backend_tls = ServerTLS(
            [self.files.pair("a", SITE_A)],
            client_ca=self.files.ca("ca-copy", CA),
            verify_client="required",
        )
        client, server, pump = handshake(backend_tls, tls.creator(self.backend))
        pump.flush()
        self.assertEqual((client.handshakes, server.handshakes), (1, 1))
        peer = server.tls.getPeerCertificate()
        assert peer is not None
        self.assertEqual(peer.to_cryptography(), leaf(CLIENT))

    def test_new_client_certificate(self) -> None:
        """A renewed client certificate is presented from the reload on."""
        cert, key = self.files.pair("client", CLIENT)
        tls = ClientTLS(ca=self.ca, client_cert=cert, client_key=key)
        renewed = CA.issue_cert("renewed.example")
        self.files.pair("client", renewed)
        self.assertEqual(tls.reload(), [])
        backend_tls = ServerTLS(
            [self.files.pair("a", SITE_A)], client_ca=self.ca, verify_client="required"
        )
        _client, server, pump = handshake(backend_tls, tls.creator(self.backend))
        pump.flush()
        peer = server.tls.getPeerCertificate()
        assert peer is not None
        self.assertEqual(peer.to_cryptography(), leaf(renewed))

    def test_has_files(self) -> None:
        """Only a pool with ``ca`` or a client certificate has files to reload."""
        cert, key = self.files.pair("client", CLIENT)
        self.assertFalse(ClientTLS().has_files)
        self.assertFalse(ClientTLS(verify=False).has_files)
        self.assertTrue(ClientTLS(ca=self.ca).has_files)
        self.assertTrue(ClientTLS(client_cert=cert, client_key=key).has_files)
        self.assertEqual(ClientTLS().reload(), [])


def counted_handshake(server_tls: ServerTLS, client: Any) -> tuple[Peer, Peer]:
    """:func:`handshake`, with the server side wrapped by ``server_tls.wrap`` as frontends are."""
    clock = Clock()
    servers, clients = PeerFactory(), PeerFactory()
    server_factory = server_tls.wrap(servers, clock=clock)
    client_factory = TLSMemoryBIOFactory(client, True, clients, clock=clock)
    _client, _server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    [client_peer], [server_peer] = clients.built, servers.built
    return client_peer, server_peer


class HandshakeCountTests(SynchronousTestCase):
    """``ServerTLS.wrap`` counts handshakes and failed handshakes by reason."""

    def setUp(self) -> None:
        self.server_tls = ServerTLS([Files(self.mktemp()).pair("a", SITE_A)], min_version="TLSv1.3")

    def test_completed(self) -> None:
        """A completed handshake counts once, however much is sent after it."""
        client, server = counted_handshake(self.server_tls, RawClient())
        self.assertEqual(server.handshakes, 1)
        client.transport.write(b"more")  # type: ignore[union-attr]
        client.transport.loseConnection()  # type: ignore[union-attr]
        self.assertEqual(self.server_tls.handshake_counts.completed, 1)
        self.assertEqual(self.server_tls.handshake_counts.failed, {})

    def test_failed_by_reason(self) -> None:
        """A refused protocol version counts as a failure with OpenSSL's reason."""
        _client, server = counted_handshake(
            self.server_tls, RawClient(max_version=SSL.TLS1_2_VERSION)
        )
        self.assertEqual(server.handshakes, 0)
        assert server.lost is not None
        self.assertEqual(self.server_tls.handshake_counts.completed, 0)
        self.assertEqual(self.server_tls.handshake_counts.failed, {"unsupported_protocol": 1})

    def test_plain_http_and_early_close(self) -> None:
        """
        Plain HTTP sent to a TLS listener, and a client gone before the handshake ended,
        count under their own reasons.
        """
        factory = self.server_tls.wrap(PeerFactory(), clock=Clock())
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        quiet = factory.buildProtocol(None)
        assert quiet is not None
        quiet.makeConnection(StringTransport())
        quiet.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.server_tls.handshake_counts.failed, {"http_request": 1, "closed": 1})
        self.assertEqual(handshake_failure_reason(ConnectionDone()), "closed")
