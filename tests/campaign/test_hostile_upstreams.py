"""The hostile upstream matrix: whatever one team's upstream writes, the gateway answers that
team with the response or the right gateway error, and the next request on the same pool,
from another team to the same origin, is answered with its own bytes.

Each case runs against :class:`~tests.campaign.hostile_upstream.HostileUpstream`, over plain
TCP and over TLS (a private CA), through the middleware and its default
:class:`~invoke_middleware.transport.http.HTTPTransport`: team A invokes the misbehaving
path; then team B, whose service has the same origin, relays ``/own/<token>`` and must get
exactly ``<token>`` back, never bytes left over from team A's exchange.

Short form: each case once. ``INVOKE_CAMPAIGN=long``: each case 25 times, each time on a
fresh pool, to give races their chance.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import webtest

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    CredentialKind,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    PipelineSettings,
)
from invoke_middleware.transport import HTTPTransport, Timeouts
from tests.campaign.conftest import record_figures, scale
from tests.campaign.hostile_upstream import (
    CASES,
    HELLO,
    LEFTOVER,
    HostileUpstream,
    serve_hostile,
)
from tests.integration.host import host_app
from tests.toolkit.world import OTHER_TEAM, TEAM, make_service
from tests.upstreams import TLSFiles

#: Short enough for CI, long enough for loopback: ``hold`` cases end at the read timeout,
#: an endless interim stream at the total deadline.
TIMEOUTS = Timeouts(connect=2.0, read=0.5, total=2.0)
REPEATS = scale(1, 25)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What team A must get: the container's status and body, or a gateway error code."""

    status: int = 200
    body: bytes = HELLO
    error: str | None = None  # a gateway error code (then ``status`` is the HTTP status)
    errors: tuple[str, ...] = ()  # several codes are right (a reset may hit any phase)
    method: str = "GET"


ANSWER = Outcome()
HEAD_ANSWER = Outcome(body=b"", method="HEAD")


def _error(status: int, *codes: str) -> Outcome:
    return Outcome(status=status, error=codes[0], errors=codes)


# case, expected outcome, then marks for the plain and the TLS run.
MATRIX: list[tuple[str, Outcome, str | None, str | None]] = [
    ("well-formed", ANSWER, None, None),
    ("surplus-same-write", ANSWER, None, None),
    ("surplus-next-write", ANSWER, None, None),
    ("surplus-with-body", ANSWER, None, None),
    ("late-bytes", ANSWER, None, None),
    ("late-bytes-after-50ms", ANSWER, None, None),
    ("head-body-same-write", HEAD_ANSWER, None, None),
    ("head-body-late", HEAD_ANSWER, None, None),
    ("length-short", ANSWER, None, None),
    ("length-long-then-close", _error(502, "upstream_error"), None, None),
    ("length-long-then-hold", _error(504, "upstream_timeout"), None, None),
    ("lengths-conflicting", _error(502, "upstream_error"), None, None),
    ("lengths-conflicting-in-one-field", _error(502, "upstream_error"), None, None),
    ("length-and-chunked", ANSWER, None, None),
    ("chunked-then-surplus", ANSWER, None, None),
    # More interim responses than MAX_INTERIM (16): refused, whether they fit the head limit
    # or keep coming.
    ("interim-storm", _error(502, "upstream_error"), None, None),
    ("interim-endless", _error(502, "upstream_error"), None, None),
    ("reset-before-head", _error(502, "upstream_unreachable"), None, None),
    ("reset-mid-head", _error(502, "upstream_unreachable", "upstream_error"), None, None),
    ("reset-mid-body", _error(502, "upstream_unreachable", "upstream_error"), None, None),
    ("reset-after-body", ANSWER, None, None),
    ("close-after-body", ANSWER, None, None),
    ("close-delimited-body", ANSWER, None, None),
]
#: Over TLS without close_notify this one has another right answer: see the test below.
PLAIN_ONLY = {"close-delimited-body"}


def _params() -> Iterator[object]:
    for case, outcome, plain_defect, tls_defect in MATRIX:
        for scheme, defect in (("http", plain_defect), ("https", tls_defect)):
            if scheme == "https" and case in PLAIN_ONLY:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
            yield pytest.param(scheme, case, outcome, id=f"{scheme}-{case}", marks=marks)


@pytest.fixture(scope="module")
def plain_upstream() -> Iterator[HostileUpstream]:
    with serve_hostile() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def tls_upstream(tls_files: TLSFiles) -> Iterator[HostileUpstream]:
    with serve_hostile(tls_files.server_context()) as upstream:
        yield upstream


@dataclass(frozen=True, kw_only=True)
class TwoTeams:
    """A gateway with one service per team, both at the same upstream origin."""

    app: webtest.TestApp
    middleware: InvokeMiddleware
    key_a: str
    key_b: str

    def invoke_as_a(self, method: str, path: str) -> webtest.TestResponse:
        return self.app.post_json(
            "/r/invoke/ours",
            {"method": method, "path": path},
            headers={"Authorization": f"Bearer {self.key_a}"},
            expect_errors=True,
        )

    def relay_as_b(self, path: str) -> webtest.TestResponse:
        return self.app.get(
            "/r/containers/theirs" + path,
            headers={"Authorization": f"Bearer {self.key_b}"},
            expect_errors=True,
        )


@contextlib.contextmanager
def two_teams(url: str, transport: HTTPTransport) -> Iterator[TwoTeams]:
    """A fresh gateway (so a fresh pool) in front of ``url`` for :data:`TEAM` and
    :data:`OTHER_TEAM`."""
    registry = InMemoryServiceRegistry()
    registry.add(make_service("ours", url))
    registry.add(make_service("theirs", url, team=OTHER_TEAM))
    middleware = InvokeMiddleware(
        host_app().wsgi_app,
        registry=registry,
        transport=transport,
        settings=PipelineSettings(timeouts=TIMEOUTS),
    )
    issue = middleware.credentials.issue
    try:
        yield TwoTeams(
            # No lint: a forged leftover response must reach the assertions, not the linter.
            app=webtest.TestApp(middleware, lint=False),
            middleware=middleware,
            key_a=issue(CredentialKind.INTEGRATION, team_id=TEAM).key,
            key_b=issue(CredentialKind.INTEGRATION, team_id=OTHER_TEAM).key,
        )
    finally:
        middleware.close()


def _transport(scheme: str, tls_files: TLSFiles) -> HTTPTransport:
    return HTTPTransport(ca_bundle=tls_files.ca_cert) if scheme == "https" else HTTPTransport()


def assert_outcome(response: webtest.TestResponse, expected: Outcome) -> None:
    """Team A got the container's answer, or the gateway's own error, as expected."""
    if expected.error is not None:
        assert response.status_int == expected.status, response.body[:300]
        assert response.headers.get(ERROR_MARKER_HEADER) in expected.errors
        assert response.json["code"] in expected.errors
        assert LEFTOVER.decode() not in response.text
        return
    assert response.status_int == 200, response.body[:300]
    assert response.headers.get(ERROR_MARKER_HEADER) is None
    answer = response.json
    assert answer["status_code"] == expected.status
    assert base64.b64decode(answer["body_base64"]) == expected.body


def assert_own_answer(gateway: TwoTeams) -> None:
    """Team B, next on the same pool, gets exactly its own bytes."""
    token = uuid.uuid4().hex
    response = gateway.relay_as_b(f"/own/{token}")

    assert LEFTOVER not in response.body, "team B read bytes left over from team A"
    assert response.status_int == 200, response.body[:300]
    assert response.body == token.encode()


@pytest.mark.parametrize(("scheme", "case", "expected"), list(_params()))
def test_misbehaving_upstream_leaves_nothing_for_the_next_team(
    scheme: str,
    case: str,
    expected: Outcome,
    plain_upstream: HostileUpstream,
    tls_upstream: HostileUpstream,
    tls_files: TLSFiles,
) -> None:
    upstream = tls_upstream if scheme == "https" else plain_upstream
    for _ in range(REPEATS):
        with two_teams(upstream.url, _transport(scheme, tls_files)) as gateway:
            # The pool holds one idle connection to the origin: a well-formed exchange first,
            # so the misbehaving one may run on a reused connection too.
            assert_own_answer(gateway)
            upstream.case_written.clear()
            upstream.late_written.clear()
            assert_outcome(gateway.invoke_as_a(expected.method, f"/case/{case}"), expected)
            # Whatever the upstream wrote is on its way before the connection is reused: the
            # pool must see it. (Bytes written after the reuse are the "later" cases.)
            assert upstream.case_written.wait(5)
            if CASES[case].then == "late":
                assert upstream.late_written.wait(5)
            assert_own_answer(gateway)
    record_figures("hostile", {"case": f"{scheme}-{case}", "exchanges": 3 * REPEATS})


def test_tls_body_delimited_by_a_close_without_close_notify_is_incomplete(
    tls_upstream: HostileUpstream, tls_files: TLSFiles
) -> None:
    with two_teams(tls_upstream.url, _transport("https", tls_files)) as gateway:
        response = gateway.invoke_as_a("GET", "/case/close-delimited-body")

        assert_outcome(response, _error(502, "upstream_error"))
        assert_own_answer(gateway)
