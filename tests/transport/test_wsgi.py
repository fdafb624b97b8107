"""The in-process WSGI transport builds a server-grade environ and honours PEP 3333."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from invoke_middleware.errors import UpstreamError
from invoke_middleware.transport import WSGITransport

from ._helpers import drain, fetch, send

Environ = dict[str, Any]


def _capture(seen: list[Environ]) -> Any:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        seen.append(dict(environ, body=environ["wsgi.input"].read()))
        start_response("204 No Content", [])
        return []

    return app


def test_environ_describes_the_request_as_a_server_would() -> None:
    seen: list[Environ] = []
    transport = WSGITransport(_capture(seen), remote_addr="10.0.0.9")

    fetch(
        transport,
        "POST",
        "https://svc.internal:8443/a%20b/caf%C3%A9?x=%2F&y",
        headers=[("Content-Type", "text/plain"), ("X-Trace", "t1"), ("Cookie", "a=1")],
        body=b"hello",
    )

    environ = seen[0]
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a b/café".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "x=%2F&y"
    assert environ["RAW_URI"] == environ["REQUEST_URI"] == "/a%20b/caf%C3%A9?x=%2F&y"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("svc.internal", "8443")
    assert environ["HTTP_HOST"] == "svc.internal:8443"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["REMOTE_ADDR"] == "10.0.0.9"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "5"
    assert environ["HTTP_X_TRACE"] == "t1"
    assert environ["body"] == b"hello"
    assert "HTTP_CONTENT_TYPE" not in environ


def test_repeated_fields_are_joined_and_ambiguous_names_dropped() -> None:
    seen: list[Environ] = []
    transport = WSGITransport(_capture(seen))

    fetch(
        transport,
        "GET",
        "http://svc.internal/",
        headers=[
            ("Accept", "text/plain"),
            ("Accept", "application/json"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X_Spoofed", "1"),
        ],
    )

    environ = seen[0]
    assert environ["HTTP_ACCEPT"] == "text/plain, application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_SPOOFED" not in environ
    assert "CONTENT_LENGTH" not in environ


def test_streamed_body_is_read_as_the_application_asks() -> None:
    pulled: list[bytes] = []
    seen: list[Environ] = []

    def body() -> Iterator[bytes]:
        for piece in (b"line one\n", b"line ", b"two\n"):
            pulled.append(piece)
            yield piece

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        first = stream.readline()
        seen.append({"first": first, "pulled_then": len(pulled), "rest": stream.read()})
        seen[0].update(chunked=environ.get("HTTP_TRANSFER_ENCODING"))
        start_response("200 OK", [])
        return []

    fetch(WSGITransport(app), "POST", "http://svc.internal/", body=body())

    assert seen[0]["first"] == b"line one\n"
    assert seen[0]["pulled_then"] == 1
    assert seen[0]["rest"] == b"line two\n"
    assert seen[0]["chunked"] == "chunked"


class _Result:
    """An application iterable that records whether the server closed it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "read_all", [pytest.param(True, id="after-reading"), pytest.param(False, id="early")]
)
def test_application_iterable_is_closed(read_all: bool) -> None:
    result = _Result([b"a", b"b", b"c"])

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return result

    response = send(WSGITransport(app), "GET", "http://svc.internal/")
    if read_all:
        assert drain(response) == b"abc"
    else:
        response.close()

    assert result.closed


def test_written_bytes_come_before_the_iterable() -> None:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    response, body = fetch(WSGITransport(app), "GET", "http://svc.internal/")

    assert (response.status, response.reason) == (200, "OK")
    assert body == b"written returned"


def test_error_before_the_body_replaces_the_status() -> None:
    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("boom")
        except KeyError:
            start_response("500 Internal Server Error", [("X-Failed", "yes")], sys.exc_info())
        yield b"failed"

    response, body = fetch(WSGITransport(app), "GET", "http://svc.internal/")

    assert (response.status, list(response.headers), body) == (
        500,
        [("X-Failed", "yes")],
        b"failed",
    )


def test_error_after_the_body_started_aborts_the_response() -> None:
    def app(environ: Environ, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise KeyError("boom")
        except KeyError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    response = send(WSGITransport(app), "GET", "http://svc.internal/")

    with pytest.raises(UpstreamError):
        drain(response)


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(lambda environ, start_response: 1 / 0, id="raises"),
        pytest.param(lambda environ, start_response: [b"no status"], id="no-start-response"),
        pytest.param(
            lambda environ, start_response: start_response("OK", []) or [],
            id="bad-status-line",
        ),
    ],
)
def test_broken_application_is_an_upstream_error(app: Any) -> None:
    with pytest.raises(UpstreamError) as raised:
        send(WSGITransport(app), "GET", "http://svc.internal/")

    assert "division" not in raised.value.message


def test_body_longer_than_its_content_length_raises() -> None:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abcdef"]

    response = send(WSGITransport(app), "GET", "http://svc.internal/")

    with pytest.raises(UpstreamError):
        drain(response)


def test_bodiless_responses_drop_what_the_application_returned() -> None:
    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "4")])
        return [b"body"]

    response, body = fetch(WSGITransport(app), "HEAD", "http://svc.internal/")

    assert body == b""
    assert response.content_length == 0
