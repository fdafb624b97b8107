"""The in-process counter: fixed windows, and memory that follows the windows still open."""

from __future__ import annotations

from invoke_middleware._rate_counters import LocalCounter
from tests.store.conftest import FakeClock


def test_a_window_counts_until_it_ends_then_starts_over() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    assert counter.hit([("k", 10)]) == [(1, 10.0)]
    clock.advance(4)
    assert counter.hit([("k", 10)]) == [(2, 6.0)]
    clock.advance(6)
    assert counter.hit([("k", 10)]) == [(1, 10.0)]


def test_each_key_has_its_own_window() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    counter.hit([("a", 5)])
    clock.advance(1)
    assert counter.hit([("a", 5), ("b", 60)]) == [(2, 4.0), (1, 60.0)]


def test_expired_windows_are_dropped_as_the_table_grows() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    for batch in range(10):
        for number in range(1000):
            counter.hit([(f"{batch}/{number}", 1)])
        clock.advance(2)  # every window of this batch is over
    assert len(counter) <= 2 * 1024
