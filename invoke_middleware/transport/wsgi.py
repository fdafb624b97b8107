"""Relay to a WSGI application in the same process, without a socket.

:class:`WSGITransport` turns each :class:`~invoke_middleware.transport.base.UpstreamRequest`
into a WSGI environ (PEP 3333), calls the application and streams its iterable back. Use it in
tests, or to serve a service that lives inside the host process::

    transport = WSGITransport(my_flask_app)
    response = transport.send(UpstreamRequest(method="GET", url="http://svc.internal/health",
                                              headers=()))

The URL only names the server (``SERVER_NAME``, ``SERVER_PORT``, ``HTTP_HOST``,
``wsgi.url_scheme``); nothing is resolved or connected. There is no socket, so there are no
connect or read timeouts either: the application runs in the caller's thread. Nor is there a
connection to keep between requests, so :attr:`UpstreamRequest.tenant` has nothing to keep
apart: each call gets its own environ, input stream and response iterable, and no byte of one
call can be read by another.

The environ is what a careful WSGI server builds: ``PATH_INFO`` percent-decoded as PEP 3333
requires (``RAW_URI`` and ``REQUEST_URI`` keep the target as sent), repeated header fields
joined with ``", "`` (``"; "`` for ``Cookie``, RFC 9110 §5.3 and RFC 6265 §5.4), and header
names containing ``_`` dropped, as most servers do, because ``X_Foo`` and ``X-Foo`` would both
become ``HTTP_X_FOO``. Exceptions from the application become
:class:`~invoke_middleware.errors.UpstreamError`, except the gateway's own errors (a body too
large, raised while the application reads ``wsgi.input``), which propagate unchanged.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ..errors import GatewayError, UpstreamError
from ..headers import Headers
from ._origin import split_url
from .base import Closeable, UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = ["WSGITransport"]

_EXCLUDED_HEADERS = frozenset({"HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_HOST"})


class _IterableReader(io.RawIOBase):
    """A raw stream over an iterable of byte chunks, read only as the application asks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class _Call:
    """One call of the application: its start_response state and its iterable."""

    __slots__ = ("_iterator", "_result", "headers", "headers_sent", "status", "written")

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.written: list[bytes] = []
        self._result: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] = iter(())

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Any:
        if exc_info is not None and exc_info[1] is not None:
            if self.headers_sent:
                # PEP 3333: too late to change the response; let the error abort it.
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status is not None:
            raise RuntimeError("start_response() was called twice without exc_info.")
        self.status = status
        self.headers = headers
        return self.written.append

    def run(self, app: WSGIApplication, environ: WSGIEnvironment) -> None:
        try:
            self._result = app(environ, self.start_response)
            self._iterator = iter(self._result)
        except Exception as exc:
            raise _translate(exc) from exc

    def next_chunk(self) -> bytes | None:
        """The next piece of body (``write()`` output first), ``None`` at the end."""
        if self.written:
            return self.written.pop(0)
        try:
            chunk = next(self._iterator, None)
        except Exception as exc:
            raise _translate(exc) from exc
        if self.written:
            # write() was called while producing this chunk: its bytes come first.
            if chunk:
                self.written.append(chunk)
            return self.written.pop(0)
        if chunk is not None and not isinstance(chunk, bytes):
            raise UpstreamError()
        return chunk

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        self._result = ()
        self._iterator = iter(())
        if close is not None:
            try:
                close()
            except Exception as exc:
                raise _translate(exc) from exc


def _translate(exc: Exception) -> GatewayError:
    """The one place where the application's exceptions become the gateway's errors."""
    if isinstance(exc, GatewayError):
        return exc
    return UpstreamError()


def _status(status: str | None) -> tuple[int, str]:
    code, _, reason = (status or "").partition(" ")
    if len(code) != 3 or not code.isdigit():
        raise UpstreamError()
    return int(code), reason


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    if not value.isdigit():
        raise UpstreamError()
    return int(value)


class _Body:
    """Hands out the application's body, checking it against its ``Content-Length``."""

    __slots__ = ("_call", "_expected", "_first", "done")

    def __init__(self, call: _Call, first: bytes | None, expected: int | None) -> None:
        self._call = call
        self._first = first
        self._expected = expected
        self.done = False

    def chunks(self) -> Iterator[bytes]:
        call = self._call
        received = 0
        chunk = self._first
        self._first = None
        try:
            while not self.done:
                if chunk is None:
                    self._check_complete(received)
                    self.close()
                    return
                if chunk:
                    received += len(chunk)
                    if self._expected is not None and received > self._expected:
                        raise UpstreamError()
                    yield chunk
                chunk = call.next_chunk()
        finally:
            self.close()

    def _check_complete(self, received: int) -> None:
        if self._expected is not None and received != self._expected:
            raise UpstreamError("The service's response ended early.")

    def close(self) -> None:
        if not self.done:
            self.done = True
            self._call.close()


class WSGITransport(Closeable):
    """Sends upstream requests to a WSGI application, in process.

    ``remote_addr`` is what the application sees as ``REMOTE_ADDR``.
    """

    def __init__(self, app: WSGIApplication, *, remote_addr: str = "127.0.0.1") -> None:
        self._app = app
        self._remote_addr = remote_addr

    def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Call the application; return once it started its response and produced a body
        chunk (or finished), as a WSGI server would before sending headers (PEP 3333)."""
        call = _Call()
        call.run(self._app, self._environ(request))
        try:
            first = call.next_chunk()
            while first == b"" and not call.written:
                first = call.next_chunk()
            call.headers_sent = True
            status, reason = _status(call.status)
            headers = Headers(call.headers)
            if not all(isinstance(n, str) and isinstance(v, str) for n, v in headers):
                raise UpstreamError()
            if request.method == "HEAD" or status < 200 or status in (204, 304):
                # These responses have no body, whatever the application produced.
                call.close()
                content_length: int | None = 0
                chunks: Iterator[bytes] = iter(())
                close = _nothing
            else:
                content_length = _declared_length(headers)
                body = _Body(call, first, content_length)
                chunks = body.chunks()
                close = body.close
        except BaseException:
            call.close()
            raise
        return UpstreamResponse(
            status=status,
            reason=reason,
            headers=headers,
            chunks=chunks,
            close=close,
            content_length=content_length,
        )

    def close(self) -> None:
        """Nothing to release: there are no connections."""

    def _environ(self, request: UpstreamRequest) -> WSGIEnvironment:
        origin, target = split_url(request.url)
        path, _, query = target.partition("?")
        environ: WSGIEnvironment = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            # PEP 3333: PATH_INFO is the decoded path, bytes carried as latin-1.
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "REQUEST_URI": target,
            "SERVER_NAME": origin.host,
            "SERVER_PORT": str(origin.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self._remote_addr,
            "HTTP_HOST": origin.host_header,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": origin.scheme,
            "wsgi.input": _input_stream(request),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            # The stream ends where the body ends, chunked or not.
            "wsgi.input_terminated": True,
        }
        for name, value in request.headers:
            if "_" in name:
                continue
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            if key in _EXCLUDED_HEADERS or key == "CONTENT_LENGTH":
                continue
            if key in environ:
                separator = "; " if key == "HTTP_COOKIE" else ", "
                environ[key] = f"{environ[key]}{separator}{value}"
            else:
                environ[key] = value
        length = request.wire_content_length
        if length is not None:
            environ["CONTENT_LENGTH"] = str(length)
        if request.is_chunked:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        return environ


def _input_stream(request: UpstreamRequest) -> io.BufferedIOBase:
    stream = request.body_stream
    if stream is None:
        return io.BytesIO(request.body_bytes or b"")
    return io.BufferedReader(_IterableReader(stream))


def _nothing() -> None:
    pass
