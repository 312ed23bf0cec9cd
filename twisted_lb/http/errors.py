"""
The short responses the L7 proxy writes itself: 400, 408, 413, 417, 431, 500, 501, 502, 503,
504, 505.

Status codes and their meaning are RFC 9110 §15 (431 is RFC 6585 §5). Each response is a few
lines of ``text/plain`` saying the status, with ``Cache-Control: no-store`` so that no cache
keeps a transient error, as nginx and HAProxy answer their own errors.
"""

from __future__ import annotations

import http
from collections.abc import Sequence

from twisted_lb.http.headers import serialize_head

REASONS: dict[int, bytes] = {
    100: b"Continue",  # RFC 9110 §15.2.1
    400: b"Bad Request",  # RFC 9110 §15.5.1
    408: b"Request Timeout",  # RFC 9110 §15.5.9
    413: b"Content Too Large",  # RFC 9110 §15.5.14
    417: b"Expectation Failed",  # RFC 9110 §15.5.18
    431: b"Request Header Fields Too Large",  # RFC 6585 §5
    500: b"Internal Server Error",  # RFC 9110 §15.6.1
    501: b"Not Implemented",  # RFC 9110 §15.6.2
    502: b"Bad Gateway",  # RFC 9110 §15.6.3
    503: b"Service Unavailable",  # RFC 9110 §15.6.4
    504: b"Gateway Timeout",  # RFC 9110 §15.6.5
    505: b"HTTP Version Not Supported",  # RFC 9110 §15.6.6
}
"""Reason phrases of the statuses the proxy sends, as RFC 9110 §15 and RFC 6585 §5 name them."""

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim response to ``Expect: 100-continue`` (RFC 9110 §10.1.1, §15.2.1)."""

# Final statuses that never carry content (RFC 9110 §15.3.5, §15.3.6, §15.4.5).
_NO_CONTENT = frozenset({204, 205, 304})

_cache: dict[tuple[int, bool, bool], bytes] = {}


def reason(status: int) -> bytes:
    """
    The reason phrase for ``status``: from :data:`REASONS`, else Python's
    :class:`http.HTTPStatus`, else ``b"Unknown"``.
    """
    phrase = REASONS.get(status)
    if phrase is not None:
        return phrase
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def error_response(
    status: int,
    *,
    close: bool = True,
    head: bool = False,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    A complete, short HTTP/1.1 response for ``status``, ready to write.

    For 502 it is::

        HTTP/1.1 502 Bad Gateway
        Content-Type: text/plain; charset=utf-8
        Content-Length: 16
        Connection: close
        Cache-Control: no-store

        502 Bad Gateway

    Args:
        status: a final status with content, 200-599 but not 204, 205 or 304 (RFC 9110 §15).
        close: add ``Connection: close`` (RFC 9112 §9.6); without it the connection stays
            open, the HTTP/1.1 default.
        head: the answer to a HEAD request: no body, but the ``Content-Length`` the body would
            have had (RFC 9110 §9.3.2).
        extra_headers: more fields, written after ``Cache-Control`` (for example
            ``Retry-After`` on a 503).

    Returns:
        The response bytes. Responses without ``extra_headers`` are built once and cached.

    Raises:
        ValueError: the status is out of range or never has content, or an extra header has
            CR, LF or NUL in it, or ``:`` or nothing in its name.
    """
    if not extra_headers:
        cached = _cache.get((status, close, head))
        if cached is not None:
            return cached
    if not 200 <= status <= 599 or status in _NO_CONTENT:
        raise ValueError(f"error_response needs a final status with content, not {status}")
    for name, value in extra_headers:
        if not name or b":" in name or _has_line_break(name) or _has_line_break(value):
            raise ValueError(f"invalid extra header {name!r}: {value!r}")
    phrase = reason(status)
    body = b"%d %s\n" % (status, phrase)
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    headers.append((b"Cache-Control", b"no-store"))
    headers.extend(extra_headers)
    response = serialize_head(b"HTTP/1.1 %d %s" % (status, phrase), headers)
    if not head:
        response += body
    if not extra_headers:
        _cache[status, close, head] = response
    return response


def _has_line_break(text: bytes) -> bool:
    return b"\r" in text or b"\n" in text or b"\0" in text
