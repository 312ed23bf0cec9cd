"""
twisted_lb.reactor: the epoll reactor whose event dispatch skips ``log.callWithLogger`` but
keeps its logging context. Each test drives a real epoll reactor (not installed globally) over
a real socket pair with ``doPoll``, and where it matters does the same with Twisted's own epoll
reactor, as the reference the lean dispatch must match.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.internet import epollreactor
from twisted.internet.error import ConnectionDone
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_lb.reactor import EPollReactor, install_default

if not sys.platform.startswith("linux"):
    skip = "epoll is Linux only"


class Reader:
    """A read descriptor over one end of a socket pair that records how it is called."""

    def __init__(self, sock: socket.socket, prefix: str = "Reader,7") -> None:
        self.sock = sock
        self.prefix = prefix
        self.systems: list[str] = []
        self.depths: list[int] = []
        self.data = b""
        self.lost: list[Failure] = []
        self.fail_with: BaseException | None = None
        self.buggy_prefix = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        if self.buggy_prefix:
            raise RuntimeError("no prefix today")
        return self.prefix

    def doRead(self) -> ConnectionDone | None:
        self.systems.append(context.get(log.ILogContext)["system"])
        self.depths.append(len(context.theContextTracker.currentContext().contexts))
        if self.fail_with is not None:
            raise self.fail_with
        data = self.sock.recv(65536)
        if not data:
            return ConnectionDone()
        self.data += data
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.errors: list[dict[str, Any]] = []
        log.addObserver(self._observe)
        self.addCleanup(log.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("isError"):
            self.errors.append(event)

    def _reader(self, reactor: Any, prefix: str = "Reader,7") -> tuple[Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setblocking(False)
        reader = Reader(ours, prefix)
        reactor.addReader(reader)
        self.addCleanup(reactor.removeAll)
        return reader, theirs

    def _dispatch_twice(self, reactor_type: type) -> tuple[Reader, int]:
        reactor = reactor_type()
        reader, peer = self._reader(reactor, "HTTPProxyProtocol,3,127.0.0.1")
        depth = len(context.theContextTracker.currentContext().contexts)
        peer.sendall(b"hello")
        reactor.doPoll(1.0)
        peer.sendall(b" world")
        reactor.doPoll(1.0)
        self.assertEqual(len(context.theContextTracker.currentContext().contexts), depth)
        return reader, depth

    def test_same_context_as_twisted(self) -> None:
        """
        The handler sees the descriptor's logPrefix as the log system, one context deeper,
        as under Twisted's epoll reactor; the stack is back as it was after each poll.
        """
        ours, depth = self._dispatch_twice(EPollReactor)
        theirs, _ = self._dispatch_twice(epollreactor.EPollReactor)
        self.assertEqual(ours.data, b"hello world")
        self.assertEqual(ours.systems, ["HTTPProxyProtocol,3,127.0.0.1"] * 2)
        self.assertEqual(ours.depths, [depth + 1] * 2)
        self.assertEqual((ours.systems, ours.depths), (theirs.systems, theirs.depths))

    def test_legacy_log_gets_system(self) -> None:
        """A ``log.msg`` from a handler carries the descriptor's prefix as ``system``."""
        reactor = EPollReactor()
        reader, peer = self._reader(reactor, "Conn,9")
        seen: list[dict[str, Any]] = []
        log.addObserver(seen.append)
        self.addCleanup(log.removeObserver, seen.append)
        original = reader.doRead

        def do_read() -> None:
            original()
            log.msg("inside")

        reader.doRead = do_read  # type: ignore[method-assign]
        peer.sendall(b"x")
        reactor.doPoll(1.0)
        [event] = [e for e in seen if e.get("message") == ("inside",)]
        self.assertEqual(event["system"], "Conn,9")

    def test_handler_error(self) -> None:
        """
        An exception in ``doRead`` is logged with the descriptor's system and disconnects it,
        and the next descriptor in the same poll is still served.
        """
        reactor = EPollReactor()
        bad, bad_peer = self._reader(reactor, "Bad,1")
        good, good_peer = self._reader(reactor, "Good,2")
        bad.fail_with = ValueError("boom")
        bad_peer.sendall(b"x")
        good_peer.sendall(b"y")
        reactor.doPoll(1.0)
        self.assertEqual(good.data, b"y")
        [reason] = bad.lost
        self.assertIsInstance(reason.value, ValueError)
        self.assertNotIn(bad, reactor.getReaders())
        [error] = self.errors
        self.assertEqual(error["system"], "Bad,1")
        self.flushLoggedErrors(ValueError)

    def test_buggy_log_prefix(self) -> None:
        """A logPrefix that raises is logged, and the event is still handled."""
        reactor = EPollReactor()
        reader, peer = self._reader(reactor)
        reader.buggy_prefix = True
        peer.sendall(b"z")
        reactor.doPoll(1.0)
        self.assertEqual(reader.data, b"z")
        self.assertEqual(reader.systems, ["(buggy logPrefix method)"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_hangup(self) -> None:
        """A peer that closes gives ``connectionLost`` with a clean close, as in Twisted's."""
        reactor = EPollReactor()
        reader, peer = self._reader(reactor)
        peer.sendall(b"last")
        peer.close()
        for _ in range(3):
            reactor.doPoll(1.0)
            if reader.lost:
                break
        self.assertEqual(reader.data, b"last")
        [reason] = reader.lost
        self.assertIsInstance(reason.value, ConnectionDone)

    def test_nested_contexts(self) -> None:
        """
        Run from inside other contexts, the handler sees the log context in force (from
        anywhere down the stack) with its own system, and the other keys, as in Twisted's.
        """
        seen = {}
        for reactor_type in (EPollReactor, epollreactor.EPollReactor):
            reactor = reactor_type()
            reader, peer = self._reader(reactor, "Nested,1")
            peer.sendall(b"n")
            observed: list[tuple[dict[str, Any], Any]] = []
            original = reader.doRead

            def do_read(
                original: Any = original, observed: list[tuple[dict[str, Any], Any]] = observed
            ) -> Any:
                observed.append((dict(context.get(log.ILogContext)), context.get("other")))
                return original()

            reader.doRead = do_read  # type: ignore[method-assign]
            log.callWithContext({"request": 5}, context.call, {"other": 1}, reactor.doPoll, 1.0)
            seen[reactor_type] = observed
        self.assertEqual(seen[EPollReactor], [({"system": "Nested,1", "request": 5}, 1)])
        self.assertEqual(seen[EPollReactor], seen[epollreactor.EPollReactor])

    def test_error_past_the_handler(self) -> None:
        """
        An exception that escapes Twisted's own handling (here from ``connectionLost``, after
        a failed read) is logged with the descriptor's system, as ``callWithLogger`` does, and
        the poll goes on.
        """
        reactor = EPollReactor()
        bad, bad_peer = self._reader(reactor, "Worse,1")
        good, good_peer = self._reader(reactor, "Fine,2")
        bad.fail_with = ValueError("read")

        def lost(reason: Failure) -> None:
            raise KeyError("lost")

        bad.connectionLost = lost  # type: ignore[method-assign]
        bad_peer.sendall(b"x")
        good_peer.sendall(b"y")
        reactor.doPoll(1.0)
        self.assertEqual(good.data, b"y")
        self.assertEqual(
            sorted(e["system"] for e in self.errors), ["Worse,1", "Worse,1"]
        )  # the read error (Twisted's handler) and the escaped one (doPoll's)
        self.flushLoggedErrors(ValueError, KeyError)

    def test_descriptor_removed_by_an_earlier_handler(self) -> None:
        """A descriptor that an earlier handler of the same poll removed is not handled."""
        reactor = EPollReactor()
        first, first_peer = self._reader(reactor, "First,1")
        second, second_peer = self._reader(reactor, "Second,2")
        original = first.doRead

        def do_read() -> Any:
            reactor.removeReader(second)
            reactor.removeReader(first)
            return original()

        first.doRead = do_read  # type: ignore[method-assign]
        second.doRead = do_read  # type: ignore[method-assign]
        first_peer.sendall(b"1")
        second_peer.sendall(b"2")
        reactor.doPoll(1.0)
        # Whichever ran first removed both: exactly one handler ran.
        self.assertEqual(len(first.systems) + len(second.systems), 1)

    def test_timeout(self) -> None:
        """A poll with nothing ready returns after its timeout and dispatches nothing."""
        reactor = EPollReactor()
        reader, _ = self._reader(reactor)
        reactor.doPoll(0.01)
        self.assertEqual((reader.systems, reader.lost), ([], []))

    def test_registered(self) -> None:
        """``twistd --reactor=lb`` finds it through the reactor plugin."""
        [lb] = [r for r in getReactorTypes() if r.shortName == "lb"]
        self.assertEqual(lb.moduleName, "twisted_lb.reactor")


class InstallDefaultTests(SynchronousTestCase):
    def test_keeps_an_installed_reactor(self) -> None:
        """
        ``install_default`` leaves a reactor that is already installed (as ``twistd --reactor``
        installs one while parsing options) in place, and says it did nothing.
        """
        from twisted.internet import reactor

        self.assertFalse(install_default())
        self.assertIs(sys.modules["twisted.internet.reactor"], reactor)
