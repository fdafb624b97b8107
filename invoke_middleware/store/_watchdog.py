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
per watchdog keeps the time, and only while a read is out.
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


_reading = _Reading()


class _Bounded:
    __slots__ = ()

    def __enter__(self) -> None:
        _reading.depth += 1

    def __exit__(self, *_: object) -> None:
        _reading.depth -= 1


_BOUNDED = _Bounded()


def bound_reads() -> AbstractContextManager[None]:
    """Within this block, connections the thread checks out are bounded by the engine's
    watchdog: what a request reads. Commands and start-up checks run unbounded (one may
    wait for another process's schema upgrade, as long as that takes)."""
    return _BOUNDED


def reading_for_a_request() -> bool:
    """Whether the calling thread is inside :func:`bound_reads`."""
    return _reading.depth > 0


class ReadWatchdog:
    """Shuts down the socket of each watched connection still out after ``seconds``.

    :meth:`watch` a DB-API connection when it leaves the pool, :meth:`release` it when it
    comes back, is invalidated or closed: the socket is shut down only while the connection
    is watched, under the same lock, so never once the driver may have closed it (and its
    descriptor may be another socket's). ``name`` names the database in the warning.
    """

    def __init__(self, seconds: float, *, name: str) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.seconds = seconds
        self._name = name
        self._warnings = LogThrottle()
        self._start()
        after_fork_in_child(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # DB-API connection -> (deadline, its socket's descriptor), in the order watched:
        # with one bound for all, the first is due first.
        self._watched: dict[Any, tuple[float, int]] = {}
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        # The parent's timekeeper is not in the child, nor are the reads it watched.
        self._start()

    def watch(self, connection: Any) -> None:
        """Start the clock on ``connection`` (one with a ``fileno()``: psycopg's, psycopg2's)."""
        deadline = time.monotonic() + self.seconds
        descriptor = connection.fileno()
        with self._lock:
            self._watched.pop(connection, None)  # to the end, in deadline order
            self._watched[connection] = (deadline, descriptor)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._keep_time, name="invoke-middleware-store-watchdog", daemon=True
                )
                self._thread.start()
            elif len(self._watched) == 1:
                self._changed.notify()

    def release(self, connection: Any) -> None:
        """Stop the clock on ``connection`` (nothing if it was not watched)."""
        with self._lock:
            self._watched.pop(connection, None)

    def _keep_time(self) -> None:
        while True:
            with self._lock:
                self._shut_down_next()
            self._warn()  # not under the lock: a slow log handler must not hold up reads

    def _shut_down_next(self) -> None:
        """Wait until the first watched connection is due, and shut its socket down."""
        while True:
            if not self._watched:
                self._changed.wait()
                continue
            connection, (deadline, descriptor) = next(iter(self._watched.items()))
            left = deadline - time.monotonic()
            if left > 0:
                self._changed.wait(left)
                continue
            del self._watched[connection]
            _shut_down(descriptor)
            return

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
                # The pool replaces the connection and checks the new one out.
                watchdog.release(dbapi_connection)
                raise sa.exc.DisconnectionError(str(exc)) from exc
            raise

    def back(dbapi_connection: Any, *_: Any) -> None:
        watchdog.release(dbapi_connection)

    sa.event.listen(engine, "connect", made)
    sa.event.listen(engine, "checkout", checked_out)
    for returned in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
        sa.event.listen(engine, returned, back)
    return watchdog


def _shut_down(descriptor: int) -> None:
    """Shut down the socket behind ``descriptor`` in both directions: a thread waiting on it
    sees the connection end. A copy of the descriptor is closed; the driver's stays its own."""
    try:
        copy = socket.socket(fileno=os.dup(descriptor))
    except OSError:
        return
    with copy, suppress(OSError):  # not connected (any more): nothing to end
        copy.shutdown(socket.SHUT_RDWR)
