"""Fixed-window request counters for the rate limits: in this process, or shared in Redis.

A :class:`RateCounter` counts one request under each of a request's keys and says, for each,
how many requests its window holds now and how long until it resets. A window opens at a
key's first request and lasts the rate's period: the fixed-window strategy of the ``limits``
library, whose Redis storage (connection pool, options, key prefix) the shared counter uses.

The shared counter reserves requests in batches (:class:`RedisCounter`): one round trip
counts up to ``batch`` requests of a window at once, never more than a tenth of what the
window has left, and this process hands them out one by one. Redis counts every reserved
request, so no process admits more than the budget; near its end batches shrink to one
request, and a window found spent refuses here until it ends, without a round trip. After a
round trip fails, Redis is not asked again for a storage timeout's time: meanwhile requests
are handled as when Redis is down, without waiting for it.

The in-process counter is the gateway's own: the library's ``MemoryStorage`` expires keys from
a timer thread it starts again every 10 ms, which under a threaded server cost ~75 µs of CPU
per request (``bench/results/limits.md``); this one drops expired windows as it meets them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from invoke_middleware.limits import LimitSettings

#: Storage schemes accepted: one process, or a shared Redis.
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")


class StoreUnavailable(Exception):
    """The rate-limit store could not be asked."""


#: One key of a request: ``(key, window in seconds, requests the window allows)``.
RateKey = tuple[str, int, int]


class RateCounter(Protocol):
    def hit(self, keys: Sequence[RateKey]) -> list[tuple[int, float]]:
        """Count one request under each key: ``(count, seconds to reset)`` for each."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the counts cannot be reached (readiness)."""
        ...

    def close(self) -> None:
        """Let go of connections to the store (a later call opens them again)."""
        ...


class _Window:
    """One key's fixed window in this process: the requests it counted, and when it ends."""

    __slots__ = ("count", "end")

    def __init__(self, end: float) -> None:
        self.count = 0
        self.end = end


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
        self._windows: dict[str, _Window] = {}
        self._sweep_at = self._MIN_SWEEP

    def hit(self, keys: Sequence[RateKey]) -> list[tuple[int, float]]:
        now = self._clock()
        counts = []
        windows = self._windows
        # acquire() and release() rather than ``with``: the statement costs as much again as
        # the lock itself.
        self._lock.acquire()
        try:
            for key, window, _ in keys:
                entry = windows.get(key)
                if entry is None or entry.end <= now:
                    entry = windows[key] = _Window(now + window)
                entry.count += 1
                counts.append((entry.count, entry.end - now))
            if len(windows) >= self._sweep_at:
                self._sweep_at = _drop_ended(windows, _end_of_window, now, self._MIN_SWEEP)
        finally:
            self._lock.release()
        return counts

    def ping(self) -> None:
        """The counts are in this process: always reachable."""

    def close(self) -> None:
        """Nothing to let go of."""

    def __len__(self) -> int:
        """Windows held (for tests and diagnostics)."""
        return len(self._windows)


_E = TypeVar("_E")


def _drop_ended(table: dict[str, _E], end: Callable[[_E], float], now: float, minimum: int) -> int:
    """Drop the entries whose window ended (``end`` tells when); the table size at which to
    sweep next: twice what is left, so sweeping costs a constant per request."""
    for key in [key for key, entry in table.items() if end(entry) <= now]:
        del table[key]
    return max(minimum, 2 * len(table))


def _end_of_window(window: _Window) -> float:
    return window.end


def _end_of_held(held: list[float]) -> float:
    return held[2]


#: A batch is at most this share of what a window has left (its 1/10th), so that the
#: requests one process holds unused are a small part of any budget, and none near its end.
_BATCH_SHARE = 10

#: The ``limits`` library's fixed-window step (its ``incr_expire.lua``: increment, and start
#: the window's expiry when the key has none) for every key of a request at
#: once, each by the batch it may take (``ARGV``: window, batch wanted, requests allowed, for
#: each key): a tenth of what the window has left in Redis, at least one request and at most
#: the batch wanted. It answers each key's total, remaining time to live and the batch taken:
#: one command and one round trip, whatever the number of rates. The share is worked out
#: here, from the count every process adds to, so that processes that each reserve a batch
#: never reserve more than the window has left, however many they are. Keys may hash to
#: different slots, so this needs a single Redis, not a Cluster.
_HIT_ALL = f"""
local replies = {{}}
for i, key in ipairs(KEYS) do
    local wanted = tonumber(ARGV[3 * i - 1])
    local left = tonumber(ARGV[3 * i]) - tonumber(redis.call("get", key) or "0")
    local amount = math.max(1, math.min(wanted, math.floor(left / {_BATCH_SHARE})))
    local current = redis.call("incrby", key, amount)
    local ttl = redis.call("pttl", key)
    if ttl < 0 then
        -- A new window; or a key left without a time to live (written by hand, or by a
        -- client that failed between its commands), which would otherwise never reset.
        redis.call("expire", key, ARGV[3 * i - 2])
        ttl = redis.call("pttl", key)
    end
    replies[3 * i - 2] = current
    replies[3 * i - 1] = ttl
    replies[3 * i] = amount
end
return replies
"""


class RedisCounter:
    """Fixed windows on the ``limits`` Redis storage (its connection pool, key prefix and
    options), every key of a request counted by one script call (:data:`_HIT_ALL`).

    A round trip reserves up to ``batch`` requests of a window for this process (see the
    module's docstring). Per key this process keeps ``[requests held, highest count reserved
    that the budget allows, end of the window]``; the end is the key's time to live as seen
    from before the round trip, so what is held never outlives its window in Redis. A
    request served from what is held reports the count it stands for.
    """

    _MIN_SWEEP = 1024

    def __init__(
        self,
        storage: Any,
        *,
        batch: int = 1,
        retry_after_failure: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415 - optional dependency

        self._storage = storage
        # Runs by SHA, and loads the script again when Redis lost it (restart, flush).
        self._script = storage.get_connection().register_script(_HIT_ALL)
        self._redis_error = RedisError
        self._batch = batch
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, list[float]] = {}
        self._sweep_at = self._MIN_SWEEP
        # After a failed round trip Redis is not asked again for ``retry_after_failure``
        # seconds: a Redis that hangs would otherwise cost every request its full timeout
        # (and a new connection), holding a worker thread and a concurrency slot meanwhile.
        # Then one request at a time asks whether it is back; the others go on as if it were
        # not until that one has its answer, so a Redis still hanging costs one thread per
        # interval, not every thread that came meanwhile.
        self._retry_after_failure = retry_after_failure
        self._failed_until = 0.0
        self._failure: Exception | None = None

    def hit(self, keys: Sequence[RateKey]) -> list[tuple[int, float]]:
        counts: list[tuple[int, float]] = []
        asked: list[int] = []  # indexes of the keys Redis must be asked about
        amounts: list[int] = []
        now = self._clock()
        with self._lock:
            table = self._held
            for key, _, allowed in keys:
                held = table.get(key)
                if held is not None and held[2] > now:
                    if held[0]:
                        held[0] -= 1
                        counts.append((int(held[1] - held[0]), held[2] - now))
                        continue
                    if held[1] >= allowed:  # spent: refused until the window ends
                        counts.append((allowed + 1, held[2] - now))
                        continue
                asked.append(len(counts))
                counts.append((0, 0.0))
                # Redis takes less, near the end of the window (see _HIT_ALL).
                amounts.append(self._batch)
        if not asked:
            return counts
        replies, started = self._ask([keys[i] for i in asked], amounts)
        now = self._clock()
        with self._lock:
            table = self._held
            for index, (total, reset, amount) in zip(asked, replies, strict=True):
                key, _, allowed = keys[index]
                first = total - amount + 1  # this request's own count
                end = started + reset
                held = table.get(key)
                if held is None or held[2] <= now:
                    held = table[key] = [0, 0, end]
                # What else the budget allows of this batch stays here for the next ones.
                held[0] += max(0, min(amount, allowed - first + 1) - 1)
                held[1] = max(held[1], min(total, allowed))
                held[2] = min(held[2], end)
                counts[index] = (first, end - now)
            if len(table) >= self._sweep_at:
                self._sweep_at = _drop_ended(table, _end_of_held, now, self._MIN_SWEEP)
        return counts

    def _ask(
        self, keys: Sequence[RateKey], amounts: Sequence[int]
    ) -> tuple[list[tuple[int, float, int]], float]:
        """Add at most ``amounts`` to ``keys`` in Redis (see :data:`_HIT_ALL`): each key's
        total, seconds left and the amount added, and the time just before asking."""
        prefixed = [self._storage.prefixed_key(key) for key, _, _ in keys]
        args: list[int] = []
        for (_, window, allowed), amount in zip(keys, amounts, strict=True):
            args += (window, amount, allowed)
        started = self._clock()
        with self._lock:
            if started < self._failed_until:
                raise StoreUnavailable from self._failure
            probing = self._failure is not None
            if probing:
                self._failed_until = math.inf  # this request finds out; the others wait
        try:
            replies = self._script(keys=prefixed, args=args)
        except self._redis_error as exc:
            with self._lock:
                self._failure = exc
                self._failed_until = self._clock() + self._retry_after_failure
            raise StoreUnavailable from exc
        except BaseException:
            if probing:  # no answer either way: the next probe after the usual interval
                with self._lock:
                    self._failed_until = self._clock() + self._retry_after_failure
            raise
        if probing:
            with self._lock:
                self._failure = None
                self._failed_until = 0.0
        counts = [
            (int(replies[i]), max(int(replies[i + 1]), 0) / 1000, int(replies[i + 2]))
            for i in range(0, len(replies), 3)
        ]
        return counts, started

    def ping(self) -> None:
        try:
            self._storage.get_connection().ping()
        except self._redis_error as exc:
            raise StoreUnavailable from exc

    def close(self) -> None:
        self._storage.get_connection().connection_pool.disconnect()


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
    return RedisCounter(
        storage, batch=settings.rate_batch, retry_after_failure=settings.storage_timeout
    )
