"""The standalone gateway: the middleware over a tiny host app, wired to a SQL store.

``invoke-middleware serve`` runs what :func:`build_standalone_app` returns. The host app behind the
middleware answers ``GET /healthz`` with 200 (the process is up), ``GET /readyz`` with 200 when
the store answers too and 503 when it does not (:mod:`invoke_middleware.readiness`), ``GET
/metrics`` when ``[server] metrics`` is on, and every other path with a JSON 404, so the only
useful routes are the runtime ones. Usage from Python::

    from pathlib import Path
    from invoke_middleware._toml_config import load_config
    from invoke_middleware.standalone import build_standalone_app

    gateway = build_standalone_app(load_config(Path("invoke-middleware.toml")))
    # gateway.app is a WSGI application; gateway.readiness() is /readyz's check;
    # gateway.close() releases connections.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import sqlalchemy as sa

from invoke_middleware._toml_config import SecretEntry, StandaloneConfig
from invoke_middleware.config import ConfigError, KeyStyle
from invoke_middleware.hooks import AfterRelayHook, BeforeRelayHook
from invoke_middleware.limits import LimitHook, fair_share
from invoke_middleware.logging_hook import RelayLogger
from invoke_middleware.middleware import InvokeMiddleware
from invoke_middleware.readiness import Readiness, ReadinessCheck, limiter_probe, store_probe
from invoke_middleware.store.sql import SQLStore

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from prometheus_client import CollectorRegistry

    from invoke_middleware.registry import Service

logger = logging.getLogger("invoke_middleware.standalone")

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
#: The shortest ``/metrics`` token taken: 128 bits in hexadecimal digits.
MIN_METRICS_TOKEN_LENGTH = 32


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


class StandaloneHost:
    """:func:`host_app` plus ``/readyz`` (and ``/metrics`` when ``metrics`` renders them).

    ``metrics`` returns the exposition's body and content type. The figures are the whole
    process's, every team's traffic in them, and the runtime routes share the listener: so
    ``/metrics`` asks for ``Authorization: Bearer <metrics_token>`` when a token is set, and
    answers loopback clients only when none is.
    """

    def __init__(
        self,
        readiness: ReadinessCheck,
        *,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
        metrics_token: str | None = None,
    ) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self.metrics_token = metrics_token

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == READY_PATH or (path == METRICS_PATH and self.metrics is not None):
            if method not in ("GET", "HEAD"):
                return _json(
                    start_response,
                    "405 Method Not Allowed",
                    {"error_message": "Method not allowed."},
                    [("Allow", "GET, HEAD")],
                )
            if path == READY_PATH:
                body = self._ready(start_response)
            else:
                body = self._refuse_scraper(environ, start_response) or self._metrics(
                    start_response
                )
            return [] if method == "HEAD" else body
        return host_app(environ, start_response)

    def _ready(self, start_response: StartResponse) -> list[bytes]:
        result = self.readiness()
        status = "200 OK" if result.ready else "503 Service Unavailable"
        return _json(start_response, status, result.as_json())

    def _refuse_scraper(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> list[bytes] | None:
        """The refusal of a client that may not read the metrics, or ``None``."""
        if self.metrics_token is not None:
            given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
            wanted = f"Bearer {self.metrics_token}".encode()
            if hmac.compare_digest(given, wanted):
                return None
            return _json(
                start_response,
                "401 Unauthorized",
                {"error_message": "The metrics need the metrics token."},
                [("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
        # A request a proxy on this host relayed comes from loopback too, whoever sent it:
        # one that carries a forwarding field is not taken for the host's own scraper.
        if _is_loopback(environ.get("REMOTE_ADDR", "")) and not any(
            key in environ for key in _FORWARDING_KEYS
        ):
            return None
        return _json(
            start_response,
            "403 Forbidden",
            {"error_message": "The metrics are served to loopback clients only."},
        )

    def _metrics(self, start_response: StartResponse) -> list[bytes]:
        assert self.metrics is not None
        body, content_type = self.metrics()
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


#: The environ keys of the fields a proxy adds to say whom it relays (RFC 7239 and the de
#: facto ``X-Forwarded-*`` and ``X-Real-IP``).
_FORWARDING_KEYS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a Unix socket's peer, say: not known to be this machine
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack listener
    return ip.is_loopback


class EnvironmentSecretResolver:
    """A :class:`~invoke_middleware.pipeline.ServiceSecretResolver` reading environment
    variables.

    ``names`` maps a credential reference to the name of an environment variable, or to a
    :class:`SecretEntry` that also names the teams whose services may use it; the variable's
    value, read on every request (so a rotated value applies without a restart where the
    environment can change), is the ``Authorization`` header sent verbatim, e.g. ``Bearer
    xyz``, less a line break at its end (a secret mounted from a file often has one). An
    unknown reference, a service of a team the entry does not name, or an unset or empty
    variable gives ``None``, which the gateway turns into a 502 for the caller and an error in
    its log. Called with a reference alone, only entries open to every team answer.
    """

    def __init__(
        self, names: Mapping[str, str | SecretEntry], environ: Mapping[str, str] = os.environ
    ) -> None:
        self._entries = {
            reference: entry if isinstance(entry, SecretEntry) else SecretEntry(env=entry)
            for reference, entry in names.items()
        }
        self._environ = environ

    def secret_for(self, service: Service) -> str | None:
        """The ``Authorization`` value for ``service``'s credential reference, when its team
        may use it."""
        reference = service.external_auth_credential_id
        if reference is None:
            return None
        return self._resolve(reference, service.team_id)

    def __call__(self, credential_id: str) -> str | None:
        return self._resolve(credential_id, None)

    def _resolve(self, credential_id: str, team_id: uuid.UUID | None) -> str | None:
        entry = self._entries.get(credential_id)
        if entry is None:
            logger.error("no [secrets] entry for credential reference %r", credential_id)
            return None
        if not entry.allows(team_id):
            # A reference set on another team's service: never that team's secret.
            logger.error(
                "[secrets] entry %r is not for team %s", credential_id, team_id or "(unknown)"
            )
            return None
        value = (self._environ.get(entry.env) or "").removesuffix("\n").removesuffix("\r")
        if not value:
            logger.error(
                "environment variable %s (credential reference %r) is not set",
                entry.env,
                credential_id,
            )
            return None
        return value

    def __repr__(self) -> str:
        return f"EnvironmentSecretResolver({sorted(self._entries)!r})"


@dataclass(frozen=True, kw_only=True)
class StandaloneApp:
    """The WSGI application ``serve`` runs, and the store behind it."""

    app: InvokeMiddleware
    store: SQLStore
    #: What ``/readyz`` answers from: one probe per dependency (the store's is ``store``).
    readiness: ReadinessCheck = field(repr=False)
    #: What a server runs: ``app``, with each process's requests counted when metrics are on.
    wsgi: WSGIApplication = field(repr=False)

    def ready(self) -> Readiness:
        """Run the readiness check (what ``/readyz`` answers); never raises."""
        return self.readiness()

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
    limits = fair_share(settings.limits, threads or config.server.threads)
    settings = replace(settings, limits=limits)
    try:
        limits.check_reserve()  # the caps fair_share filled in are known now
    except ValueError as exc:
        key = KeyStyle.TOML.key("limits.idle_team_reserve")
        raise ConfigError(key, str(exc), source=str(config.path)) from None
    store = SQLStore(config.database, service_cache_ttl=config.service_cache_ttl)
    access_log = RelayLogger()
    try:
        readiness = ReadinessCheck({"store": store_probe(store)})
        host = StandaloneHost(readiness)
        before: list[BeforeRelayHook] = []
        after: list[AfterRelayHook] = [access_log]
        on_limit: list[LimitHook] = [access_log.on_limit]
        registry = None
        if config.server.metrics:
            # The metrics extra is optional: imported only when [server] metrics is on.
            from invoke_middleware.metrics import RelayMetrics, render_metrics  # noqa: PLC0415

            # Each gateway has its own registry: two gateways in one process (tests, a host
            # serving two) would otherwise register the same names twice.
            registry = _new_registry()
            metrics = RelayMetrics(registry)
            before.append(metrics.before_relay)
            after.append(metrics.after_relay)
            on_limit.append(metrics.on_limit)
            host.metrics = lambda: render_metrics(registry)
            host.metrics_token = metrics_token(config, environ)
        app = settings.build_middleware(
            host,
            registry=store.services,
            credentials=store.credentials,
            memberships=store.memberships,
            secret_resolver=EnvironmentSecretResolver(config.secrets, environ),
            before_relay=before,
            after_relay=after,
            on_limit=on_limit,
            team_limits=store.team_limits,
        )
    except BaseException:
        store.close()
        raise
    limiter = app.pipeline.limiter
    if limiter is not None and limiter.shares_store:
        # Budgets shared through Redis: without it requests are served or refused per
        # fail_open, and a load balancer should know either way.
        readiness = ReadinessCheck(
            {"store": store_probe(store), "rate_limits": limiter_probe(limiter)}
        )
        host.readiness = readiness
    wsgi: WSGIApplication = app if registry is None else _ProcessRequests(app, registry)
    return StandaloneApp(app=app, store=store, readiness=readiness, wsgi=wsgi)


def warn_rates_per_process(app: StandaloneApp, processes: int, *, read_store: bool = True) -> None:
    """Log, once at start-up, that each of ``processes`` counts rates on its own when they
    share no store (``[limits] storage_url = "memory://"``) and a rate is configured or
    stored: a caller then gets up to ``processes`` times each rate, while the ``RateLimit``
    fields show the rate itself. Rates stored later are not looked for, nor any when
    ``read_store`` is false or the store does not answer (which the log says)."""
    limiter = app.app.pipeline.limiter
    if processes < 2 or limiter is None or limiter.shares_store:
        return
    stored, looked = False, read_store
    if read_store:
        try:
            stored = any(
                service.limits.rate is not None for service in app.store.services.list_all()
            ) or any(limits.rate is not None for _, limits in app.store.team_limits.list_all())
        except sa.exc.SQLAlchemyError:
            looked = False  # served all the same, readiness saying so
    if not looked and not limiter.settings.has_rates:
        logger.warning(
            "limits: the store does not answer, so rates stored for teams or services were "
            "not looked for; with storage_url = memory://, each of the %d processes counts "
            "any on its own",
            processes,
        )
    if limiter.settings.has_rates or stored:
        logger.warning(
            "limits: each of the %d processes counts rates on its own (storage_url = "
            "memory://): a caller gets up to %d times each rate; set [limits] storage_url "
            "to a redis:// URL to share one budget",
            processes,
            processes,
        )


def warn_open_metrics(config: StandaloneConfig, app: StandaloneApp) -> None:
    """Log, once at start-up, that ``/metrics`` without a token is judged by the peer's
    address while the gateway trusts proxies in front: requests they relay carry their
    forwarding fields and are refused, but a proxy on this host that adds none would pass
    every tenant's request for the host's own."""
    if (
        config.server.metrics
        and config.server.metrics_token_env is None
        and app.app.pipeline.settings.trusted_proxy_hops
    ):
        logger.warning(
            "metrics: no [server] metrics_token_env while trusted_proxy_hops is set: /metrics "
            "answers loopback requests without forwarding fields; set a token if a proxy on "
            "this host may relay requests without X-Forwarded-For"
        )


def metrics_token(config: StandaloneConfig, environ: Mapping[str, str]) -> str | None:
    """The token ``/metrics`` asks for, from the variable ``[server] metrics_token_env``
    names (``None`` when it names none).

    Raises :class:`~invoke_middleware.config.ConfigError`, naming the file, when the variable
    is unset, holds fewer than :data:`MIN_METRICS_TOKEN_LENGTH` characters (too few to resist
    guessing) or anything but visible ASCII.
    """
    name = config.server.metrics_token_env
    if name is None:
        return None
    token = environ.get(name, "").strip()
    if len(token) < MIN_METRICS_TOKEN_LENGTH:
        raise ConfigError(
            "[server] metrics_token_env",
            f"the environment variable {name} must hold a token of at least "
            f"{MIN_METRICS_TOKEN_LENGTH} characters",
        ).located(str(config.path))
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(
            "[server] metrics_token_env",
            f"the environment variable {name} must hold visible ASCII characters only",
        ).located(str(config.path))
    return token


def _new_registry() -> CollectorRegistry:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    return CollectorRegistry()


class _ProcessRequests:
    """Counts the requests each server process receives (``invoke_server_requests{pid}``).

    Under several processes the gauge is reported per live process, which shows how the
    operating system spreads connections over the workers.
    """

    def __init__(self, app: WSGIApplication, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge  # noqa: PLC0415

        self.app = app
        self.requests = Gauge(
            "server_requests",
            "Requests received by this server process.",
            namespace="invoke",
            registry=registry,
            multiprocess_mode="liveall",
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.requests.inc()
        return self.app(environ, start_response)
