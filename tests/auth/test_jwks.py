"""The JWKS key set behind a JWTResolver, against a real endpoint on loopback.

A caller picks a token's ``kid`` and ``alg`` without any credential: whatever it picks, the
gateway makes at most one fetch at a time and one per cooldown, within a total timeout and a
size cap, and a token whose key is held never waits for a fetch. Each test counts the fetches
the endpoint received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from invoke_middleware.auth import InMemoryMembershipStore, JWTResolver, Role, _jwks
from invoke_middleware.auth._jwks import MAX_JWKS_BYTES, MAX_WAITERS
from invoke_middleware.errors import AuthUnavailableError, UnauthenticatedError
from invoke_middleware.testing import KeyPair, generate_keypair, jwk_set, mint_jwt
from tests.auth.helpers import gateway_request
from tests.auth.jwks_server import JWKSServer
from tests.upstreams import TLSFiles, tls_files  # noqa: F401  (fixture)

TEAM = uuid.UUID("44444444-4444-4444-8444-444444444444")
KID = "key-1"
#: A bound for a request that must not wait for a fetch: far below every fetch timeout here.
PROMPTLY = 1.0
_kids = itertools.count()


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return generate_keypair("RS256")


@pytest.fixture
def members() -> InMemoryMembershipStore:
    store = InMemoryMembershipStore()
    store.set_role(TEAM, "alice", Role.MEMBER)
    return store


@pytest.fixture
def idp(pair: KeyPair) -> Iterator[JWKSServer]:
    with JWKSServer(jwk_set({KID: pair})).running() as server:
        yield server


@pytest.fixture
def make_resolver(members: InMemoryMembershipStore, idp: JWKSServer) -> Callable[..., JWTResolver]:
    def make(**options: Any) -> JWTResolver:
        return JWTResolver(members, jwks_url=idp.url, algorithms=["RS256"], **options)

    return make


def signed(pair: KeyPair, kid: str | None = KID, algorithm: str = "RS256") -> str:
    return mint_jwt(secret_or_private_key=pair.private_pem, sub="alice", algorithm=algorithm,
                    kid=kid)  # fmt: skip


def made_up_kid() -> str:
    return f"made-up-{next(_kids)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], hmac_secret: bytes | None = None) -> str:
    """A token with any header, unsigned or HMAC-signed: what a caller can send for free."""
    claims = {"sub": "alice", "exp": int(time.time()) + 300}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = (
        b""
        if hmac_secret is None
        else hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + _b64(signature)


def authenticates(resolver: JWTResolver, token: str) -> bool:
    """Whether ``resolver`` lets ``token`` in (a refusal is the one 401, or the 503 of a key
    set that cannot be had: see :func:`refusal`)."""
    return refusal(resolver, token) is None


def refusal(resolver: JWTResolver, token: str) -> int | None:
    """The status ``resolver`` refuses ``token`` with; ``None`` when it lets it in."""
    try:
        resolver(gateway_request(token=token, team=str(TEAM)))
    except (UnauthenticatedError, AuthUnavailableError) as refused:
        return refused.status
    return None


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings logged so far, once there is one (a fetch logs from its own thread, and
    may end just after the requests that gave up waiting for it)."""
    give_up = time.monotonic() + PROMPTLY
    while True:
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if lines or time.monotonic() > give_up:
            return lines
        time.sleep(0.01)


# -- the token's header is checked before any key lookup -------------------------------------

UNLOOKED_TOKENS: list[Any] = [
    pytest.param(lambda p: hand_made({"alg": "none", "kid": made_up_kid()}), id="alg-none"),
    pytest.param(lambda p: hand_made({"alg": "None", "kid": made_up_kid()}), id="alg-None"),
    pytest.param(lambda p: hand_made({"kid": made_up_kid()}), id="no-alg"),
    pytest.param(
        lambda p: hand_made({"alg": "HS256", "kid": made_up_kid()}, b"guessed"), id="alg-hs256"
    ),
    pytest.param(lambda p: signed(p, kid=KID, algorithm="RS512"), id="alg-not-configured"),
    pytest.param(
        lambda p: signed(generate_keypair("ES256"), kid=made_up_kid(), algorithm="ES256"),
        id="alg-of-another-key-type",
    ),
    pytest.param(lambda p: signed(p, kid=None), id="no-kid"),
]


@pytest.mark.parametrize("make_token", UNLOOKED_TOKENS)
def test_a_token_no_configured_algorithm_could_verify_is_refused_before_any_key_lookup(
    make_resolver: Callable[..., JWTResolver],
    idp: JWKSServer,
    pair: KeyPair,
    make_token: Callable[[KeyPair], str],
) -> None:
    resolver = make_resolver()

    assert not authenticates(resolver, make_token(pair))
    assert idp.fetches == 0


# -- a held key never waits ------------------------------------------------------------------


def test_a_token_whose_key_is_held_is_answered_while_a_fetch_hangs(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    resolver = make_resolver(jwks_timeout=5, jwks_cooldown=0.1)
    good, attack = signed(pair), signed(pair, kid=made_up_kid())
    assert authenticates(resolver, good)
    time.sleep(0.15)  # past the cooldown: a made-up kid may start a fetch again
    idp.hold()

    with ThreadPoolExecutor(1) as pool:
        attacker = pool.submit(authenticates, resolver, attack)
        try:
            assert idp.wait_for_fetches(2)
            started = time.monotonic()
            assert authenticates(resolver, good)
            elapsed = time.monotonic() - started
            fetch_still_hanging = not attacker.done()
        finally:
            idp.release()
        assert not attacker.result()

    assert elapsed < PROMPTLY
    assert fetch_still_hanging
    assert idp.fetches == 2


# -- one fetch at a time, with a total deadline and a size cap ---------------------------------


def test_one_fetch_at_a_time_and_only_a_few_requests_wait_for_it(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    resolver = make_resolver(jwks_timeout=5)
    idp.hold()
    extra = 4
    finished = threading.Condition()
    outcomes: list[bool] = []

    def attack() -> None:
        outcome = authenticates(resolver, signed(pair, kid=made_up_kid()))
        with finished:
            outcomes.append(outcome)
            finished.notify_all()

    with ThreadPoolExecutor(MAX_WAITERS + extra) as pool:
        for _ in range(MAX_WAITERS + extra):
            pool.submit(attack)
        try:
            assert idp.wait_for_fetches(1)
            with finished:
                # Those beyond the few that wait are refused at once, while the fetch hangs.
                assert finished.wait_for(lambda: len(outcomes) >= extra, timeout=3)
                refused_while_hanging = len(outcomes)
        finally:
            idp.release()

    assert refused_while_hanging == extra
    assert outcomes == [False] * (MAX_WAITERS + extra)
    assert idp.fetches == 1


def test_a_fetch_ends_at_its_timeout_even_when_the_response_trickles_in(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    # Each byte comes well within the timeout; the response as a whole would take seconds.
    idp.drip = 0.02
    resolver = make_resolver(jwks_timeout=0.5)

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        request: Future[bool] = pool.submit(authenticates, resolver, signed(pair))
        try:
            outcome = request.result(timeout=3)
        finally:
            idp.release()
        elapsed = time.monotonic() - started

    assert outcome is False
    assert elapsed < 0.5 + PROMPTLY
    assert idp.fetches == 1


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        pytest.param(MAX_JWKS_BYTES - 4096, True, id="under-the-cap"),
        pytest.param(MAX_JWKS_BYTES + 1, False, id="over-the-cap"),
    ],
)
def test_a_key_set_response_over_the_size_cap_is_a_failed_fetch(
    make_resolver: Callable[..., JWTResolver],
    idp: JWKSServer,
    pair: KeyPair,
    caplog: pytest.LogCaptureFixture,
    size: int,
    accepted: bool,
) -> None:
    document = json.dumps({**idp.document, "padding": ""}).encode()
    idp.body = document.replace(b'""', b'"' + b" " * (size - len(document)) + b'"')
    assert len(idp.body) == size

    assert authenticates(make_resolver(), signed(pair)) is accepted
    assert idp.fetches == 1
    if not accepted:
        assert any("JWKS endpoint sent no key set" in line for line in warnings_in(caplog))


# -- a failed fetch starts the cooldown too ----------------------------------------------------


@pytest.mark.parametrize("failure", ["answers-503", "never-answers"])
def test_a_failed_fetch_is_logged_once_and_not_repeated_for_any_token(
    make_resolver: Callable[..., JWTResolver],
    idp: JWKSServer,
    pair: KeyPair,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    if failure == "answers-503":
        idp.status = 503
    else:
        idp.hold()
    resolver = make_resolver(jwks_timeout=0.3)
    tokens = [signed(pair)] + [signed(pair, kid=made_up_kid()) for _ in range(10)]

    outcomes = [authenticates(resolver, token) for token in [*tokens, signed(pair)]]

    assert outcomes == [False] * 12
    assert idp.fetches == 1
    [warning] = warnings_in(caplog)
    assert warning.startswith("JWKS endpoint unreachable")


def test_after_a_failed_fetch_the_key_set_is_fetched_again_once_the_retry_interval_passed(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    idp.status = 503
    resolver = make_resolver(jwks_cooldown=0.5)
    token = signed(pair)
    assert not authenticates(resolver, token)
    idp.status = 200

    assert not authenticates(resolver, token)
    assert idp.fetches == 1
    time.sleep(0.55)
    assert authenticates(resolver, token)
    assert idp.fetches == 2


# -- the normal case ---------------------------------------------------------------------------


def test_a_rotated_in_key_is_fetched_once_after_the_cooldown(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    resolver = make_resolver(jwks_cooldown=0.5)
    rotated = generate_keypair("RS256")
    old, new, made_up = signed(pair), signed(rotated, kid="key-2"), signed(pair, made_up_kid())
    assert authenticates(resolver, old)
    idp.document = jwk_set({KID: pair, "key-2": rotated})

    assert not authenticates(resolver, new)  # within the cooldown
    assert idp.fetches == 1
    time.sleep(0.55)
    assert authenticates(resolver, new)
    assert authenticates(resolver, new)
    assert authenticates(resolver, old)
    assert not authenticates(resolver, made_up)
    assert idp.fetches == 2


def test_an_expired_key_set_is_fetched_again(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    resolver = make_resolver(jwks_cache_ttl=0.2)
    token = signed(pair)
    assert authenticates(resolver, token)
    time.sleep(0.25)

    assert authenticates(resolver, token)
    assert idp.fetches == 2


def test_a_key_set_near_its_end_is_refreshed_while_its_keys_still_answer(
    make_resolver: Callable[..., JWTResolver],
    idp: JWKSServer,
    pair: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The refresh starts in the last 0.7 s of the key set's second here (a tenth by default),
    # so that a short sleep lands in that window whatever the machine's load.
    monkeypatch.setattr(_jwks, "_REFRESH_AHEAD", 0.7)
    resolver = make_resolver(jwks_cache_ttl=1.0, jwks_timeout=5)
    token = signed(pair)
    assert authenticates(resolver, token)
    time.sleep(0.4)
    idp.hold()

    started = time.monotonic()
    assert authenticates(resolver, token)
    assert time.monotonic() - started < PROMPTLY
    assert idp.wait_for_fetches(2, timeout=PROMPTLY)
    idp.release()


def test_a_redirect_from_the_jwks_url_is_not_followed(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    with JWKSServer(jwk_set({KID: pair})).running() as elsewhere:
        idp.status = 302
        idp.location = elsewhere.url
        assert not authenticates(make_resolver(), signed(pair))
    assert (idp.fetches, elsewhere.fetches) == (1, 0)


@pytest.mark.parametrize(
    "trusted", [pytest.param(True, id="known-ca"), pytest.param(False, id="unknown-ca")]
)
def test_the_key_set_is_fetched_over_verified_tls(
    members: InMemoryMembershipStore,
    pair: KeyPair,
    tls_files: TLSFiles,  # noqa: F811  (the fixture)
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    trusted: bool,
) -> None:
    # The default trust store is the file SSL_CERT_FILE names: the test CA, or a certificate
    # that is no CA at all.
    monkeypatch.setenv(
        "SSL_CERT_FILE", str(tls_files.ca_cert if trusted else tls_files.client_cert)
    )
    with JWKSServer(jwk_set({KID: pair}), tls=tls_files.server_context()).running() as idp:
        resolver = JWTResolver(members, jwks_url=idp.url, algorithms=["RS256"])
        assert authenticates(resolver, signed(pair)) is trusted
    assert idp.fetches == (1 if trusted else 0)
    if not trusted:
        assert any("certificate verify failed" in line for line in warnings_in(caplog))


# -- what a key set may give the gateway --------------------------------------------------


def test_private_and_symmetric_keys_in_a_key_set_are_never_used(
    members: InMemoryMembershipStore, pair: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    # An identity provider that publishes its private key (or an HMAC secret) by mistake:
    # verifying with either failed in the key's own code (500 for an anonymous token), and
    # an HMAC secret read from the key set would let anyone sign.
    private = {
        **json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(
                serialization.load_pem_private_key(pair.private_pem, password=None)
            )
        ),
        "kid": "private",
    }
    symmetric = {"kty": "oct", "k": _b64(b"s" * 32), "kid": "sym", "alg": "HS256"}
    document = {"keys": [private, symmetric, pair.public_jwk(KID)]}
    with JWKSServer(document).running() as server:
        resolver = JWTResolver(members, jwks_url=server.url, algorithms=["RS256"])
        assert not authenticates(resolver, signed(pair, kid="private"))
        assert authenticates(resolver, signed(pair, kid=KID))
    assert any("not a public key" in line for line in warnings_in(caplog))


def test_a_token_that_cannot_be_checked_is_503_and_a_kid_the_held_set_lacks_401(
    make_resolver: Callable[..., JWTResolver], idp: JWKSServer, pair: KeyPair
) -> None:
    # Without any key set (cold start, identity provider down), a good token cannot be
    # checked: 503, so that its client retries rather than throwing it away. Once a set is
    # held, a kid it lacks is the token's problem: 401.
    resolver = make_resolver(jwks_timeout=0.5)
    idp.status = 503
    assert refusal(resolver, signed(pair)) == 503
    assert refusal(resolver, signed(pair, kid=made_up_kid())) == 503
    idp.status = 200
    fresh = make_resolver(jwks_timeout=5)
    assert refusal(fresh, signed(pair)) is None
    assert refusal(fresh, signed(pair, kid=made_up_kid())) == 401
