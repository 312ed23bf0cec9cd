"""
Pools: a named set of backends, the strategy that chooses among them, and leases.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from twisted_lb.backend import Backend, BackendState, ConnectionInfo
from twisted_lb.interfaces import IBalancingStrategy


class Lease:
    """
    One client's claim on a backend: counts it in ``backend.active_connections`` until released.

    Attributes:
        backend: the leased backend.
    """

    __slots__ = ("_released", "backend")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._released = False
        backend.active_connections += 1
        backend.total_connections += 1

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
        return self._released

    def release(self) -> None:
        """Give the backend back. Only the first call counts; later calls do nothing."""
        if not self._released:
            self._released = True
            self.backend.active_connections -= 1


class Pool:
    """
    Backends behind one strategy.

    Args:
        name: the pool's name, for logs.
        backends: its backends, in config order.
        strategy: chooses among the eligible backends.
        connect_timeout: seconds before a connection attempt to a backend is abandoned.
        retries: further backends tried after a failed connection attempt.
        response_timeout: HTTP only: seconds from a request being sent to the first byte of
            its response, else 504.
        upstream_idle_timeout: HTTP only: seconds an idle keep-alive connection to a backend
            is kept (4 s, below the 5 s of Node and other common backends).
        max_idle_per_backend: HTTP only: idle keep-alive connections kept per backend; 0
            disables reuse.

    Raises:
        ValueError: two backends share a name, or a timeout or count is out of range.
    """

    def __init__(
        self,
        name: str,
        backends: Iterable[Backend],
        strategy: IBalancingStrategy,
        *,
        connect_timeout: float = 5.0,
        retries: int = 2,
        response_timeout: float = 60.0,
        upstream_idle_timeout: float = 4.0,
        max_idle_per_backend: int = 128,
    ) -> None:
        for key, seconds in (
            ("connect_timeout", connect_timeout),
            ("response_timeout", response_timeout),
            ("upstream_idle_timeout", upstream_idle_timeout),
        ):
            if not seconds > 0:
                raise ValueError(f"pool {name}: {key} must be > 0 s, not {seconds}")
        if retries < 0:
            raise ValueError(f"pool {name}: retries must be >= 0")
        if max_idle_per_backend < 0:
            raise ValueError(f"pool {name}: max_idle_per_backend must be >= 0")
        self.name = name
        self.strategy = strategy
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.response_timeout = response_timeout
        self.upstream_idle_timeout = upstream_idle_timeout
        self.max_idle_per_backend = max_idle_per_backend
        self.backends: list[Backend] = []
        self.set_backends(backends)

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.backends!r}>"

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """
        Replace the pool's membership and tell the strategy (``backends_changed``).

        Established leases on removed backends stay valid until released.

        Raises:
            ValueError: two backends share a name.
        """
        backends = list(backends)
        names = [b.name for b in backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool {self.name}: duplicate backend names {duplicates}")
        self.backends = backends
        backends_changed = getattr(self.strategy, "backends_changed", None)
        if backends_changed is not None:
            backends_changed(list(backends))

    def eligible(self, exclude: Collection[Backend] = ()) -> Sequence[Backend]:
        """
        The backends a strategy may pick from now.

        Only UP backends; primaries while any primary is UP, else backups (HAProxy's
        ``backup``). Backends in ``exclude`` (already tried for this client) are left out, but
        they still count as UP primaries when deciding whether backups may serve.
        """
        primaries: list[Backend] = []
        backups: list[Backend] = []
        for backend in self.backends:
            if backend.state is BackendState.UP:
                (backups if backend.backup else primaries).append(backend)
        tier = primaries or backups
        if exclude:
            return [b for b in tier if b not in exclude]
        return tier

    def pick(self, info: ConnectionInfo, exclude: Collection[Backend] = ()) -> Lease | None:
        """
        Choose a backend with the strategy and lease it.

        Args:
            info: what is known of the client.
            exclude: backends already tried for this client.

        Returns:
            A lease, which the caller must release exactly once when the connection ends, or
            ``None`` when no backend is eligible or the strategy refused.

        Raises:
            RuntimeError: the strategy returned a backend that was not offered to it.
        """
        candidates = self.eligible(exclude)
        if not candidates:
            return None
        backend = self.strategy.pick(candidates, info)
        if backend is None:
            return None
        if backend not in candidates:
            raise RuntimeError(
                f"pool {self.name}: strategy {self.strategy!r} picked {backend!r}, "
                "which was not offered"
            )
        return Lease(backend)
