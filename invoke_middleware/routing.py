"""The runtime route table (docs/contract.md §1): which paths the gateway answers, and which it
passes on.

Routing works on the decoded path the host app would route on, so a path is either the
gateway's or the host's, never both. The catch-all's tail is taken from the raw request
target when the server provides one, so percent-encodings reach the safety checks intact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# What a prefix may hold: RFC 3986 path characters, unescaped. The routes compare it with
# PATH_INFO, which servers decode and hand over as Latin-1 (PEP 3333): an escape or a
# non-ASCII character in the prefix would match no request, and the gateway would be off.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@]*)*")


class RouteKind(StrEnum):
    """The runtime routes."""

    INVOKE = "invoke"
    CATCH_ALL = "catch_all"
    LIST = "list"
    GET = "get"
    MCP = "mcp"
    #: Deprecated name of :attr:`CATCH_ALL`.
    RELAY = "catch_all"


@dataclass(frozen=True, kw_only=True)
class RouteMatch:
    """A request path that belongs to the gateway.

    ``slug`` is ``None`` for :attr:`RouteKind.LIST`; ``tail`` is the caller's path on the
    container (``/`` at least) for :attr:`RouteKind.CATCH_ALL`, ``""`` otherwise, and ``mount``
    the path in front of the tail as the caller's URL spells it (the host's mount point, the
    prefix and ``/r/containers/{slug}``), where the service's own paths start for the caller;
    ``""`` when that is not known. The slug is not validated here: an invalid slug is a 404
    after authentication, like an unknown one.
    """

    kind: RouteKind
    slug: str | None = None
    tail: str = ""
    mount: str = ""


class Router:
    """Matches paths below a configurable prefix against the runtime routes."""

    __slots__ = ("_containers", "_invoke", "_list", "_mcp", "prefix")

    def __init__(self, prefix: str = "") -> None:
        prefix = prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise ValueError(f"prefix must start with '/': {prefix!r}")
        if _PREFIX.fullmatch(prefix) is None:
            raise ValueError(
                f"prefix must hold only ASCII path characters, without escapes: {prefix!r}"
            )
        self.prefix = prefix
        self._invoke = prefix + "/r/invoke/"
        self._list = prefix + "/r/containers"
        self._containers = prefix + "/r/containers/"
        self._mcp = prefix + "/r/mcp"

    def match(self, path: str) -> RouteMatch | None:
        """The route ``path`` belongs to, or ``None`` when it is the host app's."""
        if path.startswith(self._invoke):
            slug = path[len(self._invoke) :]
            if not slug or "/" in slug:
                return None
            return RouteMatch(kind=RouteKind.INVOKE, slug=slug)
        if path == self._list:
            return RouteMatch(kind=RouteKind.LIST)
        if path == self._mcp:
            return RouteMatch(kind=RouteKind.MCP)
        if path.startswith(self._containers):
            rest = path[len(self._containers) :]
            slug, slash, tail = rest.partition("/")
            if not slug:
                return None
            if not slash:
                return RouteMatch(kind=RouteKind.GET, slug=slug)
            return RouteMatch(kind=RouteKind.CATCH_ALL, slug=slug, tail="/" + tail)
        return None

    def mount(self, slug: str) -> str:
        """The path below which ``slug``'s catch-all answers (no trailing ``/``)."""
        return self._containers + slug

    def raw_tail(self, raw_path: str, slug: str) -> str | None:
        """The tail of a raw (percent-encoded) path for ``slug``, or ``None`` if it does not
        start with this route literally (then the caller encoded the route itself)."""
        head = f"{self._containers}{slug}/"
        if not raw_path.startswith(head):
            return None
        return "/" + raw_path[len(head) :]
