"""The invoke route and the catch-all against httpbin (the PyPI package) served on loopback:
a well-known upstream that reports what it received."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import webtest
from werkzeug.test import Client

from invoke_middleware import CredentialKind, InvokeMiddleware
from invoke_middleware.registry import InMemoryServiceRegistry
from tests.toolkit.world import TEAM, host_app, make_service
from tests.upstreams import httpbin_url  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def gateway(httpbin_url: str) -> Iterator[tuple[webtest.TestApp, dict[str, str], Any]]:  # noqa: F811
    registry = InMemoryServiceRegistry([make_service("bin", httpbin_url)])
    host = host_app()
    middleware = InvokeMiddleware(host.wsgi_app, registry=registry)
    host.wsgi_app = middleware  # type: ignore[method-assign]
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    yield webtest.TestApp(host), {"Authorization": f"Bearer {key}"}, host
    middleware.close()


def invoke(gateway: Any, envelope: dict[str, Any]) -> dict[str, Any]:
    app, auth, _ = gateway
    result: dict[str, Any] = app.post_json("/r/invoke/bin", envelope, headers=auth).json
    return result


def body_of(result: dict[str, Any]) -> bytes:
    return base64.b64decode(result["body_base64"])


def test_httpbin_sees_exactly_the_envelope(gateway: Any) -> None:
    payload = bytes(range(256))
    result = invoke(
        gateway,
        {
            "method": "POST",
            "path": "/anything/x?q=1&q=2",
            "body_base64": base64.b64encode(payload).decode(),
            "headers": {
                "Content-Type": "application/octet-stream",
                "Authorization": "Bearer inner",
                "X-Custom": "v",
            },
        },
    )
    assert result["status_code"] == 200
    seen = json.loads(body_of(result))
    assert seen["method"] == "POST"
    assert seen["args"] == {"q": ["1", "2"]}
    assert seen["headers"]["Authorization"] == "Bearer inner"
    assert seen["headers"]["X-Custom"] == "v"
    assert "Accept-Encoding" not in seen["headers"]
    assert "User-Agent" not in seen["headers"]
    assert "X-Team-Id" not in seen["headers"]
    assert seen["data"].startswith("data:application/octet-stream;base64,")
    assert base64.b64decode(seen["data"].split(",", 1)[1]) == payload


@pytest.mark.parametrize("status", [201, 204, 404, 418, 500, 503])
def test_every_container_status_is_reported_in_a_200(gateway: Any, status: int) -> None:
    assert invoke(gateway, {"method": "GET", "path": f"/status/{status}"})["status_code"] == status


def test_repeated_set_cookie_fields_stay_apart(gateway: Any) -> None:
    result = invoke(
        gateway, {"method": "GET", "path": "/response-headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2"}
    )
    assert result["headers"]["set-cookie"] == ["a=1", "b=2"]


def test_gzip_comes_back_compressed(gateway: Any) -> None:
    result = invoke(gateway, {"method": "GET", "path": "/gzip"})
    assert result["headers"]["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body_of(result)))["gzipped"] is True


def test_redirects_are_not_followed(gateway: Any) -> None:
    result = invoke(gateway, {"method": "GET", "path": "/redirect-to?url=/get&status_code=302"})
    assert result["status_code"] == 302
    assert result["headers"]["location"] == "/get"


def test_head_has_an_empty_body(gateway: Any) -> None:
    result = invoke(gateway, {"method": "HEAD", "path": "/bytes/64"})
    assert result["status_code"] == 200
    assert result["body_base64"] == ""


def test_catch_all_streams_httpbin_bytes_unchanged(gateway: Any) -> None:
    _, auth, host = gateway
    res = Client(host).get("/r/containers/bin/range/5000?chunk_size=100", headers=auth)
    assert res.status_code == 200
    assert res.data == (b"abcdefghijklmnopqrstuvwxyz" * 200)[:5000]
    res.close()


def test_catch_all_forwards_the_query_and_drops_the_callers_credentials(gateway: Any) -> None:
    app, auth, _ = gateway
    team = {"X-Team-ID": str(uuid.uuid4())}
    seen = app.get("/r/containers/bin/get?a=1", headers={**auth, **team}).json
    assert seen["args"] == {"a": "1"}
    assert "Authorization" not in seen["headers"]
    assert "X-Team-Id" not in seen["headers"]
