"""
Integration tests of TLS: a real ``twistd -n lb`` terminating TLS, and talking TLS to real
backends, with certificates made by trustme; the clients are Python's ``ssl`` module, and curl
and ``openssl s_client`` where those tools are installed.

Covered: SNI picks the certificate (default, exact, wildcard), ALPN, ``X-Forwarded-Proto`` and
``Forwarded``, old protocol versions refused, ``min_version``, mutual TLS required, upstream
verification (wrong CA: 502 and a log event; right CA: 200; health checks over TLS), and
reload on SIGHUP: frontend certificates with an old connection kept, a pool's CA bundle.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any

import trustme
from twisted.trial.unittest import SynchronousTestCase

from tests._harness import (
    Process,
    environ_with,
    read_response,
    rss_bytes,
    start_backend,
    start_lb,
)
from tests.test_integration_http import (
    LOG_ERRORS,
    MB,
    TIMEOUT,
    echoed,
    header_values,
    read_slowly,
)


def write_pair(directory: Path, name: str, cert: trustme.LeafCert) -> tuple[str, str]:
    """Write a leaf's chain and key as ``NAME.pem`` and ``NAME.key``; return both paths."""
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    return str(cert_path), str(key_path)


def der(cert: trustme.LeafCert) -> bytes:
    """The DER bytes of a leaf certificate, as ``getpeercert(binary_form=True)`` gives them."""
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


RSA = trustme.KeyType.RSA


class TLSCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.ca = trustme.CA()
        self.ca_path = str(self.dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.site_a = self.ca.issue_cert("a.example")
        self.site_b = self.ca.issue_cert("b.example", "*.b.example")
        self.a = write_pair(self.dir, "a", self.site_a)
        self.b = write_pair(self.dir, "b", self.site_b)

    def start_backend(self, mode: str, name: str, **env: str) -> tuple[Process, int]:
        process, port = start_backend(mode, name, environ_with(**env) if env else None)
        self.addCleanup(process.kill)
        return process, port

    def start_lb(self, config: str, name: str = "lb") -> tuple[Process, int]:
        path = self.dir / f"{name}.toml"
        path.write_text(config)
        process, port = start_lb(str(path))
        self.addCleanup(process.kill)
        self.addCleanup(self.stop_and_check_log, process)
        return process, port

    def stop_and_check_log(self, lb: Process) -> None:
        lb.stop()
        bad = [line for line in lb.output().splitlines() if LOG_ERRORS.search(line)]
        self.assertEqual(bad, [], "\n" + lb.output())

    def frontend_config(
        self, backend_port: int, tls: str, *, mode: str = "http", pool_tls: str | None = None
    ) -> str:
        lines = [
            "[frontends.web]",
            f'mode = "{mode}"',
            'listen = ["tcp:0:interface=127.0.0.1"]',
            'pool = "app"',
            "[frontends.web.tls]",
            tls,
            "[pools.app]",
            f'backends = [{{ address = "127.0.0.1:{backend_port}" }}]',
        ]
        if pool_tls is not None:
            lines += ["[pools.app.tls]", pool_tls]
        return "\n".join(lines) + "\n"

    def two_sites(self) -> str:
        return (
            "certificates = [\n"
            f'  {{ cert = "{self.a[0]}", key = "{self.a[1]}" }},\n'
            f'  {{ cert = "{self.b[0]}", key = "{self.b[1]}" }},\n'
            "]"
        )

    def client_context(self, **kwargs: Any) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_path)
        for key, value in kwargs.items():
            setattr(context, key, value)
        return context

    def handshake(
        self, port: int, server_name: str | None, context: ssl.SSLContext | None = None
    ) -> ssl.SSLSocket:
        """A TLS connection to the balancer, handshake done; closed at cleanup."""
        if context is None:
            context = self.client_context()
            if server_name is None:
                context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.addCleanup(raw.close)
        tls = context.wrap_socket(raw, server_hostname=server_name)
        self.addCleanup(tls.close)
        return tls

    def request(self, port: int) -> tuple[int, bytes]:
        """One plain HTTP GET / to the balancer: the status and body."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.addCleanup(connection.close)
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read()

    def get(self, tls: ssl.SSLSocket, host: str = "a.example", target: str = "/") -> Any:
        tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return read_response(tls.makefile("rb"))


class TerminationTests(TLSCase):
    def test_sni_picks_the_certificate(self) -> None:
        """
        SNI picks the certificate whose subjectAltName matches, wildcards included; no SNI
        or an unknown name gets the first one.
        """
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        self.assertEqual(self.handshake(port, "a.example").getpeercert(True), der(self.site_a))
        self.assertEqual(self.handshake(port, "b.example").getpeercert(True), der(self.site_b))
        self.assertEqual(self.handshake(port, "x.b.example").getpeercert(True), der(self.site_b))
        self.assertEqual(self.handshake(port, None).getpeercert(True), der(self.site_a))
        context = self.client_context(check_hostname=False)
        tls = self.handshake(port, "unknown.example", context)
        self.assertEqual(tls.getpeercert(True), der(self.site_a))

    def test_https_request_alpn_and_forwarded_proto(self) -> None:
        """
        ALPN settles on http/1.1; the request reaches the backend with
        ``X-Forwarded-Proto: https`` and ``Forwarded: ...;proto=https``.
        """
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        context = self.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        tls = self.handshake(port, "a.example", context)
        self.assertEqual(tls.selected_alpn_protocol(), "http/1.1")
        response = self.get(tls)
        self.assertEqual(response.status, 200)
        echo = echoed(response.body)
        self.assertEqual(header_values(echo, "X-Forwarded-Proto"), ["https"])
        [forwarded] = header_values(echo, "Forwarded")
        self.assertIn("proto=https", forwarded)
        # The same connection serves another request (keep-alive over TLS).
        self.assertEqual(self.get(tls).status, 200)

    def test_response_that_closes_the_connection(self) -> None:
        """
        A response after which the balancer closes the connection (HTTP/1.0, ``Connection:
        close``, an error) arrives whole before the TLS close.
        """
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        for request in (
            b"GET / HTTP/1.0\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            b"GET /_bytes?n=100000&close=1 HTTP/1.0\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: x\r\n\r\n",
        ):
            tls = self.handshake(port, "a.example")
            tls.sendall(request)
            response = read_response(tls.makefile("rb"))
            self.assertIn(response.status, (200, 400), request)
            if b"/_bytes" in request:
                self.assertEqual(len(response.body), 100000)
            self.assertEqual(tls.recv(1), b"")  # the balancer's close_notify
            # The client sends no close_notify back, and the balancer does not wait for one
            # (as nginx): the TCP connection under TLS is closed too.
            raw = socket.socket(fileno=os.dup(tls.fileno()))
            self.addCleanup(raw.close)
            raw.settimeout(TIMEOUT)
            self.assertEqual(raw.recv(1), b"")

    def test_download_by_slow_client(self) -> None:
        """
        64 MB down over TLS to a client that reads slowly arrive whole, and grow the
        balancer's resident memory by less than 32 MB: records go out as the socket takes
        them, and the backend's reading is paused once they have to be queued.
        """
        total = 64 * MB
        _, backend = self.start_backend("echo", "app1")
        lb, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        tls = self.handshake(port, "a.example")
        tls.settimeout(60)
        baseline = rss_bytes(lb.pid)
        with contextlib.suppress(OSError):
            Path(f"/proc/{lb.pid}/clear_refs").write_text("5")
        tls.sendall(f"GET /_bytes?n={total}&fill=d HTTP/1.1\r\nHost: a.example\r\n\r\n".encode())
        read_slowly(self, tls, total, pause=0.0005)
        self.assertEqual(self.get(tls).status, 200)  # the connection is still in service
        self.assertLess(rss_bytes(lb.pid, "VmHWM") - baseline, 32 * MB)

    def test_413_reaches_a_client_still_sending(self) -> None:
        """
        Lingering close over TLS: a 4 MB upload refused with 413 at its head completes without
        a reset (the balancer sends close_notify and reads on, discarding), and the client
        then reads the whole 413 and the close.
        """
        _, backend = self.start_backend("echo", "app1")
        config = self.frontend_config(backend, self.two_sites()).replace(
            'pool = "app"\n', 'pool = "app"\nmax_body_bytes = 1024\n', 1
        )
        lb, port = self.start_lb(config)
        total = 4 * MB
        tls = self.handshake(port, "a.example")
        tls.settimeout(30)
        tls.sendall(
            f"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        tls.sendall(b"u" * total)
        response = read_response(tls.makefile("rb"), "POST")
        self.assertEqual(response.status, 413)
        self.assertEqual(response.body, b"413 Content Too Large\n")
        self.assertEqual(tls.recv(1), b"")  # close_notify
        raw = tls.unwrap()  # ours back: the balancer ends the connection, without an error
        self.assertEqual(raw.recv(1), b"")
        lb.wait_for(r'"POST /up" 413 ')

    def test_websocket_tunnel_closed_when_the_backend_goes(self) -> None:
        """
        A WebSocket tunnel over TLS echoes both ways, and when the backend goes away the
        client's connection is closed at once (not after tunnel_timeout).
        """
        backend, backend_port = self.start_backend("upgrade", "ws")
        _, port = self.start_lb(self.frontend_config(backend_port, self.two_sites()))
        tls = self.handshake(port, "a.example")
        rfile = tls.makefile("rb")
        tls.sendall(
            b"GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertEqual(read_response(rfile).status, 101)
        tls.sendall(b"ping")
        self.assertEqual(rfile.read(4), b"ping")
        backend.kill()
        self.assertEqual(rfile.read(1), b"")  # within TIMEOUT, or the socket times out

    def test_tcp_mode_terminates_tls(self) -> None:
        """A tcp frontend with tls relays the decrypted bytes."""
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites(), mode="tcp"))
        tls = self.handshake(port, "b.example")
        self.assertIsNone(tls.selected_alpn_protocol())
        response = self.get(tls, host="b.example")
        self.assertEqual(response.status, 200)
        self.assertEqual(header_values(echoed(response.body), "X-Forwarded-Proto"), [])

    def test_tcp_mode_backend_close_is_a_clean_tls_close(self) -> None:
        """
        In tcp mode, a backend that answers and closes (``http`` mode: HTTP/1.0) makes the
        balancer end the client's TLS session cleanly, with close_notify, and log no error.
        """
        _, backend = self.start_backend("http", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites(), mode="tcp"))
        for _ in range(3):
            tls = self.handshake(port, "a.example")
            tls.sendall(b"GET / HTTP/1.0\r\nHost: a.example\r\n\r\n")
            received = b""
            while chunk := tls.recv(65536):  # SSLEOFError without close_notify
                received += chunk
            self.assertTrue(received.startswith(b"HTTP/1.0 200"), received)
            self.assertTrue(received.endswith(b"Hello from app1\n"), received)

    def test_old_versions_refused(self) -> None:
        """
        TLS 1.0 and 1.1 are refused by default; TLS 1.2 works; with ``min_version =
        "TLSv1.3"`` TLS 1.2 is refused too.
        """
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            context = self.client_context(check_hostname=False)
            context.verify_mode = ssl.CERT_NONE
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
                context.minimum_version = version
                context.maximum_version = version
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                self.handshake(port, "a.example", context)
        context = self.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(self.handshake(port, "a.example", context).version(), "TLSv1.2")

        _, strict = self.start_lb(
            self.frontend_config(backend, self.two_sites() + '\nmin_version = "TLSv1.3"')
        )
        with self.assertRaises(ssl.SSLError):
            self.handshake(strict, "a.example", context)
        self.assertEqual(self.handshake(strict, "a.example").version(), "TLSv1.3")

    def test_mutual_tls_required(self) -> None:
        """
        With ``verify_client = "required"``, a client without a certificate fails the
        handshake; one with a certificate from ``client_ca`` is served.
        """
        _, backend = self.start_backend("echo", "app1")
        tls = self.two_sites() + f'\nclient_ca = "{self.ca_path}"\nverify_client = "required"'
        _, port = self.start_lb(self.frontend_config(backend, tls))
        with self.assertRaises((ssl.SSLError, ConnectionError, AssertionError)):
            # In TLS 1.3 the server's refusal arrives after the client's handshake: read.
            self.get(self.handshake(port, "a.example"))
        client = self.ca.issue_cert("client.example")
        context = self.client_context()
        cert_path, key_path = write_pair(self.dir, "client", client)
        context.load_cert_chain(cert_path, key_path)
        self.assertEqual(self.get(self.handshake(port, "a.example", context)).status, 200)


class ToolTests(TLSCase):
    """The same checks with the command-line clients an operator would use."""

    def test_curl_and_openssl_s_client(self) -> None:
        """
        ``curl --cacert`` gets an answer for two names, and ``openssl s_client -servername``
        is shown the matching certificate for each.
        """
        curl = shutil.which("curl")
        openssl = shutil.which("openssl")
        if curl is None or openssl is None:
            self.skipTest("curl or openssl is not installed")
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, self.two_sites()))
        for name, site in (("a.example", self.site_a), ("www.b.example", self.site_b)):
            result = subprocess.run(
                [curl, "-sS", "--cacert", self.ca_path, "--resolve", f"{name}:{port}:127.0.0.1",
                 f"https://{name}:{port}/"],
                capture_output=True, text=True, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(echoed(result.stdout.encode())["method"], "GET")
            shown = subprocess.run(
                [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
                 "-CAfile", self.ca_path, "-verify_return_error"],
                input="", capture_output=True, text=True, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            self.assertIn("Verify return code: 0 (ok)", shown.stdout)
            pem = site.cert_chain_pems[0].bytes().decode().strip()
            self.assertIn(pem, shown.stdout)

    def probe(self, port: int, group: str, version: str) -> str:
        """
        ``openssl s_client -groups GROUP -tls1_2|-tls1_3``: the key exchange it got
        (``"X25519"``, ``"secp384r1"``, ...), or ``""`` when the handshake failed.
        """
        openssl = shutil.which("openssl")
        assert openssl is not None
        shown = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.example",
             "-CAfile", self.ca_path, "-groups", group, f"-{version}"],
            input="", capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        for line in shown.stdout.splitlines():
            if line.startswith("Server Temp Key: "):
                self.assertIn("Verify return code: 0 (ok)", shown.stdout)
                words = line.removeprefix("Server Temp Key: ").split(", ")
                return words[1] if words[0] == "ECDH" else words[0]
        self.assertIn("Cipher is (NONE)", shown.stdout, shown.stderr)
        self.assertIn("handshake failure", shown.stderr)
        return ""

    def test_openssl_groups_probe(self) -> None:
        """
        With only ``certificates`` set, an ``openssl s_client -groups`` probe (the check an
        sslyze scan makes) finds Mozilla's intermediate groups, X25519, prime256v1 and
        secp384r1, over TLS 1.2 and 1.3; X448 and secp521r1 fail the handshake. With
        ``curves = ["X448"]`` only X448 is served.
        """
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        # An RSA certificate: in TLS 1.2 the groups a client offers also bound the curve of
        # an ECDSA certificate (RFC 8422 §5.1), which would fail probes for other reasons.
        rsa = write_pair(self.dir, "rsa", self.ca.issue_cert("a.example", key_type=RSA))
        certificates = f'certificates = [{{ cert = "{rsa[0]}", key = "{rsa[1]}" }}]'
        _, backend = self.start_backend("echo", "app1")
        _, port = self.start_lb(self.frontend_config(backend, certificates))
        for version in ("tls1_2", "tls1_3"):
            found = {group: self.probe(port, group, version) for group in
                     ("X25519", "prime256v1", "secp384r1", "X448", "secp521r1")}  # fmt: skip
            self.assertEqual(
                found,
                {"X25519": "X25519", "prime256v1": "prime256v1", "secp384r1": "secp384r1",
                 "X448": "", "secp521r1": ""},
                version,
            )  # fmt: skip
        _, x448 = self.start_lb(
            self.frontend_config(backend, certificates + '\ncurves = ["X448"]'), "x448"
        )
        self.assertEqual(self.probe(x448, "X448", "tls1_3"), "X448")
        self.assertEqual(self.probe(x448, "X25519", "tls1_3"), "")


class UpstreamTests(TLSCase):
    def start_tls_backend(self) -> int:
        backend_cert = self.ca.issue_cert("backend.internal", "127.0.0.1")
        cert, key = write_pair(self.dir, "backend", backend_cert)
        _, port = self.start_backend("tls-echo", "app1", TLS_CERT=cert, TLS_KEY=key)
        return port

    def plain_frontend(self, backend: int, pool_tls: str, extra: str = "") -> str:
        return (
            "[frontends.web]\n"
            'mode = "http"\n'
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            'pool = "app"\n'
            "[pools.app]\n"
            "retries = 0\n"
            f'backends = [{{ address = "127.0.0.1:{backend}" }}]\n'
            "[pools.app.tls]\n"
            f"{pool_tls}\n"
            f"{extra}"
        )

    def test_verified_backend(self) -> None:
        """With the right CA and name the backend is reached over TLS, verified."""
        backend = self.start_tls_backend()
        _, port = self.start_lb(
            self.plain_frontend(backend, f'ca = "{self.ca_path}"\nserver_name = "backend.internal"')
        )
        status, body = self.request(port)
        self.assertEqual(status, 200)
        self.assertEqual(echoed(body)["method"], "GET")

    def test_ip_literal_backend_verified_by_address(self) -> None:
        """Without server_name, the backend's address (an IP here) is what is verified."""
        backend = self.start_tls_backend()
        _, port = self.start_lb(self.plain_frontend(backend, f'ca = "{self.ca_path}"'))
        self.assertEqual(self.request(port)[0], 200)

    def test_wrong_ca_is_502_with_a_log_event(self) -> None:
        """
        A backend whose certificate does not verify is a connect failure: 502, and a log
        line that names the reason. Its TLS health check fails the same way.
        """
        backend = self.start_tls_backend()
        other = trustme.CA()
        other_path = str(self.dir / "other-ca.pem")
        other.cert_pem.write_to_path(other_path)
        lb, port = self.start_lb(self.plain_frontend(backend, f'ca = "{other_path}"'))
        self.assertEqual(self.request(port), (502, b"502 Bad Gateway\n"))
        lb.wait_for(r"connect to backend app1 .* failed: .*certificate verify failed")

        checked, checked_port = self.start_lb(
            self.plain_frontend(
                backend,
                f'ca = "{other_path}"',
                "[pools.app.health_check]\ninterval = 5.0\n",
            ),
            name="lb2",
        )
        checked.wait_for(r"backend app1 DOWN after its first check failed \(last: .*verify failed")
        self.assertEqual(self.request(checked_port)[0], 503)

    def test_health_check_host_is_the_server_name(self) -> None:
        """
        An HTTP health check of a TLS pool asks for the pool's ``server_name`` in ``Host``
        (with the backend's port, not 443), as its SNI and verification name it.
        """
        backend_cert = self.ca.issue_cert("backend.internal")
        cert, key = write_pair(self.dir, "backend", backend_cert)
        backend, port = self.start_backend("tls-echo", "app1", TLS_CERT=cert, TLS_KEY=key)
        lb, _ = self.start_lb(
            self.plain_frontend(
                port,
                f'ca = "{self.ca_path}"\nserver_name = "backend.internal"',
                '[pools.app.health_check]\nkind = "http"\npath = "/healthz"\ninterval = 5.0\n',
            )
        )
        [connection] = backend.wait_for(r"^REQUEST (\d+) GET /healthz$").groups()
        host = backend.wait_for(rf"^HOST {connection} (.*)$").group(1)
        self.assertEqual(host, f"backend.internal:{port}")
        self.assertNotIn("DOWN", lb.output())

    def test_wrong_name_is_502(self) -> None:
        """A certificate for another name does not verify either."""
        backend = self.start_tls_backend()
        lb, port = self.start_lb(
            self.plain_frontend(backend, f'ca = "{self.ca_path}"\nserver_name = "other.internal"')
        )
        self.assertEqual(self.request(port)[0], 502)
        lb.wait_for(r"connect to backend app1 .* failed: .*other\.internal")

    def test_verify_false_warns(self) -> None:
        """``verify = false`` reaches the backend and says so in the log at start."""
        backend = self.start_tls_backend()
        lb, port = self.start_lb(self.plain_frontend(backend, "verify = false"))
        self.assertEqual(self.request(port)[0], 200)
        lb.wait_for(r"pool app: TLS to the backends is NOT verified")


class ReloadTests(TLSCase):
    def test_sighup_reloads_certificates(self) -> None:
        """
        After SIGHUP new handshakes get the new certificate while a connection made before
        keeps working; a bad new file keeps the current certificate and says why.
        """
        _, backend = self.start_backend("echo", "app1")
        live = write_pair(self.dir, "live", self.site_a)
        tls = f'certificates = [{{ cert = "{live[0]}", key = "{live[1]}" }}]'
        lb, port = self.start_lb(self.frontend_config(backend, tls))
        old = self.handshake(port, "a.example")
        self.assertEqual(self.get(old).status, 200)

        renewed = self.ca.issue_cert("a.example")
        write_pair(self.dir, "live", renewed)
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"frontend web: certificates reloaded")
        self.assertEqual(self.handshake(port, "a.example").getpeercert(True), der(renewed))
        self.assertEqual(self.get(old).status, 200)
        self.assertEqual(old.getpeercert(True), der(self.site_a))

        Path(live[0]).write_text("not a certificate\n")
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"frontend web: certificates not reloaded, keeping the old ones: .*live\.pem")
        self.assertEqual(self.handshake(port, "a.example").getpeercert(True), der(renewed))

    def test_sighup_reloads_the_pools_ca(self) -> None:
        """
        SIGHUP reads a pool's ``ca`` again: a backend whose certificate the old bundle did not
        verify (502; its TLS health check DOWN) is verified by the new one, and its health
        check brings it UP; a broken bundle afterwards keeps the working one, and says why.
        """
        renewed_ca = trustme.CA()
        backend_cert = renewed_ca.issue_cert("backend.internal")
        cert, key = write_pair(self.dir, "backend", backend_cert)
        _, backend = self.start_backend("tls-echo", "app1", TLS_CERT=cert, TLS_KEY=key)
        live_ca = self.dir / "live-ca.pem"
        self.ca.cert_pem.write_to_path(str(live_ca))
        config = (
            "[frontends.web]\n"
            'mode = "http"\n'
            'listen = ["tcp:0:interface=127.0.0.1"]\n'
            'pool = "app"\n'
            "[pools.app]\n"
            "retries = 0\n"
            "max_idle_per_backend = 0\n"  # every request verifies a new connection
            "panic = true\n"  # a DOWN backend still gets requests: the 502 shows why
            f'backends = [{{ address = "127.0.0.1:{backend}" }}]\n'
            "[pools.app.tls]\n"
            f'ca = "{live_ca}"\n'
            'server_name = "backend.internal"\n'
            "[pools.app.health_check]\n"
            'kind = "http"\n'
            'path = "/healthz"\n'
            "interval = 0.2\n"
            "rise = 1\n"
        )
        lb, port = self.start_lb(config)
        lb.wait_for(r"backend app1 DOWN after its first check failed \(last: .*verify failed")
        self.assertEqual(self.request(port)[0], 502)

        renewed_ca.cert_pem.write_to_path(str(live_ca))
        lb.signal(signal.SIGHUP)
        lb.wait_for(r"pool app: TLS files reloaded")
        lb.wait_for(r"backend app1 UP after 1 passed check")
        self.assertEqual(self.request(port)[0], 200)

        live_ca.write_text("not a certificate\n")
        lb.signal(signal.SIGHUP)
        lb.wait_for(
            r"pool app: TLS files not reloaded, keeping the old ones: .*live-ca\.pem: "
            r"no PEM certificate found"
        )
        for _ in range(3):
            self.assertEqual(self.request(port)[0], 200)
        self.assertNotIn("backend app1 DOWN after", lb.output().split("TLS files not reloaded")[1])
