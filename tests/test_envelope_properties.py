"""The envelope's fast checks never accept what the full ones refuse.

``parse_envelope`` skips jsonschema when the hand-written check says a document conforms, and
skips the walk for repeated names, unpaired surrogates and unsendable header values when the
text says there can be none; this holds both to the full checks over generated documents and
texts, near-misses included. The count of members and items made before parsing is held to a
reading of the text one byte at a time, and to the documents the texts were made from."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from invoke_middleware.envelope import (
    REQUEST_VALIDATOR,
    _conforms,
    _count_outside_strings,
    _decode_json,
    _first_problems,
    _plainly_valid,
    check_json_structure,
)
from invoke_middleware.errors import InvalidRequestError

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)
TEXT = st.one_of(
    st.sampled_from(["", "/", "//", "/a", "/a\n", "a", "GET", "get", "POST", "TRACE", "/%2e"]),
    st.text(max_size=8),
    st.text(alphabet="/ab\n\r\x00=+%.", max_size=10),
)
BASE64 = st.one_of(
    st.sampled_from(["", "YQ==", "YWI=", "YWJj", "YQ=", "Y===", "YQ==\n", "YQ==YQ==", "-_-_"]),
    st.text(alphabet="AZaz09+/=-_ \n", max_size=12),
)
NAMES = st.one_of(
    st.sampled_from(["X-A", "Content-Type", "", "X A", "X:A", "X\n", "é", "a~b"]),
    st.text(max_size=6),
)
VALUES = st.one_of(
    st.sampled_from(["v", "a\r\nb", "a\x00", "a\n", "caf\u00e9"]),
    st.text(max_size=6),
    st.lists(
        st.one_of(st.text(max_size=4), st.sampled_from(["a\r", "x"]), JSON_SCALARS), max_size=3
    ),
    JSON_SCALARS,
)
HEADERS = st.one_of(
    st.dictionaries(NAMES, VALUES, max_size=4),
    st.dictionaries(NAMES, st.just("v"), min_size=1, max_size=2),
    st.dictionaries(st.just("X-A"), VALUES, min_size=1),
    JSON_SCALARS,
    st.lists(TEXT),
)


VALID = {
    "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    "path": st.sampled_from(["/", "/a", "/a/b?x=1", "/%2e"]),
    "body_base64": st.sampled_from(["", "YWJj", "YQ=="]),
    "headers": st.dictionaries(
        st.sampled_from(["X-A", "Accept"]),
        st.one_of(st.just("v"), st.lists(st.just("v"), min_size=1, max_size=2)),
        max_size=2,
    ),
}
NEAR_MISSES = {
    "method": st.one_of(TEXT, JSON_SCALARS),
    "path": st.one_of(TEXT, JSON_SCALARS, st.sampled_from(["//", "//x", "x", "/" + "a" * 2048])),
    "body_base64": st.one_of(BASE64, JSON_SCALARS),
    "headers": st.one_of(
        HEADERS, st.sampled_from([{"X-A": []}, {"X-A": [1]}, {"": "v"}, {"X A": "v"}])
    ),
}


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A valid envelope with at most one field replaced, removed or added: the cases where a
    check that is too lenient would show."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=2)))
    document: dict[str, Any] = {"method": draw(VALID["method"]), "path": draw(VALID["path"])}
    for optional in ("body_base64", "headers"):
        if draw(st.booleans()):
            document[optional] = draw(VALID[optional])
    change = draw(st.sampled_from(["none", "replace", "remove", "add"]))
    field = draw(st.sampled_from(sorted(VALID)))
    if change == "replace":
        document[field] = draw(NEAR_MISSES[field])
    elif change == "remove":
        document.pop(field, None)
    elif change == "add":
        document[draw(st.text(max_size=6))] = draw(JSON_SCALARS)
    return document


@settings(max_examples=4000, deadline=None)
@given(documents())
def test_a_document_the_fast_check_accepts_is_valid_for_the_schema(document: Any) -> None:
    # Never more lenient. It may be stricter (a base64 string ending in a newline, which the
    # schema's "$" lets through and strict decoding refuses anyway): jsonschema decides then.
    if _conforms(document):
        assert REQUEST_VALIDATOR.is_valid(document), document


def test_the_common_envelope_takes_the_fast_path() -> None:
    assert _conforms(
        {
            "method": "POST",
            "path": "/predict?stream=true",
            "body_base64": "eyJ4IjoxfQ==",
            "headers": {"Content-Type": "application/json", "Accept": ["a/b", "c/d"]},
        }
    )


#: Edits of an envelope's JSON text that make it wrong in ways the schema cannot see.
TWISTS = {
    "none": lambda text: text,
    "repeated field": lambda text: text.replace("{", '{"method": "GET", ', 1),
    "repeated header": lambda text: text.replace(
        '"headers": {', '"headers": {"X-B": "v", "X-B": "v", ', 1
    ).replace(", }", "}"),
    "unpaired surrogate": lambda text: text.replace('"path": "/', '"path": "/\\ud800', 1),
    "escaped ascii": lambda text: text.replace('"path": "/', '"path": "/\\u0061', 1),
    "beyond latin-1": lambda text: text.replace('"X-A": "v"', '"X-A": "\u2603"', 1),
}


@settings(max_examples=3000, deadline=None)
@given(documents(), st.booleans(), st.sampled_from(sorted(TWISTS)))
def test_an_envelope_found_plainly_valid_has_no_problems(
    document: Any, ascii_only: bool, twist: str
) -> None:
    raw = TWISTS[twist](json.dumps(document, ensure_ascii=ascii_only)).encode()
    try:
        parsed = _decode_json(raw)
    except InvalidRequestError:
        assume(False)  # not JSON (an infinite float)
    if _plainly_valid(parsed, raw):
        assert _first_problems(parsed) == [], raw


def test_the_common_envelope_is_plainly_valid() -> None:
    raw = (
        b'{"method": "POST", "path": "/predict", "body_base64": "eyJ4IjoxfQ==",'
        b' "headers": {"Content-Type": "application/json", "Accept": ["a/b", "c/d"]}}'
    )
    assert _plainly_valid(_decode_json(raw), raw)


def test_what_the_text_cannot_rule_out_is_examined_whole() -> None:
    common = '{"method": "GET", "path": "/a", "headers": {"X-A": "v"}}'
    for twist in ("repeated field", "repeated header", "unpaired surrogate", "beyond latin-1"):
        raw = TWISTS[twist](common).encode()
        assert not _plainly_valid(_decode_json(raw), raw), twist
        assert _first_problems(_decode_json(raw)), twist


# --- the count of members and items ----------------------------------------------------------


def separators_outside_strings(raw: bytes) -> int:
    """The ``,``, ``[`` and ``{`` of ``raw`` outside strings, read one byte at a time: a quote
    opens a string and the next unescaped quote closes it, a backslash in a string escapes the
    byte after it, and a string left open runs to the end."""
    count, in_string, escaped = 0, False, False
    for byte in raw:
        if escaped:
            escaped = False
        elif in_string:
            in_string, escaped = byte != ord('"'), byte == ord("\\")
        elif byte == ord('"'):
            in_string = True
        elif byte in b",[{":
            count += 1
    return count


#: Texts made of what a string can hide: quotes, escaped quotes, backslashes, separators.
SCANNED_TEXTS = st.lists(
    st.sampled_from(
        [b'"', b"\\", b'\\"', b"\\\\", b",", b"[", b"{", b"}", b"]", b":", b"a", b"\n", b"\xc3\xa9"]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(SCANNED_TEXTS, st.data())
def test_the_count_reads_strings_one_byte_at_a_time_whatever_the_text(
    raw: bytes, data: st.DataObject
) -> None:
    # Whatever the text, valid or not: a string left open hides the rest of its segment.
    first = data.draw(st.integers(0, len(raw)))
    last = data.draw(st.integers(first, len(raw)))
    stop = data.draw(st.integers(1, len(raw) + 1))
    expected = separators_outside_strings(raw[:first]) + separators_outside_strings(raw[last:])
    assert _count_outside_strings(raw, [(0, first), (last, len(raw))], stop=stop) == min(
        expected, stop
    )


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(alphabet='"\\,[{}]: a\n\u00e9\U0001f600', max_size=6),
    ),
    lambda values: st.one_of(
        st.lists(values, max_size=4),
        st.dictionaries(st.text(alphabet='"\\,[{ a', max_size=4), values, max_size=4),
    ),
    max_leaves=24,
)


def members_and_items(value: Any) -> int:
    """The ``,``, ``[`` and ``{`` outside strings of any JSON text of ``value``: a bracket for
    each array and object, and a comma between two of its items or members."""
    if isinstance(value, dict):
        value = list(value.values())
    elif not isinstance(value, list):
        return 0
    return 1 + max(len(value) - 1, 0) + sum(members_and_items(item) for item in value)


@settings(max_examples=1500, deadline=None)
@given(JSON_VALUES, st.booleans(), st.sampled_from([None, 0, 2]))
def test_the_count_of_a_json_text_is_its_members_and_items(
    value: Any, ascii_only: bool, indent: int | None
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    count = members_and_items(value)
    assert _count_outside_strings(raw, [(0, len(raw))], stop=len(raw) + 1) == count
    # string_bytes as large as the text: refused or not, by the scan, never by bytes.count.
    check_json_structure(raw, limit=count, string_bytes=len(raw), what="a document")
    if count:
        with pytest.raises(InvalidRequestError):
            check_json_structure(raw, limit=count - 1, string_bytes=len(raw), what="a document")
