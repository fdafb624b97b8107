"""Forged and unusable JWTs, sent through the real middleware (docs/contract.md §7).

Three gateways: an HS256 secret, an RS256 public key, and an RS256 JWKS served from loopback;
each checks ``iss`` and ``aud``. Every attack is aimed at the Owner's account, so a token that
got through would be relayed. Each gateway also accepts a good token (the control), so a
refusal below is the token's fault and not the set-up's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from invoke_middleware import JWTResolver, MembershipStore, Role
from invoke_middleware.testing import KeyPair, generate_keypair, jwk_set, mint_jwt
from tests.auth.jwks_server import JWKSServer
from tests.auth_matrix.conftest import SECRET, STRANGER, assert_refused, hs256_resolver
from tests.toolkit.world import OTHER_TEAM, TEAM, World, user

ISSUER = "https://idp.matrix.test"
AUDIENCE = "invoke-gateway"
KID = "signing-1"
OWNER = user(Role.OWNER)
VIEWER = user(Role.VIEWER)


@dataclass(frozen=True)
class Keys:
    signing: KeyPair
    stranger: KeyPair


@dataclass(frozen=True)
class Gateways:
    """One gateway per way of configuring JWT keys."""

    by_name: dict[str, World]

    def fresh(self, name: str) -> World:
        """The gateway ``name``, its upstream's record emptied."""
        world = self.by_name[name]
        world.reset()
        return world


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(signing=generate_keypair("RS256"), stranger=generate_keypair("RS256"))


@pytest.fixture(scope="module")
def jwks(keys: Keys) -> Iterator[JWKSServer]:
    with JWKSServer(jwk_set({KID: keys.signing})).running() as server:
        yield server


@pytest.fixture(scope="module")
def gateways(make_auth_world: Any, keys: Keys, jwks: JWKSServer) -> Gateways:
    checks: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE}

    def hs(members: MembershipStore) -> JWTResolver:
        return hs256_resolver(members, **checks)

    def rs(members: MembershipStore) -> JWTResolver:
        return JWTResolver(members, key=keys.signing.public_pem, algorithms=["RS256"], **checks)

    def by_jwks(members: MembershipStore) -> JWTResolver:
        return JWTResolver(
            members, jwks_url=jwks.url, algorithms=["RS256"], jwks_timeout=5, **checks
        )

    return Gateways(
        {
            "hs": make_auth_world(jwt_resolver=hs),
            "rs": make_auth_world(jwt_resolver=rs),
            "jwks": make_auth_world(jwt_resolver=by_jwks),
        }
    )


# -- tokens --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    return {
        "sub": OWNER,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time()) + 300,
        **overrides,
    }


def hand_made(header: dict[str, Any], hmac_secret: bytes | None) -> str:
    """A token built by hand, carrying what a JWT library refuses to sign."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(_claims()).encode())
    signature = (
        b""
        if hmac_secret is None
        else hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + _b64(signature)


def hs(sub: str | None = OWNER, **claims: Any) -> str:
    return mint_jwt(
        secret_or_private_key=SECRET, sub=sub, **{"iss": ISSUER, "aud": AUDIENCE, **claims}
    )


def rs(pair: KeyPair, *, kid: str | None = KID, sub: str = OWNER, **claims: Any) -> str:
    return mint_jwt(
        secret_or_private_key=pair.private_pem,
        sub=sub,
        algorithm="RS256",
        kid=kid,
        **{"iss": ISSUER, "aud": AUDIENCE, **claims},
    )


def promoted(token: str) -> str:
    """``token`` with its subject rewritten to the Owner, the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = OWNER
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


# -- the tests -----------------------------------------------------------------------------

GOOD: list[Any] = [
    pytest.param("hs", lambda k: hs(), id="hs256"),
    pytest.param("rs", lambda k: rs(k.signing), id="rs256-public-key"),
    pytest.param("jwks", lambda k: rs(k.signing), id="rs256-jwks"),
]

NOW = int(time.time())

ATTACKS: list[Any] = [
    pytest.param("hs", lambda k: hand_made({"alg": "none", "typ": "JWT"}, None), id="alg-none"),
    pytest.param(
        "rs", lambda k: hand_made({"alg": "none", "typ": "JWT"}, None), id="alg-none-rs256"
    ),
    pytest.param(
        "jwks", lambda k: hand_made({"alg": "none", "kid": KID}, None), id="alg-none-jwks"
    ),
    pytest.param(
        "rs",
        lambda k: hand_made({"alg": "HS256", "typ": "JWT"}, k.signing.public_pem),
        id="hs256-signed-with-the-rs256-public-key",
    ),
    pytest.param(
        "jwks",
        lambda k: hand_made({"alg": "HS256", "kid": KID}, k.signing.public_pem),
        id="hs256-signed-with-the-jwks-public-key",
    ),
    pytest.param("hs", lambda k: hs(exp=NOW - 60), id="expired"),
    pytest.param("rs", lambda k: rs(k.signing, exp=NOW - 60), id="expired-rs256"),
    pytest.param("hs", lambda k: hs(nbf=NOW + 3600), id="not-yet-valid"),
    pytest.param("hs", lambda k: hs(iss="https://idp.evil.test"), id="wrong-iss"),
    pytest.param("hs", lambda k: hs(aud="another-gateway"), id="wrong-aud"),
    pytest.param("jwks", lambda k: rs(k.signing, iss="https://idp.evil.test"), id="wrong-iss-jwks"),
    pytest.param(
        "hs",
        lambda k: mint_jwt(
            secret_or_private_key=SECRET, sub=OWNER, expires_in=None, iss=ISSUER, aud=AUDIENCE
        ),
        id="missing-exp",
    ),
    pytest.param("hs", lambda k: hs(sub=None), id="missing-sub"),
    pytest.param("jwks", lambda k: rs(k.signing, kid="unpublished"), id="kid-not-in-jwks"),
    pytest.param(
        "jwks", lambda k: rs(k.stranger, kid="unpublished"), id="kid-not-in-jwks-other-key"
    ),
    pytest.param("jwks", lambda k: rs(k.stranger, kid=KID), id="published-kid-other-key"),
    pytest.param("hs", lambda k: promoted(hs(sub=VIEWER)), id="tampered-payload"),
    pytest.param("rs", lambda k: promoted(rs(k.signing, sub=VIEWER)), id="tampered-payload-rs256"),
    pytest.param(
        "hs",
        lambda k: mint_jwt(secret_or_private_key="forged-" + "z" * 40, sub=OWNER),
        id="signed-with-another-secret",
    ),
]

ROUTES = [pytest.param("invoke", id="invoke"), pytest.param("catch_all", id="catch_all")]


@pytest.fixture(scope="module")
def unauthenticated_body(gateways: Gateways) -> dict[str, Any]:
    """A 401 body (without its request id) for a request carrying no credentials."""
    response = gateways.fresh("hs").send("invoke", team=str(TEAM))
    assert response.status_int == 401
    return {k: v for k, v in response.json.items() if k != "request_id"}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("gateway", "make_token"), GOOD)
def test_a_good_token_is_relayed(
    gateways: Gateways, keys: Keys, gateway: str, make_token: Callable[[Keys], str], route: str
) -> None:
    world = gateways.fresh(gateway)
    response = world.send(route, token=make_token(keys), team=str(TEAM))
    assert response.status_int == 200, response.text
    assert len(world.upstream.received) == 1


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("gateway", "make_token"), ATTACKS)
def test_a_bad_token_is_one_and_the_same_401_and_reaches_nothing(
    gateways: Gateways,
    keys: Keys,
    unauthenticated_body: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    gateway: str,
    make_token: Callable[[Keys], str],
    route: str,
) -> None:
    world = gateways.fresh(gateway)
    token = make_token(keys)
    caplog.set_level(logging.DEBUG, logger="invoke_middleware")

    response = world.send(route, token=token, team=str(TEAM))

    assert_refused(world, response, 401, "unauthenticated")
    assert {k: v for k, v in response.json.items() if k != "request_id"} == unauthenticated_body
    assert token not in response.text
    assert token not in caplog.text
    # Which check failed is the operator's business, at debug level only.
    ours = [r for r in caplog.records if r.name.startswith("invoke_middleware")]
    assert ours
    assert all(r.levelno == logging.DEBUG for r in ours)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("gateway", "make_token"), GOOD)
def test_a_good_token_for_a_team_the_user_is_not_in_is_403(
    gateways: Gateways, keys: Keys, gateway: str, make_token: Callable[[Keys], str], route: str
) -> None:
    world = gateways.fresh(gateway)
    # The other team exists and has members; the Owner of this team is not one of them.
    assert world.memberships.role_of(OTHER_TEAM, STRANGER) is Role.OWNER

    response = world.send(route, token=make_token(keys), team=str(OTHER_TEAM))

    assert_refused(world, response, 403, "forbidden")


@pytest.mark.parametrize(("gateway", "make_token"), GOOD)
def test_a_bad_token_is_401_before_the_team_header_is_judged(
    gateways: Gateways, keys: Keys, gateway: str, make_token: Callable[[Keys], str]
) -> None:
    world = gateways.fresh(gateway)
    signed_part = make_token(keys).rsplit(".", 1)[0]
    forged = signed_part + "." + _b64(b"not the signature")

    response = world.send("invoke", token=forged, team=None)

    assert_refused(world, response, 401, "unauthenticated")
