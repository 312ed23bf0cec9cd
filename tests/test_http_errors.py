"""
Tests for :mod:`twisted_lb.http.errors`: the proxy's own short responses, read back with
httptools as a client would.
"""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.http.errors import CONTINUE_RESPONSE, REASONS, error_response, reason

SENT = [100, 400, 408, 413, 417, 431, 500, 501, 502, 503, 504, 505]


class _Response:
    """httptools callbacks that record a response."""

    def __init__(self) -> None:
        self.status = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.heads = 0
        self.complete = 0
        self.keep_alive: bool | None = None
        self.parser: httptools.HttpResponseParser | None = None

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads += 1

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()


def parse(data: bytes) -> tuple[_Response, httptools.HttpResponseParser]:
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    response.parser = parser
    parser.feed_data(data)
    return response, parser


class ReasonTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        """The statuses the proxy sends have their RFC 9110 / RFC 6585 phrases."""
        self.assertEqual(sorted(REASONS), SENT)
        self.assertEqual(reason(413), b"Content Too Large")
        self.assertEqual(reason(431), b"Request Header Fields Too Large")
        self.assertEqual(reason(502), b"Bad Gateway")
        self.assertEqual(reason(505), b"HTTP Version Not Supported")

    def test_fallbacks(self) -> None:
        """Other statuses use :class:`http.HTTPStatus`, else ``Unknown``."""
        self.assertEqual(reason(200), b"OK")
        self.assertEqual(reason(429), b"Too Many Requests")
        self.assertEqual(reason(599), b"Unknown")


class ErrorResponseTests(SynchronousTestCase):
    def test_bad_gateway(self) -> None:
        """The whole response, byte for byte."""
        self.assertEqual(
            error_response(502),
            b"HTTP/1.1 502 Bad Gateway\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 16\r\n"
            b"Connection: close\r\n"
            b"Cache-Control: no-store\r\n"
            b"\r\n"
            b"502 Bad Gateway\n",
        )

    def test_keep_alive(self) -> None:
        """Without ``close`` there is no Connection field: keep-alive is the default."""
        response = error_response(404, close=False)
        self.assertNotIn(b"Connection", response)
        self.assertTrue(response.startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertTrue(response.endswith(b"\r\n\r\n404 Not Found\n"))

    def test_head(self) -> None:
        """A response to HEAD has no body but the Content-Length the body would have."""
        full = error_response(503)
        head = error_response(503, head=True)
        self.assertEqual(full, head + b"503 Service Unavailable\n")
        self.assertIn(b"\r\nContent-Length: 24\r\n", head)

    def test_extra_headers(self) -> None:
        """Extra fields come after Cache-Control, and such responses are not cached."""
        response = error_response(503, extra_headers=[(b"Retry-After", b"5")])
        self.assertIn(b"Cache-Control: no-store\r\nRetry-After: 5\r\n\r\n", response)
        self.assertNotIn(b"Retry-After", error_response(503))
        self.assertIsNot(
            error_response(503, extra_headers=[(b"Retry-After", b"5")]),
            error_response(503, extra_headers=[(b"Retry-After", b"5")]),
        )

    def test_cached(self) -> None:
        """The same status, close and head give the same bytes object."""
        self.assertIs(error_response(504), error_response(504))
        self.assertIs(
            error_response(504, close=False, head=True), error_response(504, close=False, head=True)
        )
        self.assertIsNot(error_response(504), error_response(504, close=False))

    def test_invalid_status(self) -> None:
        """Interim, content-less and out-of-range statuses are refused."""
        for status in [100, 101, 199, 204, 205, 304, 600, 0, -1]:
            self.assertRaises(ValueError, error_response, status)

    def test_invalid_extra_headers(self) -> None:
        """Extra fields cannot split the response or have an empty or colon'd name."""
        for header in [
            (b"X-A", b"1\r\nSet-Cookie: a=1"),
            (b"X-A\n", b"1"),
            (b"X-A", b"\x00"),
            (b"", b"1"),
            (b"X-A:", b"1"),
        ]:
            self.assertRaises(ValueError, error_response, 400, extra_headers=[header])

    def test_continue(self) -> None:
        """The 100 Continue interim response is a bare status line."""
        response, _ = parse(CONTINUE_RESPONSE + error_response(417))
        self.assertEqual(response.heads, 2)
        self.assertEqual(response.status, b"ContinueExpectation Failed")
        self.assertEqual(response.body, b"417 Expectation Failed\n")

    @settings(deadline=None, max_examples=200)
    @given(
        st.integers(200, 599).filter(lambda s: s not in (204, 205, 304)),
        st.booleans(),
    )
    def test_parses(self, status: int, close: bool) -> None:
        """
        Every response parses as one complete HTTP/1.1 message whose body is as long as its
        Content-Length, and keeps the connection open unless ``close``.
        """
        response, parser = parse(error_response(status, close=close))
        self.assertEqual(response.complete, 1)
        self.assertEqual(parser.get_status_code(), status)
        self.assertEqual(parser.get_http_version(), "1.1")
        self.assertEqual(response.keep_alive, not close)
        headers = {name.lower(): value for name, value in response.headers}
        self.assertEqual(int(headers[b"content-length"]), len(response.body))
        self.assertEqual(response.body, b"%d %s\n" % (status, reason(status)))
        self.assertEqual(headers[b"cache-control"], b"no-store")
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
