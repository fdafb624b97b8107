"""An upstream for large and partial bodies that never holds a body in memory.

``/upload`` reads the request body piece by piece, hashing it, and records a :class:`Upload`
(also when the body ends early); ``/download?size=N`` streams :func:`pattern_blocks` ``(N)``
with a ``Content-Length`` (add ``&chunked=1`` to leave the length out). The pattern differs
from block to block, so a lost, repeated or reordered block changes the digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_input_stream

from tests.toolkit.servers import serve_wsgi

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

BLOCK = 64 * 1024


def pattern_blocks(size: int, block: int = BLOCK) -> Iterator[bytes]:
    """``size`` bytes in pieces of ``block``; each piece depends on its position."""
    for index, start in enumerate(range(0, size, block)):
        yield hashlib.shake_128(index.to_bytes(8, "big")).digest(min(block, size - start))


def pattern_digest(size: int) -> str:
    """SHA-256 of the :func:`pattern_blocks` body of ``size`` bytes."""
    digest = hashlib.sha256()
    for piece in pattern_blocks(size):
        digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One body as ``/upload`` received it."""

    size: int
    sha256: str
    complete: bool
    content_length: str | None
    transfer_encoding: str | None


class SinkUpstream:
    """The WSGI app; ``uploads`` lists what ``/upload`` received, in order."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.url = ""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
        if path == "/upload":
            upload = self._receive(environ)
            self.uploads.append(upload)
            body = json.dumps({"size": upload.size, "sha256": upload.sha256}).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if path == "/download":
            size = int(query["size"])
            headers = [("Content-Type", "application/octet-stream")]
            if query.get("chunked") != "1":
                headers.append(("Content-Length", str(size)))
            start_response("200 OK", headers)
            return pattern_blocks(size)
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    @staticmethod
    def _receive(environ: WSGIEnvironment) -> Upload:
        stream = get_input_stream(environ, max_content_length=None)
        digest = hashlib.sha256()
        size = 0
        complete = True
        try:
            while piece := stream.read(BLOCK):
                digest.update(piece)
                size += len(piece)
        except (ClientDisconnected, OSError):
            complete = False
        return Upload(
            size=size,
            sha256=digest.hexdigest(),
            complete=complete,
            content_length=environ.get("CONTENT_LENGTH") or None,
            transfer_encoding=environ.get("HTTP_TRANSFER_ENCODING"),
        )


@contextlib.contextmanager
def serve_sink() -> Iterator[SinkUpstream]:
    """Serve a fresh :class:`SinkUpstream` on loopback (its base URL is ``.url``)."""
    sink = SinkUpstream()
    with serve_wsgi(sink) as url:
        sink.url = url
        yield sink
