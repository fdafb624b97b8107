"""Relay hooks: plain callables the gateway calls before and after each relay.

Use them for audit logs, metrics and tracing. They receive who called, which service, the
request id, the method, the path without its query, and afterwards the status, byte counts
and duration; never a body, a header value or a secret. A hook that raises is logged and
ignored: it never breaks the relay.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from invoke_middleware.auth.principal import Principal
from invoke_middleware.registry import Service

logger = logging.getLogger("invoke_middleware.hooks")

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class RelayStarted:
    """A relay is about to be sent upstream.

    ``route`` is ``"invoke"`` (structured) or ``"catch_all"``.
    """

    request_id: str
    route: str
    principal: Principal
    service: Service
    method: str
    path: str


class _StartedField(Generic[_T]):
    """A deprecated alias on :class:`RelayFinished` of one field of its ``started`` event."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, instance: RelayFinished | None, owner: type | None = None) -> _T:
        if instance is None:
            return self  # type: ignore[return-value]  # the class attribute, for introspection
        warnings.warn(
            f"RelayFinished.{self._name} is deprecated; use RelayFinished.started.{self._name}",
            DeprecationWarning,
            stacklevel=2,
        )
        value: _T = getattr(instance.started, self._name)
        return value


@dataclass(frozen=True, kw_only=True)
class RelayFinished:
    """A relay ended: the response was delivered, or it failed.

    ``started`` is the event the before-relay hooks received (who called which service, the
    request id, method and path). ``status`` is the container's status, or the gateway's own
    when ``error_code`` is set (the relay failed before or while the response streamed).
    ``bytes_in`` counts request body bytes sent upstream, ``bytes_out`` response body bytes
    received, also when the relay failed part-way (an invoke's body, sent in one piece,
    counts once the upstream answered); ``duration`` is in seconds from the start of the
    relay to its end.
    """

    started: RelayStarted
    status: int
    bytes_in: int
    bytes_out: int
    duration: float
    error_code: str | None = None

    # Deprecated: these were copies of the started event's fields; read them from ``started``.
    request_id = _StartedField[str]()
    route = _StartedField[str]()
    principal = _StartedField[Principal]()
    service = _StartedField[Service]()
    method = _StartedField[str]()
    path = _StartedField[str]()


BeforeRelayHook = Callable[[RelayStarted], None]
AfterRelayHook = Callable[[RelayFinished], None]


#: An event: :class:`RelayStarted`, :class:`RelayFinished` or a
#: :class:`~invoke_middleware.limits.LimitEvent`.
_E = TypeVar("_E")


def _request_id(event: object) -> str:
    # RelayFinished's own request_id is a deprecated alias (it warns): read its started event.
    if isinstance(event, RelayFinished):
        return event.started.request_id
    request_id = getattr(event, "request_id", None)
    return request_id if isinstance(request_id, str) else "-"


def call_hooks(hooks: Sequence[Callable[[_E], None]], event: _E) -> None:
    """Call each hook with ``event``; log and swallow what a hook raises (its traceback at
    most once per ``_REPORT_INTERVAL`` for each hook and kind of event, with the count of
    the failures left out meanwhile)."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _report_failure(hook, event)


#: Seconds between two tracebacks of one failing hook: a hook that fails on every relay
#: would otherwise write one per request, and flood the log exactly when it matters.
_REPORT_INTERVAL = 10.0
_clock = time.monotonic
_reports_lock = threading.Lock()
#: By hook and kind of event: the hook (held, so that its id is not another's while it is
#: here), when its failure was last logged, and how many failed since.
_reports: dict[tuple[int, type], tuple[object, float, int]] = {}


def _report_failure(hook: Callable[[_E], None], event: _E) -> None:
    key = (id(hook), type(event))
    now = _clock()
    with _reports_lock:
        _, last, left_out = _reports.get(key, (hook, -_REPORT_INTERVAL, 0))
        if now - last < _REPORT_INTERVAL:
            _reports[key] = (hook, last, left_out + 1)
            return
        _reports[key] = (hook, now, 0)
    logger.exception(
        "hook %r failed (request %s)%s",
        hook,
        _request_id(event),
        f"; {left_out} more failures of it not logged since the last" if left_out else "",
    )
