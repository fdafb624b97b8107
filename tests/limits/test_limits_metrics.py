"""``RelayMetrics`` counts refusals by limit kind and store failures, with fixed labels."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry

from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.errors import LimitsUnavailableError, RateLimitedError, TooManyInFlightError
from invoke_middleware.limits import Limiter, LimitSettings, Rate
from invoke_middleware.metrics import RelayMetrics
from tests.toolkit.world import TEAM, make_service

PRINCIPAL = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-metrics")
SERVICE = make_service("svc", "http://127.0.0.1:9")


def _events(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["route"], s.labels["limit"], s.labels["outcome"]): s.value
        for metric in registry.collect()
        if metric.name == "invoke_limit_events"
        for s in metric.samples
        if s.name == "invoke_limit_events_total"
    }


def test_refusals_are_counted_by_limit_kind_never_by_key_or_team() -> None:
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    limiter = Limiter(
        LimitSettings(team_max_in_flight=1, credential_rate=Rate(amount=1, window=3600)),
        on_event=[metrics.on_limit],
    )
    held = limiter.admit(PRINCIPAL, SERVICE, route="catch_all", request_id="a")
    with pytest.raises(TooManyInFlightError):
        limiter.admit(PRINCIPAL, SERVICE, route="invoke", request_id="b")
    held.release()
    with pytest.raises(RateLimitedError):
        limiter.admit(PRINCIPAL, SERVICE, route="catch_all", request_id="c")

    assert _events(registry) == {
        ("invoke", "team_in_flight", "refused"): 1.0,
        ("catch_all", "credential_rate", "refused"): 1.0,
    }
    text = str([m.samples for m in registry.collect()])
    assert str(TEAM) not in text
    assert "sk-metrics" not in text


def test_store_failures_are_counted_with_their_outcome() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    settings = LimitSettings(
        team_rate=Rate(amount=5, window=60), storage_url=f"redis://127.0.0.1:{closed}/0"
    )
    Limiter(settings, on_event=[metrics.on_limit]).admit(
        PRINCIPAL, SERVICE, route="catch_all", request_id="a"
    ).release()
    closed_settings = LimitSettings(
        team_rate=Rate(amount=5, window=60),
        storage_url=f"redis://127.0.0.1:{closed}/0",
        fail_open=False,
    )
    with pytest.raises(LimitsUnavailableError):
        Limiter(closed_settings, on_event=[metrics.on_limit]).admit(
            PRINCIPAL, SERVICE, route="catch_all", request_id="b"
        )

    assert _events(registry) == {
        ("catch_all", "", "store_failed_open"): 1.0,
        ("catch_all", "", "store_failed_closed"): 1.0,
    }
