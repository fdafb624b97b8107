"""The resolver for user JWTs (the README's "Auth" section).

Examples::

    # a shared secret
    JWTResolver(memberships, key=secret, algorithms=["HS256"], issuer="https://idp.example")

    # a public key (PEM)
    JWTResolver(memberships, key=public_pem, algorithms=["RS256"], audience="gateway")

    # the identity provider's JWKS, with a cache of verified tokens
    JWTResolver(memberships, jwks_url="https://idp.example/.well-known/jwks.json",
                algorithms=["RS256", "ES256"], cache_size=10_000)

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
good, and no other answer would be honest to the caller without telling an attacker more. The
outage is logged at warning level for the operator; other failures at debug level, without
the token.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from invoke_middleware.auth.base import bearer_token
from invoke_middleware.auth.cache import DEFAULT_MAX_AGE, VerifiedToken, VerifiedTokenCache
from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.auth.stores import MembershipStore
from invoke_middleware.errors import (
    ForbiddenError,
    InvalidTeamError,
    MissingTeamError,
    UnauthenticatedError,
)
from invoke_middleware.request import PipelineRequest

logger = logging.getLogger("invoke_middleware.auth")

TEAM_HEADER = "X-Team-ID"

#: Seconds the JWKS document is reused before it is fetched again.
DEFAULT_JWKS_CACHE_TTL = 300.0
#: Seconds a JWKS fetch may take; it happens on a request's path, so it is short.
DEFAULT_JWKS_TIMEOUT = 3.0

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
        self._jwks: jwt.PyJWKClient | None = None
        if key is not None:
            self._key = _prepared_key(key, self._algorithms)
        elif jwks_url is not None:
            self._jwks = _jwks_client(jwks_url, self._algorithms, jwks_cache_ttl, jwks_timeout)
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
            key = self._key if self._jwks is None else self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS, "enforce_minimum_key_length": True},
            )
        except jwt.PyJWKClientConnectionError as exc:
            logger.warning("JWKS endpoint unreachable, JWTs cannot be verified: %s", exc)
            raise UnauthenticatedError from exc
        except ValueError as exc:
            # PyJWKClient lets a JSON error through when the endpoint answers with something
            # else (an HTML error page): the same outage, seen from here.
            if self._jwks is None:
                raise
            logger.warning("JWKS endpoint sent no key set, JWTs cannot be verified")
            raise UnauthenticatedError from exc
        except jwt.PyJWTError as exc:
            logger.debug("JWT refused: %s", type(exc).__name__)
            raise UnauthenticatedError from exc
        token_id = claims.get("jti")
        return VerifiedToken(
            subject=claims["sub"],
            token_id=token_id if isinstance(token_id, str) else None,
            expires_at=float(claims["exp"]),
        )


def team_from_header(request: PipelineRequest) -> uuid.UUID:
    """The team a user token acts in: the ``X-Team-ID`` header, which must be one UUID.

    Raises :class:`MissingTeamError` when absent or empty, :class:`InvalidTeamError` when it
    is not a single canonical UUID.
    """
    values = [v.strip() for v in request.headers.get_all(TEAM_HEADER)]
    values = [v for v in values if v]
    if not values:
        raise MissingTeamError
    if len(values) != 1 or _UUID_PATTERN.fullmatch(values[0]) is None:
        raise InvalidTeamError
    return uuid.UUID(values[0])


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


def _jwks_client(
    url: str, algorithms: Sequence[str], cache_ttl: float, timeout: float
) -> jwt.PyJWKClient:
    if any(name.startswith("HS") for name in algorithms):
        raise ValueError("a JWKS publishes public keys: HMAC algorithms cannot be used with it")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("the JWKS URL must be http:// or https://")
    try:
        return DirectJWKClient(url, cache_jwk_set=True, lifespan=cache_ttl, timeout=timeout)
    except jwt.PyJWKClientError as exc:
        raise ValueError(str(exc)) from exc


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could send the key fetch anywhere; the configured URL is the key set's.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class DirectJWKClient(jwt.PyJWKClient):
    """PyJWT's JWKS client, fetching from the identity provider directly.

    urllib, which PyJWT uses, sends a request through the proxy the environment names
    (``HTTPS_PROXY``, ``HTTP_PROXY``) by default: a proxy variable meant for something else
    would then see, and could answer, the gateway's key fetch. Here no proxy is ever used, and
    redirects are not followed.
    """

    def fetch_data(self) -> Any:
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.ProxyHandler({}),
            _NoRedirect(),
        ]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        opener = urllib.request.build_opener(*handlers)
        # The URL's scheme was checked at construction (http or https only).
        request = urllib.request.Request(url=self.uri, headers=self.headers)  # noqa: S310
        try:
            with opener.open(request, timeout=self.timeout) as response:
                jwk_set = json.load(response)
        except (URLError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, HTTPError):
                exc.close()
            raise jwt.PyJWKClientConnectionError(f"cannot fetch the JWKS: {exc}") from exc
        if not isinstance(jwk_set, dict):
            raise jwt.PyJWKClientError("The JWKS endpoint did not return a JSON object")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(jwk_set)
        # PyJWT's refetch cooldown for unknown key ids reads this (when it has one): without
        # it, every token with a made-up kid would cost a fetch from the identity provider.
        if hasattr(self, "_last_successful_fetch"):
            self._last_successful_fetch = time.monotonic()
        return jwk_set
