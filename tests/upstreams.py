"""Real upstream servers on loopback, for tests that need a socket on the other side.

Each server runs in a thread on ``127.0.0.1`` and an OS-chosen port, and stops when its
context manager exits. Import the fixtures into a ``conftest.py`` to use them::

    from tests.upstreams import httpbin_url, raw_upstream, scripted_url, tls_files  # noqa: F401

- :func:`serve_httpbin` serves httpbin with :func:`tests.toolkit.servers.serve_wsgi`.
- :func:`scripted_app` is a small WSGI app for what httpbin lacks (an exact body echo,
  server-sent events, large generated downloads, a body shorter than its Content-Length).
- :class:`RawUpstream` is a raw-socket HTTP/1.1 server scripted per path, for what no
  well-behaved server does: echo the request bytes exactly as received, reset or close
  mid-body, hang, drip, close kept-alive connections.
- :func:`make_tls_files` creates a private CA and a certificate for ``127.0.0.1`` and
  ``localhost``.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug.wsgi import get_input_stream

from tests.toolkit.servers import serve_wsgi
from tests.toolkit.upstream import repeating_bytes

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Upper bound for any wait in these servers, so a broken test cannot hang the run.
_MAX_WAIT = 30.0


# --- WSGI servers -----------------------------------------------------------------------


@contextlib.contextmanager
def serve_httpbin() -> Iterator[str]:
    """Serve httpbin (the PyPI package) on loopback; yield its base URL."""
    import httpbin  # type: ignore[import-untyped]

    with serve_wsgi(httpbin.app) as url:
        yield url


def scripted_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI app for behaviours httpbin lacks.

    - ``/echo``: the request body exactly, with ``X-Echo-Method``, ``X-Echo-Content-Length``
      and ``X-Echo-Transfer-Encoding`` describing how it came;
    - ``/download?size=N``: :func:`repeating_bytes` ``(N)``, generated in 64 KiB pieces;
    - ``/sse?count=N&interval=S``: N server-sent events, one every S seconds;
    - ``/truncated``: declares ``Content-Length: 1000`` and sends 100 bytes.
    """
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/echo":
        body = get_input_stream(environ, max_content_length=None).read()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body))),
                ("X-Echo-Method", environ["REQUEST_METHOD"]),
                ("X-Echo-Content-Length", environ.get("CONTENT_LENGTH") or "-"),
                ("X-Echo-Transfer-Encoding", environ.get("HTTP_TRANSFER_ENCODING") or "-"),
            ],
        )
        return [body]
    if path == "/download":
        size = int(query["size"])
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        data = repeating_bytes(size)
        return (data[i : i + 65536] for i in range(0, size, 65536))
    if path == "/sse":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return _events(int(query.get("count", "5")), float(query.get("interval", "0.2")))
    if path == "/truncated":
        start_response("200 OK", [("Content-Length", "1000")])
        return [b"x" * 100]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


def _events(count: int, interval: float) -> Iterator[bytes]:
    for number in range(count):
        if number:
            time.sleep(interval)
        yield f"id: {number}\ndata: event {number}\n\n".encode()


@contextlib.contextmanager
def serve_scripted() -> Iterator[str]:
    """Serve :func:`scripted_app` on loopback; yield its base URL."""
    with serve_wsgi(scripted_app) as url:
        yield url


# --- Raw-socket server ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReceivedRequest:
    """A request as :class:`RawUpstream` read it off the wire."""

    request_line: str
    headers: tuple[tuple[str, str], ...]
    raw_body: bytes  # the body bytes as framed on the wire (chunk sizes included)
    body: bytes  # the body with the chunked framing removed

    def header_names(self) -> list[str]:
        return [name for name, _ in self.headers]

    @classmethod
    def parse(cls, data: bytes) -> ReceivedRequest:
        """Parse what ``/echo`` sends back."""
        length = struct.unpack(">I", data[:4])[0]
        meta = json.loads(data[4 : 4 + length])
        raw_body = data[4 + length :]
        return cls(
            request_line=meta["request_line"],
            headers=tuple((n, v) for n, v in meta["headers"]),
            raw_body=raw_body,
            body=_dechunk(raw_body) if meta["chunked"] else raw_body,
        )


def _dechunk(raw: bytes) -> bytes:
    body = bytearray()
    position = 0
    while True:
        line_end = raw.index(b"\r\n", position)
        size = int(raw[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            return bytes(body)
        body += raw[position : position + size]
        position += size + 2


class _Closed(Exception):
    pass


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def line(self) -> bytes:
        line = self.reader.readline(65537)
        if not line:
            raise _Closed
        return line

    def exactly(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise _Closed
        return data

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


_Handler = Callable[["RawUpstream", _Connection, str, dict[str, str], bytes], bool]


class RawUpstream:
    """A raw-socket HTTP/1.1 upstream scripted per path (see the ``_handle_*`` methods).

    Connections are kept alive between requests unless a handler closes them.
    ``connections_accepted`` counts TCP connections; ``dropped`` counts requests that were
    read and then met with a close (see ``/drop-next``). With ``ssl_context`` (a server
    context) it speaks HTTPS.

    The handler of a path in ``unread_body_paths`` runs as soon as the request's head is
    read, with its body left on the connection (an upstream that answers before reading
    the body, or reads it slowly); such a handler must close the connection.
    """

    unread_body_paths: frozenset[str] = frozenset()

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.connections_accepted = 0
        self.dropped = 0
        #: Requests ``/cut-short`` has answered with part of a response, then a close.
        self.cut_short = 0
        #: Set when ``/close-after-response`` closed its connection.
        self.closed_after_response = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RawUpstream:
        thread = threading.Thread(target=self._accept_loop)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with self._lock:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(_MAX_WAIT)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(_MAX_WAIT)
            # Heads and bodies go out in separate writes; without this, Nagle's algorithm
            # and the client's delayed ACK add ~40 ms to every kept-alive response.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock)
            with self._lock:
                self.connections_accepted += 1
                self._open.add(connection)
            thread = threading.Thread(target=self._serve, args=(connection,))
            thread.start()
            self._threads.append(thread)

    def _start_tls(self, connection: _Connection) -> bool:
        """Wrap the connection in TLS when the upstream speaks HTTPS; ``False`` when the
        handshake failed (the connection is closed)."""
        if self._ssl_context is None:
            return True
        try:
            tls = self._ssl_context.wrap_socket(connection.sock, server_side=True)
        except OSError:
            connection.close()
            return False
        # The same connection object, so that stopping the server still reaches it.
        connection.sock, connection.reader = tls, tls.makefile("rb")
        return True

    def _serve(self, connection: _Connection) -> None:
        if not self._start_tls(connection):
            return
        drop_next = False
        try:
            while not self._stop.is_set():
                head, headers, raw_body, chunked = self._read_request(connection)
                if drop_next:
                    with self._lock:
                        self.dropped += 1
                    return
                method, target, _ = head.decode("latin-1").split(" ", 2)
                path, _, query = target.partition("?")
                params = {k: v[0] for k, v in parse_qs(query).items()}
                if path == "/drop-next":
                    drop_next = True
                if path == "/echo":
                    meta = json.dumps(
                        {
                            "request_line": head.decode("latin-1").rstrip("\r\n"),
                            "headers": headers,
                            "chunked": chunked,
                        }
                    ).encode()
                    body = struct.pack(">I", len(meta)) + meta + raw_body
                    keep = self._respond(connection, method, "200 OK", [], body)
                else:
                    handler = getattr(self, "_handle_" + path.strip("/").replace("-", "_"), None)
                    if handler is None:
                        keep = self._respond(connection, method, "404 Not Found", [], b"")
                    else:
                        keep = handler(connection, method, params)
                if not keep or ("connection", "close") in {
                    (n.lower(), v.lower()) for n, v in headers
                }:
                    return
        except (_Closed, OSError):
            return
        finally:
            with self._lock:
                self._open.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def _read_request(
        self, connection: _Connection
    ) -> tuple[bytes, list[tuple[str, str]], bytes, bool]:
        head = connection.line()
        headers: list[tuple[str, str]] = []
        while True:
            line = connection.line()
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        path = head.decode("latin-1").split(" ", 2)[1].partition("?")[0]
        if path in self.unread_body_paths:
            return head, headers, b"", False
        fields = {n.lower(): v for n, v in headers}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            raw = bytearray()
            while True:
                size_line = connection.line()
                raw += size_line
                size = int(size_line.split(b";")[0], 16)
                raw += connection.exactly(size + 2)
                if size == 0:
                    return head, headers, bytes(raw), True
        length = int(fields.get("content-length", "0"))
        return head, headers, connection.exactly(length), False

    @staticmethod
    def _respond(
        connection: _Connection,
        method: str,
        status: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        lines = [f"HTTP/1.1 {status}", *(f"{n}: {v}" for n, v in headers)]
        lines.append(f"Content-Length: {len(body)}")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection.sock.sendall(payload if method == "HEAD" else payload + body)
        return True

    def _send_head(self, connection: _Connection, status: str, *headers: str) -> None:
        lines = [f"HTTP/1.1 {status}", *headers]
        connection.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    # Each handler answers one path; it returns whether the connection stays open.

    def _handle_download(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        size = int(params["size"])
        self._send_head(connection, "200 OK", f"Content-Length: {size}")
        data = repeating_bytes(size)
        for start in range(0, size, 65536):
            connection.sock.sendall(data[start : start + 65536])
        return True

    def _handle_sse(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """``count`` events, one every ``interval`` seconds, in chunked coding."""
        self._send_head(
            connection,
            "200 OK",
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "Transfer-Encoding: chunked",
        )
        for number in range(int(params.get("count", "5"))):
            if number and self._stop.wait(float(params.get("interval", "0.2"))):
                return False
            event = f"id: {number}\ndata: event {number}\n\n".encode()
            connection.sock.sendall(b"%X\r\n%b\r\n" % (len(event), event))
        connection.sock.sendall(b"0\r\n\r\n")
        return True

    def _handle_reset(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """Headers and 100 of 1000 bytes, then a TCP reset (SO_LINGER 0)."""
        self._send_head(connection, "200 OK", "Content-Length: 1000")
        connection.sock.sendall(b"r" * 100)
        time.sleep(0.05)  # let the client take the partial body before the reset
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    def _handle_truncate(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """Headers and 100 of 1000 bytes, then a clean close."""
        self._send_head(connection, "200 OK", "Content-Length: 1000")
        connection.sock.sendall(b"t" * 100)
        return False

    def _handle_truncate_chunked(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """One chunk, then a clean close without the last chunk."""
        self._send_head(connection, "200 OK", "Transfer-Encoding: chunked")
        connection.sock.sendall(b"5\r\nhello\r\n")
        return False

    def _handle_hang(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """Never answer; wait until the client gives up (or the server stops)."""
        connection.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                if not connection.sock.recv(1):
                    return False
            except TimeoutError:
                continue
        return False

    def _handle_drip(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """``count`` bytes, one every ``interval`` seconds."""
        count = int(params.get("count", "100"))
        self._send_head(connection, "200 OK", f"Content-Length: {count}")
        for _ in range(count):
            if self._stop.wait(float(params.get("interval", "0.05"))):
                return False
            connection.sock.sendall(b".")
        return True

    def _handle_close_after_response(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """Answer with a kept-alive response, then close the connection anyway."""
        self._respond(connection, method, "200 OK", [], b"ok")
        connection.sock.shutdown(socket.SHUT_RDWR)
        self.closed_after_response.set()
        return False

    def _handle_cut_short(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """``after=interim``: a ``103`` and then a close; ``after=partial``: part of a head."""
        self.cut_short += 1
        if params.get("after") == "interim":
            connection.sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        else:
            connection.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Len")
        return False

    def _handle_drop_next(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """Answer; the next request on this connection is read, then met with a close."""
        return self._respond(connection, method, "200 OK", [], b"ok")

    def _handle_headers(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """Repeated fields: two ``Set-Cookie`` and two ``X-Multi``, interleaved."""
        fields = [("Set-Cookie", "a=1; Path=/"), ("X-Multi", "one"), ("Set-Cookie", "b=2")]
        fields.append(("X-Multi", "two"))
        return self._respond(connection, method, "200 OK", fields, b"")

    def _handle_ratelimit(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        """The upstream's own IETF rate-limit fields."""
        fields = [
            ("RateLimit-Policy", '"upstream";q=100;w=1'),
            ("RateLimit", '"upstream";r=99;t=1'),
        ]
        return self._respond(connection, method, "200 OK", fields, b"")

    def _handle_gzip(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        body = gzip.compress(b"compressed " * 100)
        fields = [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")]
        return self._respond(connection, method, "200 OK", fields, body)

    def _handle_redirect(
        self, connection: _Connection, method: str, params: dict[str, str]
    ) -> bool:
        return self._respond(connection, method, "302 Found", [("Location", "/echo")], b"")

    def _handle_garbage(self, connection: _Connection, method: str, params: dict[str, str]) -> bool:
        """Not HTTP at all."""
        connection.sock.sendall(b"this is not http\r\n\r\n")
        return False


@contextlib.contextmanager
def serve_raw() -> Iterator[RawUpstream]:
    """Run a :class:`RawUpstream`; yield it (its base URL is ``.url``)."""
    with RawUpstream() as upstream:
        yield upstream


# --- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TLSFiles:
    """PEM files of a private CA, a server certificate it signed, and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_cert)
        return context


def make_tls_files(directory: Path) -> TLSFiles:
    """Create a CA, a server certificate for ``127.0.0.1``/``localhost`` and a client one."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    server_cert, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf(
        "gateway", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("gateway.test")]
    )
    files = TLSFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert)
    files.server_key.write_bytes(server_key)
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    return files


# --- pytest fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def httpbin_url() -> Iterator[str]:
    """Base URL of httpbin served by a real WSGI server on loopback."""
    with serve_httpbin() as url:
        yield url


@pytest.fixture(scope="session")
def scripted_url() -> Iterator[str]:
    """Base URL of :func:`scripted_app` served by a real WSGI server on loopback."""
    with serve_scripted() as url:
        yield url


@pytest.fixture
def raw_upstream() -> Iterator[RawUpstream]:
    """A fresh :class:`RawUpstream` (fresh, so its connection counters start at zero)."""
    with serve_raw() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A private CA with server and client certificates, written to a temporary directory."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
