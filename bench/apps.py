"""The three gateways of the relay benchmark, as factories gunicorn calls (``apps:make_relay()``).

All wrap the same trivial host app:

- ``make_relay()``: the host wrapped by :class:`InvokeMiddleware`, with one deployed service,
  ``bench``, pointing at the upstream, and one ``sk-`` integration key in the in-memory store;
- ``make_proxy()``: the host wrapped by werkzeug's ``ProxyMiddleware``, relaying
  ``/r/containers/bench/`` to the same upstream;
- ``make_bare()``: the host alone, answering every request itself.

They read ``BENCH_UPSTREAM`` (the upstream's base URL); ``make_relay`` writes its key to the
file named by ``BENCH_KEY_FILE``. Run gunicorn with ``--preload`` so that every worker shares
the key issued once in the master.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.middleware.http_proxy import ProxyMiddleware

from invoke_middleware import (
    InMemoryServiceRegistry,
    InvokeMiddleware,
    KeyKind,
    Service,
    ServiceStatus,
    ServiceType,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

TEAM = uuid.UUID("0b0b0b0b-0000-4000-8000-00000000be4c")
BODY = b"hello, world\n"


def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The host application: the same small answer as the upstream's, for any path."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def make_relay() -> WSGIApplication:
    registry = InMemoryServiceRegistry()
    registry.add(
        Service(
            id=uuid.uuid4(),
            team_id=TEAM,
            slug="bench",
            display_name="Bench",
            service_type=ServiceType.DEPLOYED,
            service_status=ServiceStatus.RUNNING,
            upstream_url=os.environ["BENCH_UPSTREAM"],
        )
    )
    middleware = InvokeMiddleware(host, registry=registry)
    key = middleware.credentials.issue(KeyKind.INTEGRATION, team_id=TEAM).key
    Path(os.environ["BENCH_KEY_FILE"]).write_text(key, encoding="utf-8")
    return middleware


def make_proxy() -> WSGIApplication:
    target = os.environ["BENCH_UPSTREAM"].rstrip("/") + "/"
    return ProxyMiddleware(host, {"/r/containers/bench/": {"target": target}})


def make_bare() -> WSGIApplication:
    return host
