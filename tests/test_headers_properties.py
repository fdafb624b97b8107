"""Property tests of the header rules (docs/contract.md §4, §6): whatever a caller or a container
sends, no hop-by-hop field, no field that ``Connection`` names, and none of the caller's
credentials crosses the gateway, and the gateway's own fields appear exactly once."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from invoke_middleware.headers import (
    GATEWAY_HEADERS,
    HOP_BY_HOP_HEADERS,
    connection_tokens,
    filter_response_headers,
    forward_request_headers,
    is_loop,
)

NAMES = st.sampled_from(
    [
        *sorted(HOP_BY_HOP_HEADERS | GATEWAY_HEADERS),
        *["authorization", "x-team-id", "proxy-foo", "cookie", "accept", "x-app", "x-private"],
    ]
).flatmap(
    # Any capitalisation: field names are case-insensitive (RFC 9110 §5.1).
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )
)
VALUES = st.sampled_from(["v", "close", "x-private, X-App", "keep-alive, x-team-id", " 1.1 a "])
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=12)

ADDED = {"via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}


def forward(fields: list[tuple[str, str]], envelope: list[tuple[str, str]] | None) -> list[str]:
    out = forward_request_headers(
        fields,
        remote_addr="10.0.0.1",
        scheme="https",
        host="gw.example",
        request_id="rid-1",
        envelope=envelope,
    )
    return [name.lower() for name, _ in out]


@settings(max_examples=500, deadline=None)
@given(FIELDS)
def test_the_relay_forwards_no_hop_by_hop_field_nor_the_callers_credentials(
    fields: list[tuple[str, str]],
) -> None:
    names = forward(fields, None)
    named = connection_tokens(fields)
    for name in names:
        if name in ADDED:
            continue
        assert name not in HOP_BY_HOP_HEADERS
        assert name not in GATEWAY_HEADERS
        assert name not in named
        assert name not in {"authorization", "x-team-id"}
        assert not name.startswith("proxy-")
    for name in ADDED:
        assert names.count(name) == 1


@settings(max_examples=500, deadline=None)
@given(FIELDS, FIELDS)
def test_invoke_forwards_only_the_envelopes_end_to_end_fields(
    outer: list[tuple[str, str]], envelope: list[tuple[str, str]]
) -> None:
    names = forward(outer, envelope)
    allowed = {name.lower() for name, _ in envelope}
    named = connection_tokens(envelope)
    for name in names:
        if name in ADDED:
            continue
        assert name in allowed
        assert name not in HOP_BY_HOP_HEADERS | GATEWAY_HEADERS
        assert name not in named
    for name in ADDED:
        assert names.count(name) == 1


@settings(max_examples=500, deadline=None)
@given(FIELDS)
def test_responses_lose_hop_by_hop_fields_and_fake_gateway_markers(
    fields: list[tuple[str, str]],
) -> None:
    named = connection_tokens(fields)
    for name, _ in filter_response_headers(fields):
        lowered = name.lower()
        assert lowered not in HOP_BY_HOP_HEADERS
        assert lowered not in named
        assert lowered not in {"x-invoke-error", "x-request-id"}


def _loops_by_element(value: str, pseudonym: str) -> bool:
    """The definition of a loop, read element by element (RFC 9110 §7.6.3)."""
    for element in re.sub(r"\([^()]*\)", "", value).split(","):
        parts = element.split()
        if len(parts) >= 2 and parts[1].lower() == pseudonym.lower():
            return True
    return False


VIA_PIECES = st.sampled_from(
    [",", " ", "\t", "1.1", "HTTP/2", "gw", "GW", "gw-2", "xgw", "(", ")", "(c, gw)", "a"]
)


@settings(max_examples=500)
@given(st.lists(VIA_PIECES, max_size=12).map("".join))
def test_is_loop_finds_exactly_the_elements_received_by_the_gateway(value: str) -> None:
    # One scan of the field by a pattern: it must agree with the element-by-element reading.
    assert is_loop([("Via", value)], "gw") is _loops_by_element(value, "gw")
