"""Invoke envelopes built to make a refusal expensive, as plain data.

Each entry of :data:`HOSTILE_ENVELOPES` is ``(id, build)``: ``build(size)`` returns the raw
body of one ``POST /r/invoke/{slug}`` request of about ``size`` bytes, invalid in a way that
used to cost far more than its size (a jsonschema error per item, each holding its instance,
schema and context; a Python object per JSON value; a scan of the rest of the body from each
quote). ``tests/test_envelope_refusals.py``
holds every one of them to a memory bound through the real middleware;
``bench/bench_refusals.py`` times them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: The valid part every envelope starts from.
_BASE: dict[str, Any] = {"method": "GET", "path": "/"}


def _repeat(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    count = max(1, (size - len(prefix) - len(suffix)) // (len(item) + 1))
    return prefix + b",".join([item] * count) + suffix


def _numbered(prefix: bytes, item: str, suffix: bytes, size: int) -> bytes:
    """``item`` formatted with 0, 1, 2, ... (distinct member names), up to ``size`` bytes."""
    parts: list[bytes] = []
    total = len(prefix) + len(suffix)
    index = 0
    while total < size:
        part = item.format(index).encode()
        parts.append(part)
        total += len(part) + 1
        index += 1
    return prefix + b",".join(parts) + suffix


def _headers(item: bytes, size: int) -> bytes:
    """One header whose value is an array of ``item``, repeated."""
    return _repeat(b'{"method":"GET","path":"/","headers":{"X":[', item, b"]}}", size)


def _header_members(item: str, size: int) -> bytes:
    """Many header members, ``item`` formatted with a distinct number each."""
    return _numbered(b'{"method":"GET","path":"/","headers":{', item, b"}}", size)


def _deep(size: int) -> bytes:
    # Chains as deep as the parser goes, side by side in one header value.
    chain = b"[" * 900 + b"]" * 900
    return _headers(chain, size)


def _wide_string(size: int) -> bytes:
    # One character outside Latin-1 makes CPython store the whole string 4 bytes a character.
    text = "\U0001f600" + "a" * max(0, size - 64)
    return json.dumps({**_BASE, "x": text}, ensure_ascii=False).encode()


def _escaped_wide_string(size: int) -> bytes:
    # The same, in pure ASCII: the escape makes the parsed string 4 bytes a character.
    return json.dumps({**_BASE, "x": "\U0001f600" + "a" * max(0, size - 64)}).encode()


def _string_left_open(size: int) -> bytes:
    # Each quote opens a string that never closes. 500 commas: more separators than an
    # envelope within the default header caps has (4 x 100 + 64), few enough to be in strings,
    # so they are counted again skipping strings.
    return b'"' + b'\\"' * max(1, (size - 501) // 2) + b"," * 500


HOSTILE_ENVELOPES: list[tuple[str, Callable[[int], bytes]]] = [
    ("long-array-of-invalid-items", lambda size: _headers(b"1", size)),
    ("long-array-of-invalid-strings", lambda size: _headers(b'"a\\n"', size)),
    ("long-array-of-empty-arrays", lambda size: _headers(b"[]", size)),
    ("long-array-of-empty-objects", lambda size: _headers(b"{}", size)),
    ("long-array-of-small-strings", lambda size: _headers(b'"ab"', size)),
    ("long-array-of-lone-surrogates", lambda size: _headers(b'"\\ud800"', size)),
    (
        "many-invalid-header-names",
        lambda size: _header_members('"x {}":"v"', size),
    ),
    (
        "many-invalid-header-values",
        lambda size: _header_members('"x{}":"\\n"', size),
    ),
    (
        "many-mistyped-header-values",
        lambda size: _header_members('"x{}":{{}}', size),
    ),
    ("deeply-nested-header-values", _deep),
    (
        "many-unknown-fields",
        lambda size: _numbered(b'{"method":"GET","path":"/",', '"f{}":0', b"}", size),
    ),
    (
        "many-nested-unknown-fields",
        lambda size: _numbered(b'{"method":"GET","path":"/",', '"f{}":{{"a":{{}}}}', b"}", size),
    ),
    (
        "many-duplicate-fields",
        lambda size: _repeat(b'{"method":"GET","path":"/",', b'"method":"GET"', b"}", size),
    ),
    ("mistyped-method", lambda size: _repeat(b'{"path":"/","method":[', b"[]", b"]}", size)),
    ("top-level-array", lambda size: _repeat(b"[", b"{}", b"]", size)),
    ("wide-string", _wide_string),
    ("escaped-wide-string", _escaped_wide_string),
    ("string-left-open-after-escaped-quotes", _string_left_open),
    (
        "invalid-base64-body",
        lambda size: json.dumps({**_BASE, "body_base64": "!" * max(0, size - 64)}).encode(),
    ),
]
