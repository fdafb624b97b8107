"""FastAPI: the gateway's runtime routes next to the app's own, under one ASGI server.

``InvokeASGIMiddleware`` (the ``asgi`` extra) sends runtime requests to ``InvokeMiddleware`` on
a bounded pool of threads; every other request reaches FastAPI as usual. Services, keys and
memberships live in a SQLite file (create them with the ``invoke-middleware`` command line on
the same database). Run::

    pip install 'invoke_middleware[asgi]' fastapi uvicorn
    python examples/fastapi_app.py                     # http://127.0.0.1:8000
    uvicorn --factory fastapi_app:create_app           # the same, from examples/
    curl -H "Authorization: Bearer sk-..." http://127.0.0.1:8000/api/v1/r/containers/<slug>/

``INVOKE_DATABASE_URL`` in the environment picks another database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from invoke_middleware import InvokeMiddleware
from invoke_middleware.asgi import InvokeASGIMiddleware, no_wsgi_host
from invoke_middleware.hooks import RelayFinished
from invoke_middleware.store import SQLStore

logger = logging.getLogger("example.gateway")


def log_relay(event: RelayFinished) -> None:
    """An after-relay hook: one line per relay, never a body or a key."""
    logger.info("%s %s %s -> %d", event.request_id, event.service.slug, event.path, event.status)


def create_app(database_url: str | None = None) -> FastAPI:
    """The FastAPI app with the gateway under ``/api/v1``; ``app.state.gateway`` is the
    middleware (its ``.registry`` and ``.credentials`` are the SQL store's).

    The database is ``database_url``, else ``INVOKE_DATABASE_URL``, else ``invoke.db``.
    """
    store = SQLStore(database_url or os.environ.get("INVOKE_DATABASE_URL", "sqlite:///invoke.db"))
    store.init()  # creates the tables that are missing; safe on every start
    # no_wsgi_host: the gateway's own fallback is never reached, FastAPI answers the rest.
    gateway = InvokeMiddleware(
        no_wsgi_host,
        prefix="/api/v1",
        registry=store.services,
        credentials=store.credentials,
        memberships=store.memberships,
        after_relay=[log_relay],
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        gateway.close()  # its pooled upstream connections

    app = FastAPI(lifespan=lifespan)
    app.state.gateway = gateway

    @app.get("/")
    def home() -> dict[str, str]:
        return {"host": "fastapi example"}

    # 32 threads: each streaming relay holds one while it streams (see the README).
    app.add_middleware(InvokeASGIMiddleware, gateway=gateway, workers=32)
    return app


if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
