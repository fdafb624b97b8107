"""Specification of :mod:`invoke_middleware.errors`: the one reason-phrase table."""

from __future__ import annotations

import pytest

from invoke_middleware.errors import GatewayError, reason_phrase, render_problem


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        pytest.param(200, "OK", id="200"),
        pytest.param(413, "Content Too Large", id="413-rfc-9110-name"),
        pytest.param(414, "URI Too Long", id="414-rfc-9110-name"),
        pytest.param(416, "Range Not Satisfiable", id="416-rfc-9110-name"),
        pytest.param(422, "Unprocessable Content", id="422-rfc-9110-name"),
        pytest.param(431, "Request Header Fields Too Large", id="431-rfc-6585"),
        pytest.param(508, "Loop Detected", id="508-rfc-5842"),
        # RFC 9110 §15: an unregistered code reads as the x00 code of its class.
        pytest.param(299, "OK", id="unregistered-2xx"),
        pytest.param(499, "Bad Request", id="unregistered-4xx"),
        pytest.param(599, "Internal Server Error", id="unregistered-5xx"),
        pytest.param(600, "Unknown", id="out-of-range"),
    ],
)
def test_reason_phrases_are_the_registered_ones_or_their_class(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


def test_the_problem_title_is_the_reason_phrase() -> None:
    class TooMany(GatewayError):
        status = 429
        code = "too_many"

    rendered = render_problem(TooMany(), request_id="rid-1")
    assert b'"title":"Too Many Requests"' in rendered.body
