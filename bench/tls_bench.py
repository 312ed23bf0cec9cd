#!/usr/bin/env python3
"""TLS benchmark: twisted-lb terminating TLS in HTTP mode against nginx, same ECDSA certificate.

One run measures two paths to the same backend (one nginx worker answering ``ok`` over plain
HTTP), both on 127.0.0.1 and both serving the same ECDSA P-256 certificate for ``localhost``
and ``127.0.0.1``, made for the run:

``nginx``
    nginx ``listen ... ssl``, ``ssl_protocols TLSv1.2 TLSv1.3``,
    ``ssl_session_cache shared:SSL:10m``, ``proxy_pass`` to the backend with upstream
    ``keepalive`` at twice wrk's connections, one worker process (the anchor);
``twisted-lb``
    ``twistd -n lb --config lb.toml`` with a ``mode = "http"``
    frontend and ``[frontends.NAME.tls]``.

For each path it measures full TLS handshakes/s, TLS 1.3 and TLS 1.2, with parallel
``openssl s_time -new`` clients (a fresh session for every connection, each with one
``GET /``), and https keep-alive requests/s and p99 latency with wrk (50 connections), plus the
CPU time the TLS server spent on each. Then it prints the ratios that the TLS targets ask for.
See bench/README.rst.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from _common import (
    LOOPBACK,
    BenchError,
    Child,
    Children,
    bench_parser,
    busy_before,
    check_bench_args,
    find_tools,
    first_output_line,
    free_ports,
    json_settings,
    log,
    log_wrk_result,
    nginx_http_common,
    nginx_main_context,
    nginx_upstream_keepalive,
    pass_mark,
    print_busy_warning,
    print_header,
    print_wrk_errors_warning,
    require_twisted_lb,
    rounds_note,
    run_bench,
    run_rounds,
    run_tool,
    run_wrk,
    set_log_name,
    start_backend,
    tail_text,
    tool_versions,
    twisted_lb_version,
    wait_listening,
    warm_up_wrk,
    write_json,
)

set_log_name("tls_bench")

PATHS = ("nginx", "twisted-lb")

# TLS version -> (key prefix in the results, openssl s_time/s_client flag, ssl.TLSVersion).
PROTOCOLS = {
    "TLSv1.3": ("tls13", "-tls1_3", ssl.TLSVersion.TLSv1_3),
    "TLSv1.2": ("tls12", "-tls1_2", ssl.TLSVersion.TLSv1_2),
}

# (label, result key, minimum ratio twisted-lb / nginx): the TLS targets.
TARGETS = (
    ("TLSv1.3 handshakes/s", "tls13_handshakes_per_s", 0.5),
    ("TLSv1.2 handshakes/s", "tls12_handshakes_per_s", 0.5),
    ("https requests/s", "requests_per_s", 0.5),
)
# Shown for context, without a target: (label, key, inverted). An inverted ratio is
# nginx / twisted-lb of the key: "per CPU-s" is 1 / the TLS server's CPU time per operation,
# what each server would do with a whole core to itself, whatever the clients' share.
CONTEXT_RATIOS = (
    ("https p99", "latency_p99_ms", False),
    ("TLSv1.3 handshakes per CPU-s", "tls13_server_cpu_us", True),
    ("TLSv1.2 handshakes per CPU-s", "tls12_server_cpu_us", True),
    ("https requests per CPU-s", "request_server_cpu_us", True),
)

TOOL_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "openssl": "openssl"}

SERVER_NAME = "localhost"  # the certificate is for localhost and 127.0.0.1
# What ``openssl s_time -www /`` sends on each connection (and so what the readiness check sends).
S_TIME_REQUEST = b"GET / HTTP/1.0\r\n\r\n"
# The readiness check with --handshake-only: a keep-alive request, read to the end of its head.
KEEP_ALIVE_REQUEST = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode()
CLIENT_BOUND_PERCENT = 80.0  # nginx below this share of a core: the clients set the pace
CERT_DAYS = 2


# --------------------------------------------------------------------------- tools


@dataclass
class Tools:
    nginx: str
    wrk: str
    openssl: str


def ensure_tools(install: bool) -> Tools:
    return Tools(**find_tools(TOOL_PACKAGES, install))


def nginx_openssl(nginx: str) -> str:
    """The OpenSSL nginx runs with (``nginx -V``: "built with X (running with Y)")."""
    try:
        proc = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = proc.stdout + proc.stderr
    match = re.search(r"running with OpenSSL (\S+)", text) or re.search(
        r"built with OpenSSL (\S+)", text
    )
    return match.group(1) if match else "?"


def versions_of(tools: Tools) -> dict[str, str]:
    return tool_versions(
        {
            "nginx": first_output_line([tools.nginx, "-v"]),
            "nginx_openssl": nginx_openssl(tools.nginx),
            "openssl_cli": first_output_line([tools.openssl, "version"]),
            "wrk": first_output_line([tools.wrk, "--version"]),
            "pyopenssl_openssl": first_output_line(
                [
                    sys.executable,
                    "-c",
                    "from OpenSSL import SSL; "
                    "print(SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode())",
                ]
            ),
        },
        ("twisted", "OpenSSL", "cryptography", "twisted_lb"),
    )


# --------------------------------------------------------------------------- certificates


@dataclass
class Certs:
    ca: Path  # the CA certificate, to verify the servers with
    cert: Path  # the leaf certificate (and chain) both servers serve
    key: Path  # its private key
    made_with: str  # "trustme" or "openssl"

    @property
    def leaf_der(self) -> bytes:
        pem = self.cert.read_text()
        end = "-----END CERTIFICATE-----"
        return ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])


def make_certs_trustme(directory: Path) -> Certs:
    import trustme

    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)  # ECDSA is SECP256R1, i.e. P-256
    leaf = ca.issue_cert(SERVER_NAME, LOOPBACK, key_type=trustme.KeyType.ECDSA)
    certs = Certs(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key", "trustme")
    ca.cert_pem.write_to_path(str(certs.ca))
    certs.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(certs.key))
    return certs


def make_certs_openssl(directory: Path, openssl: str) -> Certs:
    certs = Certs(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key", "openssl")
    ca_key = directory / "ca.key"
    csr = directory / "leaf.csr"
    ext = directory / "leaf.ext"
    ext.write_text(
        f"subjectAltName = DNS:{SERVER_NAME}, IP:{LOOPBACK}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
    )
    p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    ca_subject = "/O=tls_bench/CN=tls_bench CA"
    days = ["-days", str(CERT_DAYS), "-sha256"]
    steps = [
        [openssl, "genpkey", *p256, "-out", str(ca_key)],
        [openssl, "req", "-x509", "-new", "-key", str(ca_key), *days, "-subj", ca_subject,
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(certs.ca)],
        [openssl, "genpkey", *p256, "-out", str(certs.key)],
        [openssl, "req", "-new", "-key", str(certs.key), "-subj", f"/CN={SERVER_NAME}",
         "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(ca_key),
         "-CAcreateserial", *days, "-extfile", str(ext), "-out", str(certs.cert)],
    ]  # fmt: skip
    for argv in steps:
        proc = run_tool(argv, timeout=60, what="openssl")
        if proc.returncode != 0:
            raise BenchError(
                f"`{' '.join(argv)}` exited with {proc.returncode}:\n"
                + tail_text(proc.stdout + proc.stderr)
            )
    return certs


def make_certs(directory: Path, openssl: str) -> Certs:
    """An ECDSA P-256 CA and a leaf for localhost/127.0.0.1: trustme if importable, else openssl."""
    directory.mkdir()
    try:
        import trustme  # noqa: F401
    except ImportError:
        return make_certs_openssl(directory, openssl)
    return make_certs_trustme(directory)


# --------------------------------------------------------------------------- configs


def nginx_tls_config(tmp: Path, listen: int, backend: int, certs: Certs, connections: int) -> str:
    """nginx terminating TLS with nginx's defaults plus a shared session cache, proxying."""
    return (
        nginx_main_context(tmp, "proxy", None)
        + nginx_http_common(tmp, "proxy")
        + "    ssl_session_cache shared:SSL:10m;\n"
        + "    upstream app {\n"
        + f"        server {LOOPBACK}:{backend};\n"
        + nginx_upstream_keepalive(connections)
        + "    }\n"
        + "    server {\n"
        + f"        listen {LOOPBACK}:{listen} ssl;\n"
        + f"        ssl_certificate {certs.cert};\n"
        + f"        ssl_certificate_key {certs.key};\n"
        + "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        + "        location / {\n"
        + "            proxy_pass http://app;\n"
        + "            proxy_http_version 1.1;\n"
        + '            proxy_set_header Connection "";\n'
        + "        }\n"
        + "    }\n"
        + "}\n"
    )


def twisted_lb_config(listen: int, backend: int, certs: Certs) -> str:
    return (
        "[global]\n"
        "access_log = false\n"
        "\n"
        "[frontends.web]\n"
        'mode = "http"\n'
        f'listen = ["tcp:{listen}:interface={LOOPBACK}"]\n'
        'pool = "app"\n'
        "\n"
        "[frontends.web.tls]\n"
        f'certificates = [{{ cert = "{certs.cert}", key = "{certs.key}" }}]\n'
        "\n"
        "[pools.app]\n"
        f'backends = [{{ address = "{LOOPBACK}:{backend}" }}]\n'
    )


# --------------------------------------------------------------------------- TLS checks


def https_request(
    port: int, certs: Certs, to_close: bool = True, timeout: float = 3.0
) -> tuple[str, bytes | None]:
    """Send s_time's ``GET / HTTP/1.0`` over TLS, verifying the certificate, and read to EOF.

    With ``to_close`` false, send a keep-alive ``GET / HTTP/1.1`` and read its head only.
    Returns the status line (or an error string) and the DER of the certificate served.
    """
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as s,
        ):
            der = s.getpeercert(binary_form=True)
            s.sendall(S_TIME_REQUEST if to_close else KEEP_ALIVE_REQUEST)
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk or (not to_close and b"\r\n\r\n" in data + chunk):
                    data += chunk
                    break
                data += chunk
            else:
                return "error: no end of the response after 64 KiB (connection not closed)", der
    except (OSError, ssl.SSLError) as e:
        return f"error: {e}", None
    return data.split(b"\r\n", 1)[0].decode("latin-1") or "error: connection closed", der


def wait_https_ok(
    child: Child, port: int, certs: Certs, to_close: bool = True, timeout: float = 20.0
) -> None:
    """Wait until s_time's request answers 200 over TLS, with our certificate, then EOF.

    With ``to_close`` false: until a keep-alive ``GET / HTTP/1.1`` answers 200.
    """
    deadline = time.monotonic() + timeout
    status = "not tried"
    while time.monotonic() < deadline:
        if child.exited():
            raise child.fail(f"exited before serving https on {LOOPBACK}:{port}")
        status, der = https_request(port, certs, to_close)
        if re.match(r"HTTP/1\.[01] 200\b", status):
            if der != certs.leaf_der:
                raise child.fail(f"serves another certificate than {certs.cert}")
            return
        time.sleep(0.1)
    what = "HTTP/1.0" if to_close else "HTTP/1.1"
    ends = " and close" if to_close else ""
    raise child.fail(
        f"GET https://{SERVER_NAME}:{port}/ ({what}, verified against {certs.ca}) did not "
        f"answer 200{ends} within {timeout:.0f}s: {status}"
    )


def negotiated(openssl: str, port: int, certs: Certs, protocol: str) -> str | None:
    """Protocol, cipher and key exchange group openssl's client gets, or None if it fails."""
    flag = PROTOCOLS[protocol][1]
    argv = [openssl, "s_client", "-connect", f"{LOOPBACK}:{port}", "-servername", SERVER_NAME]
    argv += ["-CAfile", str(certs.ca), "-verify_return_error", "-brief", flag]
    proc = run_tool(argv, timeout=30, what="openssl s_client")
    text = proc.stdout + proc.stderr
    version = re.search(r"^Protocol version: (\S+)", text, re.MULTILINE)
    cipher = re.search(r"^Ciphersuite: (\S+)", text, re.MULTILINE)
    group = re.search(r"^(?:Server Temp Key|Negotiated TLS1\.3 group): ([^,\s]+)", text, re.M)
    if proc.returncode != 0 or not (version and cipher) or version.group(1) != protocol:
        log(f"openssl s_client {flag} to port {port} failed:\n{tail_text(text, 6)}")
        return None
    return f"{version.group(1)} {cipher.group(1)} {group.group(1) if group else '?'}"


# --------------------------------------------------------------------------- CPU time

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """User plus system CPU time of the processes in a process group (nginx master+worker)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if len(fields) > 12 and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


# --------------------------------------------------------------------------- s_time


@dataclass
class STimeResult:
    connections: int
    resumed: int
    bytes_read: int


def parse_s_time(output: str) -> STimeResult:
    """``openssl s_time`` prints one char per connection (``r``: session reused), then totals."""
    total = re.search(r"^(\d+) connections in [\d.]+s;.*bytes read (\d+)", output, re.MULTILINE)
    if not total:
        raise BenchError("could not parse openssl s_time's output:\n" + tail_text(output, 8))
    marks = "".join(re.findall(r"^[*rt3]+$", output, re.MULTILINE))
    return STimeResult(
        connections=int(total.group(1)), resumed=marks.count("r"), bytes_read=int(total.group(2))
    )


def s_time_request(args: argparse.Namespace) -> list[str]:
    """s_time's options for the request on each connection: ``-www /``, none if handshake-only."""
    return [] if args.handshake_only else ["-www", "/"]


def s_time_command(args: argparse.Namespace) -> str:
    """The s_time command line for the report (without the port and the protocol flag)."""
    return " ".join(["openssl s_time -new", *s_time_request(args), f"-time {args.duration}"])


# --------------------------------------------------------------------------- the paths


@dataclass
class Ports:
    backend: int
    relays: dict[str, int]  # path -> https port


@dataclass
class Bench:
    args: argparse.Namespace
    tools: Tools
    tmp: Path
    children: Children
    ports: Ports
    certs: Certs
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    negotiation: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def start_nginx(self) -> tuple[Child, int]:
        port = self.ports.relays["nginx"]
        prefix = self.tmp / "nginx-tls"
        config = nginx_tls_config(
            prefix, port, self.ports.backend, self.certs, self.args.connections
        )
        return self.children.start_nginx("nginx tls", self.tools.nginx, prefix, config), port

    def start_twisted_lb(self) -> tuple[Child, int]:
        port = self.ports.relays["twisted-lb"]
        config = twisted_lb_config(port, self.ports.backend, self.certs)
        return self.children.start_twisted_lb("twisted-lb", self.tmp / "twisted-lb", config), port

    def starter(self, path: str) -> Callable[[], tuple[Child, int]]:
        return {"nginx": self.start_nginx, "twisted-lb": self.start_twisted_lb}[path]

    def run_s_time(self, server: Child, port: int, protocol: str, seconds: int) -> dict[str, float]:
        """``--handshake-clients`` parallel ``openssl s_time -new -www /`` for ``seconds``.

        ``-new``: every connection starts a new session (a full handshake) and sends one
        ``GET / HTTP/1.0``, read to the server's close (with ``--handshake-only``: no request,
        the client closes after the handshake). Returns full handshakes/s over the wall time of
        the run and the TLS server's CPU time per handshake.
        """
        flag = PROTOCOLS[protocol][1]
        argv = [self.tools.openssl, "s_time", "-connect", f"{LOOPBACK}:{port}", "-new"]
        argv += [*s_time_request(self.args), "-time", str(seconds), flag]
        pgid = server.proc.pid
        cpu0 = group_cpu_seconds(pgid)
        start = time.monotonic()
        clients = []
        try:
            for n in range(self.args.handshake_clients):
                # stderr apart: s_time's stdout is counted char by char.
                client = self.children.start(
                    f"openssl s_time {flag} #{n + 1}",
                    argv,
                    slug=f"s-time-{protocol}-{port}-{n}",
                    split_stderr=True,
                    tail_lines=12,
                )
                clients.append(client)
            # s_time stops at the first whole second after ``seconds``; allow for a slow start.
            deadline = start + seconds + 30
            while not all(c.exited() for c in clients):
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"`{' '.join(argv)}` did not finish in {seconds + 30}s "
                        "(a connection stalled?)"
                    )
                if server.exited():
                    raise server.fail(f"died during the {protocol} handshakes")
                time.sleep(0.01)
            elapsed = time.monotonic() - start
            cpu = group_cpu_seconds(pgid) - cpu0
        finally:
            for client in clients:
                self.children.stop(client)
        totals = STimeResult(0, 0, 0)
        for client in clients:
            if client.proc.returncode != 0:
                raise client.fail(f"exited with {client.proc.returncode}")
            result = parse_s_time(client.log_path.read_text(errors="replace"))
            totals.connections += result.connections
            totals.resumed += result.resumed
            totals.bytes_read += result.bytes_read
        full = totals.connections - totals.resumed
        if full <= 0:
            raise BenchError(f"openssl s_time {flag} made no full handshakes to port {port}")
        if totals.bytes_read == 0 and not self.args.handshake_only:
            raise server.fail(f"answered none of the {protocol} s_time GETs (0 bytes read)")
        return {
            "handshakes": float(full),
            "handshakes_per_s": full / elapsed,
            "resumed": float(totals.resumed),
            "bytes_per_connection": totals.bytes_read / totals.connections,
            "server_cpu_percent": 100.0 * cpu / elapsed,
            "server_cpu_us": 1e6 * cpu / full,
            "seconds": elapsed,
        }

    def measure(self, path: str) -> dict[str, Any]:
        args = self.args
        background = busy_before(path)
        server, port = self.starter(path)()
        figures: dict[str, Any] = {"background_cpu_percent": background}
        try:
            wait_listening(server, port)
            wait_https_ok(server, port, self.certs, to_close=not args.handshake_only)
            log(f"{path}: started {server.name}, pid {server.proc.pid}")
            if path not in self.negotiation:
                self.negotiation[path] = {
                    protocol: negotiated(self.tools.openssl, port, self.certs, protocol)
                    for protocol in PROTOCOLS
                }
                for protocol, what in self.negotiation[path].items():
                    log(f"{path}: {protocol}: {what or 'not negotiated; not measured'}")
            if self.negotiation[path]["TLSv1.3"] is None:
                raise server.fail("does not negotiate TLSv1.3 with openssl s_client")
            if args.warmup > 0:
                self.run_s_time(server, port, "TLSv1.3", args.warmup)
            for protocol, (key, flag, _) in PROTOCOLS.items():
                if self.negotiation[path][protocol] is None:
                    continue
                log(f"{path}: {args.handshake_clients} x {s_time_command(args)} {flag}")
                hs = self.run_s_time(server, port, protocol, args.duration)
                log(
                    f"{path}: {hs['handshakes_per_s']:,.0f} full {protocol} handshakes/s, "
                    f"server {hs['server_cpu_percent']:.0f}% of a core, "
                    f"{hs['server_cpu_us']:,.0f} µs CPU per handshake"
                    + (f", {hs['resumed']:.0f} resumed (not counted)" if hs["resumed"] else "")
                )
                for name, value in hs.items():
                    figures[f"{key}_{name}"] = value
            warm_up_wrk(self.tools.wrk, port, args, path, "https")
            cpu0 = group_cpu_seconds(server.proc.pid)
            wrk = run_wrk(
                self.tools.wrk, port, args.duration, args.connections, args.threads, "https"
            )
            cpu = group_cpu_seconds(server.proc.pid) - cpu0
            log_wrk_result(path, wrk)
            if server.exited():
                raise server.fail("died during the wrk run")
        finally:
            self.children.stop(server)
        figures.update(
            {
                **wrk.figures(),
                "wrk_server_cpu_percent": 100.0 * cpu / args.duration,
                "request_server_cpu_us": 1e6 * cpu / wrk.requests if wrk.requests else 0.0,
            }
        )
        return figures

    def run(self) -> None:
        backend = start_backend(self.children, self.tools.nginx, [self.ports.backend])
        run_rounds(self.args, self.measure, self.results, backend)


# --------------------------------------------------------------------------- report

SUMMED = ("non_2xx", "socket_errors", "tls13_resumed", "tls12_resumed")


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median of each figure over the rounds; errors and resumed sessions are summed."""
    summary: dict[str, dict[str, Any]] = {}
    for path, rounds in results.items():
        keys = sorted({k for r in rounds for k in r})
        row: dict[str, Any] = {}
        for key in keys:
            values = [r[key] for r in rounds if key in r]
            row[key] = sum(values) if key in SUMMED else statistics.median(values)
        summary[path] = row
    return summary


def ratios(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def ratio(key: str, inverted: bool = False) -> float | None:
        num, den = summary.get("twisted-lb", {}).get(key), summary.get("nginx", {}).get(key)
        if not num or not den:
            return None
        return den / num if inverted else num / den

    for label, key, target in TARGETS:
        value = ratio(key)
        rows.append(
            {
                "label": f"twisted-lb / nginx {label}",
                "value": value,
                "comparison": ">=",
                "target": target,
                "pass": None if value is None else value >= target,
            }
        )
    for label, key, inverted in CONTEXT_RATIOS:
        rows.append(
            {
                "label": f"twisted-lb / nginx {label}",
                "value": ratio(key, inverted),
                "comparison": None,
                "target": None,
                "pass": None,
            }
        )
    return rows


def format_ratio_row(r: dict[str, Any]) -> str:
    value = "n/a" if r["value"] is None else f"{r['value']:.2f}x"
    if r["target"] is None:
        target, result = "-", "-"
    else:
        target = f"{r['comparison']} {r['target']:.1f}x"
        result = pass_mark(r["pass"])
    return f"{r['label']:<48} {value:>7} {target:>8}  {result}"


def version_number(line: str) -> str:
    """``3.0.19`` from ``OpenSSL 3.0.19 27 Jan 2026 (Library: ...)``."""
    match = re.search(r"\d+(?:\.\d+)+[a-z]?", line)
    return match.group(0) if match else "?"


def fmt(row: dict[str, Any], key: str, spec: str, width: int) -> str:
    value = row.get(key)
    return f"{'n/a' if value is None else format(value, spec):>{width}}"


def print_report(
    out: TextIO,
    args: argparse.Namespace,
    summary: dict[str, dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    versions: dict[str, str],
    negotiation: dict[str, dict[str, str | None]],
    rounds_data: dict[str, list[dict[str, Any]]],
    certs: Certs,
) -> None:
    print(
        f"\nTLS benchmark: ECDSA P-256 certificate ({certs.made_with}); full handshakes: "
        f"{args.handshake_clients} x {s_time_command(args)}"
        f"{' (handshake only, no request)' if args.handshake_only else ''}; "
        f"keep-alive: wrk -t{args.threads} -c{args.connections} -d{args.duration}s https; "
        f"GET / answered by an nginx backend with a 3-byte body{rounds_note(args)}",
        file=out,
    )
    print(
        f"nginx {versions['nginx'].split('/')[-1]} (OpenSSL {versions['nginx_openssl']}), "
        f"twisted {versions['twisted']}, pyOpenSSL {versions['OpenSSL']} "
        f"(OpenSSL {version_number(versions['pyopenssl_openssl'])}), "
        f"twisted-lb {twisted_lb_version(versions)}, "
        f"clients OpenSSL {version_number(versions['openssl_cli'])}, python {versions['python']}, "
        f"{versions['cpus']} CPUs",
        file=out,
    )
    for path in PATHS:
        if path in negotiation:
            what = [v or f"{p} not negotiated" for p, v in negotiation[path].items()]
            print(f"  {path:<11} {'; '.join(what)}", file=out)
    print("", file=out)
    print_header(
        out,
        f"{'path':<11} {'TLS1.3 hs/s':>11} {'cpu%':>5} {'TLS1.2 hs/s':>11} {'cpu%':>5} "
        f"{'requests/s':>11} {'p99 ms':>7} {'cpu%':>5} {'errors':>7} {'busy%':>6}",
    )
    for path in PATHS:
        if path not in summary:
            continue
        row = summary[path]
        errors = row["non_2xx"] + row["socket_errors"]
        print(
            f"{path:<11} {fmt(row, 'tls13_handshakes_per_s', ',.0f', 11)} "
            f"{fmt(row, 'tls13_server_cpu_percent', '.0f', 5)} "
            f"{fmt(row, 'tls12_handshakes_per_s', ',.0f', 11)} "
            f"{fmt(row, 'tls12_server_cpu_percent', '.0f', 5)} "
            f"{fmt(row, 'requests_per_s', ',.0f', 11)} {fmt(row, 'latency_p99_ms', '.2f', 7)} "
            f"{fmt(row, 'wrk_server_cpu_percent', '.0f', 5)} {errors:>7.0f} "
            f"{row['background_cpu_percent']:>6.0f}",
            file=out,
        )
    print("\nTLS server CPU time per operation (user + system, all its processes)", file=out)
    print_header(out, f"{'path':<11} {'µs/TLS1.3 hs':>13} {'µs/TLS1.2 hs':>13} {'µs/request':>11}")
    for path in PATHS:
        if path in summary:
            row = summary[path]
            print(
                f"{path:<11} {fmt(row, 'tls13_server_cpu_us', ',.0f', 13)} "
                f"{fmt(row, 'tls12_server_cpu_us', ',.0f', 13)} "
                f"{fmt(row, 'request_server_cpu_us', ',.1f', 11)}",
                file=out,
            )
    print("", file=out)
    print_header(out, f"{'ratio':<48} {'value':>7} {'target':>8}  result")
    for r in ratio_rows:
        print(format_ratio_row(r), file=out)
    if args.rounds > 1:
        print(f"\nspread over {args.rounds} rounds (min - max):", file=out)
        for path in PATHS:
            if path not in rounds_data:
                continue
            parts = []
            for label, key in (
                ("TLS1.3 hs/s", "tls13_handshakes_per_s"),
                ("TLS1.2 hs/s", "tls12_handshakes_per_s"),
                ("requests/s", "requests_per_s"),
            ):
                values = [r[key] for r in rounds_data[path] if key in r]
                if values:
                    parts.append(f"{label} {min(values):,.0f} - {max(values):,.0f}")
            print(f"  {path:<11} " + ", ".join(parts), file=out)
    print_busy_warning(out, rounds_data)
    nginx_cpu = summary.get("nginx", {}).get("tls13_server_cpu_percent")
    if nginx_cpu is not None and nginx_cpu < CLIENT_BOUND_PERCENT:
        print(
            f"\nnote: nginx used {nginx_cpu:.0f}% of a core during the TLSv1.3 handshakes: the "
            "s_time clients, which share the CPUs, set the pace, not nginx, so the handshakes/s "
            "ratios flatter the slower server. The 'per CPU-s' rows compare the servers' own "
            "CPU cost per handshake.",
            file=out,
        )
    print_wrk_errors_warning(out, summary)
    resumed = {
        f"{p} {proto}": int(s[f"{key}_resumed"])
        for p, s in summary.items()
        for proto, (key, _, _) in PROTOCOLS.items()
        if s.get(f"{key}_resumed")
    }
    if resumed:
        print(
            "\nwarning: some s_time connections resumed a session (left out of hs/s): "
            + ", ".join(f"{k} {n}" for k, n in resumed.items()),
            file=out,
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, PATHS, "seconds per s_time and wrk run")
    parser.add_argument(
        "--handshake-clients",
        type=int,
        default=4,
        help="parallel openssl s_time processes for the handshake runs (default 4)",
    )
    parser.add_argument(
        "--handshake-only",
        action="store_true",
        help="s_time without -www: handshakes without a request (the client closes after it)",
    )
    args = parser.parse_args(argv)
    check_bench_args(parser, args, PATHS)
    if args.handshake_clients < 1:
        parser.error("--handshake-clients must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body(tmp: Path, children: Children) -> list[dict[str, Any]]:
        tools = ensure_tools(install=not args.no_install)
        versions = versions_of(tools)
        require_twisted_lb(args.paths, versions)
        certs = make_certs(tmp / "certs", tools.openssl)
        log(f"certificate: ECDSA P-256 for {SERVER_NAME}/{LOOPBACK} ({certs.made_with})")
        ports = free_ports(1 + len(PATHS))
        bench = Bench(
            args,
            tools,
            tmp,
            children,
            Ports(backend=ports[0], relays=dict(zip(PATHS, ports[1:], strict=True))),
            certs,
        )
        bench.run()
        summary = summarize(bench.results)
        ratio_rows = ratios(summary)
        print_report(
            sys.stdout,
            args,
            summary,
            ratio_rows,
            versions,
            bench.negotiation,
            bench.results,
            certs,
        )
        if args.json:
            write_json(
                args.json,
                json_settings(
                    args,
                    ("handshake_clients", "handshake_only"),
                    certificate=f"ECDSA P-256 ({certs.made_with})",
                ),
                versions,
                negotiated=bench.negotiation,
                results=summary,
                rounds=bench.results,
                ratios=ratio_rows,
            )
        return ratio_rows

    return run_bench(args, body)


if __name__ == "__main__":
    sys.exit(main())
