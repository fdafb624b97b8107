"""The invoke envelope: every rule of the request schema, the decoding and the response body."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest

from invoke_middleware import envelope as envelope_module
from invoke_middleware.envelope import (
    MAX_DETAILS,
    MAX_POINTER_TOKEN_CHARS,
    InvokeEnvelope,
    encode_response,
    load_schema,
    parse_envelope,
    read_schema_bytes,
)
from invoke_middleware.errors import (
    ErrorDetail,
    HeadersTooLargeError,
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamError,
)
from invoke_middleware.headers import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_COUNT

LIMIT = 1024 * 1024
BASE64_MESSAGE = "must be standard base64 with '=' padding (RFC 4648 §4)"
HEADER_NAME_MESSAGE = "is not a valid header name (RFC 9110 token)"
HEADER_VALUE_MESSAGE = "must not contain CR, LF or NUL"


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def problems(raw: bytes) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(raw, max_body_bytes=LIMIT)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"
    return [(d.pointer, d.message) for d in caught.value.details]


def with_fields(**fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"method": "GET", "path": "/"}
    document.update(fields)
    return document


# --- accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            {"method": "GET", "path": "/health"},
            InvokeEnvelope(method="GET", path="/health", body=b"", headers=()),
            id="minimal",
        ),
        pytest.param(
            {"method": "OPTIONS", "path": "/"},
            InvokeEnvelope(method="OPTIONS", path="/", body=b""),
            id="root-path",
        ),
        pytest.param(
            {
                "method": "POST",
                "path": "/predict?stream=true&x=/a//b",
                "body_base64": "eyJhIjoxfQ==",
            },
            InvokeEnvelope(method="POST", path="/predict?stream=true&x=/a//b", body=b'{"a":1}'),
            id="query-string-kept-raw",
        ),
        pytest.param(
            with_fields(body_base64=""),
            InvokeEnvelope(method="GET", path="/", body=b""),
            id="empty-body",
        ),
        pytest.param(
            with_fields(body_base64="QQ=="),
            InvokeEnvelope(method="GET", path="/", body=b"A"),
            id="two-padding-characters",
        ),
        pytest.param(
            with_fields(body_base64="QUI="),
            InvokeEnvelope(method="GET", path="/", body=b"AB"),
            id="one-padding-character",
        ),
        pytest.param(
            with_fields(body_base64="+/+/"),
            InvokeEnvelope(method="GET", path="/", body=b"\xfb\xff\xbf"),
            id="standard-alphabet-plus-slash",
        ),
        pytest.param(
            with_fields(path="/" + "a" * 2047),
            InvokeEnvelope(method="GET", path="/" + "a" * 2047, body=b""),
            id="path-2048-characters",
        ),
        pytest.param(
            with_fields(
                headers={
                    "Content-Type": "application/json",
                    "Accept": ["text/plain", "application/json"],
                    "X-Empty": "",
                    "Authorization": "Bearer container-token",
                    "!#$%&'*+-.^_`|~09azAZ": "tchar",
                }
            ),
            InvokeEnvelope(
                method="GET",
                path="/",
                body=b"",
                headers=(
                    ("Content-Type", "application/json"),
                    ("Accept", "text/plain"),
                    ("Accept", "application/json"),
                    ("X-Empty", ""),
                    ("Authorization", "Bearer container-token"),
                    ("!#$%&'*+-.^_`|~09azAZ", "tchar"),
                ),
            ),
            id="headers-in-order-arrays-expanded",
        ),
        pytest.param(
            with_fields(headers={"X-Tab": "a\tb", "X-Latin": "caf\u00e9"}),
            InvokeEnvelope(
                method="GET", path="/", body=b"", headers=(("X-Tab", "a\tb"), ("X-Latin", "café"))
            ),
            id="tab-and-non-ascii-values-allowed",
        ),
    ],
)
def test_valid_envelope_is_accepted(document: dict[str, Any], expected: InvokeEnvelope) -> None:
    assert parse_envelope(encode(document), max_body_bytes=LIMIT) == expected


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def test_every_listed_method_is_accepted(method: str) -> None:
    assert parse_envelope(encode(with_fields(method=method)), max_body_bytes=LIMIT).method == method


def test_binary_body_survives_byte_exact() -> None:
    body = bytes(range(256)) * 3
    raw = encode(with_fields(method="POST", body_base64=base64.b64encode(body).decode()))
    assert parse_envelope(raw, max_body_bytes=LIMIT).body == body


def test_body_of_exactly_the_limit_is_accepted() -> None:
    raw = encode(with_fields(body_base64=base64.b64encode(b"x" * 10).decode()))
    assert parse_envelope(raw, max_body_bytes=10).body == b"x" * 10


@pytest.mark.parametrize(
    "body",
    [pytest.param(b"x" * 11, id="no-padding"), pytest.param(b"x" * 12, id="padding")],
)
def test_body_over_the_limit_is_payload_too_large(body: bytes) -> None:
    raw = encode(with_fields(body_base64=base64.b64encode(body).decode()))
    with pytest.raises(PayloadTooLargeError) as caught:
        parse_envelope(raw, max_body_bytes=len(body) - 1)
    assert caught.value.status == 413


# --- refused, one rule at a time -------------------------------------------------------------

METHODS = "must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
ALLOWED = "is not an allowed field (method, path, body_base64, headers)"
SINGLE_SLASH = "must begin with '/' and not with '//'"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param({"path": "/"}, [("/method", "is required")], id="method-missing"),
        pytest.param(with_fields(method="get"), [("/method", METHODS)], id="method-lower-case"),
        pytest.param(with_fields(method="TRACE"), [("/method", METHODS)], id="method-trace"),
        pytest.param(with_fields(method="CONNECT"), [("/method", METHODS)], id="method-connect"),
        pytest.param(with_fields(method=""), [("/method", METHODS)], id="method-empty"),
        pytest.param(with_fields(method=1), [("/method", "must be a string")], id="method-number"),
        pytest.param({"method": "GET"}, [("/path", "is required")], id="path-missing"),
        pytest.param(
            with_fields(path=["/"]), [("/path", "must be a string")], id="path-not-string"
        ),
        pytest.param(with_fields(path=None), [("/path", "must be a string")], id="path-null"),
        pytest.param(
            with_fields(path="//evil.example/x"), [("/path", SINGLE_SLASH)], id="path-double-slash"
        ),
        pytest.param(with_fields(path="x"), [("/path", SINGLE_SLASH)], id="path-no-leading-slash"),
        pytest.param(with_fields(path=""), [("/path", SINGLE_SLASH)], id="path-empty"),
        pytest.param(
            with_fields(path="https://evil.example/"),
            [("/path", SINGLE_SLASH)],
            id="path-absolute-url",
        ),
        pytest.param(
            with_fields(path="/" + "a" * 2048),
            [("/path", "must be at most 2048 characters long")],
            id="path-2049-characters",
        ),
        pytest.param(
            with_fields(body_base64="not base64!"),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-not-base64",
        ),
        pytest.param(
            with_fields(body_base64="QQ"),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-missing-padding",
        ),
        pytest.param(
            with_fields(body_base64="QQ="),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-short-padding",
        ),
        pytest.param(
            with_fields(body_base64="-_-_"),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-url-safe-alphabet",
        ),
        pytest.param(
            with_fields(body_base64="QUJD RA=="),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-inner-space",
        ),
        pytest.param(
            with_fields(body_base64="QUJD\nRA=="),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-inner-newline",
        ),
        pytest.param(
            with_fields(body_base64="QUJD\n"),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-trailing-newline",
        ),
        pytest.param(
            with_fields(body_base64="QQ==QQ=="),
            [("/body_base64", BASE64_MESSAGE)],
            id="body-inner-padding",
        ),
        pytest.param(
            with_fields(body_base64=[1]),
            [("/body_base64", "must be a string")],
            id="body-not-string",
        ),
        pytest.param(
            with_fields(headers=[]), [("/headers", "must be an object")], id="headers-array"
        ),
        pytest.param(
            with_fields(headers={"X Bad": "v"}),
            [("/headers/X Bad", HEADER_NAME_MESSAGE)],
            id="name-space",
        ),
        pytest.param(
            with_fields(headers={"X-A:": "v"}),
            [("/headers/X-A:", HEADER_NAME_MESSAGE)],
            id="name-colon",
        ),
        pytest.param(
            with_fields(headers={"": "v"}), [("/headers/", HEADER_NAME_MESSAGE)], id="name-empty"
        ),
        pytest.param(
            with_fields(headers={"X-Caf\u00e9": "v"}),
            [("/headers/X-Café", HEADER_NAME_MESSAGE)],
            id="name-non-ascii",
        ),
        pytest.param(
            with_fields(headers={"X-A\n": "v"}),
            [("/headers/X-A\n", HEADER_NAME_MESSAGE)],
            id="name-trailing-newline",
        ),
        pytest.param(
            with_fields(headers={"X-A": "v\r"}),
            [("/headers/X-A", HEADER_VALUE_MESSAGE)],
            id="value-cr",
        ),
        pytest.param(
            with_fields(headers={"X-A": "v\nX-Injected: 1"}),
            [("/headers/X-A", HEADER_VALUE_MESSAGE)],
            id="value-lf",
        ),
        pytest.param(
            with_fields(headers={"X-A": "v\n"}),
            [("/headers/X-A", HEADER_VALUE_MESSAGE)],
            id="value-trailing-lf",
        ),
        pytest.param(
            with_fields(headers={"X-A": "v\u0000"}),
            [("/headers/X-A", HEADER_VALUE_MESSAGE)],
            id="value-nul",
        ),
        pytest.param(
            with_fields(headers={"X-A": ["ok", "v\r\n"]}),
            [("/headers/X-A/1", HEADER_VALUE_MESSAGE)],
            id="array-value-crlf",
        ),
        pytest.param(
            with_fields(headers={"X-A": 5}),
            [("/headers/X-A", "must be a string or an array of strings")],
            id="value-number",
        ),
        pytest.param(
            with_fields(headers={"X-A": None}),
            [("/headers/X-A", "must be a string or an array of strings")],
            id="value-null",
        ),
        pytest.param(
            with_fields(headers={"X-A": {"b": "c"}}),
            [("/headers/X-A", "must be a string or an array of strings")],
            id="value-object",
        ),
        pytest.param(
            with_fields(headers={"X-A": ["ok", 1, True]}),
            [("/headers/X-A/1", "must be a string"), ("/headers/X-A/2", "must be a string")],
            id="array-of-non-strings",
        ),
        pytest.param(
            with_fields(headers={"X-A": []}),
            [("/headers/X-A", "must not be an empty array")],
            id="empty-array",
        ),
        pytest.param(with_fields(extra=1), [("/extra", ALLOWED)], id="extra-field"),
        pytest.param(
            with_fields(Method="GET"), [("/Method", ALLOWED)], id="field-names-are-case-sensitive"
        ),
        pytest.param(["GET", "/"], [("", "must be an object")], id="array-document"),
        pytest.param("GET /", [("", "must be an object")], id="string-document"),
        pytest.param(None, [("", "must be an object")], id="null-document"),
    ],
)
def test_schema_violation_is_reported_at_its_pointer(
    document: Any, expected: list[tuple[str, str]]
) -> None:
    assert problems(encode(document)) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"", "The body is not valid JSON.", id="empty"),
        pytest.param(b"{", "The body is not valid JSON.", id="truncated"),
        pytest.param(b'{"method": "GET",}', "The body is not valid JSON.", id="trailing-comma"),
        pytest.param(b'{"method": NaN}', "The body is not valid JSON.", id="nan"),
        pytest.param(b'{"method": -Infinity}', "The body is not valid JSON.", id="infinity"),
        pytest.param(b"1" * 5000, "The body is not valid JSON.", id="integer-too-long"),
        pytest.param(
            b'{"method": "\xff"}', "The body is not UTF-8 (RFC 8259 §8.1).", id="not-utf8"
        ),
        pytest.param(
            '{"method": "GET", "path": "/"}'.encode("utf-16"),
            "The body is not UTF-8 (RFC 8259 §8.1).",
            id="utf16",
        ),
    ],
)
def test_undecodable_body_is_reported_at_the_root(raw: bytes, message: str) -> None:
    assert problems(raw) == [("", message)]


# --- refused, several at once ----------------------------------------------------------------


def test_every_problem_is_reported_together_sorted_by_pointer() -> None:
    document = {
        "method": "get",
        "path": "//host",
        "body_base64": "-_==",
        "headers": {"X Bad": "ok", "X-Good": "a\rb", "a/b~c": "v"},
        "extra": True,
    }
    assert problems(encode(document)) == [
        ("/body_base64", BASE64_MESSAGE),
        ("/extra", ALLOWED),
        ("/headers/X Bad", HEADER_NAME_MESSAGE),
        ("/headers/X-Good", HEADER_VALUE_MESSAGE),
        ("/headers/a~1b~0c", HEADER_NAME_MESSAGE),
        ("/method", METHODS),
        ("/path", SINGLE_SLASH),
    ]


def test_badly_padded_body_is_reported_with_the_other_problems() -> None:
    assert problems(encode(with_fields(method="get", body_base64="QUJDRA="))) == [
        ("/body_base64", BASE64_MESSAGE),
        ("/method", METHODS),
    ]


def test_oversized_body_is_refused_before_the_envelope_is_validated() -> None:
    raw = encode(with_fields(method="get", body_base64=base64.b64encode(b"x" * 100).decode()))
    with pytest.raises(PayloadTooLargeError):
        parse_envelope(raw, max_body_bytes=10)


def test_both_missing_fields_are_reported() -> None:
    assert problems(b"{}") == [("/method", "is required"), ("/path", "is required")]


@pytest.mark.parametrize(
    ("name", "pointer"),
    [
        pytest.param("a/b", "/a~1b", id="slash"),
        pytest.param("a~b", "/a~0b", id="tilde"),
        pytest.param("~1", "/~01", id="tilde-then-one"),
        pytest.param("/~", "/~1~0", id="slash-then-tilde"),
        pytest.param("", "/", id="empty"),
    ],
)
def test_pointer_escapes_tilde_and_slash_per_rfc_6901(name: str, pointer: str) -> None:
    assert problems(encode(with_fields(**{name: 1}))) == [(pointer, ALLOWED)]


def test_header_name_pointer_is_escaped() -> None:
    assert problems(encode(with_fields(headers={"a/b c": "v"}))) == [
        ("/headers/a~1b c", HEADER_NAME_MESSAGE)
    ]


def test_repeated_member_names_are_refused_at_their_pointers() -> None:
    raw = b'{"method": "GET", "path": "/a", "path": "//b", "headers": {"X-A": "1", "X-A": "2"}}'
    assert problems(raw) == [
        ("/headers/X-A", "appears more than once"),
        ("/path", "appears more than once"),
        ("/path", SINGLE_SLASH),
    ]


def test_unpaired_surrogate_is_refused() -> None:
    raw = b'{"method": "GET", "path": "/\\ud800", "headers": {"X-A": ["\\udfff"]}}'
    assert problems(raw) == [
        ("/headers/X-A/0", "contains an unpaired UTF-16 surrogate"),
        ("/path", "contains an unpaired UTF-16 surrogate"),
    ]


def test_paired_surrogate_escape_is_one_character() -> None:
    raw = b'{"method": "GET", "path": "/\\ud83d\\ude00"}'
    assert parse_envelope(raw, max_body_bytes=LIMIT).path == "/\U0001f600"


def test_messages_never_quote_the_callers_values() -> None:
    secret = "s3cr3t-value-" + "z" * 5000
    document = {
        "method": secret,
        "path": secret,
        "body_base64": secret,
        "headers": {"X": secret + "\n"},
    }
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(encode(document), max_body_bytes=LIMIT)
    assert "s3cr3t" not in json.dumps([d.as_dict() for d in caught.value.details])


def test_long_member_name_is_cut_in_the_pointer() -> None:
    name = "X " + "n" * 10_000
    [(pointer, _)] = problems(encode(with_fields(headers={name: "v"})))
    assert pointer == "/headers/" + name[:MAX_POINTER_TOKEN_CHARS] + "…"


def test_problem_list_is_capped() -> None:
    headers = {f"X {i:04d}": "v" for i in range(MAX_DETAILS + 7)}
    found = problems(encode(with_fields(headers=headers)))
    assert len(found) == MAX_DETAILS + 1
    assert found[:MAX_DETAILS] == [
        (f"/headers/X {i:04d}", HEADER_NAME_MESSAGE) for i in range(MAX_DETAILS)
    ]
    assert found[-1] == ("", "more problems were found and not listed")


def test_exactly_max_details_problems_are_all_listed() -> None:
    headers = {f"X {i:04d}": "v" for i in range(MAX_DETAILS)}
    found = problems(encode(with_fields(headers=headers)))
    assert found == [(f"/headers/X {i:04d}", HEADER_NAME_MESSAGE) for i in range(MAX_DETAILS)]


# --- the caps, before any validation ---------------------------------------------------------


def test_envelope_headers_over_the_field_count_are_refused_before_validation() -> None:
    # Every name is invalid too: the cap answers first, without listing them.
    raw = encode(with_fields(headers={f"X {i}": "v" for i in range(4)}))
    with pytest.raises(HeadersTooLargeError) as caught:
        parse_envelope(raw, max_body_bytes=LIMIT, max_header_count=3)
    assert caught.value.status == 431


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-A": ["1", "2", "3", "4"]}, id="array-items-count-one-each"),
        pytest.param({"X-A": [1, None, [], {}]}, id="items-of-any-type-count"),
        pytest.param({"A": "1", "B": ["2", "3"], "C": 4}, id="members-and-items"),
    ],
)
def test_every_field_an_envelope_header_would_make_counts(headers: dict[str, Any]) -> None:
    with pytest.raises(HeadersTooLargeError):
        parse_envelope(
            encode(with_fields(headers=headers)), max_body_bytes=LIMIT, max_header_count=3
        )


def test_envelope_headers_over_the_byte_cap_are_refused_before_validation() -> None:
    # "Name: value" plus CRLF: 4 + 2 + 5 + 2 = 13 bytes, as check_header_limits counts them.
    raw = encode(with_fields(headers={"Name": "value\n"}))
    with pytest.raises(HeadersTooLargeError):
        parse_envelope(raw, max_body_bytes=LIMIT, max_header_bytes=13)
    assert problems(raw) == [("/headers/Name", HEADER_VALUE_MESSAGE)]


def test_envelope_headers_at_the_caps_are_accepted() -> None:
    raw = encode(with_fields(headers={"Name": ["value", "value"]}))
    envelope = parse_envelope(raw, max_body_bytes=LIMIT, max_header_count=2, max_header_bytes=26)
    assert envelope.headers == (("Name", "value"), ("Name", "value"))


TOO_MANY = "The body has more JSON members and array items than an invoke envelope can hold."


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(with_fields(extra=[0] * 100), id="long-array"),
        pytest.param(with_fields(**{f"x{i}": 0 for i in range(100)}), id="many-members"),
        pytest.param(with_fields(headers={"X": [[[[[[[[[[["v"]]]]]]]]]]] * 8}), id="nested-arrays"),
        pytest.param([{}] * 100, id="top-level-array"),
        pytest.param(json.loads("[" * 90 + "]" * 90), id="deep-nesting"),
    ],
)
def test_more_members_and_items_than_an_envelope_has_are_refused_unparsed(
    document: Any,
) -> None:
    # At most 4 x 3 + 64 = 76 separators outside strings with three header fields.
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(encode(document), max_body_bytes=LIMIT, max_header_count=3)
    assert [(d.pointer, d.message) for d in caught.value.details] == [("", TOO_MANY)]


def test_nesting_deeper_than_the_parser_goes_is_not_json() -> None:
    # Reachable only with caps that allow thousands of separators.
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(b"[" * 5_000 + b"]" * 5_000, max_body_bytes=LIMIT, max_header_count=2_000)
    assert [(d.pointer, d.message) for d in caught.value.details] == [
        ("", "The body is not valid JSON.")
    ]


def test_separators_inside_strings_are_not_members() -> None:
    # 90 commas and brackets in a header value, and a path made of them: more than 76 in all.
    document = with_fields(path="/" + ",[{" * 30, headers={"X": ",[{" * 30})
    envelope = parse_envelope(encode(document), max_body_bytes=LIMIT, max_header_count=3)
    assert envelope.headers == (("X", ",[{" * 30),)


def test_envelope_at_the_header_caps_is_parsed_whatever_its_strings_hold() -> None:
    count, size = DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_HEADER_BYTES
    value = ",[{" * ((size // count - len("X: ") - len("\r\n")) // 3)
    document = {
        "method": "POST",
        "path": "/" + "{" * 2047,
        "body_base64": "",
        "headers": {f"X{i:02d}": [value] for i in range(count)},
    }
    envelope = parse_envelope(encode(document), max_body_bytes=LIMIT)
    assert len(envelope.headers) == count


def test_moderately_too_many_header_fields_are_still_a_431() -> None:
    raw = encode(with_fields(headers={f"X-{i}": "v" for i in range(DEFAULT_MAX_HEADER_COUNT * 2)}))
    with pytest.raises(HeadersTooLargeError):
        parse_envelope(raw, max_body_bytes=LIMIT)


JUNK = b"[]," * 2000  # 4000 separators: more than any envelope without headers can hold


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"method": "POST", "path": "/", "body_base64": "' + JUNK + b'"}', id="plain"
        ),
        pytest.param(
            b'{"body_base64" :\n "' + JUNK + b'", "method": "POST", "path": "/"}',
            id="whitespace-around-the-colon",
        ),
    ],
)
def test_separators_inside_the_body_string_are_not_counted(raw: bytes) -> None:
    # The body is one string whatever it holds: the schema refuses it, the count skips it.
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(raw, max_body_bytes=LIMIT, max_header_count=0, max_header_bytes=0)
    assert [(d.pointer, d.message) for d in caught.value.details] == [
        ("/body_base64", BASE64_MESSAGE)
    ]


def test_body_with_escaped_solidus_is_accepted() -> None:
    # RFC 8259 §7 lets "/" be written "\/"; some encoders always do.
    raw = b'{"method": "POST", "path": "/", "body_base64": "' + b"QU\\/D" * 500 + b'"}'
    envelope = parse_envelope(raw, max_body_bytes=LIMIT, max_header_count=0, max_header_bytes=0)
    assert envelope.body == base64.b64decode("QU/D" * 500)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"x": "\\"body_base64\\": \\"", "y": ' + JUNK + b"1}", id="name-in-a-string"
        ),
        pytest.param(b'["body_base64", "' + JUNK + b'"]', id="name-as-a-value"),
        pytest.param(b'["body_base64", ' + JUNK + b'"x"]', id="name-as-a-value-then-junk"),
        pytest.param(b'{"body_base64": 1, "x": ' + JUNK + b'"}', id="not-a-string"),
        pytest.param(b'{"body_base64": "\\"' + JUNK + b'"}', id="escape-in-the-body"),
        pytest.param(b'{"x": ' + JUNK + b'"body_base64": ""}', id="junk-before-the-body"),
        pytest.param(b'{"body_base64": "", "x": ' + JUNK + b"}", id="junk-after-the-body"),
    ],
)
def test_separators_outside_the_body_are_counted(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(raw, max_body_bytes=LIMIT, max_header_count=0, max_header_bytes=0)
    assert [(d.pointer, d.message) for d in caught.value.details] == [("", TOO_MANY)]


def test_separators_after_a_string_left_open_are_not_counted() -> None:
    # The parser fails inside the string: none of the 500 commas (more than the 464 of the
    # default caps) would become a member, and the body is refused as not JSON.
    raw = b'{"method": "GET", "path": "/' + b"," * 500
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(raw, max_body_bytes=LIMIT)
    assert [(d.pointer, d.message) for d in caught.value.details] == [
        ("", "The body is not valid JSON.")
    ]


def test_a_body_of_escaped_quotes_is_scanned_in_one_pass() -> None:
    # Every quote of '"\"\"\"…' opens a string that never closes; a scan that started again
    # from each of the two million quotes would read on to the end of the body from each,
    # holding the GIL throughout. One pass takes milliseconds: the bound is generous, and kept
    # by a fresh interpreter, so that a slow scan fails on the timeout instead of stalling the run.
    code = (
        "from invoke_middleware.envelope import parse_envelope\n"
        "from invoke_middleware.errors import InvalidRequestError\n"
        "raw = b'\"' + b'\\\\\"' * 2_000_000 + b',' * 500\n"
        "try:\n"
        "    parse_envelope(raw, max_body_bytes=len(raw))\n"
        "except InvalidRequestError as refusal:\n"
        "    print(len(raw), refusal.details[0].message)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "4000501 The body is not valid JSON."


# --- the compiled validator ------------------------------------------------------------------


def test_request_validator_is_compiled_once() -> None:
    validator = envelope_module.REQUEST_VALIDATOR
    parse_envelope(encode(with_fields()), max_body_bytes=LIMIT)
    problems(encode(with_fields(method="x")))
    assert envelope_module.REQUEST_VALIDATOR is validator


def test_request_validator_uses_the_bundled_schema() -> None:
    assert envelope_module.REQUEST_VALIDATOR.schema == load_schema("invoke-request.schema.json")


@pytest.mark.parametrize(
    ("document", "loaded"),
    [
        pytest.param({"method": "GET", "path": "/", "headers": {"A": ["1"]}}, False, id="valid"),
        pytest.param({"method": "get", "path": "/"}, True, id="refused"),
    ],
)
def test_jsonschema_is_imported_only_to_explain_a_refusal(
    document: dict[str, Any], loaded: bool
) -> None:
    # A fresh interpreter: this one has imported jsonschema for other tests.
    code = (
        "import sys\n"
        "from invoke_middleware.envelope import parse_envelope\n"
        "try:\n"
        f"    parse_envelope({encode(document)!r}, max_body_bytes=1024)\n"
        "except Exception:\n"
        "    pass\n"
        "print('jsonschema' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == str(loaded)


# --- the envelope value ----------------------------------------------------------------------


def test_envelope_repr_shows_header_names_but_not_values() -> None:
    envelope = InvokeEnvelope(
        method="GET", path="/", body=b"abc", headers=(("Authorization", "Bearer hunter2"),)
    )
    assert "hunter2" not in repr(envelope)
    assert "Authorization" in repr(envelope)
    assert "<3 bytes>" in repr(envelope)


def test_envelope_repr_leaves_out_the_query_string() -> None:
    envelope = InvokeEnvelope(method="GET", path="/items?token=T0SECRET", body=b"")
    assert "T0SECRET" not in repr(envelope)
    assert "path='/items?…'" in repr(envelope)
    assert "path='/items'" in repr(InvokeEnvelope(method="GET", path="/items", body=b""))


def test_envelope_is_frozen_and_keyword_only() -> None:
    envelope = InvokeEnvelope(method="GET", path="/", body=b"")
    with pytest.raises(AttributeError):
        envelope.method = "POST"  # type: ignore[misc]
    with pytest.raises(TypeError):
        InvokeEnvelope("GET", "/", b"")  # type: ignore[call-arg]


# --- the response body -----------------------------------------------------------------------


def test_response_is_compact_json_in_the_documented_shape() -> None:
    raw = encode_response(
        201,
        {"Content-Type": "application/json", "Set-Cookie": ["a=1", "b=2"]},
        b'{"ok":true}',
    )
    assert raw == (
        b'{"status_code":201,"headers":{"content-type":"application/json",'
        b'"set-cookie":["a=1","b=2"]},"body_base64":"eyJvayI6dHJ1ZX0="}'
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, {}, id="none"),
        pytest.param({"X-A": "1"}, {"x-a": "1"}, id="names-lower-cased"),
        pytest.param({"X-A": ["1"]}, {"x-a": "1"}, id="single-value-array-is-a-string"),
        pytest.param({"X-A": []}, {}, id="no-values-left-out"),
        pytest.param(
            {"X-A": "1", "x-a": ["2", "3"]}, {"x-a": ["1", "2", "3"]}, id="case-variants-merged"
        ),
        pytest.param(
            {"Set-Cookie": ["a=1, b", "c=2"]}, {"set-cookie": ["a=1, b", "c=2"]}, id="never-folded"
        ),
        pytest.param({"X-A": ("1", "2")}, {"x-a": ["1", "2"]}, id="tuple-values"),
    ],
)
def test_response_headers_are_normalised(headers: dict[str, Any], expected: dict[str, Any]) -> None:
    assert json.loads(encode_response(200, headers, b""))["headers"] == expected


def test_response_body_round_trips_every_byte() -> None:
    body = bytes(range(256))
    payload = json.loads(encode_response(200, {}, body))
    assert base64.b64decode(payload["body_base64"], validate=True) == body


def test_empty_response_body_is_an_empty_string() -> None:
    assert json.loads(encode_response(204, {}, b""))["body_base64"] == ""


def test_non_ascii_header_value_is_escaped_json() -> None:
    raw = encode_response(200, {"X-Name": "caf\u00e9"}, b"")
    assert raw.isascii()
    assert json.loads(raw)["headers"] == {"x-name": "café"}


@pytest.mark.parametrize("status", [pytest.param(s, id=str(s)) for s in (100, 200, 599)])
def test_response_status_in_range_is_kept(status: int) -> None:
    assert json.loads(encode_response(status, {}, b""))["status_code"] == status


@pytest.mark.parametrize(
    "status",
    [pytest.param(99, id="99"), pytest.param(600, id="600"), pytest.param(True, id="bool")],
)
def test_response_status_out_of_range_is_an_upstream_error(status: int) -> None:
    with pytest.raises(UpstreamError):
        encode_response(status, {}, b"")


def test_request_that_round_trips_through_the_envelope_is_unchanged() -> None:
    document = {
        "method": "PATCH",
        "path": "/a/b?c=d",
        "body_base64": base64.b64encode(b"\x00\xff payload").decode(),
        "headers": {"X-One": "1", "X-Many": ["a", "b"]},
    }
    envelope = parse_envelope(encode(document), max_body_bytes=LIMIT)
    rebuilt: dict[str, Any] = {
        "method": envelope.method,
        "path": envelope.path,
        "body_base64": base64.b64encode(envelope.body).decode(),
        "headers": {},
    }
    for name, value in envelope.headers:
        rebuilt["headers"].setdefault(name, []).append(value)
    rebuilt["headers"] = {k: v[0] if len(v) == 1 else v for k, v in rebuilt["headers"].items()}
    assert rebuilt == document


# --- bundled documents -----------------------------------------------------------------------


def test_load_schema_returns_a_fresh_copy() -> None:
    first = load_schema("openapi.json")
    first["openapi"] = "changed"
    assert load_schema("openapi.json")["openapi"] == "3.1.0"


def test_read_schema_bytes_is_the_json_file() -> None:
    assert json.loads(read_schema_bytes("error.schema.json"))["title"] == "Gateway error"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("missing.json", id="unknown"),
        pytest.param("../pyproject.toml", id="parent"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("", id="empty"),
        pytest.param("__init__.py/x", id="below-a-file"),
    ],
)
def test_unknown_document_name_is_not_found(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        load_schema(name)


def test_error_detail_is_the_shared_type() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_envelope(b"{}", max_body_bytes=LIMIT)
    assert all(isinstance(d, ErrorDetail) for d in caught.value.details)
