"""Two gateway processes sharing one PostgreSQL store: what one process (or the command line)
changes, the other applies on its very next request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.cli.conftest import Workspace, running_gateway
from tests.store.conftest import postgres_schema, postgres_server  # noqa: F401
from tests.toolkit.upstream import RecordingUpstream


@pytest.fixture
def shared(tmp_path: Path, postgres_server: sa.Engine) -> Iterator[Workspace]:  # noqa: F811
    """A workspace whose store is a fresh PostgreSQL schema."""
    with postgres_schema(postgres_server) as url:
        space = Workspace(tmp_path)
        space.run("init", "--database", url)
        yield space


def invoke(url: str, key: str) -> requests.Response:
    return requests.post(
        f"{url}/r/invoke/shared",
        json={"method": "GET", "path": "/ping"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_a_revocation_through_one_gateway_is_refused_by_the_other(
    shared: Workspace, upstream: RecordingUpstream
) -> None:
    team = str(shared.team)
    shared.add_service("shared", upstream.url, team=team)
    key = shared.issue("--kind", "integration")
    kept = shared.issue("--kind", "integration")
    with running_gateway(shared) as first, running_gateway(shared) as second:
        assert first.url != second.url
        assert invoke(first.url, key).status_code == 200
        assert invoke(second.url, key).status_code == 200

        prefix = key[:12]
        shared.run("credentials", "revoke", prefix)

        for gateway in (first, second):
            refused = invoke(gateway.url, key)
            assert refused.status_code == 401
            assert refused.json()["code"] == "unauthenticated"
            assert invoke(gateway.url, kept).status_code == 200
    assert len(upstream.received) == 4


def test_a_role_change_reaches_both_gateways_on_the_next_request(
    shared: Workspace, upstream: RecordingUpstream
) -> None:
    team = str(shared.team)
    shared.add_service("shared", upstream.url, team=team)
    user = f"user-{uuid.uuid4().hex[:6]}"
    shared.run("members", "set", "--team", team, "--user", user, "member")
    key = shared.issue("--kind", "device", "--user", user)
    with running_gateway(shared) as first, running_gateway(shared) as second:
        assert invoke(first.url, key).status_code == 200
        shared.run("members", "set", "--team", team, "--user", user, "viewer")
        assert invoke(first.url, key).status_code == 403
        assert invoke(second.url, key).status_code == 403
        shared.run("members", "remove", "--team", team, "--user", user)
        assert invoke(second.url, key).json()["code"] == "forbidden"
