"""An after-relay hook that writes one structured line per relay to the :mod:`logging` module.

Usage::

    import logging
    from invoke_middleware import InvokeMiddleware
    from invoke_middleware.logging_hook import RelayLogger

    logging.basicConfig(level=logging.INFO)
    app.wsgi_app = InvokeMiddleware(app.wsgi_app, after_relay=[RelayLogger()])

Each record reads like::

    relay request_id=5f0c… route=catch_all team=019abc12-… user=- slug=echo method=GET
    path=/v1/items status=200 bytes_in=0 bytes_out=512 duration_ms=3.127 error=-

(on one line). The same fields are set on the record as attributes (``extra``), for JSON and
other structured handlers. A value made of anything but plain path characters is written as a
JSON string, so a hostile path cannot forge another field or break the line. The query string
is never logged (it may carry a token), nor is any header value, credential or body.

Every line the gateway logs is one line, whatever a caller sent: :func:`escape_control` writes
control characters as JSON escapes, and :class:`ControlCharacterFilter`, installed on each of
the package's loggers (:data:`GATEWAY_LOGGERS`) when the package is imported, applies it to
every record's message, traceback and stack. Add the filter to a handler to give the same
guarantee to other libraries' records (a WSGI server's, say)::

    handler.addFilter(ControlCharacterFilter())
"""

from __future__ import annotations

import json
import logging
import re
from typing import Final

from invoke_middleware.hooks import RelayFinished
from invoke_middleware.limits import LimitEvent

__all__ = ["GATEWAY_LOGGERS", "ControlCharacterFilter", "RelayLogger", "escape_control"]

#: C0 controls (CR, LF, NUL, ESC, ...), DEL, C1 controls (NEL among them) and the Unicode line
#: and paragraph separators: everything a terminal or a log reader may take as the end of a
#: line or as a command.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a JSON escape (``\\n``, ``\\u001b``).

    C0 controls, DEL, C1 controls, U+2028 and U+2029 are escaped; everything else, backslashes
    and printable non-ASCII characters included, is kept. ``text`` itself is returned when it
    holds none of them.
    """
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape, text)


#: The loggers of the package; each gets a :class:`ControlCharacterFilter` at import.
GATEWAY_LOGGERS: Final = (
    "invoke_middleware",
    "invoke_middleware.access",
    "invoke_middleware.auth",
    "invoke_middleware.cli",
    "invoke_middleware.hooks",
    "invoke_middleware.limits",
    "invoke_middleware.mcp",
    "invoke_middleware.readiness",
    "invoke_middleware.standalone",
    "invoke_middleware.store",
)

_TRACEBACK_FORMATTER: Final = logging.Formatter()


class ControlCharacterFilter(logging.Filter):
    """Escape control characters in a record's message, traceback and stack (never drops one).

    The message is formatted once here and replaced by its escaped text only when it held a
    control character, so that ordinary records keep their format string and arguments. A
    traceback is escaped whole: it follows its message as a single line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format call is the handler's to report
            return True
        escaped = escape_control(message)
        if escaped is not message:
            record.msg, record.args = escaped, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_control(record.exc_text)
        if record.stack_info:
            record.stack_info = escape_control(record.stack_info)
        return True


def _install_filters() -> None:
    for name in GATEWAY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ControlCharacterFilter) for f in logger.filters):
            logger.addFilter(ControlCharacterFilter())


_install_filters()

#: Values made only of these characters are written bare; anything else is JSON-quoted.
_BARE_TEXT: Final = r"[A-Za-z0-9._~/:@+,-]+"
_BARE: Final = re.compile(_BARE_TEXT)
#: Values joined by spaces, each of them bare: a whole line's told in one match.
_ALL_BARE: Final = re.compile(rf"{_BARE_TEXT}(?: {_BARE_TEXT})*")

#: The fields of each record, in the order they are written.
FIELDS = (
    "request_id",
    "route",
    "team",
    "user",
    "slug",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "error",
)


def _text(value: object) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else str(value)


def _value(value: object) -> str:
    text = _text(value)
    if _BARE.fullmatch(text):
        return text
    # A JSON string: quotes and backslashes escaped, so the value cannot end early and forge
    # another field; control characters escaped, so it cannot end the line. Printable
    # non-ASCII characters are kept as they are.
    return escape_control(json.dumps(text, ensure_ascii=False))


class RelayLogger:
    """Log one ``key=value`` line per finished relay.

    ``logger`` defaults to ``logging.getLogger("invoke_middleware.access")``; every record is
    written at ``level``. The record's ``extra`` attributes are those of :data:`FIELDS`
    (``duration_ms`` a float, the byte counts and status ints, absent values ``None``).
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = (
            logger if logger is not None else logging.getLogger("invoke_middleware.access")
        )
        self.level = level

    def __call__(self, event: RelayFinished) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        started = event.started
        fields: dict[str, object] = {
            "request_id": started.request_id,
            "route": started.route,
            "team": str(started.principal.team_id),
            "user": started.principal.user_id,
            "slug": started.service.slug,
            "method": started.method,
            # The gateway hands hooks the path without its query; dropped again here so the
            # guarantee holds for any event.
            "path": started.path.partition("?")[0],
            "status": event.status,
            "bytes_in": event.bytes_in,
            "bytes_out": event.bytes_out,
            "duration_ms": round(event.duration * 1000, 3),
            "error": event.error_code,
        }
        # "%s" keeps a "%" in a path from being read as a format directive.
        self._log("relay %s", fields)

    def on_limit(self, event: LimitEvent) -> None:
        """Log a request refused by a limit, or a rate-limit store failure (a limiter hook):
        ``limit request_id=... route=... team=... user=... slug=... limit=... outcome=...``."""
        if not self.logger.isEnabledFor(self.level):
            return
        fields: dict[str, object] = {
            "request_id": event.request_id,
            "route": event.route,
            "team": str(event.principal.team_id),
            "user": event.principal.user_id,
            "slug": None if event.service is None else event.service.slug,
            "limit": None if event.limit is None else event.limit.value,
            "outcome": event.outcome.value,
        }
        self._log("limit %s", fields)

    def _log(self, message: str, fields: dict[str, object]) -> None:
        """Log ``message`` with the line of ``fields`` (in their order) as its argument, and
        ``fields`` as the record's attributes, control characters escaped in both."""
        texts = [_text(value) for value in fields.values()]
        joined = " ".join(texts)
        # Every value bare: the spaces are only the ones joining them, and the rest matches.
        if joined.count(" ") == len(texts) - 1 and _ALL_BARE.fullmatch(joined):
            # The usual line: nothing to quote, and no control character anywhere.
            line = " ".join(map("=".join, zip(fields, texts, strict=True)))
        else:
            line = " ".join(f"{name}={_value(value)}" for name, value in fields.items())
            # The attributes too: a handler may format them into a line of its own.
            for name, value in fields.items():
                if isinstance(value, str):
                    fields[name] = escape_control(value)
        logger = self.logger
        # What Logger.log() does, but for the walk up the stack to find the caller: every
        # record here comes from this hook, so its pathname and funcName say so (lineno 0).
        record = logger.makeRecord(
            logger.name, self.level, __file__, 0, message, (line,), None, "RelayLogger", fields
        )
        logger.handle(record)
