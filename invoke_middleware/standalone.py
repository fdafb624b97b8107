"""The standalone gateway: the middleware over a tiny host app, wired to a SQL store.

``invoke-middleware serve`` runs what :func:`build_standalone_app` returns. The host app behind the
middleware answers ``GET /healthz`` with 200 and every other path with a JSON 404, so the only
useful routes are the runtime ones. Usage from Python::

    from pathlib import Path
    from invoke_middleware._toml_config import load_config
    from invoke_middleware.standalone import build_standalone_app

    gateway = build_standalone_app(load_config(Path("invoke-middleware.toml")))
    # gateway.app is a WSGI application; gateway.close() releases connections.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from invoke_middleware._toml_config import StandaloneConfig
from invoke_middleware.config import ConfigError
from invoke_middleware.limits import fair_share
from invoke_middleware.logging_hook import RelayLogger
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.store.sql import SQLStore

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger("invoke_middleware.standalone")

HEALTH_PATH = "/healthz"


def host_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The host behind the middleware: ``/healthz`` for probes, a JSON 404 for the rest."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path != HEALTH_PATH:
        return _json(start_response, "404 Not Found", {"error_message": "Not found."})
    if method not in ("GET", "HEAD"):
        return _json(
            start_response,
            "405 Method Not Allowed",
            {"error_message": "Method not allowed."},
            [("Allow", "GET, HEAD")],
        )
    body = _json(start_response, "200 OK", {"status": "ok"})
    return [] if method == "HEAD" else body


def _json(
    start_response: StartResponse,
    status: str,
    payload: object,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *extra,
        ],
    )
    return [body]


class EnvironmentSecretResolver:
    """A :class:`~invoke_middleware.pipeline.SecretResolver` reading environment variables.

    ``names`` maps a credential reference to the name of an environment variable; the
    variable's value, read on every request (so a rotated value applies without a restart
    where the environment can change), is the ``Authorization`` header sent verbatim, e.g.
    ``Bearer xyz``. An unknown reference or an unset or empty variable gives ``None``, which
    the gateway turns into a 502 for the caller and an error in its log.
    """

    def __init__(self, names: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> None:
        self._names = dict(names)
        self._environ = environ

    def __call__(self, credential_id: str) -> str | None:
        name = self._names.get(credential_id)
        if name is None:
            logger.error("no [secrets] entry for credential reference %r", credential_id)
            return None
        value = self._environ.get(name)
        if not value:
            logger.error(
                "environment variable %s (credential reference %r) is not set", name, credential_id
            )
            return None
        return value

    def __repr__(self) -> str:
        return f"EnvironmentSecretResolver({sorted(self._names)!r})"


@dataclass(frozen=True, kw_only=True)
class StandaloneApp:
    """The WSGI application ``serve`` runs, and the store behind it."""

    app: InvokeMiddleware
    store: SQLStore

    def close(self) -> None:
        """Close upstream connections and the store's pool."""
        self.app.close()
        self.store.close()


def build_standalone_app(
    config: StandaloneConfig,
    environ: Mapping[str, str] = os.environ,
    *,
    threads: int | None = None,
) -> StandaloneApp:
    """Assemble the standalone gateway from ``config``; a JWT key is read from ``environ``.

    ``threads`` is the number of worker threads it will be served with (default: the
    ``[server]`` table's): unless ``[limits]`` says otherwise, one team may hold at most half of
    them with relays in flight and all teams together all but one, so that no team can starve
    another (README, "Fair share").

    Raises :class:`~invoke_middleware.config.ConfigError`, naming the file, when a JWT key
    cannot be read or does not suit the configured algorithms.
    """
    try:
        settings = config.gateway.resolve(environ)
    except ConfigError as exc:
        raise exc.located(str(config.path)) from None
    settings = replace(
        settings,
        limits=fair_share(settings.limits, threads or config.server.threads),
    )
    store = SQLStore(config.database, service_cache_ttl=config.service_cache_ttl)
    access_log = RelayLogger()
    try:
        app = settings.build_middleware(
            host_app,
            registry=store.services,
            credentials=store.credentials,
            memberships=store.memberships,
            secret_resolver=EnvironmentSecretResolver(config.secrets, environ),
            after_relay=[access_log],
            on_limit=[access_log.on_limit],
        )
    except BaseException:
        store.close()
        raise
    return StandaloneApp(app=app, store=store)
