"""A bound on how long a request's read may hold its database connection.

PostgreSQL's ``statement_timeout`` ends a statement that runs, or waits for a lock, too long;
but only a server that is running applies it. A server that stopped (a frozen process, a disk
that no longer answers, a paused virtual machine), or a connection pooler queueing the query
until a server connection comes free (PgBouncer's ``query_wait_timeout`` is two minutes),
has accepted the query and acknowledged its bytes: the kernel sees a healthy connection, its
keepalives are answered, and the driver waits for the answer for good. So does the request's
worker thread, and every request that reads the store after it, until no thread is left.

:class:`ReadWatchdog` is the client's own bound. :func:`bound_reads` marks what a request
reads; each connection such a read checks out from the pool is watched until it goes back,
and one still out after ``seconds`` has its socket shut down. The driver's wait ends at once
with a lost connection, which the store answers 503 and the pool replaces. One daemon thread
per watchdog keeps the time; it ends when nothing was watched for ``IDLE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import AbstractContextManager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from invoke_middleware._forking import after_fork_in_child
from invoke_middleware._log_throttle import LogThrottle

logger = logging.getLogger("invoke_middleware.store")


class _Reading(threading.local):
    #: How many request reads the thread is inside (they may nest).
    depth = 0


#: The calling thread's count of the request reads it is inside (:func:`bound_reads` counts
#: through it; so may a caller on the hot path, without its calls).
reading = _Reading()


class _Bounded:
    __slots__ = ()

    def __enter__(self) -> None:
        reading.depth += 1

    def __exit__(self, *_: object) -> None:
        reading.depth -= 1


_BOUNDED = _Bounded()


def bound_reads() -> AbstractContextManager[None]:
    """Within this block, connections the thread checks out are bounded by the engine's
    watchdog: what a request reads (also when a command makes the same read). Statements of
    their own, such as a schema upgrade or a write, run unbounded: one may wait for another
    process's upgrade, as long as that takes."""
    return _BOUNDED


def reading_for_a_request() -> bool:
    """Whether the calling thread is inside :func:`bound_reads`."""
    return reading.depth > 0


#: Seconds the timekeeper waits with nothing to watch before it ends (a new read starts
#: another): a store that is closed, or no longer read, keeps no thread.
IDLE_SECONDS = 60.0


class ReadWatchdog:
    """Shuts down the socket of each watched connection still out after ``seconds``.

    :meth:`watch` a DB-API connection when it leaves the pool, :meth:`release` it when it
    comes back, is invalidated or closed. The watch holds a duplicate of the connection's
    socket and shuts that down: the driver may have closed its own descriptor meanwhile (a
    lost connection is closed before the pool hears of it), and the number may already be
    another socket's, which the duplicate never is. ``name`` names the database in the
    warning.
    """

    def __init__(self, seconds: float, *, name: str, idle: float = IDLE_SECONDS) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.seconds = seconds
        self._name = name
        self._idle = idle
        self._warnings = LogThrottle()
        self._start()
        after_fork_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # DB-API connection -> (deadline, a duplicate of its socket), in the order watched:
        # with one bound for all, the first is due first.
        self._watched: dict[Any, tuple[float, socket.socket]] = {}
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        # The parent's timekeeper is not in the child, nor are the reads it watched. The
        # duplicates are closed, never shut down: the sockets are the parent's too (closing
        # the child's descriptors leaves them open).
        for _, duplicate in self._watched.values():
            duplicate.close()
        self._start()

    @property
    def watching(self) -> int:
        """How many connections are watched now."""
        with self._lock:
            return len(self._watched)

    def watch(self, connection: Any) -> None:
        """Start the clock on ``connection`` (one with a ``fileno()``: psycopg's, psycopg2's);
        nothing when its descriptor is not a socket's."""
        deadline = time.monotonic() + self.seconds
        duplicate = _duplicate(connection.fileno())
        if duplicate is None:
            return
        with self._lock:
            earlier = self._watched.pop(connection, None)  # to the end, in deadline order
            self._watched[connection] = (deadline, duplicate)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._keep_time, name="invoke-middleware-store-watchdog", daemon=True
                )
                self._thread.start()
            elif len(self._watched) == 1:
                self._changed.notify()
        if earlier is not None:
            earlier[1].close()

    def release(self, connection: Any) -> None:
        """Stop the clock on ``connection`` (nothing if it was not watched)."""
        with self._lock:
            watched = self._watched.pop(connection, None)
        if watched is not None:
            watched[1].close()

    def _keep_time(self) -> None:
        while True:
            with self._lock:
                due = self._next_due()
                if due is None:
                    self._thread = None  # idle: the next watch starts another
                    return
            with due, suppress(OSError):  # not connected (any more): nothing to end
                due.shutdown(socket.SHUT_RDWR)
            self._warn()  # not under the lock: a slow log handler must not hold up reads

    def _next_due(self) -> socket.socket | None:
        """Wait until the first watched connection is due and stop watching it; its socket's
        duplicate. ``None`` once nothing was watched for the idle time."""
        while True:
            if not self._watched:
                if not self._changed.wait(self._idle) and not self._watched:
                    return None
                continue
            connection, (deadline, duplicate) = next(iter(self._watched.items()))
            left = deadline - time.monotonic()
            if left > 0:
                self._changed.wait(left)
                continue
            del self._watched[connection]
            return duplicate

    def _warn(self) -> None:
        left_out = self._warnings.due(self._name)
        if left_out is None:
            return
        logger.warning(
            "store %s did not answer a read within %g s; its connection was shut down%s",
            self._name,
            self.seconds,
            f"; {left_out} more not logged since the last" if left_out else "",
        )


def _duplicate(descriptor: int) -> socket.socket | None:
    """A socket object on a duplicate of ``descriptor``; ``None`` when it is not a socket's."""
    copy = os.dup(descriptor)
    try:
        return socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return None


#: Set on a pooled connection's record when it is made, and cleared when it is first checked
#: out: a connection just made needs no ping.
_FRESH = "invoke_middleware.fresh"


def watch_request_reads(engine: Engine, seconds: float, *, name: str) -> ReadWatchdog:
    """Bound the connections ``engine`` hands to request reads (:func:`bound_reads`) at
    ``seconds`` each, from check-out to check-in; ``name`` is the database as logs show it.

    The engine must be made without ``pool_pre_ping``: the check-out pings in its place (a
    connection that fails the ping is replaced, as with ``pool_pre_ping``), once the clock
    runs, since a stopped server stalls the ping as it would the read.
    """
    watchdog = ReadWatchdog(seconds, name=name)
    dialect = engine.dialect

    def made(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        try:
            # A connection the driver knows is lost has no socket: it fails as the ping would.
            if reading_for_a_request() and hasattr(dbapi_connection, "fileno"):
                watchdog.watch(dbapi_connection)
            if record.info.pop(_FRESH, False):
                return
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                # As pool_pre_ping does: the pool drops every connection it holds (after a
                # failover or a server stop, each would cost a request its stall) and
                # checks out a new one. Invalidating this one releases its watch.
                raise sa.exc.InvalidatePoolError(str(exc)) from exc
            raise

    def back(dbapi_connection: Any, *_: Any) -> None:
        watchdog.release(dbapi_connection)

    sa.event.listen(engine, "connect", made)
    sa.event.listen(engine, "checkout", checked_out)
    for returned in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
        sa.event.listen(engine, returned, back)
    return watchdog
