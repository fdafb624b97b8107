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
"""

from __future__ import annotations

import json
import logging
import re

from invoke_middleware.hooks import RelayFinished
from invoke_middleware.limits import LimitEvent

__all__ = ["RelayLogger"]

#: Values made only of these characters are written bare; anything else is JSON-quoted.
_BARE = re.compile(r"[A-Za-z0-9._~/:@+,-]+")

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


def _value(value: object) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    # JSON escapes quotes, backslashes, control characters and (ensure_ascii) every non-ASCII
    # character, U+2028 included: the line stays one line and its fields stay its own.
    return json.dumps(text, ensure_ascii=True)


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
        line = " ".join(f"{name}={_value(fields[name])}" for name in FIELDS)
        # "%s" keeps a "%" in a path from being read as a format directive.
        self.logger.log(self.level, "relay %s", line, extra=fields)

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
            "slug": event.service.slug,
            "limit": None if event.limit is None else event.limit.value,
            "outcome": event.outcome.value,
        }
        line = " ".join(f"{name}={_value(value)}" for name, value in fields.items())
        self.logger.log(self.level, "limit %s", line, extra=fields)
