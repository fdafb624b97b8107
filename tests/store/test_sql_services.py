"""The SQL store's service registry, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from invoke_middleware.registry import Service, ServiceStatus, ServiceType
from invoke_middleware.store import DuplicateServiceError, SQLStore
from invoke_middleware.transport.base import Timeouts
from tests.store.conftest import Backend, FakeClock

TEAM = uuid.UUID("6f1b1c52-0c39-4d8e-9d55-3c3f3f0e7a01")
OTHER_TEAM = uuid.UUID("0b6e0bb0-55d5-4a3e-8a43-7f0b8f7c1c02")


def deployed(slug: str = "echo", *, team_id: uuid.UUID = TEAM, **fields: Any) -> Service:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "team_id": team_id,
        "slug": slug,
        "display_name": f"The {slug} service",
        "service_type": ServiceType.DEPLOYED,
        "service_status": ServiceStatus.RUNNING,
        "upstream_url": "http://127.0.0.1:8080/base",
    }
    values.update(fields)
    return Service(**values)


def external(slug: str = "weather", **fields: Any) -> Service:
    values: dict[str, Any] = {
        "service_type": ServiceType.EXTERNAL,
        "upstream_url": None,
        "external_url": "https://api.example.com/v2",
    }
    values.update(fields)
    return deployed(slug, **values)


SERVICES = [
    pytest.param(deployed(), id="deployed-minimal"),
    pytest.param(
        deployed(
            "full-deployed",
            service_status=ServiceStatus.DEPLOYING,
            usage_prompt="Echoes what it is sent. Ünïcödé welcome.",
            openapi_url="/openapi.json",
            timeouts=Timeouts(connect=1.5, read=20.0, total=90.0),
        ),
        id="deployed-all-fields",
    ),
    pytest.param(external(), id="external-minimal"),
    pytest.param(
        external(
            "full-external",
            external_url="https://api.example.com/" + "p" * 2000,
            external_auth_credential_id="WEATHER_API_TOKEN",
            usage_prompt="Forecasts by city.",
            openapi_url="/spec.yaml",
            timeouts=Timeouts(read=3.0),
        ),
        id="external-all-fields",
    ),
]


def test_init_is_idempotent_and_keeps_data(backend: Backend) -> None:
    store = backend.open_store()
    store.services.add(deployed())
    store.init()
    backend.open_store().init()

    assert [s.slug for s in store.services.list(TEAM)] == ["echo"]


def test_init_creates_the_indexes_lookups_use(store: SQLStore) -> None:
    inspector = sa.inspect(store.engine)

    unique = inspector.get_unique_constraints("invoke_services")
    assert [c["column_names"] for c in unique] == [["team_id", "slug"]]
    indexed = [i["column_names"] for i in inspector.get_indexes("invoke_credentials")]
    assert ["prefix"] in indexed
    assert inspector.get_pk_constraint("invoke_memberships")["constrained_columns"] == [
        "team_id",
        "user_id",
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_round_trips_with_every_field(backend: Backend, service: Service) -> None:
    backend.open_store().services.add(service)
    fresh = backend.open_store()

    assert fresh.services.get(TEAM, service.slug) == service
    assert list(fresh.services.list(TEAM)) == [service]
    assert fresh.services.list_all() == [service]


def test_list_is_in_slug_order_and_only_the_teams_own(store: SQLStore) -> None:
    for slug in ["zeta", "alpha", "mid"]:
        store.services.add(deployed(slug))
    store.services.add(deployed("beta", team_id=OTHER_TEAM))

    assert [s.slug for s in store.services.list(TEAM)] == ["alpha", "mid", "zeta"]
    assert [s.slug for s in store.services.list(OTHER_TEAM)] == ["beta"]
    assert not store.services.list(uuid.uuid4())


def test_another_teams_slug_is_not_visible(store: SQLStore) -> None:
    store.services.add(deployed("private", team_id=OTHER_TEAM))

    assert store.services.get(TEAM, "private") is None
    assert store.services.get(OTHER_TEAM, "private") is not None


def test_two_teams_may_use_the_same_slug(store: SQLStore) -> None:
    store.services.add(deployed("shared"))
    store.services.add(deployed("shared", team_id=OTHER_TEAM))

    assert store.services.get(TEAM, "shared") != store.services.get(OTHER_TEAM, "shared")


def test_a_duplicate_slug_in_one_team_is_rejected(store: SQLStore) -> None:
    original = deployed("echo")
    store.services.add(original)

    with pytest.raises(DuplicateServiceError, match="already has a service 'echo'"):
        store.services.add(deployed("echo", display_name="Impostor"))
    assert store.services.get(TEAM, "echo") == original


def test_a_duplicate_id_is_rejected(store: SQLStore) -> None:
    first = deployed("first")
    store.services.add(first)

    with pytest.raises(DuplicateServiceError, match=f"id {first.id} already exists"):
        store.services.add(deployed("second", id=first.id))
    assert store.services.get(TEAM, "second") is None


def test_duplicate_service_error_is_a_value_error() -> None:
    assert issubclass(DuplicateServiceError, ValueError)


@pytest.mark.parametrize(
    "slug",
    [
        pytest.param("", id="empty"),
        pytest.param("Echo", id="upper-case"),
        pytest.param("echo/../x", id="path"),
        pytest.param("e" * 101, id="too-long"),
    ],
)
def test_an_invalid_slug_is_simply_not_found(store: SQLStore, slug: str) -> None:
    assert store.services.get(TEAM, slug) is None


def test_set_status_changes_only_that_service(store: SQLStore) -> None:
    store.services.add(deployed("echo"))
    store.services.add(deployed("echo", team_id=OTHER_TEAM))

    assert store.services.set_status(TEAM, "echo", ServiceStatus.STOPPED) is True

    found = store.services.get(TEAM, "echo")
    assert found is not None
    assert found.service_status is ServiceStatus.STOPPED
    untouched = store.services.get(OTHER_TEAM, "echo")
    assert untouched is not None
    assert untouched.service_status is ServiceStatus.RUNNING


def test_set_status_of_an_unknown_service_reports_false(store: SQLStore) -> None:
    assert store.services.set_status(TEAM, "ghost", ServiceStatus.RUNNING) is False


def test_set_status_rejects_an_unknown_status(store: SQLStore) -> None:
    store.services.add(deployed())

    with pytest.raises(ValueError, match="paused"):
        store.services.set_status(TEAM, "echo", "paused")  # type: ignore[arg-type]


def test_remove_deletes_only_that_service(store: SQLStore) -> None:
    store.services.add(deployed("echo"))
    store.services.add(deployed("other"))

    assert store.services.remove(TEAM, "echo") is True
    assert store.services.remove(TEAM, "echo") is False

    assert store.services.get(TEAM, "echo") is None
    assert [s.slug for s in store.services.list(TEAM)] == ["other"]


class TestServiceCache:
    """Lookups are cached for the TTL; this store's own writes clear the cache at once."""

    def test_a_write_elsewhere_shows_after_the_ttl_and_not_before(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        gateway = backend.open_store(service_cache_ttl=5, clock=clock)
        admin = backend.open_store(service_cache_ttl=0)
        admin.services.add(deployed("echo"))
        assert gateway.services.get(TEAM, "echo") is not None
        assert gateway.services.get(TEAM, "new") is None
        assert len(gateway.services.list(TEAM)) == 1

        admin.services.set_status(TEAM, "echo", ServiceStatus.STOPPED)
        admin.services.add(deployed("new"))
        clock.advance(4.9)

        cached = gateway.services.get(TEAM, "echo")
        assert cached is not None
        assert cached.service_status is ServiceStatus.RUNNING
        assert gateway.services.get(TEAM, "new") is None
        assert len(gateway.services.list(TEAM)) == 1

        clock.advance(0.1)

        fresh = gateway.services.get(TEAM, "echo")
        assert fresh is not None
        assert fresh.service_status is ServiceStatus.STOPPED
        assert gateway.services.get(TEAM, "new") is not None
        assert len(gateway.services.list(TEAM)) == 2

    def test_a_ttl_of_zero_reads_every_time(self, backend: Backend, clock: FakeClock) -> None:
        gateway = backend.open_store(service_cache_ttl=0, clock=clock)
        admin = backend.open_store(service_cache_ttl=0)
        admin.services.add(deployed("echo"))
        assert gateway.services.get(TEAM, "echo") is not None

        admin.services.remove(TEAM, "echo")

        assert gateway.services.get(TEAM, "echo") is None
        assert not gateway.services.list(TEAM)

    @pytest.mark.parametrize(
        "write",
        [
            pytest.param(lambda s: s.services.add(deployed("new")), id="add"),
            pytest.param(
                lambda s: s.services.set_status(TEAM, "echo", ServiceStatus.FAILED),
                id="set-status",
            ),
            pytest.param(lambda s: s.services.remove(TEAM, "echo"), id="remove"),
        ],
    )
    def test_own_writes_show_at_once(
        self, backend: Backend, clock: FakeClock, write: object
    ) -> None:
        gateway = backend.open_store(service_cache_ttl=60, clock=clock)
        gateway.services.add(deployed("echo"))
        before = (gateway.services.get(TEAM, "echo"), gateway.services.get(TEAM, "new"))
        listed_before = gateway.services.list(TEAM)

        write(gateway)  # type: ignore[operator]

        after = (gateway.services.get(TEAM, "echo"), gateway.services.get(TEAM, "new"))
        assert after != before
        assert gateway.services.list(TEAM) != listed_before


def test_a_row_todays_rules_refuse_is_left_out_not_a_failure(
    store: SQLStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A row an earlier release stored with an upstream URL no transport can use (port 0).
    store.services.add(deployed("fine"))
    store.services.add(deployed("broken"))
    with store.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE invoke_services SET upstream_url = :url WHERE slug = 'broken'"),
            {"url": "http://svc.example:0/base"},
        )
    store.services.invalidate()

    assert [s.slug for s in store.services.list(TEAM)] == ["fine"]
    assert [s.slug for s in store.services.list_all()] == ["fine"]
    assert store.services.get(TEAM, "broken") is None
    assert store.services.get(TEAM, "fine") is not None
    assert "service broken of team" in caplog.text
    assert "upstream_url has an invalid port" in caplog.text
