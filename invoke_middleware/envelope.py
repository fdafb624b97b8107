"""The invoke envelope: the JSON body of ``POST /r/invoke/{slug}`` and the JSON it answers with.

The request schema is the one bundled with the package (``schemas/invoke-request.schema.json``,
installed as ``invoke_middleware.schemas``); it is read once, at import. A hand-written check
of the same rules accepts a valid envelope; jsonschema is imported, and the schema compiled,
only when an envelope fails that check and the refusal has to be explained.

>>> envelope = parse_envelope(b'{"method": "GET", "path": "/health"}', max_body_bytes=1024)
>>> envelope.method, envelope.path, envelope.body
('GET', '/health', b'')
>>> encode_response(204, {"X-Trace": "a"}, b"")
b'{"status_code":204,"headers":{"x-trace":"a"},"body_base64":""}'

Decisions beyond the schema:

* The body must be UTF-8 (RFC 8259 §8.1); ``NaN`` and ``Infinity`` are not JSON and are refused.
* Duplicate member names are refused (each reported at its pointer). RFC 8259 §4 leaves their
  meaning to the parser, so ``{"path": "/a", "path": "//b"}`` or two spellings of one header
  would otherwise mean whatever this parser happens to keep.
* Strings holding an unpaired UTF-16 surrogate (``"\\ud800"``) are refused: they cannot be
  encoded on the way to the container (RFC 8259 §8.2).
* A refusal costs in proportion to the request. Before any JSON is built, the ``,``, ``[``
  and ``{`` outside strings are counted: a document with more than an envelope within the
  header caps can have (``4 * max_header_count + 64``) is refused whole, unparsed. Before the
  schema runs, the ``headers`` member is held to the header caps (431) and ``body_base64`` to
  the body cap (413). Problems are then collected lazily, and the search stops after
  :data:`MAX_DETAILS`: they are reported sorted by pointer, with one more detail when more
  were found. Messages never quote the caller's values; a pointer reference token longer
  than :data:`MAX_POINTER_TOKEN_CHARS` is cut and ends with ``…``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from invoke_middleware.errors import (
    ErrorDetail,
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamError,
)
from invoke_middleware.headers import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    check_header_limits,
    fold_response_headers,
    is_safe_value,
    is_token,
)

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

__all__ = [
    "MAX_DETAILS",
    "MAX_POINTER_TOKEN_CHARS",
    "REQUEST_SCHEMA_NAME",
    "REQUEST_VALIDATOR",
    "InvokeEnvelope",
    "encode_response",
    "encode_response_pieces",
    "load_schema",
    "parse_envelope",
    "read_schema_bytes",
]

REQUEST_SCHEMA_NAME: Final = "invoke-request.schema.json"

#: At most this many problems are listed; one more detail says that more were found.
MAX_DETAILS: Final = 20

#: A JSON pointer reference token (a header name, say) longer than this is cut.
MAX_POINTER_TOKEN_CHARS: Final = 64

_SCHEMA_PACKAGE: Final = "invoke_middleware.schemas"


@functools.cache
def read_schema_bytes(name: str) -> bytes:
    """The raw bytes of a bundled document (``"openapi.json"``, ``"error.schema.json"``, ...).

    Raises :class:`FileNotFoundError` for a name that is not a file of the bundle; names with
    path separators are refused the same way, so a caller-chosen name cannot leave the bundle.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise FileNotFoundError(name)
    resource = resources.files(_SCHEMA_PACKAGE).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(name)
    return resource.read_bytes()


def load_schema(name: str) -> dict[str, Any]:
    """A bundled JSON Schema or the OpenAPI document, parsed; a fresh copy on every call."""
    document = json.loads(read_schema_bytes(name))
    if not isinstance(document, dict):
        raise ValueError(f"{name} is not a JSON object")
    return document


_REQUEST_SCHEMA: Final = load_schema(REQUEST_SCHEMA_NAME)

#: The compiled request validator (a ``jsonschema.Draft202012Validator``), built on first use.
REQUEST_VALIDATOR: Draft202012Validator


@functools.cache
def _request_validator() -> Draft202012Validator:
    # Importing jsonschema costs more than importing the rest of the package: only a refusal
    # that has to be explained pays for it.
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    Draft202012Validator.check_schema(_REQUEST_SCHEMA)
    return Draft202012Validator(_REQUEST_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def __getattr__(name: str) -> Any:
    if name == "REQUEST_VALIDATOR":
        return _request_validator()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ALLOWED_FIELDS: Final = ", ".join(_REQUEST_SCHEMA["properties"])


@dataclass(frozen=True, kw_only=True)
class InvokeEnvelope:
    """A validated invoke request: what to send to the container.

    ``path`` is the caller's raw path, query string included; the gateway's path rules
    (:mod:`invoke_middleware.target`) still apply. ``headers`` keeps the caller's order and
    spelling, with an array value expanded into one field per element.
    """

    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        # Header values may be the container's credentials: show the names only; and the
        # path without its query string, which may carry a token.
        names = tuple(name for name, _ in self.headers)
        path, query, _ = self.path.partition("?")
        shown = f"{path}?…" if query else path
        return (
            f"InvokeEnvelope(method={self.method!r}, path={shown!r}, "
            f"body=<{len(self.body)} bytes>, headers={names!r})"
        )


def parse_envelope(
    raw: bytes,
    *,
    max_body_bytes: int,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> InvokeEnvelope:
    """Decode, validate and unpack an invoke request body.

    Raises :class:`~invoke_middleware.errors.InvalidRequestError` (400) listing the problems
    with their JSON pointers (at most :data:`MAX_DETAILS`),
    :class:`~invoke_middleware.errors.HeadersTooLargeError` (431) when ``headers`` holds more
    fields than ``max_header_count`` or more bytes than ``max_header_bytes`` (counted as
    :func:`~invoke_middleware.headers.check_header_limits` counts them), or
    :class:`~invoke_middleware.errors.PayloadTooLargeError` (413) when the decoded
    ``body_base64`` would be longer than ``max_body_bytes``. The caps are checked before the
    envelope is validated, so a refusal costs in proportion to the request.
    """
    _check_structure(raw, max_header_count=max_header_count, max_header_bytes=max_header_bytes)
    document = _decode_json(raw)
    if isinstance(document, dict):
        headers = document.get("headers")
        if isinstance(headers, dict):
            check_header_limits(
                _header_fields(headers), max_count=max_header_count, max_bytes=max_header_bytes
            )
        encoded = document.get("body_base64")
        # The size is known from the length: an oversized body is never decoded, or validated.
        if isinstance(encoded, str) and _decoded_size(encoded) > max_body_bytes:
            raise PayloadTooLargeError(
                f"The decoded body_base64 is larger than {max_body_bytes} bytes."
            )
    problems = [] if _plainly_valid(document, raw) else _first_problems(document)
    encoded = document.get("body_base64", "") if isinstance(document, dict) else ""
    body = b""
    if (
        encoded
        and isinstance(encoded, str)
        and not any(p.pointer == "/body_base64" for p in problems)
    ):
        try:
            body = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            # The schema checks the alphabet and the place of "="; the length (and a final
            # newline, which Python's "$" lets through) are checked here, so that a pattern
            # counting groups of four need not run over the whole body.
            problems.append(ErrorDetail(pointer="/body_base64", message=_BASE64_MESSAGE))
    if problems:
        raise InvalidRequestError(details=_summarise(problems))
    return InvokeEnvelope(
        method=document["method"],
        path=document["path"],
        body=body,
        headers=tuple(_expand_headers(document.get("headers", {}))),
    )


def encode_response(
    status_code: int,
    headers: Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]],
    body: bytes,
) -> bytes:
    """The outer 200 body of a structured invoke, as compact JSON bytes.

    ``headers`` are ``(name, value)`` pairs (a response's fields, filtered by
    :func:`~invoke_middleware.headers.filter_response_headers`), or a mapping of names to a
    value or a sequence of values. They are folded once, by
    :func:`~invoke_middleware.headers.fold_response_headers`: names lower-cased, names that
    differ only in case merged in order, a name with one value mapped to a string and one
    with several to an array (never joined into one string: ``Set-Cookie`` cannot be,
    RFC 6265 §3). A name with no values is left out.

    Raises :class:`~invoke_middleware.errors.UpstreamError` (502) for a status outside
    100-599, which the response schema cannot express.
    """
    return b"".join(encode_response_pieces(status_code, headers, body))


def encode_response_pieces(
    status_code: int,
    headers: Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]],
    body: bytes | bytearray,
) -> tuple[bytes, bytes, bytes]:
    """:func:`encode_response`'s JSON in three pieces that join to it: what comes before the
    body's base64, the base64, and what follows it.

    Nothing is copied whole: a buffered response answered as the pieces holds the body's
    base64 once, where the JSON text and its bytes would hold it three times more (a 10 MiB
    body cost 50 MiB to answer). Base64 needs no escape in a JSON string.
    """
    if isinstance(status_code, bool) or not 100 <= status_code <= 599:
        raise UpstreamError()
    pairs = _expand_headers(headers) if isinstance(headers, Mapping) else headers
    fields = {"status_code": status_code, "headers": fold_response_headers(pairs)}
    # The object without its closing brace, then the last member's name and opening quote.
    before = _COMPACT_JSON.encode(fields).encode("ascii")[:-1] + b',"body_base64":"'
    return before, base64.b64encode(body), b'"}'


# --- decoding --------------------------------------------------------------------------------


class _DuplicateKeysObject(dict[str, Any]):
    """A JSON object that had repeated member names; ``duplicates`` lists them in order."""

    duplicates: tuple[str, ...] = ()


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj  # no name repeated: the common case, built in C
    seen: set[str] = set()
    duplicates: list[str] = []
    for key, _ in pairs:
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    marked = _DuplicateKeysObject(obj)
    marked.duplicates = tuple(duplicates)
    return marked


_SEPARATORS: Final = (b",", b"[", b"{")
_BODY_MEMBER: Final = b'"body_base64"'
_TO_STRING: Final = re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"')
#: A JSON string (RFC 8259 §7), as a pattern for scans that skip strings (compile it with
#: ``re.DOTALL``: a backslash escapes any byte, a line feed too). The quantifiers are
#: possessive, so no match backtracks, and a string that does not close runs to the end of the
#: text: were it not matched, a scan would start again after its quote, and a body of
#: ``"\"\"\"…`` would be read to its end once from each of its quotes.
JSON_STRING: Final = rb'"(?:[^"\\]++|\\.)*+"?'
#: A JSON string, or one separator outside strings.
_STRING_OR_SEPARATOR: Final = re.compile(JSON_STRING + rb"|[,\[{]", re.DOTALL)
_QUOTE: Final = ord('"')


def _structure_limit(*, max_header_count: int) -> int:
    """How many ``,``, ``[`` and ``{`` an envelope within the header caps has outside strings.

    Two per header field at most (a comma, and the bracket of an array value), a few for the
    fields and the two objects; twice that and more, so that an envelope with too many header
    fields is still parsed and answered 431 as long as the excess is moderate.
    """
    return 4 * max_header_count + 64


def _check_structure(raw: bytes, *, max_header_count: int, max_header_bytes: int) -> None:
    """Refuse, before parsing, a document with more members and items than an envelope has
    (see :func:`check_json_structure`)."""
    check_json_structure(
        raw,
        limit=_structure_limit(max_header_count=max_header_count),
        # Strings of a valid envelope hold at most max_header_bytes (header values) and the path.
        string_bytes=max_header_bytes + int(_MAX_PATH),
        what="an invoke envelope",
    )


def envelope_structure_limit(*, max_header_count: int, max_header_bytes: int) -> tuple[int, int]:
    """The ``limit`` and ``string_bytes`` of :func:`check_json_structure` for one envelope, for
    documents that carry envelopes (an MCP tool call)."""
    limit = _structure_limit(max_header_count=max_header_count)
    return limit, max_header_bytes + int(_MAX_PATH)


def check_json_structure(raw: bytes, *, limit: int, string_bytes: int, what: str) -> None:
    """Refuse, before parsing, a JSON document with more than ``limit`` members and items.

    Parsing builds a Python object for each JSON value, up to 30 times the size of its text;
    a document of known shape has a bounded number of them, whatever its size. Separators
    (``,``, ``[``, ``{``) are counted first with ``bytes.count`` (C speed, outside an invoke
    body); only when that count could be swollen by the characters of strings (at most
    ``string_bytes`` of them may be separators) are they counted again, skipping strings, by a
    scan that reads each byte once at most and stops at the limit. Raises
    :class:`~invoke_middleware.errors.InvalidRequestError` naming ``what`` the document should
    have been.
    """
    start, end = _body_span(raw)
    segments = ((0, start), (end, len(raw)))
    count = 0
    for first, last in segments:
        for separator in _SEPARATORS:
            count += raw.count(separator, first, last)
    if count <= limit:
        return
    if (
        count <= limit + string_bytes
        and _count_outside_strings(raw, segments, stop=limit + 1) <= limit
    ):
        return
    raise _whole_body_error(f"The body has more JSON members and array items than {what} can hold.")


def _count_outside_strings(raw: bytes, segments: Iterable[tuple[int, int]], *, stop: int) -> int:
    """Separators outside strings in the ``segments`` of ``raw``, counted up to ``stop``.

    Strings and separators alternate (a string is followed by a separator or a colon, and
    the colons of a document are fewer than its commas and braces), so the scan stops after
    a few times ``stop`` tokens, however many strings there are.

    A string left open runs to the end of its segment, and what follows it is not counted:
    the parser fails inside that string, before it builds anything for what follows. Up to
    the place where the parser fails, the scan reads strings as the parser does, so the count
    is never lower than the members and items the parser builds; for a valid document it is
    exactly the ``,``, ``[`` and ``{`` outside its strings.
    """
    count = 0
    for first, last in segments:
        for token in _STRING_OR_SEPARATOR.finditer(raw, first, last):
            # A string, even one left open, begins with its quote; a separator is one byte.
            if raw[token.start()] != _QUOTE:
                count += 1
                if count >= stop:
                    return count
    return count


def _body_span(raw: bytes) -> tuple[int, int]:
    """Where the ``body_base64`` string is, quotes included, or ``(0, 0)`` when unsure.

    The body is found without parsing, and only when it is certain to be one JSON string: it
    follows the first ``"body_base64"``, a colon and a quote, and holds no backslash before its
    closing quote. Whatever the bytes before it, that quote opens a string if the parser ever
    gets there (a ``"body_base64"`` that ends inside a string is only possible as the end of a
    string, and a string followed by a colon is a member name). Anything else is counted
    whole: the count may be too high for an odd envelope, which then pays for scanning its
    body too, never too low.
    """
    name = raw.find(_BODY_MEMBER)
    if name >= 0:
        opening = _TO_STRING.match(raw, name + len(_BODY_MEMBER))
        if opening is not None:
            closing = raw.find(b'"', opening.end())
            if closing >= 0 and raw.find(b"\\", opening.end(), closing) < 0:
                # Quotes included: the scan that skips strings must start between tokens.
                return opening.end() - 1, closing + 1
    return 0, 0


def _header_fields(headers: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """The fields ``headers`` would make, for the header caps; a non-string counts as empty."""
    for name, value in headers.items():
        for item in value if isinstance(value, list) else (value,):
            yield name, item if isinstance(item, str) else ""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads and json.dumps build a new decoder or encoder on every call that
# passes options. Both are stateless between calls, and safe to share between threads.
_ENVELOPE_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs, parse_constant=_refuse_constant
)
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"))


def _decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _whole_body_error("The body is not UTF-8 (RFC 8259 §8.1).") from exc
    try:
        return _ENVELOPE_JSON.decode(text)
    # ValueError covers JSONDecodeError, NaN/Infinity and over-long integers; RecursionError
    # is how the parser reports nesting deeper than the interpreter allows.
    except (ValueError, RecursionError) as exc:
        raise _whole_body_error("The body is not valid JSON.") from exc


def _whole_body_error(message: str) -> InvalidRequestError:
    return InvalidRequestError(details=[ErrorDetail(pointer="", message=message)])


def _decoded_size(encoded: str) -> int:
    return len(encoded) // 4 * 3 - encoded[-2:].count("=")


def _expand_headers(headers: Mapping[str, str | Sequence[str]]) -> Iterator[tuple[str, str]]:
    for name, value in headers.items():
        if isinstance(value, str):
            yield name, value
        else:
            for item in value:
                yield name, item


# --- problems --------------------------------------------------------------------------------

_BASE64_MESSAGE: Final = "must be standard base64 with '=' padding (RFC 4648 §4)"
_HEADER_NAME_MESSAGE: Final = "is not a valid header name (RFC 9110 token)"
_HEADER_VALUE_MESSAGE: Final = "must not contain CR, LF or NUL"
_MORE_MESSAGE: Final = "more problems were found and not listed"
_TYPE_NAMES: Final = {
    "string": "a string",
    "array": "an array",
    "object": "an object",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _pointer_token(token: str | int) -> str:
    text = str(token)
    if len(text) > MAX_POINTER_TOKEN_CHARS:
        text = text[:MAX_POINTER_TOKEN_CHARS] + "…"
    # RFC 6901 §3: "~" first, so the "~" of an escaped "/" is not escaped again.
    return text.replace("~", "~0").replace("/", "~1")


def _pointer(path: Iterable[str | int]) -> str:
    return "".join("/" + _pointer_token(token) for token in path)


def _find_json_problems(document: Any) -> Iterator[ErrorDetail]:
    """Duplicate member names and unpaired surrogates, anywhere in the document."""
    # Depth first, with a stack of iterators: memory grows with the depth, not the width, and
    # a pointer is only built for a value found wrong. Not recursion: the parser accepts
    # nesting as deep as the interpreter's recursion limit.
    if isinstance(document, str) and _has_lone_surrogate(document):
        yield ErrorDetail(pointer="", message="contains an unpaired UTF-16 surrogate")
    for name in getattr(document, "duplicates", ()):
        yield _detail([name], "appears more than once")
    stack: list[Iterator[tuple[str | int, Any]]] = []
    path: list[str | int] = []  # the keys leading to the members stack[-1] iterates
    if isinstance(document, dict | list):
        stack.append(_members(document))
    while stack:
        for key, value in stack[-1]:
            if isinstance(key, str) and _has_lone_surrogate(key):
                yield _detail([*path, key], "name contains an unpaired surrogate")
            if isinstance(value, str):
                if _has_lone_surrogate(value):
                    yield _detail([*path, key], "contains an unpaired UTF-16 surrogate")
            elif isinstance(value, dict | list):
                for name in getattr(value, "duplicates", ()):
                    yield _detail([*path, key, name], "appears more than once")
                stack.append(_members(value))
                path.append(key)
                break
        else:
            stack.pop()
            if path:
                path.pop()


def _members(container: dict[str, Any] | list[Any]) -> Iterator[tuple[str | int, Any]]:
    if isinstance(container, dict):
        return iter(container.items())
    return enumerate(container)


def _unsendable_header_values(document: Any) -> Iterator[ErrorDetail]:
    """Header values with characters HTTP/1.1 cannot carry.

    RFC 9110 §5.5 allows visible ASCII and obs-text (octets 0x80-0xFF, sent as Latin-1); a
    character beyond U+00FF has no octet to be sent as.
    """
    headers = document.get("headers") if isinstance(document, dict) else None
    if not isinstance(headers, dict):
        return
    for name, value in headers.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list):
            continue
        for index, item in enumerate(values):
            # Lone surrogates are reported on their own already.
            if (
                isinstance(item, str)
                and not _has_lone_surrogate(item)
                and any(ord(c) > 0xFF for c in item)
            ):
                pointer = _child("/headers", name)
                if not isinstance(value, str):
                    pointer = f"{pointer}/{index}"
                yield ErrorDetail(
                    pointer=pointer, message="must contain only Latin-1 characters (RFC 9110 §5.5)"
                )


def _child(pointer: str, key: str) -> str:
    return pointer + "/" + _pointer_token(key)


#: json.loads pairs valid surrogate escapes into one code point; what is left is unpaired.
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(text: str) -> bool:
    # isascii() is a flag lookup in CPython, so a large base64 body is not scanned.
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


_METHODS: Final = frozenset(_REQUEST_SCHEMA["properties"]["method"]["enum"])
_MAX_PATH: Final = _REQUEST_SCHEMA["properties"]["path"]["maxLength"]
_FIELDS: Final = frozenset(_REQUEST_SCHEMA["properties"])
_BASE64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _has_base64_shape(text: str) -> bool:
    """The schema's ``^[A-Za-z0-9+/]*={0,2}$`` (without the final newline Python's ``$``
    allows), at C speed: a regex walks a 10 MiB body character by character."""
    core = text.rstrip("=")
    if len(text) - len(core) > 2 or not core.isascii():
        return False
    return not core.encode("ascii").translate(None, _BASE64_ALPHABET)


def _conforms(document: Any) -> bool:
    """Whether ``document`` certainly satisfies the request schema.

    The same rules as ``invoke-request.schema.json``, written out for the common case of a
    valid envelope; never more lenient (a property test holds it to the schema), so a
    ``False`` only means "let jsonschema decide and explain".
    """
    if not isinstance(document, dict) or not document.keys() <= _FIELDS:
        return False
    method, path = document.get("method"), document.get("path")
    if not isinstance(method, str) or method not in _METHODS:
        return False
    if not isinstance(path, str) or len(path) > _MAX_PATH or path[:1] != "/" or path[1:2] == "/":
        return False
    if "body_base64" in document:
        body = document["body_base64"]
        if not isinstance(body, str) or not _has_base64_shape(body):
            return False
    if "headers" in document:
        headers = document["headers"]
        if not isinstance(headers, dict):
            return False
        for name, value in headers.items():
            if not is_token(name):
                return False
            values = value if isinstance(value, list) else [value]
            if not values or not all(
                isinstance(item, str) and is_safe_value(item) for item in values
            ):
                return False
    return True


def _schema_problems(document: Any) -> Iterator[ErrorDetail]:
    """The schema's objections, one at a time: jsonschema's errors are produced lazily and
    never all kept (an error holds its instance, schema and context)."""
    validator = _request_validator()
    for error in validator.iter_errors(document):
        for leaf in _leaves(error):
            # A value of the wrong type is told its type only, not every rule of the right
            # type: the rules of a schema whose "type" the value misses are not reported.
            if leaf.validator == "type" or not _misses_type(validator, leaf):
                yield from _explain(leaf)


def _misses_type(validator: Draft202012Validator, error: ValidationError) -> bool:
    schema: Any = error.schema
    expected = schema.get("type") if isinstance(schema, dict) else None
    if expected is None:
        return False
    types = [expected] if isinstance(expected, str) else expected
    return not any(validator.is_type(error.instance, name) for name in types)


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    """Replace an ``anyOf`` failure by the errors of the alternative whose type fits.

    When no alternative's type fits, the ``anyOf`` error itself is the one to explain.
    """
    if error.validator != "anyOf":
        yield error
        return
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(int(sub.relative_schema_path[0]), []).append(sub)
    alternatives: Any = error.validator_value
    for index in range(len(alternatives)):
        errors = branches.get(index, [])
        if not any(e.validator == "type" and not e.relative_path for e in errors):
            for sub in errors:
                yield from _leaves(sub)
            return
    yield error


def _explain(error: ValidationError) -> Iterator[ErrorDetail]:
    """Turn one jsonschema error into caller-safe details (never quoting the value)."""
    path = list(error.absolute_path)
    pointer = _pointer(path)
    keyword = error.validator
    # The stubs type these as "or Unset"; jsonschema always sets them on reported errors.
    value: Any = error.validator_value
    instance: Any = error.instance
    if "propertyNames" in error.absolute_schema_path:
        # jsonschema reports a bad name at its object; point at the member instead.
        yield _detail([*path, instance], _HEADER_NAME_MESSAGE)
    elif keyword == "required":
        missing = [name for name in value if name not in instance]
        for name in missing:
            yield _detail([*path, name], "is required")
    elif keyword == "additionalProperties":
        schema: Any = error.schema
        known = schema.get("properties", {})
        for name in instance:
            if name not in known:
                yield _detail([*path, name], f"is not an allowed field ({_ALLOWED_FIELDS})")
    elif keyword == "anyOf":
        yield ErrorDetail(pointer=pointer, message="must be a string or an array of strings")
    elif keyword == "type":
        types = [value] if isinstance(value, str) else value
        yield ErrorDetail(
            pointer=pointer, message="must be " + " or ".join(_TYPE_NAMES[t] for t in types)
        )
    elif keyword == "enum":
        yield ErrorDetail(pointer=pointer, message="must be one of " + ", ".join(map(str, value)))
    elif keyword == "maxLength":
        yield ErrorDetail(pointer=pointer, message=f"must be at most {value} characters long")
    elif keyword == "minItems":
        yield ErrorDetail(pointer=pointer, message="must not be an empty array")
    elif path == ["path"]:
        yield ErrorDetail(pointer=pointer, message="must begin with '/' and not with '//'")
    elif path == ["body_base64"]:
        yield ErrorDetail(pointer=pointer, message=_BASE64_MESSAGE)
    elif path[:1] == ["headers"]:
        yield ErrorDetail(pointer=pointer, message=_HEADER_VALUE_MESSAGE)
    else:
        # A rule added to the schema without a message here: say where, not what.
        yield ErrorDetail(pointer=pointer, message="is not valid")


def _detail(path: Iterable[str | int], message: str) -> ErrorDetail:
    return ErrorDetail(pointer=_pointer(path), message=message)


def _plainly_valid(document: Any, raw: bytes) -> bool:
    """Whether ``document`` (parsed from ``raw``) is certainly free of problems, without
    walking it: the common case of a valid envelope, told in a few steps.

    Text that is ASCII and has no ``\\u`` escape decodes to ASCII strings only, so none holds
    an unpaired surrogate or a character beyond Latin-1. A document that conforms to the
    schema holds objects at two places only, itself and its ``headers``; when neither had a
    repeated name, both are plain dicts (:func:`_object_from_pairs` marks the others). Any
    other envelope is examined whole by :func:`_first_problems`.
    """
    if not raw.isascii() or b"\\u" in raw or type(document) is not dict:
        return False
    headers = document.get("headers")
    return (headers is None or type(headers) is dict) and _conforms(document)


def _first_problems(document: Any) -> list[ErrorDetail]:
    """The first :data:`MAX_DETAILS` distinct problems found, and one more if there is one."""
    found = itertools.chain(
        _find_json_problems(document),
        # jsonschema costs several times a whole relay; it runs only to explain a refusal.
        () if _conforms(document) else _schema_problems(document),
        _unsendable_header_values(document),
    )
    problems: dict[ErrorDetail, None] = {}
    for problem in found:
        problems[problem] = None
        if len(problems) > MAX_DETAILS:
            break
    return list(problems)


def _summarise(problems: Iterable[ErrorDetail]) -> list[ErrorDetail]:
    unique = sorted(set(problems), key=lambda d: (d.pointer, d.message))
    if len(unique) <= MAX_DETAILS:
        return unique
    return [*unique[:MAX_DETAILS], ErrorDetail(pointer="", message=_MORE_MESSAGE)]
