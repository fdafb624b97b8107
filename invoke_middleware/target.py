"""Where a request may go: safe joining of a service's base URL and a caller's path
(docs/contract.md §5).

::

    >>> build_target_url("http://10.0.0.7:8080/api", "/v1/items?limit=5")
    'http://10.0.0.7:8080/api/v1/items?limit=5'
    >>> build_target_url("http://10.0.0.7:8080/api", "/v1/items", "limit=5")
    'http://10.0.0.7:8080/api/v1/items?limit=5'

Why no URL parser ever touches the caller's input: URL parsers disagree. ``urllib.parse``,
urllib3, ``http.client`` and WHATWG-style parsers (browsers, Node, many HTTP servers) differ on
backslashes (WHATWG reads ``\\`` as ``/``), on a path that starts with ``//`` (an authority to
some, a path to others), on userinfo, on whitespace and control characters that some strip
silently, and on unicode that some normalise (NFKC turns U+FF0F into ``/`` and U+FF0E into
``.``). A check that parses the caller's string with one parser, while the transport or the
container parses it with another, is bypassed by any input on which the two disagree.

So the caller's text is never parsed. The scheme, host, port and base path come from the
service record alone (set by the operator, never by the caller); the caller's path and query
are checked against a strict allow-list of characters, the dangerous shapes are refused, and
the URL is built by concatenation. Whatever any parser does afterwards, it sees
``scheme://host[:port]/base`` followed by a path that begins with exactly one ``/``, holds only
RFC 3986 path characters, no dot segment and no encoded separator, so neither the host nor the
scheme can change and the base path cannot be escaped.

The path may contain percent-encoded bytes (encoded UTF-8, an encoded space or ``?``), except
the encodings of ``/``, ``\\`` and NUL, which would let a server that decodes before routing see
a different path than the gateway checked. Their double encodings (``%252f``, ``%252e``) are
refused too, for the same reason with servers that decode twice, and so are the spellings that
only a lenient decoder reads as one of them, or as a control character or a dot segment
(overlong UTF-8 such as ``%c0%af``, ``%ef%bc%8f`` which NFKC folds to ``/``). Empty segments
(``/a//b``) are allowed below the first character: once the host is fixed they cannot reach
another one.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from invoke_middleware.errors import InvalidPathError
from invoke_middleware.headers import UNSAFE_TARGET_PATTERN

__all__ = ["MAX_PATH_LENGTH", "MAX_QUERY_LENGTH", "build_target_url"]

#: The longest caller path accepted, without its query (docs/contract.md §3 caps the envelope's path
#: at the same length).
MAX_PATH_LENGTH = 2048

#: The longest raw query accepted.
MAX_QUERY_LENGTH = 8192

# RFC 3986 §3.3: path-abempty = *( "/" segment ), segment = *pchar,
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@". Anything else must be encoded.
# The two alternatives are disjoint ("%" is not in the class), so matching stays linear.
_VALID_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")

# A query is opaque to the gateway: any visible ASCII character except "#" (a fragment never
# reaches a server) and "\\" (which parsers that read it as "/" could take into the path),
# with well-formed escapes.
_VALID_QUERY = re.compile(r"(?:[\x21\x22\x24\x26-\x5b\x5d-\x7e]|%[0-9A-Fa-f]{2})*")

# Encoded "/", "\" and NUL, also encoded more than once ("%252f" decodes to "%2f").
_FORBIDDEN_ESCAPE = re.compile(r"%(?:25)*(?:2f|5c|00)", re.IGNORECASE)

# A "." or ".." segment, its dots literal or encoded (once or more) in any case mix. A segment
# that is dots followed by ";" counts too: some servers drop path parameters before resolving
# dot segments (the classic "/..;/" bypass).
_DOT_SEGMENT = re.compile(r"/(?:\.|%(?:25)*2e){1,2}(?=[/;]|\Z)", re.IGNORECASE)

# An encoded control character (%00-%1F, %7F), also encoded more than once: a server that logs
# or routes on the decoded path would see a line break or a NUL the gateway never checked.
_ENCODED_CONTROL = re.compile(r"%(?:25)*(?:[01][0-9a-f]|7f)", re.IGNORECASE)

# A run of percent-escapes, decoded as one byte string (multi-byte UTF-8 spans several).
_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")

# Overlong UTF-8 (a code point spelled with more bytes than it needs). Strict decoders refuse
# it, lenient ones decode it: "%c0%ae" is "." to them.
_OVERLONG = re.compile(
    rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}"
)

# Where a server that splits after decoding ends a segment.
_SEGMENT_END = re.compile(r"[?#;]")

# What no decoding of a segment may bring out: a separator, which splits the segment in two
# ("\" is "/" to WHATWG parsers and to Windows), or a control character, which a server that
# logs or routes on the decoded path sees as a line break or the end of a string: C0, DEL, C1
# (U+0085 is a line break to Java's and Python's line splitting) and the Unicode line and
# paragraph separators (U+2028, U+2029, line breaks to JavaScript before ES2019). Only code
# points count: a lone %85 is no character in UTF-8, and reading the bytes as Latin-1 would
# find C1 inside most non-ASCII letters ("\u0440" is %d1%80).
_DECODED_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_DECODED_SEPARATOR_OR_CONTROL = re.compile(rf"[/\\{_DECODED_CONTROL_CLASS}]")
_DECODED_CONTROL = re.compile(rf"[{_DECODED_CONTROL_CLASS}]")

# Unicode's default-ignorable code points (Default_Ignorable_Code_Point, DerivedCoreProperties,
# Unicode 14). NFKC_Casefold (ICU's nfkc_cf, the mapping of UTS #46) deletes them, and runtimes
# trim some of them as whitespace: U+FEFF (ECMAScript's String.prototype.trim, .NET Framework
# 3.5's String.Trim), U+200B (.NET Framework 3.5), U+180E (Unicode 6.2 and older: Java 8,
# Python 3.3). Dots beside them are a dot segment to those.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)

# How many rounds of percent-decoding a chain of servers is assumed to apply.
_DECODING_ROUNDS = 3

# Only used to explain a refusal, never on the accepted path.
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def build_target_url(
    base_url: str,
    path: str,
    query: str | None = None,
    *,
    max_path_length: int = MAX_PATH_LENGTH,
    max_query_length: int = MAX_QUERY_LENGTH,
) -> str:
    """Join the caller's ``path`` (and query) onto ``base_url``, or refuse it.

    ``base_url`` is the service's origin with an optional base path (``Service.base_url``);
    it must come from the service record, never from the caller. A trailing ``/`` on it is
    not doubled.

    ``path`` is raw, still percent-encoded, and must begin with ``/``. With ``query=None``
    (the invoke envelope) the path may carry its own query after the first ``?``; a bare
    trailing ``?`` is kept. With ``query`` given (the catch-all relay: the tail and the raw
    query string without ``?``) the path may not contain ``?`` and an empty query adds none.

    Raises :class:`~invoke_middleware.errors.InvalidPathError` (400 ``invalid_path``) with a
    short message that never echoes the input, and :class:`ValueError` when ``base_url``
    itself is not an absolute ``http(s)`` URL without query or fragment (a configuration
    error, not the caller's).
    """
    if query is None:
        path, separator, query = path.partition("?")
        has_query = bool(separator)
    else:
        has_query = bool(query)
    _check_path(path, max_path_length)
    if has_query:
        _check_query(query, max_query_length)
        return f"{_base_prefix(base_url)}{path}?{query}"
    return _base_prefix(base_url) + path


def _check_path(path: str, max_length: int) -> None:
    if len(path) > max_length:
        raise InvalidPathError(f"The path is longer than {max_length} characters.")
    if (
        _VALID_PATH.fullmatch(path) is not None
        and not path.startswith("//")
        and _DOT_SEGMENT.search(path) is None
        # The rest is about percent-escapes, which most paths have none of.
        and (
            "%" not in path
            or (
                _FORBIDDEN_ESCAPE.search(path) is None
                and _ENCODED_CONTROL.search(path) is None
                and not _hides_escape(path)
                and not any(map(_is_unsafe, _decoded_segments(path)))
            )
        )
    ):
        return
    raise InvalidPathError(_explain_path(path))


def _hides_escape(path: str) -> bool:
    """Whether decoding ``path`` again reveals a dot segment or an encoded separator.

    ``%25`` is an encoded ``%``: ``%25%32%65`` decodes to ``%2e``, and a server that decodes
    twice sees ``.``. Three rounds cover every nesting a real server chain applies.
    """
    decoded = path
    for _ in range(3):
        if "%" not in decoded:
            return False
        decoded = unquote(decoded)
        if _FORBIDDEN_ESCAPE.search(decoded) or _DOT_SEGMENT.search(decoded) or "\\" in decoded:
            return True
    return False


def _decoded_segments(path: str) -> Iterator[str]:
    """Every segment of ``path`` with an escape, as each common decoding reads it.

    Stacks behind the gateway decode in ways a literal check misses: once or twice, overlong
    UTF-8 accepted, malformed bytes dropped, Unicode folded with NFKC (U+FF0E and U+2024 are
    ".", U+FF0F is "/"). Every segment with an escape is read each of those ways; the cost is
    linear in the path's length.
    """
    for segment in path.split("/"):
        if "%" in segment:
            yield from _decoded_forms(segment)


def _decoded_forms(segment: str) -> Iterator[str]:
    high = False
    for decode in _DECODINGS:
        form = segment
        for _ in range(_DECODING_ROUNDS):
            if "%" not in form:
                break
            high = high or _HIGH_ESCAPE.search(form) is not None
            form = _ESCAPE_RUN.sub(decode, form)
            yield form
            if not form.isascii():  # NFKC leaves ASCII as it is
                yield unicodedata.normalize("NFKC", form)
        if not high:
            return  # every escape was ASCII: the other decoders read the same


def _decode_leniently(escapes: re.Match[str], errors: str = "replace") -> str:
    """Percent-escapes as a lenient UTF-8 decoder reads them (overlong forms accepted)."""
    raw = bytes.fromhex(escapes.group().replace("%", ""))
    return _OVERLONG.sub(_shortest_form, raw).decode("utf-8", errors)


def _decode_dropping_malformed(escapes: re.Match[str]) -> str:
    """The same, malformed bytes left out, as decoders told to ignore errors do (Python's
    ``errors="ignore"``, Java's ``CodingErrorAction.IGNORE``, ``iconv -c``): ``..%ad`` and
    ``%c0%2e%c0%2e`` are ``..`` to them."""
    return _decode_leniently(escapes, "ignore")


def _decode_strictly_dropping_malformed(escapes: re.Match[str]) -> str:
    """As a strict decoder told to ignore errors reads them: an overlong form is malformed
    to it, and left out, so ``..%c0%ae`` is ``..``."""
    return bytes.fromhex(escapes.group().replace("%", "")).decode("utf-8", "ignore")


# Each way a server may decode a run of escapes, most common first.
_DECODINGS = (_decode_leniently, _decode_dropping_malformed, _decode_strictly_dropping_malformed)

# An escape of a byte outside ASCII: the only bytes the decoders above read differently.
_HIGH_ESCAPE = re.compile(r"%[89a-fA-F][0-9a-fA-F]")


def _shortest_form(overlong: re.Match[bytes]) -> bytes:
    raw = overlong.group()
    code_point = raw[0] & (0x3F >> (len(raw) - 1))
    for byte in raw[1:]:
        code_point = code_point << 6 | byte & 0x3F
    return chr(code_point).encode()


def _is_unsafe(form: str) -> bool:
    """Whether a decoded segment holds a separator or a control character, or reads as ``.``
    or ``..`` once cut at ``?``, ``#`` or ``;`` and stripped of whitespace and ignorables."""
    if _DECODED_SEPARATOR_OR_CONTROL.search(form):
        return True
    if not form.isascii():
        form = _IGNORABLE.sub("", form)
    return _SEGMENT_END.split(form.strip(), maxsplit=1)[0].strip() in (".", "..")


def _explain_path(path: str) -> str:
    """Why ``path`` was refused; the first matching reason, most telling first."""
    if not path.isascii():
        return "The path must be ASCII; percent-encode other characters."
    if UNSAFE_TARGET_PATTERN.search(path):
        return "The path must not contain whitespace or control characters."
    if "#" in path:
        return "The path must not contain a fragment (#)."
    if "\\" in path:
        return "The path must not contain a backslash."
    if "@" in path.partition("/")[0]:
        return "The path must not contain user information (@ before the first /)."
    if _SCHEME.match(path):
        return "The path must not contain a scheme."
    if not path.startswith("/"):
        return "The path must begin with /."
    if path.startswith("//"):
        return "The path must not begin with //."
    if _MALFORMED_ESCAPE.search(path):
        return "The path contains a malformed percent-escape."
    if _FORBIDDEN_ESCAPE.search(path):
        return "The path must not contain an encoded /, \\ or NUL."
    decoded = list(_decoded_segments(path))
    if _ENCODED_CONTROL.search(path) or any(map(_DECODED_CONTROL.search, decoded)):
        return "The path must not contain encoded control characters."
    if _DOT_SEGMENT.search(path) or _hides_escape(path) or any(map(_is_unsafe, decoded)):
        return "The path must not contain . or .. segments, or encoded separators."
    return "The path contains a character that must be percent-encoded."


def _check_query(query: str, max_length: int) -> None:
    if len(query) > max_length:
        raise InvalidPathError(f"The query is longer than {max_length} characters.")
    if _VALID_QUERY.fullmatch(query) is not None:
        return
    if not query.isascii():
        raise InvalidPathError("The query must be ASCII; percent-encode other characters.")
    if UNSAFE_TARGET_PATTERN.search(query):
        raise InvalidPathError("The query must not contain whitespace or control characters.")
    if "#" in query:
        raise InvalidPathError("The query must not contain a fragment (#).")
    if "\\" in query:
        raise InvalidPathError("The query must not contain a backslash; percent-encode it.")
    raise InvalidPathError("The query contains a malformed percent-escape.")


@functools.lru_cache(maxsize=512)
def _base_prefix(base_url: str) -> str:
    """``scheme://netloc/base`` without a trailing ``/``; parsed once per base URL.

    Parsing is safe here: the base URL is the operator's, not the caller's.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("a service base URL must be an absolute http(s) URL")
    if parts.query or parts.fragment or "?" in base_url or "#" in base_url:
        raise ValueError("a service base URL must not have a query or a fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
