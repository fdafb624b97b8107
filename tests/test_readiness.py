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
        check = ReadinessCheck({"store": store_probe(store)}, max_age=0)
        assert not check().ready
        store.init()
        assert check().ready


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ReadinessCheck({}, timeout=0)
    with pytest.raises(ValueError, match="max_age"):
        ReadinessCheck({}, max_age=-1)


def test_an_outcome_is_answered_again_for_max_age() -> None:
    now = [100.0]
    healthy = [True]
    calls = []

    def probe() -> None:
        calls.append(now[0])
        if not healthy[0]:
            raise ConnectionError

    check = ReadinessCheck({"store": probe}, max_age=1.0, clock=lambda: now[0])
    assert all(check().ready for _ in range(50))
    assert len(calls) == 1
    healthy[0] = False
    now[0] += 0.99
    assert check().ready  # still the outcome taken at 100.0
    now[0] += 0.01
    assert not check().ready
    assert len(calls) == 2


def test_callers_at_once_share_one_probe_run() -> None:
    # Anyone may ask /readyz: 32 callers at once are one query to the store, one thread.
    release = threading.Event()
    calls = []

    def slow() -> None:
        calls.append(1)
        release.wait(5)

    check = ReadinessCheck({"store": slow}, timeout=5)
    outcomes = []
    callers = [threading.Thread(target=lambda: outcomes.append(check().ready)) for _ in range(32)]
    for caller in callers:
        caller.start()
    release.set()
    for caller in callers:
        caller.join(10)
    assert outcomes == [True] * 32
    assert len(calls) == 1


def test_while_a_check_runs_other_callers_get_the_last_outcome_at_once() -> None:
    # A hung store: one caller waits out the timeout, the others answer at once from the last
    # outcome (they each waited the whole timeout, every server thread a /readyz request).
    release = threading.Event()
    calls = []

    def hung() -> None:
        calls.append(1)
        release.wait(30)

    check = ReadinessCheck({"store": hung}, timeout=5, max_age=0)
    try:
        first = threading.Thread(target=check)
        first.start()
        while not calls:  # the first caller runs the check (bounded: it starts at once)
            first.join(0.01)
        # No outcome yet: a second caller waits for that check, here cut short by its end.
        release.set()
        assert check().as_json()["probes"] == {"store": "ok"}
        first.join(10)
        release.clear()
        before = len(calls)
        runner = threading.Thread(target=check)
        runner.start()
        while len(calls) == before:  # the runner's probe has started (and hangs)
            runner.join(0.01)
        assert check().ready  # the last outcome, while the runner still waits
        assert runner.is_alive()
    finally:
        release.set()
    runner.join(10)
