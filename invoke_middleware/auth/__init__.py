"""Who may call (docs/contract.md §7): principals, resolvers, the policy and the stores they read.

:class:`JWTResolver` and :func:`team_from_header` are imported on first use, so importing the
package never loads PyJWT and cryptography.
"""

from typing import TYPE_CHECKING

from invoke_middleware._lazy import lazy_attributes
from invoke_middleware.auth.base import AuthResolver, bearer_token
from invoke_middleware.auth.cache import VerifiedToken, VerifiedTokenCache
from invoke_middleware.auth.credentials import CredentialResolver
from invoke_middleware.auth.keys import generate_key, hash_key, key_matches, key_prefix
from invoke_middleware.auth.policy import Action, Policy, authorize, default_policy
from invoke_middleware.auth.principal import CredentialKind, Principal, Role
from invoke_middleware.auth.stores import (
    CredentialRecord,
    CredentialStore,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    IssuedCredential,
    Membership,
    MembershipStore,
)

if TYPE_CHECKING:
    from invoke_middleware.auth.jwt import JWTResolver, team_from_header

__all__ = [
    "Action",
    "AuthResolver",
    "CredentialKind",
    "CredentialRecord",
    "CredentialResolver",
    "CredentialStore",
    "InMemoryCredentialStore",
    "InMemoryMembershipStore",
    "IssuedCredential",
    "JWTResolver",
    "Membership",
    "MembershipStore",
    "Policy",
    "Principal",
    "Role",
    "VerifiedToken",
    "VerifiedTokenCache",
    "authorize",
    "bearer_token",
    "default_policy",
    "generate_key",
    "hash_key",
    "key_matches",
    "key_prefix",
    "team_from_header",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "JWTResolver": "invoke_middleware.auth.jwt",
        "team_from_header": "invoke_middleware.auth.jwt",
    },
    deprecated={"KeyKind": ("invoke_middleware.auth.principal", "CredentialKind")},
)

del TYPE_CHECKING, lazy_attributes
