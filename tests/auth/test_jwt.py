from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from invoke_middleware.auth import CredentialKind, InMemoryMembershipStore, JWTResolver, Role
from invoke_middleware.errors import (
    AuthUnavailableError,
    ForbiddenError,
    InvalidTeamError,
    MissingTeamError,
    UnauthenticatedError,
)
from invoke_middleware.testing import KeyPair, generate_keypair, jwk_set, mint_jwt
from tests.auth.helpers import gateway_request
from tests.auth.jwks_server import JWKSServer
from tests.toolkit.servers import serving

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")
OTHER_TEAM = uuid.UUID("22222222-2222-4222-8222-222222222222")
SECRET = "test-secret-" + "s" * 40
ISSUER = "https://idp.test"
AUDIENCE = "gateway"
KID = "key-1"


@dataclass(frozen=True)
class Keys:
    rsa: KeyPair
    other_rsa: KeyPair


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa=generate_keypair("RS256"), other_rsa=generate_keypair("RS256"))


@pytest.fixture
def memberships() -> InMemoryMembershipStore:
    members = InMemoryMembershipStore()
    members.set_role(TEAM, "alice", Role.MEMBER)
    return members


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JWKSServer]:
    with JWKSServer(jwk_set({KID: keys.rsa})).running() as server:
        yield server


@pytest.fixture
def resolvers(
    keys: Keys, memberships: InMemoryMembershipStore, jwks_server: JWKSServer
) -> dict[str, JWTResolver]:
    common: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE}
    return {
        "hs": JWTResolver(memberships, key=SECRET, algorithms=["HS256"], **common),
        "rs": JWTResolver(memberships, key=keys.rsa.public_pem, algorithms=["RS256"], **common),
        "jwks": JWTResolver(
            memberships, jwks_url=jwks_server.url, algorithms=["RS256"], jwks_timeout=5, **common
        ),
    }


def hs_token(**claims: Any) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, **claims}
    sub = claims.pop("sub", "alice")
    return mint_jwt(secret_or_private_key=SECRET, sub=sub, **claims)


def rs_token(pair: KeyPair, *, kid: str | None = KID, **claims: Any) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, **claims}
    return mint_jwt(
        secret_or_private_key=pair.private_pem, sub="alice", algorithm="RS256", kid=kid, **claims
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _valid_claims() -> dict[str, Any]:
    return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}


def hand_signed(header: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand, so it can carry what a library would refuse to sign."""
    signing_input = (
        _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(_valid_claims()).encode())
    )
    signature = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + _b64(signature)


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


NOW = int(time.time())

ATTACKS: list[Any] = [
    pytest.param(
        "hs", lambda k: hand_signed({"alg": "none", "typ": "JWT"}, None), id="alg-none-hs"
    ),
    pytest.param(
        "rs", lambda k: hand_signed({"alg": "none", "typ": "JWT"}, None), id="alg-none-rs"
    ),
    pytest.param("hs", lambda k: hand_signed({"alg": "None"}, None), id="alg-None-capitalised"),
    pytest.param(
        "rs",
        lambda k: hand_signed({"alg": "HS256"}, k.rsa.public_pem),
        id="hs256-with-rsa-public-key",
    ),
    pytest.param(
        "jwks",
        lambda k: hand_signed({"alg": "HS256", "kid": KID}, k.rsa.public_pem),
        id="hs256-with-jwks-public-key",
    ),
    pytest.param("hs", lambda k: hs_token(exp=NOW - 60), id="expired"),
    pytest.param("rs", lambda k: rs_token(k.rsa, exp=NOW - 60), id="expired-rs"),
    pytest.param("hs", lambda k: hs_token(nbf=NOW + 3600), id="not-yet-valid"),
    pytest.param("hs", lambda k: hs_token(iss="https://evil.test"), id="wrong-iss"),
    pytest.param("hs", lambda k: hs_token(aud="another-service"), id="wrong-aud"),
    pytest.param(
        "hs",
        lambda k: mint_jwt(secret_or_private_key=SECRET, sub="alice", aud=AUDIENCE),
        id="missing-iss",
    ),
    pytest.param(
        "hs",
        lambda k: mint_jwt(secret_or_private_key=SECRET, sub="alice", iss=ISSUER),
        id="missing-aud",
    ),
    pytest.param(
        "hs",
        lambda k: mint_jwt(
            secret_or_private_key=SECRET, sub="alice", expires_in=None, iss=ISSUER, aud=AUDIENCE
        ),
        id="missing-exp",
    ),
    pytest.param("hs", lambda k: hs_token(sub=None), id="missing-sub"),
    pytest.param("hs", lambda k: hs_token(sub=42), id="non-string-sub"),
    pytest.param("hs", lambda k: hs_token(exp="tomorrow"), id="non-numeric-exp"),
    pytest.param("hs", lambda k: tampered(hs_token()), id="tampered-payload"),
    pytest.param("rs", lambda k: tampered(rs_token(k.rsa)), id="tampered-payload-rs"),
    pytest.param(
        "hs",
        lambda k: mint_jwt(
            secret_or_private_key="another-secret-" + "x" * 40,
            sub="alice",
            iss=ISSUER,
            aud=AUDIENCE,
        ),
        id="bad-signature",
    ),
    pytest.param("rs", lambda k: rs_token(k.other_rsa), id="signed-by-another-rsa-key"),
    pytest.param(
        "hs",
        lambda k: mint_jwt(
            secret_or_private_key=SECRET + "x" * 20,
            sub="alice",
            algorithm="HS512",
            iss=ISSUER,
            aud=AUDIENCE,
        ),
        id="algorithm-not-configured",
    ),
    pytest.param("hs", lambda k: rs_token(k.rsa), id="rs256-token-to-hs256-config"),
    pytest.param("jwks", lambda k: rs_token(k.other_rsa, kid="unknown-kid"), id="kid-not-in-jwks"),
    pytest.param("jwks", lambda k: rs_token(k.other_rsa, kid=KID), id="jwks-kid-wrong-key"),
    pytest.param("jwks", lambda k: rs_token(k.rsa, kid=None), id="no-kid-with-jwks"),
    pytest.param("hs", lambda k: "not-a-jwt", id="garbage"),
    pytest.param("hs", lambda k: "a.b.c", id="garbage-segments"),
    pytest.param("jwks", lambda k: "a.b.c", id="garbage-segments-jwks"),
    pytest.param("hs", lambda k: "..", id="empty-segments"),
]


@pytest.mark.parametrize(("resolver_name", "make_token"), ATTACKS)
def test_bad_tokens_are_refused_with_one_and_the_same_401(
    resolvers: dict[str, JWTResolver],
    keys: Keys,
    resolver_name: str,
    make_token: Callable[[Keys], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token(keys)
    caplog.set_level(logging.DEBUG, logger="invoke_middleware")

    with pytest.raises(UnauthenticatedError) as refused:
        resolvers[resolver_name](gateway_request(token=token, team=str(TEAM)))

    assert refused.value.message == UnauthenticatedError.default_message
    assert refused.value.headers == (("WWW-Authenticate", "Bearer"),)
    assert token not in caplog.text


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
def test_asymmetric_tokens_verify_against_the_configured_public_key(
    memberships: InMemoryMembershipStore, algorithm: str
) -> None:
    pair = generate_keypair(algorithm)
    resolver = JWTResolver(memberships, key=pair.public_pem, algorithms=[algorithm])
    token = mint_jwt(secret_or_private_key=pair.private_pem, sub="alice", algorithm=algorithm)

    principal = resolver(gateway_request(token=token, team=str(TEAM)))

    assert principal is not None
    assert principal.user_id == "alice"


@pytest.mark.parametrize("resolver_name", ["hs", "rs", "jwks"])
def test_a_good_token_authenticates_its_subject_in_the_x_team_id_team(
    resolvers: dict[str, JWTResolver], keys: Keys, resolver_name: str
) -> None:
    token = hs_token(jti="token-7") if resolver_name == "hs" else rs_token(keys.rsa, jti="token-7")

    principal = resolvers[resolver_name](gateway_request(token=token, team=str(TEAM).upper()))

    assert principal is not None
    assert principal.kind is CredentialKind.JWT
    assert (principal.team_id, principal.user_id, principal.role) == (TEAM, "alice", Role.MEMBER)
    assert principal.credential_id == "token-7"
    assert token not in repr(principal)


def test_leeway_accepts_a_token_that_expired_within_it(
    memberships: InMemoryMembershipStore,
) -> None:
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"], leeway=120)
    token = mint_jwt(secret_or_private_key=SECRET, sub="alice", exp=int(time.time()) - 60)

    assert resolver(gateway_request(token=token, team=str(TEAM))) is not None


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Basic YWxpY2U6cHc=", id="basic-scheme"),
        pytest.param("Bearer sk-" + "a" * 43, id="integration-key"),
        pytest.param("Bearer dk-" + "a" * 43, id="device-key"),
        pytest.param("Bearer ak-" + "a" * 43, id="agent-key"),
    ],
)
def test_requests_without_a_user_token_are_not_this_resolvers(
    resolvers: dict[str, JWTResolver], authorization: str | None
) -> None:
    headers = [] if authorization is None else [("Authorization", authorization)]

    assert resolvers["hs"](gateway_request(headers=headers, team=str(TEAM))) is None


@pytest.mark.parametrize(
    ("team_headers", "error"),
    [
        pytest.param([], MissingTeamError, id="missing"),
        pytest.param([""], MissingTeamError, id="empty"),
        pytest.param(["not-a-uuid"], InvalidTeamError, id="not-a-uuid"),
        pytest.param([str(TEAM).replace("-", "")], InvalidTeamError, id="uuid-without-dashes"),
        pytest.param([f"{{{TEAM}}}"], InvalidTeamError, id="uuid-in-braces"),
        pytest.param([str(TEAM), str(OTHER_TEAM)], InvalidTeamError, id="two-teams"),
        # Repeated is refused whatever the values: a blank one does not make it one field.
        pytest.param(["", str(TEAM)], InvalidTeamError, id="blank-and-a-team"),
        pytest.param([str(TEAM), " "], InvalidTeamError, id="a-team-and-blank"),
    ],
)
def test_the_team_must_be_one_uuid_in_x_team_id(
    resolvers: dict[str, JWTResolver], team_headers: list[str], error: type[Exception]
) -> None:
    headers = [("X-Team-ID", value) for value in team_headers]

    with pytest.raises(error) as refused:
        resolvers["hs"](gateway_request(token=hs_token(), headers=headers))

    assert getattr(refused.value, "status", None) == 400


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": 10**400}, id="exp-too-large-for-a-float"),
        pytest.param({"aud": []}, id="empty-aud"),
        pytest.param({"aud": None}, id="null-aud"),
        pytest.param({"aud": "anyone"}, id="an-aud"),
        pytest.param({"sub": ""}, id="empty-sub"),
    ],
)
def test_claims_the_gateway_cannot_take_are_401(
    memberships: InMemoryMembershipStore, claims: dict[str, Any]
) -> None:
    # Signed with the right key: only its claims are wrong (a 500 for exp, a pass for aud).
    resolver = JWTResolver(memberships, key=SECRET, algorithms=["HS256"])
    token = mint_jwt(secret_or_private_key=SECRET, **{"sub": "alice", **claims})
    with pytest.raises(UnauthenticatedError):
        resolver(gateway_request(token=token, team=str(TEAM)))
    assert resolver(gateway_request(token=mint_jwt(secret_or_private_key=SECRET, sub="alice"),
                                    team=str(TEAM))) is not None  # fmt: skip


def test_a_bad_token_is_401_even_without_x_team_id(resolvers: dict[str, JWTResolver]) -> None:
    with pytest.raises(UnauthenticatedError):
        resolvers["hs"](gateway_request(token=hs_token(exp=NOW - 60)))


def test_a_user_who_is_not_a_member_of_the_x_team_id_team_is_forbidden(
    resolvers: dict[str, JWTResolver],
) -> None:
    with pytest.raises(ForbiddenError):
        resolvers["hs"](gateway_request(token=hs_token(), team=str(OTHER_TEAM)))


def test_role_changes_and_removal_apply_on_the_very_next_request(
    resolvers: dict[str, JWTResolver], memberships: InMemoryMembershipStore
) -> None:
    request = gateway_request(token=hs_token(), team=str(TEAM))
    memberships.set_role(TEAM, "alice", Role.VIEWER)

    principal = resolvers["hs"](request)
    assert principal is not None
    assert principal.role is Role.VIEWER

    memberships.remove(TEAM, "alice")
    with pytest.raises(ForbiddenError):
        resolvers["hs"](request)


def test_the_jwks_is_fetched_once_and_reused(
    resolvers: dict[str, JWTResolver], keys: Keys, jwks_server: JWKSServer
) -> None:
    for _ in range(3):
        assert resolvers["jwks"](gateway_request(token=rs_token(keys.rsa), team=str(TEAM)))

    assert jwks_server.fetches == 1


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_jwks_is_503_and_a_warning_for_the_operator(
    memberships: InMemoryMembershipStore, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = JWTResolver(
        memberships,
        jwks_url=f"http://127.0.0.1:{_unused_port()}/jwks.json",
        algorithms=["RS256"],
        jwks_timeout=2,
    )
    token = rs_token(keys.rsa)

    # Not the token's fault: a 401 would tell its client to throw a good token away.
    with pytest.raises(AuthUnavailableError) as refused:
        resolver(gateway_request(token=token, team=str(TEAM)))

    assert refused.value.status == 503
    assert ("Retry-After", "1") in refused.value.headers
    assert any(
        r.levelno == logging.WARNING and "JWKS endpoint unreachable" in r.getMessage()
        for r in caplog.records
    )
    assert token not in caplog.text


def test_a_jwks_endpoint_answering_html_is_503_and_a_warning(
    memberships: InMemoryMembershipStore, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>502 Bad Gateway</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Html)) as url:
        resolver = JWTResolver(
            memberships, jwks_url=f"{url}/jwks.json", algorithms=["RS256"], jwks_timeout=2
        )
        with pytest.raises(AuthUnavailableError):
            resolver(gateway_request(token=rs_token(keys.rsa), team=str(TEAM)))
    assert any(
        r.levelno == logging.WARNING and "JWKS endpoint sent no key set" in r.getMessage()
        for r in caplog.records
    )


def _public_pem(keys: Keys) -> bytes:
    return keys.rsa.public_pem


def _private_pem(keys: Keys) -> bytes:
    return keys.rsa.private_pem


CONFIG_REFUSALS: list[Any] = [
    pytest.param({"key": _public_pem, "algorithms": ["HS256"]}, id="hmac-with-public-key"),
    pytest.param(
        {"key": _public_pem, "algorithms": ["RS256", "HS256"]}, id="hmac-next-to-public-key"
    ),
    pytest.param({"key": SECRET, "algorithms": ["RS256"]}, id="rsa-with-a-secret"),
    pytest.param({"key": _private_pem, "algorithms": ["RS256"]}, id="private-key"),
    pytest.param({"key": SECRET, "algorithms": ["none"]}, id="alg-none"),
    pytest.param({"key": SECRET, "algorithms": ["HS256", "None"]}, id="alg-None-listed"),
    pytest.param({"key": SECRET, "algorithms": []}, id="no-algorithms"),
    pytest.param({"key": SECRET, "algorithms": ["XS256"]}, id="unknown-algorithm"),
    pytest.param({"key": "short", "algorithms": ["HS256"]}, id="short-hmac-secret"),
    pytest.param({"algorithms": ["RS256"]}, id="no-key"),
    pytest.param(
        {"key": SECRET, "jwks_url": "https://idp.test/jwks", "algorithms": ["HS256"]},
        id="key-and-jwks",
    ),
    pytest.param(
        {"jwks_url": "https://idp.test/jwks", "algorithms": ["HS256"]}, id="jwks-with-hmac"
    ),
    pytest.param({"jwks_url": "file:///etc/passwd", "algorithms": ["RS256"]}, id="jwks-file-url"),
    pytest.param(
        {"jwks_url": "https://user:pw@idp.test/jwks", "algorithms": ["RS256"]},
        id="jwks-url-with-credentials",
    ),
    pytest.param({"jwks_url": "https:///jwks", "algorithms": ["RS256"]}, id="jwks-url-no-host"),
    pytest.param(
        {"jwks_url": "https://idp.test/jw ks", "algorithms": ["RS256"]}, id="jwks-url-with-space"
    ),
    pytest.param(
        {"jwks_url": "https://idp.test/jwks", "algorithms": ["RS256"], "jwks_cooldown": 0},
        id="jwks-without-cooldown",
    ),
    pytest.param(
        {"jwks_url": "https://idp.test/jwks", "algorithms": ["RS256"], "jwks_timeout": 0},
        id="jwks-without-timeout",
    ),
    pytest.param(
        {"jwks_url": "https://idp.test/jwks", "algorithms": ["RS256"], "jwks_cache_ttl": 0},
        id="jwks-without-ttl",
    ),
    pytest.param({"key": SECRET, "algorithms": ["HS256"], "leeway": -1}, id="negative-leeway"),
]


@pytest.mark.parametrize("options", CONFIG_REFUSALS)
def test_unsafe_or_unusable_configurations_are_refused_at_construction(
    memberships: InMemoryMembershipStore, keys: Keys, options: dict[str, Any]
) -> None:
    options = {k: (v(keys) if callable(v) else v) for k, v in options.items()}

    with pytest.raises(ValueError):  # noqa: PT011 (the messages vary by cause)
        JWTResolver(memberships, **options)


def test_algorithms_given_as_one_string_are_refused(memberships: InMemoryMembershipStore) -> None:
    with pytest.raises(TypeError):
        JWTResolver(memberships, key=SECRET, algorithms="HS256")
