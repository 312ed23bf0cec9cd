"""
A twisted.web application with the twisted-lb HTTP reverse proxy embedded in it.

One process, one reactor:

- two small twisted.web backends on 127.0.0.1:9101 and 127.0.0.1:9102;
- the balancer, an ``HTTPProxyFactory`` in front of them, on 127.0.0.1:8090;
- the application's own twisted.web site on 127.0.0.1:8091, whose page shows the live counters
  of the pool's ``Backend`` objects (requests, requests in flight, responses by class, the
  response-time estimate that ``least_time`` uses).

Run it from the source tree, then try it from another terminal:

    python examples/embed_web.py
    curl http://127.0.0.1:8090/               # through the balancer: the backends take turns
    curl http://127.0.0.1:8090/slow           # a response that takes 2 s: watch "in flight"
    curl -d hello http://127.0.0.1:8090/echo  # a POST, its body streamed to a backend
    open http://127.0.0.1:8091/               # the counters (the page refreshes itself)
    curl http://127.0.0.1:8091/stats.json     # the same counters as JSON

Press Ctrl-C to stop. The access log (one line per request) goes to the terminal. If a port
is taken, choose others: ``--proxy-port``, ``--site-port`` and ``--backend-port`` (the first
backend's; the second takes the next port).
See docs/http.rst and the "Embed it in a program" section of docs/tutorial.rst.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from twisted_lb import Backend, HTTPProxyFactory, Pool, get_strategy

SLOW_SECONDS = 2.0


class BackendPage(Resource):
    """
    One demo backend: says who it is and what the balancer added to the request.

    ``/slow`` answers after ``SLOW_SECONDS``; ``/echo`` (POST) answers with the body's size.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _text(self, request: Request) -> bytes:
        forwarded_for = request.getHeader(b"x-forwarded-for") or b"-"
        return b"Hello from %s: %s %s, X-Forwarded-For: %s\n" % (
            self.name.encode(),
            request.method,
            request.uri,
            forwarded_for,
        )

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.postpath != [b"slow"]:
            return self._text(request)
        # Answer later, without blocking the reactor; stop the timer if the client goes away.
        call = reactor.callLater(SLOW_SECONDS, self._finish_slow, request)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return NOT_DONE_YET

    def _finish_slow(self, request: Request) -> None:
        request.write(self._text(request))
        request.finish()

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        body = request.content.read() if request.content is not None else b""
        return self._text(request) + b"Received %d bytes.\n" % len(body)


def backend_stats(pool: Pool) -> list[dict[str, Any]]:
    """The live counters of the pool's backends, one dict each."""
    now = reactor.seconds()
    return [
        {
            "name": backend.name,
            "address": str(backend.address),
            "state": backend.state.value,
            "requests_total": backend.requests_total,
            "in_flight_requests": backend.in_flight_requests,
            "responses": {f"{n}xx": count for n, count in enumerate(backend.responses, 1)},
            "response_time_ms": round(backend.response_time.value(now) * 1000, 1),
            "connect_failures": backend.connect_failures,
        }
        for backend in pool.backends
    ]


class StatusPage(Resource):
    """The application's own page: the pool's backends and their counters."""

    isLeaf = True

    def __init__(self, pool: Pool, proxy: HTTPProxyFactory, proxy_url: str) -> None:
        super().__init__()
        self.pool = pool
        self.proxy = proxy
        self.proxy_url = proxy_url

    def render_GET(self, request: Request) -> bytes:
        stats = backend_stats(self.pool)
        if request.postpath == [b"stats.json"]:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"pool": self.pool.name, "backends": stats}, indent=2).encode()
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(value))}</td>"
                for value in (
                    s["name"],
                    s["address"],
                    s["state"],
                    s["requests_total"],
                    s["in_flight_requests"],
                    *s["responses"].values(),
                    s["response_time_ms"],
                )
            )
            + "</tr>"
            for s in stats
        )
        url = html.escape(self.proxy_url)
        page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>twisted-lb: pool {html.escape(self.pool.name)}</title>
<style>td, th {{ padding: 0 0.8em; text-align: right }}</style></head>
<body>
<h1>Pool {html.escape(self.pool.name)}</h1>
<p>The balancer is at <a href="{url}">{url}</a>; it has
{self.proxy.active_connections} client connections open.
Try <a href="{url}slow">{url}slow</a> in a few tabs and watch "in flight".</p>
<table>
<tr><th>backend</th><th>address</th><th>state</th><th>requests</th><th>in flight</th>
<th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>EWMA ms</th></tr>
{rows}
</table>
<p>Also as <a href="/stats.json">JSON</a>.</p>
</body></html>
"""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page.encode()


def listen(description: str, factory: Any) -> None:
    """
    Listen on a server endpoint, before the reactor runs.

    Raises:
        SystemExit: it cannot listen (the port is taken, for example).
    """
    outcome: list[Any] = []
    serverFromString(reactor, description).listen(factory).addBoth(outcome.append)
    # TCP and UNIX endpoints listen at once, so the outcome is known here.
    if outcome and isinstance(outcome[0], Failure):
        raise SystemExit(f"cannot listen on {description}: {outcome[0].getErrorMessage()}")


class QuietSite(Site):
    """A twisted.web Site that does not log each request (the balancer's access log does)."""

    noisy = False

    def log(self, request: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--proxy-port", type=int, default=8090, help="the balancer (8090)")
    parser.add_argument("--site-port", type=int, default=8091, help="the status site (8091)")
    parser.add_argument(
        "--backend-port",
        type=int,
        default=9101,
        help="the first backend; the second follows (9101)",
    )
    args = parser.parse_args()
    backend_ports = (args.backend_port, args.backend_port + 1)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    # The backends: twisted.web sites of their own, in this same process.
    backends = []
    for number, port in enumerate(backend_ports, 1):
        name = f"web{number}"
        listen(f"tcp:{port}:interface=127.0.0.1", QuietSite(BackendPage(name)))
        backends.append(Backend.from_address(f"127.0.0.1:{port}", name=name))

    # The balancer: a pool of those backends, and the HTTP reverse proxy in front of it. The
    # keyword arguments are the config keys of the same names (docs/config.rst).
    pool = Pool(
        "app",
        backends,
        get_strategy("round_robin"),
        connect_timeout=2.0,
        response_timeout=30.0,
    )
    proxy = HTTPProxyFactory(reactor, pool, frontend="proxy", header_timeout=10.0)
    listen(f"tcp:{args.proxy_port}:interface=127.0.0.1", proxy)
    proxy_url = f"http://127.0.0.1:{args.proxy_port}/"

    # The application's own pages, which read the pool's live objects.
    listen(
        f"tcp:{args.site_port}:interface=127.0.0.1", QuietSite(StatusPage(pool, proxy, proxy_url))
    )

    def stop() -> Deferred[None]:
        # Close the client connections after their current response, aborting those still
        # open after 5 s; then the idle keep-alive connections to the backends.
        closing = proxy.close_connections()
        timer = reactor.callLater(5.0, proxy.abort_connections)

        def closed(_: object) -> None:
            if timer.active():
                timer.cancel()
            proxy.upstreams.close_idle()

        return closing.addBoth(closed)

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    print(
        f"balancer:    {proxy_url}  (backends on ports {backend_ports[0]} and {backend_ports[1]})\n"
        f"status page: http://127.0.0.1:{args.site_port}/\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
    reactor.run()


if __name__ == "__main__":
    main()
