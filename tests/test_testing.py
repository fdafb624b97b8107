from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from invoke_middleware.auth import (
    CredentialKind,
    CredentialResolver,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    JWTResolver,
    Role,
)
from invoke_middleware.errors import PayloadTooLargeError, UpstreamError, reason_phrase
from invoke_middleware.testing import (
    MockTransport,
    RecordingTransport,
    generate_keypair,
    generate_rsa_keypair,
    issue_test_credential,
    make_response,
    mint_jwt,
    read_body,
)
from invoke_middleware.transport.base import UpstreamRequest, UpstreamResponse
from tests.auth.helpers import gateway_request

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
SECRET = "testing-secret-" + "t" * 40


@pytest.fixture
def memberships() -> InMemoryMembershipStore:
    members = InMemoryMembershipStore()
    members.set_role(TEAM, "alice", Role.ADMIN)
    return members


def test_minted_hs256_tokens_pass_a_jwt_resolver(memberships: InMemoryMembershipStore) -> None:
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"], issuer="idp")
    token = mint_jwt(secret_or_private_key=SECRET, sub="alice", iss="idp")

    principal = resolver(gateway_request(token=token, team=str(TEAM)))

    assert principal is not None
    assert (principal.user_id, principal.role) == ("alice", Role.ADMIN)


def test_minted_rs256_tokens_carry_the_kid_and_verify_with_the_public_key(
    memberships: InMemoryMembershipStore,
) -> None:
    pair = generate_rsa_keypair()
    token = mint_jwt(
        secret_or_private_key=pair.private_pem, sub="alice", algorithm="RS256", kid="k1"
    )
    resolver = JWTResolver(memberships, key=pair.public_pem, algorithms=["RS256"])

    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert resolver(gateway_request(token=token, team=str(TEAM))) is not None


def test_mint_jwt_sets_iat_and_exp_and_can_leave_claims_out() -> None:
    before = int(time.time())
    full = jwt.decode(
        mint_jwt(secret_or_private_key=SECRET, sub="alice", expires_in=60, role="x"),
        SECRET,
        algorithms=["HS256"],
    )
    bare = jwt.decode(
        mint_jwt(secret_or_private_key=SECRET, sub=None, expires_in=None),
        SECRET,
        algorithms=["HS256"],
    )

    assert full["sub"] == "alice"
    assert full["role"] == "x"
    assert before <= full["iat"] <= before + 5
    assert full["exp"] == full["iat"] + 60
    assert "sub" not in bare
    assert "exp" not in bare


def test_a_key_pair_never_prints_its_private_half() -> None:
    pair = generate_keypair("ES256")

    assert b"PRIVATE KEY" in pair.private_pem
    assert "PRIVATE" not in repr(pair)
    assert pair.public_jwk("k1")["kid"] == "k1"


def test_generate_keypair_refuses_a_symmetric_algorithm() -> None:
    with pytest.raises(ValueError, match="HS256"):
        generate_keypair("HS256")


@pytest.mark.parametrize(
    ("kind", "user_id", "expected"),
    [
        pytest.param(
            CredentialKind.INTEGRATION, None, CredentialKind.INTEGRATION, id="integration"
        ),
        pytest.param(CredentialKind.DEVICE, "alice", CredentialKind.DEVICE, id="device"),
    ],
)
def test_issued_test_credentials_pass_a_credential_resolver(
    memberships: InMemoryMembershipStore,
    kind: CredentialKind,
    user_id: str | None,
    expected: CredentialKind,
) -> None:
    store = InMemoryCredentialStore()
    key = issue_test_credential(store, kind, TEAM, user_id)

    principal = CredentialResolver(store, memberships)(gateway_request(token=key))

    assert CredentialKind.of_key(key) is kind
    assert principal is not None
    assert principal.kind is expected


def _request(body: bytes | Iterator[bytes] | None) -> UpstreamRequest:
    return UpstreamRequest(method="POST", url="http://upstream.test/items", headers=(), body=body)


def test_mock_transport_hands_the_handler_the_whole_body_as_bytes() -> None:
    seen: list[UpstreamRequest] = []

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        seen.append(request)
        return make_response(201, body=b"created")

    transport = MockTransport(handler)
    response = transport.send(_request(iter([b"ab", b"", b"cd"])))

    assert seen[0].body == b"abcd"
    assert (response.status, response.reason) == (201, "Created")
    assert b"".join(response) == b"created"


@pytest.mark.parametrize("status", [200, 418, 499, 599, 999])
def test_make_response_takes_its_reason_from_the_gateways_one_table(status: int) -> None:
    assert make_response(status).reason == reason_phrase(status)


def test_mock_transport_refuses_requests_once_closed() -> None:
    transport = MockTransport(lambda request: make_response())
    transport.close()

    with pytest.raises(RuntimeError):
        transport.send(_request(None))


def test_make_response_streams_chunks_and_reads_content_length_from_headers() -> None:
    response = make_response(
        200, headers=[("Content-Length", "6"), ("Set-Cookie", "a=1")], chunks=[b"abc", b"def"]
    )

    assert response.content_length == 6
    assert list(response.headers) == [("Content-Length", "6"), ("Set-Cookie", "a=1")]
    assert list(response) == [b"abc", b"def"]


def test_make_response_raises_an_exception_found_among_its_chunks() -> None:
    response = make_response(chunks=[b"partial", UpstreamError()])
    body = iter(response)

    assert next(body) == b"partial"
    with pytest.raises(UpstreamError):
        next(body)
    assert list(body) == []


def test_a_closed_response_yields_nothing_more() -> None:
    response = make_response(chunks=[b"one", b"two"])
    body = iter(response)
    assert next(body) == b"one"

    response.close()

    assert list(body) == []


def test_recording_transport_records_each_request_with_its_body_and_delegates() -> None:
    recorder = RecordingTransport(
        MockTransport(lambda request: make_response(body=read_body(request)))
    )

    first = recorder.send(_request(iter([b"he", b"llo"])))
    recorder.send(_request(None))

    assert [read_body(r) for r in recorder.requests] == [b"hello", b""]
    assert recorder.requests[0].url == "http://upstream.test/items"
    assert b"".join(first) == b"hello"


def test_recording_transport_records_nothing_when_the_callers_body_fails() -> None:
    def too_large() -> Iterator[bytes]:
        yield b"x"
        raise PayloadTooLargeError

    recorder = RecordingTransport(MockTransport(lambda request: make_response()))

    with pytest.raises(PayloadTooLargeError):
        recorder.send(_request(too_large()))
    assert recorder.requests == []


def test_recording_transport_closes_its_inner_transport() -> None:
    inner = MockTransport(lambda request: make_response())
    RecordingTransport(inner).close()

    assert inner.closed


def test_testing_transports_and_responses_close_when_their_with_block_ends() -> None:
    inner = MockTransport(lambda request: make_response(chunks=[b"one", b"two"]))

    with RecordingTransport(inner) as recorder, recorder.send(_request(None)) as response:
        body = iter(response)
        assert next(body) == b"one"

    assert list(body) == []
    assert inner.closed
