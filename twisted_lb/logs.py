"""
Log observers: ``[global] log_format = "json"`` writes one JSON object per line.

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

__all__ = ["json_lines_observer"]


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
