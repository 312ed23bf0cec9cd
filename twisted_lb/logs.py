"""
Log observers for ``twistd lb``: ``[global] log_format = "text"`` (the default) or ``"json"``.

Text lines look like twistd's own (``2026-11-21T10:00:00+0000 [namespace#level] message``) but
cost far less per event: the timestamp is formatted once per second, and an access event's
line is built straight from its fields. twistd's observer spends about 60 µs per event, which
at one access event per HTTP request was most of the proxy's time.

With ``log_format = "json"`` each event is one JSON object per line.

Every event becomes ``{"time": ..., "level": ..., "namespace": ..., "message": ...}`` plus its
own fields: an access event (namespace ``twisted_lb.access``) carries ``frontend``, ``client``,
``backend``, the byte counts, and for HTTP ``method``, ``target``, ``status`` and the
``connect_ms``/``first_byte_ms``/``total_ms`` timings; a relayed TCP connection carries
``duration_ms`` and ``ended``. Fields whose values are not JSON types are written as text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import provider

__all__ = ["json_lines_observer", "text_lines_observer"]

ACCESS_NAMESPACE = "twisted_lb.access"


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
    """Formats UTC timestamps as twistd does, once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def format(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.second = second
            self.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
        return self.text


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
