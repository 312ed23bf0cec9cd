"""
Balancing strategies: the built-ins, their plugin factory, and lookup by name.

A pool asks its strategy to :meth:`~twisted_lb.interfaces.IBalancingStrategy.pick` one backend
for every new connection (L4) or request (L7), so ``pick`` is on the hot path: the built-ins do
one pass over the offered backends, allocate little and never log.

Built-in strategies, by the name used in config files:

- ``round_robin``: :class:`RoundRobin`, smooth weighted round robin (nginx).
- ``least_connections``: :class:`LeastConnections`, fewest active connections per weight.
- ``least_time``: :class:`LeastTime`, lowest peak-EWMA response time x (in-flight requests + 1)
  per weight (L7).
- ``random``: :class:`WeightedRandom`, weighted random choice.
- ``two_choices``: :class:`TwoChoices`, the power of two random choices.
- ``source_hash``: :class:`SourceHash`, a ketama consistent hash ring on the client IP.

Strategies are found as plugins: a module in the ``twisted_lb.plugins`` package binds
:class:`StrategyFactory` instances (or any other ``IPlugin`` + ``IStrategyFactory`` providers),
and :func:`get_strategy` looks them up with ``twisted.plugin.getPlugins``. The built-ins are
bound in ``twisted_lb/plugins/twisted_lb_strategies.py``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence

from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

import twisted_lb.plugins
from twisted_lb.backend import Backend, ConnectionInfo
from twisted_lb.interfaces import IBalancingStrategy, IStrategyFactory

__all__ = [
    "LeastConnections",
    "LeastTime",
    "RoundRobin",
    "SourceHash",
    "StrategyFactory",
    "TwoChoices",
    "UnknownStrategyError",
    "WeightedRandom",
    "get_strategy",
    "installed_strategies",
]


# The names HAProxy, nginx and Envoy give their balancing algorithms (HAProxy ``balance``,
# nginx's upstream directives, Envoy's ``lb_policy``), and ours: the hint of
# UnknownStrategyError.
_ALIASES = {
    "roundrobin": "round_robin",
    "leastconn": "least_connections",
    "least_conn": "least_connections",
    "least_request": "least_connections",
    "consistent_hash": "source_hash",
    "ip_hash": "source_hash",
    "source": "source_hash",
    "ring_hash": "source_hash",
    "maglev": "source_hash",
}


class UnknownStrategyError(ValueError):
    """
    No installed strategy plugin has the requested name. The message names the closest
    installed one, or ours for another balancer's name (``leastconn``, ``ip_hash``), and lists
    the installed ones: ``strategy 'leastconn' is not installed (did you mean
    'least_connections'?); installed strategies are: 'least_connections', ...``.

    Attributes:
        name: the name that was asked for.
        installed: the names of the installed strategies, sorted.
    """

    def __init__(self, name: str, installed: Sequence[str]) -> None:
        self.name = name
        self.installed = list(installed)
        alias = _ALIASES.get(name.lower())
        close = [alias] if alias in installed else difflib.get_close_matches(name, installed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        names = ", ".join(repr(installed_name) for installed_name in self.installed)
        super().__init__(
            f"strategy {name!r} is not installed{hint}; installed strategies are: {names}"
        )


def _factories() -> Iterable[IStrategyFactory]:
    return getPlugins(IStrategyFactory, twisted_lb.plugins)


def installed_strategies() -> list[str]:
    """
    The names of the installed strategy plugins.

    Scans the ``twisted_lb.plugins`` package (and every ``twisted_lb/plugins/`` directory on
    ``sys.path``, see ``twisted.plugin.pluginPackagePaths``), so it reads the plugin cache and
    may import plugin modules: call it at configuration time, not per connection.

    Returns:
        The names, sorted and without duplicates.
    """
    return sorted({factory.name for factory in _factories()})


def get_strategy(name: str, options: Mapping[str, object] | None = None) -> IBalancingStrategy:
    """
    Make a strategy by its plugin name, as a pool's ``strategy`` key names it.

    Each call makes a new strategy with its own state, so give each pool its own. Like
    :func:`installed_strategies`, this scans the plugins: call it at configuration time.

    Args:
        name: the factory's ``name``, e.g. ``"round_robin"``.
        options: the pool's ``strategy_options``; ``None`` means none.

    Returns:
        What the factory made.

    Raises:
        UnknownStrategyError: no installed strategy has that name; the message lists the
            installed ones.
        ValueError: the factory rejected an option; the message names it.
    """
    factories = list(_factories())
    for factory in factories:
        if factory.name == name:
            return factory({} if options is None else options)
    raise UnknownStrategyError(name, sorted({factory.name for factory in factories}))


@implementer(IPlugin, IStrategyFactory)
class StrategyFactory:
    """
    A strategy plugin: makes strategies of one class, after checking the options.

    Bind instances in a module of the ``twisted_lb.plugins`` package::

        round_robin = StrategyFactory("round_robin", RoundRobin)
        random = StrategyFactory("random", WeightedRandom, {"seed": int})

    Args:
        name: the name used in config files.
        strategy: called with the options as keyword arguments to make a strategy; usually the
            strategy class.
        accepted_options: the option names that may be given, each with the type its value must
            have (``bool`` is not accepted where ``int`` is asked for). Options not given are
            not passed, so ``strategy`` supplies the defaults.
    """

    def __init__(
        self,
        name: str,
        strategy: Callable[..., IBalancingStrategy],
        accepted_options: Mapping[str, type] | None = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.accepted_options: Mapping[str, type] = dict(accepted_options or {})

    def __repr__(self) -> str:
        return f"<StrategyFactory {self.name}>"

    def __call__(self, options: Mapping[str, object]) -> IBalancingStrategy:
        """
        Make a strategy for one pool.

        Args:
            options: the pool's ``strategy_options`` (empty when absent).

        Raises:
            ValueError: an option is unknown or its value has the wrong type; the message names
                it and the accepted options.
        """
        accepted = self.accepted_options
        for key, value in options.items():
            expected = accepted.get(key)
            if expected is None:
                names = ", ".join(sorted(accepted)) or "none"
                raise ValueError(
                    f"strategy {self.name!r}: unknown option {key!r}; accepted options: {names}"
                )
            if not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            ):
                raise ValueError(
                    f"strategy {self.name!r}: option {key!r} must be {expected.__name__}, "
                    f"not {value!r}"
                )
        return self.strategy(**options)


@implementer(IBalancingStrategy)
class RoundRobin:
    """
    Smooth weighted round robin, the nginx algorithm.

    On each pick every offered backend's current weight grows by its weight; the backend with
    the largest current weight is picked (the first one on a tie) and its current weight drops
    by the total weight of the offered backends. Over ``sum(weights)`` picks each backend is
    picked exactly ``weight`` times, spread out: weights 5, 1, 1 for a, b, c give
    ``a a b a c a a``.

    Source: nginx commit 52327e0 ("Upstream: smooth weighted round-robin balancing"),
    ``ngx_http_upstream_get_peer`` in ``src/http/ngx_http_upstream_round_robin.c``. Weights are
    the backends' ``effective_weight``: lowered during slow start, not after failures as
    nginx's is (failed backends are handled by health checks and outlier ejection instead).

    The offered set may change between picks (backends go DOWN and come back). Current weights
    are kept per backend and only the offered backends take part in a pick, as nginx skips its
    down peers.
    """

    def __init__(self) -> None:
        self._current: dict[Backend, float] = {}

    def __repr__(self) -> str:
        return "<RoundRobin>"

    def backends_changed(self, backends: Sequence[Backend]) -> None:
        """
        Forget the current weights of backends that left the pool.

        Args:
            backends: every backend of the pool.
        """
        members = set(backends)
        self._current = {b: w for b, w in self._current.items() if b in members}

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick the offered backend with the largest current weight.

        Args:
            backends: the eligible backends, never empty.
            info: unused.
        """
        current = self._current
        total = 0.0
        best = backends[0]
        best_weight = None
        for backend in backends:
            weight = backend.effective_weight
            total += weight
            value = current.get(backend, 0) + weight
            current[backend] = value
            if best_weight is None or value > best_weight:
                best = backend
                best_weight = value
        current[best] -= total
        return best


@implementer(IBalancingStrategy)
class LeastConnections:
    """
    Fewest active connections per unit of weight, as HAProxy's ``leastconn`` and nginx's
    ``least_conn``.

    Loads are compared as ``active_connections / weight`` by cross-multiplication, so exactly,
    as nginx's ``ngx_http_upstream_get_least_conn_peer`` does. Backends with equal load take
    turns, as in HAProxy (nginx instead breaks ties by weighted round robin): among the least
    loaded, the first one after the previously picked backend, in the offered order, wins,
    wrapping around.
    """

    def __init__(self) -> None:
        self._last: Backend | None = None

    def __repr__(self) -> str:
        return "<LeastConnections>"

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick a least loaded offered backend.

        Args:
            backends: the eligible backends, never empty.
            info: unused.
        """
        last = self._last
        seen_last = False
        best = backends[0]
        best_connections = best.active_connections
        best_weight = best.effective_weight
        best_after_last = False
        for backend in backends:
            connections = backend.active_connections
            weight = backend.effective_weight
            lhs = connections * best_weight
            rhs = best_connections * weight
            if lhs < rhs or (lhs == rhs and seen_last and not best_after_last):
                best = backend
                best_connections = connections
                best_weight = weight
                best_after_last = seen_last
            if backend is last:
                seen_last = True
        self._last = best
        return best


@implementer(IBalancingStrategy)
class LeastTime:
    """
    Lowest expected response time for the next request: the backend with the lowest
    ``response_time.value(info.now) * (in_flight_requests + 1) / weight``.

    ``response_time`` is the backend's :class:`~twisted_lb.backend.PeakEWMA`, so this is
    Linkerd's (tower's) peak-EWMA load, ``estimate * (pending + 1)``, divided by the weight.
    The estimate decays towards 0 while a backend gets no responses, so a backend that was
    slow is tried again after a while. Similar to NGINX Plus's ``least_time`` (lowest average
    response time and fewest active connections, with weights) and Traefik's ``leasttime``
    (lowest response time combined with fewest active connections); neither is peak-sensitive.

    Backends with no response time yet cost 0, so they are tried first. Equal costs (such as
    those zeros) take turns as in :class:`LeastConnections`: among the cheapest, the first one
    after the previously picked backend, in the offered order, wins, wrapping around.

    Costs are compared as ``value * (in_flight + 1) * other_weight`` by cross-multiplication.
    The response times and in-flight counts are kept by the HTTP mode; in TCP mode they stay
    0, every backend costs 0, and this is round robin that ignores the weights.
    """

    def __init__(self) -> None:
        self._last: Backend | None = None

    def __repr__(self) -> str:
        return "<LeastTime>"

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick an offered backend of lowest cost.

        Args:
            backends: the eligible backends, never empty.
            info: ``info.now`` (seconds, from the data path's clock) decays the estimates.
        """
        now = info.now
        last = self._last
        seen_last = False
        best = backends[0]
        best_load = math.inf
        best_weight = 1.0
        best_after_last = False
        for backend in backends:
            load = backend.response_time.value(now) * (backend.in_flight_requests + 1)
            weight = backend.effective_weight
            lhs = load * best_weight
            rhs = best_load * weight
            if lhs < rhs or (lhs == rhs and seen_last and not best_after_last):
                best = backend
                best_load = load
                best_weight = weight
                best_after_last = seen_last
            if backend is last:
                seen_last = True
        self._last = best
        return best


def _make_rng(rng: random.Random | None, seed: int | None) -> random.Random:
    if rng is not None and seed is not None:
        raise ValueError("give either rng or seed, not both")
    if rng is not None:
        return rng
    return random.Random(seed)


def _weighted_choice(
    rng: random.Random, backends: Sequence[Backend], total: float, skip: Backend | None = None
) -> Backend:
    """
    One of ``backends`` (except ``skip``), with probability ``effective_weight / total``;
    ``total`` is the sum of the effective weights of the backends other than ``skip``.
    """
    point = rng.random() * total
    last = skip
    for backend in backends:
        if backend is skip:
            continue
        point -= backend.effective_weight
        if point < 0:
            return backend
        last = backend
    # Rounding left the point at the very end of the range: the last candidate owns it.
    assert last is not None and last is not skip
    return last


@implementer(IBalancingStrategy)
class WeightedRandom:
    """
    Weighted random choice: each offered backend with probability ``weight / sum(weights)``.

    Args:
        rng: the random source; inject a seeded ``random.Random`` for repeatable picks.
        seed: seeds a new ``random.Random`` (the ``seed`` option).

    Raises:
        ValueError: both ``rng`` and ``seed`` were given.
    """

    def __init__(self, rng: random.Random | None = None, *, seed: int | None = None) -> None:
        self._rng = _make_rng(rng, seed)

    def __repr__(self) -> str:
        return "<WeightedRandom>"

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick an offered backend at random, weighted.

        Args:
            backends: the eligible backends, never empty.
            info: unused.
        """
        if len(backends) == 1:
            return backends[0]
        return _weighted_choice(self._rng, backends, sum(b.effective_weight for b in backends))


@implementer(IBalancingStrategy)
class TwoChoices:
    """
    The power of two random choices: draw two distinct backends at random (weighted by
    weight) and pick the one with fewer active connections per unit of weight; on a tie, the
    first drawn.

    Sources: M. Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing" (IEEE
    TPDS, 2001); HAProxy's ``balance random(2)``; nginx's ``random two least_conn``. It never
    picks the most loaded backend when loads differ, and needs no shared order, so several
    balancers in front of the same backends do not herd onto the same one.

    Args:
        rng: the random source; inject a seeded ``random.Random`` for repeatable picks.
        seed: seeds a new ``random.Random`` (the ``seed`` option).

    Raises:
        ValueError: both ``rng`` and ``seed`` were given.
    """

    def __init__(self, rng: random.Random | None = None, *, seed: int | None = None) -> None:
        self._rng = _make_rng(rng, seed)

    def __repr__(self) -> str:
        return "<TwoChoices>"

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick the less loaded of two offered backends drawn at random.

        Args:
            backends: the eligible backends, never empty.
            info: unused.
        """
        if len(backends) == 1:
            return backends[0]
        rng = self._rng
        total = sum(b.effective_weight for b in backends)
        first = _weighted_choice(rng, backends, total)
        second = _weighted_choice(rng, backends, total - first.effective_weight, skip=first)
        if (
            second.active_connections * first.effective_weight
            < first.active_connections * second.effective_weight
        ):
            return second
        return first


def _ketama_points(digest: bytes) -> tuple[int, int, int, int]:
    """The four 32-bit ring points in a 16-byte digest, as libketama reads them."""
    return (
        int.from_bytes(digest[0:4], "little"),
        int.from_bytes(digest[4:8], "little"),
        int.from_bytes(digest[8:12], "little"),
        int.from_bytes(digest[12:16], "little"),
    )


def _key_point(key: str) -> int:
    """The ring point of a key: the first four bytes of its MD5, as ``ketama_hashi``."""
    digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[0:4], "little")


@implementer(IBalancingStrategy)
class SourceHash:
    """
    Consistent hashing of the client IP on a ketama ring, so each client sticks to a backend.

    Each backend owns ``160 * weight`` points on a 32-bit ring: the MD5 digest of
    ``f"{backend.name}-{i}"`` for ``i`` in ``range(40 * weight)`` gives four points each
    (``weight`` being the ``effective_weight``, rounded, at least one digest: the ring is
    rebuilt at each slow-start step). A
    client goes to the owner of the first point at or after the MD5 point of its IP, clockwise,
    skipping owners that are not offered. A backend that goes DOWN is not offered, so only its
    clients move, and they come back when it is UP again; adding a backend to ``n`` takes about
    ``1 / (n + 1)`` of the clients, all to the new backend.

    Sources: libketama (``ketama.c``: 160 points per server, 40 MD5 digests of four points
    each); HAProxy's ``balance source`` with ``hash-type consistent``; nginx's
    ``hash $remote_addr consistent``.

    Clients without an IP (UNIX sockets) hash as the empty string, so they all go to one
    backend. Backends are placed by name, so their names must differ (a pool ensures it).
    """

    #: Ring points per unit of weight; a multiple of 4 (four points per digest).
    POINTS_PER_WEIGHT = 160

    def __init__(self) -> None:
        self._points: list[int] = []
        self._owners: list[Backend] = []
        self._members: frozenset[Backend] = frozenset()

    def __repr__(self) -> str:
        return f"<SourceHash {len(self._members)} backends, {len(self._points)} points>"

    def backends_changed(self, backends: Sequence[Backend]) -> None:
        """
        Rebuild the ring over every backend of the pool, whatever its state.

        The points of a backend depend only on its name and weight, so backends that stay
        keep their points, and their clients.

        Args:
            backends: every backend of the pool.
        """
        ring: list[tuple[int, str, Backend]] = []
        digests = self.POINTS_PER_WEIGHT // 4
        for backend in backends:
            name = backend.name
            for i in range(max(1, round(digests * backend.effective_weight))):
                digest = hashlib.md5(f"{name}-{i}".encode(), usedforsecurity=False).digest()
                ring.extend((point, name, backend) for point in _ketama_points(digest))
        ring.sort(key=lambda entry: (entry[0], entry[1]))
        self._points = [point for point, _name, _backend in ring]
        self._owners = [backend for _point, _name, backend in ring]
        self._members = frozenset(backends)

    def pick(self, backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Pick the offered backend that owns the client's IP on the ring.

        If an offered backend is not on the ring (``backends_changed`` was never called, or
        not for it), the ring is rebuilt over the backends it had and the offered ones.

        Args:
            backends: the eligible backends, never empty.
            info: the client; its ``client_host`` is hashed.
        """
        offered = set(backends)
        if not offered <= self._members:
            self.backends_changed(
                [*self._members, *(b for b in backends if b not in self._members)]
            )
        points = self._points
        owners = self._owners
        count = len(points)
        index = bisect_left(points, _key_point(info.client_host or ""))
        for step in range(count):
            owner = owners[(index + step) % count]
            if owner in offered:
                return owner
        raise AssertionError("an offered backend is missing from the ring")  # pragma: no cover
