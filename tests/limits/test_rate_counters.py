"""The rate counters: fixed windows in this process, with memory that follows the windows
still open; and in Redis, where one round trip reserves a batch of a window's requests."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from invoke_middleware._rate_counters import LocalCounter, RedisCounter, StoreUnavailable
from tests.limits.conftest import RedisNamespace, run_concurrently, wait_until
from tests.limits.tcp_cutter import TCPCutter
from tests.store.conftest import FakeClock


def test_a_window_counts_until_it_ends_then_starts_over() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    assert counter.hit([("k", 10, 100)]) == [(1, 10.0)]
    clock.advance(4)
    assert counter.hit([("k", 10, 100)]) == [(2, 6.0)]
    clock.advance(6)
    assert counter.hit([("k", 10, 100)]) == [(1, 10.0)]


def test_each_key_has_its_own_window() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    counter.hit([("a", 5, 100)])
    clock.advance(1)
    assert counter.hit([("a", 5, 100), ("b", 60, 100)]) == [(2, 4.0), (1, 60.0)]


def test_expired_windows_are_dropped_as_the_table_grows() -> None:
    clock = FakeClock()
    counter = LocalCounter(clock)
    for batch in range(10):
        for number in range(1000):
            counter.hit([(f"{batch}/{number}", 1, 100)])
        clock.advance(2)  # every window of this batch is over
    assert len(counter) <= 2 * 1024


# -- Redis: batches -------------------------------------------------------------------------


class _CountedRedis:
    """A Redis counter on the test's namespace, and what Redis itself holds for a key."""

    def __init__(self, namespace: RedisNamespace) -> None:
        import redis
        from limits.storage import storage_from_string

        self.namespace = namespace
        self.storage = storage_from_string(namespace.url, key_prefix=namespace.prefix)
        self.client = redis.Redis.from_url(namespace.url)
        self.counters: list[RedisCounter] = []

    def counter(
        self, batch: int, clock: FakeClock | None = None, give_back_after: float = 3600.0
    ) -> RedisCounter:
        """A counter standing for one gateway process; it gives back nothing it holds for
        an hour unless told otherwise, so that the counts these tests check stay put."""
        counter = RedisCounter(
            self.storage,
            batch=batch,
            give_back_after=give_back_after,
            clock=time.monotonic if clock is None else clock,
        )
        self.counters.append(counter)
        return counter

    @contextlib.contextmanager
    def cuttable(self, retry_after_failure: float) -> Iterator[tuple[TCPCutter, RedisCounter]]:
        """A counter (batches of 16, nothing given back for an hour) that reaches this Redis
        through a :class:`TCPCutter`, so that a test can take Redis away from it."""
        from limits.storage import storage_from_string

        with TCPCutter(("127.0.0.1", 6379)) as cutter:
            storage = storage_from_string(
                cutter.url, key_prefix=self.namespace.prefix, socket_timeout=0.5
            )
            counter = RedisCounter(
                storage,
                batch=16,
                retry_after_failure=retry_after_failure,
                give_back_after=3600,
            )
            try:
                yield cutter, counter
            finally:
                counter.close()

    def total(self, key: str) -> int:
        value = self.client.get(f"{self.namespace.prefix}:{key}")
        return 0 if value is None else int(value)


@pytest.fixture
def redis_counts(redis_namespace: RedisNamespace) -> Iterator[_CountedRedis]:
    counted = _CountedRedis(redis_namespace)
    yield counted
    for counter in counted.counters:
        counter.close()
    counted.client.close()


def test_a_batch_of_one_asks_redis_for_every_request(redis_counts: _CountedRedis) -> None:
    counter = redis_counts.counter(batch=1)
    counts = [counter.hit([("k", 60, 100)])[0][0] for _ in range(3)]
    assert counts == [1, 2, 3]
    assert redis_counts.total("k") == 3


def test_one_round_trip_reserves_a_batch_handed_out_in_order(
    redis_counts: _CountedRedis,
) -> None:
    counter = redis_counts.counter(batch=16)
    first = counter.hit([("k", 60, 1000)])
    assert first[0][0] == 1
    assert 59 < first[0][1] <= 60
    assert redis_counts.total("k") == 16  # the whole batch is counted in Redis at once
    counts = [counter.hit([("k", 60, 1000)])[0][0] for _ in range(15)]
    assert counts == list(range(2, 17))
    assert redis_counts.total("k") == 16  # handed out here, without a round trip
    assert counter.hit([("k", 60, 1000)])[0][0] == 17
    assert redis_counts.total("k") == 32


def test_a_batch_is_at_most_a_tenth_of_what_the_window_has_left(
    redis_counts: _CountedRedis,
) -> None:
    counter = redis_counts.counter(batch=16)
    counter.hit([("small", 60, 10)])
    assert redis_counts.total("small") == 1  # a tenth of 10: one request at a time
    counter.hit([("k", 60, 50)])
    assert redis_counts.total("k") == 5


def test_many_processes_together_reserve_no_more_than_the_window_has_left(
    redis_counts: _CountedRedis,
) -> None:
    # 32 processes behind a round-robin balancer, a budget of 400 a minute, 100 requests.
    # Each process sized its batch by what it alone had seen: 32 x 16 = 512 reserved, past
    # the budget, and 21 of the 100 requests were refused inside it.
    processes = [redis_counts.counter(batch=16) for _ in range(32)]
    counts = [processes[n % 32].hit([("k", 60, 400)])[0][0] for n in range(100)]
    assert all(count <= 400 for count in counts)
    assert redis_counts.total("k") <= 400
    # What sits unused in the processes is what the budget has not handed out.
    assert len(set(counts)) == 100


def test_one_process_admits_exactly_the_budget_and_then_refuses_without_asking(
    redis_counts: _CountedRedis,
) -> None:
    counter = redis_counts.counter(batch=16)
    counts = [counter.hit([("k", 60, 250)])[0][0] for _ in range(300)]
    assert sum(count <= 250 for count in counts) == 250
    assert counts[:250] == list(range(1, 251))
    spent_at = redis_counts.total("k")
    assert spent_at >= 250
    refused = [counter.hit([("k", 60, 250)])[0] for _ in range(20)]
    assert all(count > 250 and 0 < reset <= 60 for count, reset in refused)
    assert redis_counts.total("k") == spent_at  # a spent window refuses here, not in Redis


def test_two_processes_never_admit_more_than_the_budget_together(
    redis_counts: _CountedRedis,
) -> None:
    counters = [redis_counts.counter(batch=16), redis_counts.counter(batch=16)]
    admitted = [0, 0]
    lock = threading.Lock()

    def call(index: int) -> None:
        for _ in range(25):
            ((count, _),) = counters[index % 2].hit([("k", 60, 300)])
            if count <= 300:
                with lock:
                    admitted[index % 2] += 1

    run_concurrently(32, call)  # 800 requests, 400 through each counter
    # Each counter refuses only once Redis says the window is spent and it holds nothing:
    # the budget is used whole, and never exceeded.
    assert sum(admitted) == 300
    assert all(admitted)


def test_what_is_held_is_dropped_when_its_window_ends(redis_counts: _CountedRedis) -> None:
    clock = FakeClock()
    counter = redis_counts.counter(batch=16, clock=clock)
    counter.hit([("k", 60, 1000)])
    assert redis_counts.total("k") == 16
    clock.advance(61)  # this process's window is over (Redis's key lives on, in real time)
    count, _ = counter.hit([("k", 60, 1000)])[0]
    assert count == 17  # asked Redis again instead of handing out what it held
    assert redis_counts.total("k") == 32


def test_every_key_of_a_request_is_counted_by_its_own_batch(
    redis_counts: _CountedRedis,
) -> None:
    counter = redis_counts.counter(batch=16)
    keys = [("team", 60, 1000), ("credential", 1, 5)]
    first = counter.hit(keys)
    assert [count for count, _ in first] == [1, 1]
    assert (redis_counts.total("team"), redis_counts.total("credential")) == (16, 1)
    second = counter.hit(keys)
    assert [count for count, _ in second] == [2, 2]
    assert (redis_counts.total("team"), redis_counts.total("credential")) == (16, 2)


def test_closing_lets_go_of_the_redis_connections_and_a_later_hit_reopens_them(
    redis_counts: _CountedRedis,
) -> None:
    counter = redis_counts.counter(batch=1)
    counter.hit([("k", 60, 100)])
    pool = redis_counts.storage.get_connection().connection_pool
    assert pool._created_connections >= 1  # redis-py keeps no public count
    counter.close()
    assert all(c._sock is None for c in pool._available_connections)
    assert counter.hit([("k", 60, 100)])[0][0] == 2


# -- Redis: what a process reserved and did not use goes back ---------------------------------


def test_a_process_gives_back_what_it_held_unused_and_asks_again_later(
    redis_counts: _CountedRedis,
) -> None:
    clock = FakeClock()
    counter = redis_counts.counter(batch=16, clock=clock, give_back_after=1.0)
    counter.hit([("k", 60, 1000)])
    assert redis_counts.total("k") == 16
    clock.advance(5.9)
    assert counter.give_back() == 0  # quiet for less than a tenth of its 60 s window
    assert redis_counts.total("k") == 16
    clock.advance(0.1)
    assert counter.give_back() == 15
    assert redis_counts.total("k") == 1
    assert counter.give_back() == 0  # nothing is held any more
    count, _ = counter.hit([("k", 60, 1000)])[0]
    assert count == 2  # asked Redis again: the count is the window's, not a stale one
    assert redis_counts.total("k") == 17


def test_a_key_still_in_use_is_not_given_back(redis_counts: _CountedRedis) -> None:
    clock = FakeClock()
    counter = redis_counts.counter(batch=16, clock=clock)
    counter.hit([("k", 60, 1000)])
    for _ in range(5):
        clock.advance(0.9)
        counter.hit([("k", 60, 1000)])  # handed out here, no round trip
        assert counter.give_back(idle=1.0) == 0
    assert redis_counts.total("k") == 16


def test_a_quiet_process_leaves_the_budget_to_the_busy_one(redis_counts: _CountedRedis) -> None:
    # Two processes share 100 requests per 10 s. One served a single request, reserving a
    # tenth of the budget, and then every request went to the other one (a kept-alive client
    # stays on one worker): the other could admit 90, not 99, until the window ended. The
    # quiet one gives back after a tenth of the window, by a thread of its own.
    quiet = redis_counts.counter(batch=16, give_back_after=0.05)
    busy = redis_counts.counter(batch=16)
    assert quiet.hit([("k", 10, 100)])[0][0] == 1
    assert redis_counts.total("k") == 10
    wait_until(lambda: redis_counts.total("k") == 1, "the quiet process to give back 9")
    admitted = sum(busy.hit([("k", 10, 100)])[0][0] <= 100 for _ in range(120))
    assert admitted == 99


def test_a_process_that_found_the_window_spent_admits_what_another_gave_back_later(
    redis_counts: _CountedRedis,
) -> None:
    # The busy process used the budget up before the quiet one gave back what it held: it
    # refuses without a round trip only for as long as a key may go quiet before its holder
    # gives back (a tenth of the window here), then asks Redis again.
    clock = FakeClock()
    quiet = redis_counts.counter(batch=16, give_back_after=0.05)
    busy = redis_counts.counter(batch=16, clock=clock, give_back_after=0.05)
    key = [("k", 10, 100)]
    assert quiet.hit(key)[0][0] == 1  # reserves 10, holds 9
    assert sum(busy.hit(key)[0][0] <= 100 for _ in range(120)) == 90
    assert redis_counts.total("k") == 100  # the refusals cost Redis nothing
    wait_until(lambda: redis_counts.total("k") == 91, "the quiet process to give back 9")
    assert busy.hit(key)[0][0] == 101  # still refused here, without asking
    assert redis_counts.total("k") == 91

    clock.advance(1.0)  # a tenth of the window
    admitted = sum(busy.hit(key)[0][0] <= 100 for _ in range(20))

    assert admitted == 9
    assert redis_counts.total("k") == 100  # the last of the 9 found the budget spent again


def test_right_after_a_failed_round_trip_one_request_is_reserved_at_a_time(
    redis_counts: _CountedRedis,
) -> None:
    # A round trip whose answer is lost (Redis slow past the timeout) leaves its batch counted
    # in Redis: while Redis is in doubt, each asks for one request only.
    with redis_counts.cuttable(retry_after_failure=0.0) as (cutter, counter):
        cutter.cut()
        with pytest.raises(StoreUnavailable):
            counter.hit([("k", 60, 1000)])
        cutter.restore()
        assert counter.hit([("k", 60, 1000)])[0][0] == 1
        assert redis_counts.total("k") == 1  # the probe reserved one
        assert counter.hit([("k", 60, 1000)])[0][0] == 2
        assert redis_counts.total("k") == 17  # Redis is back: a batch again


@pytest.mark.parametrize("seen_left", [55.0, 1.5], ids=["early", "late"])
def test_only_the_window_the_requests_were_reserved_in_is_lowered(
    redis_counts: _CountedRedis, seen_left: float
) -> None:
    # A give-back that reaches Redis after its window ended and another process started the
    # next one (or after the key was lost and written again): that window must not lose the
    # requests it counted, however much of the old one this process thinks is left.
    clock = FakeClock()
    late = redis_counts.counter(batch=16, clock=clock)
    late.hit([("k", 60, 1000)])
    redis_counts.client.delete(f"{redis_counts.namespace.prefix}:k")  # the window ended
    time.sleep(0.05)  # (a window's end is known to the millisecond)
    redis_counts.counter(batch=16).hit([("k", 60, 1000)])  # and the next one began
    assert redis_counts.total("k") == 16
    clock.advance(60 - seen_left)
    assert late.give_back(idle=1.0) == 15  # sent, and no longer held here ...
    assert redis_counts.total("k") == 16  # ... but the new window keeps its count


def test_a_window_over_here_is_not_given_back(redis_counts: _CountedRedis) -> None:
    clock = FakeClock()
    counter = redis_counts.counter(batch=16, clock=clock)
    counter.hit([("k", 60, 1000)])
    clock.advance(60.5)  # over, as this process counts (Redis's key lives on, in real time)
    assert counter.give_back(idle=1.0) == 0
    assert redis_counts.total("k") == 16


def test_many_keys_are_given_back_in_several_calls(redis_counts: _CountedRedis) -> None:
    # One script call holds Redis for every process: a sweep sends a few hundred keys a call.
    counter = redis_counts.counter(batch=16)
    keys = [(f"k{number}", 60, 1000) for number in range(600)]
    for key in keys:
        counter.hit([key])
    assert counter.give_back(idle=0) == 600 * 15
    assert {redis_counts.total(key) for key, _, _ in keys} == {1}


def test_nothing_is_given_back_while_redis_is_known_to_be_down(
    redis_counts: _CountedRedis,
) -> None:
    with redis_counts.cuttable(retry_after_failure=60) as (cutter, counter):
        counter.hit([("k", 60, 1000)])
        cutter.cut()
        with pytest.raises(StoreUnavailable):
            counter.hit([("other", 60, 1000)])
        assert counter.give_back(idle=0) == 0  # no round trip to a Redis known down
        cutter.restore()
        counter._failed_until = 0.0  # the interval is over
        assert counter.give_back(idle=0) == 15  # still held, given back now
    assert redis_counts.total("k") == 1


def test_an_answer_for_an_ended_window_leaves_the_next_one_held(
    redis_counts: _CountedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two threads of one process: one's round trip crossed the end of a window while the
    # other's reserved in the next. The late answer must not replace what is held of the
    # next window (its requests would be neither handed out nor given back).
    counter = redis_counts.counter(batch=16)
    counter.hit([("k", 60, 1000)])
    held = counter._held["k"]
    ask = counter._ask

    def late(keys: Any, amounts: Any) -> Any:
        held.left = 15  # meanwhile, the other thread reserved in the next window
        replies, started = ask(keys, amounts)
        ((total, reset, amount, expires),) = replies
        return [(total, reset, amount, expires - 60_000)], started  # the window before

    held.left = 0  # this thread finds nothing held, and asks
    monkeypatch.setattr(counter, "_ask", late)
    counter.hit([("k", 60, 1000)])
    assert counter._held["k"] is held
    assert held.left == 15
    assert counter.give_back(idle=0) == 15


def test_a_defect_in_giving_back_is_logged_and_the_thread_goes_on(
    redis_counts: _CountedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    counter = redis_counts.counter(batch=16, give_back_after=0.05)
    script = counter._give_back_script
    calls: list[int] = []

    def flaky(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a defect")
        return script(**kwargs)

    counter._give_back_script = flaky
    with caplog.at_level(logging.ERROR, logger="invoke_middleware.limits"):
        counter.hit([("k", 2, 1000)])  # quiet after 0.2 s
        wait_until(lambda: len(calls) >= 1, "the first give-back")
        counter.hit([("j", 2, 1000)])
        wait_until(lambda: redis_counts.total("j") == 1, "a give-back after the failure")
    assert "giving back unused rate-limit requests failed" in caplog.text


def test_a_request_goes_on_when_no_thread_can_be_started(
    redis_counts: _CountedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = redis_counts.counter(batch=16)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refuse)
        assert counter.hit([("k", 60, 1000)])[0][0] == 1
    assert counter._giver is None
    counter.hit([("j", 60, 1000)])  # the next round trip starts it
    assert counter._giver is not None


def test_a_counter_nobody_closed_takes_its_thread_with_it(redis_counts: _CountedRedis) -> None:
    counter = RedisCounter(redis_counts.storage, batch=16, give_back_after=0.05)
    before = set(threading.enumerate())
    counter.hit([("k", 60, 1000)])
    [thread] = set(threading.enumerate()) - before
    del counter
    gc.collect()
    wait_until(lambda: not thread.is_alive(), "the thread to end with its counter")


def test_closing_gives_back_everything_held(redis_counts: _CountedRedis) -> None:
    counter = redis_counts.counter(batch=16)
    counter.hit([("a", 60, 1000), ("b", 3600, 1000)])
    assert (redis_counts.total("a"), redis_counts.total("b")) == (16, 16)
    counter.close()
    assert (redis_counts.total("a"), redis_counts.total("b")) == (1, 1)
    assert counter.hit([("a", 60, 1000)])[0][0] == 2  # and it can be used again


def test_a_forked_child_holds_nothing_of_its_parent_s_and_gives_back_its_own(
    redis_counts: _CountedRedis,
) -> None:
    # gunicorn forks its workers from a process that may have counted already: what the
    # parent reserved is the parent's. Were it the child's too, both would hand it out or
    # give it back, and the processes together would admit more than the budget.
    counter = redis_counts.counter(batch=16)
    counter.hit([("k", 60, 1000)])
    assert redis_counts.total("k") == 16
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        status = 1
        try:
            count, _ = counter.hit([("k", 60, 1000)])[0]
            alive = [t for t in threading.enumerate() if t.name == "invoke-rate-give-back"]
            counter.close()
            status = 0 if count == 17 and alive else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_counts.total("k") == 17  # the child reserved its own and gave back 15
    counter.close()
    assert redis_counts.total("k") == 2  # the two requests admitted, and nothing else


def _in_child(check: Callable[[], bool]) -> bool:
    """Fork; in the child, run ``check`` (killed after 5 s: a child that hangs fails) and
    report through the exit status, never returning into pytest."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.alarm(5)
            status = 0 if check() else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_a_child_forked_while_its_parent_asks_whether_redis_is_back_asks_again(
    redis_counts: _CountedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One of the parent's threads was finding out whether Redis was back when the process
    # forked: the others wait for its answer, which never comes in the child.
    counter = redis_counts.counter(batch=1)
    counter._failure = ConnectionError("an earlier round trip failed")
    script, parent = counter._script, os.getpid()
    asking, answer = threading.Event(), threading.Event()

    def slow_in_the_parent(**kwargs: Any) -> Any:
        if os.getpid() == parent:
            asking.set()
            answer.wait(10)
        return script(**kwargs)

    monkeypatch.setattr(counter, "_script", slow_in_the_parent)
    prober = threading.Thread(target=counter.hit, args=([("k", 60, 100)],))
    prober.start()
    assert asking.wait(5)
    try:
        assert _in_child(lambda: counter.hit([("j", 60, 100)])[0][0] == 1)
    finally:
        answer.set()
        prober.join(5)
    assert counter.hit([("k", 60, 100)])[0][0] == 2  # and the parent got its answer


@pytest.mark.parametrize("kind", ["local-counter", "in-flight"])
def test_a_child_forked_while_a_thread_held_the_lock_counts_on(kind: str) -> None:
    from invoke_middleware.limits import LimitKind, _InFlight

    counter, in_flight = LocalCounter(), _InFlight()
    cap = (LimitKind.IN_FLIGHT, in_flight.total, 4)
    assert in_flight.acquire([cap], [in_flight.total], 0.0) is None  # a relay of the parent's
    lock = counter._lock if kind == "local-counter" else in_flight._lock
    inside, leave = threading.Event(), threading.Event()

    def holding() -> None:
        with lock:
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=holding)
    thread.start()
    assert inside.wait(5)
    try:
        if kind == "local-counter":
            assert _in_child(lambda: counter.hit([("k", 60, 10)])[0][0] == 1)
        else:
            # Nothing in flight in the child: the parent's relay is not there to end.
            assert _in_child(
                lambda: (
                    in_flight.held() == 0
                    and in_flight.acquire([cap], [in_flight.total], 0.0) is None
                )
            )
    finally:
        leave.set()
        thread.join(5)
    assert in_flight.held() == 1  # the parent's own count is its own


class _SilentRedis:
    """A loopback port that accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()
        self.listener.close()


def test_after_a_failed_round_trip_redis_is_not_asked_again_for_a_while() -> None:
    from limits.storage import storage_from_string

    silent = _SilentRedis()
    clock = FakeClock()
    storage = storage_from_string(silent.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    counter = RedisCounter(storage, batch=1, retry_after_failure=0.2, clock=clock)
    keys = [("team_rate/x/60", 60, 100)]
    try:
        with pytest.raises(StoreUnavailable):
            counter.hit(keys)  # waits out the storage timeout once
        assert len(silent.accepted) == 1
        # Within the interval: refused at once, without a connection or a timeout.
        for _ in range(3):
            with pytest.raises(StoreUnavailable) as caught:
                counter.hit(keys)
            assert isinstance(caught.value.__cause__, Exception)
        assert len(silent.accepted) == 1
        clock.advance(0.2)
        with pytest.raises(StoreUnavailable):
            counter.hit(keys)  # asked again
        assert len(silent.accepted) == 2
    finally:
        counter.close()
        silent.close()


def test_a_hanging_redis_costs_one_thread_per_interval_not_every_thread() -> None:
    # 16 threads asking for 2 s while Redis hangs (timeout and interval 0.2 s). Each interval
    # used to send every thread that came meanwhile into a full timeout: about 16 waits per
    # 0.4 s, some 80 in all. Now only the first wave waits, then one thread per interval.
    from limits.storage import storage_from_string

    silent = _SilentRedis()
    storage = storage_from_string(silent.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    counter = RedisCounter(storage, batch=1, retry_after_failure=0.2)
    keys = [("team_rate/x/60", 60, 100)]
    threads, seconds = 16, 2.0
    waits: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def ask() -> None:
        while time.monotonic() < end:
            began = time.monotonic()
            with contextlib.suppress(StoreUnavailable):
                counter.hit(keys)
            took = time.monotonic() - began
            if took > 0.1:
                with lock:
                    waits.append(took)
            time.sleep(0.005)

    try:
        workers = [threading.Thread(target=ask) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + 5)
    finally:
        counter.close()
        silent.close()
    intervals = int(seconds / 0.2) + 2
    assert 1 <= len(waits) <= threads + intervals


def test_a_key_left_without_a_time_to_live_gets_its_window(redis_counts: _CountedRedis) -> None:
    # Written without an expiry (by hand, or by a client that died between its commands):
    # counted under it, it would refuse for ever once spent.
    redis_counts.client.set(f"{redis_counts.namespace.prefix}:k", 100)
    counter = redis_counts.counter(batch=1)
    count, reset = counter.hit([("k", 60, 100)])[0]
    assert count == 101
    assert 0 < reset <= 60
    assert 0 < redis_counts.client.pttl(f"{redis_counts.namespace.prefix}:k") <= 60_000
