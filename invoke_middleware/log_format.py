"""JSON log lines for log aggregators: :class:`JSONFormatter` writes one object per record.

Usage, for the relay log of :class:`~invoke_middleware.logging_hook.RelayLogger`::

    import logging
    from invoke_middleware.log_format import JSONFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    logging.getLogger("invoke_middleware").addHandler(handler)

A relay reads (on one line)::

    {"time": "2025-01-31T12:00:00.123+00:00", "level": "INFO",
     "logger": "invoke_middleware.access", "message": "relay", "request_id": "5f0c…",
     "route": "catch_all", "team": "019abc12-…", "user": null, "slug": "echo", "method": "GET",
     "path": "/v1/items", "status": 200, "bytes_in": 0, "bytes_out": 512,
     "duration_ms": 3.127, "error": null}

The relay fields are those of the ``key=value`` line, with their JSON types (numbers as
numbers, absent values ``null``), and the same guarantees: only those fields are written,
never another attribute a record carries, so no header value, token or body; a path loses
its query even if a record kept one; and JSON escaping with ``ensure_ascii`` turns control
characters, quotes, line separators and all non-ASCII into escapes, so a hostile path stays
inside its string and the object on its line. Other records (warnings, errors) are written
with ``time``, ``level``, ``logger`` and ``message`` (and ``exc_info`` with a traceback).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from invoke_middleware.logging_hook import FIELDS

__all__ = ["JSONFormatter"]


def _is_relay(record: logging.LogRecord) -> bool:
    return all(hasattr(record, name) for name in FIELDS)


class JSONFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object, with no newline inside it."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if _is_relay(record):
            document["message"] = "relay"
            for name in FIELDS:
                document[name] = _plain(getattr(record, name))
            path = document.get("path")
            if isinstance(path, str):
                document["path"] = path.partition("?")[0]
        else:
            document["message"] = record.getMessage()
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=True, separators=(", ", ": "))


def _plain(value: object) -> object:
    """``value`` when JSON has a type for it, else its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
