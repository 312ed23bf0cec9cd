"""
An epoll reactor with cheaper event dispatch: the one ``twistd lb`` runs on (Linux).

Twisted's epoll reactor hands every ready descriptor to ``log.callWithLogger``, which asks the
descriptor for its ``logPrefix()``, copies the logging context, merges the prefix into it,
pushes it through two more layers of context calls and pops it again: about a quarter of the
reactor's own Python work for each socket event, and 10-15% of twisted-lb's CPU time per
proxied request. Twisted's own ticket (twisted/twisted#2534, "investigate event dispatch
optimization") measured the same 15% and suggests keeping the context without the overhead.
:class:`EPollReactor` does that: it looks up the log context in force once per poll, and
pushes for each event the frame ``callWithLogger`` would have pushed: the log context with the
descriptor's ``logPrefix()`` as its ``system``. Legacy log events emitted while a
descriptor is handled (``Unhandled Error`` tracebacks, ``log.msg``) keep their ``[system]``,
and an exception that escapes is logged with it, as ``callWithLogger`` does.

Everything else is Twisted's :class:`twisted.internet.epollreactor.EPollReactor`. twisted-lb
itself works on any reactor; this one only makes it cheaper to run. ``twistd -n lb --config
lb.toml`` and ``twisted-lb demo`` install it on Linux when no reactor was chosen
(:func:`install_default`); ``twistd --reactor=NAME`` still picks any other. An embedding program
calls :func:`install` before anything imports ``twisted.internet.reactor``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import context, log

from twisted_lb import _compat as compat

__all__ = ["EPollReactor", "install", "install_default"]


class EPollReactor(epollreactor.EPollReactor):
    """
    :class:`twisted.internet.epollreactor.EPollReactor` whose ``doPoll`` sets each event's
    logging context directly instead of through ``log.callWithLogger``. The context each
    handler runs in is the same; see the module docstring.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: The parent's poller, descriptors and event handler (private: see compat).
        self._epoll = compat.epoll_internals(self)

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for at most ``timeout`` seconds (``None``: until an event) and handle the ready
        descriptors, each with its ``logPrefix()`` as the log ``system``.

        When the thread's context tracker is not Twisted's usual one (something replaced
        ``twisted.python.context.theContextTracker``), the parent's ``doPoll`` does the work.
        """
        tracker = context.theContextTracker
        if not isinstance(tracker, context.ThreadedContextTracker):
            super().doPoll(timeout)
            return
        if timeout is None:
            timeout = -1
        poller, selectables, do_read_or_write = self._epoll
        try:
            events = poller.poll(timeout, len(selectables))
        except InterruptedError:
            return
        if not events:
            return
        current = tracker.currentContext()
        contexts: list[dict[Any, Any]] = current.contexts
        # What callWithLogger's callWithContext reads for each event: the log context in
        # force, found anywhere down the stack (it cannot change between two events).
        top_log = current.getContext(log.ILogContext) or {}
        push = contexts.append
        pop = contexts.pop
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = "(buggy logPrefix method)"
                log.err(system=prefix)
            push({log.ILogContext: {**top_log, "system": prefix}})
            try:
                do_read_or_write(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=prefix)
            finally:
                pop()

    doIteration = doPoll


def install() -> EPollReactor:
    """
    Install :class:`EPollReactor` as Twisted's global reactor and return it.

    :raises twisted.internet.error.ReactorAlreadyInstalledError: when a reactor is already
        installed (``twisted.internet.reactor`` was imported first).
    """
    reactor = EPollReactor()
    installReactor(reactor)
    return reactor


def install_default() -> bool:
    """
    Install :class:`EPollReactor` as the global reactor when none is installed yet, on Linux.

    ``twistd lb`` calls this in ``makeService``, which twistd runs before anything imports
    ``twisted.internet.reactor`` unless ``--reactor`` installed one while the options were
    parsed; so the shipped command gets the cheaper reactor, and ``--reactor`` still wins.

    Returns:
        ``True`` when this call installed it; ``False`` off Linux (no epoll) or when a reactor
        was already installed.
    """
    if not sys.platform.startswith("linux") or "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
