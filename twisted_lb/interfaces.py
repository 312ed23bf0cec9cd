"""
The zope interfaces of twisted-lb: balancing strategies, their plugin factories, health
checks, the access log, and what the balancer needs of a reactor.

Interface methods take no ``self`` (zope convention), so that ``verifyObject`` works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from twisted_lb.backend import Backend, ConnectionInfo
    from twisted_lb.health import ProbeResult


class IBalancerReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorUNIX,
    IReactorPluggableNameResolver,
    IReactorFromThreads,
):
    """
    The reactor of the classes that both keep time and connect to backends (the relay, the
    upstream pool, health checks, the service): Twisted's own interfaces, together.

    It adds nothing: every Twisted reactor on a POSIX system provides them all, and none needs
    to declare this one. It only names their combination for the type checker, which has no
    intersection of interfaces; Twisted types its global reactor the same way
    (``twisted.internet._IReactorCommon``, "a make-believe interface"). Classes that only keep
    time take an ``IReactorTime``.
    """


class IBalancingStrategy(Interface):
    """
    Chooses one backend for a new connection (L4) or request (L7).

    A strategy may also define ``backends_changed(backends: Sequence[Backend]) -> None``. The
    pool calls it with every backend of the pool (whatever their state) when the pool is made
    and whenever its membership changes, so that a strategy can rebuild derived state such as a
    hash ring.
    """

    def pick(backends: Sequence[Backend], info: ConnectionInfo) -> Backend | None:
        """
        Choose a backend.

        Args:
            backends: the backends that may be picked, never empty: UP, not excluded by an
                earlier failed attempt for this client, primaries only unless no primary is UP.
                Live load is on each backend (``active_connections``, ``weight``).
            info: what is known of the client (and, for L7, of the request).

        Returns:
            One of ``backends``, or ``None`` to refuse the client.
        """


class IStrategyFactory(Interface):
    """
    A plugin that makes strategies. Provide it together with ``twisted.plugin.IPlugin`` and bind
    an instance in a module of the ``twisted_lb.plugins`` package.
    """

    name = Attribute("str: the name used in config files, e.g. 'round_robin'.")

    def __call__(options: Mapping[str, object]) -> IBalancingStrategy:
        """
        Make a strategy for one pool.

        Args:
            options: the pool's ``strategy_options`` table (empty when absent).

        Raises:
            ValueError: an option is unknown or has a bad value; the message names it.
        """


class IHealthCheck(Interface):
    """
    An active health check: probes one backend, as HAProxy's ``check`` and Envoy's active
    health checking do (https://docs.haproxy.org/3.2/configuration.html#5.2-check,
    https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/health_checking).
    :class:`~twisted_lb.health.HealthMonitor` calls it on a schedule and turns the results
    into verdicts with rise/fall.
    """

    def probe(backend: Backend) -> Deferred[ProbeResult]:
        """
        One check of one backend.

        Args:
            backend: the backend to check.

        Returns:
            A Deferred that fires with a :class:`~twisted_lb.health.ProbeResult`. It never
            fails: a failed check, an error or a timeout is ``ok=False``. It is cancellable:
            cancelling aborts the check's connection and leaves no timer behind, and the
            Deferred then fails with ``CancelledError``.
        """


class IAccessLog(Interface):
    """
    Where the access lines go: one call per HTTP request answered (or refused) and one per
    relayed TCP connection, when it ends. Implementations: :class:`twisted_lb.logs.AccessLog`
    (a buffered file or stream, as nginx's ``access_log path buffer= flush=``) and
    :class:`twisted_lb.logs.EventAccessLog` (``twisted.logger`` events in the
    ``twisted_lb.access`` namespace). Both are called on the data path: they must be cheap and
    must not raise.
    """

    def http(
        frontend: str,
        client: str,
        method: bytes,
        target: bytes,
        status: int,
        bytes_in: int,
        bytes_out: int,
        backend: str,
        connect_ms: int,
        first_byte_ms: int | None,
        total_ms: int,
    ) -> None:
        """
        One HTTP request's line.

        Args:
            frontend: the frontend's name.
            client: the client's IP address (after ``trusted_proxies``), or ``"-"``.
            method: the request method as received, or ``b"-"``.
            target: the request target as received, or ``b"-"``.
            status: the status sent to the client (499 when the client left first).
            bytes_in: bytes received from the client for this request (head, body, tunnel).
            bytes_out: bytes sent to the client for this request.
            backend: the backend's name, or ``"-"``.
            connect_ms: milliseconds from the request to the backend connection (0: none
                made, or a kept-alive one reused).
            first_byte_ms: milliseconds to the response's first byte, or ``None`` (none).
            total_ms: milliseconds from the request to the end of its exchange.
        """

    def tcp(
        frontend: str,
        client: str,
        backend: str,
        bytes_in: int,
        bytes_out: int,
        duration_ms: int,
        ended: str,
    ) -> None:
        """
        One relayed TCP connection's line.

        Args:
            frontend: the frontend's name.
            client: the client's address (``host:port``), or ``"-"``.
            backend: the backend's name, or ``"-"``.
            bytes_in: bytes received from the client.
            bytes_out: bytes sent to the client.
            duration_ms: milliseconds the connection lasted.
            ended: why it ended (``"client closed"``, ``"backend closed"``, ...).
        """
