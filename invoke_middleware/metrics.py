"""Prometheus metrics for relays, fed by the relay hooks.

Needs the ``metrics`` extra (``pip install 'invoke_middleware[metrics]'``). The host passes
the registry it already exposes::

    from prometheus_client import CollectorRegistry
    from invoke_middleware.metrics import RelayMetrics

    metrics = RelayMetrics(registry)
    app.wsgi_app = InvokeMiddleware(
        app.wsgi_app,
        before_relay=[metrics.before_relay],
        after_relay=[metrics.after_relay],
    )

With the default ``namespace="invoke"``:

- ``invoke_relays_total{route, service_type, status_class, error_code}``: finished relays;
- ``invoke_relay_duration_seconds{route}``: a histogram of relay durations;
- ``invoke_relay_request_bytes_total{route}`` and ``invoke_relay_response_bytes_total{route}``:
  body bytes sent upstream and received from it;
- ``invoke_relays_in_flight{route}``: relays started and not yet finished;
- ``invoke_limit_events_total{route, limit, outcome}``: requests refused by a fair-share limit
  (``outcome="refused"``, ``limit`` one of :class:`~invoke_middleware.limits.LimitKind`) and
  rate-limit store failures (``outcome`` ``store_failed_open`` or ``store_failed_closed``,
  ``limit`` empty). Register :meth:`RelayMetrics.on_limit` with the limiter:
  ``Limiter(settings, on_event=[metrics.on_limit])``, or
  ``config.build_middleware(app, on_limit=[metrics.on_limit])``.

Labels are low-cardinality on purpose: ``route`` is ``invoke`` or ``catch_all``,
``service_type`` ``deployed`` or ``external``, ``status_class`` ``1xx`` to ``5xx``,
``error_code`` one of the gateway's fixed error codes (empty when the relay succeeded). Slugs,
teams, users and paths are left out: each distinct label value makes a new time series that
Prometheus keeps in memory, and those grow with every tenant and URL. Per-service figures
belong in the relay log (:mod:`invoke_middleware.logging_hook`).

Only relays are counted: a request refused before it reaches a service (no credentials, an
unknown slug, a bad path, a limit) starts no relay and calls no relay hook; refusals by a
limit are counted apart, through :meth:`RelayMetrics.on_limit`.

**Several processes** (gunicorn workers): use prometheus_client's multi-process mode. Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory private to the server before any process
imports prometheus_client, call :func:`mark_process_dead` from the server when a worker
exits, and expose :func:`render_metrics`, which then adds up every process's samples (the
in-flight gauge counts live processes only). ``invoke-middleware serve`` does all of this when
it runs more than one worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        multiprocess,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "invoke_middleware.metrics needs prometheus_client; "
        "install the metrics extra: pip install 'invoke_middleware[metrics]'"
    ) from exc

from invoke_middleware.hooks import RelayFinished, RelayStarted
from invoke_middleware.limits import LimitEvent
from invoke_middleware.routing import RouteKind

__all__ = [
    "DEFAULT_BUCKETS",
    "MULTIPROC_DIR_ENV",
    "RelayMetrics",
    "mark_process_dead",
    "render_metrics",
]

#: prometheus_client's multi-process mode is on when this environment variable names a directory.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Duration buckets in seconds: fast JSON calls up to long streamed downloads.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RelayMetrics:
    """Relay counters, a duration histogram and an in-flight gauge in ``registry``.

    Register both :meth:`before_relay` and :meth:`after_relay`: the in-flight gauge goes up in
    the first and down in the second. ``registry`` defaults to ``prometheus_client.REGISTRY``;
    the metric names start with ``namespace``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "invoke",
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        registry = registry if registry is not None else REGISTRY
        self.relays = Counter(
            "relays",
            "Finished relays by route, service type, status class and error code.",
            ["route", "service_type", "status_class", "error_code"],
            namespace=namespace,
            registry=registry,
        )
        self.duration = Histogram(
            "relay_duration_seconds",
            "Relay duration from the request sent upstream to the response's last byte.",
            ["route"],
            namespace=namespace,
            registry=registry,
            buckets=tuple(buckets),
        )
        self.request_bytes = Counter(
            "relay_request_bytes",
            "Request body bytes sent upstream.",
            ["route"],
            namespace=namespace,
            registry=registry,
        )
        self.response_bytes = Counter(
            "relay_response_bytes",
            "Response body bytes received from upstream.",
            ["route"],
            namespace=namespace,
            registry=registry,
        )
        self.in_flight = Gauge(
            "relays_in_flight",
            "Relays started and not yet finished.",
            ["route"],
            namespace=namespace,
            registry=registry,
            # Across processes: the sum over live ones (a dead worker's relays are not in flight).
            multiprocess_mode="livesum",
        )
        # Each route's series from the start, at 0: in multi-process mode a series exists
        # only once a process has written it, and a dashboard would see none until a relay.
        for route in (RouteKind.CATCH_ALL, RouteKind.INVOKE):
            self.in_flight.labels(route.value)

        self.limit_events = Counter(
            "limit_events",
            "Requests refused by a limit, and rate-limit store failures, by limit and outcome.",
            ["route", "limit", "outcome"],
            namespace=namespace,
            registry=registry,
        )

    def before_relay(self, event: RelayStarted) -> None:
        """Count the relay as in flight."""
        self.in_flight.labels(event.route).inc()

    def after_relay(self, event: RelayFinished) -> None:
        """Record the finished relay and count it out of flight."""
        route = event.started.route
        self.in_flight.labels(route).dec()
        self.relays.labels(
            route,
            event.started.service.service_type.value,
            f"{event.status // 100}xx",
            event.error_code or "",
        ).inc()
        self.duration.labels(route).observe(event.duration)
        self.request_bytes.labels(route).inc(event.bytes_in)
        self.response_bytes.labels(route).inc(event.bytes_out)

    def on_limit(self, event: LimitEvent) -> None:
        """Count a refusal by a limit, or a failure of the rate-limit store."""
        limit = "" if event.limit is None else event.limit.value
        self.limit_events.labels(event.route, limit, event.outcome.value).inc()


def render_metrics(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The text exposition and its content type.

    In multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set) the samples of every process are
    read from that directory and added up; otherwise ``registry`` (default
    ``prometheus_client.REGISTRY``) is rendered.
    """
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry if registry is not None else REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """In multi-process mode, drop the live gauges of the exited process ``pid``."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
