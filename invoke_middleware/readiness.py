"""Readiness: whether the gateway can serve requests now, for load balancers and orchestrators.

Liveness (``/healthz`` of the standalone gateway) says the process answers; readiness
(``/readyz``) also asks what requests depend on, each through a named probe with a short
timeout. A host that embeds the middleware calls the same check::

    from invoke_middleware.readiness import ReadinessCheck, store_probe

    check = ReadinessCheck({"store": store_probe(store)}, timeout=2.0)
    result = check()            # never raises, never waits much longer than the timeout
    result.ready                # True when every probe passed
    result.as_json()            # {"status": "ready", "probes": {"store": "ok"}}

A probe is any callable that returns when its dependency works and raises when it does not.
:func:`limiter_probe` asks the rate-limit store (Redis) of a
:class:`~invoke_middleware.limits.Limiter` whose budgets are shared; the standalone gateway
adds it as ``rate_limits`` when ``[limits]`` counts in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from invoke_middleware.store import _schema

if TYPE_CHECKING:
    from invoke_middleware.limits import Limiter
    from invoke_middleware.store.sql import SQLStore

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_TIMEOUT",
    "Probe",
    "ProbeResult",
    "Readiness",
    "ReadinessCheck",
    "limiter_probe",
    "store_probe",
]

logger = logging.getLogger("invoke_middleware.readiness")

#: Seconds every probe of one check may take together; load balancers probe often.
DEFAULT_TIMEOUT = 2.0

#: Seconds a check's outcome is answered again without probing.
DEFAULT_MAX_AGE = 1.0


class Probe(Protocol):
    """Returns when the dependency works; raises (anything) when it does not."""

    def __call__(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """One probe's outcome: ``ok``, else ``problem`` (``timeout``, or the exception's class)."""

    name: str
    ok: bool
    problem: str | None = None


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """The outcome of a check: ready when every probe passed."""

    probes: tuple[ProbeResult, ...]

    @property
    def ready(self) -> bool:
        """Whether every probe passed."""
        return all(probe.ok for probe in self.probes)

    def as_json(self) -> dict[str, object]:
        """``{"status": "ready" | "not_ready", "probes": {name: "ok" | problem}}``.

        Problems are class names or ``timeout``, never an exception's message (which may
        hold a database URL).
        """
        return {
            "status": "ready" if self.ready else "not_ready",
            "probes": {p.name: "ok" if p.ok else p.problem for p in self.probes},
        }


class _Run:
    """One probe run in a daemon thread, so a hung dependency cannot hold the caller."""

    def __init__(self, probe: Probe) -> None:
        self.problem: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(probe,), daemon=True)
        self.thread.start()

    def _run(self, probe: Probe) -> None:
        try:
            probe()
        except Exception as exc:  # every failure means "not ready"; the class says which
            self.problem = type(exc).__name__
            logger.warning("readiness probe failed: %s", self.problem)
        finally:
            self.done.set()


class ReadinessCheck:
    """Runs every probe, in parallel, each bounded by ``timeout`` seconds.

    A probe still running from an earlier check is not started again (its result is
    ``timeout`` until it returns): a dependency that hangs costs at most one thread per
    probe, however often the check is called. A check's outcome is answered again for
    ``max_age`` seconds after it was taken: readiness is often served to anyone who can reach
    the gateway, and callers asking many times a second must not turn into as many queries to
    the store or Redis, nor as many threads (``0`` probes on every call). One check runs at a
    time, and while it runs the others answer the last outcome at once (before the first, they
    wait for it, until its deadline): a hung dependency holds one caller's thread, not one for
    every caller that comes.
    """

    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be more than 0")
        if max_age < 0:
            raise ValueError("max_age must be 0 or more")
        self._probes = dict(probes)
        self._timeout = timeout
        self._max_age = max_age
        self._clock = clock
        self._running: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._last: tuple[float, Readiness] | None = None
        self._check: _Check | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The probes' names, in order."""
        return tuple(self._probes)

    def __call__(self) -> Readiness:
        with self._lock:
            last = self._last
            if last is not None and self._clock() - last[0] < self._max_age:
                return last[1]
            check = self._check
            if check is None:
                # This caller runs the check; the others meanwhile answer from the last one.
                check = self._check = _Check(time.monotonic() + self._timeout)
                runs = {name: self._run(name, probe) for name, probe in self._probes.items()}
            else:
                runs = None
        if runs is None:
            if last is not None:
                return last[1]
            # None yet (the first check): wait for it, until its own deadline at most.
            check.done.wait(max(0.0, check.deadline - time.monotonic()))
            return check.outcome or self._timed_out()
        results = []
        for name, run in runs.items():
            if run.done.wait(max(0.0, check.deadline - time.monotonic())):
                results.append(ProbeResult(name=name, ok=run.problem is None, problem=run.problem))
            else:
                results.append(ProbeResult(name=name, ok=False, problem="timeout"))
        readiness = Readiness(probes=tuple(results))
        with self._lock:
            self._last = (self._clock(), readiness)
            self._check = None
        check.outcome = readiness
        check.done.set()
        return readiness

    def _run(self, name: str, probe: Probe) -> _Run:
        """The probe's run under way, or a new one (the lock is held)."""
        run = self._running.get(name)
        if run is None or run.done.is_set():
            run = self._running[name] = _Run(probe)
        return run

    def _timed_out(self) -> Readiness:
        return Readiness(
            probes=tuple(
                ProbeResult(name=name, ok=False, problem="timeout") for name in self._probes
            )
        )


class _Check:
    """One check under way: when it must end, and its outcome once it has."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.outcome: Readiness | None = None


def limiter_probe(limiter: Limiter) -> Probe:
    """A probe that asks the rate-limit store (Redis) for a ``PING``."""
    return limiter.check_store


def store_probe(store: SQLStore) -> Probe:
    """A probe that reads one row of the store's services table (the tables must exist)."""
    query = sa.select(_schema.services.c.id).limit(1)

    def probe() -> None:
        with store.engine.connect() as connection:
            connection.execute(query).all()

    return probe
