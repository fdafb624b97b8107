"""Header rules, both directions (docs/contract.md §6).

Pure functions over lists of ``(name, value)`` pairs; repeated fields and their order are
kept everywhere. Names are compared case-insensitively (RFC 9110 §5.1).

On the way up, :func:`forward_request_headers` drops the hop-by-hop set (and every field the
``Connection`` header names), the gateway's own headers, and on the catch-all relay also the
caller's credentials; then it adds ``Via``, ``X-Forwarded-For``, ``X-Forwarded-Proto``,
``X-Forwarded-Host`` and ``X-Request-ID``. :func:`is_loop` spots a request that already passed
through this gateway. On the way down, :func:`filter_response_headers` drops the hop-by-hop
set and anything that would pass for the gateway's own; :func:`fold_response_headers` shapes
the invoke response's ``headers`` object.

Forwarding facts (``X-Forwarded-*``) are regenerated from the connection, never taken from
the caller, unless :attr:`ForwardingRules.trusted_hops` says how many proxies in front of the
gateway append to them. With ``trusted_hops = N`` the gateway behaves like werkzeug's
``ProxyFix(x_for=N, x_proto=N, x_host=N)``:

- the incoming ``X-Forwarded-For`` fields are read as one comma-separated list; when it has at
  least N entries, its last N are the trusted chain (the N-th from the right is the client as
  the outermost trusted proxy saw it), and the forwarded ``X-Forwarded-For`` is that chain
  followed by the connection's remote address. Everything left of the chain was written by
  the client and is dropped. With fewer than N entries (or N = 0) it is the remote address
  alone.
- ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are the N-th value from the right of the
  incoming field when there are at least N values and that value is well formed (``http`` or
  ``https``; a host name, IP literal and optional port); otherwise the connection's scheme and
  host. The caller's ``Host`` is its own text, so ``X-Forwarded-Host`` is left out when that
  is not a valid ``host[:port]`` either.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from invoke_middleware.cookies import TEAM_MARKER, team_cookies
from invoke_middleware.errors import (
    ERROR_MARKER_HEADER,
    REQUEST_ID_HEADER,
    HeadersTooLargeError,
)

__all__ = [
    "CONTENT_LENGTH_PATTERN",
    "CONTROL_CHARACTER_PATTERN",
    "DEFAULT_FORWARDING_RULES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_PSEUDONYM",
    "GATEWAY_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "MAX_CONNECTION_TOKENS",
    "MAX_REQUEST_ID_LENGTH",
    "ORIGIN_WIDE_HEADERS",
    "TCHARS",
    "TOKEN_PATTERN",
    "UNSAFE_TARGET_PATTERN",
    "UNSAFE_VALUE_PATTERN",
    "WSGI_REFUSED_HEADERS",
    "ForwardingRules",
    "check_header_limits",
    "choose_request_id",
    "connection_tokens",
    "filter_response_headers",
    "fold_response_headers",
    "forward_request_headers",
    "is_loop",
    "is_safe_value",
    "is_token",
]

#: Fields that describe one connection, not the message (RFC 9110 §7.6.1), lower-case.
#: ``Host`` and ``Content-Length`` are here too: the transport sets both for the upstream
#: connection (docs/contract.md §6), so the caller's values never travel.
HOP_BY_HOP_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)

#: Fields only the gateway writes, lower-case. Sent by a caller they are dropped, then the
#: gateway adds its own: the error marker, the request id, ``Via`` and the forwarding facts.
#: The others are not regenerated but are dropped all the same, because containers commonly
#: trust a proxy in front of them to have set them: who the client is (``X-Real-IP``,
#: ``True-Client-IP`` and the like, which Rails, Django middleware and CDNs read), how it
#: connected (``X-Forwarded-Ssl``, ``Front-End-Https``, ``X-Url-Scheme``, read by Rack and
#: Spring), and which URL it asked for (``X-Original-URL``, ``X-Rewrite-URL``, which IIS and
#: Symfony take over the request line, so a caller could reach a path the gateway never
#: checked).
GATEWAY_HEADERS: frozenset[str] = frozenset(
    {
        ERROR_MARKER_HEADER.lower(),
        REQUEST_ID_HEADER.lower(),
        "via",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-url-scheme",
        "front-end-https",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
    }
)

#: Response fields a browser applies to the whole origin (or its host and subdomains), not to
#: the resource that carried them, lower-case. Every service answers on the gateway's origin,
#: which its other teams and the host application share: one container must not decide for
#: them, so the catch-all never relays these. ``NEL`` with ``Report-To`` would have the
#: browser report every URL it asks of the origin, other teams' included, to the container's
#: collector for up to a year; ``Service-Worker-Allowed: /`` would let a page's worker take
#: every path of the origin; ``Strict-Transport-Security``, ``Alt-Svc``, ``Accept-CH`` and
#: ``Critical-CH``, ``Set-Login``, and the retired ``Expect-CT`` and ``Public-Key-Pins``
#: settle for the origin how it is reached and what each request of it carries. (The invoke
#: route returns its fields as data, which no browser applies.)
ORIGIN_WIDE_HEADERS: frozenset[str] = frozenset(
    {
        "nel",
        "report-to",
        "service-worker-allowed",
        "strict-transport-security",
        "alt-svc",
        "accept-ch",
        "critical-ch",
        "set-login",
        "expect-ct",
        "public-key-pins",
        "public-key-pins-report-only",
    }
)

#: The field a user token's request names its team in (:mod:`invoke_middleware.auth.jwt`).
TEAM_HEADER: Final = "X-Team-ID"

# The caller's credentials for the gateway itself; on the catch-all relay they never reach
# the container (docs/contract.md §4). Every "Proxy-*" field is dropped there too.
_RELAY_CREDENTIAL_HEADERS = frozenset({"authorization", TEAM_HEADER.lower()})

_REQUEST_DROP = HOP_BY_HOP_HEADERS | GATEWAY_HEADERS
_REQUEST_DROP_AUTHORIZATION = _REQUEST_DROP | {"authorization"}
_RELAY_DROP = _REQUEST_DROP | _RELAY_CREDENTIAL_HEADERS
#: Names a PEP 3333 server refuses in an application's response, lower-case: the union of
#: wsgiref's (``wsgiref.util.is_hop_by_hop``, an assertion), waitress's (an assertion, so a
#: 500) and gunicorn's (dropped) lists. ``Trailers`` is not a field of RFC 9110, but the
#: servers refuse it all the same, so a relayed response must never carry it.
WSGI_REFUSED_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# A container may not fake a gateway error, nor hand out a second request id: every response
# carries the gateway's (docs/contract.md §6).
_RESPONSE_DROP = (
    HOP_BY_HOP_HEADERS
    | WSGI_REFUSED_HEADERS
    | {ERROR_MARKER_HEADER.lower(), REQUEST_ID_HEADER.lower()}
)

#: The name this gateway gives itself in ``Via`` (RFC 9110 §7.6.3 received-by pseudonym).
DEFAULT_PSEUDONYM = "invoke-middleware"

#: Default caps for :func:`check_header_limits`.
DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

MAX_REQUEST_ID_LENGTH = 128

# --- the field grammar: every module that checks a name or a value uses these -------------

#: The characters of an RFC 9110 token (§5.6.2 tchar): field names, methods, ``Via`` pseudonyms.
TCHARS: Final = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: ``token = 1*tchar`` (RFC 9110 §5.6.2); use with ``fullmatch``.
TOKEN_PATTERN: Final = re.compile(f"[{re.escape(TCHARS)}]+")

#: CR, LF and NUL, which must never pass into a field value (RFC 9110 §5.5): they would split
#: the header section for the next reader. Use with ``search``.
UNSAFE_VALUE_PATTERN: Final = re.compile(r"[\r\n\x00]")

#: ``Content-Length = 1*DIGIT`` (RFC 9110 §8.6), ASCII digits only (``str.isdigit`` also takes
#: "²"), at most 18 of them so the value fits a 64-bit length. Use with ``fullmatch``.
CONTENT_LENGTH_PATTERN: Final = re.compile(r"[0-9]{1,18}")

#: A control character other than HTAB, which no field value may hold (RFC 9110 §5.5) and a
#: WSGI server such as gunicorn refuses in a response. Use with ``search``.
CONTROL_CHARACTER_PATTERN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: A character no field value can be sent with: a control other than HTAB (as above), or one
#: beyond Latin-1, which has no octet (RFC 9110 §5.5). Use with ``search``.
UNSENDABLE_VALUE_PATTERN: Final = re.compile(r"[^\t\x20-\x7e\x80-\xff]")

#: Whitespace and control characters, which a request-target never holds (RFC 9112 §3.2):
#: one would end it early and let the rest pass for another part of the request. Use with
#: ``search``.
UNSAFE_TARGET_PATTERN: Final = re.compile(r"[\x00-\x20\x7f]")

_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@/+=\-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# RFC 9110 §5.6.5: comments may hold commas, so they go before a Via list is split.
_VIA_COMMENT = re.compile(r"\([^()]*\)")
# reg-name / IPv4 / [IPv6], then an optional port.
_FORWARDED_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")
_FORWARDED_PROTOS = frozenset({"http", "https"})


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


def is_token(name: str) -> bool:
    """Whether ``name`` is an RFC 9110 token, the grammar of a field name (§5.1, §5.6.2)."""
    return TOKEN_PATTERN.fullmatch(name) is not None


def is_safe_value(value: str) -> bool:
    """Whether ``value`` holds no CR, LF or NUL (RFC 9110 §5.5), so it cannot split a header."""
    return UNSAFE_VALUE_PATTERN.search(value) is None


@dataclass(frozen=True, kw_only=True)
class ForwardingRules:
    """What the gateway adds on the way up.

    ``pseudonym`` is its name in ``Via`` (an RFC 9110 token, compared case-insensitively when
    looking for loops); give each gateway deployment in a chain its own. ``trusted_hops`` is
    how many proxies in front of the gateway append to ``X-Forwarded-*`` (0: trust none, the
    connection is the client); see the module docstring for the exact rules.
    """

    pseudonym: str = DEFAULT_PSEUDONYM
    trusted_hops: int = 0

    def __post_init__(self) -> None:
        if not is_token(self.pseudonym):
            raise ValueError("the Via pseudonym must be an RFC 9110 token")
        if self.trusted_hops < 0:
            raise ValueError("trusted_hops must be 0 or more")


DEFAULT_FORWARDING_RULES = ForwardingRules()


#: The elements of one ``Connection`` field read, at most (a real one names a few): the rest
#: are ignored unread, so that a field of 60,000 commas costs what one of 64 elements does,
#: not a loop turn each. A field named past them is relayed as if it were not named.
MAX_CONNECTION_TOKENS = 64


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The lower-cased field names listed by every ``Connection`` field of ``headers`` (the
    first :data:`MAX_CONNECTION_TOKENS` of each).

    Only SP and HTAB surround a list element (RFC 9110 §5.6.1): ``str.strip()`` would also
    take ``keep-alive\x85`` for ``keep-alive``, which a stricter reader does not."""
    tokens: set[str] = set()
    for name, value in headers:
        # Checking the length first keeps the common case to one integer comparison.
        if len(name) == 10 and name.lower() == "connection":
            elements = value.split(",", MAX_CONNECTION_TOKENS)[:MAX_CONNECTION_TOKENS]
            tokens.update(token.strip(" \t").lower() for token in elements)
    tokens.discard("")
    return frozenset(tokens)


def _kept(
    headers: Collection[tuple[str, str]],
    drop: frozenset[str],
    *,
    drop_proxy: bool = False,
    fold_underscores: bool = False,
) -> list[tuple[str, str]]:
    """The fields of ``headers`` not in ``drop``, nor named by its ``Connection`` fields.

    With ``fold_underscores``, a name is compared with its ``_`` read as ``-``: names that
    did not pass through a server (an envelope's) may spell ``X-Forwarded-For`` as
    ``X_Forwarded_For``, which servers that map both to one environ key (wsgiref, uWSGI)
    would hand the container as the gateway's own field.
    """
    named = connection_tokens(headers)
    if fold_underscores:
        drop = drop | {token.replace("_", "-") for token in named}
        return [
            (name, value) for name, value in headers if name.lower().replace("_", "-") not in drop
        ]
    if named:
        drop = drop | named
    if drop_proxy:
        return [
            (name, value)
            for name, value in headers
            if (lowered := name.lower()) not in drop and not lowered.startswith("proxy-")
        ]
    return [(name, value) for name, value in headers if name.lower() not in drop]


def forward_request_headers(
    incoming: Collection[tuple[str, str]],
    *,
    remote_addr: str,
    scheme: str,
    host: str,
    request_id: str,
    envelope: Collection[tuple[str, str]] | None = None,
    authorization: str | None = None,
    cookie_team: uuid.UUID | None = None,
    rules: ForwardingRules = DEFAULT_FORWARDING_RULES,
) -> tuple[tuple[str, str], ...]:
    """The header fields to send upstream, in the tuple the upstream request carries.

    ``incoming`` is the outer request's header list; ``remote_addr``, ``scheme`` and ``host``
    describe its connection. They always supply the forwarding facts and the existing ``Via``.

    On the catch-all relay (``envelope=None``) the end-to-end fields are ``incoming`` minus the
    hop-by-hop set, the fields its ``Connection`` names, the gateway's own fields,
    ``Authorization``, ``X-Team-ID`` and every ``Proxy-*`` field (docs/contract.md §4).

    On the invoke route pass the envelope's ``headers`` (already validated, arrays unrolled
    into repeated pairs): they are the end-to-end fields, minus the hop-by-hop set, the
    fields the envelope's own ``Connection`` names and the gateway's own fields; their
    ``Authorization`` and ``Content-Type`` are kept (docs/contract.md §3). The outer request's
    fields are never forwarded.

    Then come, in this order: ``Via`` (the incoming ``Via`` list followed by
    ``1.1 <pseudonym>``), ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
    ``X-Request-ID: request_id``. Last, when ``authorization`` is given (an external service's
    own credential), ``Authorization: authorization``, and no other ``Authorization`` field.
    With ``cookie_team`` (the caller's team, on the catch-all), each ``Cookie`` field goes
    through :func:`~invoke_middleware.cookies.team_cookies`: cookies kept to another team
    stay behind. Check :func:`is_loop` on ``incoming`` first.
    """
    if envelope is None:
        end_to_end = _kept(incoming, _RELAY_DROP, drop_proxy=True)
    else:
        drop = _REQUEST_DROP if authorization is None else _REQUEST_DROP_AUTHORIZATION
        end_to_end = _kept(envelope, drop, fold_underscores=True)

    vias: list[str] = []
    xff: list[str] = []
    protos: list[str] = []
    hosts: list[str] = []
    hops = rules.trusted_hops
    marked_cookies = False  # a Cookie field holds a cookie kept to a team
    for name, value in incoming:
        # Comparing lengths first spares lower-casing most names on this hot path.
        size = len(name)
        if size == 3 and name.lower() == "via":
            vias.append(value.strip())
        elif size == 6 and name.lower() == "cookie" and TEAM_MARKER in value:
            marked_cookies = True
        elif hops and 15 <= size <= 17:
            lowered = name.lower()
            if lowered == "x-forwarded-for":
                xff.extend(_split_list(value))
            elif lowered == "x-forwarded-proto":
                protos.extend(_split_list(value))
            elif lowered == "x-forwarded-host":
                hosts.extend(_split_list(value))

    if marked_cookies and cookie_team is not None:
        end_to_end = _teams_cookies(end_to_end, cookie_team)
    vias.append(f"1.1 {rules.pseudonym}")
    chain = [*xff[-hops:], remote_addr] if hops and len(xff) >= hops else [remote_addr]
    proto = protos[-hops].lower() if hops and len(protos) >= hops else ""
    if proto not in _FORWARDED_PROTOS:
        proto = scheme
    forwarded_host = hosts[-hops] if hops and len(hosts) >= hops else ""
    if not (forwarded_host and _is_host(forwarded_host)):
        forwarded_host = host

    end_to_end += (
        ("Via", ", ".join(v for v in vias if v)),
        ("X-Forwarded-For", ", ".join(chain)),
        ("X-Forwarded-Proto", proto),
    )
    # The caller's Host is whatever it wrote: passed on only when it names a host.
    if _is_host(forwarded_host):
        end_to_end.append(("X-Forwarded-Host", forwarded_host))
    end_to_end.append((REQUEST_ID_HEADER, request_id))
    if authorization is not None:
        end_to_end.append(("Authorization", authorization))
    return tuple(end_to_end)


def _teams_cookies(fields: list[tuple[str, str]], team: uuid.UUID) -> list[tuple[str, str]]:
    """``fields`` with each ``Cookie`` field as ``team``'s service may have it (none left:
    the field goes)."""
    kept: list[tuple[str, str]] = []
    for name, value in fields:
        if len(name) == 6 and name.lower() == "cookie":
            own = team_cookies(value, team)
            if own is not None:
                kept.append((name, own))
        else:
            kept.append((name, value))
    return kept


def _is_host(value: str) -> bool:
    """Whether ``value`` is ``host[:port]``: a reg-name or IP literal, a port up to 65535."""
    match = _FORWARDED_HOST.fullmatch(value)
    return match is not None and (match[1] is None or int(match[1]) <= 65535)


def _split_list(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def is_loop(headers: Iterable[tuple[str, str]], pseudonym: str = DEFAULT_PSEUDONYM) -> bool:
    """Whether a ``Via`` field of ``headers`` already names ``pseudonym`` as its received-by.

    Each ``Via`` element is ``received-protocol received-by [comment]`` (RFC 9110 §7.6.3);
    only the received-by part is compared, exactly and case-insensitively, so a pseudonym in
    a comment or as part of a longer name does not count. The pipeline answers a loop with
    508 ``loop_detected``.
    """
    wanted = pseudonym.lower()
    for name, value in headers:
        # A field without the pseudonym anywhere is passed over at the pace of a substring
        # search; one with it is read in one scan of a pattern. Read element by element in
        # Python, a field of 60,000 commas cost 4.6 ms, before authentication.
        if (
            len(name) == 3
            and name.lower() == "via"
            and wanted in value.lower()
            and _received_by(pseudonym).search(_VIA_COMMENT.sub("", value)) is not None
        ):
            return True
    return False


@functools.lru_cache(maxsize=8)
def _received_by(pseudonym: str) -> re.Pattern[str]:
    """A ``Via`` element (after comments are taken out) whose received-by is ``pseudonym``:
    at the field's start or after a comma, optional whitespace, a received-protocol, then
    whitespace, the pseudonym, and whitespace, a comma or the field's end."""
    return re.compile(rf"(?:^|,)\s*[^\s,]+\s+{re.escape(pseudonym)}(?=[\s,]|$)", re.IGNORECASE)


# New request ids, drawn a batch at a time. Each is handed out once: list.pop is atomic, so
# two threads never get the same one, and a forked process (a gunicorn worker) drops the ids
# it inherited, which its parent and its siblings hold too.
_FRESH_IDS: list[str] = []
_ID_BATCH = 64
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_FRESH_IDS.clear)


def choose_request_id(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and safe, else a new random one.

    Safe means 1 to 128 characters from ``A-Z a-z 0-9 . _ : @ / + = -``: enough for UUIDs,
    W3C trace ids and base64 ids, never enough to inject into a log line or a header. A new
    id is 16 random bytes (:func:`os.urandom`) in 32 lower-case hex digits; it has the shape
    of ``uuid4().hex`` but not its version bits.
    """
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming) is not None:
        return incoming
    try:
        return _FRESH_IDS.pop()
    except IndexError:
        # More random than uuid4().hex, and one system call per batch instead of per id.
        batch = os.urandom(16 * _ID_BATCH).hex()
        _FRESH_IDS.extend(batch[start : start + 32] for start in range(32, len(batch), 32))
        return batch[:32]


def filter_response_headers(
    headers: Collection[tuple[str, str]], *, also_drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The container's response fields that may reach the caller.

    Drops the hop-by-hop set (``Content-Length`` included: the gateway frames the body it
    sends itself), every name a WSGI server refuses from an application
    (:data:`WSGI_REFUSED_HEADERS`: under any server the response is relayed, never turned
    into the server's 500), fields whose name is not an RFC 9110 token or whose value holds a
    control character (servers refuse those too), the fields the
    response's ``Connection`` names, the gateway's error marker
    (so a container cannot pass its response off as a gateway error) and ``X-Request-ID``
    (the gateway's own is set on every response), and the lower-case names of
    ``also_drop`` (fields the gateway writes itself on this response, such as ``RateLimit``).
    """
    drop = _response_drop(also_drop) if also_drop else _RESPONSE_DROP
    return [
        (name, value)
        for name, value in _kept(headers, drop)
        # HTTPTransport's parser refuses such names already; an in-process or custom
        # transport may hand them over.
        if TOKEN_PATTERN.fullmatch(name) is not None
        and CONTROL_CHARACTER_PATTERN.search(value) is None
    ]


@functools.lru_cache(maxsize=8)
def _response_drop(also_drop: frozenset[str]) -> frozenset[str]:
    # The same one or two sets come back on every response: joined once.
    return _RESPONSE_DROP | also_drop


def fold_response_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """The invoke response's ``headers`` object (docs/contract.md §3).

    Names are lower-cased. A field seen once maps to its value; a field seen more than once
    maps to the array of its values in order. Values are never comma-joined, so ``Set-Cookie``
    is never folded (RFC 6265 §3): a single cookie stays a string, like any single field, and
    two or more are an array. Filter with :func:`filter_response_headers` first.
    """
    folded: dict[str, str | list[str]] = {}
    for name, value in headers:
        key = name.lower()
        seen = folded.get(key)
        if seen is None:
            folded[key] = value
        elif isinstance(seen, list):
            seen.append(value)
        else:
            folded[key] = [seen, value]
    return folded


def check_header_limits(
    headers: Iterable[tuple[str, str]],
    *,
    max_count: int = DEFAULT_MAX_HEADER_COUNT,
    max_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> None:
    """Raise :class:`~invoke_middleware.errors.HeadersTooLargeError` (431) over the caps.

    ``max_count`` caps the number of fields (repeats count one each); ``max_bytes`` caps their
    size as on the wire, ``name: value`` plus CRLF per field. Characters are counted as bytes,
    which they are for WSGI's latin-1 header strings.
    """
    size = 0
    for count, (name, value) in enumerate(headers, start=1):
        size += len(name) + len(value) + 4
        if count > max_count:
            raise HeadersTooLargeError(f"The request has more than {max_count} header fields.")
        if size > max_bytes:
            raise HeadersTooLargeError(f"The request headers are larger than {max_bytes} bytes.")
