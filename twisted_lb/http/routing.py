"""
Request routing for the L7 proxy: which pool serves a request, by host and path.

Routes are tried in order and the first match wins; a request no route matches goes to the
frontend's default pool. Host patterns follow nginx's ``server_name``: an exact name, or a
leading wildcard ``*.example.com``. Path patterns are plain prefixes, as nginx's prefix
``location`` and HAProxy's ``path_beg``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import attrs

from twisted_lb._address import host_problem
from twisted_lb.pool import Pool


@attrs.frozen
class Route:
    """
    One routing rule: requests that match go to ``pool``.

    Attributes:
        pool: where matching requests go.
        host: an exact host name (``"api.example.com"``), compared case-insensitively and
            ignoring the request's port and one trailing dot; or ``"*.example.com"``, which
            matches any name ending in ``.example.com`` at any depth (``a.example.com``,
            ``a.b.example.com``) but not ``example.com`` itself, as nginx's ``server_name``
            wildcards. An IPv6 literal is written in brackets, as in ``Host``: ``"[::1]"``.
            ``None`` matches any host.
        path_prefix: a prefix of the request's path (the request-target before any ``?``),
            compared byte for byte and case-sensitively: ``"/api/"`` matches ``/api/users``
            but not ``/api`` or ``/API/``. ``None`` matches any path.

    A route with both must match both.

    Raises:
        ValueError: neither ``host`` nor ``path_prefix`` is given; ``host`` is not a host name
            (the config's ``host_problem``: empty, not ASCII, with a port, a path
            or a ``*`` other than a leading ``*.``); ``path_prefix`` does not start with ``/``
            or has a query, a fragment or a character outside printable ASCII
            (:func:`path_problem`). The message is the config's.
    """

    pool: Pool
    host: str | None = None
    path_prefix: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.host is None and self.path_prefix is None:
            raise ValueError("a route needs a host, a path_prefix, or both")
        problem = None if self.host is None else host_problem(self.host, route=True)
        if problem is not None:
            raise ValueError(f"route host {self.host!r}: {problem}")
        if self.path_prefix is not None:
            problem = path_problem(self.path_prefix, query=False)
            if problem is not None:
                raise ValueError(f"route path_prefix {self.path_prefix!r}: {problem}")


def path_problem(path: str, query: bool) -> str | None:
    """
    What is wrong with a request path, or ``None``: an http check's ``path`` (``query=True``:
    it may have a query) or a route's ``path_prefix`` (``query=False``: routes match the path
    alone). Either is the origin-form of RFC 9112 §3.2.1: from ``/``, in printable ASCII, with
    no fragment; the message shows the percent-encoded form to write.
    """
    if not path.startswith("/"):
        if "://" in path:
            return "write the path only, without scheme and host; put the host name in host"
        return f"must start with '/', as in {'/' + path!r}"
    for char in "#" if query else "?#":
        if char in path and query:
            cut = path[: path.index(char)]
            return f"a request has no fragment; write {cut!r}, without the part from '#' on"
        if char in path:
            return (
                "routes match the path without the query or fragment; "
                f"write {path[: path.index(char)]!r}, without the part from {char!r} on"
            )
    if not all("!" <= char <= "~" for char in path):
        encoded = urllib.parse.quote(path, safe="/%!$&'()*+,;=:@[]?~")
        return (
            f"{path!r}: write the path as requests carry it, in ASCII without spaces, "
            f"as in {encoded!r}"
        )
    return None


def _normalize_host(host: bytes) -> bytes:
    """
    ``host`` (a ``Host`` value or a URI authority's host) as routes compare it: lowercase,
    without a ``:port`` (also after ``[v6]``), without one trailing dot.
    """
    host = host.strip().lower()
    if host[:1] == b"[":
        end = host.find(b"]")
        if end != -1:
            host = host[: end + 1]
    else:
        colon = host.find(b":")
        if colon != -1:
            host = host[:colon]
    if host[-1:] == b".":
        host = host[:-1]
    return host


def _split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """
    The host and path of an absolute-form request-target (RFC 9112 §3.2.2), as
    ``(authority host with any port, path and query)``, with an empty path given as ``/``;
    ``None`` when ``target`` is not in absolute form.
    """
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        return None
    rest = target[scheme_end + 3 :]
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        found = rest.find(delimiter, 0, end)
        if found != -1:
            end = found
    authority = rest[:end]
    path = rest[end:]
    if path[:1] != b"/":
        path = b"/" + path
    return authority[authority.rfind(b"@") + 1 :], path


class Router:
    """
    Chooses the pool for each request: the first matching route's, else the default.

    Args:
        routes: the routes, in priority order.
        default: the pool for requests no route matches.
    """

    __slots__ = ("_compiled", "default", "routes")

    def __init__(self, routes: Sequence[Route], default: Pool) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self.default = default
        # (exact host, ".suffix" for "*.suffix", path prefix, pool), all lowercased bytes.
        compiled: list[tuple[bytes | None, bytes | None, bytes | None, Pool]] = []
        for route in self.routes:
            exact = suffix = prefix = None
            if route.host is not None:
                pattern = route.host.lower().encode("ascii")
                if pattern.endswith(b"."):
                    pattern = pattern[:-1]
                if pattern.startswith(b"*."):
                    suffix = pattern[1:]
                else:
                    exact = pattern
            if route.path_prefix is not None:
                prefix = route.path_prefix.encode("utf-8")
            compiled.append((exact, suffix, prefix, route.pool))
        self._compiled = tuple(compiled)

    def __repr__(self) -> str:
        return f"<Router {len(self.routes)} routes, default {self.default.name}>"

    def route(self, host: bytes | None, target: bytes) -> Pool:
        """
        The pool for a request.

        Args:
            host: the ``Host`` field's value as received (any case, maybe with ``:port`` and a
                trailing dot), or ``None`` when the request has none.
            target: the request-target as received: origin-form (``/a/b?x``) or absolute-form
                (``http://example.com/a``). For absolute-form, the host and path come from
                the target and ``host`` is ignored (RFC 9112 §3.2.2: the target's authority
                overrides ``Host``). Other forms (``*``, ``host:port``) have no path: only
                host-only routes can match them.

        Returns:
            The first matching route's pool, else the default pool.
        """
        if target[:1] == b"/":
            # The prefixes contain no "?", so a prefix of the whole target is a prefix of its
            # path: no need to cut the query off.
            path = target
        else:
            split = _split_absolute(target)
            if split is None:
                path = b""
            else:
                host, path = split
        name = b"" if host is None else _normalize_host(host)
        for exact, suffix, prefix, pool in self._compiled:
            if exact is not None:
                if name != exact:
                    continue
            elif suffix is not None and not (len(name) > len(suffix) and name.endswith(suffix)):
                continue
            if prefix is not None and not path.startswith(prefix):
                continue
            return pool
        return self.default
