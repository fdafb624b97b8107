from __future__ import annotations

import uuid

import pytest

from invoke_middleware.auth import (
    Action,
    CredentialKind,
    Principal,
    Role,
    authorize,
    default_policy,
)
from invoke_middleware.errors import ForbiddenError
from invoke_middleware.registry import Service

TEAM = uuid.UUID("11111111-1111-4111-8111-111111111111")


def user(role: Role | None, kind: CredentialKind = CredentialKind.JWT) -> Principal:
    return Principal(kind=kind, team_id=TEAM, user_id="u", role=role)


INTEGRATION = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM)
ALLOWED = [
    *[
        pytest.param(user(role, kind), action, id=f"{kind}-{role}-{action}")
        for kind in (CredentialKind.JWT, CredentialKind.DEVICE)
        for role in (Role.OWNER, Role.ADMIN, Role.MEMBER)
        for action in Action
    ],
    *[
        pytest.param(user(Role.VIEWER, kind), action, id=f"{kind}-viewer-{action}")
        for kind in (CredentialKind.JWT, CredentialKind.DEVICE)
        for action in (Action.LIST, Action.GET)
    ],
    *[pytest.param(INTEGRATION, action, id=f"integration-{action}") for action in Action],
]
REFUSED = [
    *[
        pytest.param(user(Role.VIEWER, kind), action, id=f"{kind}-viewer-{action}")
        for kind in (CredentialKind.JWT, CredentialKind.DEVICE)
        for action in (Action.INVOKE, Action.CATCH_ALL)
    ],
    *[pytest.param(user(None), action, id=f"no-role-{action}") for action in Action],
]


@pytest.mark.parametrize(("principal", "action"), ALLOWED)
def test_authorize_lets_allowed_callers_through(principal: Principal, action: Action) -> None:
    authorize(default_policy, principal, action, None)


@pytest.mark.parametrize(("principal", "action"), REFUSED)
def test_authorize_refuses_with_403(principal: Principal, action: Action) -> None:
    with pytest.raises(ForbiddenError):
        authorize(default_policy, principal, action, None)


def test_authorize_defers_to_a_host_policy() -> None:
    def owners_only(principal: Principal, action: Action, service: Service | None) -> bool:
        return principal.role is Role.OWNER

    authorize(owners_only, user(Role.OWNER), Action.INVOKE, None)
    with pytest.raises(ForbiddenError):
        authorize(owners_only, user(Role.ADMIN), Action.LIST, None)
