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
* Every problem is reported, sorted by pointer, at most :data:`MAX_DETAILS` of them. Messages
  never quote the caller's values; a pointer reference token longer than
  :data:`MAX_POINTER_TOKEN_CHARS` is cut and ends with ``…``.
"""

from __future__ import annotations

import base64
import binascii
import functools
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
from invoke_middleware.headers import fold_response_headers, is_safe_value, is_token

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

__all__ = [
    "MAX_DETAILS",
    "MAX_POINTER_TOKEN_CHARS",
    "REQUEST_SCHEMA_NAME",
    "REQUEST_VALIDATOR",
    "InvokeEnvelope",
    "encode_response",
    "load_schema",
    "parse_envelope",
    "read_schema_bytes",
]

REQUEST_SCHEMA_NAME: Final = "invoke-request.schema.json"

#: At most this many problems are listed; one more detail says how many were left out.
MAX_DETAILS: Final = 50

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
        # Header values may be the container's credentials: show the names only.
        names = tuple(name for name, _ in self.headers)
        return (
            f"InvokeEnvelope(method={self.method!r}, path={self.path!r}, "
            f"body=<{len(self.body)} bytes>, headers={names!r})"
        )


def parse_envelope(raw: bytes, *, max_body_bytes: int) -> InvokeEnvelope:
    """Decode, validate and unpack an invoke request body.

    Raises :class:`~invoke_middleware.errors.InvalidRequestError` (400) listing every problem
    with its JSON pointer, or :class:`~invoke_middleware.errors.PayloadTooLargeError` (413)
    when the decoded ``body_base64`` is longer than ``max_body_bytes``.
    """
    document = _decode_json(raw)
    problems = [
        *_find_json_problems(document),
        # jsonschema costs several times a whole relay; it runs only to explain a refusal.
        *(() if _conforms(document) else _schema_problems(document)),
        *_unsendable_header_values(document),
    ]
    encoded = document.get("body_base64", "") if isinstance(document, dict) else ""
    too_large = False
    body = b""
    if isinstance(encoded, str) and not any(p.pointer == "/body_base64" for p in problems):
        # The size is known from the length: an oversized body is never decoded.
        too_large = _decoded_size(encoded) > max_body_bytes
        if not too_large:
            try:
                body = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                # The schema checks the alphabet and the place of "="; the length (and a final
                # newline, which Python's "$" lets through) are checked here, so that a
                # pattern counting groups of four need not run over the whole body.
                problems.append(ErrorDetail(pointer="/body_base64", message=_BASE64_MESSAGE))
    if problems:
        raise InvalidRequestError(details=_summarise(problems))
    if too_large:
        raise PayloadTooLargeError(
            f"The decoded body_base64 is larger than {max_body_bytes} bytes."
        )
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
    if isinstance(status_code, bool) or not 100 <= status_code <= 599:
        raise UpstreamError()
    pairs = _expand_headers(headers) if isinstance(headers, Mapping) else headers
    payload = {
        "status_code": status_code,
        "headers": fold_response_headers(pairs),
        "body_base64": base64.b64encode(body).decode("ascii"),
    }
    return json.dumps(payload, separators=(",", ":")).encode("ascii")


# --- decoding --------------------------------------------------------------------------------


class _DuplicateKeysObject(dict[str, Any]):
    """A JSON object that had repeated member names; ``duplicates`` lists them in order."""

    duplicates: tuple[str, ...] = ()


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    duplicates: list[str] = []
    for key, value in pairs:
        if key in obj:
            duplicates.append(key)
        obj[key] = value
    if not duplicates:
        return obj
    marked = _DuplicateKeysObject(obj)
    marked.duplicates = tuple(duplicates)
    return marked


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _whole_body_error("The body is not UTF-8 (RFC 8259 §8.1).") from exc
    try:
        return json.loads(
            text, object_pairs_hook=_object_from_pairs, parse_constant=_refuse_constant
        )
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
    # An explicit stack, not recursion: the parser accepts nesting as deep as the interpreter's
    # recursion limit, and a recursive walk from deeper in the call stack would overflow.
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        pointer, value = pending.pop()
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                yield ErrorDetail(pointer=pointer, message="contains an unpaired UTF-16 surrogate")
        elif isinstance(value, dict):
            for key in getattr(value, "duplicates", ()):
                yield ErrorDetail(pointer=_child(pointer, key), message="appears more than once")
            for key, item in value.items():
                if _has_lone_surrogate(key):
                    yield ErrorDetail(
                        pointer=_child(pointer, key), message="name contains an unpaired surrogate"
                    )
                pending.append((_child(pointer, key), item))
        elif isinstance(value, list):
            pending.extend((f"{pointer}/{index}", item) for index, item in enumerate(value))


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
    errors = _request_validator().iter_errors(document)
    leaves = [leaf for error in errors for leaf in _leaves(error)]
    # A value of the wrong type is told its type only, not every rule of the right type.
    mistyped = {tuple(e.absolute_path) for e in leaves if e.validator == "type"}
    for error in leaves:
        if error.validator == "type" or tuple(error.absolute_path) not in mistyped:
            yield from _explain(error)


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


def _summarise(problems: Iterable[ErrorDetail]) -> list[ErrorDetail]:
    unique = sorted(set(problems), key=lambda d: (d.pointer, d.message))
    if len(unique) <= MAX_DETAILS:
        return unique
    hidden = len(unique) - MAX_DETAILS
    return [
        *unique[:MAX_DETAILS],
        ErrorDetail(pointer="", message=f"{hidden} more problems not listed"),
    ]
