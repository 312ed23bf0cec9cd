"""
Backend address strings: ``host:port``, ``[v6]:port`` and ``unix:/path``; and which listener
descriptions take the PROXY protocol (``haproxy:...``).

Shared by :mod:`twisted_lb.config` (validation) and :mod:`twisted_lb.backend` and
:mod:`twisted_lb.service` (endpoints), so that they can never disagree about what an address
or a listener means.
"""

from __future__ import annotations

import ipaddress

import attrs


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
