"""The readiness check: named probes, each bounded by the timeout, never raising."""

from __future__ import annotations

import threading

import pytest

from invoke_middleware.readiness import ReadinessCheck, store_probe
from invoke_middleware.store.sql import SQLStore


def test_every_probe_is_reported_by_name() -> None:
    def broken() -> None:
        raise ConnectionError("redis://:secret@cache down")

    result = ReadinessCheck({"store": lambda: None, "redis": broken})()
    assert not result.ready
    # The class, never the message (which may hold a URL with a password).
    assert result.as_json() == {
        "status": "not_ready",
        "probes": {"store": "ok", "redis": "ConnectionError"},
    }


def test_a_hung_probe_is_a_timeout_and_is_not_started_twice() -> None:
    release = threading.Event()
    started = []

    def hung() -> None:
        started.append(1)
        release.wait(30)

    check = ReadinessCheck({"hung": hung}, timeout=0.05)
    try:
        assert check().as_json()["probes"] == {"hung": "timeout"}
        assert check().as_json()["probes"] == {"hung": "timeout"}
        assert len(started) == 1
    finally:
        release.set()


def test_the_store_probe_passes_on_an_initialised_store_only() -> None:
    with SQLStore("sqlite://") as store:
        check = ReadinessCheck({"store": store_probe(store)})
        assert not check().ready
        store.init()
        assert check().ready


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ReadinessCheck({}, timeout=0)
