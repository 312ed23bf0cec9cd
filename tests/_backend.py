"""
Backend servers for the integration tests, run as subprocesses: ``python _backend.py MODE NAME``.

Each listens on an OS-chosen port of 127.0.0.1 and prints ``PORT <n>`` on stdout.

Modes:
    http: answers every request with ``Hello from NAME`` (HTTP/1.0, then closes).
    bulk: per connection, sends ``BULK_BYTES`` (env, default 100 MB) and at the same time reads
        slowly until the peer's FIN; then prints ``RECEIVED <n>`` and closes.
"""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


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


def main() -> None:
    mode, name = sys.argv[1], sys.argv[2]
    if mode == "http":
        Hello.name = name
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()
    elif mode == "bulk":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        serve_bulk(listener, int(os.environ.get("BULK_BYTES", str(100 * 1024 * 1024))))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
