"""JSON the MCP endpoint parses and writes back, kept within what its encoder can write.

Python's parser takes nesting as deep as the interpreter's recursion limit allows from where
it runs; the encoder needs as many levels from where it runs, deeper in the stack and a few
levels further into the answer, so a document that parsed may fail to encode. A number too
large for a float parses as ``inf``, which JSON cannot express. So the endpoint measures the
nesting of a text before parsing it (:func:`nesting_exceeds`), encodes with :data:`COMPACT`,
which raises ``ValueError`` rather than write ``Infinity``, and names a number it cannot
write back with :func:`non_finite_pointer`.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Final, TypeAlias

from invoke_middleware.envelope import JSON_STRING

#: Compact JSON that refuses ``NaN`` and the infinities (RFC 8259 §6 has no such numbers).
#: Stateless between calls, so one instance serves every thread.
COMPACT: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: The same, writing characters beyond ASCII as themselves (see :func:`encode_utf8`).
_COMPACT_UTF8: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def encode_utf8(value: object) -> bytes:
    """``value`` as compact JSON in UTF-8, each character beyond ASCII as its own bytes.

    Escaped, a character costs 6 bytes, and one beyond the BMP 12, where UTF-8 takes 2 to 4:
    an answer carrying a text of them came back 3 times its size. Two kinds stay escaped:
    a lone surrogate (a caller's ``"\\ud800"``), which UTF-8 cannot write (Python's
    ``backslashreplace`` writes it as the very JSON escape, and only it); and the three line
    ends beyond ASCII (U+0085, U+2028, U+2029), which event-stream readers that split lines
    as Python's ``str.splitlines`` does would take for the end of a ``data:`` line."""
    encoded = _COMPACT_UTF8.encode(value).encode("utf-8", "backslashreplace")
    for raw, escape in _LINE_ENDS:
        if raw in encoded:
            encoded = encoded.replace(raw, escape)
    return encoded


# Each only ever inside a JSON string, where its escape stands for it.
_LINE_ENDS: Final = (
    ("\x85".encode(), b"\\u0085"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


#: A JSON string, a string left open running to the end (see the envelope's scan).
_STRING: Final = re.compile(JSON_STRING, re.DOTALL)
_NOT_BRACKETS: Final = bytes(sorted(set(range(256)) - set(b"[]{}")))
# An opening bracket becomes 1 and a closing one -1 (0xff, read as a signed byte): the running
# sum is the nesting depth after each bracket.
_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")

#: A member name longer than this is cut in a pointer (the rest would only lengthen a message).
_MAX_POINTER_TOKEN_CHARS: Final = 64

# Where a value sits: its parent's path and its own member name or index; None for the root.
_Path: TypeAlias = "tuple[_Path, str | int] | None"


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` deep.

    Decided without parsing, in C: with at most ``limit`` opening brackets it cannot;
    otherwise its strings are cut out, each bracket left becomes a step up or down, and the
    running sum of the steps is the depth after each one. A text whose brackets do not pair
    up is not JSON: ``False``, and the parser says so.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS)
    if steps.count(1) * 2 != len(steps):
        return False
    return max(accumulate(array("b", steps)), default=0) > limit


def non_finite_pointer(value: object) -> str | None:
    """The JSON pointer (RFC 6901) of the first number in ``value`` that is not finite.

    ``None`` when every number is finite. Paths are kept as links to their parent and only
    the one found is spelt out, so the walk costs one step per value, whatever the names.
    """
    stack: list[tuple[object, _Path]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return _pointer(path)
        if isinstance(item, dict):
            stack.extend((child, (path, key)) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, (path, i)) for i, child in reversed(list(enumerate(item))))
    return None


def _pointer(path: _Path) -> str:
    tokens: list[str] = []
    while path is not None:
        path, token = path
        text = str(token)[:_MAX_POINTER_TOKEN_CHARS]
        tokens.append(text.replace("~", "~0").replace("/", "~1"))
    return "".join(f"/{token}" for token in reversed(tokens))
