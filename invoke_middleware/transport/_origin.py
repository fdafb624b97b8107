"""Split an upstream URL into where to connect (the origin) and what to ask for (the target)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, kw_only=True, slots=True)
class Origin:
    """Scheme, host and port of an upstream, plus the ``Host`` header that names it."""

    scheme: str
    host: str
    port: int
    host_header: str


def split_url(url: str) -> tuple[Origin, str]:
    """``(origin, request-target)`` of an absolute ``http``/``https`` URL.

    The target is the path and query exactly as written in ``url`` (never re-quoted, so the
    request goes precisely where the caller said), ``/`` when the URL has no path (RFC 9112
    §3.2.1). A fragment is never sent (RFC 9110 §4.2.4). Raises :class:`ValueError` for URLs
    that the gateway never builds: other schemes, credentials in the authority, a bad port.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("The upstream URL must be absolute.")
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter, 0, end)
        if found >= 0:
            end = found
    target = rest[end:].partition("#")[0]
    if not target.startswith("/"):
        target = "/" + target
    return _origin(scheme.lower(), rest[:end]), target


@functools.lru_cache(maxsize=512)
def _origin(scheme: str, authority: str) -> Origin:
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise ValueError("The upstream URL must use http or https.")
    if "@" in authority:
        raise ValueError("The upstream URL must not carry credentials.")
    if authority.startswith("["):
        closing = authority.find("]")
        if closing < 0:
            raise ValueError("The upstream URL has a malformed IPv6 address.")
        host, port_text = authority[1:closing], authority[closing + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ValueError("The upstream URL has a malformed authority.")
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError("The upstream URL has no host.")
    port = default_port
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("The upstream URL has an invalid port.")
        port = int(port_text)
    host = host.lower()
    named = f"[{host}]" if ":" in host else host
    host_header = named if port == default_port else f"{named}:{port}"
    return Origin(scheme=scheme, host=host, port=port, host_header=host_header)
