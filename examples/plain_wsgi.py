"""Plain WSGI: wrap any WSGI application with ``InvokeMiddleware``.

The gateway answers ``/api/v1/r/...``; every other request reaches ``host_app`` untouched.
Services, keys and memberships live in a SQLite file (create them with the
``invoke-middleware`` command line on the same database, or in code through
``app.registry`` and ``app.credentials``). Run::

    python examples/plain_wsgi.py                  # http://127.0.0.1:8000
    curl -H "Authorization: Bearer sk-..." http://127.0.0.1:8000/api/v1/r/containers/<slug>/

``INVOKE_DATABASE_URL`` in the environment picks another database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from invoke_middleware import InvokeMiddleware
from invoke_middleware.hooks import RelayFinished
from invoke_middleware.store import SQLStore

logger = logging.getLogger("example.gateway")


def host_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The application the gateway is added to: here, one page."""
    body = b"Hello from the host application\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def log_relay(event: RelayFinished) -> None:
    """An after-relay hook: one line per relay, never a body or a key."""
    started = event.started
    logger.info(
        "%s %s %s %s -> %d (%d bytes)",
        started.request_id,
        started.service.slug,
        started.method,
        started.path,
        event.status,
        event.bytes_out,
    )


def make_app(database_url: str = "sqlite:///invoke.db") -> InvokeMiddleware:
    """The host app wrapped by the gateway, with its stores in ``database_url``."""
    store = SQLStore(database_url)
    store.init()  # creates the tables that are missing; safe on every start
    return InvokeMiddleware(
        host_app,
        prefix="/api/v1",
        registry=store.services,
        credentials=store.credentials,
        memberships=store.memberships,
        after_relay=[log_relay],
    )


if __name__ == "__main__":
    from waitress import serve

    logging.basicConfig(level=logging.INFO)
    serve(
        make_app(os.environ.get("INVOKE_DATABASE_URL", "sqlite:///invoke.db")),
        listen="127.0.0.1:8000",
        # waitress's default lets each streamed download grow a 16 MiB output buffer per
        # connection (kept by the allocator afterwards); the kernel's send buffer does the
        # real buffering (README, "Plain WSGI").
        outbuf_high_watermark=256 * 1024,
        recv_bytes=64 * 1024,
    )
