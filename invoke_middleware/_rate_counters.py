"""Fixed-window request counters for the rate limits: in this process, or shared in Redis.

A :class:`RateCounter` counts one request under each of a request's keys and says, for each,
how many requests its window holds now and how long until it resets. A window opens at a
key's first request and lasts the rate's period: the fixed-window strategy of the ``limits``
library, whose Redis storage (connection pool, options, key prefix) the shared counter uses.

The shared counter reserves requests in batches (:class:`RedisCounter`): one round trip
counts up to ``batch`` requests of a window at once, never more than a tenth of what the
window has left, and this process hands them out one by one. Redis counts every reserved
request, so no process admits more than the budget; near its end batches shrink to one
request, and a window found spent refuses here without a round trip for as long as others
may hold what they will give back (below), then Redis is asked again. What a
process reserved and then had no use for (its traffic went to the other processes) is given
back to Redis once the key has seen no request for a tenth of its window (a second at least),
so that the others can admit it. After a round trip fails, Redis is not asked again for a
storage timeout's time: meanwhile requests are handled as when Redis is down, without
waiting for it.

The in-process counter is the gateway's own: the library's ``MemoryStorage`` expires keys from
a timer thread it starts again every 10 ms, which under a threaded server cost ~75 µs of CPU
per request (``bench/results/limits.md``); this one drops expired windows as it meets them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from invoke_middleware._forking import after_fork_in_child

if TYPE_CHECKING:
    from invoke_middleware.limits import LimitSettings

_logger = logging.getLogger("invoke_middleware.limits")

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
        after_fork_in_child(self)

    def _after_fork(self) -> None:
        """In a forked child: a lock of its own (one of the parent's threads may have held
        the parent's at the fork). The counts stay: they are this process's too."""
        self._lock = threading.Lock()

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


class _Reserved:
    """What this process holds of one key's window in Redis: ``left``, the requests reserved
    and not handed out yet; ``top``, the highest count reserved that the budget allows (a
    request handed out stands for ``top - left``); ``end``, when the window ends here;
    ``expires``, when it ends in Redis, in milliseconds of Redis's clock (what tells this
    window from the next one there); ``used``, when a request last came for the key;
    ``quiet``, how long the key may go without one before what is left is given back;
    ``spent_until``, once the budget is all reserved, until when a request is refused here
    without asking Redis."""

    __slots__ = ("end", "expires", "left", "quiet", "spent_until", "top", "used")

    def __init__(self, end: float, expires: int, quiet: float, now: float) -> None:
        self.left = 0
        self.top = 0
        self.end = end
        self.expires = expires
        self.used = now
        self.quiet = quiet
        self.spent_until = 0.0


def _end_of_reserved(reserved: _Reserved) -> float:
    return reserved.end


#: A batch is at most this share of what a window has left (its 1/10th), so that the
#: requests one process holds unused are a small part of any budget, and none near its end.
_BATCH_SHARE = 10

#: How far apart, in milliseconds, two readings of one window's end in Redis may be (its
#: time to live and clock are read at slightly different instants); the next window of a key
#: ends a whole window later.
_SAME_END_MS = 5

#: The ``limits`` library's fixed-window step (its ``incr_expire.lua``: increment, and start
#: the window's expiry when the key has none) for every key of a request at
#: once, each by the batch it may take (``ARGV``: window, batch wanted, requests allowed, for
#: each key): a tenth of what the window has left in Redis, at least one request and at most
#: the batch wanted. It answers each key's total, remaining time to live and the batch taken,
#: then Redis's clock in milliseconds (from which a window's end there is known exactly): one
#: command and one round trip, whatever the number of rates. The share is worked out
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
local now = redis.call("time")
replies[#replies + 1] = now[1] * 1000 + math.floor(now[2] / 1000)
return replies
"""

#: Requests reserved and not used given back, for every key at once: ``DECRBY`` of each key
#: (``ARGV``: amount, and when the window they were reserved in ends, in milliseconds of
#: Redis's clock, for each key), but only while the key is that window (it ends when that
#: one does: a window that started since, or a key lost and written again, ends elsewhere),
#: and never below zero. A give-back that reaches Redis late lowers nothing it should not.
_GIVE_BACK = f"""
local now = redis.call("time")
now = now[1] * 1000 + math.floor(now[2] / 1000)
for i, key in ipairs(KEYS) do
    local ttl = redis.call("pttl", key)
    if ttl > 0 and math.abs(now + ttl - tonumber(ARGV[2 * i])) <= {_SAME_END_MS} then
        local amount = math.min(tonumber(ARGV[2 * i - 1]), tonumber(redis.call("get", key) or "0"))
        if amount > 0 then
            redis.call("decrby", key, amount)
        end
    end
end
return 0
"""

#: Seconds without a request for a key after which what this process holds of its window is
#: given back, at the least (a tenth of the window when that is longer, see
#: :meth:`RedisCounter.give_back`); also how often the process looks.
GIVE_BACK_AFTER = 1.0

#: Keys given back by one script call: a call holds Redis for every process sharing it.
_GIVE_BACK_KEYS = 256


def _give_back_until(
    counter: weakref.ref[RedisCounter], stop: threading.Event, interval: float
) -> None:
    """The loop of the thread that gives back; it holds its counter only while it sweeps, so
    a counter nobody closed still goes away with its last reference."""
    while not stop.wait(interval):
        live = counter()
        if live is None:
            return
        try:
            live.give_back()
        except Exception:
            # A failure of Redis is handled in give_back; anything else is a defect, which
            # must not end the giving back for the rest of the process's life.
            _logger.exception("giving back unused rate-limit requests failed")
        del live


class RedisCounter:
    """Fixed windows on the ``limits`` Redis storage (its connection pool, key prefix and
    options), every key of a request counted by one script call (:data:`_HIT_ALL`).

    A round trip reserves up to ``batch`` requests of a window for this process (see the
    module's docstring); per key this process keeps a :class:`_Reserved`, whose end is the
    key's time to live as seen from before the round trip, so what is held never outlives
    its window in Redis. A request served from what is held reports the count it stands for.

    What is held for a key that saw no request for a while goes back to Redis
    (:meth:`give_back`), from a thread of this process that looks every ``give_back_after``
    seconds; the thread starts with the first batch reserved and stops at :meth:`close`,
    which gives back everything held. A forked child (a gunicorn worker after ``--preload``)
    starts with nothing held: what the parent reserved is the parent's to hand out or give
    back.
    """

    _MIN_SWEEP = 1024

    def __init__(
        self,
        storage: Any,
        *,
        batch: int = 1,
        retry_after_failure: float = 0.0,
        give_back_after: float = GIVE_BACK_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.exceptions import RedisError  # noqa: PLC0415 - optional dependency

        self._storage = storage
        # Runs by SHA, and loads the script again when Redis lost it (restart, flush).
        self._script = storage.get_connection().register_script(_HIT_ALL)
        self._give_back_script = storage.get_connection().register_script(_GIVE_BACK)
        self._redis_error = RedisError
        self._batch = batch
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Reserved] = {}
        # The keys of _held with requests left: what a give-back looks through.
        self._holding: dict[str, _Reserved] = {}
        self._give_back_after = give_back_after
        # Set to stop the thread that gives back; None while there is none in this process.
        self._giver: threading.Event | None = None
        after_fork_in_child(self)
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
                if held is not None and held.end > now:
                    held.used = now
                    if held.left:
                        held.left -= 1
                        if not held.left:
                            # Not there when a give-back found the window over meanwhile.
                            self._holding.pop(key, None)
                        counts.append((held.top - held.left, held.end - now))
                        continue
                    if now < held.spent_until:
                        # Spent: refused without a round trip, for a while (see below).
                        counts.append((allowed + 1, held.end - now))
                        continue
                asked.append(len(counts))
                counts.append((0, 0.0))
                # Redis takes less, near the end of the window (see _HIT_ALL); right after a
                # failed round trip, one: a reservation whose answer was lost stays counted.
                amounts.append(1 if self._failure is not None else self._batch)
        if not asked:
            return counts
        replies, started = self._ask([keys[i] for i in asked], amounts)
        now = self._clock()
        with self._lock:
            table = self._held
            for index, (total, reset, amount, expires) in zip(asked, replies, strict=True):
                key, window, allowed = keys[index]
                first = total - amount + 1  # this request's own count
                end = started + reset
                held = table.get(key)
                if held is not None and held.expires - expires > _SAME_END_MS:
                    # Answered late, for a window that has ended: another thread of this
                    # process already holds part of the next one, which stays.
                    counts[index] = (first, end - now)
                    continue
                if held is None or held.end <= now or expires - held.expires > _SAME_END_MS:
                    # A new window (or the key was lost in Redis and written again: what was
                    # held of it is gone with it).
                    quiet = max(self._give_back_after, window / _BATCH_SHARE)
                    held = table[key] = _Reserved(end, expires, quiet, now)
                    self._holding.pop(key, None)
                # What else the budget allows of this batch stays here for the next ones.
                held.left += max(0, min(amount, allowed - first + 1) - 1)
                held.top = max(held.top, min(total, allowed))
                held.end = min(held.end, end)
                # Redis has all the budget reserved: once what is held here runs out, requests
                # are refused here for as long as a key may go quiet before its holder gives
                # back, then Redis is asked again (other processes may have given back what
                # they held unused).
                held.spent_until = now + held.quiet if total >= allowed else 0.0
                if held.left:
                    self._holding[key] = held
                counts[index] = (first, end - now)
            if len(table) >= self._sweep_at:
                self._sweep_at = _drop_ended(table, _end_of_reserved, now, self._MIN_SWEEP)
        if self._giver is None:
            self._start_giver()
        return counts

    def give_back(self, idle: float | None = None) -> int:
        """Give back to Redis what this process holds of windows whose key saw no request for
        ``idle`` seconds (when ``None``: a tenth of the key's window, or ``give_back_after``
        if that is longer; ``0`` gives back everything held); the requests given back.

        What is given back is no longer held here, and the script lowers a key only while it
        is the window the requests were reserved in (:data:`_GIVE_BACK`). Should a round trip
        fail, what it carried stays counted in Redis until the window ends, as it would have
        without giving back (it is not sent again: the failed call may still have landed).
        While Redis is known to be down (a request's round trip failed), nothing is sent.
        """
        given: list[tuple[str, int, int]] = []
        with self._lock:
            now = self._clock()
            if now < self._failed_until:
                return 0
            holding = self._holding
            for key, held in list(holding.items()):
                if held.end <= now:
                    del holding[key]  # the window is over: nothing to give back
                elif now - held.used >= (held.quiet if idle is None else idle):
                    given.append((self._storage.prefixed_key(key), held.left, held.expires))
                    held.top -= held.left
                    held.left = 0
                    del holding[key]
        returned = 0
        for start in range(0, len(given), _GIVE_BACK_KEYS):
            part = given[start : start + _GIVE_BACK_KEYS]
            try:
                self._give_back_script(
                    keys=[key for key, _, _ in part],
                    args=[value for _, left, expires in part for value in (left, expires)],
                )
            except self._redis_error:
                continue
            returned += sum(left for _, left, _ in part)
        return returned

    def _start_giver(self) -> None:
        """Start the thread that gives back what this process no longer uses."""
        with self._lock:
            if self._giver is not None:
                return
            stop = self._giver = threading.Event()
            try:
                threading.Thread(
                    target=_give_back_until,
                    args=(weakref.ref(self), stop, self._give_back_after),
                    name="invoke-rate-give-back",
                    daemon=True,
                ).start()
            except RuntimeError:
                # No thread to be had (at the limit, or the interpreter shutting down): the
                # request goes on, and the next round trip tries again.
                self._giver = None

    def _after_fork(self) -> None:
        """In a forked child: nothing held, no thread, a lock of its own (the parent's may
        have been held by one of its threads at the fork), and Redis asked at the next
        request if it had failed (a thread of the parent's asking whether it was back is not
        in the child to say)."""
        self._lock = threading.Lock()
        self._held, self._holding, self._giver = {}, {}, None
        self._sweep_at = self._MIN_SWEEP
        self._failed_until = 0.0

    def _ask(
        self, keys: Sequence[RateKey], amounts: Sequence[int]
    ) -> tuple[list[tuple[int, float, int, int]], float]:
        """Add at most ``amounts`` to ``keys`` in Redis (see :data:`_HIT_ALL`): each key's
        total, seconds left, the amount added and when its window ends in Redis (milliseconds
        of its clock), and the time just before asking."""
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
        redis_now = int(replies[-1])
        counts = [
            (
                int(replies[i]),
                max(int(replies[i + 1]), 0) / 1000,
                int(replies[i + 2]),
                redis_now + int(replies[i + 1]),
            )
            for i in range(0, len(replies) - 1, 3)
        ]
        return counts, started

    def ping(self) -> None:
        try:
            self._storage.get_connection().ping()
        except self._redis_error as exc:
            raise StoreUnavailable from exc

    def close(self) -> None:
        """Give back everything held, stop the thread that gives back, and let go of the
        Redis connections (a later :meth:`hit` opens them again, and starts a thread)."""
        with self._lock:
            stop, self._giver = self._giver, None
        if stop is not None:
            stop.set()
        self.give_back(idle=0)
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
