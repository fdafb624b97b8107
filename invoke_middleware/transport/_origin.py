"""Split an upstream URL into where to connect (the origin) and what to ask for (the target)."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: RFC 1035 §2.3.4: a name is at most 255 octets on the wire, 253 characters written out.
_MAX_NAME_LENGTH = 253


class UnusableURLError(ValueError):
    """An upstream URL that no transport can send to.

    ``reason`` completes the sentence "The upstream URL …" (``"has an invalid port"``), so
    that the service validator can name its own field instead.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"The upstream URL {reason}.")
        self.reason = reason


@dataclass(frozen=True, kw_only=True, slots=True)
class Origin:
    """Scheme, host and port of an upstream, plus the ``Host`` header that names it.

    ``host`` is ASCII: an internationalised name is held as its A-label (``xn--…``), the one
    name that is looked up, sent in ``Host`` and checked against the TLS certificate.
    """

    scheme: str
    host: str
    port: int
    host_header: str


def split_url(url: str) -> tuple[Origin, str]:
    """``(origin, request-target)`` of an absolute ``http``/``https`` URL.

    The target is the path and query exactly as written in ``url`` (never re-quoted, so the
    request goes precisely where the caller said), ``/`` when the URL has no path (RFC 9112
    §3.2.1). A fragment is never sent (RFC 9110 §4.2.4). Raises :class:`UnusableURLError` (a
    :class:`ValueError`) for URLs that the gateway never builds: other schemes, credentials
    in the authority, a bad port, a host that cannot be looked up.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UnusableURLError("must be absolute")
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
        raise UnusableURLError("must use http or https")
    if "@" in authority:
        raise UnusableURLError("must not carry credentials (user:password@)")
    if authority.startswith("["):
        closing = authority.find("]")
        if closing < 0:
            raise UnusableURLError("has a malformed IPv6 address")
        literal, port_text = authority[1:closing], authority[closing + 1 :]
        if port_text and not port_text.startswith(":"):
            raise UnusableURLError("has a malformed authority")
        port_text = port_text[1:]
        host = _ipv6_literal(literal)
    else:
        name, _, port_text = authority.partition(":")
        host = _ascii_name(name)
    port = default_port
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UnusableURLError("has an invalid port")
        port = int(port_text)
    named = f"[{host}]" if ":" in host else host
    host_header = named if port == default_port else f"{named}:{port}"
    return Origin(scheme=scheme, host=host, port=port, host_header=host_header)


def _ipv6_literal(literal: str) -> str:
    # RFC 3986 §3.2.2: brackets hold an IPv6 address; anything else there is no host at all.
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        raise UnusableURLError("has a malformed IPv6 address") from None
    return literal.lower()


def _ascii_name(name: str) -> str:
    """``name`` as it is looked up, sent in ``Host`` (RFC 9110 §7.2) and in TLS SNI."""
    if not name:
        raise UnusableURLError("has no host")
    try:
        if name.isascii():
            # What the socket and ssl modules do to every name anyway (empty labels and
            # labels over 63 characters are refused); done here, so that such a name is
            # refused when the service is created, not by the socket on each request.
            encoded = name.lower().encode("idna")
        else:
            # Not the standard library's "idna" codec: it implements IDNA 2003, which maps
            # "ß" to "ss" and so reaches another domain than the one registered under IDNA
            # 2008 (RFC 5891), the one urllib3 and browsers look up.
            import idna  # noqa: PLC0415 - its tables load only for a non-ASCII host

            encoded = idna.encode(name, uts46=True)
    except UnicodeError:  # idna.IDNAError is one
        raise UnusableURLError("has an invalid host name") from None
    if len(encoded.rstrip(b".")) > _MAX_NAME_LENGTH:
        raise UnusableURLError(f"has a host name longer than {_MAX_NAME_LENGTH} characters")
    return encoded.decode("ascii")
