"""The host application the middleware wraps in the integration tests."""

from __future__ import annotations

import flask


def host_app() -> flask.Flask:
    """A Flask app with one route of its own next to the runtime routes."""
    app = flask.Flask("integration-host")

    @app.route("/hello")
    def hello() -> str:
        return "hello from host"

    return app
