"""
Backend servers for the integration tests, run as subprocesses: ``python _backend.py MODE NAME``.

Each listens on an OS-chosen port of 127.0.0.1 and prints ``PORT <n>`` on stdout.

Modes:
    http: answers every request with ``Hello from NAME`` (HTTP/1.0, then closes).
    bulk: per connection, sends ``BULK_BYTES`` (env, default 100 MB) and at the same time reads
        slowly until the peer's FIN; then prints ``RECEIVED <n>`` and closes.
    echo: an HTTP/1.1 keep-alive server (``http.server``) that answers any method with a JSON
        echo of the request (see :class:`Echo`); it reads Content-Length and chunked bodies,
        answers ``Expect: 100-continue``, serves bodies of any size (Content-Length, chunked or
        close-delimited) and counts the connections it accepted.
    upgrade: answers a request with ``Upgrade`` by ``101 Switching Protocols``, then echoes
        bytes until EOF (a WebSocket stand-in on raw sockets).
    idle-close: HTTP/1.1 keep-alive on raw sockets that closes a connection idle for
        ``IDLE_TIMEOUT`` s (env, default 4.0). Its close lands ``CLOSE_LAG`` s (env, default
        0.05) late, as a busy server's does; a request that arrives in between is dropped
        unanswered (``RACE`` is printed) and the close turns into a reset: the keep-alive race.
        With ``ANSWER_LIMIT`` (env) set to n, it answers n requests on a connection, then reads
        the next one and closes without answering (``DROPPED`` is printed): the race, made
        certain. Requests have no body or a Content-Length one.
    silent: accepts connections and reads them, but never answers.
    tls-echo: ``echo`` over TLS, with the certificate chain ``TLS_CERT`` and key ``TLS_KEY``
        (env, PEM paths).

The HTTP modes print, each on one line: ``CONNECTION <id>`` when a connection is accepted,
``REQUEST <id> <method> <target>`` for each request (``echo`` and ``tls-echo`` follow it
with ``HOST <id> <Host header>``) and ``CLOSED <id> <how>`` when the peer
closed (``eof``) or reset it (the exception's name), or when the server closed it itself.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024

_print_lock = threading.Lock()
_accepted = 0


def say(line: str) -> None:
    """Print one whole line, even from several threads at once."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def new_connection_id() -> int:
    """The next connection number (1, 2, ...), announced with ``CONNECTION <id>``."""
    global _accepted
    with _print_lock:
        _accepted += 1
        number = _accepted
    say(f"CONNECTION {number}")
    return number


def accepted() -> int:
    """Connections accepted so far."""
    with _print_lock:
        return _accepted


def pattern(size: int) -> bytes:
    """``size`` bytes of a fixed, recognisable pattern (the byte values 0..255 repeated)."""
    whole, part = divmod(size, 256)
    return bytes(range(256)) * whole + bytes(range(part))


class Hello(http.server.BaseHTTPRequestHandler):
    name = "?"

    def do_GET(self) -> None:
        body = f"Hello from {self.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Echo(http.server.BaseHTTPRequestHandler):
    """
    An HTTP/1.1 keep-alive handler. Every response has ``X-Backend`` (the name),
    ``X-Connection`` (this connection's id) and ``X-Connections`` (connections accepted so far).

    Targets:
        ``/_bytes?n=N``: a body of ``N`` bytes of :func:`pattern`, with Content-Length;
            ``&chunked=1`` sends it chunked (64 KiB chunks), ``&close=1`` close-delimited,
            ``&fill=x`` sends ``x`` bytes instead of the pattern (cheaper for bulk).
        ``/_slow...``: like any other target, but the request body is read slowly (32 KiB,
            then a 1 ms pause).
        ``/healthz``: a health-check endpoint: ``ok`` with the current health status (200
            at first), or ``failing`` when that status is not 2xx.
        ``/_set?health=N``: sets the status ``/healthz`` answers from now on;
            ``/_set?status=N`` sets the status every other answer has (200 at first).
        anything else: a JSON object with ``method``, ``target``, ``version``, ``headers``
            (a list of ``[name, value]``), ``body_length``, ``body_sha256``, ``chunks`` (of a
            chunked body), ``connection``, ``connections`` and ``requests``.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stalls
    name = "?"
    requests = 0
    connection_id = 0
    health_status = 200
    status = 200

    def setup(self) -> None:
        super().setup()
        self.connection_id = new_connection_id()

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as e:
            how = type(e).__name__
        else:
            how = "eof" if getattr(self, "raw_requestline", b"") == b"" else "closed"
        say(f"CLOSED {self.connection_id} {how}")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.respond()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def respond(self) -> None:
        with _print_lock:
            Echo.requests += 1
            requests = Echo.requests
        say(f"REQUEST {self.connection_id} {self.command} {self.path}")
        say(f"HOST {self.connection_id} {self.headers.get('Host')}")
        slow = self.path.startswith("/_slow")
        length, digest, chunks = self.read_body(slow)
        target = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(target.query).items()}
        if target.path == "/_bytes":
            self.send_bytes(int(query["n"]), query)
            return
        if target.path == "/_set":
            if "health" in query:
                Echo.health_status = int(query["health"])
            if "status" in query:
                Echo.status = int(query["status"])
            self.send_text(200, "set\n")
            return
        if target.path == "/healthz":
            status = Echo.health_status
            self.send_text(status, "ok\n" if 200 <= status < 300 else "failing\n")
            return
        body = json.dumps(
            {
                "method": self.command,
                "target": self.path,
                "version": self.request_version,
                "headers": [[name, value] for name, value in self.headers.items()],
                "body_length": length,
                "body_sha256": digest,
                "chunks": chunks,
                "connection": self.connection_id,
                "connections": accepted(),
                "requests": requests,
            }
        ).encode()
        self.send_response(Echo.status)
        self.send_common_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_common_headers()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_common_headers(self) -> None:
        self.send_header("X-Backend", self.name)
        self.send_header("X-Connection", str(self.connection_id))
        self.send_header("X-Connections", str(accepted()))

    def read_body(self, slow: bool) -> tuple[int, str, int]:
        """Read the request body; return its length, SHA-256 (hex) and chunk count."""
        digest = hashlib.sha256()
        length = 0
        chunks = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return length, digest.hexdigest(), chunks
                chunks += 1
                data = self.rfile.read(size)
                self.rfile.readline(1024)
                digest.update(data)
                length += len(data)
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            data = self.rfile.read(min(left, 32 * 1024 if slow else CHUNK))
            if not data:
                raise ConnectionResetError("body cut short")
            digest.update(data)
            length += len(data)
            left -= len(data)
            if slow:
                time.sleep(0.001)
        return length, digest.hexdigest(), chunks

    def send_bytes(self, size: int, query: dict[str, str]) -> None:
        fill = query.get("fill")
        block = (fill.encode() * CHUNK)[:CHUNK] if fill else pattern(CHUNK)
        self.send_response(200)
        self.send_common_headers()
        self.send_header("Content-Type", "application/octet-stream")
        if query.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
        elif query.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size
        while left > 0:
            data = block[: min(left, CHUNK)]
            if query.get("chunked"):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            left -= len(data)
        if query.get("chunked"):
            self.wfile.write(b"0\r\n\r\n")


class EchoServer(http.server.ThreadingHTTPServer):
    request_queue_size = 128


def slow_read(sock: socket.socket, chunk: int, pause: float) -> int:
    """Read until EOF, ``chunk`` bytes at a time with ``pause`` seconds between reads."""
    received = 0
    while True:
        data = sock.recv(chunk)
        if not data:
            return received
        received += len(data)
        time.sleep(pause)


def send_all(sock: socket.socket, total: int) -> None:
    """Send ``total`` bytes, then FIN."""
    block = b"x" * CHUNK
    left = total
    while left > 0:
        sock.sendall(block[: min(left, CHUNK)])
        left -= min(left, CHUNK)
    sock.shutdown(socket.SHUT_WR)


def serve_bulk(listener: socket.socket, total: int) -> None:
    while True:
        conn, _ = listener.accept()
        sender = threading.Thread(target=send_all, args=(conn, total), daemon=True)
        sender.start()
        received = slow_read(conn, 32 * 1024, 0.001)
        sender.join(120)
        print(f"RECEIVED {received}", flush=True)
        conn.close()


def serve_threads(listener: socket.socket, serve_one: Callable[[socket.socket, int], None]) -> None:
    """Accept forever; each connection is served by ``serve_one(conn, id)`` in a thread."""
    while True:
        conn, _ = listener.accept()
        number = new_connection_id()
        threading.Thread(target=serve_one, args=(conn, number), daemon=True).start()


def read_head(conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """Read up to the end of a request head; return it and what followed, or None at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(CHUNK)
        if not data:
            return None
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def serve_upgrade(conn: socket.socket, number: int) -> None:
    how = "eof"
    try:
        found = read_head(conn, b"")
        if found is None:
            return
        head, rest = found
        say(f"REQUEST {number} {head.split(b' ')[0].decode()} {head.split(b' ')[1].decode()}")
        if b"\r\nupgrade:" not in head.lower():
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            how = "closed"
            return
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        if rest:
            conn.sendall(rest)
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            conn.sendall(data)
    except OSError as e:
        how = type(e).__name__
    finally:
        conn.close()
        say(f"CLOSED {number} {how}")


def serve_idle_close(
    conn: socket.socket, number: int, idle: float, lag: float, answer_limit: int | None
) -> None:
    buffer = b""
    how = "eof"
    answered = 0
    try:
        last = time.monotonic()
        while True:
            while b"\r\n\r\n" not in buffer:
                left = last + idle - time.monotonic()
                readable, _, _ = select.select([conn], [], [], max(0.0, left))
                if not readable:
                    # Idle for IDLE_TIMEOUT s: this connection is done. The close lands late.
                    time.sleep(lag)
                    try:
                        raced = conn.recv(CHUNK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        raced = b""
                    if raced:
                        say(f"RACE {number} {raced.split(b' ')[1].decode()}")
                    how = "idle-timeout"
                    return
                data = conn.recv(CHUNK)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            method, target = head.split(b" ")[:2]
            if answer_limit is not None and answered >= answer_limit:
                say(f"DROPPED {number} {method.decode()} {target.decode()}")
                how = "dropped"
                return
            say(f"REQUEST {number} {method.decode()} {target.decode()}")
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    left = int(line.partition(b":")[2])
                    while len(buffer) < left:
                        data = conn.recv(CHUNK)
                        if not data:
                            return
                        buffer += data
                    buffer = buffer[left:]
            body = f"{target.decode()} on connection {number}\n".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"X-Connection: %d\r\nContent-Length: %d\r\n\r\n%b" % (number, len(body), body)
            )
            answered += 1
            last = time.monotonic()
    except OSError as e:
        how = type(e).__name__
    finally:
        conn.close()  # with unread bytes (a raced request), a reset
        say(f"CLOSED {number} {how}")


def serve_silent(conn: socket.socket, number: int) -> None:
    how = "eof"
    try:
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
    except OSError as e:
        how = type(e).__name__
    finally:
        conn.close()
        say(f"CLOSED {number} {how}")


def listen() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    return listener


def main() -> None:
    mode, name = sys.argv[1], sys.argv[2]
    if mode == "http":
        Hello.name = name
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()
    elif mode in ("echo", "tls-echo"):
        Echo.name = name
        server = EchoServer(("127.0.0.1", 0), Echo)
        if mode == "tls-echo":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()
    elif mode == "bulk":
        listener = listen()
        serve_bulk(listener, int(os.environ.get("BULK_BYTES", str(100 * 1024 * 1024))))
    elif mode == "upgrade":
        serve_threads(listen(), serve_upgrade)
    elif mode == "idle-close":
        idle = float(os.environ.get("IDLE_TIMEOUT", "4.0"))
        lag = float(os.environ.get("CLOSE_LAG", "0.05"))
        limit = os.environ.get("ANSWER_LIMIT")
        answer_limit = None if limit is None else int(limit)
        serve_threads(
            listen(),
            lambda conn, number: serve_idle_close(conn, number, idle, lag, answer_limit),
        )
    elif mode == "silent":
        serve_threads(listen(), serve_silent)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
