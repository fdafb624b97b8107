"""TLS to upstreams is always verified; a private CA and client certificates can be configured.

Over TLS both socket transports keep what they promise on a plain connection: a body
delimited by the close is whole only when the close carries ``close_notify`` (a kept-alive
connection closed without it before any answer is still one a request may be sent again
after), and the total deadline holds while a body is sent, a record at a time.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import pytest
import requests

from invoke_middleware.errors import (
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from invoke_middleware.transport import HTTPTransport, RequestsTransport, Timeouts, Transport
from tests.toolkit.servers import serve_wsgi
from tests.toolkit.upstream import repeating_bytes
from tests.upstreams import TLSFiles, scripted_app

from ._helpers import drain, fetch, send
from ._hostile import HostileUpstream, serve_hostile


@pytest.fixture(scope="module")
def https_url(tls_files: TLSFiles) -> Iterator[str]:
    with serve_wsgi(scripted_app, ssl_context=tls_files.server_context()) as url:
        yield url


@pytest.fixture
def hostile(tls_files: TLSFiles) -> Iterator[HostileUpstream]:
    with serve_hostile(tls_files.server_context(), receive_buffer=8192) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def mtls_url(tls_files: TLSFiles) -> Iterator[str]:
    context = tls_files.server_context(require_client_cert=True)
    with serve_wsgi(scripted_app, ssl_context=context) as url:
        yield url


def _with_ca(kind: str, tls: TLSFiles) -> Transport:
    if kind == "http":
        return HTTPTransport(ca_bundle=tls.ca_cert)
    return RequestsTransport(ca_bundle=tls.ca_cert)


def _with_client_cert(kind: str, tls: TLSFiles, session: requests.Session) -> Transport:
    if kind == "http":
        context = ssl.create_default_context(cafile=tls.ca_cert)
        context.load_cert_chain(tls.client_cert, tls.client_key)
        return HTTPTransport(ssl_context=context)
    session.verify = str(tls.ca_cert)
    session.cert = (str(tls.client_cert), str(tls.client_key))
    return RequestsTransport(session)


def _default(kind: str, tls: TLSFiles) -> Transport:
    return HTTPTransport() if kind == "http" else RequestsTransport()


KINDS = [pytest.param("http", id="http"), pytest.param("requests", id="requests")]


@pytest.mark.parametrize("kind", KINDS)
def test_certificate_from_an_unknown_ca_is_refused(
    kind: str, tls_files: TLSFiles, https_url: str
) -> None:
    transport = _default(kind, tls_files)
    try:
        with pytest.raises(UpstreamUnreachableError):
            send(transport, "GET", https_url + "/download?size=10")
    finally:
        transport.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "host", [pytest.param("127.0.0.1", id="ip-address"), pytest.param("localhost", id="name")]
)
def test_configured_ca_bundle_is_trusted(
    kind: str, host: str, tls_files: TLSFiles, https_url: str
) -> None:
    transport = _with_ca(kind, tls_files)
    try:
        response, body = fetch(
            transport, "GET", https_url.replace("127.0.0.1", host) + "/download?size=300"
        )
    finally:
        transport.close()

    assert response.status == 200
    assert body == repeating_bytes(300)


@pytest.mark.parametrize("kind", KINDS)
def test_client_certificate_is_presented_when_configured(
    kind: str, tls_files: TLSFiles, mtls_url: str
) -> None:
    session = requests.Session()  # a session handed in stays its owner's to close
    without, with_cert = _with_ca(kind, tls_files), _with_client_cert(kind, tls_files, session)
    try:
        with pytest.raises(UpstreamUnreachableError):
            fetch(without, "GET", mtls_url + "/download?size=10")
        response, body = fetch(with_cert, "GET", mtls_url + "/download?size=10")
    finally:
        without.close()
        with_cert.close()
        session.close()

    assert response.status == 200
    assert body == repeating_bytes(10)


@pytest.mark.parametrize("kind", KINDS)
def test_a_body_delimited_by_a_close_without_close_notify_is_incomplete(
    kind: str, tls_files: TLSFiles, hostile: HostileUpstream
) -> None:
    # RFC 9112 §9.8: a bare TCP close (which anyone on the path can forge) says nothing
    # about whether the body is whole.
    transport = _with_ca(kind, tls_files)
    try:
        response = send(transport, "GET", hostile.url + "/until-close")
        with pytest.raises(UpstreamError) as raised:
            drain(response)
        _, whole = fetch(transport, "GET", hostile.url + "/until-close?notify=1")
    finally:
        transport.close()

    assert raised.value.code == "upstream_error"
    assert whole == b"hello"


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_is_sent_again_when_a_reused_connection_closes_without_close_notify(
    kind: str, tls_files: TLSFiles, hostile: HostileUpstream
) -> None:
    # The usual end of a kept-alive TLS connection: a close without close_notify, before any
    # byte of the answer. It is not a body cut short: an idempotent request goes again.
    transport = _with_ca(kind, tls_files)
    try:
        fetch(transport, "GET", hostile.url + "/drop-next")
        response, _ = fetch(transport, "PUT", hostile.url + "/echo", body=b"same again")
    finally:
        transport.close()

    assert response.status == 200
    assert (hostile.dropped, hostile.connections_accepted) == (1, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_the_total_deadline_holds_while_the_upstream_reads_the_body_slowly(
    kind: str, tls_files: TLSFiles, hostile: HostileUpstream
) -> None:
    # The upstream takes 8 KiB every 50 ms, each piece well within the read timeout.
    pieces = (bytes(65536) for _ in range(256))
    timeouts = Timeouts(connect=2.0, read=0.5, total=1.0)
    transport = _with_ca(kind, tls_files)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeoutError):
            send(transport, "POST", hostile.url + "/trickle", body=pieces, timeouts=timeouts)
    finally:
        transport.close()

    assert time.monotonic() - started < 3.0  # the upstream would keep reading for 5 s


def test_context_that_skips_verification_is_refused() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    with pytest.raises(ValueError, match="verify"):
        HTTPTransport(ssl_context=context)


def test_session_that_skips_verification_is_refused() -> None:
    session = requests.Session()
    session.verify = False

    with pytest.raises(ValueError, match="verification"):
        RequestsTransport(session)
    session.close()
