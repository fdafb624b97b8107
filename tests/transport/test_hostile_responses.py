"""Whatever bytes an upstream sends, HTTPTransport answers with a response or with one of
the gateway's upstream errors: never another exception, which would surface as a 500."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invoke_middleware.errors import GatewayError
from invoke_middleware.transport import HTTPTransport, Timeouts, UpstreamRequest


class ScriptedUpstream:
    """Answers each connection with the next scripted bytes, then closes it."""

    def __init__(self) -> None:
        self.answers: queue.Queue[bytes] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(2)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        data = sock.recv(4096)
                        if not data:
                            break
                        head += data
                    sock.sendall(self.answers.get(timeout=2))
                except (OSError, queue.Empty):
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    yield server
    server.close()


STATUS_LINES = st.sampled_from(
    [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 103 Early\r\n",
     b"HTTP/1.0 200 OK\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 99 X\r\n", b"HTTP/1.1 2000 X\r\n",
     b"garbage\r\n", b"", b"HTTP/1.1 200\n"]
)  # fmt: skip
FIELDS = st.lists(
    st.sampled_from(
        [b"Content-Length: 5\r\n", b"Content-Length: x\r\n", b"Content-Length: 5, 6\r\n",
         b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
         b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: identity\r\n",
         b"Connection: close\r\n", b"X-A: b\r\n", b" folded\r\n", b"X-Bad\x00: v\r\n",
         b"X-Cr: a\rb\r\n", b"NoColon\r\n", b"X-Latin: caf\xe9\r\n"]
    ),
    max_size=5,
)  # fmt: skip
BODIES = st.one_of(
    st.sampled_from(
        [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n",
         b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhel", b"-5\r\nhello\r\n",
         b"5;x=y\r\nhello\r\n0\r\n\r\n"]
    ),
    st.binary(max_size=40),
)  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(status=STATUS_LINES, fields=FIELDS, blank=st.booleans(), body=BODIES,
       method=st.sampled_from(["GET", "HEAD"]))  # fmt: skip
def test_any_answer_is_a_response_or_an_upstream_error(
    upstream: ScriptedUpstream,
    status: bytes,
    fields: list[bytes],
    blank: bool,
    body: bytes,
    method: str,
) -> None:
    upstream.answers.put(status + b"".join(fields) + (b"\r\n" if blank else b"") + body)
    transport = HTTPTransport(pool_size_per_origin=0)
    request = UpstreamRequest(
        method=method,
        url=upstream.url + "/",
        headers=(),
        timeouts=Timeouts(connect=2, read=1, total=3),
    )
    try:
        response = transport.send(request)
        try:
            for _ in response:
                pass
        finally:
            response.close()
    except GatewayError:
        pass
    finally:
        transport.close()
