"""TLS to upstreams is always verified; a private CA and client certificates can be configured."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import requests

from invoke_middleware.errors import UpstreamUnreachableError
from invoke_middleware.transport import HTTPTransport, RequestsTransport, Transport
from tests.toolkit.servers import serve_wsgi
from tests.toolkit.upstream import repeating_bytes
from tests.upstreams import TLSFiles, scripted_app

from ._helpers import fetch, send


@pytest.fixture(scope="module")
def https_url(tls_files: TLSFiles) -> Iterator[str]:
    with serve_wsgi(scripted_app, ssl_context=tls_files.server_context()) as url:
        yield url


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
