"""
L7: the HTTP/1.1 reverse proxy.

One :class:`HTTPProxyProtocol` per client connection runs the request state machine. Requests
are parsed with ``httptools.HttpRequestParser`` (llhttp, Node's parser, strict: it rejects
Content-Length together with Transfer-Encoding, bad or duplicate Content-Length, a
Transfer-Encoding whose final coding is not chunked, obs-fold and bad chunk framing, the
request-smuggling vectors of RFC 9112 §6.3 and §11.2). Each request is routed to a pool, a
backend is picked per request, and the request goes over a pooled keep-alive upstream
connection (:mod:`twisted_lb.http.upstream`). Bodies are streamed both ways under flow control:
the client's reading is paused while its backend connection's write buffer is full, and the
backend's reading while the client's is.

Semantics follow RFC 9110 and RFC 9112; where they leave a choice, the behaviour of nginx's
``proxy_pass`` and HAProxy's ``mode http`` is the guide:

- keep-alive on both sides; HTTP/1.0 clients with ``Connection: keep-alive``; pipelined
  requests answered in order (RFC 9112 §9.3.2);
- hop-by-hop fields removed, ``X-Forwarded-*`` and ``Forwarded`` added
  (:mod:`twisted_lb.http.headers`);
- request bodies re-framed when chunked; responses passed with their Content-Length, re-chunked
  for HTTP/1.1 clients when chunked or close-delimited, close-delimited for HTTP/1.0 clients;
  no body for HEAD, 204 and 304 (RFC 9110 §6.4.1); 1xx responses forwarded;
- ``Upgrade``/101 turns the pair into a byte tunnel (WebSocket), with its own idle timeout;
- a connect failure goes on to the next backend; a request that fails on a *reused* upstream
  connection before any response byte is sent again once on a fresh connection (the
  keep-alive race); idempotent requests (RFC 9110 §9.2.2) are also retried on the next
  backend after a reset before any response byte; a non-idempotent request whose body was
  sent is never retried;
- errors are short text responses: 400 malformed, 408 head not received in time, 413 body too
  large, 431 head too large, 502 backend failed, 503 no backend, 504 no response in time.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Sequence
from typing import ClassVar, Literal, cast

import httptools
from mypy_extensions import mypyc_attr
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_lb import _defaults as defaults
from twisted_lb._frontend import FrontendFactory
from twisted_lb._transport import (
    ReadGate,
    RelayTransport,
    close_writing,
    connect_error_reason,
    describe_error,
    lose_connection,
    sender,
    sends_at_once,
)
from twisted_lb.backend import (
    RETRY_CONNECT_FAILED,
    RETRY_RESET,
    RETRY_STALE_CONNECTION,
    Backend,
    ConnectionInfo,
)
from twisted_lb.http.errors import error_response, reason
from twisted_lb.http.headers import (
    TrustedProxies,
    forward_request_headers,
    remove_hop_by_hop,
    serialize_head,
)
from twisted_lb.http.routing import Router, _split_absolute
from twisted_lb.http.upstream import UpstreamConnection, Upstreams
from twisted_lb.interfaces import IAccessLog, IBalancerReactor
from twisted_lb.pool import Lease, Pool

_log = Logger()

# What llhttp says of an HTTP/2 client's prior-knowledge preface (RFC 9113 §3.3), and what the
# log says instead.
_H2_PREFACE_ERROR = "Pause on PRI/Upgrade"
_H2_PREFACE = "an HTTP/2 connection preface (PRI * HTTP/2.0); this listener speaks HTTP/1.1"

#: Methods that may be sent again after a failure (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: Bytes of a request (head and body as sent) kept to send it again after a failure before
#: any response byte. A request larger than this is not retried once its body was sent.
REPLAY_LIMIT = 64 * 1024

#: Status logged for a request whose client went away before its response was sent
#: (nginx's 499); never sent.
CLIENT_CLOSED = 499

_NO_BODY_STATUSES = frozenset({204, 304})

#: The largest chunk size accepted, in bytes: 2^52 - 1, HAProxy's limit (13 hex digits, "to
#: never feed possibly bogus values from languages that use floats for their integers",
#: ``h1_parse_chunk_size`` in haproxy/include/haproxy/h1.h). nginx refuses a size that
#: overflows ``off_t`` (2^63). A larger size is answered 400, even with no ``max_body_bytes``.
MAX_CHUNK_SIZE = 2**52 - 1

#: The longest chunk-size line (size, extensions and CRLF), in bytes; a longer one is answered
#: 400 however its bytes arrive (see HTTPProxyProtocol._walk_chunks).
_MAX_CHUNK_LINE = 4096

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)(?:;[^\r\n]*)?\r\n")
_CHUNK_DIGITS = re.compile(rb"[0-9A-Fa-f]+")

# The chunk-size line walk (see _walk_chunks): off, to find the end of the head first, in a
# size line, in a chunk's data (and its CRLF).
_WALK_OFF, _WALK_HEAD, _WALK_LINE, _WALK_DATA = 0, 1, 2, 3

# RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host as RFC 3986 §3.2.2 (an IP-literal in
# brackets, with an RFC 6874 zone, or a reg-name, which covers IPv4 addresses); empty allowed.
_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+(?:%25[0-9A-Za-z._~-]+)?|[vV][0-9A-Fa-f]+\.[0-9A-Za-z._~!$&'()*+,;=:-]+)\]"
    rb"|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
_OWS = b" \t"

# Host values already found valid: the same few come back on every request, and a set lookup
# costs less than a regular expression. Cleared when full. Only values of up to 255 bytes
# (the longest DNS name, RFC 1035 §2.3.4) are kept, so the cache holds at most about 256 KiB.
_valid_hosts: set[bytes] = set()
_VALID_HOSTS_MAX = 1024
_VALID_HOST_CACHED_BYTES = 255


def valid_host(value: bytes) -> bool:
    """
    Whether ``value`` (a ``Host`` field value, OWS around it allowed) is valid by RFC 9110 §7.2:
    ``uri-host [ ":" port ]``, empty allowed; an invalid one is answered 400 (RFC 9112 §3.2).
    """
    if value in _valid_hosts:
        return True
    if _HOST.fullmatch(value.strip(_OWS)) is None:
        return False
    if len(value) > _VALID_HOST_CACHED_BYTES:
        return True
    if len(_valid_hosts) >= _VALID_HOSTS_MAX:
        _valid_hosts.clear()
    _valid_hosts.add(value)
    return True


#: How a response body is framed to the client: none (HEAD, 204, 304), the backend's
#: Content-Length, re-chunked, or delimited by the close.
Framing = Literal["none", "length", "chunked", "close"]

#: What the connection's one deadline is for (see HTTPProxyProtocol._set_timer); "" when
#: disarmed.
TimerKind = Literal["", "header", "idle", "response", "transfer", "tunnel", "linger"]


class _Phase(enum.Enum):
    """
    Where a client connection is (``HTTPProxyProtocol.phase``). Members are compared by
    identity, through the module's aliases (``_READING`` ...). Transitions: READING to
    UPGRADING (an Upgrade request parsed), STOPPED (a request refused, an internal error) or
    LINGERING; UPGRADING to TUNNEL (the backend answered 101) or STOPPED; STOPPED to
    LINGERING; any to CLOSED (``connectionLost``).
    """

    #: Requests are read, parsed and answered in order.
    READING = "reading"
    #: The parser stopped at an Upgrade request: the client's bytes after it are held for the
    #: tunnel, and the client is not read until the backend answers.
    UPGRADING = "upgrading"
    #: The parser is done (a refused request, an internal error): nothing more is read or
    #: parsed; the responses still owed go out, then the connection closes.
    STOPPED = "stopped"
    #: After a 101: a byte tunnel both ways, with its own idle timeout.
    TUNNEL = "tunnel"
    #: Half-closed after a refusal, reading and discarding (see HTTPProxyProtocol._linger).
    LINGERING = "lingering"
    #: The client connection is gone.
    CLOSED = "closed"


_READING = _Phase.READING
_UPGRADING = _Phase.UPGRADING
_STOPPED = _Phase.STOPPED
_TUNNEL = _Phase.TUNNEL
_LINGERING = _Phase.LINGERING
_CLOSED = _Phase.CLOSED


class _RequestError(Exception):
    """Raised inside parser callbacks to answer a request with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    """One request from the client, as parsed."""

    __slots__ = (
        "body",
        "body_bytes",
        "chunked",
        "complete",
        "content_length",
        "head_bytes",
        "headers",
        "host",
        "keep_alive",
        "max_body_bytes",
        "method",
        "started",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, started: float) -> None:
        self.started = started
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        self.body: list[bytes] = []
        self.body_bytes = 0
        # The frontend's limit when the head was parsed: a reload that lowers it does not
        # cut an upload in flight.
        self.max_body_bytes = 0
        self.head_bytes = 0
        self.complete = False


class _ExchangePhase(enum.Enum):
    """
    Where an exchange is (``_Exchange.phase``), in this order; it never goes back. A request
    sent again after a failure (on a fresh connection, or to the next backend) keeps its
    phase: the head went out once, and its replay is sent whole on the new connection.
    Members are compared by identity, through the module's aliases (``_CONNECTING`` ...).
    """

    #: A backend is being picked and connected; nothing is sent yet.
    CONNECTING = "connecting"
    #: The request head is sent (its body may still be streaming); no response byte yet.
    AWAITING = "awaiting"
    #: A 1xx response head came (100 Continue, or the 101 of an upgrade).
    INTERIM = "interim"
    #: The final response head is sent to the client; its body streams.
    RESPONDING = "responding"
    #: Answered: the response is written, an error was sent instead, or the tunnel began.
    DONE = "done"


_CONNECTING = _ExchangePhase.CONNECTING
_AWAITING = _ExchangePhase.AWAITING
_INTERIM = _ExchangePhase.INTERIM
_RESPONDING = _ExchangePhase.RESPONDING
_DONE = _ExchangePhase.DONE


class _Exchange:
    """
    The active request's exchange with a backend, from its activation (routed) to its
    access event: the backend tried, the upstream connection, what was sent and the response.
    Times are ``reactor.seconds()``; 0.0 when not reached.
    """

    __slots__ = (
        "backend",
        "body_sent",
        "bytes_out",
        "connecting",
        "framing",
        "info",
        "lease",
        "pending_head",
        "phase",
        "pool",
        "replay",
        "replay_bytes",
        "request",
        "response_headers",
        "reuse_retried",
        "status",
        "t_connected",
        "t_first_byte",
        "t_sent",
        "tried",
        "upstream",
    )

    def __init__(self, request: _Request, pool: Pool, info: ConnectionInfo) -> None:
        self.request = request
        self.phase = _CONNECTING
        self.pool = pool
        self.info = info
        self.lease: Lease | None = None
        self.backend: Backend | None = None
        self.tried: list[Backend] = []
        self.upstream: UpstreamConnection | None = None
        self.connecting: Deferred[UpstreamConnection] | None = None
        # Sent again once on a fresh connection after a reused one failed (keep-alive race).
        self.reuse_retried = False
        self.body_sent = 0  # bytes of request body sent (unframed)
        # What was sent, to send it again after a failure; None past REPLAY_LIMIT bytes.
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.status = 0  # the response's (or error's) status; CLIENT_CLOSED; 0 before any
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.framing: Framing = "none"
        self.pending_head = b""  # a 101's head, sent once the upstream says it upgraded
        self.bytes_out = 0  # bytes sent to the client
        self.t_connected = 0.0  # a new upstream connection was made
        self.t_sent = 0.0  # the whole request was written
        self.t_first_byte = 0.0  # the first response head came


class HTTPProxyProtocol(Protocol):
    """
    One client connection of an :class:`HTTPProxyFactory`: the request state machine.

    The connection is in one ``_Phase`` (``phase``). At most one request is being
    answered at a time: the *active* ``_Exchange`` (``active``), in its own
    ``_ExchangePhase``; pipelined requests wait, parsed, in a queue, and the client is
    not read while one waits. Two intentions outlive an exchange: ``closing`` (close after the
    active response) and ``close_requested`` (a parsed request asked to close, RFC 9112
    §9.6); and ``pending_reject`` is a refusal owed once the requests before it are answered.
    The connection is the upstream connection's response handler and the exchange's owner:
    the exchange holds state only, so the per-request path stays a few method calls.
    """

    factory: HTTPProxyFactory
    client_transport: RelayTransport

    def __init__(self, factory: HTTPProxyFactory, address: IAddress | None) -> None:
        self.factory = factory
        self.client_address = address
        self.client_ip = _client_ip(address)
        self.seconds = factory.reactor.seconds
        self.parser = parser = httptools.HttpRequestParser(self)
        # Any single-digit version parses, and on_headers_complete answers it as nginx does:
        # 1.x as 1.1, 0.x 400, 2.0 and up 505 (llhttp alone refuses 1.2 with a 400 and takes
        # HTTP/2.0 on an HTTP/1 connection).
        parser.set_dangerous_leniencies(lenient_version=True)
        self.counted = False
        self.phase = _READING
        self.closing = False  # no further requests: close after the active response
        # A parsed request asked to close (Connection: close, HTTP/1.0 without keep-alive):
        # nothing after it is read or answered; the connection closes after its response
        # (RFC 9112 §9.6), once it is the active one.
        self.close_requested = False
        self.close_reason = ""
        self.timer: IDelayedCall | None = None
        self.timer_at = 0.0  # when the timer fires (kept here: getTime() is a call)
        self.timer_kind: TimerKind = ""
        self.deadline = 0.0
        self.parsing: _Request | None = None
        self.url_parts: list[bytes] = []
        self.header_bytes = 0
        self.in_head = False
        # Header fields dropped for an underscore in the current head, and the first name:
        # logged once per request, from on_headers_complete.
        self.dropped_headers = 0
        self.dropped_name = b""
        # A chunked request body being parsed: the bytes of chunk data since the last chunk
        # header of this read (-1: no unchecked chunk header), and what follows the last LF
        # of the earlier reads (the start of a chunk-size line split over reads).
        self.chunked_body = False
        self.chunk_open = -1
        self.chunk_tail = b""
        self.chunk_tail_cut = False
        # The chunk-size line walk of a chunked body (_walk_chunks): its state, the data and
        # CRLF bytes left of the chunk it is in, and the size line begun in an earlier read.
        self.walk = _WALK_OFF
        self.walk_left = 0
        self.walk_line = b""
        # The read being parsed (for on_message_complete's walk), held only during the parse.
        self.read_data = b""
        # Reads parsed, and the one in which the message being parsed began and the last one
        # ended: a walk starts only when its head is the first thing of the read.
        self.reads = 0
        self.message_read = 0
        self.completed_read = 0
        self.queue: collections.deque[_Request] = collections.deque()
        self.active: _Exchange | None = None
        self.pending_reject = 0
        self.linger_until = 0.0  # when LINGERING ends at the latest
        # The client's bytes after an Upgrade request (UPGRADING), and through the tunnel.
        self.tunnel_early: list[bytes] = []
        self.tunnel_in = 0  # bytes from the client through an upgraded tunnel
        self.last_activity = 0.0
        self.client_batch: list[bytes] | None = None
        # The active upstream connection's gate while it is registered as the client
        # transport's producer (see _pace_upstream).
        self.pacing: ReadGate | None = None
        self.paces_lazily = False

    @property
    def lost(self) -> bool:
        """Whether the client connection is gone."""
        return self.phase is _CLOSED

    @property
    def lingering(self) -> bool:
        """Whether the connection is half-closed, reading and discarding (see :meth:`_linger`)."""
        return self.phase is _LINGERING

    # Client connection events.

    def connectionMade(self) -> None:
        factory = self.factory
        self.client_transport = cast(RelayTransport, self.transport)
        if not factory.admit(self):
            _log.warn(
                "frontend {frontend}: refused {client}: {limit} connections already open "
                "(max_connections)",
                frontend=factory.frontend,
                client=self.client_ip or "-",
                limit=factory.max_connections,
            )
            lose_connection(self.client_transport)
            return
        self.counted = True
        # Responses go out at the end of the reactor turn: the turn's responses to all clients
        # together, which wakes each waiting client once per turn (see _transport.sender).
        self.send = sender(self.client_transport, self._pace_upstream, at_turn_end=True)
        self.paces_lazily = sends_at_once(self.client_transport)
        self.gate = ReadGate(self.client_transport)
        self._set_timer("header", factory.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        phase = self.phase
        if phase is not _READING:
            if phase is _TUNNEL:
                self.last_activity = self.seconds()
                self.tunnel_in += len(data)
                exchange = self.active
                if exchange is not None and exchange.upstream is not None:
                    exchange.upstream.send(data)
            elif phase is _LINGERING:
                self.last_activity = self.seconds()
            elif phase is _UPGRADING and self.active is not None and self.active.request.upgrade:
                self.tunnel_early.append(data)
            return
        self.last_activity = self.seconds()
        self.reads += 1
        self.read_data = data
        try:
            self.parser.feed_data(data)
            if self.walk:
                self._walk_chunks(data)
            if self.chunked_body:
                self._chunked_read(data)
            if self.active is None and self.queue:
                self._next_request()
        except httptools.HttpParserUpgrade as upgrade:
            self.phase = _UPGRADING
            offset = upgrade.args[0] if upgrade.args else len(data)
            if offset < len(data):
                self.tunnel_early.append(data[offset:])
            self.gate.pause("upgrade")
            if self.active is None and self.queue:
                self._next_request()
        except httptools.HttpParserCallbackError as e:
            error = e.__context__
            if isinstance(error, _RequestError):
                self._reject(error.status)
            else:
                self._internal_error(Failure(error or e))
        except _RequestError as e:
            self._reject(e.status)
        except httptools.HttpParserError as e:
            reason = str(e)
            if reason == _H2_PREFACE_ERROR:  # llhttp stops at "PRI * HTTP/2.0"; nginx 1.22's 400
                reason = _H2_PREFACE
            if not self.close_requested:  # (llhttp refuses any byte after such a request)
                _log.info(
                    "frontend {frontend}: malformed request from {client}: {error}",
                    frontend=self.factory.frontend,
                    client=self.client_ip or "-",
                    error=reason,
                )
            self._reject(400)
        except Exception:
            self._internal_error(Failure())
        finally:
            self.read_data = b""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.phase = _CLOSED
        self._stop_timer()
        exchange = self.active
        if exchange is not None:
            if exchange.phase is not _DONE and exchange.status < 200:
                exchange.status = CLIENT_CLOSED
            self._abort_exchange()
        if self.counted:
            self.counted = False
            self.factory.forget(self)
            self.factory.connection_finished()

    # Parser callbacks (httptools).

    def on_message_begin(self) -> None:
        self.message_read = self.reads
        # dataReceived has just read the clock, for the bytes being parsed.
        self.parsing = _Request(self.last_activity)
        self.url_parts = []
        self.header_bytes = 0
        self.in_head = True
        if self.active is None and self.timer_kind == "idle":
            self._set_timer("header", self.factory.header_timeout, self.last_activity)

    # on_url and on_header count the head's bytes against max_header_bytes (431) inline:
    # they run several times per request.

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)
        self.header_bytes += len(url)
        if self.header_bytes > self.factory.max_header_bytes:
            raise _RequestError(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer field of a chunked body: dropped, as nginx does
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.factory.max_header_bytes:
            raise _RequestError(431)
        if b"_" in name and not self.factory.underscores_in_headers:
            # Some backends (CGI-style gateways) read "_" as "-": X_Forwarded_For would pass
            # for X-Forwarded-For, Transfer_Encoding for Transfer-Encoding. Dropped, as nginx
            # does with underscores_in_headers off; counted, and logged once per request.
            if not self.dropped_headers:
                self.dropped_name = name
            self.dropped_headers += 1
            return
        request = self.parsing
        assert request is not None
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        self.in_head = False
        if self.dropped_headers:
            self._log_dropped_headers()
        parser = self.parser
        request.method = parser.get_method()
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            # Any other single-digit version (llhttp is lenient about it, see __init__):
            # HTTP/1.2 to 1.9 as 1.1 (RFC 9110 §2.5); HTTP/2.0 and up 505, and 0.x 400, as
            # nginx answers them.
            if version[0] == "1":
                version = "1.1"
            else:
                raise _RequestError(400 if version[0] == "0" else 505)
        request.version = version
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        request.target = b"".join(self.url_parts)
        # The request line (method, target, version, separators) and the closing CRLF too.
        request.head_bytes = self.header_bytes + len(request.method) + 14
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == b"host":
                if request.host is not None:
                    raise _RequestError(400)  # more than one Host (RFC 9112 §3.2)
                request.host = value
            elif lowered == b"content-length":
                request.content_length = int(value)
            elif lowered == b"transfer-encoding":
                # llhttp checked that the final coding is chunked. Other codings would reach
                # the backend undeclared once the body is re-chunked: 501, as nginx does
                # (RFC 9112 §6.1). HTTP/1.0 has no chunked framing: its TE is faulty (400).
                codings = [c.strip().lower() for c in value.split(b",")]
                if request.version == "1.0" or codings[-1] != b"chunked":
                    raise _RequestError(400)
                if len(codings) > 1 or request.chunked:
                    raise _RequestError(501)
                request.chunked = True
        # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, or with an invalid one.
        if request.host is None:
            if version != "1.0":
                raise _RequestError(400)
        elif request.host not in _valid_hosts and not valid_host(request.host):
            raise _RequestError(400)
        if request.target[0] != 0x2F:  # not origin-form: absolute-form, or "*", or CONNECT's
            self._host_from_target(request)
        if request.chunked:
            self.chunked_body = True
            if self.message_read == self.reads and self.completed_read != self.reads:
                self.walk = _WALK_HEAD
        request.max_body_bytes = limit = self.factory.max_body_bytes
        if limit and request.content_length is not None and request.content_length > limit:
            raise _RequestError(413)
        self._cancel_timer("header")
        if self.close_requested:
            return  # pipelined after a request that asked to close: never answered
        if not request.keep_alive:
            self.close_requested = True
        # Activated once feed_data returns (never from inside the parser), so that what
        # follows in the same bytes (the body, a smuggling error) is parsed first.
        self.queue.append(request)
        if self.active is not None or len(self.queue) > 1:
            self.gate.pause("pipeline")

    def _host_from_target(self, request: _Request) -> None:
        """
        For an absolute-form target (``GET http://a.test/x``), the target's authority is the
        request's host: the received ``Host`` is replaced by it (added when there is none),
        and routing, ``X-Forwarded-Host`` and ``Forwarded`` ``host=`` use it. RFC 9112
        §3.2.2: a proxy "MUST ignore the received Host header field (if any) and instead
        replace it with the host information of the request-target".

        Raises:
            _RequestError: 400, the authority is not a valid ``host[:port]``.
        """
        split = _split_absolute(request.target)
        if split is None:
            return
        host = split[0]
        if not valid_host(host):
            raise _RequestError(400)
        request.host = host
        headers = request.headers
        for index, (name, _value) in enumerate(headers):
            if name.lower() == b"host":
                headers[index] = (name, host)
                return
        headers.insert(0, (b"Host", host))

    def _log_dropped_headers(self) -> None:
        """One event for the head's header fields dropped for an underscore, then reset."""
        _log.info(
            "frontend {frontend}: dropped {count} header field(s) from {client}: an underscore "
            "in the name, the first {name!r} (underscores_in_headers)",
            frontend=self.factory.frontend,
            count=self.dropped_headers,
            name=self.dropped_name.decode("latin-1"),
            client=self.client_ip or "-",
        )
        self.dropped_headers = 0
        self.dropped_name = b""

    def on_body(self, data: bytes) -> None:
        if not data:
            return  # (llhttp reports an empty read mid-chunk; an empty chunk would end it)
        request = self.parsing
        assert request is not None
        request.body_bytes += len(data)
        limit = request.max_body_bytes
        if limit and request.body_bytes > limit:
            raise _RequestError(413)
        if self.chunk_open >= 0:
            # Data of a chunk whose size is not checked yet (see _chunked_read): held.
            self.chunk_open += len(data)
            request.body.append(data)
        elif self._streams(request):
            self._send_body(data, request.chunked)
        else:
            request.body.append(data)

    # on_chunk_header and on_chunk_complete run for chunked bodies only.

    def on_chunk_header(self) -> None:
        self.chunk_open = 0

    def on_chunk_complete(self) -> None:
        self.chunk_open = -1  # (its size was at most this read's length)

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        if self.walk:
            # Before the request counts as complete and its held body is sent.
            self._walk_chunks(self.read_data)
            self.walk, self.walk_line = _WALK_OFF, b""
        self.parsing = None
        request.complete = True
        self.completed_read = self.reads
        if self.chunked_body:
            self.chunked_body = False
            self.chunk_open = -1
            self.chunk_tail = b""
            self.chunk_tail_cut = False
        exchange = self.active
        if (
            exchange is not None
            and exchange.request is request
            and exchange.phase is not _CONNECTING
        ):
            if request.chunked:
                if request.body:
                    self._send_held(request)
                self._send_upstream(b"0\r\n\r\n")
            self._request_sent()
        if self.closing or self.close_requested:
            self.gate.pause("closing")

    def _chunked_read(self, data: bytes) -> None:
        """
        After a read of a chunked request body: check the size of the chunk still open at
        the end of ``data`` if its header was in ``data``, then send what was held back.

        llhttp takes any size up to 2^64 - 1 and does not say which; only a chunk still open
        at the end of a read can be larger than the read, so only its size line needs to be
        found, and it ends ``chunk_open`` bytes before the end of ``data`` (every byte after
        it is the chunk's data). A size over :data:`MAX_CHUNK_SIZE` is 400, a body that would
        grow past ``max_body_bytes`` 413, before any of the chunk reaches the backend.

        Raises:
            _RequestError: the chunk size is refused.
        """
        request = self.parsing
        assert request is not None
        held = self.chunk_open
        if held >= 0:
            self.chunk_open = -1
            size = self._open_chunk_size(data, len(data) - held)
            if size is not None:
                limit = request.max_body_bytes
                if limit and request.body_bytes - held + size > limit:
                    raise _RequestError(413)
                if size > MAX_CHUNK_SIZE:
                    raise _RequestError(400)
        if request.body and self._streams(request):
            self._send_held(request)
        # What follows the last LF: the start of a chunk-size line, should this read end in one.
        lf = data.rfind(b"\n", max(0, len(data) - _MAX_CHUNK_LINE))
        if lf >= 0:
            self.chunk_tail, self.chunk_tail_cut = data[lf + 1 :], False
        elif len(data) >= _MAX_CHUNK_LINE:
            self.chunk_tail, self.chunk_tail_cut = data[-_MAX_CHUNK_LINE:], True
        else:
            tail = self.chunk_tail + data
            self.chunk_tail = tail[-_MAX_CHUNK_LINE:]
            self.chunk_tail_cut = self.chunk_tail_cut or len(tail) > _MAX_CHUNK_LINE

    def _walk_chunks(self, data: bytes) -> None:
        """
        Walk the chunk-size lines of a chunked request body in ``data``, a read, and refuse
        one longer than ``_MAX_CHUNK_LINE`` bytes (its CRLF included) with 400, whether it
        came in one read or over several. llhttp has parsed ``data`` already, so every line
        is well formed; the walk skips each chunk's data by its size, and ends at the last
        chunk (the trailer section is the parser's, under the header limits). A walk starts
        with the head of the request, when that is the first thing of a read (see
        on_headers_complete); a chunked request pipelined behind another one in the same
        read keeps only the check of :meth:`_open_chunk_size`.

        Raises:
            _RequestError: 400, a chunk-size line is too long.
        """
        state, left, line = self.walk, self.walk_left, self.walk_line
        end = len(data)
        pos = 0
        if state == _WALK_HEAD:
            while data.startswith(b"\r\n", pos):
                pos += 2
            pos = data.find(b"\r\n\r\n", pos) + 4  # (llhttp found the end of the head here)
            state = _WALK_LINE
        while pos < end:
            if state == _WALK_DATA:
                step = min(left, end - pos)
                pos += step
                left -= step
                if left:
                    break
                state = _WALK_LINE
                continue
            room = _MAX_CHUNK_LINE - len(line)
            lf = data.find(b"\n", pos, pos + room)
            if lf < 0:
                if end - pos >= room:
                    raise _RequestError(400)
                line += data[pos:]
                break
            if line:
                match = _CHUNK_DIGITS.match(line + data[pos : lf + 1])
            else:
                match = _CHUNK_DIGITS.match(data, pos)
            pos = lf + 1
            line = b""
            size = int(match.group(), 16) if match is not None else 0
            if not size:
                state = _WALK_OFF  # the last chunk
                break
            left = size + 2
            state = _WALK_DATA
        self.walk, self.walk_left, self.walk_line = state, left, line

    def _open_chunk_size(self, data: bytes, end: int) -> int | None:
        """
        The size of the chunk whose size line ends (after its LF) at ``data[end]``, or
        ``None`` when no size line ends there (the chunk's data is all here and its CRLF is
        not, so the chunk is no larger than this read; or the trailer section has begun).

        Raises:
            _RequestError: 400, the size line is longer than ``_MAX_CHUNK_LINE`` bytes.
        """
        start = data.rfind(b"\n", max(0, end - 1 - _MAX_CHUNK_LINE), max(0, end - 1)) + 1
        if start:
            line = data[start:end]
        elif end - 1 >= _MAX_CHUNK_LINE or self.chunk_tail_cut:
            raise _RequestError(400)
        else:
            line = self.chunk_tail + data[:end]  # begun in an earlier read
        match = _CHUNK_SIZE.fullmatch(line)
        return None if match is None else int(match.group(1), 16)

    def _streams(self, request: _Request) -> bool:
        """Whether ``request``'s body goes to its backend as it comes: active, head sent."""
        exchange = self.active
        return (
            exchange is not None
            and exchange.request is request
            and exchange.phase is not _CONNECTING
        )

    def _send_held(self, request: _Request) -> None:
        """Send the request body held in ``request.body`` while its chunk size was checked."""
        body, request.body = request.body, []
        self._send_upstream(b"".join([self._frame_body(piece, True) for piece in body]))

    # The active exchange: routing, picking, connecting.

    def _activate(self, request: _Request) -> None:
        if not request.keep_alive:
            self.closing = True
        router = self.factory.router
        # Without routes every request goes to the default pool: no need to look.
        pool = router.route(request.host, request.target) if router.routes else router.default
        info = ConnectionInfo(
            self.client_address,
            method=request.method,
            host=request.host,
            path=request.target,
            headers=request.headers,
            now=self.seconds(),
        )
        exchange = self.active = _Exchange(request, pool, info)
        self._pick(exchange)

    def _pick(self, exchange: _Exchange) -> None:
        pool = exchange.pool
        lease = pool.pick(exchange.info, exchange.tried)
        if lease is None:
            if exchange.tried:
                self._respond_error(502, "no backend left to try")
            else:
                _log.warn(
                    "frontend {frontend}: no backend available in pool {pool}",
                    frontend=self.factory.frontend,
                    pool=pool.name,
                )
                self._respond_error(503, "no backend available")
            return
        exchange.lease = lease
        backend = exchange.backend = lease.backend
        exchange.tried.append(backend)
        backend.in_flight_requests += 1
        backend.requests_total += 1
        connection = self.factory.upstreams.take_idle(backend)
        if connection is not None:
            self._use(exchange, connection)
        else:
            self._connect(exchange, backend)

    def _connect(self, exchange: _Exchange, backend: Backend) -> None:
        # Read nothing more from the client until there is somewhere to send it.
        self.gate.pause("upstream")
        connecting = self.factory.upstreams.connect(backend, exchange.pool)
        exchange.connecting = connecting
        connecting.addCallbacks(
            self._connected, self._connect_failed, callbackArgs=(exchange,), errbackArgs=(exchange,)
        )

    def _connected(self, connection: UpstreamConnection, exchange: _Exchange) -> None:
        exchange.connecting = None
        exchange.t_connected = self.seconds()
        self._use(exchange, connection)

    def _connect_failed(self, failure: Failure, exchange: _Exchange) -> None:
        exchange.connecting = None
        backend = exchange.backend
        pool = exchange.pool
        assert backend is not None
        self._release_backend(exchange)
        if exchange is not self.active:
            return  # cancelled: the exchange ended (the client went away, an abort)
        backend.connect_failures += 1
        backend.connect_errors[connect_error_reason(failure.value)] += 1
        reason = describe_error(failure.value)
        pool.report_failure(backend, reason)
        left = pool.attempts_left(exchange.tried)
        _log.warn(
            "frontend {frontend}: connect to backend {backend} ({address}) in pool {pool} "
            "failed: {reason}; attempts left: {left}",
            frontend=self.factory.frontend,
            backend=backend.name,
            address=str(backend.address),
            pool=pool.name,
            reason=reason,
            left=left,
        )
        if left > 0:
            backend.retries[RETRY_CONNECT_FAILED] += 1
            self._pick(exchange)
        else:
            self._respond_error(502, "backend connect failed")

    def _release_backend(self, exchange: _Exchange) -> None:
        """Give back ``exchange``'s backend (lease and in-flight count)."""
        lease = exchange.lease
        if lease is not None and not lease.released:
            lease.release()
            lease.backend.in_flight_requests -= 1

    def _use(self, exchange: _Exchange, connection: UpstreamConnection) -> None:
        """Send the active request over ``connection``."""
        request = exchange.request
        exchange.upstream = connection
        # Flow control: each side reads only as fast as the other side's write buffer
        # empties. Over TCP, each gate is registered as the other transport's producer only
        # once that transport has to queue bytes.
        connection.attach(self)
        if not self.paces_lazily:
            self._pace_upstream()
        if exchange.replay:
            # Sending again after a failure: everything sent before, at once.
            replay = exchange.replay
            exchange.replay = []
            exchange.replay_bytes = 0
            self._send_upstream(b"".join(replay))
        else:
            # The head and whatever body is already here go out in one send.
            parts = [self._request_head(request)]
            if exchange.phase is _CONNECTING:
                exchange.phase = _AWAITING
            body, request.body = request.body, []
            for chunk in body:
                parts.append(self._frame_body(chunk, request.chunked))
            if request.complete and request.chunked:
                parts.append(b"0\r\n\r\n")
            self._send_upstream(parts[0] if len(parts) == 1 else b"".join(parts))
        if request.complete:
            self._request_sent()
        else:
            self._set_timer("transfer", self.factory.client_timeout)
        if self.gate.reasons:  # paused while connecting, not when an idle connection served
            self.gate.resume("upstream")

    def _request_head(self, request: _Request) -> bytes:
        factory = self.factory
        headers = forward_request_headers(
            request.headers,
            client_ip=self.client_ip or "unknown",
            proto=factory.proto,
            trusted=factory.trusted_proxies,
        )
        if request.host is None:
            exchange = self.active
            assert exchange is not None and exchange.backend is not None
            headers.insert(0, (b"Host", str(exchange.backend.address).encode()))
        if request.upgrade:
            for name, value in request.headers:
                if name.lower() == b"upgrade":
                    headers.append((b"Upgrade", value))
            headers.append((b"Connection", b"upgrade"))
        if request.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        return serialize_head(request.method + b" " + request.target + b" HTTP/1.1", headers)

    def _frame_body(self, data: bytes, chunked: bool) -> bytes:
        """Count a piece of request body as sent, and frame it as a chunk when chunked."""
        exchange = self.active
        assert exchange is not None
        exchange.body_sent += len(data)
        return b"%x\r\n%b\r\n" % (len(data), data) if chunked else data

    def _send_body(self, data: bytes, chunked: bool) -> None:
        self._send_upstream(self._frame_body(data, chunked))

    def _send_upstream(self, data: bytes) -> None:
        exchange = self.active
        assert exchange is not None and exchange.upstream is not None
        replay = exchange.replay
        if replay is not None:
            exchange.replay_bytes += len(data)
            if exchange.replay_bytes > REPLAY_LIMIT:
                exchange.replay = None
            else:
                replay.append(data)
        exchange.upstream.send(data)

    def _request_sent(self) -> None:
        """The whole request is written to the backend: wait for its response."""
        exchange = self.active
        assert exchange is not None
        exchange.t_sent = now = self.seconds()
        if exchange.phase is _AWAITING:
            self._set_timer("response", exchange.pool.response_timeout, now)

    def _transfer_stalled(self) -> None:
        """
        No byte either way for ``client_timeout`` while a body was streaming: a request body
        that stops coming is answered 408 (nginx ``client_body_timeout``); a response that
        stops midway can only be cut (nginx ``proxy_read_timeout``, HAProxy ``timeout
        server``/``client``).
        """
        exchange = self.active
        assert exchange is not None
        _log.warn(
            "frontend {frontend}: no bytes for {timeout} s while streaming a body between "
            "{client} and backend {backend}; closing",
            frontend=self.factory.frontend,
            timeout=self.factory.client_timeout,
            client=self.client_ip or "-",
            backend=exchange.backend.name if exchange.backend else "-",
        )
        self._detach_upstream(reuse=False)
        if exchange.phase is _RESPONDING:
            self._abort_client()
        else:
            self._respond_error(408, "request body stalled")

    def _response_timed_out(self) -> None:
        exchange = self.active
        assert exchange is not None
        pool = exchange.pool
        backend = exchange.backend
        _log.warn(
            "frontend {frontend}: backend {backend} in pool {pool} sent no response within "
            "{timeout} s (response_timeout)",
            frontend=self.factory.frontend,
            backend=backend.name if backend else "-",
            pool=pool.name,
            timeout=pool.response_timeout,
        )
        if backend is not None:
            # A backend that does not answer must not look fast to least_time.
            now = self.seconds()
            backend.response_time.observe(now - (exchange.t_sent or now), now)
            pool.report_failure(backend, f"no response within {pool.response_timeout} s")
        if exchange.upstream is not None:
            self._detach_upstream(reuse=False)
        self._respond_error(504, "response timeout")

    # Response events, from the upstream connection.

    def response_headers_complete(self) -> None:
        exchange = self.active
        assert exchange is not None
        upstream = exchange.upstream
        request = exchange.request
        assert upstream is not None
        status = upstream.parser.get_status_code()
        now = self.last_activity  # (batch_begin has just read the clock, for this read)
        if exchange.phase is _AWAITING:
            exchange.t_first_byte = now
            self._cancel_timer("response")
            backend = exchange.backend
            assert backend is not None
            backend.response_time.observe(now - (exchange.t_sent or request.started), now)
            exchange.pool.report_response(backend, status)
        exchange.status = status
        phrase = b"".join(upstream.reason_parts) or reason(status)
        exchange.response_headers = fields = upstream.headers
        names = [name.lower() for name, _ in fields]
        headers = remove_hop_by_hop(fields, names)
        if status < 200:
            exchange.phase = _INTERIM
            if status == 101:
                # The switch itself is hop-by-hop, and this hop is the one switching.
                for name, value in fields:
                    if name.lower() == b"upgrade":
                        headers.append((b"Upgrade", value))
                headers.append((b"Connection", b"Upgrade"))
                exchange.pending_head = serialize_head(b"HTTP/1.1 101 " + phrase, headers)
            elif request.version == "1.1":
                self._send_client(serialize_head(b"HTTP/1.1 %d %b" % (status, phrase), headers))
            return
        exchange.phase = _RESPONDING
        if not upstream.parser.should_keep_alive():
            upstream.reusable = False
        framing: Framing
        if request.method == b"HEAD" or status in _NO_BODY_STATUSES:
            framing = "none"
        elif b"content-length" in names:
            framing = "length"
        elif request.version == "1.1":
            framing = "chunked"
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            framing = "close"
        if framing == "close" or not request.complete:
            # The connection ends with this response: a refusal still owed cannot follow it.
            self.closing = True
            self.pending_reject = 0
        elif self.phase is not _READING and not self._answers_follow(request):
            self.closing = True
        if self.closing and not self.pending_reject:
            headers.append((b"Connection", b"close"))
        elif request.version == "1.0":
            headers.append((b"Connection", b"keep-alive"))
        exchange.framing = framing
        if framing != "none":
            self._set_timer("transfer", self.factory.client_timeout, now)
        self._send_client(serialize_head(b"HTTP/1.1 %d %b" % (status, phrase), headers))
        if framing == "none":
            if request.method == b"HEAD":
                upstream.new_parser()
            self._response_done()

    def response_body(self, data: bytes) -> None:
        exchange = self.active
        assert exchange is not None
        framing = exchange.framing
        if framing == "chunked":
            self._send_client(b"%x\r\n%b\r\n" % (len(data), data))
        elif framing == "none":
            if exchange.upstream is not None:
                exchange.upstream.reusable = False  # a body where none may be
        else:
            self._send_client(data)

    def response_complete(self) -> None:
        exchange = self.active
        if exchange is None or exchange.phase is not _RESPONDING:
            return  # the end of a 1xx, or of a response answered already
        if exchange.framing == "chunked":
            self._send_client(b"0\r\n\r\n")
        self._response_done()

    def response_upgraded(self, data: bytes) -> None:
        exchange = self.active
        if exchange is None or not exchange.request.upgrade or exchange.status != 101:
            self.response_malformed(ValueError("101 without an upgrade request"))
            return
        self._send_client(exchange.pending_head)
        self.phase = _TUNNEL
        exchange.phase = _DONE
        self.last_activity = self.seconds()
        if data:
            self._send_client(data)
        early, self.tunnel_early = self.tunnel_early, []
        upstream = exchange.upstream
        assert upstream is not None
        for chunk in early:
            self.tunnel_in += len(chunk)
            upstream.send(chunk)
        self.gate.resume("upgrade")
        self._set_timer("tunnel", self.factory.tunnel_timeout)

    def tunnel_data(self, data: bytes) -> None:
        self.last_activity = self.seconds()
        self._send_client(data)

    def response_malformed(self, error: Exception) -> None:
        exchange = self.active
        assert exchange is not None
        backend = exchange.backend
        _log.warn(
            "frontend {frontend}: backend {backend} sent a malformed response: {error}",
            frontend=self.factory.frontend,
            backend=backend.name if backend else "-",
            error=str(error),
        )
        if backend is not None:
            exchange.pool.report_failure(backend, f"malformed response: {error}")
        self._detach_upstream(reuse=False)
        if exchange.phase is _RESPONDING:
            self._abort_client()
        else:
            self._respond_error(502, "malformed response")

    def upstream_lost(self, connection: UpstreamConnection, reason: Failure) -> None:
        exchange = self.active
        if exchange is None or connection is not exchange.upstream:
            return
        if self.phase is _TUNNEL:
            # Unhook it the usual way, so that it is no longer the client's producer: over
            # TLS a registered producer would hold the client's close for ever.
            self._detach_upstream(reuse=False)
            self._finish_exchange()
            self._flush_batch()
            lose_connection(self.client_transport)
            return
        if exchange.phase is _RESPONDING:
            if exchange.framing in ("chunked", "close") and not _framed(exchange):
                # A close-delimited response ends when the backend closes (RFC 9112 §6.3).
                self.response_complete()
            else:
                self._detach_upstream(reuse=False)
                self._abort_client()
            return
        self._detach_upstream(reuse=False)
        self._retry_or_fail(exchange, connection, reason)

    def _retry_or_fail(
        self, exchange: _Exchange, connection: UpstreamConnection, reason: Failure
    ) -> None:
        request = exchange.request
        backend = exchange.backend
        pool = exchange.pool
        assert backend is not None
        self._cancel_timer("response", "transfer")
        idempotent = request.method in IDEMPOTENT_METHODS
        replayable = exchange.replay is not None and (idempotent or exchange.body_sent == 0)
        reused = connection.requests > 1
        if reused and not exchange.reuse_retried and replayable:
            # The keep-alive race: the backend closed an idle connection as we reused it.
            exchange.reuse_retried = True
            backend.retries[RETRY_STALE_CONNECTION] += 1
            self._connect(exchange, backend)
            return
        self._release_backend(exchange)
        pool.report_failure(backend, f"closed before responding: {reason.getErrorMessage()}")
        _log.warn(
            "frontend {frontend}: backend {backend} in pool {pool} closed the connection "
            "before responding: {reason}",
            frontend=self.factory.frontend,
            backend=backend.name,
            pool=pool.name,
            reason=reason.getErrorMessage(),
        )
        if idempotent and replayable and len(exchange.tried) <= pool.retries:
            backend.retries[RETRY_RESET] += 1
            self._pick(exchange)
        else:
            self._respond_error(502, "backend closed the connection")

    # Ending an exchange.

    def _send_client(self, data: bytes) -> None:
        exchange = self.active
        if exchange is not None:
            exchange.bytes_out += len(data)
        if self.phase is _CLOSED:
            return
        if self.client_batch is not None:
            self.client_batch.append(data)
        else:
            self.send(data)

    def batch_begin(self) -> None:
        """
        Hold what is written to the client until :meth:`batch_end`: what one read from the
        backend produces (a response head, its body, the final chunk) goes out in one send,
        as one segment, instead of one small segment per part.
        """
        # Called once per read from the backend: that is activity for the transfer deadline.
        self.last_activity = self.seconds()
        if self.client_batch is None:
            self.client_batch = []

    def _flush_batch(self) -> None:
        """
        Send what an open batch holds now, and go on batching: before the client connection
        is closed, since a TLS transport drops what is written after ``loseConnection``.
        """
        batch = self.client_batch
        if batch:
            self.client_batch = []
            if self.phase is not _CLOSED:
                self.send(batch[0] if len(batch) == 1 else b"".join(batch))

    def batch_end(self) -> None:
        """Send what :meth:`batch_begin` held."""
        batch, self.client_batch = self.client_batch, None
        if batch and self.phase is not _CLOSED:
            self.send(batch[0] if len(batch) == 1 else b"".join(batch))

    def _pace_upstream(self) -> None:
        """
        Register the active upstream connection's gate as the client transport's producer,
        once per exchange: its reading then follows the client's write buffer. Called before
        bytes are queued for the client (a backlog), or at once for transports that queue
        every write.
        """
        exchange = self.active
        if exchange is None:
            return
        upstream = exchange.upstream
        if upstream is not None and self.pacing is None and upstream.gate is not None:
            self.pacing = upstream.gate
            self.client_transport.registerProducer(upstream.gate, True)

    def _detach_upstream(self, *, reuse: bool) -> None:
        """Unhook the upstream connection from this exchange; keep it for reuse or close it."""
        exchange = self.active
        if exchange is None:
            upstream = None
        else:
            upstream, exchange.upstream = exchange.upstream, None
        gate, self.pacing = self.pacing, None
        if gate is not None:
            if self.phase is not _CLOSED:
                self.client_transport.unregisterProducer()
            gate.resume("consumer")
        if upstream is None:
            return
        upstream.handler = None
        upstream.unpace_handler()
        if reuse and upstream.reusable:
            self.factory.upstreams.release(upstream)
        elif not upstream.lost:
            upstream.abort()

    def _response_done(self) -> None:
        """The response is written out: log, recycle, and go on with the next request."""
        exchange = self.active
        assert exchange is not None
        request = exchange.request
        exchange.phase = _DONE
        reusable = request.complete and exchange.body_sent == request.body_bytes
        self._detach_upstream(reuse=reusable)
        self._finish_exchange()
        if self.phase is _CLOSED or (self.closing and not self.pending_reject):
            self._close_client()
            return
        self._next_request()

    def _next_request(self) -> None:
        if self.queue:
            request = self.queue.popleft()
            if not self.queue and self.gate.reasons:  # usually nothing pauses the client
                self.gate.resume("pipeline")
            self._activate(request)
            return
        if self.closing:
            self._close_client()
            return
        if self.parsing is not None:
            self._set_timer("header", self.factory.header_timeout)
        else:
            self._set_timer("idle", self.factory.client_timeout)

    def _finish_exchange(self) -> None:
        """Account for the active exchange (once) and forget it."""
        exchange = self.active
        if exchange is None:
            return
        self.active = None
        request = exchange.request
        if exchange.connecting is not None:
            connecting, exchange.connecting = exchange.connecting, None
            connecting.cancel()
        self._cancel_timer("response", "transfer")
        lease = exchange.lease
        backend = lease.backend if lease is not None else None
        self._release_backend(exchange)
        # The metrics' counters: a few additions per request.
        factory = self.factory
        status = exchange.status
        bytes_in = request.head_bytes + request.body_bytes + self.tunnel_in
        bytes_out = exchange.bytes_out
        factory.bytes_in += bytes_in
        factory.bytes_out += bytes_out
        if 100 <= status <= 599 and status != CLIENT_CLOSED:
            factory.responses[status // 100 - 1] += 1
            if backend is not None:
                backend.responses[status // 100 - 1] += 1
        if backend is not None:
            backend.bytes_in += bytes_in
            backend.bytes_out += bytes_out
        now = self.seconds()
        started = request.started
        t_first_byte = exchange.t_first_byte
        pool = exchange.pool
        pool.request_seconds.observe(now - started)
        if t_first_byte:
            pool.first_byte_seconds.observe(t_first_byte - started)
        access_log = factory.access_log
        if access_log is None:
            return
        access_log.http(
            factory.frontend,
            self.client_ip or "-",
            request.method,
            request.target,
            status,
            bytes_in,
            bytes_out,
            backend.name if backend is not None else "-",
            _ms(exchange.t_connected - started) if exchange.t_connected else 0,
            _ms(t_first_byte - started) if t_first_byte else None,
            _ms(now - started),
        )

    def _respond_error(self, status: int, why: str) -> None:
        """Answer the active request with an error, if nothing of its response was sent."""
        exchange = self.active
        if exchange is None:
            return
        if exchange.phase is _RESPONDING:
            self._abort_client()
            return
        request = exchange.request
        exchange.status = status
        self._detach_upstream(reuse=False)
        # A request pipelined before a refused one is answered without closing: the refusal,
        # still owed, comes next and closes.
        owed = self._answers_follow(request) and request.complete
        close = not request.complete or ((self.closing or self.phase is not _READING) and not owed)
        if close:
            self.closing = True
            self.pending_reject = 0
        self._send_client(error_response(status, close=close, head=request.method == b"HEAD"))
        exchange.phase = _DONE
        self._finish_exchange()
        if close:
            self._close_client()
        else:
            self.gate.resume("upstream")
            self._next_request()

    def _answers_follow(self, request: _Request) -> bool:
        """
        Whether more responses follow ``request``'s on this connection although the parser is
        done: a refusal still owed, or the queued requests up to one that asked to close.
        """
        return bool(self.pending_reject) or (self.close_requested and request.keep_alive)

    def _reject(self, status: int) -> None:
        """
        Answer a request the parser refused (400, 413, 431) and close: at once, or after the
        responses to the requests before it. After a request that asked to close, nothing more
        is answered (RFC 9112 §9.6): the connection closes after that request's response.
        """
        already_closing = self.closing
        if self.phase is _READING:
            self.phase = _STOPPED
        self.gate.pause("closing")
        if self.close_requested:
            # What follows a request that asked to close is never answered; that request
            # closes the connection once it is answered (closing is set when it is active).
            if self.active is None and self.queue:
                self._next_request()
            return
        self.closing = True
        bad = self.parsing
        _log.info(
            "frontend {frontend}: answered {status} to {client}",
            frontend=self.factory.frontend,
            status=status,
            client=self.client_ip or "-",
        )
        if bad is not None and self.active is not None and bad is self.active.request:
            self._respond_error(status, "bad request")
            return
        if bad is not None and bad in self.queue:
            self.queue.remove(bad)
        if not already_closing:
            self.pending_reject = status
        if self.active is None:
            if self.queue:
                # Requests pipelined before the refused one, in the same read: answer them
                # first (RFC 9112 §9.3.2); the refusal follows the last of them.
                self._next_request()
            else:
                self._cancel_timer()
                self._close_client()

    def _close_client(self) -> None:
        """Close the client connection, after the error response still owed, if any."""
        if self.phase is _CLOSED:
            return
        if self.pending_reject:
            status, self.pending_reject = self.pending_reject, 0
            self.factory.responses[status // 100 - 1] += 1
            self._send_client(error_response(status))
            self._log_rejected(status)
        self._flush_batch()
        if (self.phase is not _READING or self.parsing is not None) and self._linger():
            return
        lose_connection(self.client_transport)

    def _linger(self) -> bool:
        """
        Close as nginx's ``lingering_close``, when the client may still be sending (a request
        refused or answered before all of it was read): half-close once the response is
        written (FIN), then read and discard what the client sends until it closes, or for
        ``lingering_timeout`` without a byte, or ``lingering_time`` in all; then close.
        Closing a socket with unread bytes makes the kernel send a reset, which may reach
        the client before it reads the response, and lose it (RFC 9112 §9.6). Over TLS the
        FIN is a close_notify, and the TCP connection stays open while the client's bytes are
        discarded (see :func:`~twisted_lb._transport.close_writing`).

        Returns whether the connection lingers (else the caller closes it).
        """
        if self.phase is _LINGERING or self.close_reason:
            return False  # (a balancer shutting down does not linger)
        if not close_writing(self.client_transport):
            return False
        self.phase = _LINGERING
        now = self.seconds()
        self.last_activity = now
        self.linger_until = now + self.factory.lingering_time
        for why in list(self.gate.reasons):
            self.gate.resume(why)
        self._set_timer("linger", min(self.factory.lingering_timeout, self.factory.lingering_time))
        return True

    def _log_rejected(self, status: int) -> None:
        """The access line of a request refused before it had an exchange."""
        access_log = self.factory.access_log
        if access_log is None:
            return
        request = self.parsing
        access_log.http(
            self.factory.frontend,
            self.client_ip or "-",
            (self.parser.get_method() or b"-") if request is not None and request.method else b"-",
            (b"".join(self.url_parts) if request is not None else b"") or b"-",
            status,
            self.header_bytes,
            len(error_response(status)),
            "-",
            0,
            None,
            _ms(self.seconds() - request.started) if request is not None else 0,
        )

    def _abort_client(self) -> None:
        self._finish_exchange()
        if self.phase is not _CLOSED:
            self.client_transport.abortConnection()

    def _abort_exchange(self) -> None:
        """The client is gone: cut the upstream exchange short; its connection is not reused."""
        self._detach_upstream(reuse=False)
        self._finish_exchange()

    def internal_error(self, failure: Failure) -> None:
        """A bug of ours surfaced while handling this connection: log it, answer 500 or close."""
        self._internal_error(failure)

    def _internal_error(self, failure: Failure) -> None:
        _log.failure(
            "frontend {frontend}: internal error on a connection from {client}",
            failure,
            frontend=self.factory.frontend,
            client=self.client_ip or "-",
        )
        if self.phase is _READING:
            self.phase = _STOPPED
        self.closing = True
        # Nothing more is answered on this connection: the 500 closes it.
        self.pending_reject = 0
        self.close_requested = False
        self.queue.clear()
        if self.active is not None and self.active.phase is not _RESPONDING:
            self._respond_error(500, "internal error")
        else:
            self._abort_client()

    # Timers.

    def _set_timer(self, kind: TimerKind, seconds: float, now: float | None = None) -> None:
        """
        Arm the connection's one deadline: ``header`` (408), ``idle`` (close quietly),
        ``response`` (504), ``transfer`` (no byte either way for ``client_timeout`` while a
        body streams: 408 or a cut), ``tunnel`` (close) or ``linger`` (close; see
        :meth:`_linger`).

        The timer is lazy: changing the deadline does not cancel and re-create a DelayedCall
        (a heap operation per request); the timer fires, finds the deadline later, and
        sleeps again. It is moved sooner only when the new deadline is before it. ``now`` is
        the reactor's time, when the caller has just read it.
        """
        self.timer_kind = kind
        self.deadline = deadline = (self.seconds() if now is None else now) + seconds
        timer = self.timer
        if timer is None:
            self.timer = self.factory.reactor.callLater(seconds, self._timer_fired)
            self.timer_at = deadline
        elif self.timer_at > deadline + 1e-6:
            timer.reset(seconds)
            self.timer_at = deadline

    def _cancel_timer(self, *kinds: TimerKind) -> None:
        """Disarm the deadline (only if it is of one of ``kinds``, when given); stays lazy."""
        if not kinds or self.timer_kind in kinds:
            self.timer_kind = ""

    def _stop_timer(self) -> None:
        """Cancel the timer for good: the connection is gone."""
        self.timer_kind = ""
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        kind = self.timer_kind
        if not kind:
            return
        if kind == "tunnel":
            self.deadline = self.last_activity + self.factory.tunnel_timeout
        elif kind == "transfer":
            self.deadline = self.last_activity + self.factory.client_timeout
        elif kind == "linger":
            self.deadline = min(
                self.last_activity + self.factory.lingering_timeout, self.linger_until
            )
        left = self.deadline - self.seconds()
        if left > 1e-6:
            self.timer = self.factory.reactor.callLater(left, self._timer_fired)
            self.timer_at = self.deadline
            return
        self.timer_kind = ""
        if kind == "response":
            self._response_timed_out()
        elif kind == "transfer":
            self._transfer_stalled()
        elif kind == "tunnel":
            self.close("tunnel timeout")
        elif kind == "linger":
            # At once: the response may still be queued behind a client that does not read.
            self.client_transport.abortConnection()
        elif kind == "header" and self.parsing is not None:
            self._reject(408)
        else:
            # No request started: close quietly, as nginx and HAProxy do with idle keep-alives.
            lose_connection(self.client_transport)

    # FrontendConnection.

    def close(self, ended: str) -> None:
        """Close after the active response (at once when idle)."""
        self.closing = True
        self.close_reason = ended
        if self.active is None or self.phase is _TUNNEL:
            if self.phase is _TUNNEL:
                self._detach_upstream(reuse=False)
                self._finish_exchange()
            self._flush_batch()
            lose_connection(self.client_transport)

    def abort(self, ended: str) -> None:
        """Close at once, dropping what is buffered."""
        self._detach_upstream(reuse=False)
        self._finish_exchange()
        self.client_transport.abortConnection()

    def drain(self) -> None:
        """Close after the active response (at once when idle); a tunnel runs on."""
        if self.phase is not _TUNNEL:
            self.close("drain")


def _framed(exchange: _Exchange) -> bool:
    """Whether the backend's response had Content-Length or chunked framing."""
    return any(
        name.lower() in (b"content-length", b"transfer-encoding")
        for name, _ in exchange.response_headers
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _client_ip(address: IAddress | None) -> str | None:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


# Applications may derive their own factory (to override buildProtocol, say), compiled or not.
@mypyc_attr(allow_interpreted_subclasses=True)
class HTTPProxyFactory(FrontendFactory):
    """
    Builds the HTTP/1.1 reverse proxy protocol for each client connection of one frontend.

    Args:
        reactor: provides ``IReactorTCP`` and ``IReactorTime``; all connects and timers use it.
        pool: where requests go: a :class:`~twisted_lb.pool.Pool`, or a
            :class:`~twisted_lb.http.routing.Router` that picks a pool by host and path.
        upstreams: the keep-alive connections to backends, shared by the frontends of one
            balancer (default: a new one).
        client_timeout: seconds a keep-alive client connection may sit idle between requests.
        header_timeout: seconds to receive a request head, else 408 (HAProxy
            ``timeout http-request``; nginx ``client_header_timeout``).
        max_header_bytes: bytes of request line and header fields, else 431 (RFC 6585).
        max_body_bytes: bytes of request body, else 413; 0 for no limit (nginx
            ``client_max_body_size``).
        trusted_proxies: peers (CIDRs) whose ``X-Forwarded-For`` and ``Forwarded`` are kept
            and appended to; from any other peer they are replaced.
        tunnel_timeout: seconds an upgraded (WebSocket) tunnel may sit idle (HAProxy
            ``timeout tunnel``).
        max_connections: concurrent client connections; past it new ones are closed at once.
        frontend: the frontend's name, for logs.
        proto: ``"http"`` or ``"https"``, for ``X-Forwarded-Proto`` and ``Forwarded``.
        access_log: the access log (see :class:`~twisted_lb._frontend.FrontendFactory`).
        lingering_time: seconds, at most, that a connection closed while its client may
            still be sending (a refused request) reads and discards before it is closed
            (nginx ``lingering_time``, same default).
        lingering_timeout: seconds without a byte from such a client after which it is
            closed sooner (nginx ``lingering_timeout``, same default).
        underscores_in_headers: forward request header fields whose names contain ``_``;
            when false (the default) they are dropped and logged, as nginx's
            ``underscores_in_headers off`` does.

    Raises:
        ValueError: a timeout is not > 0 or a limit is out of range.
    """

    def __init__(
        self,
        reactor: IBalancerReactor,
        pool: Pool | Router,
        *,
        upstreams: Upstreams | None = None,
        client_timeout: float = defaults.CLIENT_TIMEOUT,
        header_timeout: float = defaults.HEADER_TIMEOUT,
        max_header_bytes: int = defaults.MAX_HEADER_BYTES,
        max_body_bytes: int = defaults.MAX_BODY_BYTES,
        trusted_proxies: Sequence[str] = (),
        tunnel_timeout: float = defaults.TUNNEL_TIMEOUT,
        max_connections: int = defaults.MAX_CONNECTIONS,
        frontend: str = "http",
        proto: str = "http",
        access_log: bool | IAccessLog | None = True,
        lingering_time: float = 30.0,
        lingering_timeout: float = 5.0,
        underscores_in_headers: bool = False,
    ) -> None:
        for key, seconds in (
            ("client_timeout", client_timeout),
            ("header_timeout", header_timeout),
            ("tunnel_timeout", tunnel_timeout),
            ("lingering_time", lingering_time),
            ("lingering_timeout", lingering_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"{key} must be > 0 s, not {seconds}")
        if max_header_bytes < 1 or max_body_bytes < 0:
            raise ValueError("max_header_bytes must be >= 1 and max_body_bytes >= 0")
        super().__init__(
            reactor, max_connections=max_connections, frontend=frontend, access_log=access_log
        )
        self.router = pool if isinstance(pool, Router) else Router([], pool)
        self.upstreams = upstreams if upstreams is not None else Upstreams(reactor)
        self.client_timeout = client_timeout
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.tunnel_timeout = tunnel_timeout
        self.proto = proto
        self.lingering_time = lingering_time
        self.lingering_timeout = lingering_timeout
        self.underscores_in_headers = underscores_in_headers

    settings: ClassVar[tuple[str, ...]] = (
        *FrontendFactory.settings,
        "router",
        "client_timeout",
        "header_timeout",
        "max_header_bytes",
        "max_body_bytes",
        "trusted_proxies",
        "tunnel_timeout",
        "underscores_in_headers",
        "proto",
        "lingering_time",
        "lingering_timeout",
    )

    def __repr__(self) -> str:
        return f"<HTTPProxyFactory {self.frontend}>"

    def buildProtocol(self, addr: IAddress | None) -> HTTPProxyProtocol:  # type: ignore[override]
        return HTTPProxyProtocol(self, addr)
