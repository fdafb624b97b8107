"""The caller's body as the relay reads it: where a body a server spooled to a file lies, so
that a transport may send it from the file (see ``FileRegion``), and only then."""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from collections.abc import Iterator

import pytest

from invoke_middleware._bodies import RequestBody, request_body
from invoke_middleware.headers import Headers
from invoke_middleware.request import BodyReader, PipelineRequest

DATA = bytes(range(256)) * 64


def _request(body: BodyReader, length: int | None) -> PipelineRequest:
    return PipelineRequest(
        method="POST",
        path="/r/containers/svc/up",
        query="",
        headers=Headers([]),
        remote_addr="127.0.0.1",
        scheme="http",
        host="gateway.test",
        body=body,
        content_length=length,
        chunked=length is None,
    )


def _body(reader: BodyReader, length: int | None = len(DATA)) -> RequestBody:
    body, _ = request_body(_request(reader, length), limit=1 << 30)
    assert body is not None
    return body


@pytest.fixture
def spooled() -> Iterator[io.BufferedRandom]:
    """A body as waitress spools one: a temporary file, read from where the body starts."""
    with tempfile.TemporaryFile() as file:
        assert isinstance(file, io.BufferedRandom)
        file.write(b"before the body" + DATA)
        file.seek(len(b"before the body"))
        yield file


def test_a_spooled_body_lies_in_its_file_from_the_reader_s_position(
    spooled: io.BufferedRandom,
) -> None:
    body = _body(spooled)

    region = body.file_region()

    assert region is not None
    assert (region.offset, region.length) == (len(b"before the body"), len(DATA))
    assert os.pread(region.fd, region.length, region.offset) == DATA


def test_what_is_sent_from_the_file_is_counted_and_the_reader_moves_past_it(
    spooled: io.BufferedRandom,
) -> None:
    body = _body(spooled)
    region = body.file_region()
    assert region is not None

    region.taken(1000)
    region.taken(len(DATA) - 1000)

    assert body.sent == len(DATA)
    assert spooled.read() == b""  # a server draining what is left finds nothing
    assert body.file_region() is None  # sent: it is not offered again


def test_a_body_read_in_part_is_not_offered_from_its_file(spooled: io.BufferedRandom) -> None:
    body = _body(spooled)
    next(iter(body))

    assert body.file_region() is None


def test_a_body_without_a_length_is_not_offered_from_its_file(
    spooled: io.BufferedRandom,
) -> None:
    assert _body(spooled, length=None).file_region() is None


def test_a_file_whose_bytes_are_not_its_reader_s_is_not_offered() -> None:
    # GzipFile has the compressed file's descriptor, and hands out other bytes than it holds.
    with tempfile.TemporaryFile() as compressed:
        with gzip.GzipFile(fileobj=compressed, mode="wb") as writer:
            writer.write(DATA)
        compressed.seek(0)
        with gzip.GzipFile(fileobj=compressed, mode="rb") as reader:
            assert reader.fileno() == compressed.fileno()

            assert _body(reader).file_region() is None


class _Rot13Raw(io.RawIOBase):
    """A raw layer with its file's descriptor that hands out other bytes than the file's (as
    one that decrypts or decompresses would)."""

    def __init__(self, file: io.BufferedRandom) -> None:
        self._file = file

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes((byte + 13) % 256 for byte in self._file.read(len(buffer)))
        buffer[: len(data)] = data
        return len(data)


def test_a_reader_over_a_layer_of_its_own_is_not_offered_from_its_file(
    spooled: io.BufferedRandom,
) -> None:
    reader = io.BufferedReader(_Rot13Raw(spooled))

    assert _body(reader).file_region() is None


def test_a_pipe_is_not_offered_from_its_file() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader, os.fdopen(write_end, "wb") as writer:
        writer.write(DATA[:100])
        writer.flush()

        assert _body(reader, length=100).file_region() is None


def test_a_body_in_memory_is_not_offered_from_a_file() -> None:
    assert _body(io.BytesIO(DATA)).file_region() is None
