"""The transport contract, checked against every transport (see transport/base.py)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from invoke_middleware.errors import InvalidRequestError, PayloadTooLargeError, UpstreamError
from invoke_middleware.transport import HTTPTransport, Transport
from tests.toolkit.upstream import repeating_bytes

from ._helpers import SpooledFile, drain, fetch, send, values
from .conftest import Upstreams

MIB = 1 << 20


def _random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _pieces(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_sends_only_the_given_headers_and_host(upstreams: Upstreams) -> None:
    response, body = fetch(
        upstreams.transport, "GET", upstreams.httpbin + "/headers", headers=[("X-Custom", "yes")]
    )

    assert response.status == 200
    assert json.loads(body)["headers"] == {"Host": upstreams.host_header, "X-Custom": "yes"}


@pytest.mark.parametrize(
    ("shape", "expected_length", "expected_coding"),
    [
        pytest.param("bytes", str(MIB), "-", id="bytes"),
        pytest.param("sized-stream", str(MIB), "-", id="stream-with-length"),
        pytest.param("chunked-stream", "-", "chunked", id="stream-without-length"),
    ],
)
def test_one_mebibyte_upload_arrives_byte_exact(
    upstreams: Upstreams, shape: str, expected_length: str, expected_coding: str
) -> None:
    data = _random_bytes(MIB)
    body = data if shape == "bytes" else _pieces(data)
    length = MIB if shape == "sized-stream" else None

    response, echoed = fetch(
        upstreams.transport,
        "POST",
        upstreams.scripted + "/echo",
        body=body,
        content_length=length,
    )

    assert echoed == data
    assert values(response, "X-Echo-Content-Length") == [expected_length]
    assert values(response, "X-Echo-Transfer-Encoding") == [expected_coding]


def test_a_body_spooled_to_a_file_arrives_byte_exact(upstreams: Upstreams) -> None:
    # As a server that spooled it hands it over: in a file, from where the body starts. The
    # HTTP transport sends it from the file (os.sendfile); the others iterate it.
    data = _random_bytes(3 * MIB + 1234)
    body = SpooledFile(data, at=4321)
    try:
        response, echoed = fetch(
            upstreams.transport,
            "POST",
            upstreams.scripted + "/echo",
            body=body,
            content_length=len(data),
        )
    finally:
        body.close()

    assert echoed == data
    assert values(response, "X-Echo-Content-Length") == [str(len(data))]
    if isinstance(upstreams.transport, HTTPTransport):
        assert sum(body.taken) == len(data)
    else:
        assert body.taken == []


def test_a_spooled_body_shorter_than_its_declared_length_is_refused(
    wire: Transport, scripted_url: str
) -> None:
    # The file ends before the declared length: a body cut short, refused as the caller's
    # (400) before the upstream can read the next request's bytes as the rest of this one.
    body = SpooledFile(b"x" * 1000, declared=2000)
    try:
        with pytest.raises(InvalidRequestError):
            send(
                wire,
                "POST",
                scripted_url + "/echo",
                body=body,
                content_length=2000,
            )
    finally:
        body.close()


def test_a_file_sendfile_cannot_send_from_is_read_instead(
    scripted_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some regular files cannot be sent from (procfs: EINVAL); nothing went out yet, so the
    # body is read as any body is.
    def refuses(out: int, fd: int, offset: int, count: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuses)
    data = _random_bytes(MIB)
    body = SpooledFile(data, at=10)
    with HTTPTransport() as transport:
        try:
            _, echoed = fetch(
                transport, "POST", scripted_url + "/echo", body=body, content_length=len(data)
            )
        finally:
            body.close()

    assert echoed == data


@pytest.mark.parametrize(
    ("code", "after"),
    [
        pytest.param(errno.EIO, 0, id="disk-error"),
        pytest.param(errno.EINVAL, 65536, id="refused-half-way"),
    ],
)
def test_a_file_that_fails_while_sent_from_is_the_caller_s_unreadable_body(
    scripted_url: str, monkeypatch: pytest.MonkeyPatch, code: int, after: int
) -> None:
    # The file's failure, not the upstream's: 400, as when reading the body fails.
    sendfile = os.sendfile
    sent: list[int] = []

    def failing(out: int, fd: int, offset: int, count: int) -> int:
        if sum(sent) >= after:
            raise OSError(code, os.strerror(code))
        sent.append(sendfile(out, fd, offset, min(count, after - sum(sent))))
        return sent[-1]

    monkeypatch.setattr(os, "sendfile", failing)
    body = SpooledFile(_random_bytes(MIB))
    with HTTPTransport() as transport:
        try:
            with pytest.raises(InvalidRequestError, match="could not be read"):
                send(transport, "POST", scripted_url + "/echo", body=body, content_length=MIB)
        finally:
            body.close()
        assert sum(map(len, transport._idle.values())) == 0  # the request cut short: not kept


def test_every_byte_value_round_trips_unchanged(upstreams: Upstreams) -> None:
    data = bytes(range(256)) * 4

    _, echoed = fetch(upstreams.transport, "PUT", upstreams.scripted + "/echo", body=data)

    assert echoed == data


def test_one_mebibyte_download_arrives_byte_exact(upstreams: Upstreams) -> None:
    response, body = fetch(upstreams.transport, "GET", upstreams.scripted + f"/download?size={MIB}")

    assert response.content_length == MIB
    assert body == repeating_bytes(MIB)


def test_compressed_body_is_returned_undecoded(upstreams: Upstreams) -> None:
    response, body = fetch(upstreams.transport, "GET", upstreams.httpbin + "/gzip")

    assert values(response, "Content-Encoding") == ["gzip"]
    assert json.loads(gzip.decompress(body))["gzipped"] is True


def test_set_cookie_fields_stay_separate(upstreams: Upstreams) -> None:
    url = upstreams.httpbin + "/response-headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2"

    response, _ = fetch(upstreams.transport, "GET", url)

    assert values(response, "Set-Cookie") == ["a=1", "b=2"]


def test_redirect_is_returned_not_followed(upstreams: Upstreams) -> None:
    url = upstreams.httpbin + "/redirect-to?url=/get&status_code=302"

    response, _ = fetch(upstreams.transport, "GET", url)

    assert response.status == 302
    assert values(response, "Location") == ["/get"]


def test_head_response_has_no_body(upstreams: Upstreams) -> None:
    response, body = fetch(upstreams.transport, "HEAD", upstreams.httpbin + "/get")

    assert response.status == 200
    assert body == b""
    assert response.content_length == 0
    assert values(response, "Content-Length") != ["0"]


def test_events_arrive_one_by_one_as_they_are_sent(upstreams: Upstreams) -> None:
    interval = 0.2
    response = send(
        upstreams.transport, "GET", upstreams.scripted + f"/sse?count=5&interval={interval}"
    )
    arrivals: list[tuple[float, bytes]] = []
    try:
        for chunk in response:
            arrivals.append((time.monotonic(), chunk))
    finally:
        response.close()

    assert [chunk for _, chunk in arrivals] == [
        f"id: {n}\ndata: event {n}\n\n".encode() for n in range(5)
    ]
    # Each event came in its own chunk (checked above), and they came spread out over the
    # time the server took to send them, not held back to be delivered together.
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread > 2 * interval


def test_body_shorter_than_its_content_length_raises(upstreams: Upstreams) -> None:
    response = send(upstreams.transport, "GET", upstreams.scripted + "/truncated")

    with pytest.raises(UpstreamError):
        drain(response)


def test_gateway_error_raised_by_the_request_body_propagates_unchanged(
    upstreams: Upstreams,
) -> None:
    too_large = PayloadTooLargeError()

    def body() -> Iterator[bytes]:
        yield b"first piece"
        raise too_large

    with pytest.raises(PayloadTooLargeError) as raised:
        send(upstreams.transport, "POST", upstreams.scripted + "/echo", body=body())

    assert raised.value is too_large
    _, echoed = fetch(upstreams.transport, "POST", upstreams.scripted + "/echo", body=b"next")
    assert echoed == b"next"


def test_closing_before_the_body_is_read_is_safe_and_idempotent(upstreams: Upstreams) -> None:
    response = send(upstreams.transport, "GET", upstreams.scripted + f"/download?size={MIB}")
    first = next(iter(response))

    response.close()
    response.close()

    assert first
    assert list(response) == []
    _, body = fetch(upstreams.transport, "GET", upstreams.scripted + "/download?size=10")
    assert body == repeating_bytes(10)


def test_environment_proxy_settings_are_ignored(
    upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        refused = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, refused)
    monkeypatch.setenv("NO_PROXY", "")

    response, _ = fetch(upstreams.transport, "GET", upstreams.httpbin + "/get")

    assert response.status == 200


def test_netrc_credentials_are_not_added(
    upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    machines = ("127.0.0.1", "localhost", "httpbin.test")
    netrc.write_text("".join(f"machine {m} login user password secret\n" for m in machines))
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    _, body = fetch(upstreams.transport, "GET", upstreams.httpbin + "/headers")

    assert "Authorization" not in json.loads(body)["headers"]


def test_one_transport_serves_many_threads_at_once(upstreams: Upstreams) -> None:
    results: dict[int, list[bool]] = {}

    def work(worker: int) -> None:
        outcomes = []
        for round_ in range(10):
            data = f"worker {worker} round {round_}".encode() * 50
            _, echoed = fetch(upstreams.transport, "POST", upstreams.scripted + "/echo", body=data)
            outcomes.append(echoed == data)
        results[worker] = outcomes

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert results == {n: [True] * 10 for n in range(8)}
