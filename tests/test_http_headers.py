"""
Tests for :mod:`twisted_lb.http.headers`: hop-by-hop removal, trusted proxies, the forwarding
fields, and head serialisation.
"""

from __future__ import annotations

import ipaddress

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.http.headers import (
    HOP_BY_HOP,
    TrustedProxies,
    connection_tokens,
    forward_request_headers,
    remove_hop_by_hop,
    serialize_head,
)

Headers = list[tuple[bytes, bytes]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NOBODY = TrustedProxies([])
PROXIES = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])

FORWARDING = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}

quick = settings(deadline=None, max_examples=200)

# Header names: a mix of hop-by-hop, forwarding, framing and ordinary names, in any case.
_base_names = st.sampled_from(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"accept",
        b"cookie",
        b"x-a",
        b"x-b",
        b"proxy-authorization",
    ]
)
names = st.tuples(_base_names, st.sampled_from([bytes.lower, bytes.upper, bytes.title])).map(
    lambda pair: pair[1](pair[0])
) | st.text("abcdefghij-", min_size=1, max_size=8).map(str.encode)
values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=20
).map(str.encode)
connection_values = st.lists(
    st.tuples(_base_names, st.sampled_from([b"", b" ", b"\t"])), max_size=4
).map(lambda items: b",".join(pad + name + pad for name, pad in items))


@st.composite
def header_lists(draw: st.DrawFn) -> Headers:
    headers: Headers = draw(st.lists(st.tuples(names, values), max_size=12))
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(headers)))
        name = draw(st.sampled_from([b"Connection", b"connection", b"CONNECTION"]))
        headers.insert(position, (name, draw(connection_values)))
    return headers


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


def named(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


class HopByHopTests(SynchronousTestCase):
    def test_hop_by_hop_names(self) -> None:
        """
        The RFC 9110 §7.6.1 fields and the legacy ones are hop-by-hop; the proxy
        authentication fields are forwarded, as nginx and HAProxy do.
        """
        self.assertEqual(
            HOP_BY_HOP,
            {
                b"connection",
                b"proxy-connection",
                b"keep-alive",
                b"te",
                b"transfer-encoding",
                b"upgrade",
                b"trailer",
            },
        )
        self.assertNotIn(b"proxy-authenticate", HOP_BY_HOP)
        self.assertNotIn(b"proxy-authorization", HOP_BY_HOP)

    def test_connection_tokens(self) -> None:
        """
        Tokens of every Connection field, lowercased and stripped, without empty ones.
        """
        headers = [
            (b"Connection", b"Keep-Alive, X-Foo ,,\t"),
            (b"X-Foo", b"1"),
            (b"CONNECTION", b" Upgrade"),
            (b"Connections", b"x-not-a-token"),
        ]
        self.assertEqual(connection_tokens(headers), {b"keep-alive", b"x-foo", b"upgrade"})
        self.assertEqual(connection_tokens([(b"Host", b"a")]), frozenset())
        self.assertEqual(connection_tokens([(b"Connection", b" , ")]), frozenset())

    def test_remove_hop_by_hop(self) -> None:
        """
        Hop-by-hop fields and those named in Connection go, in any case; the rest stay in
        order, duplicates kept.
        """
        headers = [
            (b"Host", b"example.com"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Accept", b"text/html"),
            (b"x-secret", b"1"),
            (b"TE", b"trailers"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Accept", b"*/*"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Trailer", b"X-Checksum"),
            (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
        ]
        original = list(headers)
        self.assertEqual(
            remove_hop_by_hop(headers),
            [
                (b"Host", b"example.com"),
                (b"Accept", b"text/html"),
                (b"Accept", b"*/*"),
                (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
            ],
        )
        self.assertEqual(headers, original)

    def test_connection_cannot_remove_host_or_content_length(self) -> None:
        """
        ``Connection: host, content-length`` does not remove them: the next hop needs both to
        read the message as we did (RFC 9112 §3.2, §6.3).
        """
        headers = [
            (b"Host", b"example.com"),
            (b"Content-Length", b"5"),
            (b"Connection", b"Host, Content-Length, X-A"),
            (b"X-A", b"1"),
        ]
        self.assertEqual(
            remove_hop_by_hop(headers), [(b"Host", b"example.com"), (b"Content-Length", b"5")]
        )

    def test_names_given(self) -> None:
        """
        With the lowercase names given, the result is the same; several Connection fields
        and long ones count as one comma-separated list.
        """
        long_option = b"x-" + b"a" * 100
        headers = [
            (b"Connection", b"X-A"),
            (b"X-A", b"1"),
            (b"Connection", b"close, " + long_option),
            (long_option, b"2"),
            (b"X-B", b"3"),
            (b"Connection", b"x-" + b"c" * 100),
            (b"X-C", b"4"),
        ]
        names = [name.lower() for name, _ in headers]
        expected = [(b"X-B", b"3"), (b"X-C", b"4")]
        self.assertEqual(remove_hop_by_hop(headers), expected)
        self.assertEqual(remove_hop_by_hop(headers, names), expected)
        self.assertEqual(remove_hop_by_hop(headers[-2:]), expected[-1:])

    def test_accepts_any_iterable(self) -> None:
        """A generator of fields works as well as a list."""
        headers = [(b"Connection", b"x-a"), (b"X-A", b"1"), (b"X-B", b"2")]
        self.assertEqual(remove_hop_by_hop(iter(headers)), [(b"X-B", b"2")])

    @quick
    @given(header_lists())
    def test_remove_hop_by_hop_property(self, headers: Headers) -> None:
        """
        No hop-by-hop field and no field named in Connection (but Host and Content-Length)
        survives, and every other field is kept, in order.
        """
        tokens = set()
        for name, value in headers:
            if name.lower() == b"connection":
                tokens |= {t.strip(b" \t").lower() for t in value.split(b",")}
        tokens -= {b"host", b"content-length"}
        result = remove_hop_by_hop(headers)
        for name, _ in result:
            self.assertNotIn(name.lower(), HOP_BY_HOP)
            self.assertNotIn(name.lower(), tokens)
        expected = [
            (n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in tokens
        ]
        self.assertEqual(result, expected)


class TrustedProxiesTests(SynchronousTestCase):
    def test_networks_and_addresses(self) -> None:
        """
        CIDRs and single addresses, IPv4 and IPv6; host bits are allowed.
        """
        trusted = TrustedProxies(["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"])
        for ip in ["10.0.0.1", "10.255.255.255", "192.0.2.7", "2001:db8::1", "2001:DB8:ffff::"]:
            self.assertIn(ip, trusted)
        for ip in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "::1"]:
            self.assertNotIn(ip, trusted)
        self.assertEqual(
            trusted.networks,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.7/32"),
                ipaddress.ip_network("2001:db8::/32"),
            ),
        )
        self.assertEqual(
            repr(trusted), "TrustedProxies(['10.0.0.0/8', '192.0.2.7/32', '2001:db8::/32'])"
        )

    def test_ipv4_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 client, as a dual-stack listener reports it, matches IPv4 networks.
        """
        trusted = TrustedProxies(["10.0.0.0/8"])
        self.assertIn("::ffff:10.0.0.1", trusted)
        self.assertNotIn("::ffff:11.0.0.1", trusted)
        self.assertIn("::ffff:10.0.0.1", TrustedProxies(["::ffff:0:0/96"]))

    def test_not_an_ip(self) -> None:
        """Text that is not an IP (a UNIX socket path, nothing) is never trusted."""
        trusted = TrustedProxies(["0.0.0.0/0", "::/0"])
        for text in ["", "unix:", "/run/lb.sock", "example.com", "10.0.0.1:80", "[::1]"]:
            self.assertNotIn(text, trusted)
        self.assertNotIn(None, trusted)
        self.assertIn("203.0.113.9", trusted)

    def test_bool(self) -> None:
        """True when there is any network; an empty one trusts nobody."""
        self.assertFalse(TrustedProxies([]))
        self.assertTrue(TrustedProxies(["::1"]))
        self.assertNotIn("10.0.0.1", TrustedProxies([]))

    def test_invalid(self) -> None:
        """A bad entry is a ValueError naming it; a bare string is a TypeError."""
        with self.assertRaises(ValueError) as caught:
            TrustedProxies(["10.0.0.0/8", "ten.0.0.0/8"])
        self.assertIn("'ten.0.0.0/8'", str(caught.exception))
        self.assertRaises(ValueError, TrustedProxies, ["10.0.0.0/33"])
        self.assertRaises(TypeError, TrustedProxies, "10.0.0.0/8")

    @quick
    @given(st.tuples(*[st.ip_addresses(v=4)] * 3) | st.tuples(*[st.ip_addresses(v=6)] * 3))
    def test_matches_ipaddress(self, addresses: tuple[IPAddress, IPAddress, IPAddress]) -> None:
        """
        Membership agrees with :mod:`ipaddress`: a network of the first address, as long as
        the common prefix with the second, contains the third or not.
        """
        base, near, probe = addresses
        common = base.max_prefixlen - (int(base) ^ int(near)).bit_length()
        network = ipaddress.ip_network(f"{base}/{common}", strict=False)
        trusted = TrustedProxies([str(network)])
        self.assertIn(str(base), trusted)
        self.assertIn(str(near), trusted)
        self.assertEqual(str(probe) in trusted, probe in network)


class ForwardRequestHeadersTests(SynchronousTestCase):
    def test_untrusted_replaces(self) -> None:
        """
        From an untrusted peer, the received forwarding fields are dropped and replaced with
        ours, at the end; Host and the other fields keep their place.
        """
        headers = [
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"Host", b"example.com"),
            (b"x-forwarded-proto", b"https"),
            (b"Accept", b"*/*"),
            (b"X-FORWARDED-HOST", b"evil.example"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"Connection", b"keep-alive"),
            (b"Cookie", b"a=1"),
        ]
        self.assertEqual(
            forward_request_headers(headers, client_ip="192.0.2.1", proto="http", trusted=PROXIES),
            [
                (b"Host", b"example.com"),
                (b"Accept", b"*/*"),
                (b"Cookie", b"a=1"),
                (b"X-Forwarded-For", b"192.0.2.1"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"example.com"),
                (b"Forwarded", b"for=192.0.2.1;proto=http;host=example.com"),
            ],
        )

    def test_trusted_appends(self) -> None:
        """
        From a trusted peer, X-Forwarded-For fields are merged and our client appended;
        X-Forwarded-Proto and -Host are kept; Forwarded gets our element appended.
        """
        headers = [
            (b"Host", b"example.com:8443"),
            (b"X-Forwarded-For", b"203.0.113.1, 198.51.100.2"),
            (b"X-Forwarded-Proto", b"https"),
            (b"Accept", b"*/*"),
            (b"x-forwarded-for", b"10.9.9.9"),
            (b"X-Forwarded-Host", b"www.example.com"),
            (b"Forwarded", b"for=203.0.113.1;proto=https"),
            (b"Forwarded", b'for="[2001:db8::7]"'),
        ]
        self.assertEqual(
            forward_request_headers(headers, client_ip="10.0.0.3", proto="http", trusted=PROXIES),
            [
                (b"Host", b"example.com:8443"),
                (b"Accept", b"*/*"),
                (b"X-Forwarded-For", b"203.0.113.1, 198.51.100.2, 10.9.9.9, 10.0.0.3"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"www.example.com"),
                (
                    b"Forwarded",
                    b'for=203.0.113.1;proto=https, for="[2001:db8::7]", '
                    b'for=10.0.0.3;proto=http;host="example.com:8443"',
                ),
            ],
        )

    def test_trusted_without_forwarding_fields(self) -> None:
        """A trusted peer that sent no forwarding fields gets the same ones as an untrusted one."""
        headers = [(b"Host", b"example.com")]
        self.assertEqual(
            forward_request_headers(headers, client_ip="10.0.0.3", proto="https", trusted=PROXIES),
            forward_request_headers(headers, client_ip="10.0.0.3", proto="https", trusted=NOBODY),
        )

    def test_trusted_skips_empty_values(self) -> None:
        """Empty received X-Forwarded-For and Forwarded fields leave no stray commas."""
        headers = [
            (b"X-Forwarded-For", b""),
            (b"X-Forwarded-For", b" 1.2.3.4 "),
            (b"Forwarded", b""),
        ]
        result = forward_request_headers(
            headers, client_ip="10.0.0.3", proto="http", trusted=PROXIES
        )
        self.assertEqual(named(result, b"x-forwarded-for"), [b"1.2.3.4, 10.0.0.3"])
        self.assertEqual(named(result, b"forwarded"), [b"for=10.0.0.3;proto=http"])

    def test_no_host(self) -> None:
        """Without Host there is no X-Forwarded-Host and no ``host=`` in Forwarded."""
        result = forward_request_headers([], client_ip="192.0.2.1", proto="http", trusted=NOBODY)
        self.assertEqual(
            result,
            [
                (b"X-Forwarded-For", b"192.0.2.1"),
                (b"X-Forwarded-Proto", b"http"),
                (b"Forwarded", b"for=192.0.2.1;proto=http"),
            ],
        )
        result = forward_request_headers(
            [(b"Host", b"")], client_ip="192.0.2.1", proto="http", trusted=NOBODY
        )
        self.assertEqual(named(result, b"x-forwarded-host"), [])

    def test_long_host(self) -> None:
        """A long Host (not cached) gets the same forwarding fields as a short one (cached)."""
        for host in (b"a" * 10, b"a" * 1000):
            for _ in range(2):
                result = forward_request_headers(
                    [(b"Host", host)], client_ip="192.0.2.1", proto="http", trusted=NOBODY
                )
                self.assertEqual(
                    result,
                    [
                        (b"Host", host),
                        (b"X-Forwarded-For", b"192.0.2.1"),
                        (b"X-Forwarded-Proto", b"http"),
                        (b"X-Forwarded-Host", host),
                        (b"Forwarded", b"for=192.0.2.1;proto=http;host=" + host),
                    ],
                )

    def test_ipv6_client(self) -> None:
        """An IPv6 node is quoted and bracketed in Forwarded, bare in X-Forwarded-For."""
        result = forward_request_headers(
            [(b"Host", b"example.com")], client_ip="2001:db8::1", proto="https", trusted=NOBODY
        )
        self.assertEqual(named(result, b"x-forwarded-for"), [b"2001:db8::1"])
        self.assertEqual(
            named(result, b"forwarded"), [b'for="[2001:db8::1]";proto=https;host=example.com']
        )

    def test_ipv6_zone(self) -> None:
        """A link-local client's zone is left out of the node, which has no syntax for it."""
        result = forward_request_headers([], client_ip="fe80::1%eth0", proto="http", trusted=NOBODY)
        self.assertEqual(named(result, b"forwarded"), [b'for="[fe80::1]";proto=http'])

    def test_unix_client(self) -> None:
        """A client with no IP is ``for=unknown``; X-Forwarded-For gets what the caller gave."""
        result = forward_request_headers([], client_ip="unix:", proto="http", trusted=NOBODY)
        self.assertEqual(named(result, b"x-forwarded-for"), [b"unix:"])
        self.assertEqual(named(result, b"forwarded"), [b"for=unknown;proto=http"])

    def test_host_quoting(self) -> None:
        """
        A host that is not a token is a quoted-string, with ``"`` and ``\\`` escaped; one with
        control characters is left out of Forwarded.
        """
        for host, expected in [
            (b"example.com", b"host=example.com"),
            (b"[::1]:8080", b'host="[::1]:8080"'),
            (b'a"b\\c', b'host="a\\"b\\\\c"'),
        ]:
            result = forward_request_headers(
                [(b"Host", host)], client_ip="192.0.2.1", proto="http", trusted=NOBODY
            )
            [forwarded] = named(result, b"forwarded")
            self.assertEqual(forwarded, b"for=192.0.2.1;proto=http;" + expected)
        result = forward_request_headers(
            [(b"Host", b"a\x01b")], client_ip="192.0.2.1", proto="http", trusted=NOBODY
        )
        self.assertEqual(named(result, b"forwarded"), [b"for=192.0.2.1;proto=http"])

    def test_hop_by_hop_removed(self) -> None:
        """Hop-by-hop fields and those Connection names go, as in :func:`remove_hop_by_hop`."""
        headers = [(b"Connection", b"X-A"), (b"X-A", b"1"), (b"Upgrade", b"h2c"), (b"X-B", b"2")]
        result = forward_request_headers(
            headers, client_ip="192.0.2.1", proto="http", trusted=NOBODY
        )
        self.assertEqual(result[0], (b"X-B", b"2"))
        self.assertEqual(len(result), 4)

    def test_ipv4_mapped_trusted_peer(self) -> None:
        """A trusted peer seen through a dual-stack listener keeps the chain."""
        result = forward_request_headers(
            [(b"X-Forwarded-For", b"203.0.113.1")],
            client_ip="::ffff:10.0.0.1",
            proto="http",
            trusted=PROXIES,
        )
        self.assertEqual(named(result, b"x-forwarded-for"), [b"203.0.113.1, ::ffff:10.0.0.1"])
        self.assertEqual(named(result, b"forwarded"), [b'for="[::ffff:10.0.0.1]";proto=http'])

    @quick
    @given(header_lists(), ipv4 | ipv6, st.sampled_from(["http", "https"]))
    def test_untrusted_property(self, headers: Headers, client_ip: str, proto: str) -> None:
        """
        From an untrusted peer there is exactly one of each forwarding field, X-Forwarded-For
        is the client, they come last, and the rest is :func:`remove_hop_by_hop`'s output.
        """
        result = forward_request_headers(headers, client_ip=client_ip, proto=proto, trusted=NOBODY)
        self.assertEqual(named(result, b"x-forwarded-for"), [client_ip.encode()])
        self.assertEqual(named(result, b"x-forwarded-proto"), [proto.encode()])
        self.assertEqual(len(named(result, b"forwarded")), 1)
        self.assertLessEqual(len(named(result, b"x-forwarded-host")), 1)
        rest = [(n, v) for n, v in remove_hop_by_hop(headers) if n.lower() not in FORWARDING]
        self.assertEqual(result[: len(rest)], rest)
        self.assertTrue(all(n.lower() in FORWARDING for n, _ in result[len(rest) :]))

    @quick
    @given(header_lists(), st.sampled_from(["10.0.0.1", "10.200.3.4", "2001:db8::5"]))
    def test_trusted_property(self, headers: Headers, client_ip: str) -> None:
        """
        From a trusted peer, X-Forwarded-For ends with the client and starts with the earlier
        addresses, in order; X-Forwarded-Proto and -Host are kept.
        """
        result = forward_request_headers(
            headers, client_ip=client_ip, proto="http", trusted=PROXIES
        )
        kept = remove_hop_by_hop(headers)
        earlier = [v.strip(b" \t") for v in named(kept, b"x-forwarded-for")]
        [xff] = named(result, b"x-forwarded-for")
        self.assertEqual(xff, b", ".join([*(e for e in earlier if e), client_ip.encode()]))
        for name in (b"x-forwarded-proto", b"x-forwarded-host"):
            if named(kept, name):
                self.assertEqual(named(result, name), named(kept, name))
        [forwarded] = named(result, b"forwarded")
        self.assertTrue(forwarded.split(b", ")[-1].startswith(b"for="))

    @quick
    @given(ipv6)
    def test_ipv6_property(self, client_ip: str) -> None:
        """Every IPv6 client is a quoted, bracketed node."""
        result = forward_request_headers([], client_ip=client_ip, proto="http", trusted=NOBODY)
        [forwarded] = named(result, b"forwarded")
        self.assertEqual(forwarded, b'for="[' + client_ip.encode() + b']";proto=http')

    @quick
    @given(ipv4)
    def test_ipv4_property(self, client_ip: str) -> None:
        """Every IPv4 client is a bare node."""
        result = forward_request_headers([], client_ip=client_ip, proto="http", trusted=NOBODY)
        [forwarded] = named(result, b"forwarded")
        self.assertEqual(forwarded, b"for=" + client_ip.encode() + b";proto=http")


class _HeadCollector:
    """httptools callbacks that record a request's head."""

    def __init__(self) -> None:
        self.headers: Headers = []
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class SerializeHeadTests(SynchronousTestCase):
    def test_serialize(self) -> None:
        """The start line, one line per field, and the empty line."""
        self.assertEqual(
            serialize_head(b"GET / HTTP/1.1", [(b"Host", b"a"), (b"X-A", b"1"), (b"X-A", b"2")]),
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        )
        self.assertEqual(
            serialize_head(b"HTTP/1.1 204 No Content", []), b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        self.assertEqual(
            serialize_head(b"GET / HTTP/1.1", iter([(b"Host", b"a")])),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        )

    @quick
    @given(
        st.lists(
            st.tuples(
                st.text("abcxyzABC-_0123456789", min_size=1, max_size=10).map(str.encode),
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10).map(
                    str.encode
                ),
            ),
            max_size=10,
        )
    )
    def test_round_trip(self, headers: Headers) -> None:
        """httptools reads back the same fields, in order."""
        collector = _HeadCollector()
        parser = httptools.HttpRequestParser(collector)
        parser.feed_data(serialize_head(b"GET /x HTTP/1.1", headers))
        self.assertTrue(collector.complete)
        self.assertEqual(collector.url, b"/x")
        self.assertEqual(collector.headers, headers)
