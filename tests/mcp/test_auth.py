"""Who may use the MCP endpoint: the auth matrix, in both eras, with the upstream watching.

Every refused caller is refused before any JSON-RPC message is read: 401 with a bare
``WWW-Authenticate: Bearer`` (no OAuth metadata), the gateway's error body, and nothing
reaches the recording upstream or the relay hooks. Integration keys are admitted by default;
``mcp_credential_kinds`` admits device keys and user JWTs, which then act with their role.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from invoke_middleware import (
    ERROR_MARKER_HEADER,
    CredentialKind,
    CredentialResolver,
    InMemoryCredentialStore,
    InMemoryMembershipStore,
    PipelineSettings,
    Role,
)
from invoke_middleware.auth.stores import CredentialRecord
from invoke_middleware.errors import StoreUnavailableError
from tests.auth_matrix.conftest import hs256_resolver, user_token
from tests.mcp.conftest import Agent, StatelessAgent
from tests.toolkit.world import OTHER_TEAM, TEAM, World, make_service

ECHO_CALL = {"service_slug": "echo", "method": "POST", "path": "/from-mcp"}

ALL_KINDS = frozenset(CredentialKind)


def jwt_world(make_world: Callable[..., World], kinds: frozenset[CredentialKind]) -> World:
    """The gateway test world with the JWT resolver after the key resolver, and the
    credential kinds the MCP endpoint admits. Tokens are ``jwt-<role>`` in :data:`keys`."""
    credentials, memberships = InMemoryCredentialStore(), InMemoryMembershipStore()
    world = make_world(
        credentials=credentials,
        memberships=memberships,
        resolvers=[CredentialResolver(credentials, memberships), hs256_resolver(memberships)],
        settings=PipelineSettings(mcp_credential_kinds=kinds),
    )
    for role in Role:
        world.keys[f"jwt-{role.value}"] = user_token(role)
    world.keys["jwt-stranger"] = user_token(None)
    revoked = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    credentials.revoke(revoked.record.id)
    world.keys["sk-revoked"] = revoked.key
    return world


def agents(world: World, key: str, **headers: str) -> list[Agent]:
    """A handshake-era and a 2026-07-28 agent holding ``key``, sending ``headers`` too."""
    made: list[Agent] = [
        Agent(world, key=key, version="2025-11-25"),
        StatelessAgent(world, key=key),
    ]
    for agent in made:
        agent.headers.update(headers)
    return made


def assert_refused_untouched(world: World, response: Any, status: int, code: str) -> None:
    """Refused by the gateway before any tool ran: nothing upstream, no relay started."""
    assert response.status_int == status, response.text
    assert response.headers[ERROR_MARKER_HEADER] == code
    assert response.json["code"] == code
    assert response.headers["X-Request-ID"] == response.json["request_id"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "jsonrpc" not in response.json
    assert world.upstream.received == []
    assert world.started == []


def call_echo(agent: Agent, **kw: Any) -> Any:
    return agent.call("call_container_service", ECHO_CALL, **kw)


# -- the default: integration keys only --------------------------------------------------


def test_the_team_s_integration_key_calls_its_service(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    for agent in agents(world, "sk"):
        result = call_echo(agent).json["result"]
        assert result["isError"] is False
        assert result["structuredContent"]["status_code"] == 200
    assert [r.target for r in world.upstream.received] == ["/from-mcp", "/from-mcp"]
    assert {event.principal.team_id for event in world.started} == {TEAM}


def test_another_team_s_integration_key_sees_only_its_own_services(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    for agent in agents(world, "sk-other"):
        called = call_echo(agent).json["result"]
        assert called["isError"] is True
        # The same 404 as an unknown slug: nothing says the other team's echo exists.
        assert "service_not_found" in called["content"][0]["text"]
        got = agent.call("get_container_service", {"service_slug": "echo"}).json["result"]
        assert "service_not_found" in got["content"][0]["text"]
        listed = agent.call("list_container_services", {}).json["result"]
        assert [s["slug"] for s in listed["structuredContent"]["services"]] == ["theirs"]
    assert world.upstream.received == []
    assert world.started == []


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("member", id="device-key"),
        pytest.param("jwt-member", id="jwt"),
        pytest.param("jwt-stranger", id="jwt-of-no-team"),
        pytest.param("ak", id="agent-key"),
        pytest.param("sk-revoked", id="revoked-integration-key"),
    ],
)
def test_credentials_of_other_kinds_or_revoked_are_401_and_reach_nothing(
    make_world: Callable[..., World], key: str
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    # A user token names its team; here it makes no difference: the kind is not admitted.
    for agent in agents(world, key, **{"X-Team-ID": str(TEAM)}):
        assert_refused_untouched(world, call_echo(agent, status=401), 401, "unauthenticated")
        listed = agent.call("list_container_services", {}, status=401)
        assert_refused_untouched(world, listed, 401, "unauthenticated")


def test_a_user_token_without_its_team_is_401_where_users_are_not_admitted(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    for agent in agents(world, "jwt-member"):
        assert_refused_untouched(world, call_echo(agent, status=401), 401, "unauthenticated")


class _FlakyMemberships(InMemoryMembershipStore):
    """Memberships whose reads fail as a store that cannot answer fails them."""

    down = False

    def role_of(self, team_id: uuid.UUID, user_id: str) -> Role | None:
        if self.down:
            raise StoreUnavailableError
        return super().role_of(team_id, user_id)


def test_a_user_credential_is_401_where_users_are_not_admitted_even_if_the_store_is_down(
    make_world: Callable[..., World],
) -> None:
    # Told to retry, a client would retry a credential that can never be admitted here; and
    # the 503 would tell a device key whose hash matched from one that did not. An
    # integration key in the same outage is told to retry: it may be good.
    credentials, memberships = InMemoryCredentialStore(), _FlakyMemberships()
    world = make_world(
        credentials=credentials,
        memberships=memberships,
        resolvers=[CredentialResolver(credentials, memberships), hs256_resolver(memberships)],
        settings=PipelineSettings(mcp_credential_kinds=frozenset({CredentialKind.INTEGRATION})),
    )
    world.keys["jwt-member"] = user_token(Role.MEMBER)
    memberships.down = True
    for key in ("member", "jwt-member"):
        for agent in agents(world, key, **{"X-Team-ID": str(TEAM)}):
            assert_refused_untouched(world, call_echo(agent, status=401), 401, "unauthenticated")

    def down(prefix: str) -> list[CredentialRecord]:
        raise StoreUnavailableError

    credentials.find_by_prefix = down  # type: ignore[method-assign]
    for agent in agents(world, "sk"):
        refused = call_echo(agent, status=503)
        assert_refused_untouched(world, refused, 503, "store_unavailable")
        assert refused.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Bearer sk-", id="bare-prefix"),
        pytest.param("Bearer sk-not-a-key-at-all", id="unknown-key"),
        pytest.param("Bearer not.a.jwt", id="garbage-jwt"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Bearer sk-\u00e9\u00e9", id="non-ascii"),
    ],
)
def test_missing_or_malformed_credentials_are_401_and_reach_nothing(
    make_world: Callable[..., World], authorization: str | None
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    for agent in agents(world, "sk"):
        headers = dict(agent.headers)
        if authorization is None:
            # WebTest cannot omit a header once set: post without the agent's credentials.
            response = world.app.post_json(
                "/r/mcp",
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json", **headers},
                status=401,
            )
        else:
            agent.headers["Authorization"] = authorization
            response = call_echo(agent, status=401)
        assert_refused_untouched(world, response, 401, "unauthenticated")


def test_every_refused_credential_gets_the_same_message(make_world: Callable[..., World]) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    messages = set()
    for key in ("member", "jwt-member", "ak", "sk-revoked"):
        agent = Agent(world, key=key, version="2025-11-25")
        messages.add(call_echo(agent, status=401).json["error_message"])
    agent = Agent(world, version="2025-11-25")
    agent.headers["Authorization"] = "Bearer sk-unknown"
    messages.add(call_echo(agent, status=401).json["error_message"])
    assert len(messages) == 1


# -- the setting admits device keys and user tokens ---------------------------------------


@pytest.mark.parametrize(
    ("key", "team_header"),
    [
        pytest.param("member", None, id="device-key"),
        pytest.param("owner", str(OTHER_TEAM), id="device-key-ignores-x-team-id"),
        pytest.param("jwt-member", str(TEAM), id="jwt"),
    ],
)
def test_admitted_user_credentials_of_member_rank_call_services(
    make_world: Callable[..., World], key: str, team_header: str | None
) -> None:
    world = jwt_world(make_world, ALL_KINDS)
    extra = {} if team_header is None else {"X-Team-ID": team_header}
    for agent in agents(world, key, **extra):
        result = call_echo(agent).json["result"]
        assert result["isError"] is False, result
    assert [r.target for r in world.upstream.received] == ["/from-mcp", "/from-mcp"]
    assert {event.principal.team_id for event in world.started} == {TEAM}
    assert world.upstream.received[0].header("Authorization") is None


@pytest.mark.parametrize("key", ["viewer", "jwt-viewer"])
def test_an_admitted_viewer_may_list_but_its_calls_are_forbidden_tool_errors(
    make_world: Callable[..., World], key: str
) -> None:
    world = jwt_world(make_world, ALL_KINDS)
    for agent in agents(world, key, **{"X-Team-ID": str(TEAM)}):
        listed = agent.call("list_container_services", {}).json["result"]
        assert "echo" in {s["slug"] for s in listed["structuredContent"]["services"]}
        called = call_echo(agent).json["result"]
        assert called["isError"] is True
        assert "forbidden" in called["content"][0]["text"]
    assert world.upstream.received == []
    assert world.started == []


def test_where_users_are_admitted_their_refusals_keep_their_own_codes(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, ALL_KINDS)
    agent = Agent(world, key="jwt-member", version="2025-11-25")
    assert_refused_untouched(world, call_echo(agent, status=400), 400, "missing_team")
    stranger = Agent(world, key="jwt-stranger", version="2025-11-25")
    stranger.headers["X-Team-ID"] = str(TEAM)
    assert_refused_untouched(world, call_echo(stranger, status=403), 403, "forbidden")
    agent_key = Agent(world, key="ak", version="2025-11-25")
    assert_refused_untouched(world, call_echo(agent_key, status=401), 401, "unauthenticated")


def test_a_key_revoked_between_calls_is_refused_on_the_next_one(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, frozenset({CredentialKind.INTEGRATION}))
    credentials = world.middleware.credentials
    issued = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    world.keys["fresh"] = issued.key
    agent = Agent(world, key="fresh", version="2025-11-25")
    assert call_echo(agent).json["result"]["isError"] is False
    credentials.revoke(issued.record.id)
    world.upstream.received.clear()
    world.started.clear()
    assert_refused_untouched(world, call_echo(agent, status=401), 401, "unauthenticated")


def test_an_openapi_document_a_member_fetched_is_not_handed_to_a_viewer(
    make_world: Callable[..., World],
) -> None:
    world = jwt_world(make_world, ALL_KINDS)
    world.registry.add(make_service("documented", world.upstream.url, openapi_url="/openapi.json"))
    team = {"X-Team-ID": str(TEAM)}
    member = Agent(world, key="jwt-member", version="2025-11-25", headers=dict(team))
    viewer = Agent(world, key="jwt-viewer", version="2025-11-25", headers=dict(team))

    fetched = member.call("get_container_service", {"service_slug": "documented"})
    assert fetched.json["result"]["structuredContent"]["openapi"]["status"] == "included"
    seen = viewer.call("get_container_service", {"service_slug": "documented"})

    # The Viewer may read the metadata, but the document comes through a relay it may not make.
    assert seen.json["result"]["structuredContent"]["service"]["slug"] == "documented"
    assert seen.json["result"]["structuredContent"]["openapi"]["status"] != "included"
    assert [r.target for r in world.upstream.received] == ["/openapi.json"]
