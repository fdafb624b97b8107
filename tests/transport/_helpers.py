"""Small helpers shared by the transport tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator

from invoke_middleware.transport import (
    FileRegion,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)

QUICK = Timeouts(connect=5.0, read=10.0, total=20.0)


def send(
    transport: Transport,
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    content_length: int | None = None,
    timeouts: Timeouts = QUICK,
    tenant: str | None = None,
    share: str | None = None,
) -> UpstreamResponse:
    return transport.send(
        UpstreamRequest(
            method=method,
            url=url,
            headers=tuple(headers),
            body=body,
            content_length=content_length,
            timeouts=timeouts,
            tenant=tenant,
            share=share,
        )
    )


def fetch(
    transport: Transport, method: str, url: str, **options: object
) -> tuple[UpstreamResponse, bytes]:
    """Send, read the whole body, close; return the response and its body."""
    response = send(transport, method, url, **options)  # type: ignore[arg-type]
    return response, drain(response)


def drain(response: UpstreamResponse) -> bytes:
    """Read the whole body, then close the response (also when reading fails)."""
    with response:
        return b"".join(response)


def values(response: UpstreamResponse, name: str) -> list[str]:
    return response.headers.get_all(name)


class SpooledFile:
    """A request body in a temporary file, as a server that spools bodies hands one over
    (:class:`~invoke_middleware.transport.SpooledBody`): a transport may send it from the
    file, or iterate it. ``taken`` records what the transport said it sent from the file."""

    def __init__(self, data: bytes, *, declared: int | None = None, at: int = 0) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.file.write(bytes(at) + data)
        self.file.seek(at)
        self.length = len(data) if declared is None else declared
        self.taken: list[int] = []

    def file_region(self) -> FileRegion:
        return FileRegion(self.file.fileno(), self.file.tell(), self.length, self.taken.append)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.file.read(65536):
            yield chunk

    def close(self) -> None:
        self.file.close()
