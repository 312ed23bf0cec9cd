"""
Header rewriting for the L7 proxy: hop-by-hop removal, forwarding fields, head serialisation.

Header names and values are ``bytes``. A header list is a ``list[tuple[bytes, bytes]]`` of
``(name as received, value)``; order and duplicates are kept, and names compare
case-insensitively (RFC 9110 §5.1).

Sources:

- RFC 9110 §7.6.1 (``Connection``): a proxy removes the hop-by-hop fields and every field that
  ``Connection`` names before it forwards a message.
- RFC 7239: the ``Forwarded`` field, its ``for``/``proto``/``host`` parameters and node syntax.
- nginx ``$proxy_add_x_forwarded_for`` (https://nginx.org/en/docs/http/ngx_http_proxy_module.html)
  and ``ngx_http_realip_module``'s ``set_real_ip_from``; HAProxy ``option forwardfor`` and
  ``option forwarded`` (https://docs.haproxy.org/2.8/configuration.html): ``X-Forwarded-For``
  grows by one address per trusted hop, and is replaced when the peer is not trusted.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    }
)
"""
Lowercase names of the hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy ``Keep-Alive`` and
``Proxy-Connection``). ``Proxy-Authenticate`` and ``Proxy-Authorization`` are forwarded, as nginx
and HAProxy do.
"""

# Fields a ``Connection`` option can never remove. RFC 9112 §3.2 requires ``Host`` in every
# HTTP/1.1 request, and ``Content-Length`` frames the message (RFC 9112 §6.3): letting the peer
# strip it with ``Connection: content-length`` would make the next hop see a different message
# boundary than we did, which is request smuggling.
_NOT_NOMINABLE = frozenset({b"host", b"content-length"})

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FORWARDED = b"forwarded"
_FORWARDING = frozenset({_XFF, _XFP, _XFH, _FORWARDED})
# What is not forwarded from an untrusted peer when no Connection option names more.
_HOP_BY_HOP_AND_FORWARDING = HOP_BY_HOP | _FORWARDING

_OWS = b" \t"

# RFC 9110 §5.6.2 token; RFC 7239 §4 values are a token or a quoted-string.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a quoted-string can carry (qdtext and quoted-pair, RFC 9110 §5.6.4): HTAB, SP, VCHAR,
# obs-text. Everything but the other control characters and DEL.
_QUOTABLE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1024)
def _parse_ip(text: str) -> IPAddress | None:
    """``text`` as an IP address, or ``None``. Bounded cache: clients come back."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """
    The connection options of a message (RFC 9110 §7.6.1).

    Returns:
        The lowercase, whitespace-stripped, comma-separated tokens of every ``Connection``
        field, without empty ones. ``Connection: close, Upgrade`` gives
        ``{b"close", b"upgrade"}``.
    """
    tokens: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip(_OWS).lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens)


def _dropped(headers: Sequence[tuple[bytes, bytes]], names: Sequence[bytes]) -> frozenset[bytes]:
    """
    :data:`HOP_BY_HOP` and the names ``Connection`` lists, but not ``_NOT_NOMINABLE``.

    ``names`` are the lowercase names of ``headers``.
    """
    if b"connection" not in names:
        return HOP_BY_HOP
    if names.count(b"connection") == 1:
        value = headers[names.index(b"connection")][1]
        # Most messages say "keep-alive" or "close": short values, worth a bounded cache.
        return _nominated_cached(value) if len(value) <= 64 else _nominated(value)
    values = [field[1] for field, name in zip(headers, names, strict=True) if name == b"connection"]
    return _nominated(b",".join(values))


def _nominated(connection: bytes) -> frozenset[bytes]:
    """:func:`_dropped` for ``Connection`` fields whose values, joined by commas, are given."""
    dropped = set(HOP_BY_HOP)
    for token in connection.lower().split(b","):
        token = token.strip(_OWS)
        if token and token not in _NOT_NOMINABLE:
            dropped.add(token)
    return HOP_BY_HOP if len(dropped) == len(HOP_BY_HOP) else frozenset(dropped)


_nominated_cached = functools.lru_cache(maxsize=256)(_nominated)


def remove_hop_by_hop(
    headers: Iterable[tuple[bytes, bytes]], names: Sequence[bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """
    The header list without its hop-by-hop fields, as a proxy must forward it.

    Removes the :data:`HOP_BY_HOP` fields and every field named by a ``Connection`` option
    (RFC 9110 §7.6.1), except ``Host`` and ``Content-Length``, which a ``Connection`` option
    cannot remove: the next hop needs them to read the message the way we did (RFC 9112 §3.2,
    §6.3).

    Args:
        headers: the header list.
        names: the lowercase names of ``headers``, in the same order, when the caller has
            them already (each name is lowercased once per message, not once per use).

    Returns:
        A new list with the remaining fields, in their order, duplicates kept.
    """
    headers = list(headers)
    if names is None:
        names = [name.lower() for name, _ in headers]
    dropped = _dropped(headers, names)
    if dropped.isdisjoint(names):
        return headers
    return [field for field, name in zip(headers, names, strict=True) if name not in dropped]


class TrustedProxies:
    """
    The peers whose forwarding fields are believed: nginx's ``set_real_ip_from``, HAProxy's
    ``option forwardfor if-none``/``except`` networks.

    Args:
        networks: CIDRs (``"10.0.0.0/8"``, ``"2001:db8::/32"``) or single addresses
            (``"192.0.2.7"``). Host bits are allowed (``"10.1.2.3/8"`` means ``10.0.0.0/8``).

    Raises:
        TypeError: ``networks`` is a single string instead of an iterable of them.
        ValueError: an entry is not an IP network or address; the message names it.

    An IPv4-mapped IPv6 client (``::ffff:10.0.0.1``, as a dual-stack listener reports IPv4 peers)
    matches the IPv4 networks too.
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[str]) -> None:
        if isinstance(networks, str | bytes):
            raise TypeError("TrustedProxies takes a list of networks, not one string")
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        for text in networks:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted proxy {text!r} is not an IP address or network, as in '10.0.0.0/8'"
                ) from None
            if isinstance(network, ipaddress.IPv4Network):
                v4.append(network)
            else:
                v6.append(network)
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted networks, the IPv4 ones first, then the IPv6 ones."""
        return (*self._v4, *self._v6)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def __contains__(self, ip: object) -> bool:
        """Whether ``ip`` (an address as text) is in a trusted network. ``False`` for non-IPs."""
        if not (self._v4 or self._v6) or not isinstance(ip, str):
            return False
        address = _parse_ip(ip)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv4Address):
            return any(address in network for network in self._v4)
        mapped = address.ipv4_mapped
        if mapped is not None and any(mapped in network for network in self._v4):
            return True
        return any(address in network for network in self._v6)


@functools.lru_cache(maxsize=256)
def _forwarded_value(value: bytes) -> bytes | None:
    """
    ``value`` as an RFC 7239 §4 value: as is when it is a token, else a quoted-string; ``None``
    when it holds control characters a quoted-string cannot carry.
    """
    if _TOKEN.fullmatch(value):
        return value
    if not _QUOTABLE.fullmatch(value):
        return None
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@functools.lru_cache(maxsize=1024)
def _forwarded_node(client_ip: str) -> bytes:
    """
    The RFC 7239 §6 node for ``client_ip``: IPv4 as is, ``"[v6]"`` (without a ``%zone``, which
    the node syntax has no room for), or ``unknown``.
    """
    address = _parse_ip(client_ip)
    if address is None:
        return b"unknown"
    if address.version == 4:
        return client_ip.encode("ascii")
    return b'"[' + client_ip.partition("%")[0].encode("ascii") + b']"'


def _forwarded_element(client_ip: str, proto: bytes, host: bytes | None) -> bytes:
    element = b"for=" + _forwarded_node(client_ip)
    proto_value = _forwarded_value(proto)
    if proto_value is not None:
        element += b";proto=" + proto_value
    if host:
        host_value = _forwarded_value(host)
        if host_value is not None:
            element += b";host=" + host_value
    return element


def _forwarding_fields(
    client_ip: str, proto: str, host: bytes | None
) -> tuple[tuple[bytes, bytes], ...]:
    """
    The forwarding fields added for an untrusted peer (see :func:`forward_request_headers`),
    in their order.
    """
    proto_bytes = proto.encode("ascii", "replace")
    fields = [
        (b"X-Forwarded-For", client_ip.encode("ascii", "replace")),
        (b"X-Forwarded-Proto", proto_bytes),
    ]
    if host:
        fields.append((b"X-Forwarded-Host", host))
    fields.append((b"Forwarded", _forwarded_element(client_ip, proto_bytes, host)))
    return tuple(fields)


# The same clients and hosts come back: worth a bounded cache, for host names of sane length
# (the key holds the Host value, which can be as long as max_header_bytes).
_forwarding_fields_cached = functools.lru_cache(maxsize=1024)(_forwarding_fields)
_CACHED_HOST_BYTES = 256


def forward_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    proto: str,
    trusted: TrustedProxies,
) -> list[tuple[bytes, bytes]]:
    """
    The request's header list as it goes to the backend.

    :func:`remove_hop_by_hop`, then the forwarding fields, as nginx's
    ``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`` and HAProxy's
    ``option forwardfor`` / ``option forwarded`` set them:

    - **Trusted peer** (``client_ip in trusted``): ``X-Forwarded-For`` is the received ones
      merged into one field (comma-space separated, in order, empty ones skipped) followed by
      ``client_ip``. Received ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` fields are kept
      as they are (else set as for an untrusted peer). ``Forwarded`` is the received ones
      merged, followed by our element.
    - **Untrusted peer**: every received ``X-Forwarded-For``, ``X-Forwarded-Proto``,
      ``X-Forwarded-Host`` and ``Forwarded`` field is dropped; the new ones are
      ``X-Forwarded-For: <client_ip>``, ``X-Forwarded-Proto: <proto>``,
      ``X-Forwarded-Host: <Host>`` (left out when there is no ``Host``) and
      ``Forwarded: <our element>``.

    Our RFC 7239 element is ``for=<node>;proto=<proto>;host=<host>``. The node is an IPv4
    address as is, an IPv6 address as ``"[2001:db8::1]"``, or ``unknown`` for a client with no
    IP (a UNIX socket); ``host`` is the ``Host`` value, quoted when it is not a token (as
    ``"example.com:8080"``), and left out when there is no ``Host``.

    The forwarding fields go at the end, in the order ``X-Forwarded-For``,
    ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Forwarded``; ``Host`` and every other
    end-to-end field keep their place.

    Args:
        headers: the request's header list, as received.
        client_ip: the peer's address as text (IPv6 without brackets, as
            ``IPv6Address.host`` gives it). Written as is into ``X-Forwarded-For``; for a UNIX
            socket client pass what should appear there (nginx writes ``unix:``).
        proto: ``"http"`` or ``"https"``: the scheme the client used to reach us.
        trusted: the peers whose forwarding fields are kept.

    Returns:
        A new header list.
    """
    headers = list(headers)
    names = [name.lower() for name, _ in headers]
    if client_ip not in trusted:
        # The common case, in one pass: every received forwarding field goes.
        dropped = _dropped(headers, names)
        dropped = _HOP_BY_HOP_AND_FORWARDING if dropped is HOP_BY_HOP else dropped | _FORWARDING
        if dropped.isdisjoint(names):
            kept = headers
        else:
            kept = [
                field for field, name in zip(headers, names, strict=True) if name not in dropped
            ]
        # Host is never dropped; the first one counts, as below.
        first_host = headers[names.index(b"host")][1].strip(_OWS) if b"host" in names else None
        if first_host is None or len(first_host) <= _CACHED_HOST_BYTES:
            kept.extend(_forwarding_fields_cached(client_ip, proto, first_host))
        else:
            kept.extend(_forwarding_fields(client_ip, proto, first_host))
        return kept
    dropped = _dropped(headers, names)
    out: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    xff: list[bytes] = []
    xfp: list[tuple[bytes, bytes]] = []
    xfh: list[tuple[bytes, bytes]] = []
    forwarded: list[bytes] = []
    for field, lower in zip(headers, names, strict=True):
        if lower in dropped:
            continue
        if lower in _FORWARDING:
            if lower == _XFF:
                value = field[1].strip(_OWS)
                if value:
                    xff.append(value)
            elif lower == _FORWARDED:
                value = field[1].strip(_OWS)
                if value:
                    forwarded.append(value)
            elif lower == _XFP:
                xfp.append(field)
            else:
                xfh.append(field)
            continue
        if host is None and lower == b"host":
            host = field[1].strip(_OWS)
        out.append(field)

    client = client_ip.encode("ascii", "replace")
    proto_bytes = proto.encode("ascii", "replace")
    xff.append(client)
    out.append((b"X-Forwarded-For", b", ".join(xff)))
    if xfp:
        out.extend(xfp)
    else:
        out.append((b"X-Forwarded-Proto", proto_bytes))
    if xfh:
        out.extend(xfh)
    elif host:
        out.append((b"X-Forwarded-Host", host))
    forwarded.append(_forwarded_element(client_ip, proto_bytes, host))
    out.append((b"Forwarded", b", ".join(forwarded)))
    return out


def serialize_head(start_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """
    A message head on the wire (RFC 9112 §2.1): the start line, one ``name: value`` line per
    field, and the empty line, all ending in CRLF.

    Names and values are written as they are; they must not contain CR or LF.
    """
    # b": ".join of a (name, value) pair is its field line without the CRLF; map() keeps the
    # loop in C.
    return b"\r\n".join([start_line, *map(_join_field, headers), b"", b""])


_join_field = b": ".join
