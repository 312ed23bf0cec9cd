"""
Tests for :mod:`twisted_lb.http.routing`: route validation and first-match-wins routing by
host and path, checked against a brute-force reference.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.backend import Backend
from twisted_lb.http.routing import Route, Router
from twisted_lb.pool import Pool
from twisted_lb.strategies import get_strategy


def make_pool(name: str) -> Pool:
    return Pool(name, [Backend.from_address("10.0.0.5:8080")], get_strategy("round_robin"))


DEFAULT = make_pool("default")
API = make_pool("api")
WILD = make_pool("wild")
STATIC = make_pool("static")


class RouteTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """Exact hosts, leading wildcards, bracketed IPv6 literals and path prefixes."""
        for kwargs in [
            {"host": "api.example.com"},
            {"host": "*.example.com"},
            {"host": "*.com"},
            {"host": "example.com."},
            {"host": "[::1]"},
            {"host": "localhost", "path_prefix": "/"},
            {"path_prefix": "/api/"},
        ]:
            route = Route(API, **kwargs)
            self.assertIs(route.pool, API)

    def test_invalid(self) -> None:
        """Each malformed route is a ValueError with the config's message for the key."""
        for kwargs, message in [
            ({}, "host, a path_prefix"),
            ({"host": ""}, "empty"),
            ({"host": "*"}, "whole first label"),
            ({"host": "*."}, "whole first label"),
            ({"host": "*example.com"}, "whole first label"),
            ({"host": "a.*.example.com"}, "whole first label"),
            ({"host": "*.*.example.com"}, "whole first label"),
            ({"host": "example.*"}, "whole first label"),
            ({"host": ".example.com"}, "'*.example.com'"),
            ({"host": "example.com:8080"}, "without the port"),
            ({"host": "[::1]:8080"}, "without the port"),
            ({"host": "bücher.example"}, "as in 'xn--bcher-kva.example'"),
            ({"host": "a b"}, "not a host name"),
            ({"path_prefix": ""}, "start with '/'"),
            ({"path_prefix": "api/"}, "start with '/'"),
            ({"path_prefix": "/search?q"}, "without the part from '?' on"),
            ({"path_prefix": "/a b"}, "in ASCII without spaces, as in '/a%20b'"),
            ({"host": "api.example.com/v1"}, "the path in path_prefix"),
            ({"host": "", "path_prefix": "/"}, "empty"),
        ]:
            with self.assertRaises(ValueError, msg=repr(kwargs)) as caught:
                Route(API, **kwargs)
            self.assertIn(message, str(caught.exception), repr(kwargs))

    def test_frozen(self) -> None:
        """Routes are immutable values."""
        route = Route(API, host="a.example")
        self.assertEqual(route, Route(API, host="a.example"))
        self.assertRaises(AttributeError, setattr, route, "host", "b.example")


class RouterTests(SynchronousTestCase):
    def test_default(self) -> None:
        """With no routes, or no match, the default pool serves."""
        self.assertIs(Router([], DEFAULT).route(b"example.com", b"/"), DEFAULT)
        router = Router([Route(API, host="api.example.com")], DEFAULT)
        self.assertIs(router.route(b"www.example.com", b"/"), DEFAULT)
        self.assertIs(router.route(None, b"/"), DEFAULT)
        self.assertEqual(router.routes, (Route(API, host="api.example.com"),))
        self.assertIs(router.default, DEFAULT)

    def test_exact_host(self) -> None:
        """
        An exact host ignores case, the port, and one trailing dot, on both sides.
        """
        router = Router([Route(API, host="API.Example.com.")], DEFAULT)
        for host in [
            b"api.example.com",
            b"API.EXAMPLE.COM",
            b"api.example.com:8080",
            b"api.example.com.",
            b"api.example.com.:443",
            b" api.example.com ",
        ]:
            self.assertIs(router.route(host, b"/"), API, host)
        for host in [b"api.example.com..", b"xapi.example.com", b"api.example.co", b""]:
            self.assertIs(router.route(host, b"/"), DEFAULT, host)

    def test_ipv6_host(self) -> None:
        """A bracketed IPv6 literal loses its port, not its colons."""
        router = Router([Route(API, host="[2001:DB8::1]")], DEFAULT)
        self.assertIs(router.route(b"[2001:db8::1]:8080", b"/"), API)
        self.assertIs(router.route(b"[2001:db8::1]", b"/"), API)
        self.assertIs(router.route(b"[2001:db8::2]", b"/"), DEFAULT)

    def test_wildcard_host(self) -> None:
        """
        ``*.example.com`` matches subdomains at any depth, but not ``example.com``, as nginx's
        ``server_name`` wildcards.
        """
        router = Router([Route(WILD, host="*.example.com")], DEFAULT)
        for host in [b"a.example.com", b"a.b.example.com", b"A.Example.Com:80", b"a.example.com."]:
            self.assertIs(router.route(host, b"/"), WILD, host)
        for host in [b"example.com", b"badexample.com", b".example.com", b"example.com.evil"]:
            self.assertIs(router.route(host, b"/"), DEFAULT, host)

    def test_path_prefix(self) -> None:
        """
        A path prefix is a case-sensitive prefix of the path; the query does not count.
        """
        router = Router([Route(API, path_prefix="/api/")], DEFAULT)
        for target in [b"/api/", b"/api/users", b"/api/?x=1"]:
            self.assertIs(router.route(b"example.com", target), API, target)
        for target in [b"/api", b"/API/", b"/x?/api/", b"/", b"/apix/", b"*"]:
            self.assertIs(router.route(b"example.com", target), DEFAULT, target)

    def test_host_and_path(self) -> None:
        """A route with a host and a path prefix needs both."""
        router = Router([Route(API, host="example.com", path_prefix="/api/")], DEFAULT)
        self.assertIs(router.route(b"example.com", b"/api/x"), API)
        self.assertIs(router.route(b"example.com", b"/web/x"), DEFAULT)
        self.assertIs(router.route(b"example.org", b"/api/x"), DEFAULT)
        self.assertIs(router.route(None, b"/api/x"), DEFAULT)

    def test_first_match_wins(self) -> None:
        """Routes are tried in order."""
        router = Router(
            [
                Route(STATIC, path_prefix="/static/"),
                Route(API, host="api.example.com"),
                Route(WILD, host="*.example.com"),
                Route(DEFAULT, path_prefix="/"),
            ],
            make_pool("unreachable"),
        )
        self.assertIs(router.route(b"api.example.com", b"/static/a.css"), STATIC)
        self.assertIs(router.route(b"api.example.com", b"/v1"), API)
        self.assertIs(router.route(b"www.example.com", b"/v1"), WILD)
        self.assertIs(router.route(b"example.org", b"/v1"), DEFAULT)

    def test_absolute_form(self) -> None:
        """
        For an absolute-form target, the host and path come from the target, which overrides
        Host (RFC 9112 §3.2.2).
        """
        router = Router(
            [Route(API, host="api.example.com", path_prefix="/v1/"), Route(WILD, host="*.test")],
            DEFAULT,
        )
        self.assertIs(router.route(None, b"http://api.example.com/v1/x?y"), API)
        self.assertIs(router.route(None, b"HTTPS://API.example.com:443/v1/"), API)
        self.assertIs(router.route(b"other.example", b"http://api.example.com/v1/"), API)
        self.assertIs(router.route(b"api.example.com", b"http://other.example/v1/"), DEFAULT)
        self.assertIs(router.route(None, b"http://user:pw@api.example.com/v1/"), API)
        self.assertIs(router.route(None, b"http://api.example.com/v2/"), DEFAULT)
        self.assertIs(router.route(None, b"http://a.test"), WILD)
        self.assertIs(router.route(None, b"http://a.test?q=/v1/"), WILD)
        router = Router([Route(API, path_prefix="/")], DEFAULT)
        self.assertIs(router.route(None, b"http://example.com"), API)
        self.assertIs(router.route(None, b"http://example.com?x"), API)

    def test_other_forms(self) -> None:
        """Asterisk-form and authority-form targets have no path: only host routes match."""
        router = Router([Route(API, path_prefix="/"), Route(WILD, host="example.com")], DEFAULT)
        self.assertIs(router.route(b"example.com", b"*"), WILD)
        self.assertIs(router.route(b"example.org", b"*"), DEFAULT)
        self.assertIs(router.route(b"example.org", b"example.com:443"), DEFAULT)

    def test_repr(self) -> None:
        router = Router([Route(API, host="a.example")], DEFAULT)
        self.assertEqual(repr(router), "<Router 1 routes, default default>")


# -- brute-force reference -------------------------------------------------------------------

ROUTE_HOSTS = [
    None,
    "example.com",
    "EXAMPLE.com.",
    "api.example.com",
    "*.example.com",
    "*.api.example.com",
    "*.com",
    "[::1]",
]
ROUTE_PREFIXES = [None, "/", "/a", "/a/", "/ab", "/A", "/a/b"]
REQUEST_HOSTS = [
    None,
    b"",
    b"example.com",
    b"Example.COM:8080",
    b"example.com.",
    b"api.example.com",
    b"x.api.example.com:1",
    b"a.b.example.com",
    b"example.org",
    b"com",
    b"[::1]:80",
    b"[::1]",
]
PATHS = ["/", "/a", "/a/", "/ab", "/a/b/c", "/A/b", "/b"]


def reference_matches(route: Route, host: bytes | None, target: bytes) -> bool:
    """Whether ``route`` matches, written the slow and obvious way."""
    if target.startswith(b"/"):
        path = target.decode().split("?")[0]
    else:
        parts = urlsplit(target.decode())
        host = parts.netloc.rpartition("@")[2].encode()
        path = parts.path or "/"
    if route.path_prefix is not None and not path.startswith(route.path_prefix):
        return False
    if route.host is None:
        return True
    if host is None:
        return False
    name = host.decode().strip().lower()
    name = name.split("]")[0] + "]" if name.startswith("[") else name.split(":")[0]
    name = name.removesuffix(".")
    pattern = route.host.lower().removesuffix(".")
    if pattern.startswith("*."):
        labels, suffix = name.split("."), pattern[2:].split(".")
        return len(labels) > len(suffix) and labels[-len(suffix) :] == suffix
    return name == pattern


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    host = draw(st.sampled_from(REQUEST_HOSTS))
    path = draw(st.sampled_from(PATHS)) + draw(st.sampled_from(["", "?q=/a/", "?"]))
    if draw(st.booleans()):
        return host, path.encode()
    authority = draw(st.sampled_from(["example.com", "api.example.com:80", "u@a.b.example.com"]))
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    return host, f"{scheme}://{authority}{path}".encode()


routes_lists = st.lists(
    st.tuples(st.sampled_from(ROUTE_HOSTS), st.sampled_from(ROUTE_PREFIXES)).filter(
        lambda pair: pair != (None, None)
    ),
    max_size=8,
)


class RouterPropertyTests(SynchronousTestCase):
    @settings(deadline=None, max_examples=300)
    @given(routes_lists, st.lists(requests(), min_size=1, max_size=10))
    def test_first_match_wins(
        self,
        specs: list[tuple[str | None, str | None]],
        reqs: list[tuple[bytes | None, bytes]],
    ) -> None:
        """
        The router picks the pool of the first route the reference says matches, else the
        default.
        """
        routes = [
            Route(make_pool(f"p{i}"), host=host, path_prefix=prefix)
            for i, (host, prefix) in enumerate(specs)
        ]
        router = Router(routes, DEFAULT)
        for host, target in reqs:
            expected = next((r.pool for r in routes if reference_matches(r, host, target)), DEFAULT)
            self.assertIs(router.route(host, target), expected, (host, target))
