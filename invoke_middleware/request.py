"""The framework-free request the relay pipeline works on.

The WSGI adapter (:mod:`invoke_middleware.middleware`) builds a :class:`GatewayRequest` from the
environ; nothing past it ever sees WSGI. Auth resolvers receive the same object.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


class Headers:
    """An ordered, case-insensitive, read-only list of header fields; repeats are kept."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        lowered = name.lower()
        for key, value in self._items:
            if key.lower() == lowered:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        lowered = name.lower()
        return [value for key, value in self._items if key.lower() == lowered]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        # Never print values: Authorization and Cookie would leak into logs.
        return f"Headers({[k for k, _ in self._items]!r})"


class BodyReader(Protocol):
    """A readable request body (a WSGI ``wsgi.input`` satisfies it)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class GatewayRequest:
    """One incoming request, as the pipeline sees it.

    ``path`` is the raw (still percent-encoded) path below the gateway's prefix; ``query`` is
    the raw query string without ``?``. ``content_length`` is ``None`` when the caller sent no
    ``Content-Length``; ``chunked`` says the server de-chunked the body and marks its end.
    """

    method: str
    path: str
    query: str
    headers: Headers
    remote_addr: str
    scheme: str
    host: str
    body: BodyReader = field(repr=False)
    content_length: int | None = None
    chunked: bool = False
