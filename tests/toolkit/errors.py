"""The shape every error the gateway produces itself must have (README, "Errors")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import webtest

from invoke_middleware import ERROR_MARKER_HEADER, REQUEST_ID_HEADER

#: Texts that would mean an exception's insides leaked into an error body.
_LEAKS = ("Traceback", 'File "', "Error:", "Errno")


def assert_gateway_error(
    response: Any, status: int, code: str, *, hidden: Sequence[str] = ()
) -> dict[str, Any]:
    """Assert that ``response`` is the gateway's own error ``code``; return its JSON body.

    ``response`` is a WebTest response or a reply read off a socket (anything with ``status``,
    ``header(name)`` and ``body``). ``hidden`` lists texts (an upstream's answer, a file
    name) that must not leak into it.
    """
    header: Callable[[str], str | None]
    if isinstance(response, webtest.TestResponse):
        actual, header, body = response.status_int, response.headers.get, response.body
    else:
        actual, header, body = response.status, response.header, response.body
    assert actual == status, (actual, body[:300])
    assert header(ERROR_MARKER_HEADER) == code
    request_id = header(REQUEST_ID_HEADER)
    assert request_id
    assert (header("Content-Type") or "").startswith("application/json")
    payload: dict[str, Any] = json.loads(body)
    assert payload["code"] == code
    assert payload["request_id"] == request_id
    assert isinstance(payload["error_message"], str)
    assert payload["error_message"]
    # The request id is random hex: it may spell a hidden text ("111") by chance.
    text = body.decode().replace(request_id, "")
    for leak in (*_LEAKS, *hidden):
        assert leak not in text
    return payload
