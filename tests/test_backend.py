"""
Backend addresses, endpoints, state and live counters; the peak EWMA of response times; what a
strategy knows of a connection or request.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb._address import Address, parse_address
from twisted_lb.backend import Backend, BackendState, ConnectionInfo, PeakEWMA


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """``host:port``, ``[v6]:port`` and ``unix:/path`` parse to their parts."""
        self.assertEqual(parse_address("127.0.0.1:9001"), Address("tcp", "127.0.0.1", 9001))
        self.assertEqual(parse_address("app.internal:80"), Address("tcp", "app.internal", 80))
        self.assertEqual(parse_address("[::1]:9001"), Address("tcp", "::1", 9001))
        self.assertEqual(parse_address("unix:/run/a.sock"), Address("unix", path="/run/a.sock"))

    def test_round_trip(self) -> None:
        """``str()`` gives back the canonical text."""
        for text in ("127.0.0.1:9001", "[::1]:9001", "unix:/run/a.sock", "db:5432"):
            self.assertEqual(str(parse_address(text)), text)

    def test_errors(self) -> None:
        """Each malformed address raises ValueError with a message saying which form to use."""
        cases = {
            "127.0.0.1": "is not 'host:port'",
            "::1:80": "write IPv6 addresses in brackets",
            "[::1]9001": "is not '[v6]:port'",
            "[nope]:80": "is not an IPv6 address",
            "host:0": "is not a number from 1 to 65535",
            "host:70000": "is not a number from 1 to 65535",
            "host:http": "is not a number from 1 to 65535",
            "unix:": "needs a path",
            ":80": "is not 'host:port'",
        }
        for text, message in cases.items():
            with self.assertRaises(ValueError, msg=text) as raised:
                parse_address(text)
            self.assertIn(message, str(raised.exception), text)

    @given(st.text(max_size=40))
    def test_arbitrary_text(self, text: str) -> None:
        """Any text either parses or raises ValueError; nothing else escapes."""
        try:
            address = parse_address(text)
        except ValueError:
            return
        self.assertIn(address.kind, ("tcp", "unix"))

    @given(st.integers(1, 65535), st.ip_addresses())
    def test_ip_round_trip(self, port: int, ip: object) -> None:
        """Every IP literal and port round-trips through the text form."""
        text = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
        self.assertEqual(str(parse_address(text)), text)


class BackendTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A backend is named after its address, weighs 1, is a primary and starts UP."""
        backend = Backend.from_address("127.0.0.1:9001")
        self.assertEqual(
            (backend.name, backend.weight, backend.backup, backend.state),
            ("127.0.0.1:9001", 1, False, BackendState.UP),
        )
        self.assertEqual(
            (backend.active_connections, backend.total_connections, backend.connect_failures),
            (0, 0, 0),
        )

    def test_weight(self) -> None:
        """A weight outside the config's range, 1 to 256 (HAProxy's), is refused."""
        self.assertEqual(Backend.from_address("127.0.0.1:9001", weight=256).weight, 256)
        for weight in (0, 257):
            with self.assertRaises(ValueError) as raised:
                Backend.from_address("127.0.0.1:9001", weight=weight)
            self.assertIn(f"weight must be from 1 to 256, not {weight}", str(raised.exception))

    def test_identity(self) -> None:
        """Two backends with one address are two backends."""
        self.assertNotEqual(Backend.from_address("h:1"), Backend.from_address("h:1"))

    def test_endpoints(self) -> None:
        """Each address form connects through the matching client endpoint."""
        reactor = MemoryReactorClock()
        cases = {
            "127.0.0.1:1": TCP4ClientEndpoint,
            "[::1]:1": TCP6ClientEndpoint,
            "app.internal:1": HostnameEndpoint,
            "unix:/run/a.sock": UNIXClientEndpoint,
        }
        for text, kind in cases.items():
            self.assertIsInstance(Backend.from_address(text).endpoint(reactor), kind, text)

    def test_connection_info(self) -> None:
        """``client_host`` is the IP of IP clients and None otherwise."""
        self.assertEqual(
            ConnectionInfo(IPv4Address("TCP", "192.0.2.7", 1)).client_host, "192.0.2.7"
        )
        self.assertIsNone(ConnectionInfo(UNIXAddress("/s")).client_host)
        self.assertIsNone(ConnectionInfo().client_host)

    def test_l7_counters_start_at_zero(self) -> None:
        """
        A new backend has no request in flight, none counted, no response of any class and
        no response time.
        """
        backend = Backend.from_address("127.0.0.1:9001")
        self.assertEqual((backend.in_flight_requests, backend.requests_total), (0, 0))
        self.assertEqual(backend.responses, [0, 0, 0, 0, 0])
        self.assertIsInstance(backend.response_time, PeakEWMA)
        self.assertEqual(backend.response_time.value(100.0), 0.0)

    def test_counters_are_per_backend(self) -> None:
        """Two backends share neither their response counters nor their EWMA."""
        first = Backend.from_address("h:1")
        second = Backend.from_address("h:1")
        first.count_response(200)
        first.response_time.observe(0.5, 1.0)
        self.assertEqual(second.responses, [0, 0, 0, 0, 0])
        self.assertEqual(second.response_time.value(1.0), 0.0)

    def test_count_response(self) -> None:
        """
        ``count_response`` counts a status in its class, 1xx in ``responses[0]`` to 5xx in
        ``responses[4]``; codes outside 100..599 are not counted.
        """
        backend = Backend.from_address("127.0.0.1:9001")
        for status in [100, 101, 199, 200, 204, 301, 304, 404, 499, 500, 503, 599]:
            backend.count_response(status)
        self.assertEqual(backend.responses, [3, 2, 2, 2, 3])
        for status in [-1, 0, 42, 99, 600, 999, 1000]:
            backend.count_response(status)
        self.assertEqual(backend.responses, [3, 2, 2, 2, 3])

    @given(st.lists(st.integers(min_value=-1000, max_value=1000), max_size=50))
    def test_count_response_any_status(self, statuses: list[int]) -> None:
        """Every code in 100..599 is counted once, in its class; no code raises."""
        backend = Backend.from_address("127.0.0.1:9001")
        for status in statuses:
            backend.count_response(status)
        expected = [0] * 5
        for status in statuses:
            if 100 <= status <= 599:
                expected[status // 100 - 1] += 1
        self.assertEqual(backend.responses, expected)


# Response times and times, in seconds; no infinities or NaN.
rtts = st.floats(min_value=0.0, max_value=100.0)
gaps = st.floats(min_value=0.0, max_value=1000.0)
decays = st.floats(min_value=0.01, max_value=100.0)
series = st.lists(st.tuples(rtts, gaps), min_size=1, max_size=30)


def fed(decay: float, observations: list[tuple[float, float]]) -> tuple[PeakEWMA, float]:
    """A PeakEWMA fed ``(rtt, gap)`` pairs, each ``gap`` seconds after the previous one."""
    ewma = PeakEWMA(decay)
    now = 0.0
    for rtt, gap in observations:
        now += gap
        ewma.observe(rtt, now)
    return ewma, now


class PeakEWMATests(SynchronousTestCase):
    """
    :class:`PeakEWMA`: up at once on a peak, down gradually, and decayed for idle time.
    """

    def test_empty(self) -> None:
        """Before any observation the value is 0 at any time."""
        ewma = PeakEWMA()
        for now in [-5.0, 0.0, 1.0, 1e9]:
            self.assertEqual(ewma.value(now), 0.0)

    def test_decay(self) -> None:
        """The time constant defaults to 10 s; it must be positive."""
        self.assertEqual(PeakEWMA().decay, 10.0)
        self.assertEqual(PeakEWMA(2.5).decay, 2.5)
        for decay in [0.0, -1.0, math.nan]:
            with self.assertRaises(ValueError, msg=str(decay)):
                PeakEWMA(decay)

    def test_slots(self) -> None:
        """A PeakEWMA has no ``__dict__``: there is one per backend."""
        self.assertFalse(hasattr(PeakEWMA(), "__dict__"))
        self.assertIn("PeakEWMA", repr(PeakEWMA()))

    def test_first_observation(self) -> None:
        """The first response time is the estimate, at once."""
        ewma = PeakEWMA()
        ewma.observe(0.25, 1000.0)
        self.assertEqual(ewma.value(1000.0), 0.25)

    def test_sequence(self) -> None:
        """
        A slower response is adopted at once; a faster one moves the estimate by
        ``1 - exp(-elapsed / decay)`` of the difference; idle time decays the value.
        """
        ewma = PeakEWMA(10.0)
        ewma.observe(0.1, 0.0)
        ewma.observe(0.5, 1.0)
        self.assertEqual(ewma.value(1.0), 0.5)
        ewma.observe(0.1, 11.0)
        expected = 0.5 * math.exp(-1.0) + 0.1 * (1 - math.exp(-1.0))
        self.assertAlmostEqual(ewma.value(11.0), expected, places=12)
        self.assertAlmostEqual(ewma.value(21.0), expected * math.exp(-1.0), places=12)
        self.assertAlmostEqual(ewma.value(41.0), expected * math.exp(-3.0), places=12)

    def test_reading_changes_nothing(self) -> None:
        """
        ``value`` only reads: an estimate read often ends where one never read ends.
        """
        read = PeakEWMA()
        unread = PeakEWMA()
        for ewma in [read, unread]:
            ewma.observe(1.0, 0.0)
        for step in range(1, 50):
            read.value(step * 0.1)
        for ewma in [read, unread]:
            ewma.observe(0.2, 5.0)
        self.assertEqual(read.value(7.0), unread.value(7.0))

    def test_clock_going_back(self) -> None:
        """A time before the last observation counts as no time elapsed."""
        ewma = PeakEWMA(10.0)
        ewma.observe(1.0, 100.0)
        self.assertEqual(ewma.value(50.0), 1.0)
        ewma.observe(0.5, 90.0)
        self.assertEqual(ewma.value(90.0), 1.0)

    def test_bad_rtt(self) -> None:
        """A negative or NaN response time counts as 0."""
        for rtt in [-1.0, math.nan]:
            ewma = PeakEWMA(10.0)
            ewma.observe(1.0, 0.0)
            ewma.observe(rtt, 10.0)
            self.assertAlmostEqual(ewma.value(10.0), math.exp(-1.0), places=12)

    @given(decays, series, rtts, gaps)
    def test_peak_adopted(
        self, decay: float, observations: list[tuple[float, float]], rtt: float, gap: float
    ) -> None:
        """
        Right after a response time is observed the value is at least that response time;
        exactly it when it is the largest so far.
        """
        ewma, now = fed(decay, observations)
        now += gap
        ewma.observe(rtt, now)
        self.assertGreaterEqual(ewma.value(now), rtt)
        if rtt >= max(r for r, _gap in observations):
            self.assertEqual(ewma.value(now), rtt)

    @given(decays, series, gaps)
    def test_bounded_by_max(
        self, decay: float, observations: list[tuple[float, float]], gap: float
    ) -> None:
        """The value is never negative and never above the largest response time seen."""
        ewma, now = fed(decay, observations)
        peak = max(rtt for rtt, _gap in observations)
        value = ewma.value(now + gap)
        self.assertGreaterEqual(value, 0.0)
        self.assertLessEqual(value, peak)

    @given(decays, rtts, rtts, st.floats(min_value=0.01, max_value=2.0))
    def test_converges_to_constant(
        self, decay: float, start: float, constant: float, spacing: float
    ) -> None:
        """
        Fed one response time every ``spacing`` time constants, the estimate moves
        monotonically to that time, and after 40 time constants it is within a millionth of
        the distance.
        """
        ewma = PeakEWMA(decay)
        ewma.observe(start, 0.0)
        gap = spacing * decay
        tolerance = 1e-12 * max(start, constant, 1.0)
        distance = abs(start - constant)
        for step in range(1, math.ceil(40 / spacing) + 1):
            ewma.observe(constant, step * gap)
            value = ewma.value(step * gap)
            self.assertGreaterEqual(value, constant - tolerance)
            self.assertLessEqual(value - constant, distance + tolerance)
            distance = value - constant
        self.assertLessEqual(distance, abs(start - constant) * 1e-6 + tolerance)

    @given(decays, series, gaps, gaps)
    def test_idle_decays(
        self, decay: float, observations: list[tuple[float, float]], first: float, more: float
    ) -> None:
        """
        With no new observation the value falls monotonically, as
        ``value * exp(-idle / decay)``.
        """
        ewma, now = fed(decay, observations)
        estimate = ewma.value(now)
        earlier = ewma.value(now + first)
        later = ewma.value(now + first + more)
        self.assertLessEqual(later, earlier)
        self.assertLessEqual(earlier, estimate)
        self.assertAlmostEqual(
            earlier, estimate * math.exp(-first / decay), delta=1e-9 * max(estimate, 1.0)
        )

    @given(decays, rtts, rtts, gaps)
    def test_weights_follow_exp(self, decay: float, a: float, b: float, gap: float) -> None:
        """
        A faster response ``gap`` seconds after the last gets weight ``1 - w``, the old
        estimate ``w``, with ``w = exp(-gap / decay)``.
        """
        high, low = max(a, b), min(a, b)
        ewma = PeakEWMA(decay)
        ewma.observe(high, 3.0)
        ewma.observe(low, 3.0 + gap)
        w = math.exp(-gap / decay)
        self.assertAlmostEqual(
            ewma.value(3.0 + gap), high * w + low * (1 - w), delta=1e-12 * max(high, 1.0)
        )


# Header fields, as the HTTP mode hands them over.
header_bytes = st.binary(max_size=40)
# RFC 6265 §4.1.1: a token for the name, cookie-octets for the value.
_TOKEN = bytes(c for c in range(33, 127) if c not in b'()<>@,;:\\"/[]?={}')
_COOKIE_OCTETS = bytes(c for c in range(0x21, 0x7F) if c not in b'",;\\')
cookie_names = st.lists(st.sampled_from(_TOKEN), min_size=1, max_size=8).map(bytes)
cookie_values = st.lists(st.sampled_from(_COOKIE_OCTETS), max_size=8).map(bytes)


class ConnectionInfoTests(SynchronousTestCase):
    """
    :class:`ConnectionInfo`: the L4 client address, and for L7 the request.
    """

    def test_defaults(self) -> None:
        """
        Only the client address can be given by position; the L7 fields default to nothing.
        """
        address = IPv4Address("TCP", "192.0.2.7", 1)
        info = ConnectionInfo(address)
        self.assertIs(info.client_address, address)
        self.assertEqual(
            (info.method, info.host, info.path, info.headers, info.now),
            (None, None, None, (), 0.0),
        )
        self.assertEqual(info.cookies, {})

    def test_l7_fields(self) -> None:
        """A request's fields are kept as given; the info is frozen."""
        info = ConnectionInfo(
            UNIXAddress(b"/s"),
            method=b"GET",
            host=b"example.com",
            path=b"/a?b",
            headers=[(b"Host", b"example.com")],
            now=12.5,
        )
        self.assertEqual(
            (info.method, info.host, info.path, info.now), (b"GET", b"example.com", b"/a?b", 12.5)
        )
        with self.assertRaises(AttributeError):
            info.now = 1.0  # type: ignore[misc]

    def test_cookies(self) -> None:
        """
        Every Cookie header, whatever the case of its name, gives ``name=value`` pairs
        separated by ``;``; whitespace around them is dropped; the first occurrence of a name
        wins; pairs without ``=`` or without a name are skipped.
        """
        info = ConnectionInfo(
            headers=[
                (b"Host", b"example.com"),
                (b"Cookie", b"a=1; b=2"),
                (b"X-Cookie", b"x=1"),
                (b"cookie", b"a=3;c=4=4"),
                (b"COOKIE", b'bad; =x; d = 5 ;e=;\tf="q"; ;'),
            ]
        )
        self.assertEqual(
            info.cookies,
            {b"a": b"1", b"b": b"2", b"c": b"4=4", b"d": b"5", b"e": b"", b"f": b'"q"'},
        )

    @given(st.lists(st.tuples(st.sampled_from([b"Cookie", b"cookie", b"Other"]), header_bytes)))
    def test_cookies_arbitrary_bytes(self, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Any header bytes parse without raising, to non-empty names without ``;`` or ``=``
        and values without ``;``.
        """
        cookies = ConnectionInfo(headers=headers).cookies
        for name, value in cookies.items():
            self.assertTrue(name)
            self.assertNotIn(b";", name)
            self.assertNotIn(b"=", name)
            self.assertNotIn(b";", value)

    @settings(max_examples=50)
    @given(st.lists(st.lists(st.tuples(cookie_names, cookie_values), min_size=1, max_size=4)))
    def test_cookies_round_trip(self, headers: list[list[tuple[bytes, bytes]]]) -> None:
        """
        Cookie headers written as RFC 6265 §4.2.1 ``name=value; name=value`` parse back, the
        first value of each name kept.
        """
        fields = [(b"Cookie", b"; ".join(n + b"=" + v for n, v in pairs)) for pairs in headers]
        expected: dict[bytes, bytes] = {}
        for pairs in headers:
            for name, value in pairs:
                expected.setdefault(name, value)
        self.assertEqual(ConnectionInfo(headers=fields).cookies, expected)
