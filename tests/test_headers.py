"""Specification of :mod:`invoke_middleware.headers` (docs/contract.md §3, §4, §6)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence

import pytest

from invoke_middleware.errors import HeadersTooLargeError
from invoke_middleware.headers import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_PSEUDONYM,
    GATEWAY_HEADERS,
    HOP_BY_HOP_HEADERS,
    MAX_CONNECTION_TOKENS,
    ForwardingRules,
    Headers,
    check_header_limits,
    choose_request_id,
    connection_tokens,
    filter_response_headers,
    fold_response_headers,
    forward_request_headers,
    is_loop,
    is_safe_value,
    is_token,
)

Pairs = list[tuple[str, str]]
Fields = Sequence[tuple[str, str]]

ADDED = {"via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}


def relay(incoming: Pairs, rules: ForwardingRules | None = None) -> Fields:
    return forward_request_headers(
        incoming,
        remote_addr="203.0.113.9",
        scheme="https",
        host="gw.example.com",
        request_id="rid-1",
        rules=rules or ForwardingRules(),
    )


def invoke(incoming: Pairs, envelope: Pairs) -> Fields:
    return forward_request_headers(
        incoming,
        remote_addr="203.0.113.9",
        scheme="https",
        host="gw.example.com",
        request_id="rid-1",
        envelope=envelope,
    )


def end_to_end(headers: Fields) -> Pairs:
    """The forwarded fields without the five the gateway adds."""
    return [(name, value) for name, value in headers if name.lower() not in ADDED]


def added(headers: Fields) -> dict[str, str]:
    return {name.lower(): value for name, value in headers if name.lower() in ADDED}


HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Host",
    "Content-Length",
    "Expect",
]

GATEWAY_OWN = [
    "X-Invoke-Error",
    "X-Request-ID",
    "Via",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Url-Scheme",
    "Front-End-Https",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Cluster-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "Forwarded",
]


def test_the_gateways_own_fields_are_the_ones_the_contract_lists() -> None:
    assert {name.lower() for name in GATEWAY_OWN} == GATEWAY_HEADERS


def test_the_hop_by_hop_set_is_the_one_spec_section_6_lists() -> None:
    assert {name.lower() for name in HOP_BY_HOP} == HOP_BY_HOP_HEADERS


# --- upward: the catch-all relay ----------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in HOP_BY_HOP])
@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(str, id="as-written"),
        pytest.param(str.lower, id="lower"),
        pytest.param(str.upper, id="upper"),
    ],
)
def test_the_relay_drops_every_hop_by_hop_field_in_any_case(
    name: str, spelling: Callable[[str], str]
) -> None:
    sent = [("Accept", "*/*"), (spelling(name), "x"), ("X-App", "1")]
    assert end_to_end(relay(sent)) == [("Accept", "*/*"), ("X-App", "1")]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in GATEWAY_OWN])
def test_the_relay_drops_the_gateways_own_fields_sent_by_the_caller(name: str) -> None:
    sent = [(name, "spoofed"), (name.lower(), "spoofed"), ("Accept", "*/*")]
    forwarded = relay(sent)
    assert end_to_end(forwarded) == [("Accept", "*/*")]
    assert "spoofed" not in {value for _, value in forwarded}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Authorization", id="authorization"),
        pytest.param("authorization", id="authorization-lower"),
        pytest.param("X-Team-ID", id="team-id"),
        pytest.param("x-team-id", id="team-id-lower"),
        pytest.param("Proxy-Foo", id="proxy-anything"),
        pytest.param("PROXY-Token", id="proxy-upper"),
        pytest.param("Proxy-Authorization", id="proxy-authorization"),
    ],
)
def test_the_relay_never_forwards_the_callers_credentials(name: str) -> None:
    assert end_to_end(relay([(name, "secret"), ("Accept", "*/*")])) == [("Accept", "*/*")]


def test_the_relay_keeps_end_to_end_fields_with_repeats_and_order() -> None:
    sent = [
        ("Accept", "text/html"),
        ("Cookie", "a=1"),
        ("X-Custom", "one"),
        ("Content-Type", "application/json"),
        ("x-custom", "two"),
        ("Accept", "application/json"),
        ("Proxyish", "kept"),
    ]
    assert end_to_end(relay(sent)) == sent


@pytest.mark.parametrize(
    ("connection_fields", "dropped"),
    [
        pytest.param(["X-A"], {"X-A"}, id="one-token"),
        pytest.param(["x-a, X-B"], {"X-A", "X-B"}, id="comma-list-any-case"),
        pytest.param(["X-A", "x-b"], {"X-A", "X-B"}, id="several-connection-fields"),
        pytest.param([" , X-A ,,  "], {"X-A"}, id="empty-items-and-spaces"),
        pytest.param(["close"], set(), id="close-names-nothing-present"),
        pytest.param(["keep-alive, X-B"], {"X-B"}, id="with-keep-alive"),
    ],
)
def test_the_fields_named_by_connection_are_dropped(
    connection_fields: list[str], dropped: set[str]
) -> None:
    sent = [("Connection", value) for value in connection_fields]
    sent += [("X-A", "1"), ("X-B", "2"), ("X-C", "3")]
    expected = [(n, v) for n, v in sent if n not in dropped and n != "Connection"]
    assert end_to_end(relay(sent)) == expected


# --- upward: the invoke envelope ----------------------------------------------------------


def test_invoke_forwards_the_envelopes_authorization_and_content_type() -> None:
    envelope = [
        ("Authorization", "Bearer container-token"),
        ("Content-Type", "application/json"),
        ("Cookie", "c=1"),
        ("X-Team-ID", "team-field-for-the-container"),
        ("Accept", "a"),
        ("accept", "b"),
    ]
    assert end_to_end(invoke([], envelope)) == envelope


def test_invoke_never_forwards_the_outer_requests_fields() -> None:
    outer = [
        ("Authorization", "Bearer gateway-token"),
        ("X-Team-ID", "0b4d"),
        ("Cookie", "session=1"),
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
    ]
    assert end_to_end(invoke(outer, [("X-Only", "envelope")])) == [("X-Only", "envelope")]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in HOP_BY_HOP + GATEWAY_OWN])
def test_invoke_drops_hop_by_hop_and_gateway_fields_from_the_envelope(name: str) -> None:
    forwarded = invoke([], [(name, "from-envelope"), ("Accept", "*/*")])
    assert end_to_end(forwarded) == [("Accept", "*/*")]
    assert "from-envelope" not in {value for _, value in forwarded}


@pytest.mark.parametrize(
    "name", [pytest.param(n.replace("-", "_"), id=n) for n in GATEWAY_OWN if "-" in n]
)
def test_invoke_drops_gateway_fields_spelled_with_underscores(name: str) -> None:
    # A server that maps "_" and "-" to one environ key (wsgiref, uWSGI) would hand the
    # container X_Forwarded_For as the gateway's X-Forwarded-For.
    forwarded = invoke([], [(name, "from-envelope"), ("X_Custom", "kept")])
    assert end_to_end(forwarded) == [("X_Custom", "kept")]
    assert "from-envelope" not in {value for _, value in forwarded}


def test_invoke_drops_the_fields_the_envelopes_connection_names() -> None:
    envelope = [("Connection", "X-Hop"), ("X-Hop", "1"), ("X-Keep", "2")]
    assert end_to_end(invoke([], envelope)) == [("X-Keep", "2")]


def test_invoke_drops_a_field_its_connection_names_with_underscores() -> None:
    envelope = [("Connection", "X_Hop"), ("X-Hop", "1"), ("X-Keep", "2")]
    assert end_to_end(invoke([], envelope)) == [("X-Keep", "2")]


def test_connection_tokens_are_trimmed_of_spaces_and_tabs_only() -> None:
    fields = [("Connection", " close ,\tX-Hop\t, keep-alive\x85")]
    assert connection_tokens(fields) == {"close", "x-hop", "keep-alive\x85"}


def test_the_outer_connection_does_not_strip_envelope_fields() -> None:
    forwarded = invoke([("Connection", "X-Keep")], [("X-Keep", "2")])
    assert end_to_end(forwarded) == [("X-Keep", "2")]


# --- upward: what the gateway adds ----------------------------------------------------------


def test_the_gateway_appends_its_forwarding_fields_in_a_fixed_order() -> None:
    forwarded = relay([("Accept", "*/*")])
    assert forwarded == (
        ("Accept", "*/*"),
        ("Via", f"1.1 {DEFAULT_PSEUDONYM}"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "gw.example.com"),
        ("X-Request-ID", "rid-1"),
    )


@pytest.mark.parametrize(
    "envelope",
    [pytest.param(None, id="catch-all"), pytest.param([("authorization", "caller")], id="invoke")],
)
def test_an_external_services_credential_replaces_every_authorization_and_comes_last(
    envelope: Pairs | None,
) -> None:
    forwarded = forward_request_headers(
        [("Authorization", "Bearer caller")],
        remote_addr="203.0.113.9",
        scheme="https",
        host="gw.example.com",
        request_id="rid-1",
        envelope=envelope,
        authorization="Bearer service-secret",
    )
    assert [v for k, v in forwarded if k.lower() == "authorization"] == ["Bearer service-secret"]
    assert forwarded[-1] == ("Authorization", "Bearer service-secret")


def test_via_is_appended_to_every_existing_via_element() -> None:
    sent = [("Via", "1.0 fred, 1.1 p.example (Apache/1.1)"), ("Via", "HTTP/2 edge")]
    assert added(relay(sent))["via"] == (
        f"1.0 fred, 1.1 p.example (Apache/1.1), HTTP/2 edge, 1.1 {DEFAULT_PSEUDONYM}"
    )


def test_invoke_takes_via_from_the_outer_request_not_the_envelope() -> None:
    forwarded = invoke([("Via", "1.1 lb")], [("Via", "1.1 spoof")])
    assert added(forwarded)["via"] == f"1.1 lb, 1.1 {DEFAULT_PSEUDONYM}"


def test_the_via_pseudonym_is_configurable() -> None:
    forwarded = relay([], ForwardingRules(pseudonym="gw-eu-1"))
    assert added(forwarded)["via"] == "1.1 gw-eu-1"


def test_forwarding_facts_from_the_caller_are_ignored_without_trusted_hops() -> None:
    sent = [
        ("X-Forwarded-For", "1.1.1.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    assert added(relay(sent)) == {
        "via": f"1.1 {DEFAULT_PSEUDONYM}",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "gw.example.com",
        "x-request-id": "rid-1",
    }


@pytest.mark.parametrize(
    ("hops", "xff_fields", "expected"),
    [
        pytest.param(1, ["198.51.100.1"], "198.51.100.1, 203.0.113.9", id="one-hop"),
        pytest.param(
            1, ["6.6.6.6, 198.51.100.1"], "198.51.100.1, 203.0.113.9", id="one-hop-drops-spoof"
        ),
        pytest.param(
            2,
            ["6.6.6.6, 198.51.100.1", "10.0.0.2"],
            "198.51.100.1, 10.0.0.2, 203.0.113.9",
            id="two-hops-across-fields",
        ),
        pytest.param(2, ["198.51.100.1"], "203.0.113.9", id="fewer-values-than-hops"),
        pytest.param(1, [], "203.0.113.9", id="no-incoming-field"),
        pytest.param(1, [" , 198.51.100.1 ,"], "198.51.100.1, 203.0.113.9", id="empty-items"),
    ],
)
def test_trusted_hops_keep_the_trusted_part_of_x_forwarded_for(
    hops: int, xff_fields: list[str], expected: str
) -> None:
    sent = [("X-Forwarded-For", value) for value in xff_fields]
    assert added(relay(sent, ForwardingRules(trusted_hops=hops)))["x-forwarded-for"] == expected


@pytest.mark.parametrize(
    ("hops", "protos", "hosts", "proto", "host"),
    [
        pytest.param(1, ["http"], ["app.example.com"], "http", "app.example.com", id="one-hop"),
        pytest.param(
            2,
            ["http, https, http"],
            ["evil.example, a.example, b.example"],
            "https",
            "a.example",
            id="nth-from-right",
        ),
        pytest.param(1, ["HTTPS"], ["[2001:db8::1]:8443"], "https", "[2001:db8::1]:8443", id="v6"),
        pytest.param(
            2, ["http"], ["a.example"], "https", "gw.example.com", id="fewer-values-than-hops"
        ),
        pytest.param(
            1, ["javascript"], ["evil host"], "https", "gw.example.com", id="malformed-values"
        ),
        pytest.param(1, [], [], "https", "gw.example.com", id="absent"),
    ],
)
def test_trusted_hops_take_proto_and_host_from_the_nth_value_from_the_right(
    hops: int, protos: list[str], hosts: list[str], proto: str, host: str
) -> None:
    sent = [("X-Forwarded-Proto", v) for v in protos] + [("X-Forwarded-Host", v) for v in hosts]
    facts = added(relay(sent, ForwardingRules(trusted_hops=hops)))
    assert (facts["x-forwarded-proto"], facts["x-forwarded-host"]) == (proto, host)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"pseudonym": "two words"}, "token", id="pseudonym-not-a-token"),
        pytest.param({"pseudonym": ""}, "token", id="pseudonym-empty"),
        pytest.param({"trusted_hops": -1}, "trusted_hops", id="negative-hops"),
    ],
)
def test_forwarding_rules_refuse_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ForwardingRules(**kwargs)  # type: ignore[arg-type]


# --- loops --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vias", "looped"),
    [
        pytest.param([f"1.1 {DEFAULT_PSEUDONYM}"], True, id="exact"),
        pytest.param(["1.1 INVOKE-Middleware"], True, id="case-insensitive"),
        pytest.param([f"1.0 fred, 1.1 {DEFAULT_PSEUDONYM}, 2 edge"], True, id="inside-a-list"),
        pytest.param(["1.0 fred", f"HTTP/1.1 {DEFAULT_PSEUDONYM}"], True, id="second-field"),
        pytest.param([f"1.1 {DEFAULT_PSEUDONYM} (comment, x)"], True, id="with-comment"),
        pytest.param([f"1.1 fred (1.1 {DEFAULT_PSEUDONYM})"], False, id="only-in-a-comment"),
        pytest.param([f"1.1 fred (a, 1.1 {DEFAULT_PSEUDONYM} b)"], False, id="comment-with-comma"),
        pytest.param([f"1.1 {DEFAULT_PSEUDONYM}-2"], False, id="longer-name"),
        pytest.param([f"1.1 x{DEFAULT_PSEUDONYM}"], False, id="prefixed-name"),
        pytest.param([DEFAULT_PSEUDONYM], False, id="protocol-only-element"),
        pytest.param([], False, id="no-via"),
    ],
)
def test_is_loop_compares_the_received_by_of_each_via_element(
    vias: list[str], looped: bool
) -> None:
    headers = [("Accept", "*/*")] + [("Via", v) for v in vias]
    assert is_loop(headers, DEFAULT_PSEUDONYM) is looped


def test_is_loop_reads_via_in_any_name_case_and_uses_the_given_pseudonym() -> None:
    assert is_loop([("VIA", "1.1 gw-eu-1")], "gw-eu-1")
    assert not is_loop([("via", f"1.1 {DEFAULT_PSEUDONYM}")], "gw-eu-1")


def test_a_forwarded_request_is_a_loop_for_the_same_gateway() -> None:
    assert is_loop(relay([]), DEFAULT_PSEUDONYM)


# --- request ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param("3f2b1c9e-5d1a-4b1e-9f00-0a1b2c3d4e5f", id="uuid"),
        pytest.param("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", id="traceparent"),
        pytest.param("Root=1-67891233-abcdef012345678912345678", id="aws-trace"),
        pytest.param("a.b_c:d@e/f+g=h", id="every-allowed-punctuation"),
        pytest.param("x" * 128, id="longest"),
    ],
)
def test_a_short_safe_request_id_is_kept(incoming: str) -> None:
    assert choose_request_id(incoming) == incoming


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("a b", id="space"),
        pytest.param("a\r\nX-Evil: 1", id="crlf"),
        pytest.param("a\x00", id="nul"),
        pytest.param("a;b", id="semicolon"),
        pytest.param('a"b', id="quote"),
        pytest.param("caf\xe9", id="non-ascii"),
    ],
)
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(incoming: str | None) -> None:
    chosen = choose_request_id(incoming)
    assert re.fullmatch(r"[0-9a-f]{32}", chosen)
    assert chosen != incoming


def test_new_request_ids_differ() -> None:
    assert len({choose_request_id(None) for _ in range(1000)}) == 1000


def test_threads_never_get_the_same_new_request_id() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(mine: list[str]) -> None:
        mine.extend(choose_request_id(None) for _ in range(500))

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({each for mine in drawn for each in mine}) == 8 * 500


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_never_repeats_its_parents_request_ids() -> None:
    choose_request_id(None)  # the parent has new ids at hand
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's side
        os.write(writing, "".join(choose_request_id(None) for _ in range(3)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(child, 0)
    from_child = {text[start : start + 32] for start in range(0, 96, 32)}

    assert len(from_child) == 3
    assert from_child.isdisjoint(choose_request_id(None) for _ in range(3))


# --- the header container -------------------------------------------------------------------


def test_headers_look_names_up_case_insensitively_first_value_first() -> None:
    headers = Headers([("Accept", "a"), ("X-Tag", "one"), ("x-tag", "two"), ("X-TAG", "three")])

    assert headers.get("x-TAG") == "one"
    assert headers.get_all("X-Tag") == ["one", "two", "three"]
    assert "ACCEPT" in headers
    assert headers.get("Missing") is None
    assert headers.get("Missing", "default") == "default"
    assert headers.get_all("Missing") == []
    assert "Missing" not in headers
    assert 1 not in headers
    assert list(headers) == [
        ("Accept", "a"),
        ("X-Tag", "one"),
        ("x-tag", "two"),
        ("X-TAG", "three"),
    ]


def test_headers_compare_by_their_fields_in_order() -> None:
    fields = [("A", "1"), ("B", "2")]

    assert Headers(fields) == Headers(fields)
    assert hash(Headers(fields)) == hash(Headers(fields))
    assert Headers(fields) != Headers(fields[::-1])


# --- downward -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [pytest.param(n, id=n) for n in [*HOP_BY_HOP, "X-Invoke-Error", "X-Request-ID"]]
)
def test_response_filtering_drops_hop_by_hop_and_gateway_marker_fields(name: str) -> None:
    received = [("Content-Type", "text/plain"), (name.upper(), "x"), ("Set-Cookie", "a=1")]
    assert filter_response_headers(received) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
    ]


def test_response_filtering_drops_the_fields_connection_names() -> None:
    received = [("Connection", "X-Hop, x-other"), ("X-Hop", "1"), ("X-Other", "2"), ("ETag", "3")]
    assert filter_response_headers(received) == [("ETag", "3")]


def test_response_filtering_keeps_repeats_order_and_end_to_end_fields() -> None:
    received = [
        ("Set-Cookie", "a=1; Path=/"),
        ("Via", "1.1 upstream-proxy"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "b=2, c=3"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("WWW-Authenticate", "Basic"),
    ]
    assert filter_response_headers(received) == received


def test_response_filtering_drops_the_fields_the_gateway_writes_itself() -> None:
    received = [("ratelimit", "a"), ("ETag", "3"), ("RateLimit-Policy", "b"), ("RateLimit", "c")]
    dropped = frozenset({"ratelimit", "ratelimit-policy"})
    assert filter_response_headers(received, also_drop=dropped) == [("ETag", "3")]
    assert filter_response_headers(received) == received


@pytest.mark.parametrize(
    ("received", "folded"),
    [
        pytest.param([], {}, id="empty"),
        pytest.param(
            [("Content-Type", "application/json")],
            {"content-type": "application/json"},
            id="single-lower-cased",
        ),
        pytest.param(
            [("Set-Cookie", "a=1"), ("set-cookie", "b=2")],
            {"set-cookie": ["a=1", "b=2"]},
            id="set-cookie-repeated-is-an-array",
        ),
        pytest.param(
            [("Set-Cookie", "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT")],
            {"set-cookie": "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT"},
            id="single-set-cookie-stays-a-string",
        ),
        pytest.param(
            [("X-A", "1"), ("Vary", "Accept"), ("x-a", "2"), ("X-A", "3")],
            {"x-a": ["1", "2", "3"], "vary": "Accept"},
            id="three-values-in-order",
        ),
        pytest.param(
            [("X-Empty", ""), ("X-Empty", "")], {"x-empty": ["", ""]}, id="empty-values-kept"
        ),
    ],
)
def test_fold_response_headers_makes_repeated_fields_arrays(
    received: Pairs, folded: dict[str, str | list[str]]
) -> None:
    assert fold_response_headers(received) == folded


# --- limits -------------------------------------------------------------------------------


def test_header_limits_allow_exactly_the_maximum_count() -> None:
    check_header_limits([("A", "1")] * 3, max_count=3, max_bytes=1000)
    with pytest.raises(HeadersTooLargeError, match="more than 3 header fields") as caught:
        check_header_limits([("A", "1")] * 4, max_count=3, max_bytes=1000)
    assert caught.value.status == 431


def test_header_limits_count_bytes_as_on_the_wire() -> None:
    # "Name: value\r\n" is 4 bytes more than the name and the value.
    check_header_limits([("Name", "value")], max_count=10, max_bytes=13)
    with pytest.raises(HeadersTooLargeError, match="larger than 12 bytes"):
        check_header_limits([("Name", "value")], max_count=10, max_bytes=12)


def test_header_limits_have_sane_defaults() -> None:
    check_header_limits([("X-A", "v")] * DEFAULT_MAX_HEADER_COUNT)
    with pytest.raises(HeadersTooLargeError):
        check_header_limits([("X-A", "v")] * (DEFAULT_MAX_HEADER_COUNT + 1))
    with pytest.raises(HeadersTooLargeError):
        check_header_limits([("X-Big", "v" * DEFAULT_MAX_HEADER_BYTES)])


# --- envelope checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("Content-Type", True, id="plain"),
        pytest.param("x-a_b.c~d!#$%&'*+^`|", True, id="every-tchar"),
        pytest.param("", False, id="empty"),
        pytest.param("X A", False, id="space"),
        pytest.param("X:A", False, id="colon"),
        pytest.param("X-A\r\n", False, id="crlf"),
        pytest.param("X(A)", False, id="parenthesis"),
        pytest.param('X"A', False, id="quote"),
        pytest.param("Caf\xe9", False, id="non-ascii"),
    ],
)
def test_is_token_follows_rfc_9110(name: str, valid: bool) -> None:
    assert is_token(name) is valid


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        pytest.param("text/html; charset=utf-8", True, id="plain"),
        pytest.param("", True, id="empty"),
        pytest.param("a\tb", True, id="tab"),
        pytest.param("a\rb", False, id="cr"),
        pytest.param("a\nb", False, id="lf"),
        pytest.param("a\x00b", False, id="nul"),
        pytest.param("a\r\nX-Evil: 1", False, id="header-injection"),
    ],
)
def test_is_safe_value_refuses_cr_lf_and_nul(value: str, safe: bool) -> None:
    assert is_safe_value(value) is safe


def test_connection_tokens_reads_every_connection_field() -> None:
    headers = [("connection", "Keep-Alive, X-A"), ("CONNECTION", " x-b ,"), ("X-A", "1")]
    assert connection_tokens(headers) == frozenset({"keep-alive", "x-a", "x-b"})


def test_connection_tokens_reads_the_first_elements_of_each_field_only() -> None:
    # A container's field of 60,000 commas cost a loop turn each, three times a response.
    names = [f"x-{number}" for number in range(MAX_CONNECTION_TOKENS + 1)]
    headers = [("Connection", ",".join(names)), ("Connection", "x-other" + "," * 60_000)]
    assert connection_tokens(headers) == frozenset([*names[:-1], "x-other"])
    kept = filter_response_headers([*headers, (names[0], "1"), (names[-1], "2")])
    assert kept == [(names[-1], "2")]


# --- what a WSGI server refuses from an application ---------------------------------------

#: The union of the names wsgiref (``wsgiref.util.is_hop_by_hop``), waitress
#: (``waitress.task.hop_by_hop``) and gunicorn (``gunicorn.util.hop_headers``, which it drops)
#: treat as hop-by-hop in an application's response.
WSGI_SERVERS_REFUSE = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailers",
    "Transfer-Encoding",
    "Upgrade",
]


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in WSGI_SERVERS_REFUSE])
def test_response_filtering_drops_every_name_a_wsgi_server_refuses(name: str) -> None:
    received = [("Content-Type", "text/plain"), (name, "x"), (name.lower(), "y")]
    assert filter_response_headers(received) == [("Content-Type", "text/plain")]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a\x01b", id="soh"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\x0bb", id="vertical-tab"),
    ],
)
def test_response_filtering_drops_fields_whose_value_holds_a_control_character(
    value: str,
) -> None:
    received = [("X-Bad", value), ("X-Good", "a\tb caf\xe9")]
    assert filter_response_headers(received) == [("X-Good", "a\tb caf\xe9")]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("X(Bad)", id="parenthesis"),
        pytest.param("X Bad", id="space"),
        pytest.param("X-Bad:", id="colon"),
        pytest.param("X-B\xe4d", id="non-ascii"),
        pytest.param("", id="empty"),
    ],
)
def test_response_filtering_drops_fields_whose_name_is_not_a_token(name: str) -> None:
    # gunicorn answers such a name with its own 500 (InvalidResponseHeaderName).
    received = [(name, "x"), ("X-Good", "1")]
    assert filter_response_headers(received) == [("X-Good", "1")]


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("gw.example.com", id="name"),
        pytest.param("gw.example.com:8443", id="name-port"),
        pytest.param("10.0.0.1", id="ipv4"),
        pytest.param("[2001:db8::1]:8080", id="ipv6-port"),
    ],
)
def test_x_forwarded_host_is_the_callers_host_when_it_is_valid(host: str) -> None:
    sent = forward_request_headers(
        [], remote_addr="203.0.113.9", scheme="https", host=host, request_id="rid-1"
    )
    assert added(sent)["x-forwarded-host"] == host


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("", id="empty"),
        pytest.param("evil.example/path", id="slash"),
        pytest.param("a b", id="space"),
        pytest.param("evil\x01.example", id="control"),
        pytest.param("user@evil.example", id="userinfo"),
        pytest.param("evil.example:port", id="bad-port"),
        pytest.param("evil.example:123456", id="long-port"),
        pytest.param("[::1", id="open-bracket"),
        pytest.param("caf\xe9.example", id="non-ascii"),
    ],
)
def test_x_forwarded_host_is_omitted_when_the_callers_host_is_not_a_host(host: str) -> None:
    sent = forward_request_headers(
        [], remote_addr="203.0.113.9", scheme="https", host=host, request_id="rid-1"
    )
    assert "x-forwarded-host" not in added(sent)
    assert [name for name, _ in sent] == [
        "Via",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Request-ID",
    ]
