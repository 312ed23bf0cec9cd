"""
Test helpers for strategy plugins and embedders: build backends and :class:`ConnectionInfo`
values, check a plugin against the interfaces, and drive a strategy the way the balancer does.

In the spirit of ``treq.testing``, these are validating fakes, not mocks: they provide the
real interfaces, check them with :func:`zope.interface.verify.verifyObject`, and fail loudly
(:class:`StrategyError`) when a strategy breaks the contract of
:class:`~twisted_lb.interfaces.IBalancingStrategy`. None of them needs a reactor; time comes
from a :class:`~twisted.internet.task.Clock`.

A test of a strategy plugin::

    from twisted.trial.unittest import SynchronousTestCase
    from twisted_lb.testing import FakePool, connection_info, make_backends, verify_plugin

    class FirstFreeTests(SynchronousTestCase):
        def test_fills_in_order(self) -> None:
            strategy = verify_plugin(first_free, {"max_active": 2})
            pool = FakePool(strategy, make_backends(3))
            self.assertEqual(pool.names(pool.pick() for _ in range(5)),
                             ["app1", "app1", "app2", "app2", "app3"])
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from twisted_lb.backend import Backend, ConnectionInfo
from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory
from twisted_lb.pool import Lease, Pool

__all__ = [
    "FakePool",
    "StrategyError",
    "client_address",
    "connection_info",
    "make_backends",
    "verify_plugin",
]


class StrategyError(AssertionError):
    """
    A strategy or its plugin broke the contract of the interfaces: it does not provide them,
    or ``pick`` returned something it was not offered. An ``AssertionError``, so a test that
    meets one fails rather than errors.
    """


def make_backends(
    count: int = 3, *, weights: Sequence[int] | None = None, **attributes: Any
) -> list[Backend]:
    """
    Backends named ``app1`` .. ``appN`` at ``192.0.2.1:8080`` .. ``192.0.2.N:8080``
    (TEST-NET-1, RFC 5737: addresses that are never a real host).

    Args:
        count: how many, 1 to 254.
        weights: each backend's weight, in order; default 1 each. Its length must be
            ``count``.
        **attributes: more attributes for every backend, as :class:`~twisted_lb.Backend`
            takes them: ``backup=True``, ``active_connections=3``, ``state=BackendState.DOWN``.

    Raises:
        ValueError: ``count`` is out of range, ``weights`` has the wrong length, or a weight
            is below 1.
    """
    if not 1 <= count <= 254:
        raise ValueError(f"count must be 1 to 254, not {count!r}")
    if weights is not None and len(weights) != count:
        raise ValueError(f"weights has {len(weights)} entries for {count} backends")
    return [
        Backend.from_address(
            f"192.0.2.{i + 1}:8080",
            name=f"app{i + 1}",
            weight=1 if weights is None else weights[i],
            **attributes,
        )
        for i in range(count)
    ]


def client_address(client: str) -> IAddress:
    """
    A client's transport address from text, as a listener would report it.

    Args:
        client: ``"198.51.100.7:40000"``, ``"[2001:db8::7]:40000"`` or ``"unix:/run/lb.sock"``;
            without a port (``"198.51.100.7"``, ``"2001:db8::7"``) the port is 40000.

    Returns:
        An ``IPv4Address``, ``IPv6Address`` or ``UNIXAddress``.

    Raises:
        ValueError: the text is none of those (a host name, say).
    """
    if client.startswith("unix:"):
        return UNIXAddress(client[len("unix:") :])
    host, port = client, "40000"
    if client.startswith("[") and "]" in client:
        host, _, rest = client[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or port)
    elif client.count(":") == 1:
        host, _, port = client.partition(":")
    try:
        ip = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(
            f"client address must be IP:port, [IPv6]:port or unix:/path, not {client!r}"
        ) from None
    if ip.version == 4:
        return IPv4Address("TCP", host, number)
    return IPv6Address("TCP", host, number)


def _bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def connection_info(
    client: str | None = "198.51.100.7:40000",
    *,
    method: str | bytes | None = None,
    host: str | bytes | None = None,
    path: str | bytes | None = None,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    cookies: Mapping[str, str] | None = None,
    now: float = 0.0,
) -> ConnectionInfo:
    """
    What a strategy is told about a client, as the tcp relay (``client`` only) or the http
    proxy (a request's fields too) would fill it in. Text is encoded as Latin-1, as HTTP
    fields are bytes.

    Args:
        client: the client's address, as :func:`client_address` reads it; ``None`` for
            unknown.
        method: the request method, such as ``"GET"``.
        host: the ``Host`` header; also sent among ``headers``.
        path: the request target, such as ``"/v1/items?page=2"``.
        headers: more header fields, ``(name, value)`` pairs in order.
        cookies: cookies, sent as one ``Cookie`` header after ``headers``.
        now: the time of the pick, in seconds (``least_time`` reads it).

    Raises:
        ValueError: ``client`` cannot be read.
    """
    fields = [(_bytes(name), _bytes(value)) for name, value in headers]
    if host is not None:
        fields.insert(0, (b"Host", _bytes(host)))
    if cookies:
        fields.append((b"Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    return ConnectionInfo(
        client_address=None if client is None else client_address(client),
        method=None if method is None else _bytes(method),
        host=None if host is None else _bytes(host),
        path=None if path is None else _bytes(path),
        headers=tuple(fields),
        now=now,
    )


def verify_plugin(factory: object, options: Mapping[str, object] | None = None) -> Any:
    """
    Check a strategy plugin as the balancer will use it, and make a strategy with it.

    Checks that ``factory`` provides ``twisted.plugin.IPlugin`` and
    :class:`~twisted_lb.interfaces.IStrategyFactory` (``verifyObject``), that its ``name`` is
    a non-empty string, and that what ``factory(options)`` returns provides
    :class:`~twisted_lb.interfaces.IBalancingStrategy`.

    Args:
        factory: the object the plugin module binds (an instance, not the class).
        options: the pool's ``strategy_options``; default none.

    Returns:
        The strategy.

    Raises:
        StrategyError: a check failed; the message says which.
        ValueError: the factory rejected ``options``, as it would in ``twisted-lb check``.
    """
    for interface in (IPlugin, IStrategyFactory):
        try:
            verifyObject(interface, factory)
        except Invalid as e:
            raise StrategyError(f"{factory!r} does not provide {interface.__name__}: {e}") from e
    name = getattr(factory, "name", None)
    if not isinstance(name, str) or not name:
        raise StrategyError(f"{factory!r}: name must be a non-empty str, not {name!r}")
    strategy = factory(dict(options or {}))  # type: ignore[operator]
    _verify_strategy(strategy)
    return strategy


def _verify_strategy(strategy: object) -> None:
    try:
        verifyObject(IBalancingStrategy, strategy)
    except Invalid as e:
        raise StrategyError(f"{strategy!r} does not provide IBalancingStrategy: {e}") from e


class FakePool:
    """
    Drives a strategy as a pool of the balancer does, and checks what it picks.

    Built on a real :class:`~twisted_lb.Pool`, so the strategy is offered exactly what the
    balancer would offer it: the backends that are UP and not ejected, in their order,
    primaries before backups, without those excluded; and ``backends_changed`` is called when
    the pool is made and when :meth:`set_backends` changes it. On top of it:

    - the strategy is checked with ``verifyObject`` when the pool is made;
    - every pick is checked: the strategy must return one of the backends it was offered, or
      ``None`` (:class:`StrategyError` otherwise, with what was offered);
    - a picked backend stays leased (counted in its ``active_connections``, as an open
      connection is) until :meth:`release`, so load-aware strategies see the load their own
      picks make; :meth:`count` releases each at once;
    - :attr:`clock` gives ``ConnectionInfo.now`` for picks; with ``http``, each pick also
      counts as a request sent to the backend (``in_flight_requests``, ``requests_total``)
      until :meth:`respond` records its response time as the http proxy does, for strategies
      that read ``response_time`` or ``in_flight_requests`` (``least_time``).

    Args:
        strategy: the strategy under test.
        backends: its backends, such as :func:`make_backends` makes.
        clock: the time source; default a new :class:`~twisted.internet.task.Clock` at 0.
        panic: the pool's ``panic`` setting.
        http: count picks as HTTP requests, as ``mode = "http"`` does.

    Raises:
        StrategyError: ``strategy`` does not provide ``IBalancingStrategy``.
        ValueError: two backends share a name.

    Attributes:
        pool: the real pool underneath, for what this class does not wrap
            (``set_admin_state``, ``report_failure``, ...).
        clock: the clock.
        picks: every backend picked so far (``None`` for a refusal), in order.
    """

    def __init__(
        self,
        strategy: IBalancingStrategy,
        backends: Iterable[Backend],
        *,
        clock: Clock | None = None,
        panic: bool = False,
        http: bool = False,
    ) -> None:
        _verify_strategy(strategy)
        self.http = http
        self.clock = clock if clock is not None else Clock()
        self.pool = Pool("test", backends, strategy, panic=panic, reactor=self.clock)
        self.picks: list[Backend | None] = []
        self._leases: dict[Backend, list[Lease]] = {}

    def __repr__(self) -> str:
        return f"<FakePool {self.pool.strategy!r} {self.pool.backends!r}>"

    @property
    def backends(self) -> list[Backend]:
        """Every backend of the pool, in order, whatever its state."""
        return list(self.pool.backends)

    def backend(self, name: str) -> Backend:
        """
        The backend called ``name``.

        Raises:
            KeyError: there is none.
        """
        for backend in self.pool.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Change the pool's membership; the strategy's ``backends_changed`` is called."""
        self.pool.set_backends(backends)

    def set_healthy(self, backend: Backend | str, healthy: bool) -> None:
        """Mark a backend UP or DOWN, as its health checks would (by object or name)."""
        self.pool.set_healthy(self._backend(backend), healthy)

    def offered(self, exclude: Iterable[Backend | str] = ()) -> list[Backend]:
        """What a pick would offer the strategy now, leaving out ``exclude``."""
        return list(self.pool.eligible([self._backend(b) for b in exclude]))

    def pick(
        self, info: ConnectionInfo | None = None, exclude: Iterable[Backend | str] = ()
    ) -> Backend | None:
        """
        One pick, as for a new connection or request; the backend stays leased.

        Args:
            info: what the strategy is told; default :func:`connection_info` with ``now``
                from :attr:`clock`.
            exclude: backends (or names) already tried for this client.

        Returns:
            The backend, or ``None`` when nothing was offered or the strategy refused.

        Raises:
            StrategyError: the strategy picked a backend it was not offered, or something
                that is not a backend.
        """
        if info is None:
            info = connection_info(now=self.clock.seconds())
        excluded = [self._backend(b) for b in exclude]
        offered = list(self.pool.eligible(excluded))
        try:
            lease = self.pool.pick(info, excluded)
        except RuntimeError as e:
            raise StrategyError(f"{e}; offered {[b.name for b in offered]}") from None
        backend = None if lease is None else lease.backend
        if lease is not None:
            self._leases.setdefault(lease.backend, []).append(lease)
            if self.http:
                lease.backend.in_flight_requests += 1
                lease.backend.requests_total += 1
        self.picks.append(backend)
        return backend

    def release(self, backend: Backend | str) -> None:
        """
        End the oldest open lease of ``backend``, as a connection closing does.

        Raises:
            ValueError: it has none.
        """
        target = self._backend(backend)
        leases = self._leases.get(target)
        if not leases:
            raise ValueError(f"backend {target.name} has no open lease")
        leases.pop(0).release()

    def release_all(self) -> None:
        """End every open lease."""
        for leases in self._leases.values():
            for lease in leases:
                lease.release()
        self._leases.clear()

    def count(self, picks: int, info: ConnectionInfo | None = None) -> Counter[str | None]:
        """
        ``picks`` picks, each released at once: how many each backend got, by name
        (``None`` counts refusals). For checking shares: weights, fairness, stickiness.
        """
        counted: Counter[str | None] = Counter()
        for _ in range(picks):
            backend = self.pick(info)
            counted[None if backend is None else backend.name] += 1
            if backend is not None:
                self.release(backend)
        return counted

    def respond(self, backend: Backend | str, seconds: float) -> None:
        """
        Record a response from ``backend`` that took ``seconds``, as the http proxy does:
        the clock advances by ``seconds``, the response time is observed at the new time (a
        200 is counted), and one request of the backend no longer counts in
        ``in_flight_requests``.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, not {seconds!r}")
        target = self._backend(backend)
        self.clock.advance(seconds)
        target.response_time.observe(seconds, self.clock.seconds())
        target.count_response(200)
        if target.in_flight_requests > 0:
            target.in_flight_requests -= 1

    @staticmethod
    def names(backends: Iterable[Backend | None]) -> list[str | None]:
        """The names of ``backends`` (``None`` stays ``None``), for readable assertions."""
        return [None if b is None else b.name for b in backends]

    def _backend(self, backend: Backend | str) -> Backend:
        return self.backend(backend) if isinstance(backend, str) else backend
