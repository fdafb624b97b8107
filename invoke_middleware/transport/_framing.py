"""How a request body is framed on the wire (RFC 9112 §6)."""

from __future__ import annotations

from .base import UpstreamRequest

#: Methods whose request defines a meaning for content: without a body they still announce
#: ``Content-Length: 0`` (RFC 9110 §8.6).
_METHODS_WITH_CONTENT = frozenset({"POST", "PUT", "PATCH"})


def content_length_to_send(request: UpstreamRequest) -> int | None:
    """The ``Content-Length`` to send; ``None`` means none (no body, or chunked coding).

    Bytes bodies are framed by their length, iterable bodies by ``request.content_length``
    when the caller knows it, else they go chunked (see :func:`is_chunked`).
    """
    body = request.body
    if body is None:
        return 0 if request.method in _METHODS_WITH_CONTENT else None
    if isinstance(body, bytes | bytearray | memoryview):
        return len(body)
    return request.content_length


def is_chunked(request: UpstreamRequest) -> bool:
    """Whether the body goes with ``Transfer-Encoding: chunked`` (an iterable of unknown size)."""
    body = request.body
    return (
        body is not None
        and not isinstance(body, bytes | bytearray | memoryview)
        and request.content_length is None
    )
