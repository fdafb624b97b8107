"""Authorization: one function decides whether a principal may do an action
(docs/contract.md §7)."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from invoke_middleware.auth.principal import CredentialKind, Principal, Role
from invoke_middleware.errors import ForbiddenError
from invoke_middleware.registry import Service


class Action(StrEnum):
    """What the caller is trying to do."""

    INVOKE = "invoke"
    CATCH_ALL = "catch_all"
    LIST = "list"
    GET = "get"
    #: Deprecated name of :attr:`CATCH_ALL`.
    RELAY = "catch_all"


class Policy(Protocol):
    """Decides whether ``principal`` may do ``action`` (on ``service``, when there is one).

    ``service`` is ``None`` for :attr:`Action.LIST`. The principal is already known to act in
    the service's team; a policy only judges roles and kinds.
    """

    def __call__(self, principal: Principal, action: Action, service: Service | None) -> bool: ...


def default_policy(principal: Principal, action: Action, service: Service | None) -> bool:
    """The platform's rules.

    Invoke and relay need Member or above for user tokens and device credentials, and are
    always allowed to integration credentials in their own team. Listing and reading
    metadata are allowed to any member role, Viewer included.
    """
    if principal.kind is CredentialKind.INTEGRATION:
        return True
    if principal.role is None:
        return False
    if action in (Action.INVOKE, Action.CATCH_ALL):
        return principal.role.at_least(Role.MEMBER)
    return True


def authorize(
    policy: Policy, principal: Principal, action: Action, service: Service | None
) -> None:
    """Raise :class:`~invoke_middleware.errors.ForbiddenError` unless ``policy`` allows it."""
    if not policy(principal, action, service):
        raise ForbiddenError()
