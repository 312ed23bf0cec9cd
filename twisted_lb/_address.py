"""
Backend address strings: ``host:port``, ``[v6]:port`` and ``unix:/path``; host names (a
route's, an http check's ``Host``, a TLS ``server_name``, the admin API's ``allowed_hosts``);
and listener descriptions: which take the PROXY protocol (``haproxy:...``), and what
Twisted's endpoint parser says of them.

Shared by :mod:`twisted_lb.config` (validation), :mod:`twisted_lb.http.routing` (a route's
host) and :mod:`twisted_lb.backend` and :mod:`twisted_lb.service` (endpoints), so that they
can never disagree about what an address, a name or a listener means. The ``*_problem``
functions return ``None`` for a good value, else one line that says what to write instead.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

import attrs
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_lb import _compat as compat


@attrs.frozen
class Address:
    """
    A parsed backend address.

    Attributes:
        kind: ``"tcp"`` or ``"unix"``.
        host: IP literal or host name (``tcp`` only; IPv6 without brackets).
        port: TCP port, 1-65535 (``tcp`` only).
        path: socket path (``unix`` only).
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def ip_version(self) -> int | None:
        """4 or 6 when ``host`` is an IP literal, else ``None`` (a name to resolve)."""
        try:
            return ipaddress.ip_address(self.host).version
        except ValueError:
            return None


def parse_address(text: str) -> Address:
    """
    Parse a backend address.

    Args:
        text: ``"127.0.0.1:9001"``, ``"app.internal:80"``, ``"[::1]:9001"`` or
            ``"unix:/run/app.sock"``.

    Returns:
        The parsed :class:`Address`.

    Raises:
        ValueError: the text is not one of those forms; the message says which form to use.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ValueError("unix address needs a path, as in 'unix:/run/app.sock'")
        return Address("unix", path=path)
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r} is not '[v6]:port', as in '[::1]:9001'")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(
                f"{text!r} is not 'host:port', '[v6]:port' or 'unix:/path', as in '127.0.0.1:9001'"
            )
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses in brackets, as in '[::1]:9001'")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number from 1 to 65535")
    return Address("tcp", host=host, port=int(port_text))


#: The endpoint prefix of listeners that take the PROXY protocol (Twisted's ``haproxy:``).
PROXY_PREFIX = "haproxy"


def proxy_listener(description: str) -> str | None:
    """
    The endpoint under a ``haproxy:`` listener, or ``None`` for any other listener.

    Args:
        description: a server endpoint description from a frontend's ``listen``.

    Returns:
        ``"tcp:8080:interface=127.0.0.1"`` for ``"haproxy:tcp:8080:interface=127.0.0.1"``
        (the prefix is matched without case, as Twisted matches endpoint plugins).
    """
    prefix, colon, rest = description.partition(":")
    if colon and prefix.lower() == PROXY_PREFIX:
        return rest
    return None


_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_HOST_PORT = re.compile(r"(?P<host>[^:]*|\[[^\]]*\]):[0-9]*")
_HOST_EXAMPLES = "an exact name such as 'api.example.com' or a wildcard such as '*.example.com'"
_CHECK_HOST_EXAMPLES = "'app.internal', 'app.internal:8080' or '[2001:db8::1]'"
_SERVER_NAME_EXAMPLES = "'app.internal', '10.0.0.5' or '2001:db8::1'"


def endpoint_problem(text: str) -> str | None:
    """
    What Twisted's parser finds wrong with a server endpoint description (``"tcp:8080"``,
    ``"unix:/run/lb.sock"``, plugins' kinds), or ``None``. It parses on a MemoryReactor, so
    nothing listens and no reactor is needed; a port outside 0-65535 is refused too.
    """
    try:
        endpoint = serverFromString(MemoryReactor(), text)
    except ValueError as e:
        return str(e)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    port = compat.endpoint_port(compat.unwrap_server_endpoint(endpoint))  # haproxy:, ...
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is not from 0 to 65535"
    return None


def tls_listener_problem(text: str, where: str) -> str | None:
    """
    Why a frontend's ``ssl:`` listener (bare or under ``haproxy:``) is refused, or ``None``;
    ``where`` is the frontend's key path (``frontends.web``), which the fix names.
    """
    inner = proxy_listener(text)
    kind, _, rest = (text if inner is None else inner).partition(":")
    if kind.lower() != "ssl":  # endpoint types are matched without case, as Twisted does
        return None
    prefix = "" if inner is None else text[: len(text) - len(inner)]
    fix = f"{prefix}tcp:{rest.split(':')[0] or '443'}"
    proxy = (
        " (the PROXY header then comes in clear before TLS, as HAProxy's send-proxy and nginx's "
        "proxy_protocol send it)"
        if inner is not None
        else ""
    )
    return (
        f"{text!r}: an ssl: listener terminates TLS with Twisted's defaults, not the policy of "
        f"[{where}.tls], and its backends would be told the scheme is http; listen on "
        f"{fix!r} and put the certificate in [{where}.tls]{proxy}"
    )


def exposed_problem(text: str) -> str | None:
    """
    Why an admin listener without a token is refused, or ``None``: a TCP listener on all
    interfaces or a non-loopback address, or one whose interface cannot be seen (``systemd:``),
    can be reached from other hosts. ``unix:`` listeners and loopback ones are fine.
    """
    if endpoint_problem(text) is not None:
        return None
    endpoint = serverFromString(MemoryReactor(), text)
    interface = compat.endpoint_interface(endpoint)
    if isinstance(endpoint, UNIXServerEndpoint):
        return None
    if not isinstance(interface, str):  # systemd:, plugins
        interface = f"an address this check cannot see ({text.partition(':')[0]}:)"
    elif interface in ("", "::", "0.0.0.0"):
        interface = "all interfaces"
    else:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(interface.partition("%")[0]).is_loopback:
                return None
    return (
        f"{text!r} listens on {interface}, which other hosts can reach: set admin.token_file "
        '(a file holding a bearer token), as in token_file = "admin.token", or listen on '
        "loopback only, as in 'tcp:9901:interface=127.0.0.1'"
    )


def host_problem(host: str, route: bool) -> str | None:
    """
    What is wrong with a route's ``host`` (``route=True``) or an http check's ``Host``, or
    ``None``. Both take a DNS name (one trailing dot allowed) or an IP address, IPv6 in
    brackets, as RFC 9110 §7.2 writes ``Host``; a check's may have a ``:port``, and a route's
    may start with ``*.`` (nginx ``server_name`` wildcards) and has no port.
    """
    examples = _HOST_EXAMPLES if route else _CHECK_HOST_EXAMPLES
    if not host:
        leave = "match any host" if route else "send the backend's address"
        return f"must not be empty; write {examples}, or leave host out to {leave}"
    path = (
        ", and the path in path_prefix; the host has no path" if route else ", and the path in path"
    )
    problem = url_problem(host, "host name", "api.example.com" if route else "app.internal", path)
    if problem is not None:
        return problem
    with_port = _HOST_PORT.fullmatch(host) if route else None
    if with_port is not None:
        return (
            f"routes match the name without the port; write {with_port['host']!r} "
            "to match it on any port"
        )
    port = None
    if host.startswith("["):
        name, close, rest = host[1:].partition("]")
        if not close or not is_ipv6(name) or (rest and not rest.startswith(":")):
            return f"{host!r} is not an IPv6 address in brackets, as in '[2001:db8::1]'"
        port = rest[1:] if rest else None
    elif host.count(":") > (0 if route else 1):
        if is_ipv6(host):
            return f"write IPv6 addresses in brackets, as in {f'[{host}]'!r}"
        return f"{host!r} is not a host name; write {examples}"
    else:
        name, colon, rest = host.partition(":")
        port = rest if colon else None
        wildcard = route and name.startswith("*.") and len(name) > 2
        if route and "*" in name[2 if wildcard else 0 :]:
            return (
                f"{host!r}: '*' is allowed only as the whole first label, "
                "as in '*.example.com', which matches any name ending in '.example.com'"
            )
        # One trailing dot is the root, as in an absolute DNS name; requests may send it too.
        problem = _name_problem(
            name[2 if wildcard else 0 :].removesuffix("."), examples, host, "*." if wildcard else ""
        )
        if problem is not None:
            return problem
    if port is not None and not (
        port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535
    ):
        return f"port {port!r} in {host!r} is not a number from 1 to 65535"
    return None


def _name_problem(name: str, examples: str, written: str = "", prefix: str = "") -> str | None:
    """
    What is wrong with a DNS name (labels of letters, digits, ``-`` and ``_``), or ``None``;
    ``prefix`` (``"*."``, ``"."``) was written before the name and goes before its IDNA form.
    """
    if name.isascii():
        if _HOST_NAME.fullmatch(name):
            return None
        return f"{written or name!r} is not a host name; write {examples}"
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if _HOST_NAME.fullmatch(ascii_name):
        return f"write the name in ASCII (IDNA), as in {prefix + ascii_name!r}"
    return f"{written or name!r} is not a host name; write {examples}"


def url_problem(text: str, noun: str, default: str, path: str = "") -> str | None:
    """
    What is wrong with a ``noun`` written as a URL (with a scheme or a path), or ``None``;
    ``default`` is the example when the text has no name, ``path`` where the path goes.
    """
    if "://" in text:
        name = text.split("://", 1)[1].split("/", 1)[0] or default
        return f"write the {noun} only, without the scheme, as in {name!r}"
    if "/" in text:
        return f"write the {noun} only, as in {text.split('/', 1)[0] or default!r}{path}"
    return None


_ALLOWED_HOST_EXAMPLES = (
    "a name, as in 'lb1.internal', or a domain with its subdomains, as in '.internal'"
)


def allowed_host_problem(entry: str) -> str | None:
    """
    What is wrong with an entry of the admin API's ``allowed_hosts``, or ``None``: a DNS name
    in ASCII (``lb1.internal``), or one after a dot (``.internal``: that name and every name
    under it, as Django's ``ALLOWED_HOSTS`` and Vite's ``server.allowedHosts`` write it),
    without a port or ``*``. IP addresses and ``localhost`` are allowed without an entry, so
    one for them is accepted and changes nothing.
    """
    if not entry:
        return f"must not be empty; write {_ALLOWED_HOST_EXAMPLES}"
    problem = url_problem(entry, "name", "lb1.internal")
    if problem is not None:
        return problem
    if is_ipv6(entry) or (entry[:1] == "[" and entry[-1:] == "]" and is_ipv6(entry[1:-1])):
        return None
    port = _HOST_PORT.fullmatch(entry)
    if port is not None:
        return f"write the name without the port, as in {port['host']!r}; any port is allowed"
    if "*" in entry:
        domain = entry[2:].removesuffix(".") if entry.startswith("*.") else ""
        example = f".{domain}" if is_host_name(domain) else ".internal"
        return (
            f"{entry!r}: '*' is not a wildcard here; write a domain with a leading dot, as in "
            f"{example!r}, for the name and every name under it"
        )
    dot = "." if entry.startswith(".") else ""
    return _name_problem(entry[len(dot) :].removesuffix("."), _ALLOWED_HOST_EXAMPLES, entry, dot)


def server_name_problem(name: str) -> str | None:
    """
    What is wrong with a pool's ``server_name`` (what backends' certificates are verified
    against and what SNI sends), or ``None``: a DNS name in ASCII, at most 253 characters and
    63 between dots, without a port or ``*``; or an IP address, IPv6 without brackets.
    """
    if not name:
        return (
            f"must not be empty; write a name such as {_SERVER_NAME_EXAMPLES}, "
            "or leave server_name out to verify each backend's host"
        )
    problem = url_problem(name, "name", "app.internal")
    if problem is not None:
        return problem
    if name.startswith("[") and name.endswith("]") and is_ipv6(name[1:-1]):
        return f"write the IPv6 address without brackets, as in {name[1:-1]!r}"
    if is_ipv6(name):
        return None
    port = _HOST_PORT.fullmatch(name)
    if port is not None:
        host = port["host"].strip("[]")
        return (
            f"write the name without the port, as in {host!r}; "
            "the port is the backend's, in its address"
        )
    if "*" in name:
        return (
            f"{name!r}: write the one name the backends' certificates are for, without '*'; "
            "a certificate for '*.example.com' is verified as, for example, 'app.example.com'"
        )
    problem = _name_problem(name, _SERVER_NAME_EXAMPLES)
    if problem is not None:
        return problem
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return (
            f"{name!r} is too long for a DNS name (at most 63 characters between dots, 253 in all)"
        )
    return None


def is_host_name(text: str) -> bool:
    """
    Whether ``text`` is a DNS name in ASCII: labels of letters, digits, ``-`` and ``_``
    between single dots, without a trailing dot.
    """
    return _HOST_NAME.fullmatch(text) is not None


def is_ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address, without brackets."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
