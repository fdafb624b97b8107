"""Specification of :class:`~invoke_middleware.request.PipelineRequest` as the WSGI adapter
builds it."""

from __future__ import annotations

from werkzeug.test import EnvironBuilder

from invoke_middleware import InvokeMiddleware, PipelineRequest


def seen_by_a_resolver(environ: dict[str, object]) -> PipelineRequest:
    seen: list[PipelineRequest] = []

    def resolver(request: PipelineRequest) -> None:
        seen.append(request)

    middleware = InvokeMiddleware(lambda e, s: [], prefix="/api", resolvers=[resolver])
    middleware(environ, lambda status, headers: None)  # type: ignore[arg-type]
    [request] = seen
    return request


def test_path_is_the_decoded_path_info_with_the_prefix_and_without_script_name() -> None:
    environ = EnvironBuilder(
        path="/api/r/containers/echo/a%20b%2Fc", base_url="http://gw.example/mount"
    ).get_environ()
    # A server mounted under /mount keeps the whole request target; werkzeug's builder (3.1)
    # leaves SCRIPT_NAME out of it, which the adapter would take for a rewritten path.
    environ["REQUEST_URI"] = environ["RAW_URI"] = "/mount/api/r/containers/echo/a%20b%2Fc"
    request = seen_by_a_resolver(environ)
    assert request.path == "/api/r/containers/echo/a b/c"


def test_query_is_the_raw_query_string() -> None:
    environ = EnvironBuilder(path="/api/r/containers/echo/x", query_string="a=%20&b").get_environ()
    assert seen_by_a_resolver(environ).query == "a=%20&b"


def test_the_query_string_stays_out_of_the_repr() -> None:
    # A resolver or hook that logs the request would write a token passed in the query.
    environ = EnvironBuilder(
        path="/api/r/containers/echo/x", query_string="access_token=T0SECRET"
    ).get_environ()
    text = repr(seen_by_a_resolver(environ))
    assert "T0SECRET" not in text
    assert "path='/api/r/containers/echo/x'" in text


def test_headers_keep_the_fields_and_content_type() -> None:
    environ = EnvironBuilder(
        path="/api/r/containers/echo/x",
        method="POST",
        data=b"{}",
        headers={"X-App": "1", "Content-Type": "application/json"},
    ).get_environ()
    headers = seen_by_a_resolver(environ).headers
    assert headers.get("x-app") == "1"
    assert headers.get("Content-Type") == "application/json"
    assert headers.get("Content-Length") == "2"
