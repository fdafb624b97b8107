"""When a request that failed on a reused keep-alive connection may be sent again.

A server may close an idle connection at the moment a request is written to it (RFC 9112
§9.3.1). Such a request is retried once, on a fresh connection, only when the server cannot
have acted on it: nothing of it was accepted, or the peer closed before any response byte and
the request is idempotent (RFC 9110 §9.2.2) with a body that can be sent again.
"""

from __future__ import annotations

from .base import UpstreamRequest

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def body_is_replayable(request: UpstreamRequest) -> bool:
    """Whether the request body can be sent a second time (no body, or bytes)."""
    return request.body is None or isinstance(request.body, bytes | bytearray | memoryview)


def may_retry_after_close(request: UpstreamRequest) -> bool:
    """Whether a request the peer closed on, before answering, may be sent again."""
    return request.method in IDEMPOTENT_METHODS and body_is_replayable(request)
