"""The store's bound on a request's read: a connection out past it has its socket shut down.

Connected socket pairs stand for the database connections: a thread blocked receiving on one
is what a read waiting for a server that never answers looks like.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from invoke_middleware.store._watchdog import ReadWatchdog, bound_reads, reading_for_a_request
from tests.limits.conftest import wait_until

BOUND = 0.3


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    one, other = socket.socketpair()
    with one, other:
        yield one, other


def _received_within(sock: socket.socket, seconds: float) -> tuple[bytes | None, float]:
    """What one ``recv`` on ``sock`` returned from a thread, and when; ``None`` if it was
    still waiting after ``seconds``."""
    got: list[bytes] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: got.append(sock.recv(16)), daemon=True)
    thread.start()
    thread.join(seconds)
    return (got[0] if got else None), time.monotonic() - started


def test_a_connection_out_past_the_bound_has_its_socket_shut_down(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    one, _ = pair
    watchdog = ReadWatchdog(BOUND, name="postgresql://db")
    started = time.monotonic()
    watchdog.watch(one)

    received, _ = _received_within(one, 5)
    took = time.monotonic() - started

    assert received == b""  # the waiting receive ends, as a lost connection
    assert BOUND <= took < 2, took
    # Logged by the timekeeper, on its own thread, after it shut the socket down.
    logged = "store postgresql://db did not answer a read within 0.3 s"
    wait_until(lambda: logged in caplog.text, "the warning is logged")
    # The descriptor is still the connection's own: its owner closes it.
    assert one.fileno() >= 0
    assert watchdog.watching == 0


def test_a_descriptor_the_driver_closed_and_another_socket_took_is_left_alone() -> None:
    # A lost connection is closed by the driver before the pool hears of it: its number may
    # be another socket's by the deadline (another team's upstream, a client), never touched.
    one, peer = socket.socketpair()
    with peer:
        watchdog = ReadWatchdog(BOUND, name="db")
        watchdog.watch(one)
        number = one.fileno()
        one.close()
        other, other_peer = socket.socketpair()
        with other, other_peer:
            if other.fileno() != number:  # the number went to the pair's other end
                other, other_peer = other_peer, other
            assert other.fileno() == number
            time.sleep(3 * BOUND)
            other_peer.sendall(b"still mine")
            assert _received_within(other, 5)[0] == b"still mine"
        assert watchdog.watching == 0


def test_the_timekeeper_ends_when_idle_and_a_new_watch_starts_another(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    one, _ = pair
    watchdog = ReadWatchdog(BOUND, name="db", idle=0.1)
    watchdog.watch(one)
    watchdog.release(one)
    wait_until(lambda: not _timekeepers(watchdog), "the idle timekeeper ends")

    watchdog.watch(one)
    assert _received_within(one, 5)[0] == b""


def _timekeepers(watchdog: ReadWatchdog) -> bool:
    thread = watchdog._thread
    return thread is not None and thread.is_alive()


def test_a_connection_back_in_time_is_left_alone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    one, other = pair
    watchdog = ReadWatchdog(BOUND, name="db")
    watchdog.watch(one)
    watchdog.release(one)
    time.sleep(2 * BOUND)

    other.sendall(b"answer")
    assert _received_within(one, 5)[0] == b"answer"


def test_each_connection_has_its_own_deadline() -> None:
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    with first, first_peer, second, second_peer:
        watchdog = ReadWatchdog(BOUND, name="db")
        watchdog.watch(first)
        time.sleep(BOUND / 2)
        watchdog.watch(second)
        watchdog.release(first)  # back in time: the second keeps its own deadline

        received, took = _received_within(second, 5)
        assert received == b""
        assert took >= BOUND / 2
        first_peer.sendall(b"still here")
        assert _received_within(first, 5)[0] == b"still here"


def test_watching_again_restarts_the_clock(pair: tuple[socket.socket, socket.socket]) -> None:
    one, _ = pair
    watchdog = ReadWatchdog(BOUND, name="db")
    watchdog.watch(one)
    time.sleep(BOUND * 2 / 3)
    watchdog.watch(one)  # checked out again (the pool's retry) before the first deadline

    received, took = _received_within(one, 5)
    assert received == b""
    assert took >= BOUND * 2 / 3


def _exit_code(child: int, *, within: float) -> int | None:
    """The exit code of process ``child``; ``None`` (and the child killed) if it is still
    running after ``within`` seconds, as a child stuck on a lock its parent held would be."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_keeps_its_own_watch_and_none_of_the_parents(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # The child shares the parent's sockets: shutting one down there would end the parent's
    # connection. It must watch only its own reads, on a clock of its own.
    one, other = pair
    watchdog = ReadWatchdog(BOUND, name="db")
    watchdog.watch(one)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result is its exit status
        status = 1
        try:
            own, _ = socket.socketpair()
            watchdog.watch(own)
            received, _ = _received_within(own, 5)
            time.sleep(2 * BOUND)  # past the parent's deadline
            status = 0 if received == b"" else 2
        finally:
            os._exit(status)
    watchdog.release(one)  # the parent's read came back in time

    assert _exit_code(child, within=10) == 0
    other.sendall(b"answer")
    assert _received_within(one, 5)[0] == b"answer"


def test_only_reads_marked_for_a_request_are_bounded() -> None:
    assert not reading_for_a_request()
    with bound_reads():
        assert reading_for_a_request()
        with bound_reads():
            assert reading_for_a_request()
        assert reading_for_a_request()
    assert not reading_for_a_request()
    seen: list[bool] = []
    with bound_reads():
        other = threading.Thread(target=lambda: seen.append(reading_for_a_request()))
        other.start()
        other.join()
    assert seen == [False]  # each thread its own


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReadWatchdog(0, name="db")
