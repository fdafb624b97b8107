"""The JWKS fetch goes to the identity provider directly: proxy variables are never used."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from invoke_middleware.auth import InMemoryMembershipStore, JWTResolver, Role
from invoke_middleware.testing import generate_keypair, jwk_set, mint_jwt
from tests.auth.helpers import gateway_request
from tests.auth.jwks_server import JWKSServer

TEAM = uuid.UUID("33333333-3333-4333-8333-333333333333")
KID = "key-1"
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY")  # fmt: skip


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Every proxy variable names a loopback port where nothing listens (or, through a
    listener that never accepts, nothing answers)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        yield port


def test_the_jwks_is_fetched_directly_although_the_environment_names_a_proxy(
    dead_proxy: int,
) -> None:
    pair = generate_keypair("RS256")
    members = InMemoryMembershipStore()
    members.set_role(TEAM, "alice", Role.MEMBER)
    with JWKSServer(jwk_set({KID: pair})).running() as idp:
        resolver = JWTResolver(members, jwks_url=idp.url, algorithms=["RS256"], jwks_timeout=2)
        token = mint_jwt(secret_or_private_key=pair.private_pem, algorithm="RS256", kid=KID,
                         sub="alice")  # fmt: skip
        principal = resolver(gateway_request(token=token, team=str(TEAM)))
    assert principal is not None
    assert principal.user_id == "alice"
    assert idp.fetches == 1


def test_a_jwks_url_of_another_scheme_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="http"):
        JWTResolver(InMemoryMembershipStore(), jwks_url="file:///etc/passwd", algorithms=["RS256"])
