"""The read-through cache behind service lookups."""

from __future__ import annotations

from invoke_middleware.store._cache import TTLCache
from tests.store.conftest import FakeClock


class CountingLoader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


def test_a_value_is_reused_until_the_ttl_has_passed(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(2.0, clock=clock)
    load = CountingLoader()

    assert cache.get_or_load("k", load) == 1
    clock.advance(1.999)
    assert cache.get_or_load("k", load) == 1
    clock.advance(0.001)
    assert cache.get_or_load("k", load) == 2


def test_a_ttl_of_zero_loads_every_time(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(0, clock=clock)
    load = CountingLoader()

    assert [cache.get_or_load("k", load) for _ in range(3)] == [1, 2, 3]


def test_clear_forgets_every_entry(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(60, clock=clock)
    load = CountingLoader()
    cache.get_or_load("a", load)
    cache.get_or_load("b", load)

    cache.clear()

    assert cache.get_or_load("a", load) == 3
    assert cache.get_or_load("b", load) == 4


def test_a_load_overtaken_by_clear_is_not_kept(clock: FakeClock) -> None:
    cache: TTLCache[str, str] = TTLCache(60, clock=clock)

    def stale_load() -> str:
        cache.clear()  # a write lands while this load is reading the old value
        return "stale"

    assert cache.get_or_load("k", stale_load) == "stale"
    assert cache.get_or_load("k", lambda: "fresh") == "fresh"


def test_a_full_cache_drops_expired_entries_first(clock: FakeClock) -> None:
    cache: TTLCache[str, str] = TTLCache(10, clock=clock, max_entries=2)
    cache.get_or_load("old", lambda: "old")
    clock.advance(5)
    cache.get_or_load("kept", lambda: "kept")
    clock.advance(5)

    cache.get_or_load("new", lambda: "new")

    assert cache.get_or_load("kept", lambda: "reloaded") == "kept"
    assert cache.get_or_load("new", lambda: "reloaded") == "new"


def test_a_cache_full_of_fresh_entries_starts_over(clock: FakeClock) -> None:
    cache: TTLCache[str, str] = TTLCache(10, clock=clock, max_entries=2)
    cache.get_or_load("a", lambda: "a")
    cache.get_or_load("b", lambda: "b")

    cache.get_or_load("c", lambda: "c")

    assert cache.get_or_load("a", lambda: "reloaded") == "reloaded"
    assert cache.get_or_load("c", lambda: "reloaded") == "c"
