"""Fixed-window request counters for the rate limits: in this process, or shared in Redis.

A :class:`RateCounter` counts one request under each of a request's keys and says, for each,
how many requests its window holds now and how long until it resets. A window opens at a
key's first request and lasts the rate's period: the fixed-window strategy of the ``limits``
library, whose Redis storage (connection pool, options, key prefix) the shared counter uses.

The in-process counter is the gateway's own: the library's ``MemoryStorage`` expires keys from
a timer thread it starts again every 10 ms, which under a threaded server cost ~75 µs of CPU
per request (``bench/results/limits.md``); this one drops expired windows as it meets them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from invoke_middleware.limits import LimitSettings

#: Storage schemes accepted: one process, or a shared Redis.
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")


class StoreUnavailable(Exception):
    """The rate-limit store could not be asked."""


class RateCounter(Protocol):
    def hit(self, keys: Sequence[tuple[str, int]]) -> list[tuple[int, float]]:
        """Count one request under each ``(key, window)``: ``(count, seconds to reset)``."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the counts cannot be reached (readiness)."""
        ...


class LocalCounter:
    """Fixed windows in this process's memory, under one lock.

    Memory follows the windows still open: an expired window is replaced when its key comes
    back, and all expired ones are dropped whenever the table has doubled since the last
    sweep, so the cost of sweeping is constant per request.
    """

    _MIN_SWEEP = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}  # key -> [count, end of the window]
        self._sweep_at = self._MIN_SWEEP

    def hit(self, keys: Sequence[tuple[str, int]]) -> list[tuple[int, float]]:
        now = self._clock()
        counts = []
        with self._lock:
            windows = self._windows
            for key, window in keys:
                entry = windows.get(key)
                if entry is None or entry[1] <= now:
                    entry = windows[key] = [0, now + window]
                entry[0] += 1
                counts.append((int(entry[0]), entry[1] - now))
            if len(windows) >= self._sweep_at:
                for key in [k for k, (_, end) in windows.items() if end <= now]:
                    del windows[key]
                self._sweep_at = max(self._MIN_SWEEP, 2 * len(windows))
        return counts

    def ping(self) -> None:
        """The counts are in this process: always reachable."""

    def __len__(self) -> int:
        """Windows held (for tests and diagnostics)."""
        return len(self._windows)


#: The ``limits`` library's fixed-window step (its ``incr_expire.lua``: increment, and start
#: the window's expiry on the first hit) for every key of a request at once, with each key's
#: remaining time to live: one command and one round trip per request, whatever the number of
#: rates. Keys may hash to different slots, so this needs a single Redis, not a Cluster.
_HIT_ALL = """
local replies = {}
for i, key in ipairs(KEYS) do
    local current = redis.call("incrby", key, 1)
    if current == 1 then
        redis.call("expire", key, ARGV[i])
    end
    replies[2 * i - 1] = current
    replies[2 * i] = redis.call("pttl", key)
end
return replies
"""


class RedisCounter:
    """Fixed windows on the ``limits`` Redis storage (its connection pool, key prefix and
    options), every key of a request counted by one script call (:data:`_HIT_ALL`)."""

    def __init__(self, storage: Any) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415 - optional dependency

        self._storage = storage
        # Runs by SHA, and loads the script again when Redis lost it (restart, flush).
        self._script = storage.get_connection().register_script(_HIT_ALL)
        self._redis_error = RedisError

    def hit(self, keys: Sequence[tuple[str, int]]) -> list[tuple[int, float]]:
        prefixed = [self._storage.prefixed_key(key) for key, _ in keys]
        try:
            replies = self._script(keys=prefixed, args=[window for _, window in keys])
        except self._redis_error as exc:
            raise StoreUnavailable from exc
        return [
            (int(replies[i]), max(int(replies[i + 1]), 0) / 1000) for i in range(0, len(replies), 2)
        ]

    def ping(self) -> None:
        try:
            self._storage.get_connection().ping()
        except self._redis_error as exc:
            raise StoreUnavailable from exc


def open_counter(settings: LimitSettings) -> RateCounter:
    """The counter ``settings.storage_url`` names; :class:`ValueError` when it cannot be used."""
    if settings.storage_url.split("://", 1)[0] == "memory":
        return LocalCounter()
    from limits.storage import RedisStorage, storage_from_string  # noqa: PLC0415

    try:
        storage = storage_from_string(
            settings.storage_url,
            key_prefix=settings.key_prefix,
            socket_timeout=settings.storage_timeout,
            socket_connect_timeout=settings.storage_timeout,
        )
    except Exception as exc:
        # The library names the missing client (redis) or the bad scheme; never the URL.
        raise ValueError(f"cannot use the rate-limit storage: {type(exc).__name__}") from exc
    if not isinstance(storage, RedisStorage):
        raise ValueError("the rate-limit storage must be memory:// or redis://")
    return RedisCounter(storage)
