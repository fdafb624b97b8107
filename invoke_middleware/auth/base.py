"""The auth resolver seam.

A resolver looks at a request and returns a :class:`Principal`, returns ``None`` for "no
credentials of mine here", or raises a :class:`~invoke_middleware.errors.GatewayError`
(normally :class:`~invoke_middleware.errors.UnauthenticatedError`) for "mine, but bad".
The gateway asks its resolvers in order; the first principal wins, and if every resolver says
``None`` the caller is unauthenticated.
"""

from __future__ import annotations

from typing import Protocol

from invoke_middleware.auth.principal import Principal
from invoke_middleware.request import PipelineRequest


class AuthResolver(Protocol):
    """Turns a request into a principal, ``None`` ("not mine"), or raises ("mine, but bad")."""

    def __call__(self, request: PipelineRequest) -> Principal | None: ...


def bearer_token(request: PipelineRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``.

    The scheme is case-insensitive (RFC 9110 §11.1); anything else in the header is not a
    bearer token.
    """
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
