"""Relay hooks: plain callables the gateway calls before and after each relay.

Use them for audit logs, metrics and tracing. They receive who called, which service, the
request id, the method, the path without its query, and afterwards the status, byte counts
and duration; never a body, a header value or a secret. A hook that raises is logged and
ignored: it never breaks the relay.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from invoke_middleware._log_throttle import LogThrottle
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
    most once per ``LOG_INTERVAL`` for each hook and kind of event, with the count of the
    failures left out meanwhile)."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            left_out = _failures.due(_hook_key(hook, event))
            if left_out is None:
                continue
            logger.exception(
                "hook %r failed (request %s)%s",
                hook,
                _request_id(event),
                f"; {left_out} more failures of it not logged since the last" if left_out else "",
            )


#: Failing hooks, by hook and kind of event.
_failures = LogThrottle()


def _hook_key(hook: object, event: object) -> Hashable:
    # The hook itself, held by the throttle, so that its id is no other's while it is there;
    # a callable object that cannot be hashed is told apart by its id.
    key = (hook, type(event))
    try:
        hash(key)
    except TypeError:
        return (id(hook), type(event))
    return key
