"""The response head parser of :class:`~invoke_middleware.transport.http.HTTPTransport`.

:class:`FinalResponse` is an :class:`http.client.HTTPResponse` with its own ``begin()``:

- interim responses (1xx other than ``101``) are skipped: http.client skips only ``100``, and
  a ``103 Early Hints`` (RFC 8297) would pass for the final response, leaving the real one on
  the pooled connection to answer the next request;
- header fields are parsed by a small line parser into a
  :class:`~invoke_middleware.headers.Headers` instead of by the :mod:`email` package, which
  costs more than the rest of a relay's response handling together;
- framing is checked strictly (RFC 9112 §6.3): conflicting or malformed ``Content-Length``
  values are an error rather than "the first one wins", since a gateway that guessed could be
  made to split one response into two (response splitting).

Everything else (chunked decoding, ``read1``, closing) is http.client's.
"""

from __future__ import annotations

import http.client
from typing import Protocol

from invoke_middleware.headers import CONTENT_LENGTH_PATTERN, TCHARS, Headers

_MAX_LINE = 65536
_MAX_FIELDS = 100
# The token characters as bytes, to check a field name before decoding it.
_TCHAR = frozenset(TCHARS.encode("ascii"))


class _LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def read_fields(fp: _LineReader) -> list[tuple[str, str]]:
    """Read header fields up to the empty line that ends them."""
    readline = fp.readline
    fields: list[tuple[str, str]] = []
    while True:
        line: bytes = readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n"):
            return fields
        if not line:
            raise http.client.RemoteDisconnected("closed inside the response head")
        if line[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 §5.2): a gateway must reject it or replace it with spaces.
            if not fields:
                raise http.client.HTTPException("folded line without a field")
            last_name, last_value = fields[-1]
            folded = line.strip().decode("latin-1")
            if "\r" in folded or "\x00" in folded:
                raise http.client.HTTPException("malformed header field")
            fields[-1] = (last_name, f"{last_value} {folded}")
            continue
        name, colon, value = line.partition(b":")
        # No whitespace between name and colon (RFC 9112 §5.1), and the name is a token.
        if not colon or not name or not _TCHAR.issuperset(name):
            raise http.client.HTTPException("malformed header field")
        # Checked as text: Latin-1 maps each byte to one character, and "in" on bytes tries
        # (and fails, raising and clearing a TypeError) to read its operand as an integer.
        text = value.strip(b" \t\r\n").decode("latin-1")
        if "\r" in text or "\x00" in text:
            # RFC 9110 §5.5: a bare CR or NUL in a value could split the header for a client
            # further on (response splitting); refuse the response.
            raise http.client.HTTPException("malformed header field")
        fields.append((name.decode("ascii"), text))
        if len(fields) > _MAX_FIELDS:
            raise http.client.HTTPException("too many header fields")


class FinalResponse(http.client.HTTPResponse):
    """An http.client response that skips interim responses and parses its head strictly."""

    #: The header fields: the package's one container, handed to the transport's response
    #: as it is. ``msg`` and ``headers`` name it too, for http.client's own reads.
    fields: Headers

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if not 100 <= status < 200 or status == 101:
                break
            read_fields(self.fp)  # an interim response's fields, discarded
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        fields = Headers(read_fields(self.fp))
        # http.client reads the fields through the first two names, the transport the third.
        self.headers = self.msg = self.fields = fields

        codings = fields.get_all("transfer-encoding")
        self.chunked = bool(codings) and codings[-1].rsplit(",", 1)[-1].strip().lower() == "chunked"
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        if codings:
            # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a message with
            # both must not keep the connection. Not chunked: the body ends at close.
            self.will_close = self.will_close or not self.chunked or "content-length" in fields
        else:
            lengths = fields.get_all("content-length")
            if lengths:
                values = {v.strip() for item in lengths for v in item.split(",")}
                if len(values) != 1 or CONTENT_LENGTH_PATTERN.fullmatch(next(iter(values))) is None:
                    raise http.client.HTTPException("invalid Content-Length")
                self.length = int(values.pop())
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            # No body, whatever the framing fields say (RFC 9112 §6.3, rule 1).
            self.length = 0
            self.chunked = False
        if status == 101:
            self.will_close = True  # the connection no longer speaks HTTP
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True
