"""Flask integration: :class:`InvokeExtension`, configured from ``app.config``.

The extension wraps ``app.wsgi_app``, so runtime requests are answered before Flask sees them
(no request context, no ``before_request`` handlers) and every other request reaches Flask
untouched. Settings are the ``INVOKE_*`` keys of ``app.config`` (see
:mod:`invoke_middleware.config` for the table); objects are keyword arguments::

    from flask import Flask
    from invoke_middleware.flask import InvokeExtension

    invoke = InvokeExtension(after_relay=[audit])

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["INVOKE_PREFIX"] = "/api/v1"
        app.config["INVOKE_DATABASE_URL"] = "sqlite:///invoke.db"
        invoke.init_app(app)
        return app

The middleware is kept in ``app.extensions["invoke_middleware"]``; a host reaches the stores
through it (``.credentials``, ``.memberships``, ``.registry``).

Without the extension, wrap the app yourself with the same effect::

    app.wsgi_app = InvokeMiddleware(app.wsgi_app, prefix="/api/v1", registry=registry)
"""

from __future__ import annotations

from typing import Unpack

from flask import Flask

from invoke_middleware.config import Collaborators, parse_flask_config
from invoke_middleware.middleware import InvokeMiddleware

__all__ = ["EXTENSION_KEY", "InvokeExtension"]

#: Where :meth:`InvokeExtension.init_app` keeps the middleware in ``app.extensions``.
EXTENSION_KEY = "invoke_middleware"


class InvokeExtension:
    """Adds the gateway to Flask apps, with settings from their ``INVOKE_*`` config keys.

    ``collaborators`` (a registry, stores, resolvers, transports, hooks, ...) are passed to
    every middleware this extension builds. With ``app`` given, :meth:`init_app` runs at once.
    """

    def __init__(self, app: Flask | None = None, **collaborators: Unpack[Collaborators]) -> None:
        self.collaborators = collaborators
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> InvokeMiddleware:
        """Wrap ``app.wsgi_app`` and return the middleware.

        Raises :class:`~invoke_middleware.config.ConfigError` naming the bad ``INVOKE_*`` key,
        and :class:`RuntimeError` when ``app`` already has the gateway.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"the app {app.name!r} already has invoke_middleware")
        config = parse_flask_config(app.config)
        middleware = config.build_middleware(app.wsgi_app, **self.collaborators)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware
        return middleware
