"""
``twistd lb``: the command-line options and ``makeService`` for the twistd plugin.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, cast

from twisted.application.service import IService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from twisted_lb import _compat as compat
from twisted_lb.config import ConfigError, load_config
from twisted_lb.interfaces import IBalancerReactor
from twisted_lb.logs import json_lines_observer, text_lines_observer
from twisted_lb.service import ListenError, LoadBalancerService

_log = Logger()


class _TwistdService(LoadBalancerService):
    """
    The balancer under twistd: a frontend that cannot listen ends the process with one clear
    line, the log observer follows ``[global] log_format`` (see :mod:`twisted_lb.logs`), and
    SIGHUP reloads the config file in place (:meth:`LoadBalancerService.reload`; nginx and
    HAProxy reload on SIGHUP too), TLS files included, and SIGUSR1 reopens the access log
    file (as nginx reopens its logs on USR1, which logrotate's ``postrotate`` sends). Both
    are logged and ignored once the balancer is stopping, until the process exits.
    """

    log_observer: ILogObserver | None = None
    _previous_sighup: Any = None
    _previous_sigusr1: Any = None

    def setServiceParent(self, parent: Any) -> None:
        # twistd attaches the service to its Application, then asks the Application for an
        # ILogObserver component before starting to log (twisted.application.app.AppLogger).
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            _log.critical("{error}; stopping", error=str(e))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        # The handler runs between two bytecodes of whatever the main thread is doing;
        # callFromThread makes the reload a reactor event instead.
        self._previous_sighup = signal.signal(
            signal.SIGHUP,
            lambda signum, frame: self.reactor.callFromThread(self._sighup),
        )
        self._previous_sigusr1 = signal.signal(
            signal.SIGUSR1,
            lambda signum, frame: self.reactor.callFromThread(self._sigusr1),
        )

    def _sigusr1(self) -> None:
        if not self.running:
            _log.info("SIGUSR1 ignored: the balancer is stopping")
            return
        _log.info("SIGUSR1: reopening the access log")
        self.reopen_access_log()

    def _sighup(self) -> None:
        if not self.running:
            _log.info("SIGHUP ignored: the balancer is stopping")
            return
        _log.info("SIGHUP: reloading {path}", path=self.config.path)
        self.reload()
        if self.admin is not None:
            self.admin.reloaded()

    # stopService keeps the handlers: the default action of SIGHUP and SIGUSR1 is to end the
    # process, and a reload sent during the shutdown grace (a logrotate postrotate, a
    # config-management run) must not cut the requests it lets finish. They ignore the
    # signal while stopping, until the process exits.


class Options(usage.Options):
    """
    Options of ``twistd lb``.

    ``--config`` (``-c``) is required: the TOML file described in docs/config.rst. Under
    ``twistd --nodaemon`` without ``--pidfile``, no pidfile is written.
    """

    synopsis = "--config lb.toml"
    longdesc = (
        "Run the twisted-lb load balancer with the frontends and pools of a TOML config file. "
        "Check a config without running it with `twisted-lb check lb.toml`."
    )
    optParameters = [["config", "c", None, "Path of the TOML config file (required)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required, as in: twistd -n lb --config lb.toml")
        _no_pidfile_in_foreground(getattr(self, "parent", None))


_TWISTD_PIDFILE = compat.TWISTD_DEFAULT_PIDFILE


def _no_pidfile_in_foreground(twistd_options: Any) -> None:
    """
    With ``--nodaemon`` and no ``--pidfile``, write no pidfile: a process in the foreground
    is stopped by whoever started it (a terminal, systemd, a container runtime), and twistd's
    default ``./twistd.pid`` would stop a second balancer started in the same directory.
    ``--pidfile=PATH`` still writes one (``--pidfile=./twistd.pid`` for twistd's own file).

    twistd parses its subcommand's options, and so runs this, before its own ``postOptions``
    and long before it reads ``pidfile``.
    """
    if twistd_options is None:
        return
    try:
        nodaemon = twistd_options["nodaemon"]
        pidfile = twistd_options["pidfile"]
    except KeyError:
        return  # no pidfile option (twistd on Windows)
    if nodaemon and pidfile == _TWISTD_PIDFILE:
        twistd_options["pidfile"] = ""


def _log_output(options: Options) -> Any:
    """
    Where twistd would write its log: stdout with ``--nodaemon`` and no ``--logfile`` (or
    ``--logfile=-``), else the ``--logfile`` (default ``twistd.log``), rotated as twistd's own
    (``twisted.python.logfile.LogFile``).
    """
    parent = getattr(options, "parent", None) or {}
    logfile = parent.get("logfile")
    nodaemon = parent.get("nodaemon", True)
    if logfile == "-" or (not logfile and nodaemon):
        return sys.stdout
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(logfile or "twistd.log")


def makeService(options: Options) -> IService:
    """
    Build the service tree from ``--config``.

    A config problem is printed to stderr exactly as ``twisted-lb check`` prints it, and the
    process exits with status 1 before anything listens.

    On Linux, when ``--reactor`` chose none, this installs :mod:`twisted_lb.reactor` first
    (see :func:`twisted_lb.reactor.install_default`), so the plain ``twistd -n lb`` command
    runs on the cheaper reactor.
    """
    from twisted_lb.reactor import install_default

    install_default()
    from twisted.internet import reactor as global_reactor

    # Twisted types it as the interfaces most reactors provide; ours provides these too.
    reactor = cast(IBalancerReactor, global_reactor)

    try:
        config = load_config(options["config"])
        out = _log_output(options)
        # Access lines go where the other events go, unless [global] access_log says otherwise.
        service = _TwistdService.from_config(config, reactor, log_output=out)
        if config.global_config.log_format == "json":
            service.log_observer = json_lines_observer(out)
        else:
            service.log_observer = text_lines_observer(out)
        return service
    except ConfigError as e:
        for problem in e.problems:  # as ``twisted-lb check`` prints them
            sys.stderr.write(problem.located() + "\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
