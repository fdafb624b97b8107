"""Relay hooks: plain callables the gateway calls before and after each relay.

Use them for audit logs, metrics and tracing. They receive who called, which service, the
request id, the method, the path without its query, and afterwards the status, byte counts
and duration; never a body, a header value or a secret. A hook that raises is logged and
ignored: it never breaks the relay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from invoke_middleware.auth.principal import Principal
from invoke_middleware.registry import Service

logger = logging.getLogger("invoke_middleware.hooks")


@dataclass(frozen=True, kw_only=True)
class RelayStarted:
    """A relay is about to be sent upstream.

    ``route`` is ``"invoke"`` (structured) or ``"relay"`` (catch-all).
    """

    request_id: str
    route: str
    principal: Principal
    service: Service
    method: str
    path: str


@dataclass(frozen=True, kw_only=True)
class RelayFinished:
    """A relay ended: the response was delivered, or it failed.

    ``status`` is the container's status, or the gateway's own when ``error_code`` is set
    (the relay failed before or while the response streamed). ``bytes_in`` counts request
    body bytes sent upstream, ``bytes_out`` response body bytes received; ``duration`` is in
    seconds from the start of the relay to its end.
    """

    request_id: str
    route: str
    principal: Principal
    service: Service
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration: float
    error_code: str | None = None


BeforeRelayHook = Callable[[RelayStarted], None]
AfterRelayHook = Callable[[RelayFinished], None]


class _Event(Protocol):
    @property
    def request_id(self) -> str: ...


_E = TypeVar("_E", bound=_Event)


def call_hooks(hooks: Sequence[Callable[[_E], None]], event: _E) -> None:
    """Call each hook with ``event``; log and swallow what a hook raises."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            logger.exception("hook %r failed (request %s)", hook, event.request_id)
