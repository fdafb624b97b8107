"""Flask: ``InvokeExtension``, configured from ``app.config``.

Settings are the ``INVOKE_*`` config keys (``INVOKE_PREFIX``, ``INVOKE_DATABASE_URL``,
``INVOKE_JWT_ALGORITHMS``, ...); Flask also reads them from ``FLASK_INVOKE_*`` environment
variables here. Objects (hooks, a registry, resolvers, transports) go to the extension. Run::

    flask --app examples/flask_app.py run            # http://127.0.0.1:5000
    curl -H "Authorization: Bearer sk-..." http://127.0.0.1:5000/api/v1/r/containers/<slug>/

Without the extension, the same in one line::

    app.wsgi_app = InvokeMiddleware(app.wsgi_app, prefix="/api/v1", registry=registry)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask

from invoke_middleware.flask import InvokeExtension
from invoke_middleware.hooks import RelayFinished
from invoke_middleware.store import SQLStore

logger = logging.getLogger("example.gateway")


def log_relay(event: RelayFinished) -> None:
    """An after-relay hook: one line per relay, never a body or a key."""
    started = event.started
    logger.info(
        "%s %s %s -> %d", started.request_id, started.service.slug, started.path, event.status
    )


invoke = InvokeExtension(after_relay=[log_relay])


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """The host app, with the gateway under ``/api/v1``."""
    app = Flask(__name__)
    app.config.update(INVOKE_PREFIX="/api/v1", INVOKE_DATABASE_URL="sqlite:///invoke.db")
    app.config.from_prefixed_env()  # FLASK_INVOKE_DATABASE_URL=... and so on
    app.config.update(config or {})

    @app.get("/")
    def home() -> dict[str, str]:
        return {"host": "flask example"}

    # Create the store's missing tables (safe on every start); or run `invoke-middleware init`.
    with SQLStore(str(app.config["INVOKE_DATABASE_URL"])) as store:
        store.init()
    invoke.init_app(app)
    return app
