"""
TLS for the balancer: termination on frontends (:class:`ServerTLS`) and TLS to backends
(:class:`ClientTLS`), and the checks of certificate files that config validation shares
(:func:`certificate_problem`, :func:`ca_problem`).

All cryptography is OpenSSL's, through pyOpenSSL, Twisted's TLS support
(:class:`~twisted.protocols.tls.TLSMemoryBIOFactory`,
:func:`~twisted.internet.ssl.optionsForClientTLS`) and ``service_identity``; this module only
reads files and configures contexts.

Server defaults follow Mozilla's "intermediate" server-side TLS configuration
(https://ssl-config.mozilla.org/guidelines/5.7.json): TLS 1.2 and 1.3, the intermediate
TLS 1.2 cipher list and groups (curves), the client's cipher preference. Certificate
selection by SNI (RFC 6066 §3) works as txsni's and HAProxy's ``crt-list``: the servername
callback swaps the connection's context for the one whose certificate names the requested
host.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import OpenSSL
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_lb import _compat as compat
from twisted_lb import _defaults as defaults
from twisted_lb.backend import Backend
from twisted_lb.interfaces import IBalancerReactor

_log = Logger()

__all__ = [
    "INTERMEDIATE_CIPHERS",
    "INTERMEDIATE_GROUPS",
    "TLS_VERSIONS",
    "ClientTLS",
    "HandshakeCounts",
    "ServerTLS",
    "TLSConfigError",
    "ca_problem",
    "certificate_problem",
    "ciphers_problem",
    "group_problem",
    "min_version_problem",
    "pair_problem",
    "verify_client_problem",
]


class TLSConfigError(ValueError):
    """A TLS setting or file is unusable; the message says what and how to fix it (one line)."""


#: Mozilla's "intermediate" cipher list for TLS 1.2, guidelines version 5.7
#: (https://ssl-config.mozilla.org/guidelines/5.7.json), in OpenSSL's names. The ``DHE-``
#: suites are only chosen when DH parameters are configured, which :class:`ServerTLS` does
#: not do, so in practice TLS 1.2 uses the ECDHE suites. TLS 1.3 suites stay OpenSSL's
#: defaults, as Mozilla recommends.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)

#: Mozilla's "intermediate" groups (the curves of the key exchange, TLS 1.2 ECDHE and TLS 1.3),
#: guidelines version 5.7 ``tls_curves``, most preferred first, in OpenSSL's names. OpenSSL's
#: own default adds X448, secp521r1 and the ffdhe groups.
INTERMEDIATE_GROUPS = defaults.TLS_CURVES  # ("X25519", "prime256v1", "secp384r1")

#: Group names offered in the message about an unknown one (those OpenSSL knows).
_GROUP_EXAMPLES = (
    "X25519",
    "X448",
    "prime256v1",
    "secp384r1",
    "secp521r1",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
)

#: The values ``min_version`` may take, lowest first.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")

_PROTOCOL_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

#: ``verify_client`` values and their OpenSSL verify modes, as nginx's ``ssl_verify_client``
#: ``off``/``optional``/``on``.
_VERIFY_CLIENT = {
    "none": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}

#: The session id context of every server context (at most 32 bytes). One value for all the
#: SNI contexts of all frontends: a session is looked up in the cache of the context the
#: connection started with, so the value need only be constant.
_SESSION_ID_CONTEXT = b"twisted-lb"

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def handshake_failure_reason(reason: BaseException | None) -> str:
    """
    Why a TLS handshake with a client failed, as a short bounded label for the metrics:
    OpenSSL's reason for the last error in its queue, in snake case (``wrong_version_number``,
    ``http_request``, ``no_shared_cipher``, ``unsupported_protocol``,
    ``peer_did_not_return_a_certificate``, ``certificate_verify_failed``,
    ``tlsv1_alert_unknown_ca`` when the client refused our certificate, ...: a fixed set,
    OpenSSL's), or ``closed`` when the connection ended before the handshake did.
    """
    if isinstance(reason, SSL.Error):
        queue = reason.args[0] if reason.args else None
        if isinstance(queue, list) and queue and isinstance(queue[-1], tuple):
            text = str(queue[-1][-1]).lower()
            label = "".join(c if c.isalnum() else "_" for c in text).strip("_")[:64]
            return label or "other"
        return "other"
    return "closed"


class HandshakeCounts:
    """
    The TLS handshakes of one frontend, for the metrics. A reload that builds a new
    :class:`ServerTLS` for the frontend hands it the old one's counts, so they keep adding up.

    Attributes:
        completed: handshakes completed.
        failed: handshakes that failed, by :func:`handshake_failure_reason`.
    """

    __slots__ = ("completed", "failed")

    def __init__(self) -> None:
        self.completed = 0
        self.failed: dict[str, int] = {}


class _CountingTLSProtocol(compat.HandshakeObservingTLS):
    """
    Twisted's TLS transport, counting its server handshake in the frontend's
    :class:`HandshakeCounts`: a completed one, or a failed one (or a connection closed
    before it completed) by reason (Twisted's private hooks for both are in
    :mod:`twisted_lb._compat`).
    """

    factory: _CountingTLSFactory
    _counted = False

    def handshake_completed(self) -> None:
        if not self._counted:
            self._counted = True
            self.factory.server_tls.handshake_counts.completed += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._counted:
            self._counted = True
            why = handshake_failure_reason((compat.tls_reason(self) or reason).value)
            failed = self.factory.server_tls.handshake_counts.failed
            failed[why] = failed.get(why, 0) + 1
        super().connectionLost(reason)


class _CountingTLSFactory(TLSMemoryBIOFactory):
    """A server ``TLSMemoryBIOFactory`` whose connections count their handshakes."""

    protocol = _CountingTLSProtocol

    def __init__(
        self, server_tls: ServerTLS, wrapped: IProtocolFactory, clock: IReactorTime | None
    ) -> None:
        super().__init__(server_tls, False, wrapped, clock=clock)
        self.server_tls = server_tls


class _UnusableError(Exception):
    """
    A file is unusable; ``str()`` is the one-line message for :class:`TLSConfigError`, and
    ``of_key`` is true when it is a pair's private key that is at fault (else the certificate).
    """

    of_key = False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _UnusableError(f"cannot read {path}: {e.strerror or e}") from None


def _load_certificates(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file, in file order; raises :class:`_UnusableError`."""
    data = _read(path)
    if _PEM_CERTIFICATE not in data:
        raise _UnusableError(f"{path}: no PEM certificate found")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise _UnusableError(f"{path}: a PEM certificate in it cannot be parsed ({e})") from None


def _load_key(path: str) -> PrivateKeyTypes:
    """The first private key of a PEM file; raises :class:`_UnusableError`."""
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _UnusableError(
            f"{path}: the private key is encrypted; give an unencrypted one "
            f"(openssl pkey -in {path} -out NEW.key)"
        ) from None
    except UnsupportedAlgorithm:
        raise _UnusableError(f"{path}: the private key's algorithm is not supported") from None
    except ValueError:
        raise _UnusableError(f"{path}: not a PEM private key") from None


def _check_dates(path: str, certificates: Sequence[x509.Certificate], now: datetime) -> None:
    for i, cert in enumerate(certificates):
        which = "the certificate" if i == 0 else f"certificate {i + 1} in the file"
        if cert.not_valid_after_utc < now:
            day = cert.not_valid_after_utc.date().isoformat()
            raise _UnusableError(f"{path}: {which} expired on {day} (notAfter); renew it")
        if cert.not_valid_before_utc > now:
            moment = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
            raise _UnusableError(
                f"{path}: {which} is not valid before {moment} (notBefore); check the clock or wait"
            )


def _public_key_der(key: Any) -> bytes:
    der: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _load_pair(
    cert: str, key: str, now: datetime | None = None
) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """The chain (leaf first) and key of a certificate pair; raises :class:`_UnusableError`."""
    chain = _load_certificates(cert)
    try:
        private_key = _load_key(key)
        if _public_key_der(chain[0]) != _public_key_der(private_key):
            raise _UnusableError(f"{key} does not match the certificate in {cert}")
    except _UnusableError as e:
        e.of_key = True
        raise
    _check_dates(cert, chain, now or datetime.now(UTC))
    return chain, private_key


def _openssl_reason(error: SSL.Error) -> str:
    """The last reason of an OpenSSL error queue, such as ``"ee key too small"``."""
    queue = error.args[0] if error.args else None
    if isinstance(queue, list) and queue and isinstance(queue[-1], tuple):
        return str(queue[-1][-1])
    return str(error) or type(error).__name__


# SSL_CTX_set1_curves_list is OpenSSL's older name for SSL_CTX_set1_groups_list (a macro for
# the same control), the one the cryptography bindings export. pyOpenSSL does not wrap it, so
# it is reached through pyOpenSSL's private bindings (see _compat); looked up here so that a
# pyOpenSSL without them gives a clear error instead of an AttributeError.
_set1_curves_list = compat.openssl_function("SSL_CTX_set1_curves_list")
_err_clear_error = compat.openssl_function("ERR_clear_error")


def _groups_unsupported() -> str | None:
    """Why TLS groups cannot be set with this pyOpenSSL, or ``None`` when they can."""
    if (
        _set1_curves_list is None
        or _err_clear_error is None
        or compat.native_context(SSL.Context(SSL.TLS_METHOD)) is None
    ):
        return (
            f"this pyOpenSSL ({OpenSSL.__version__}) does not expose OpenSSL's "
            "SSL_CTX_set1_curves_list (OpenSSL._util.lib) or Context._context, which "
            "twisted-lb uses to set the TLS groups (curves); install the pyOpenSSL it was "
            "tested with (26.4)"
        )
    return None


def _set_groups(context: SSL.Context, groups: Sequence[str]) -> bool:
    """
    Set the groups ``context`` offers and accepts (``SSL_CTX_set1_groups_list``, which
    pyOpenSSL does not wrap: its ``set_tmp_ecdh`` sets one curve). Returns whether OpenSSL took
    them all; it takes none when it does not know one.

    Raises:
        TLSConfigError: this pyOpenSSL lacks the private bindings used
            (:func:`_groups_unsupported`).
    """
    native = compat.native_context(context)
    if _set1_curves_list is None or _err_clear_error is None or native is None:
        raise TLSConfigError(_groups_unsupported() or "TLS groups cannot be set")
    try:
        encoded = ":".join(groups).encode("ascii")
    except UnicodeEncodeError:
        return False
    if not groups or not all(groups) or b"\0" in encoded:
        return False
    if _set1_curves_list(native, encoded) == 1:
        return True
    _err_clear_error()  # (pyOpenSSL would raise it at its next check)
    return False


def group_problem(name: str) -> str | None:
    """
    What is wrong with ``name`` as a TLS group (a ``curves`` entry), or ``None`` when OpenSSL
    knows it (``"X25519"``, ``"prime256v1"``, ``"P-256"``, ``"ffdhe2048"``, ...).
    """
    unsupported = _groups_unsupported()
    if unsupported is not None:
        return unsupported
    if name and ":" not in name and _set_groups(SSL.Context(SSL.TLS_METHOD), [name]):
        return None
    scratch = SSL.Context(SSL.TLS_METHOD)
    known = [group for group in _GROUP_EXAMPLES if _set_groups(scratch, [group])]
    return (
        f"unknown TLS group {name!r}; OpenSSL knows {', '.join(known)} and others "
        f"(Mozilla's intermediate profile: {', '.join(INTERMEDIATE_GROUPS)})"
    )


def _use_pair(
    context: SSL.Context, chain: Sequence[x509.Certificate], key: PrivateKeyTypes, cert: str
) -> None:
    """
    Put a certificate chain and its key into ``context``. OpenSSL may still refuse a pair
    that parses, by its security level (a 1024-bit RSA key: "ee key too small"): that is an
    :class:`_UnusableError` naming ``cert`` too.
    """
    try:
        context.use_certificate(chain[0])
        for extra in chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except SSL.Error as e:
        raise _UnusableError(f"{cert}: OpenSSL refused it: {_openssl_reason(e)}") from None


def _load_cas(path: str, now: datetime | None = None) -> list[x509.Certificate]:
    certificates = _load_certificates(path)
    _check_dates(path, certificates, now or datetime.now(UTC))
    return certificates


def certificate_problem(cert: str, key: str, now: datetime | None = None) -> str | None:
    """
    Check a certificate and its private key, as a server or a TLS client would use them.

    Reads both files (blocking; for config validation and reloads, not the data path).

    Args:
        cert: path of a PEM file: the leaf certificate first, then its chain.
        key: path of the leaf's PEM private key, unencrypted.
        now: the time to check validity at (timezone-aware); default the current time.

    Returns:
        ``None`` when both are usable; else one line, such as
        ``"cannot read certs/site.pem: No such file or directory"``,
        ``"certs/site.pem: no PEM certificate found"``,
        ``"certs/site.key: not a PEM private key"``,
        ``"certs/site.key does not match the certificate in certs/site.pem"``,
        ``"certs/site.pem: the certificate expired on 2026-01-01 (notAfter); renew it"`` or
        ``"certs/site.pem: the certificate is not valid before 2027-01-01 00:00:00 UTC
        (notBefore); check the clock or wait"``.
    """
    fault = pair_problem(cert, key, now)
    return None if fault is None else fault[1]


def pair_problem(
    cert: str, key: str, now: datetime | None = None
) -> tuple[Literal["cert", "key"], str] | None:
    """
    :func:`certificate_problem`, with the file at fault: ``("key", "certs/site.key does not
    match the certificate in certs/site.pem")``, ``("cert", "cannot read certs/site.pem:
    ...")``; ``None`` when both are usable. A key that does not match is the key's fault.
    """
    try:
        chain, private_key = _load_pair(cert, key, now)
        _use_pair(SSL.Context(SSL.TLS_METHOD), chain, private_key, cert)
    except _UnusableError as e:
        return ("key" if e.of_key else "cert", str(e))
    return None


def ciphers_problem(ciphers: str) -> str | None:
    """
    Check an OpenSSL cipher string for TLS 1.2, as :class:`ServerTLS` would set it.

    Returns:
        ``None`` when OpenSSL knows at least one of the ciphers; else one line (also for an
        empty or blank string).
    """
    if not ciphers.strip():
        return "must not be empty; leave ciphers out for Mozilla's intermediate list"
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return f"ciphers {ciphers!r}: OpenSSL knows none of them; see `openssl ciphers -v`"
    return None


#: Versions older than TLS 1.2 as people write them, to answer with RFC 8996.
_OLD_VERSIONS = ("sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1", "1.0", "1.1")
# nginx's ssl_verify_client values, which did-you-mean would get wrong ("on" is not "none").
_NGINX_VERIFY_CLIENT = {"on": "required", "off": "none"}


def _unknown(noun: str, value: str, choices: Sequence[str]) -> str:
    """``unknown {noun} 'x' (did you mean 'y'?)``, or with the choices when none is close."""
    folded = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(value.lower(), list(folded), n=1)
    if close:
        return f"unknown {noun} {value!r} (did you mean {folded[close[0]]!r}?)"
    return f"unknown {noun} {value!r}; valid {noun}s are: " + ", ".join(map(repr, choices))


def min_version_problem(version: str) -> str | None:
    """
    What is wrong with ``version`` as the oldest protocol accepted (one of
    :data:`TLS_VERSIONS`), or ``None``. Older versions are refused as RFC 8996 deprecates them.
    """
    if version in TLS_VERSIONS:
        return None
    if version.lower() in _OLD_VERSIONS:
        return (
            f"{version!r} is older than TLS 1.2, which is no longer safe (RFC 8996); "
            'write min_version = "TLSv1.2"'
        )
    return _unknown("version", version, TLS_VERSIONS)


def verify_client_problem(verify: str) -> str | None:
    """
    What is wrong with ``verify`` as a ``verify_client`` mode (``"none"``, ``"optional"`` or
    ``"required"``), or ``None``; nginx's ``on`` and ``off`` are answered with ours.
    """
    if verify in _VERIFY_CLIENT:
        return None
    nginx = _NGINX_VERIFY_CLIENT.get(verify.lower())
    if nginx is not None:
        return (
            f'unknown value {verify!r}; write verify_client = "{nginx}" '
            f"(nginx's ssl_verify_client {verify.lower()})"
        )
    return _unknown("value", verify, list(_VERIFY_CLIENT))


def ca_problem(path: str) -> str | None:
    """
    Check a bundle of trusted CA certificates.

    Args:
        path: a PEM file of one or more CA certificates.

    Returns:
        ``None`` when usable; else one line in the style of :func:`certificate_problem`,
        such as ``"certs/ca.pem: no PEM certificate found"`` or ``"certs/ca.pem:
        certificate 2 in the file expired on 2026-01-01 (notAfter); renew it"``.
    """
    try:
        _load_cas(path)
    except _UnusableError as e:
        return str(e)
    return None


def _certificate_names(cert: x509.Certificate) -> list[str]:
    """
    The DNS names a certificate is for, lower case: its subjectAltName DNS names, or, when
    it has none, its subject's common name (as HAProxy's ``crt`` does).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = [
            str(attribute.value)
            for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    else:
        names = list(san.value.get_values_for_type(x509.DNSName))
    return [name.lower().rstrip(".") for name in names]


@attrs.frozen
class _ServerContexts:
    """One generation of a :class:`ServerTLS`'s contexts, replaced whole on reload."""

    default: SSL.Context
    exact: dict[str, SSL.Context]
    wildcard: dict[str, SSL.Context]
    names: list[list[str]]

    def select(self, server_name: bytes | None) -> SSL.Context:
        """
        The context for an SNI host name: an exact name first, then a wildcard
        ``*.example.com`` matching exactly one leftmost label (RFC 6125 §6.4.3), else the
        default; among certificates naming the same host the first configured wins.
        """
        if not server_name:
            return self.default
        try:
            name = server_name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return self.default
        context = self.exact.get(name)
        if context is not None:
            return context
        _label, dot, parent = name.partition(".")
        if dot and parent:
            context = self.wildcard.get(parent)
            if context is not None:
                return context
        return self.default

    def servername(self, connection: SSL.Connection) -> None:
        """The servername callback: swap the connection's context, as txsni does."""
        context = self.select(connection.get_servername())
        if context is not self.default:
            connection.set_context(context)


def _alpn_selector(
    protocols: Sequence[bytes],
) -> Callable[[SSL.Connection, list[bytes]], bytes | Any]:
    """
    An ALPN select callback: the first of our ``protocols`` that the client offers (server
    preference, as nginx and Twisted choose), else no ALPN at all rather than a
    ``no_application_protocol`` alert (RFC 7301 §3.2 allows either; nginx proceeds).
    """
    ours = tuple(protocols)

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
        for protocol in ours:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    TLS termination for one frontend.

    Each certificate gets its own OpenSSL context, configured alike otherwise. SNI
    (RFC 6066 §3) picks the certificate whose subjectAltName DNS names match the requested
    host: exact names first, then wildcards such as ``*.example.com``, which match exactly
    one label (RFC 6125 §6.4.3: ``x.example.com`` but neither ``example.com`` nor
    ``y.x.example.com``). A certificate without DNS subjectAltNames is matched on its
    subject's common name, as HAProxy does. No SNI, or an unknown name, gets the first
    certificate. The servername callback swaps the connection's context, as txsni does.

    Session resumption is on: a server-side session cache with one session id context shared
    by all the SNI contexts, and session tickets (OpenSSL's defaults: a 300 s lifetime,
    ticket keys made when the contexts are, so new ones on each :meth:`reload`).
    Compression and renegotiation are off.

    Args:
        certificates: ``(cert_path, key_path)`` pairs, as :func:`certificate_problem` takes
            them; the first is the default.
        min_version: the lowest protocol version accepted, one of :data:`TLS_VERSIONS`;
            Mozilla's intermediate configuration is ``"TLSv1.2"``.
        ciphers: the TLS 1.2 cipher list in OpenSSL's syntax; default
            :data:`INTERMEDIATE_CIPHERS`. TLS 1.3 suites are OpenSSL's defaults.
        curves: the groups (curves) of the key exchange, TLS 1.2 and 1.3, most preferred
            first, in OpenSSL's names; default :data:`INTERMEDIATE_GROUPS`. A client that
            offers none of them fails the handshake.
        alpn: the protocols to offer over ALPN (RFC 7301), most preferred first, such as
            ``[b"http/1.1"]`` in http mode; ``()`` for no ALPN. When the client offers none of
            them the handshake proceeds without ALPN rather than failing, as nginx does.
        client_ca: path of a PEM bundle of the CAs that client certificates must chain to.
            Its names are sent in the CertificateRequest. With ``verify_client`` ``"none"``
            it is checked but not used.
        verify_client: ``"none"``, ``"optional"`` or ``"required"``, as nginx's
            ``ssl_verify_client off|optional|on``. ``"required"`` fails the handshake
            without a valid client certificate; ``"optional"`` lets a client without one in,
            but fails the handshake on a certificate that does not verify. Both need
            ``client_ca``.

    Attributes:
        handshake_counts: the handshakes of the connections of :meth:`wrap`; a reload
            assigns the previous :class:`ServerTLS`'s counts here to keep them.

    Raises:
        TLSConfigError: a setting is invalid or a file is unusable (the messages of
            :func:`certificate_problem` and :func:`ca_problem`, joined by ``"; "``).
    """

    def __init__(
        self,
        certificates: Sequence[tuple[str, str]],
        *,
        min_version: str = defaults.MIN_TLS_VERSION,
        ciphers: str | None = None,
        curves: Sequence[str] = INTERMEDIATE_GROUPS,
        alpn: Sequence[bytes] = (),
        client_ca: str | None = None,
        verify_client: str = "none",
    ) -> None:
        if not certificates:
            raise TLSConfigError("TLS needs at least one (certificate, key) pair")
        if isinstance(curves, str) or not curves:
            raise TLSConfigError(
                f"curves must be a non-empty list of group names, as {list(INTERMEDIATE_GROUPS)}"
            )
        for name in curves:
            problem = group_problem(name)
            if problem is not None:
                raise TLSConfigError(f"curves: {problem}")
        checks = [
            ("min_version", min_version_problem(min_version)),
            ("verify_client", verify_client_problem(verify_client)),
            ("ciphers", None if ciphers is None else ciphers_problem(ciphers)),
        ]
        for key, problem in checks:
            if problem is not None:
                raise TLSConfigError(f"{key}: {problem}")
        if verify_client != "none" and client_ca is None:
            raise TLSConfigError(
                f"verify_client {verify_client!r} needs client_ca, the CA bundle that "
                "client certificates must chain to"
            )
        for protocol in alpn:
            if not isinstance(protocol, bytes) or not 1 <= len(protocol) <= 255:
                raise TLSConfigError(
                    f"ALPN protocol {protocol!r} must be 1 to 255 bytes, as b'http/1.1'"
                )
        self._certificates = [(str(cert), str(key)) for cert, key in certificates]
        self._min_version = min_version
        self._ciphers = INTERMEDIATE_CIPHERS if ciphers is None else ciphers
        self._curves = tuple(curves)
        self._alpn = tuple(alpn)
        self._client_ca = client_ca
        self._verify_client = verify_client
        contexts, problems = self._build()
        if contexts is None:
            raise TLSConfigError("; ".join(problems))
        self._contexts = contexts
        self.handshake_counts = HandshakeCounts()

    def __repr__(self) -> str:
        return f"<ServerTLS {self.names!r}>"

    def wrap(
        self, factory: IProtocolFactory, clock: IReactorTime | None = None
    ) -> TLSMemoryBIOFactory:
        """
        A ``TLSMemoryBIOFactory`` that terminates TLS with these contexts in front of
        ``factory``, and counts each connection's handshake in :attr:`handshake_counts`.

        Args:
            factory: the protocol factory of the plain side.
            clock: the clock of Twisted's write buffering (``TLSMemoryBIOFactory``'s);
                by default the global reactor, as Twisted's.
        """
        return _CountingTLSFactory(self, factory, clock)

    @property
    def names(self) -> list[list[str]]:
        """The DNS names of each certificate, in the configured order, for logs."""
        return [list(names) for names in self._contexts.names]

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N803
        """
        A new server connection on the current default context
        (:class:`~twisted.internet.interfaces.IOpenSSLServerConnectionCreator`).
        """
        return SSL.Connection(self._contexts.default, None)

    def reload(self) -> list[str]:
        """
        Read every certificate, key and ``client_ca`` file again and build new contexts.

        New handshakes use them; established connections, and handshakes already under
        way, keep the contexts they started with.

        Returns:
            The problems, one line each, in which case ALL the old contexts are kept; an
            empty list when the new contexts are in use.
        """
        contexts, problems = self._build()
        if contexts is None:
            return problems
        self._contexts = contexts
        return []

    def _build(self) -> tuple[_ServerContexts | None, list[str]]:
        problems: list[str] = []
        pairs: list[tuple[list[x509.Certificate], PrivateKeyTypes, str]] = []
        for cert, key in self._certificates:
            try:
                pairs.append((*_load_pair(cert, key), cert))
            except _UnusableError as e:
                problems.append(str(e))
        cas: list[x509.Certificate] = []
        if self._client_ca is not None:
            try:
                cas = _load_cas(self._client_ca)
            except _UnusableError as e:
                problems.append(str(e))
        if problems:
            return None, problems
        try:
            made = [self._context(chain, key, cert, cas) for chain, key, cert in pairs]
        except _UnusableError as e:
            return None, [str(e)]
        exact: dict[str, SSL.Context] = {}
        wildcard: dict[str, SSL.Context] = {}
        names = [_certificate_names(chain[0]) for chain, _key, _cert in pairs]
        for context, certificate_names in zip(made, names, strict=True):
            for name in certificate_names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], context)
                elif "*" not in name:
                    exact.setdefault(name, context)
        contexts = _ServerContexts(made[0], exact, wildcard, names)
        if len(made) > 1:
            # The callback of the context a connection starts with is the one that runs;
            # binding it to this generation keeps a handshake within one generation.
            made[0].set_tlsext_servername_callback(contexts.servername)
        return contexts, []

    def _context(
        self,
        chain: Sequence[x509.Certificate],
        key: PrivateKeyTypes,
        cert: str,
        cas: Sequence[x509.Certificate],
    ) -> SSL.Context:
        """One server context; every setting but the certificate is the same in all."""
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(_PROTOCOL_VERSIONS[self._min_version])
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        try:
            context.set_cipher_list(self._ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError):
            raise _UnusableError(
                f"ciphers {self._ciphers!r}: OpenSSL knows none of them; see `openssl ciphers -v`"
            ) from None
        if not _set_groups(context, self._curves):
            raise _UnusableError(f"curves {list(self._curves)!r}: OpenSSL refuses them")
        _use_pair(context, chain, key, cert)
        context.set_session_id(_SESSION_ID_CONTEXT)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        if self._alpn:
            context.set_alpn_select_callback(_alpn_selector(self._alpn))
        if self._verify_client != "none":
            store = context.get_cert_store()
            assert store is not None
            for ca in cas:
                store.add_cert(X509.from_cryptography(ca))
                context.add_client_ca(ca)
            context.set_verify(_VERIFY_CLIENT[self._verify_client])
        return context


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """
    Client connections that verify neither the chain nor the name, and still send SNI.

    Args:
        options: ``CertificateOptions(verify=False, ...)``.
        server_name: the DNS name to send as SNI, or ``None`` to send none.
    """

    def __init__(self, options: CertificateOptions, server_name: str | None) -> None:
        self._options = options
        self._server_name = (
            None if server_name is None else server_name.encode("idna").decode("ascii")
        )

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:  # noqa: N803
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name.encode("ascii"))
        return connection


class ClientTLS:
    """
    TLS from the balancer to a pool's backends.

    Verified by default: the chain against ``ca`` (default: the platform trust store,
    :func:`~twisted.internet.ssl.platformTrust`), and the name by ``service_identity``
    (RFC 6125): ``server_name``, or else the backend address's host; an IP literal is
    checked against the certificate's IP address subjectAltNames. Verification is Twisted's
    :func:`~twisted.internet.ssl.optionsForClientTLS`. A failure ends the connection before
    any data, with ``connectionLost`` given an ``OpenSSL.SSL.Error`` whose message includes
    ``"certificate verify failed"`` for an untrusted chain, or a
    ``service_identity.VerificationError`` naming the mismatched name. TLS 1.2 is the
    lowest version offered, as in Mozilla's intermediate configuration. :meth:`reload` reads
    the files again (on SIGHUP under twistd).

    Args:
        server_name: the name to verify and send as SNI, for all backends of the pool;
            default each backend's host.
        ca: path of a PEM bundle of the CAs to trust instead of the platform's.
        client_cert: path of a PEM certificate (leaf first, then chain) to present to the
            backends: mutual TLS. Needs ``client_key``.
        client_key: path of ``client_cert``'s PEM private key.
        verify: ``False`` disables both checks (the caller logs a warning); SNI is still
            sent.

    Raises:
        TLSConfigError: a file is unusable, or only one of ``client_cert`` and
            ``client_key`` is given.
    """

    def __init__(
        self,
        *,
        server_name: str | None = None,
        ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        verify: bool = True,
    ) -> None:
        if (client_cert is None) != (client_key is None):
            raise TLSConfigError(
                "client_cert and client_key go together: give both for mutual TLS, or neither"
            )
        if server_name is not None and not server_name.strip():
            raise TLSConfigError("server_name must not be empty")
        self.server_name = server_name
        self.verify = verify
        self._ca = ca
        self._client_cert = client_cert
        self._client_key = client_key
        loaded, problems = self._load()
        if loaded is None:
            raise TLSConfigError("; ".join(problems))
        #: The trust root from ``ca``, or ``None`` for the platform's; and CertificateOptions'
        #: ``privateKey``/``certificate``/``extraCertChain`` for mutual TLS, as cryptography
        #: objects (pyOpenSSL deprecates its own X509 and PKey here).
        self._trust, self._client_options = loaded
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def _load(
        self,
    ) -> tuple[tuple[compat.IOpenSSLTrustRoot | None, dict[str, Any]] | None, list[str]]:
        """Read ``ca``, ``client_cert`` and ``client_key``: what they give, or the problems."""
        problems: list[str] = []
        trust: compat.IOpenSSLTrustRoot | None = None
        if self._ca is not None:
            try:
                trust = trustRootFromCertificates(
                    [Certificate(X509.from_cryptography(c)) for c in _load_cas(self._ca)]
                )
            except _UnusableError as e:
                problems.append(str(e))
        client_options: dict[str, Any] = {}
        if self._client_cert is not None and self._client_key is not None:
            try:
                chain, key = _load_pair(self._client_cert, self._client_key)
            except _UnusableError as e:
                problems.append(str(e))
            else:
                client_options = {"privateKey": key, "certificate": chain[0]}
                if chain[1:]:
                    client_options["extraCertChain"] = chain[1:]
        if problems:
            return None, problems
        return (trust, client_options), []

    def reload(self) -> list[str]:
        """
        Read the ``ca``, ``client_cert`` and ``client_key`` files again, as
        :meth:`ServerTLS.reload` does for a frontend.

        New connections to the backends, health checks' included, verify against the new CA
        bundle and present the new client certificate; established connections keep what
        they were made with. A pool without these files has nothing to read, and the call
        changes nothing.

        Returns:
            The problems, one line each (the messages of :func:`certificate_problem` and
            :func:`ca_problem`), in which case the old CA bundle and client certificate are
            ALL kept; an empty list when the new ones are in use.
        """
        loaded, problems = self._load()
        if loaded is None:
            return problems
        self._trust, self._client_options = loaded
        self._creators = {}
        return []

    def adopt(self, other: ClientTLS) -> None:
        """
        Use the files ``other`` read (a ClientTLS of the same settings, built by a reload to
        read them again): new connections use them; established ones keep what they were
        made with, and this object stays the pool's, so they stay reusable.
        """
        self._trust, self._client_options = other._trust, other._client_options
        self._creators = {}

    @property
    def has_files(self) -> bool:
        """Whether the pool's TLS reads files (``ca``, or a client certificate) to reload."""
        return self._ca is not None or self._client_cert is not None

    def __repr__(self) -> str:
        return f"<ClientTLS server_name={self.server_name!r} verify={self.verify}>"

    def _name(self, backend: Backend) -> str | None:
        if self.server_name is not None:
            return self.server_name
        if backend.address.kind == "tcp":
            return backend.address.host
        return None

    def creator(self, backend: Backend) -> IOpenSSLClientConnectionCreator:
        """
        The connection creator for one backend, cached by backend name, for
        ``wrapClientTLS(creator, backend.endpoint(reactor))``.

        SNI is sent with ``server_name``, or the backend's host when it is a DNS name
        (RFC 6066 §3 allows no IP literals).

        Raises:
            TLSConfigError: the backend is a UNIX socket, verification is on and no
                ``server_name`` was given: there is no name to verify.
        """
        creator = self._creators.get(backend.name)
        if creator is None:
            creator = self._creators[backend.name] = self._make_creator(backend)
        return creator

    def _make_creator(self, backend: Backend) -> IOpenSSLClientConnectionCreator:
        name = self._name(backend)
        extra: dict[str, Any] = {"raiseMinimumTo": TLSVersion.TLSv1_2, **self._client_options}
        if not self.verify:
            options = CertificateOptions(verify=False, **extra)
            sni = name if name is not None and not _is_ip(name) else None
            return _UnverifiedClientCreator(options, sni)
        if name is None:
            raise TLSConfigError(
                f"backend {backend.name} is a UNIX socket: set server_name to verify its "
                "certificate"
            )
        return optionsForClientTLS(name, trustRoot=self._trust, extraCertificateOptions=extra)

    def endpoint(self, reactor: IBalancerReactor, backend: Backend) -> IStreamClientEndpoint:
        """
        The TLS client endpoint to one backend:
        ``wrapClientTLS(self.creator(backend), backend.endpoint(reactor))``; the
        ``endpoint(reactor, backend)`` hook that health checks take.
        """
        return wrapClientTLS(self.creator(backend), backend.endpoint(reactor))
