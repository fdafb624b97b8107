"""Specification of :mod:`invoke_middleware.target` (docs/contract.md §5)."""

from __future__ import annotations

import pytest

from invoke_middleware.errors import InvalidPathError
from invoke_middleware.target import MAX_PATH_LENGTH, MAX_QUERY_LENGTH, build_target_url
from tests.hostile_paths import HOSTILE_PATHS, RELAY_SAFE

BASE = "http://10.0.0.7:8080/api"


@pytest.mark.parametrize(
    "path", [pytest.param(path, id=case_id) for case_id, path in HOSTILE_PATHS]
)
def test_a_hostile_path_is_refused_as_invalid_path(path: str) -> None:
    with pytest.raises(InvalidPathError) as caught:
        build_target_url(BASE, path)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_path"


@pytest.mark.parametrize(
    "path", [pytest.param(path, id=case_id) for case_id, path in HOSTILE_PATHS]
)
def test_a_refusal_message_never_echoes_the_path(path: str) -> None:
    with pytest.raises(InvalidPathError) as caught:
        build_target_url(BASE, path)
    message = caught.value.message
    assert message.isascii()
    assert message.isprintable()
    assert len(message) <= 80
    if len(path) > 3:
        assert path not in message


@pytest.mark.parametrize(
    ("path", "query"),
    [
        pytest.param(path, query, id=case_id)
        for case_id, target in HOSTILE_PATHS
        if case_id in RELAY_SAFE
        for path, _, query in [target.partition("?")]
    ],
)
def test_a_relay_safe_hostile_path_is_refused_with_the_query_given_apart(
    path: str, query: str
) -> None:
    with pytest.raises(InvalidPathError):
        build_target_url(BASE, path, query)


def test_the_hostile_table_has_unique_ids_and_enough_cases() -> None:
    ids = [case_id for case_id, _ in HOSTILE_PATHS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


@pytest.mark.parametrize(
    ("case_id", "relay_safe"),
    [
        pytest.param("encoded-dot-dot-lower", True, id="encoded-dot-dot"),
        pytest.param("leading-double-slash", True, id="double-slash"),
        pytest.param("slash-backslash", True, id="backslash"),
        pytest.param("crlf-header-injection", False, id="crlf"),
        pytest.param("space", False, id="space"),
        pytest.param("fullwidth-solidus", False, id="unicode"),
        pytest.param("scheme-http", False, id="no-leading-slash"),
        pytest.param("fragment", False, id="fragment"),
    ],
)
def test_relay_safe_marks_only_paths_a_request_line_can_carry(
    case_id: str, relay_safe: bool
) -> None:
    assert (case_id in RELAY_SAFE) is relay_safe


@pytest.mark.parametrize(
    ("base_url", "path", "expected"),
    [
        pytest.param("http://h:1", "/", "http://h:1/", id="root-on-bare-origin"),
        pytest.param("http://h:1/", "/", "http://h:1/", id="root-on-origin-with-slash"),
        pytest.param("http://h:1/api", "/", "http://h:1/api/", id="root-on-base-path"),
        pytest.param(
            "http://h:1/api", "/v1/x?q=1", "http://h:1/api/v1/x?q=1", id="base-path-and-query"
        ),
        pytest.param(
            "http://h:1/api/", "/v1/x?q=1", "http://h:1/api/v1/x?q=1", id="base-trailing-slash"
        ),
        pytest.param("http://h:1/a/b/", "/c", "http://h:1/a/b/c", id="deep-base-path"),
        pytest.param(
            "https://svc.example.com", "/x", "https://svc.example.com/x", id="https-no-port"
        ),
        pytest.param("http://[::1]:8080", "/x", "http://[::1]:8080/x", id="ipv6-origin"),
        pytest.param("http://h:1", "/a%20b", "http://h:1/a%20b", id="encoded-space-kept"),
        pytest.param("http://h:1", "/caf%C3%A9", "http://h:1/caf%C3%A9", id="encoded-utf8-kept"),
        pytest.param("http://h:1", "/a%3Fb", "http://h:1/a%3Fb", id="encoded-question-mark"),
        pytest.param("http://h:1", "/a%23b", "http://h:1/a%23b", id="encoded-hash"),
        pytest.param("http://h:1", "/100%25", "http://h:1/100%25", id="encoded-percent"),
        pytest.param("http://h:1", "/a%2eb", "http://h:1/a%2eb", id="encoded-dot-in-a-name"),
        pytest.param("http://h:1", "/caf%E9", "http://h:1/caf%E9", id="latin-1-byte-in-a-name"),
        pytest.param(
            "http://h:1", "/a%E2%80%8Bb", "http://h:1/a%E2%80%8Bb", id="ignorable-in-a-name"
        ),
        pytest.param(
            "http://h:1",
            "/%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB",
            "http://h:1/%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB",
            id="emoji-joined-by-zwj",
        ),
        pytest.param("http://h:1", "/%C2%BD", "http://h:1/%C2%BD", id="fraction-slash-under-nfkc"),
        pytest.param("http://h:1", "/...", "http://h:1/...", id="three-dots"),
        pytest.param("http://h:1", "/a./.b", "http://h:1/a./.b", id="dots-inside-names"),
        pytest.param(
            "http://h:1",
            "/.well-known/openapi.json",
            "http://h:1/.well-known/openapi.json",
            id="dot-file",
        ),
        pytest.param("http://h:1", "/users/@me", "http://h:1/users/@me", id="at-after-slash"),
        pytest.param("http://h:1", "/a:b", "http://h:1/a:b", id="colon-in-segment"),
        pytest.param("http://h:1", "/a//b", "http://h:1/a//b", id="empty-segment-inside"),
        pytest.param("http://h:1", "/invoke", "http://h:1/invoke", id="container-invoke"),
        pytest.param(
            "http://h:1",
            "/!$&'()*+,;=~_-.x",
            "http://h:1/!$&'()*+,;=~_-.x",
            id="sub-delims",
        ),
        pytest.param("http://h:1", "/a;v=1", "http://h:1/a;v=1", id="path-parameter"),
        pytest.param(
            "http://h:1", "/x?next=/a?b", "http://h:1/x?next=/a?b", id="query-with-slash-and-?"
        ),
        pytest.param(
            "http://h:1", "/x?p=%2F%2e%00", "http://h:1/x?p=%2F%2e%00", id="query-escapes-opaque"
        ),
        pytest.param(
            "http://h:1", "/x?a=|{}[]^`\"'", "http://h:1/x?a=|{}[]^`\"'", id="query-visible-ascii"
        ),
        pytest.param("http://h:1", "/x?", "http://h:1/x?", id="bare-question-mark-kept"),
        pytest.param("http://h:1", "/x?a=1&a=2", "http://h:1/x?a=1&a=2", id="repeated-params"),
        # Non-ASCII letters whose UTF-8 holds bytes 0x80-0x9F (C1 if read as Latin-1, which no
        # UTF-8 decoder does), a lone 0x85 (no character in UTF-8) and a no-break space.
        pytest.param("http://h:1", "/%d1%80%d1%83", "http://h:1/%d1%80%d1%83", id="cyrillic"),
        pytest.param("http://h:1", "/%e2%80%a6", "http://h:1/%e2%80%a6", id="ellipsis"),
        pytest.param("http://h:1", "/a%85b", "http://h:1/a%85b", id="lone-byte-85"),
        pytest.param("http://h:1", "/a%c2%a0b", "http://h:1/a%c2%a0b", id="no-break-space"),
    ],
)
def test_an_allowed_path_is_appended_to_the_base_url(
    base_url: str, path: str, expected: str
) -> None:
    assert build_target_url(base_url, path) == expected


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param("/", "", "http://h:1/api/", id="root-no-query"),
        pytest.param("/x", "a=1&b=%20", "http://h:1/api/x?a=1&b=%20", id="query-given-apart"),
        pytest.param("/x", "", "http://h:1/api/x", id="empty-query-adds-no-question-mark"),
    ],
)
def test_the_relay_query_is_appended_after_a_question_mark(
    path: str, query: str, expected: str
) -> None:
    assert build_target_url("http://h:1/api", path, query) == expected


def test_a_question_mark_in_the_path_is_refused_when_the_query_is_given_apart() -> None:
    with pytest.raises(InvalidPathError):
        build_target_url(BASE, "/x?y=1", "z=2")


def test_a_path_of_exactly_the_maximum_length_is_allowed() -> None:
    path = "/" + "a" * (MAX_PATH_LENGTH - 1)
    assert build_target_url("http://h:1", path) == "http://h:1" + path


def test_a_query_of_exactly_the_maximum_length_is_allowed() -> None:
    query = "a" * MAX_QUERY_LENGTH
    assert build_target_url("http://h:1", "/x", query) == "http://h:1/x?" + query


def test_the_length_limits_can_be_lowered() -> None:
    with pytest.raises(InvalidPathError, match="longer than 8 characters"):
        build_target_url("http://h:1", "/abcdefgh", max_path_length=8)
    with pytest.raises(InvalidPathError, match="longer than 3 characters"):
        build_target_url("http://h:1", "/x", "a=12", max_query_length=3)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("http://evil/", "scheme", id="scheme"),
        pytest.param("//evil/", "begin with //", id="double-slash"),
        pytest.param("/a\\b", "backslash", id="backslash"),
        pytest.param("u@evil/x", "user information", id="userinfo"),
        pytest.param("/a\r\nb", "control", id="control"),
        pytest.param("/a#b", "fragment", id="fragment"),
        pytest.param("/%2E./x", r"\. or \.\. segments", id="dot-segment"),
        pytest.param("/a%2Fb", "encoded /", id="encoded-slash"),
        pytest.param("/a%2", "malformed", id="malformed-escape"),
        pytest.param("/\uff0f", "ASCII", id="non-ascii"),
        pytest.param("x", "begin with /", id="relative"),
        pytest.param("/a|b", "percent-encoded", id="outside-allow-list"),
        pytest.param("/?\\", "query must not contain a backslash", id="backslash-in-query"),
        pytest.param("/a%0d%0ab", "encoded control characters", id="encoded-crlf"),
        pytest.param("/%c0%ae%c0%ae/x", r"\. or \.\. segments", id="overlong-dot-dot"),
        pytest.param("/..%3f/x", r"\. or \.\. segments", id="dot-dot-encoded-question-mark"),
        pytest.param("/..%c0%afx", "encoded separators", id="overlong-slash"),
        pytest.param("/..%ef%bc%8fx", "encoded separators", id="encoded-fullwidth-solidus"),
        pytest.param("/a%c0%8d%c0%8ab", "encoded control characters", id="overlong-crlf"),
        pytest.param("/a%c0%80b", "encoded control characters", id="overlong-nul"),
        pytest.param("/a%c2%85b", "encoded control characters", id="next-line"),
        pytest.param("/a%e2%80%a8b", "encoded control characters", id="line-separator"),
    ],
)
def test_the_refusal_says_why(path: str, reason: str) -> None:
    with pytest.raises(InvalidPathError, match=reason):
        build_target_url(BASE, path)


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("ftp://h/x", id="not-http"),
        pytest.param("/relative", id="no-origin"),
        pytest.param("http:///x", id="no-host"),
        pytest.param("http://h:1/api?x=1", id="query"),
        pytest.param("http://h:1/api#frag", id="fragment"),
    ],
)
def test_a_malformed_base_url_is_a_configuration_error(base_url: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        build_target_url(base_url, "/x")


def test_the_origin_comes_from_the_base_url_only() -> None:
    url = build_target_url("https://svc.example.com:8443/base", "/evil.example:80/@x")
    assert url.startswith("https://svc.example.com:8443/base/")
