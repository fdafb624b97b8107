"""Upstream URLs split into origin and request target, without re-quoting anything."""

from __future__ import annotations

import pytest

from invoke_middleware.transport._origin import split_url


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
    ],
)
def test_url_the_gateway_never_builds_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        split_url(url)
