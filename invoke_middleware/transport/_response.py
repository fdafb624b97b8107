"""The response head parser of :class:`~invoke_middleware.transport.http.HTTPTransport`.

:func:`parse_head` reads a response's status line and header fields (RFC 9112 §4, §5) from
the bytes before the blank line that ends them, and works out how its body is framed
(§6.3). It is strict where a lenient reading could let an upstream desynchronise a
kept-alive connection or split a response for a client further on (response splitting):

- conflicting or malformed ``Content-Length`` values are an error, not "the first one wins";
  so is a ``Transfer-Encoding`` that is not a list of transfer codings (RFC 9112 §6.1).
  Only SP and HTAB count as whitespace around their values (RFC 9110 §5.6.3): Python's
  ``str.strip`` also removes VT, FF, NEL and the no-break space, so a length padded with
  them would pass for a length that other readers refuse;
- a bare CR or NUL in a field value, whitespace before a field's colon, and a name that is
  not a token are errors; an obsolete folded line is joined with a space (§5.2);
- ``Transfer-Encoding`` overrides ``Content-Length`` and such a response never keeps its
  connection, nor does an HTTP/1.0 response that has it (§6.1); a body not framed by either
  ends at the close;
- ``HEAD``, ``1xx``, ``204`` and ``304`` have no body, whatever their fields say.

Interim responses (1xx other than ``101``) are the caller's to skip: :attr:`ResponseHead.interim`.
Every malformed head raises :class:`~invoke_middleware.errors.UpstreamError`.
"""

from __future__ import annotations

import re
from typing import Final

from ..errors import UpstreamError
from ..headers import (
    CONTENT_LENGTH_PATTERN,
    TCHARS,
    TOKEN_PATTERN,
    Headers,
    connection_tokens,
)

#: The blank line that ends a head; RFC 9112 §2.2 lets a recipient take a bare LF for CRLF.
HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK: Final = re.compile(rb"\r?\n")
#: The longest head read (status line and fields) and the longest line in it.
MAX_HEAD: Final = 256 * 1024
MAX_LINE: Final = 65536
MAX_FIELDS: Final = 100
#: Interim (1xx) responses read before the final one, at most. Servers send one or two
#: (``100 Continue``, ``103 Early Hints``); each is a head to parse, and thousands of empty
#: ones fit in ``MAX_HEAD`` (16,000 cost 28 ms).
MAX_INTERIM: Final = 16
#: How long a relay waits for each chunk of a body of tiny chunks (seconds), the interpreter
#: lock let go. Reading a chunk costs some microseconds of Python however small it is: a
#: container sending 1-byte chunks made the gateway spend hundreds of times the CPU of an
#: ordinary body of that size, under the lock every team's requests need (another team's
#: invoke waited 21 ms instead of 0.3, ``bench/results/neighbours.md``). Paced, such a body
#: costs its own relay time instead. Each transport says which chunks it paces.
CHUNK_PAUSE: Final = 5e-6
# HTTP/1.x, a three-digit status and an optional reason without CR or NUL (RFC 9112 §4).
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([0-9]) ([1-9][0-9]{2})(?: ([^\r\x00]*))?")
# The token characters as bytes, to check a field name before decoding it.
_TCHAR: Final = frozenset(TCHARS.encode("ascii"))
# The fields that frame the body: never taken folded, whose joined value is a guess.
_FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection"})
# Optional whitespace (RFC 9110 §5.6.3), the only whitespace around a list element.
_OWS: Final = " \t"
# One element of a Transfer-Encoding list: a token and its parameters (RFC 9112 §7, RFC 9110
# §5.6.6). A quoted parameter holding a comma is split with the list and refused: no
# registered transfer coding takes parameters.
_TOKEN: Final = TOKEN_PATTERN.pattern
_TRANSFER_CODING: Final = re.compile(
    rf'{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|"[^"\\\x00-\x08\x0a-\x1f\x7f]*"))*'
)


class ResponseHead:
    """A response's status line, fields and framing.

    ``length`` is the body's size when ``Content-Length`` gives it (``0`` for a response that
    has no body); ``None`` with ``chunked`` for a chunked body, and ``None`` without it for a
    body that ends at the close (then ``will_close`` is set).
    """

    __slots__ = ("chunked", "fields", "interim", "length", "reason", "status", "will_close")

    def __init__(
        self,
        status: int,
        reason: str,
        fields: Headers,
        *,
        length: int | None,
        chunked: bool,
        will_close: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.length = length
        self.chunked = chunked
        self.will_close = will_close
        #: An interim response (1xx other than 101): its final response follows it.
        self.interim = status < 200 and status != 101


def parse_head(head: bytes, method: str) -> ResponseHead:
    """The head of a response to ``method``: ``head`` runs up to, not including, the blank
    line that ends it."""
    lines = head.split(b"\r\n")
    if len(lines) <= head.count(b"\n"):
        lines = _LINE_BREAK.split(head)  # a bare LF ends a line too: rare, and slower to split
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise UpstreamError("The service's response is not HTTP/1.x.")
    minor, code, reason = status_line.groups()
    status = int(code)
    if status > 599:
        # RFC 9110 §15: codes run from 100 to 599; browsers take any other for a failure of
        # the network, and the invoke envelope's schema has no room for one.
        raise UpstreamError("The service's response has a status code past 599.")
    fields, lengths, codings = _parse_fields(lines)

    keep_alive_default = minor != b"0"  # HTTP/1.0 closes unless asked not to (RFC 9112 §9.3)
    tokens = connection_tokens(fields)
    will_close = "close" in tokens if keep_alive_default else "keep-alive" not in tokens
    length: int | None = None
    chunked = False
    if codings:
        _check_chunked(codings)
        chunked = True
        # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a message with both
        # must not keep its connection. §6.1: an HTTP/1.0 message with Transfer-Encoding has
        # faulty framing; its connection closes.
        will_close = will_close or bool(lengths) or not keep_alive_default
    elif lengths:
        values = {v.strip(_OWS) for item in lengths for v in item.split(",")}
        if len(values) != 1 or CONTENT_LENGTH_PATTERN.fullmatch(next(iter(values))) is None:
            raise UpstreamError("The service's response has an invalid Content-Length.")
        length = int(values.pop())
    if status < 200 or status in (204, 304) or method == "HEAD":
        # No body, whatever the framing fields say (RFC 9112 §6.3, rule 1).
        length = 0
        chunked = False
    if status == 101:
        will_close = True  # the connection no longer speaks HTTP
    elif length is None and not chunked:
        will_close = True
    return ResponseHead(
        status,
        reason.strip().decode("latin-1") if reason else "",
        fields,
        length=length,
        chunked=chunked,
        will_close=will_close,
    )


def _check_chunked(codings: list[str]) -> None:
    """Raise :class:`UpstreamError` unless the ``Transfer-Encoding`` values name ``chunked``
    alone: the one transfer coding the gateway decodes. Any other (``gzip, chunked``) would
    reach the caller still applied, with nothing to say so once the hop-by-hop field is
    dropped, and ``chunked`` applied twice (RFC 9112 §6.1 forbids it) would hand over the inner
    framing as content."""
    elements = [e.strip(_OWS) for value in codings for e in value.split(",")]
    # RFC 9110 §5.6.1: a recipient accepts empty list elements, but a list of nothing at all
    # names no framing.
    elements = [e for e in elements if e]
    if not elements or any(_TRANSFER_CODING.fullmatch(e) is None for e in elements):
        raise UpstreamError("The service's response has an invalid Transfer-Encoding.")
    if len(elements) != 1 or elements[0].lower() != "chunked":
        raise UpstreamError(
            "The service's response has a transfer coding the gateway does not decode."
        )


def _parse_fields(
    lines: list[bytes],
) -> tuple[Headers, list[str], list[str]]:
    """The fields of ``lines[1:]``, and the values of the two that frame the body:
    ``Content-Length`` and ``Transfer-Encoding``."""
    if len(lines) > MAX_FIELDS + 1:
        raise UpstreamError("The service's response has too many header fields.")
    fields: list[tuple[str, str]] = []
    lengths: list[str] = []
    codings: list[str] = []
    for index in range(1, len(lines)):
        line = lines[index]
        if len(line) > MAX_LINE:
            raise UpstreamError("The service's response has a header line too long.")
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 §5.2): a gateway must reject it or replace it with spaces.
            if not fields:
                raise UpstreamError("The service's response head is malformed.")
            name, value = fields[-1]
            if name.lower() in _FRAMING:
                raise UpstreamError("The service's response head is malformed.")
            fields[-1] = (name, f"{value} {_field_value(line)}")
            continue
        raw_name, colon, raw_value = line.partition(b":")
        # No whitespace between name and colon (RFC 9112 §5.1), and the name is a token.
        if not colon or not raw_name or not _TCHAR.issuperset(raw_name):
            raise UpstreamError("The service's response head is malformed.")
        name = raw_name.decode("ascii")
        value = _field_value(raw_value)
        fields.append((name, value))
        # The length first: most fields are none of the three, and it costs no lowering.
        size = len(name)
        if size == 14 and name.lower() == "content-length":
            lengths.append(value)
        elif size == 17 and name.lower() == "transfer-encoding":
            codings.append(value)
    return Headers(fields), lengths, codings


def _field_value(raw: bytes) -> str:
    # Checked as text: Latin-1 maps each byte to one character, and "in" on bytes tries (and
    # fails, raising and clearing a TypeError) to read its operand as an integer.
    text = raw.strip(b" \t").decode("latin-1")
    if "\r" in text or "\x00" in text:
        # RFC 9110 §5.5: a bare CR or NUL in a value could split the header for a client
        # further on (response splitting); refuse the response.
        raise UpstreamError("The service's response head is malformed.")
    return text
