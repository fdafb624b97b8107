"""GET /r/containers and GET /r/containers/{slug}: public metadata only
(docs/contract.md §1, §2)."""

from __future__ import annotations

import uuid

import pytest

from invoke_middleware import Service, ServiceStatus
from tests.toolkit.world import World, default_services


def test_list_shows_the_callers_team_only(world: World) -> None:
    res = world.app.get("/r/containers", headers=world.auth())
    slugs = [s["slug"] for s in res.json["services"]]
    assert "echo" in slugs
    assert "theirs" not in slugs
    assert slugs == sorted(slugs)
    assert res.headers["X-Request-ID"]


def test_a_registry_that_answers_with_another_teams_services_shows_none_of_them(
    world: World,
) -> None:
    # A host's registry with a bug: it lists every service, whatever the team asked for.
    everything = default_services(world.upstream.url)
    assert {s.team_id for s in everything} != {everything[0].team_id}  # two teams' services
    world.middleware.pipeline.registry = _ListsEverything(everything)
    res = world.app.get("/r/containers", headers=world.auth())
    slugs = [s["slug"] for s in res.json["services"]]
    assert "echo" in slugs
    assert "theirs" not in slugs


class _ListsEverything:
    def __init__(self, services: list[Service]) -> None:
        self.services = services

    def get(self, team_id: uuid.UUID, slug: str) -> Service | None:
        return next((s for s in self.services if s.team_id == team_id and s.slug == slug), None)

    def list(self, team_id: uuid.UUID) -> list[Service]:
        return list(self.services)


def test_metadata_never_shows_upstream_or_credential_reference(world: World) -> None:
    res = world.app.get("/r/containers", headers=world.auth())
    assert world.upstream.url not in res.text
    assert "127.0.0.1" not in res.text
    one = world.app.get("/r/containers/echo", headers=world.auth())
    assert set(one.json) == {
        "id",
        "team_id",
        "slug",
        "display_name",
        "service_type",
        "service_status",
        "usage_prompt",
        "openapi_url",
    }
    assert world.upstream.url not in one.text


@pytest.mark.parametrize("status", [s for s in ServiceStatus if s is not ServiceStatus.RUNNING])
def test_metadata_works_in_every_status(world: World, status: ServiceStatus) -> None:
    res = world.app.get(f"/r/containers/svc-{status.value}", headers=world.auth())
    assert res.json["service_status"] == status.value


@pytest.mark.parametrize(
    "slug",
    [
        pytest.param("theirs", id="other-team"),
        pytest.param("missing", id="unknown"),
        pytest.param("UPPER", id="invalid-upper"),
        pytest.param("a", id="invalid-short"),
        pytest.param("-dash", id="invalid-dash"),
    ],
)
def test_unknown_invalid_and_foreign_slugs_are_the_same_404(world: World, slug: str) -> None:
    res = world.app.get(f"/r/containers/{slug}", headers=world.auth(), status=404)
    assert res.json["code"] == "service_not_found"
    assert res.json["error_message"] == "Service not found."


def test_metadata_routes_refuse_other_methods(world: World) -> None:
    res = world.app.post("/r/containers", headers=world.auth(), status=405)
    assert res.json["code"] == "method_not_allowed"
    world.app.delete("/r/containers/echo", headers=world.auth(), status=405)


def test_head_on_list_has_no_body(world: World) -> None:
    res = world.app.head("/r/containers", headers=world.auth())
    assert res.status_int == 200
    assert res.body == b""
