"""
The log of ``twistd lb``: the observer of its events, and the access log.

Events (start-up, backend failures, errors) go through ``twisted.logger`` to the observer that
``[global] log_format`` chooses: ``"text"`` (the default) or ``"json"``. Text lines look like
twistd's own (``2026-11-21T10:00:00+0000 [namespace#level] message``) but cost far less per
event: the timestamp is formatted once per second, and an access event's line is built
straight from its fields. twistd's observer spends about 60 µs per event. With
``log_format = "json"`` each event is one JSON object per line.

Every event becomes ``{"time": ..., "level": ..., "namespace": ..., "message": ...}`` plus its
own fields: an access event (namespace ``twisted_lb.access``) carries ``frontend``, ``client``,
``backend``, the byte counts, and for HTTP ``method``, ``target``, ``status`` and the
``connect_ms``/``first_byte_ms``/``total_ms`` timings; a relayed TCP connection carries
``duration_ms`` and ``ended``. Fields whose values are not JSON types are written as text.

The access log is not a stream of events: one access line per request would cost the proxy
about a quarter of its time through an event dict and the observer chain. :class:`AccessLog`
formats each line straight from its fields into a buffer, written when it holds
``access_log_buffer`` bytes, at the latest ``access_log_flush`` seconds after its first line,
and when the balancer stops (nginx's ``access_log path buffer=64k flush=1s``,
https://nginx.org/en/docs/http/ngx_http_log_module.html#access_log). Its lines are the same,
text or JSON, as the events' would be. :class:`EventAccessLog` emits the events instead, for
programs that use the library with their own observers.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import implementer, provider

from twisted_lb import _defaults as defaults
from twisted_lb.interfaces import IAccessLog

__all__ = ["AccessLog", "EventAccessLog", "json_lines_observer", "text_lines_observer"]

_log = Logger()

ACCESS_NAMESPACE = "twisted_lb.access"

#: The format string of an HTTP access event (``log_format`` of :class:`EventAccessLog`'s),
#: with ``first_byte_ms=-`` written in (:data:`HTTP_ACCESS_FORMAT_NO_FIRST_BYTE`) for a
#: request that had no response byte, whose ``first_byte_ms`` field is ``None``.
HTTP_ACCESS_FORMAT = (
    '{frontend} {client} "{method} {target}" {status} in={bytes_in} out={bytes_out} '
    "backend={backend} connect_ms={connect_ms} first_byte_ms={first_byte_ms} total_ms={total_ms}"
)

#: :data:`HTTP_ACCESS_FORMAT` of a request that had no response byte: ``first_byte_ms=-``, as
#: :class:`AccessLog` writes it, whatever observer formats the event.
HTTP_ACCESS_FORMAT_NO_FIRST_BYTE = HTTP_ACCESS_FORMAT.replace("{first_byte_ms}", "-")

#: The format string of a relayed TCP connection's access event.
TCP_ACCESS_FORMAT = (
    "{frontend} {client} -> {backend} in={bytes_in} out={bytes_out} "
    "duration_ms={duration_ms} ended={ended}"
)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def json_event(event: LogEvent) -> dict[str, Any]:
    """
    The JSON object written for one event.

    Keys: ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message`` (the event's text),
    ``failure`` (the traceback, for failures), and every field of the event whose name does
    not start with ``log_``.
    """
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(),
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in record:
            record[key] = _jsonable(value)
    return record


def json_lines_observer(out: IO[str]) -> ILogObserver:
    """
    A log observer that writes each event to ``out`` as one line of JSON (see
    :func:`json_event`), and flushes it.
    """

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        out.write(json.dumps(json_event(event), separators=(",", ":")) + "\n")
        out.flush()

    return cast(ILogObserver, observe)


class _SecondClock:
    """Formats UTC timestamps as twistd does, once per second, as text and as ASCII bytes."""

    __slots__ = ("raw", "second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""
        self.raw = b""

    def format(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.second = second
            self.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
            self.raw = self.text.encode("ascii")
        return self.text

    def format_raw(self, when: float) -> bytes:
        self.format(when)
        return self.raw


def _utf8(raw: bytes) -> bytes:
    """Request bytes as the log writes them: each byte a Latin-1 character, in UTF-8."""
    return raw.decode("latin-1").encode("utf-8")


#: The text access line of an HTTP request, and of one that had no response byte.
_HTTP_LINE = (
    b'%s [twisted_lb.access#info] %s %s "%s %s" %d in=%d out=%d backend=%s connect_ms=%d '
    b"first_byte_ms=%d total_ms=%d\n"
)
_HTTP_LINE_NO_FIRST_BYTE = _HTTP_LINE.replace(b"first_byte_ms=%d", b"first_byte_ms=%s")


def _access_line(event: LogEvent) -> str:
    """An access event's message, without the cost of the format-string machinery."""
    if "status" in event:
        first_byte = event.get("first_byte_ms")
        if first_byte is None:
            first_byte = "-"
        return (
            f'{event["frontend"]} {event["client"]} "{event["method"]} {event["target"]}" '
            f"{event['status']} in={event['bytes_in']} out={event['bytes_out']} "
            f"backend={event['backend']} connect_ms={event['connect_ms']} "
            f"first_byte_ms={first_byte} total_ms={event['total_ms']}"
        )
    return formatEvent(event)


def text_lines_observer(out: IO[str]) -> ILogObserver:
    """
    A log observer that writes each event to ``out`` as one line of text, flushed:
    ``<time> [<namespace>#<level>] <message>``, and a failure's traceback after it.
    """
    clock = _SecondClock()

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        namespace = event.get("log_namespace", "-")
        level = getattr(event.get("log_level"), "name", "-")
        message = _access_line(event) if namespace == ACCESS_NAMESPACE else formatEvent(event)
        text = f"{clock.format(event.get('log_time', 0.0))} [{namespace}#{level}] {message}\n"
        failure = event.get("log_failure")
        if failure is not None:
            text += failure.getTraceback()
        out.write(text)
        out.flush()

    return cast(ILogObserver, observe)


_encode_json = json.JSONEncoder(separators=(",", ":")).encode


@implementer(IAccessLog)
class AccessLog:
    """
    The access log as nginx writes it (``access_log path buffer=64k flush=1s``): each line is
    formatted at once from its fields and appended to a buffer; the buffer is written in one
    go when it holds ``buffer_bytes``, ``flush_interval`` seconds after its first line at the
    latest, and on :meth:`flush`, :meth:`reopen` and :meth:`close`.

    The lines are those of the ``twisted_lb.access`` events under ``log_format``: for
    ``"text"`` ``<time> [twisted_lb.access#info] <message>``, for ``"json"`` the object of
    :func:`json_event` (with ``first_byte_ms=-`` in the message of a request that had no
    response byte).

    A write that fails (a full disk, a closed stream) drops the buffered lines and says so in
    the log of events; the next write tries again. Once closed, lines are written as they come.

    Args:
        clock: for the flush timer and the lines' time (``seconds()``, UTC).
        out: a file path, opened for appending (``O_APPEND``) by :meth:`open` or at the first
            write, and opened again by :meth:`reopen` (after log rotation moved it); or a text
            stream (``sys.stdout``, twistd's log file), written and flushed but never closed,
            and reopened by :meth:`reopen` when it has a ``reopen()`` method (as
            ``twisted.python.logfile.LogFile`` does).
        log_format: ``"text"`` or ``"json"``.
        buffer_bytes: written when the buffer holds this many bytes (UTF-8); 0 writes each
            line at once.
        flush_interval: seconds a line may wait in the buffer.

    Attributes:
        path: the file path, or ``None`` for a stream.
        lines_dropped: lines lost to failed writes.

    Raises:
        ValueError: ``log_format`` is unknown, ``buffer_bytes`` < 0 or ``flush_interval``
            not > 0.
    """

    def __init__(
        self,
        clock: IReactorTime,
        out: IO[str] | str,
        *,
        log_format: str = "text",
        buffer_bytes: int = defaults.ACCESS_LOG_BUFFER,
        flush_interval: float = defaults.ACCESS_LOG_FLUSH,
    ) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")
        if buffer_bytes < 0:
            raise ValueError(f"buffer_bytes must be >= 0, not {buffer_bytes}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 s, not {flush_interval}")
        self.clock = clock
        self.path: str | None = out if isinstance(out, str) else None
        self._stream: IO[str] | None = None if isinstance(out, str) else out
        self._file: IO[bytes] | None = None
        self._json = log_format == "json"
        self.buffer_bytes = buffer_bytes
        self.flush_interval = flush_interval
        self._lines: list[bytes] = []
        self._names: dict[str, bytes] = {}
        self._size = 0
        self._timer: IDelayedCall | None = None
        self._stamp = _SecondClock()
        self.lines_dropped = 0

    def __repr__(self) -> str:
        return f"<AccessLog {self._destination()}>"

    def _destination(self) -> str:
        return self.path if self.path is not None else getattr(self._stream, "name", "stream")

    def open(self) -> None:
        """
        Open the file now (if ``out`` is a path and it is not open), so that a bad path is
        found before the balancer serves.

        Raises:
            OSError: the file cannot be opened for appending.
        """
        if self.path is not None and self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())

    def http(
        self,
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
        """One HTTP request's line; see :meth:`twisted_lb.interfaces.IAccessLog.http`."""
        now = self.clock.seconds()
        if self._json:
            first_byte = "-" if first_byte_ms is None else first_byte_ms
            text_method, text_target = method.decode("latin-1"), target.decode("latin-1")
            message = (
                f'{frontend} {client} "{text_method} {text_target}" '
                f"{status} in={bytes_in} out={bytes_out} backend={backend} "
                f"connect_ms={connect_ms} first_byte_ms={first_byte} total_ms={total_ms}"
            )
            self._append(
                _encode_json(
                    {
                        "time": datetime.fromtimestamp(now, UTC).isoformat(),
                        "level": "info",
                        "namespace": ACCESS_NAMESPACE,
                        "message": message,
                        "frontend": frontend,
                        "client": client,
                        "method": text_method,
                        "target": text_target,
                        "status": status,
                        "bytes_in": bytes_in,
                        "bytes_out": bytes_out,
                        "backend": backend,
                        "connect_ms": connect_ms,
                        "first_byte_ms": first_byte_ms,
                        "total_ms": total_ms,
                    }
                ).encode("utf-8", "backslashreplace")
                + b"\n"
            )
            return
        # The text line, formatted as bytes in one %-operation: the cheapest way CPython has
        # (an f-string with the two decodes costs twice as much). Names are encoded once.
        names = self._names
        stamp = self._stamp
        if not (method.isascii() and target.isascii()):
            method, target = _utf8(method), _utf8(target)
        line = (_HTTP_LINE if first_byte_ms is not None else _HTTP_LINE_NO_FIRST_BYTE) % (
            stamp.raw if int(now) == stamp.second else stamp.format_raw(now),
            names.get(frontend) or self._name(frontend),
            client.encode("utf-8", "backslashreplace"),
            method,
            target,
            status,
            bytes_in,
            bytes_out,
            names.get(backend) or self._name(backend),
            connect_ms,
            b"-" if first_byte_ms is None else first_byte_ms,
            total_ms,
        )
        # _append, inlined: this is the line of every request, and a call costs more here.
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.buffer_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.flush_interval, self._timed_flush)

    def _name(self, name: str) -> bytes:
        """A frontend's or backend's name as UTF-8, remembered (up to 4096 names)."""
        raw = name.encode("utf-8", "backslashreplace")
        if len(self._names) < 4096:
            self._names[name] = raw
        return raw

    def tcp(
        self,
        frontend: str,
        client: str,
        backend: str,
        bytes_in: int,
        bytes_out: int,
        duration_ms: int,
        ended: str,
    ) -> None:
        """One relayed TCP connection's line; see :meth:`twisted_lb.interfaces.IAccessLog.tcp`."""
        now = self.clock.seconds()
        message = (
            f"{frontend} {client} -> {backend} in={bytes_in} out={bytes_out} "
            f"duration_ms={duration_ms} ended={ended}"
        )
        if self._json:
            line = _encode_json(
                {
                    "time": datetime.fromtimestamp(now, UTC).isoformat(),
                    "level": "info",
                    "namespace": ACCESS_NAMESPACE,
                    "message": message,
                    "frontend": frontend,
                    "client": client,
                    "backend": backend,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "duration_ms": duration_ms,
                    "ended": ended,
                }
            )
        else:
            line = f"{self._stamp.format(now)} [twisted_lb.access#info] {message}"
        self._append((line + "\n").encode("utf-8", "backslashreplace"))

    def _append(self, line: bytes) -> None:
        """Buffer one line (with its newline), and write the buffer or set the timer."""
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.buffer_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write what the buffer holds, now (the flush timer, if set, still fires later)."""
        if not self._lines:
            return
        count = len(self._lines)
        data = b"".join(self._lines)
        self._lines = []
        self._size = 0
        try:
            if self._stream is not None:
                self._stream.write(data.decode("utf-8"))
                self._stream.flush()
            else:
                if self._file is None:
                    self.open()
                assert self._file is not None
                self._file.write(data)
                self._file.flush()
        except (OSError, ValueError) as e:
            self.lines_dropped += count
            _log.warn(
                "access log {destination}: {count} lines lost: {error}",
                destination=self._destination(),
                count=count,
                error=str(e) or type(e).__name__,
            )

    def reopen(self) -> None:
        """
        Write the buffer, then open the file again by its path, as nginx does on SIGUSR1:
        after a log rotation renamed the file, the lines go to a new file of that name. The
        new file is opened first and the old one closed only once it is open; if the open
        fails (say, a root-owned file made by logrotate's ``create`` after ``--uid``), the
        error is logged and the lines keep going to the old file, as nginx keeps its old one,
        until the next reopen. A stream is reopened if it can be (``reopen()``), else only
        flushed.
        """
        self.flush()
        if self.path is not None:
            try:
                new = open(self.path, "ab")  # noqa: SIM115 (closed by close())
            except OSError as e:
                _log.error(
                    "access log {destination}: cannot reopen, still writing to the old file: "
                    "{error}",
                    destination=self.path,
                    error=str(e),
                )
                return
            old, self._file = self._file, new
            if old is not None:
                old.close()
        else:
            reopen = getattr(self._stream, "reopen", None)
            if reopen is not None:
                reopen()

    def close(self) -> None:
        """
        Write the buffer, cancel the flush timer and close the file (not a stream). Lines
        that come later are written at once.
        """
        self.buffer_bytes = 0
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()
        self.flush()
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


@implementer(IAccessLog)
class EventAccessLog:
    """
    The access log as ``twisted.logger`` events in the ``twisted_lb.access`` namespace, with
    the fields of :class:`~twisted_lb.interfaces.IAccessLog`'s methods (``method`` and
    ``target`` as text), formatted by :data:`HTTP_ACCESS_FORMAT` (or
    :data:`HTTP_ACCESS_FORMAT_NO_FIRST_BYTE`) and :data:`TCP_ACCESS_FORMAT`. It is the default
    of the frontend factories used as a library; ``twistd lb`` writes an :class:`AccessLog`
    instead.

    Args:
        logger: the logger to emit through (default: one of namespace ``twisted_lb.access``
            publishing to the global log publisher).
    """

    def __init__(self, logger: Logger | None = None) -> None:
        self.logger = logger if logger is not None else Logger(namespace=ACCESS_NAMESPACE)

    def http(
        self,
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
        The event ``logger.info(HTTP_ACCESS_FORMAT, ...)`` would emit, built in one go (with
        :data:`HTTP_ACCESS_FORMAT_NO_FIRST_BYTE` when ``first_byte_ms`` is ``None``).
        """
        logger = self.logger
        logger.observer(
            {
                "log_logger": logger,
                "log_level": LogLevel.info,
                "log_namespace": logger.namespace,
                "log_source": None,
                "log_format": (
                    HTTP_ACCESS_FORMAT
                    if first_byte_ms is not None
                    else HTTP_ACCESS_FORMAT_NO_FIRST_BYTE
                ),
                "log_time": time.time(),
                "frontend": frontend,
                "client": client,
                "method": method.decode("latin-1"),
                "target": target.decode("latin-1"),
                "status": status,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "backend": backend,
                "connect_ms": connect_ms,
                "first_byte_ms": first_byte_ms,
                "total_ms": total_ms,
            }
        )

    def tcp(
        self,
        frontend: str,
        client: str,
        backend: str,
        bytes_in: int,
        bytes_out: int,
        duration_ms: int,
        ended: str,
    ) -> None:
        """The event ``logger.info(TCP_ACCESS_FORMAT, ...)``."""
        self.logger.info(
            TCP_ACCESS_FORMAT,
            frontend=frontend,
            client=client,
            backend=backend,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=duration_ms,
            ended=ended,
        )
