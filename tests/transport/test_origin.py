"""Upstream URLs split into origin and request target, without re-quoting anything."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from invoke_middleware.errors import UpstreamUnreachableError
from invoke_middleware.transport import HTTPTransport, RequestsTransport, Transport
from invoke_middleware.transport._origin import split_url
from tests.upstreams import RawUpstream, ReceivedRequest, TLSFiles

from ._helpers import fetch, send


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "host_header", "target"),
    [
        pytest.param("http://svc/a", "http", "svc", 80, "svc", "/a", id="default-http-port"),
        pytest.param("https://svc:443/", "https", "svc", 443, "svc", "/", id="default-https-port"),
        pytest.param("http://svc:8080", "http", "svc", 8080, "svc:8080", "/", id="no-path"),
        pytest.param("http://svc?q=1", "http", "svc", 80, "svc", "/?q=1", id="query-no-path"),
        pytest.param(
            "HTTP://SVC.Internal/A", "http", "svc.internal", 80, "svc.internal", "/A", id="case"
        ),
        pytest.param("http://[::1]:9000/x", "http", "::1", 9000, "[::1]:9000", "/x", id="ipv6"),
        pytest.param(
            "http://svc/a%2Fb?x=%7E&y",
            "http",
            "svc",
            80,
            "svc",
            "/a%2Fb?x=%7E&y",
            id="escapes-kept",
        ),
        pytest.param("http://svc/a#frag", "http", "svc", 80, "svc", "/a", id="fragment-dropped"),
        pytest.param(
            "http://Bücher.example:8080/",
            "http",
            "xn--bcher-kva.example",
            8080,
            "xn--bcher-kva.example:8080",
            "/",
            id="internationalised-name-as-a-label",
        ),
        pytest.param(
            "https://faß.example/",
            "https",
            "xn--fa-hia.example",
            443,
            "xn--fa-hia.example",
            "/",
            id="idna-2008-keeps-sharp-s",
        ),
        pytest.param("http://svc_1:81/", "http", "svc_1", 81, "svc_1:81", "/", id="underscore"),
    ],
)
def test_url_splits_into_origin_and_target(
    url: str, scheme: str, host: str, port: int, host_header: str, target: str
) -> None:
    origin, got_target = split_url(url)

    assert (origin.scheme, origin.host, origin.port, origin.host_header) == (
        scheme,
        host,
        port,
        host_header,
    )
    assert got_target == target


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("svc/a", id="relative"),
        pytest.param("ftp://svc/a", id="other-scheme"),
        pytest.param("http://user:pw@svc/", id="credentials"),
        pytest.param("http://svc:99999/", id="port-out-of-range"),
        pytest.param("http://svc:8o/", id="port-not-a-number"),
        pytest.param("http:///a", id="no-host"),
        pytest.param("http://[::1/", id="unclosed-ipv6"),
        pytest.param("http://svc:0/", id="port-zero"),
        pytest.param("http://[::1]x/", id="text-after-ipv6"),
        pytest.param("http://[svc]/", id="name-in-brackets"),
        pytest.param("http://[127.0.0.1]/", id="ipv4-in-brackets"),
        pytest.param("http://a..b/", id="empty-label"),
        pytest.param("http://" + "x" * 64 + ".example/", id="label-too-long"),
        pytest.param("http://" + "x." * 127 + "example/", id="name-too-long"),
        pytest.param("http://a\u200db.example/", id="idna-disallowed-joiner"),
    ],
)
def test_url_the_gateway_never_builds_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        split_url(url)


# The names below are pinned to loopback (see pinned_lookups), so no name server is asked.
INTERNATIONALISED_NAMES = [
    pytest.param("bücher.example", "xn--bcher-kva.example", id="latin-1"),
    pytest.param("пример.example", "xn--e1afmkfd.example", id="beyond-latin-1"),
    pytest.param("faß.example", "xn--fa-hia.example", id="sharp-s"),
]


@pytest.fixture
def pinned_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every name the transports look up answers 127.0.0.1; the list records the names."""
    real_getaddrinfo = socket.getaddrinfo
    looked_up: list[str] = []

    def pinned(host: str, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", pinned)
    return looked_up


@pytest.mark.parametrize(("name", "a_label"), INTERNATIONALISED_NAMES)
def test_an_internationalised_name_is_looked_up_and_sent_in_host_as_its_a_label(
    wire: Transport,
    raw_upstream: RawUpstream,
    pinned_lookups: list[str],
    name: str,
    a_label: str,
) -> None:
    # RFC 9110 §7.2: Host carries the name the connection was made to, in ASCII.
    response, body = fetch(wire, "GET", f"http://{name}:{raw_upstream.port}/echo")

    assert response.status == 200
    assert ("Host", f"{a_label}:{raw_upstream.port}") in ReceivedRequest.parse(body).headers
    assert set(pinned_lookups) == {a_label}


@pytest.mark.parametrize(
    "transport_class",
    [pytest.param(HTTPTransport, id="http"), pytest.param(RequestsTransport, id="requests")],
)
@pytest.mark.parametrize(("name", "a_label"), INTERNATIONALISED_NAMES)
def test_an_internationalised_name_is_the_a_label_in_tls_server_name_indication(
    transport_class: type[HTTPTransport | RequestsTransport],
    tls_files: TLSFiles,
    pinned_lookups: list[str],
    name: str,
    a_label: str,
) -> None:
    offered: list[str | None] = []
    context = tls_files.server_context()
    context.sni_callback = lambda _sock, server_name, _context: offered.append(server_name)
    transport = transport_class(ca_bundle=tls_files.ca_cert)
    # The certificate names localhost, so the handshake fails after the name was offered.
    try:
        with RawUpstream(ssl_context=context) as upstream, pytest.raises(UpstreamUnreachableError):
            send(transport, "GET", f"https://{name}:{upstream.port}/")
    finally:
        transport.close()

    assert offered == [a_label]
    assert set(pinned_lookups) == {a_label}
