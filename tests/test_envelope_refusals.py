"""A refused invoke envelope costs memory in proportion to its size, whatever its shape.

Each hostile envelope of :mod:`tests.hostile_envelopes` is sent through the real middleware
(a Flask host, WebTest) and refused with 400, 413 or 431 and a message; the peak of the
memory Python allocated while the request was handled (``tracemalloc``) must stay under
:data:`PEAK_MULTIPLE` times the request plus :data:`PEAK_CONSTANT`. Before the caps were applied
ahead of validation, a 400 KB envelope of this kind grew the process by over a gigabyte.
Timings are in ``bench/bench_refusals.py``, not here.
"""

from __future__ import annotations

import base64
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from invoke_middleware.headers import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_COUNT
from tests.hostile_envelopes import HOSTILE_ENVELOPES
from tests.toolkit.errors import assert_gateway_error
from tests.toolkit.world import World

#: The worst case is a string holding one character beyond U+FFFF: CPython stores the decoded
#: body and then the parsed string at 4 bytes a character (9 times the request, with the raw
#: bytes the host read). Every other shape stays under 4 times.
PEAK_MULTIPLE = 10

#: What a refusal costs whatever the size: the gateway's own objects, the error body, WebTest.
PEAK_CONSTANT = 1 << 20

#: Under, around and over the point where the separators of an envelope outnumber what its
#: header caps allow (the regime changes there: parsed and explained, or refused unparsed).
SIZES = [40_000, 400_000, 3_000_000]

REFUSALS = {
    400: "invalid_request",
    413: "payload_too_large",
    431: "request_header_fields_too_large",
}


def post(world: World, raw: bytes) -> tuple[Any, int]:
    """``raw`` to ``/r/invoke/echo``, and the peak of what was allocated meanwhile."""
    headers = {**world.auth(), "Content-Type": "application/json"}
    tracemalloc.start()
    try:
        response = world.app.post("/r/invoke/echo", raw, headers=headers, expect_errors=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response, peak


@pytest.mark.parametrize("size", [pytest.param(size, id=f"{size // 1000}KB") for size in SIZES])
@pytest.mark.parametrize(
    ("build"), [pytest.param(build, id=name) for name, build in HOSTILE_ENVELOPES]
)
def test_refusal_costs_memory_in_proportion_to_the_request(
    world: World, build: Callable[[int], bytes], size: int
) -> None:
    raw = build(size)
    post(world, b'{"method": "get"}')  # the first refusal imports jsonschema, once
    response, peak = post(world, raw)
    status = response.status_int
    assert status in REFUSALS, status
    payload = assert_gateway_error(response, status, REFUSALS[status])
    if status == 400:
        assert payload["details"]
        assert len(payload["details"]) <= 21
    assert peak <= PEAK_MULTIPLE * len(raw) + PEAK_CONSTANT, (peak, len(raw))
    assert world.upstream.received == []


def test_refusal_of_many_problems_lists_twenty_and_says_there_are_more(world: World) -> None:
    headers = {f"X {i}": "v" for i in range(DEFAULT_MAX_HEADER_COUNT)}
    response = world.invoke("echo", {"method": "GET", "path": "/", "headers": headers}, status=400)
    details = response.json["details"]
    assert len(details) == 21
    assert details[-1] == {"pointer": "", "message": "more problems were found and not listed"}


def test_envelope_at_every_cap_is_still_relayed(world: World) -> None:
    # As many header fields and bytes as allowed, each value full of commas and brackets,
    # and a 1 MiB body: the caps refuse none of it.
    count = DEFAULT_MAX_HEADER_COUNT - 10  # room for what the gateway adds on the way up
    value = ",[{" * ((DEFAULT_MAX_HEADER_BYTES // DEFAULT_MAX_HEADER_COUNT - 12) // 3)
    body = bytes(range(256)) * 4096
    envelope = {
        "method": "POST",
        "path": "/upload",
        "body_base64": base64.b64encode(body).decode(),
        "headers": {f"X-{i:03d}": value for i in range(count)},
    }
    world.invoke("echo", envelope)
    received = world.upstream.last()
    assert received.body == body
    assert [value for name, value in received.headers if name.startswith("X-")][:count] == [
        value
    ] * count
