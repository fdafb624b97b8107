"""How an :class:`UpstreamRequest` says its body goes on the wire: one answer for every
transport."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from invoke_middleware.errors import InvalidRequestError
from invoke_middleware.transport import Transport, UpstreamRequest
from tests.toolkit.upstream import repeating_bytes
from tests.upstreams import RawUpstream

from ._helpers import fetch, send


def _stream(*pieces: bytes) -> Iterator[bytes]:
    yield from pieces


def _request(
    method: str, body: bytes | Iterable[bytes] | None, content_length: int | None = None
) -> UpstreamRequest:
    return UpstreamRequest(
        method=method,
        url="http://svc.internal/",
        headers=(),
        body=body,
        content_length=content_length,
    )


@pytest.mark.parametrize(
    ("method", "body", "content_length", "wire_length", "chunked"),
    [
        pytest.param("GET", None, None, None, False, id="get-without-body"),
        pytest.param("DELETE", None, None, None, False, id="delete-without-body"),
        pytest.param("POST", None, None, 0, False, id="post-without-body"),
        pytest.param("PATCH", None, None, 0, False, id="patch-without-body"),
        pytest.param("POST", b"abc", None, 3, False, id="bytes"),
        pytest.param("POST", b"abc", 99, 3, False, id="bytes-ignore-declared-length"),
        pytest.param("PUT", bytearray(b"abcd"), None, 4, False, id="bytearray"),
        pytest.param("POST", memoryview(b"ab"), None, 2, False, id="memoryview"),
        pytest.param("POST", _stream(b"ab"), 2, 2, False, id="stream-with-length"),
        pytest.param("POST", _stream(b"ab"), None, None, True, id="stream-chunked"),
    ],
)
def test_wire_framing_follows_the_body_shape(
    method: str,
    body: bytes | Iterable[bytes] | None,
    content_length: int | None,
    wire_length: int | None,
    chunked: bool,
) -> None:
    request = _request(method, body, content_length)

    assert request.wire_content_length == wire_length
    assert request.is_chunked is chunked


@pytest.mark.parametrize(
    ("body", "in_memory", "streamed"),
    [
        pytest.param(None, False, False, id="none"),
        pytest.param(b"abc", True, False, id="bytes"),
        pytest.param(bytearray(b"abc"), True, False, id="bytearray"),
        pytest.param(memoryview(b"abc"), True, False, id="memoryview"),
        pytest.param([b"a", b"bc"], False, True, id="list-of-chunks"),
        pytest.param(_stream(b"abc"), False, True, id="generator"),
    ],
)
def test_a_body_is_either_in_memory_or_streamed(
    body: bytes | Iterable[bytes] | None, in_memory: bool, streamed: bool
) -> None:
    request = _request("POST", body)

    assert request.body_bytes is (body if in_memory else None)
    assert request.body_stream is (body if streamed else None)


@pytest.mark.parametrize(
    ("method", "body", "retryable"),
    [
        pytest.param("GET", None, True, id="get"),
        pytest.param("PUT", b"abc", True, id="put-bytes"),
        pytest.param("DELETE", None, True, id="delete"),
        pytest.param("PUT", _stream(b"abc"), False, id="put-stream"),
        pytest.param("POST", None, False, id="post"),
        pytest.param("PATCH", b"abc", False, id="patch"),
    ],
)
def test_only_idempotent_requests_with_a_replayable_body_may_be_retried(
    method: str, body: bytes | Iterable[bytes] | None, retryable: bool
) -> None:
    assert _request(method, body).may_retry_after_close is retryable


def test_checked_stream_passes_a_body_of_the_declared_length() -> None:
    request = _request("POST", _stream(b"ab", b"", b"cd"), content_length=4)

    assert list(request.checked_stream()) == [b"ab", b"", b"cd"]


def test_checked_stream_passes_a_chunked_body_unchecked() -> None:
    request = _request("POST", _stream(b"ab", b"cd"))

    assert list(request.checked_stream()) == [b"ab", b"cd"]


def test_checked_stream_stops_before_the_chunk_that_overruns_the_declared_length() -> None:
    request = _request("POST", _stream(b"ab", b"cde"), content_length=4)
    chunks = request.checked_stream()

    assert next(chunks) == b"ab"
    with pytest.raises(InvalidRequestError):
        next(chunks)


def test_checked_stream_raises_when_the_body_ends_short() -> None:
    request = _request("POST", _stream(b"ab"), content_length=4)

    with pytest.raises(InvalidRequestError):
        list(request.checked_stream())


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param((b"abc", b"def"), id="longer"),
        pytest.param((b"ab",), id="shorter"),
    ],
)
def test_a_stream_that_breaks_its_declared_length_never_finishes_the_request(
    wire: Transport, raw_upstream: RawUpstream, pieces: tuple[bytes, ...]
) -> None:
    with pytest.raises(InvalidRequestError):
        send(wire, "POST", raw_upstream.url + "/echo", body=_stream(*pieces), content_length=4)

    # The transport is still usable: the broken exchange's connection was not kept.
    _, body = fetch(wire, "GET", raw_upstream.url + "/download?size=10")
    assert body == repeating_bytes(10)


def test_the_url_stays_out_of_the_repr() -> None:
    # A webhook keeps its secret in the path, a caller's token may be in the query.
    request = UpstreamRequest(
        method="POST", url="https://hooks.example/T0SECRET?token=T1SECRET", headers=()
    )
    assert "SECRET" not in repr(request)
    assert "method='POST'" in repr(request)
