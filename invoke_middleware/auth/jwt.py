"""The resolver for user JWTs (the README's "Auth" section).

Examples::

    # a shared secret
    JWTResolver(memberships, key=secret, algorithms=["HS256"], issuer="https://idp.example")

    # a public key (PEM)
    JWTResolver(memberships, key=public_pem, algorithms=["RS256"], audience="gateway")

    # the identity provider's JWKS, with a cache of verified tokens
    JWTResolver(memberships, jwks_url="https://idp.example/.well-known/jwks.json",
                algorithms=["RS256", "ES256"], cache_size=10_000)

With a JWKS, a token's ``kid`` picks the key. Only a token whose header names one of the
configured algorithms is looked up at all; keys are fetched one fetch at a time, within a
total timeout, and a ``kid`` that is not published costs at most one fetch per cooldown
(see :mod:`._jwks`).

Every bearer token without a credential prefix (``sk-``, ``dk-``, ``ak-``) is this resolver's.
Only the configured key and algorithms are used: never ``none``, never an algorithm the token
picks outside the list, and never an HMAC algorithm next to a public key, which would let a
token signed with the (public) key as an HMAC secret pass (the "key confusion" attack;
RFC 8725 §2.1 and §3.1). ``exp`` and ``sub`` are required; ``iss`` and ``aud`` are checked when
configured; ``sub`` is the user id.

The team is the ``X-Team-ID`` header (a UUID): missing is 400 ``missing_team``, malformed 400.
The user's role in that team comes from the membership store on every request; a user who is
not a member gets 403.

Every token failure is the same :class:`~invoke_middleware.errors.UnauthenticatedError`,
including a JWKS endpoint that cannot be reached: the gateway cannot tell whether the token is
good, and no other answer would be honest to the caller without telling an attacker more. A
failed JWKS fetch is logged at warning level for the operator, once per fetch; token failures
at debug level, without the token or its ``kid``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from invoke_middleware.auth._jwks import JWKSCache, KeySetUnavailableError, UnknownKeyError
from invoke_middleware.auth.base import bearer_token
from invoke_middleware.auth.cache import DEFAULT_MAX_AGE, VerifiedToken, VerifiedTokenCache
from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.auth.stores import MembershipStore
from invoke_middleware.errors import (
    AuthUnavailableError,
    ForbiddenError,
    InvalidTeamError,
    MissingTeamError,
    UnauthenticatedError,
)
from invoke_middleware.headers import TEAM_HEADER
from invoke_middleware.request import PipelineRequest

logger = logging.getLogger("invoke_middleware.auth")


#: Seconds a fetched JWKS is used; its refresh starts in the last tenth of that.
DEFAULT_JWKS_CACHE_TTL = 300.0
#: Seconds a JWKS fetch may take in all (connecting, TLS, the whole response); requests that
#: need its outcome wait for it, so it is short.
DEFAULT_JWKS_TIMEOUT = 3.0
#: Seconds after a JWKS fetch starts in which a token whose ``kid`` is not in the held key set
#: starts no other fetch (and is refused).
DEFAULT_JWKS_COOLDOWN = 30.0

_UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

_REQUIRED_CLAIMS = ["exp", "sub"]


class JWTResolver:
    """Authenticates user JWTs and looks up the user's role in the ``X-Team-ID`` team.

    Configure exactly one of ``key`` (an HMAC secret, or a PEM public key) and ``jwks_url``.
    ``algorithms`` lists what tokens may be signed with; every one must suit the key. With
    ``cache_size`` above 0, verified tokens are cached (see :mod:`.cache`); ``clock`` (seconds
    since the epoch) drives that cache only.

    With ``jwks_url``, the key set is kept ``jwks_cache_ttl`` seconds, each fetch takes at most
    ``jwks_timeout`` seconds in all, and a token whose ``kid`` the held set lacks starts a
    fetch only when none started in the last ``jwks_cooldown`` seconds, and a failed fetch is
    not tried again for 5 seconds (or the cooldown, when shorter); meanwhile such tokens are
    refused.

    Raises :class:`ValueError` at construction for a configuration that would be unsafe or
    could never verify a token.
    """

    def __init__(
        self,
        memberships: MembershipStore,
        *,
        algorithms: Sequence[str],
        key: str | bytes | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0,
        jwks_cache_ttl: float = DEFAULT_JWKS_CACHE_TTL,
        jwks_timeout: float = DEFAULT_JWKS_TIMEOUT,
        jwks_cooldown: float = DEFAULT_JWKS_COOLDOWN,
        cache_size: int = 0,
        cache_max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key is not None and jwks_url is not None:
            raise ValueError("configure exactly one of key and jwks_url")
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._memberships = memberships
        self._algorithms = _checked_algorithms(algorithms)
        self._issuer = issuer
        self._audience = audience if audience is None or isinstance(audience, str) else [*audience]
        self._leeway = leeway
        self._key: Any = None
        self._jwks: JWKSCache | None = None
        if key is not None:
            self._key = _prepared_key(key, self._algorithms)
        elif jwks_url is not None:
            if any(name.startswith("HS") for name in self._algorithms):
                raise ValueError(
                    "a JWKS publishes public keys: HMAC algorithms cannot be used with it"
                )
            self._jwks = JWKSCache(
                jwks_url, ttl=jwks_cache_ttl, timeout=jwks_timeout, cooldown=jwks_cooldown
            )
        else:
            raise ValueError("configure exactly one of key and jwks_url")
        self._cache = (
            VerifiedTokenCache(cache_size, max_age=cache_max_age, clock=clock)
            if cache_size > 0
            else None
        )

    def __call__(self, request: PipelineRequest) -> Principal | None:
        token = bearer_token(request)
        if token is None or CredentialKind.of_key(token) is not None:
            return None
        verified = self._cache.get(token) if self._cache is not None else None
        if verified is None:
            verified = self._verify(token)
            if self._cache is not None:
                self._cache.put(token, verified)

        team_id = team_from_header(request)
        role = self._memberships.role_of(team_id, verified.subject)
        if role is None:
            logger.debug("JWT user is not a member of the requested team")
            raise ForbiddenError("You are not a member of this team.")
        return Principal(
            kind=CredentialKind.JWT,
            team_id=team_id,
            user_id=verified.subject,
            role=role,
            credential_id=verified.token_id,
        )

    def _verify(self, token: str) -> VerifiedToken:
        # The one place PyJWT's exceptions become the gateway's.
        try:
            key = self._key if self._jwks is None else self._published_key(self._jwks, token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except KeySetUnavailableError as exc:
            # Nothing to check the token against: the gateway's trouble, not the token's.
            logger.debug("JWT not checked: %s", exc)
            raise AuthUnavailableError from exc
        except UnknownKeyError as exc:
            # A failed fetch was logged once, when it failed; this is one token.
            logger.debug("JWT refused: %s", exc)
            raise UnauthenticatedError from exc
        except jwt.PyJWTError as exc:
            logger.debug("JWT refused: %s", type(exc).__name__)
            raise UnauthenticatedError from exc
        if not claims["sub"]:
            # An empty sub names no user: a bad token (401), not a user without a team (403).
            logger.debug("JWT refused: an empty sub")
            raise UnauthenticatedError
        if self._audience is None and "aud" in claims:
            # PyJWT lets an empty or null aud pass when no audience is configured; a token
            # meant for some audience is never taken where none is (docs/contract.md §7).
            logger.debug("JWT refused: an aud claim, and no audience configured")
            raise UnauthenticatedError
        token_id = claims.get("jti")
        try:
            expires_at = float(claims["exp"])
        except (OverflowError, TypeError, ValueError) as exc:
            # PyJWT took it for a number; a float cannot hold it (exp = 10**400).
            logger.debug("JWT refused: exp out of range")
            raise UnauthenticatedError from exc
        return VerifiedToken(
            subject=claims["sub"],
            token_id=token_id if isinstance(token_id, str) else None,
            expires_at=expires_at,
        )

    def _published_key(self, jwks: JWKSCache, token: str) -> jwt.PyJWK:
        """The JWKS key the token's ``kid`` names.

        The header is checked first: the caller writes it, and looking a key up may cost a
        fetch. A token that no configured algorithm could verify (``none`` among them, which
        is never configured) never gets that far, nor one without a ``kid``.
        """
        header = jwt.get_unverified_header(token)
        if header.get("alg") not in self._algorithms:
            raise jwt.InvalidAlgorithmError("The specified alg value is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise jwt.InvalidTokenError("A token checked against a JWKS must name its key")
        return jwks.signing_key(kid)


def team_from_header(request: PipelineRequest) -> uuid.UUID:
    """The team a user token acts in: the ``X-Team-ID`` header, which must be one UUID.

    Raises :class:`MissingTeamError` when absent or empty, :class:`InvalidTeamError` when it
    is not a single canonical UUID.
    """
    values = request.headers.get_all(TEAM_HEADER)
    if len(values) > 1:
        raise InvalidTeamError  # repeated, even when one of them is blank
    value = values[0].strip() if values else ""
    if not value:
        raise MissingTeamError
    if _UUID_PATTERN.fullmatch(value) is None:
        raise InvalidTeamError
    return uuid.UUID(value)


def _checked_algorithms(algorithms: Sequence[str]) -> list[str]:
    if isinstance(algorithms, str):
        raise TypeError("algorithms must be a sequence of names, not a string")
    if not algorithms:
        raise ValueError("configure at least one algorithm")
    known = jwt.algorithms.get_default_algorithms()
    for name in algorithms:
        if name.lower() == "none":
            raise ValueError("the 'none' algorithm is never accepted")
        if name not in known:
            raise ValueError(f"unknown or unavailable JWT algorithm {name!r}")
    return list(algorithms)


def _prepared_key(key: str | bytes, algorithms: Sequence[str]) -> Any:
    """The key parsed once, after checking that it suits every configured algorithm."""
    known = jwt.algorithms.get_default_algorithms()
    prepared: Any = None
    for name in algorithms:
        algorithm = known[name]
        try:
            # HMAC refuses PEM keys here, and the asymmetric algorithms refuse secrets:
            # together that rules out key confusion at configuration time.
            candidate = algorithm.prepare_key(key)
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise ValueError(f"the configured key does not suit {name}") from exc
        if isinstance(candidate, _PRIVATE_KEY_TYPES):
            raise ValueError("configure the public key, not the private key")
        weakness = algorithm.check_key_length(candidate)
        if weakness:
            raise ValueError(weakness)
        prepared = prepared if prepared is not None else candidate
    return prepared
