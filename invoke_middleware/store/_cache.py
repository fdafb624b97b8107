"""A small thread-safe read-through cache with a time to live, for service lookups."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Bounds memory when callers ask for many distinct keys (unknown slugs are cached too).
DEFAULT_MAX_ENTRIES = 10_000


class TTLCache(Generic[K, V]):
    """Values loaded on a miss and kept for ``ttl`` seconds of ``clock``; ``ttl <= 0`` disables.

    :meth:`clear` also fences off loads that were running while it was called, so a value read
    before a local write can never be stored after it.
    """

    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float],
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[K, tuple[float, V]] = {}
        self._generation = 0

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The cached value of ``key`` while fresh, else ``load()`` (then cached)."""
        if self._ttl <= 0:
            return load()
        # The entry's lifetime starts before the load, so it is never fresher than claimed.
        started = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and started < entry[0]:
                return entry[1]
            generation = self._generation
        value = load()
        with self._lock:
            if generation == self._generation:
                if key not in self._entries and len(self._entries) >= self._max_entries:
                    self._evict(started)
                self._entries[key] = (started + self._ttl, value)
        return value

    def clear(self) -> None:
        """Forget every entry, and drop the results of loads still in flight."""
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def _evict(self, now: float) -> None:
        fresh = {key: entry for key, entry in self._entries.items() if now < entry[0]}
        self._entries = fresh if len(fresh) < self._max_entries else {}
