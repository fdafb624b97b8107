"""Limits are configured wherever the gateway is: ini, Flask, the ``[limits]`` table, the SQL
store and the command line; a bad value fails at start-up and names its key."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from webtest import TestApp

from invoke_middleware._toml_config import ConfigError, load_config, starter_config
from invoke_middleware.config import parse_flask_config, parse_settings
from invoke_middleware.limits import (
    LimitSettings,
    Rate,
    ServiceLimits,
    TeamLimits,
    fair_share,
)
from invoke_middleware.standalone import build_standalone_app
from invoke_middleware.store import SQLStore, create_engine
from tests.cli.conftest import Workspace
from tests.limits.conftest import run_concurrently
from tests.store.conftest import Backend, FakeClock
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import TEAM, make_service


def test_ini_settings_build_a_limiter() -> None:
    config = parse_settings(
        {
            "invoke.limits.team_max_in_flight": "4",
            "invoke.limits.credential_rate": "10/second",
            "invoke.limits.team_rate": "600 per 1 minute",
            "invoke.limits.fail_open": "off",
            "invoke.limits.queue_timeout": "0.25",
        }
    )
    assert config.limits == LimitSettings(
        team_max_in_flight=4,
        credential_rate=Rate(amount=10, window=1),
        team_rate=Rate(amount=600, window=60),
        fail_open=False,
        queue_timeout=0.25,
    )
    middleware = config.build_middleware(lambda environ, start_response: [])
    assert middleware.pipeline.limiter is not None
    assert middleware.pipeline.limiter.settings == config.limits


def test_without_limit_settings_there_is_no_limiter() -> None:
    middleware = parse_settings({}).build_middleware(lambda environ, start_response: [])
    assert middleware.pipeline.limiter is None


def test_flask_config_takes_typed_values_and_a_teams_mapping() -> None:
    config = parse_flask_config(
        {
            "INVOKE_LIMITS_SERVICE_MAX_IN_FLIGHT": 3,
            "INVOKE_LIMITS_TEAMS": {str(TEAM): {"rate": "5/minute", "max_in_flight": 2}},
        }
    )
    assert config.limits is not None
    assert config.limits.service_max_in_flight == 3
    assert config.limits.teams == {
        TEAM: TeamLimits(rate=Rate(amount=5, window=60), max_in_flight=2)
    }


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        pytest.param("invoke.limits.team_rate", "lots", "a rate such as", id="rate"),
        # The library reads a list and keeps its first rate: the second limit would be lost.
        pytest.param(
            "invoke.limits.team_rate", "100/minute;10/second", "not a list", id="rate-list"
        ),
        # ... and reads a window of no units as one unit.
        pytest.param("invoke.limits.team_rate", "5/0 seconds", "at least one unit", id="zero"),
        pytest.param("invoke.limits.team_max_in_flight", "0", "positive integer", id="cap"),
        pytest.param("invoke.limits.storage_url", "mongodb://x", "redis://", id="storage"),
        pytest.param("invoke.limits.fail_open", "maybe", "boolean", id="fail-open"),
        pytest.param("invoke.limits.queue_timeout", "-1", "seconds", id="queue-timeout"),
        pytest.param("invoke.limits.teem_rate", "1/second", "did you mean", id="typo"),
    ],
)
def test_a_bad_limit_setting_fails_naming_its_key(key: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({key: value})
    assert caught.value.key == key
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "rates",
    [
        pytest.param({"invoke.limits.team_rate": "5/second"}, id="gateway-wide-rate"),
        pytest.param({}, id="rates-only-from-teams-and-services"),
    ],
)
def test_a_storage_url_that_cannot_be_used_fails_at_start_up(rates: dict[str, str]) -> None:
    # Without a gateway-wide rate, the store was first needed by the first request of a team
    # or a service with its own rate: that request got a 500, and every one after it.
    config = parse_settings(
        {
            "invoke.limits.storage_url": "redis://127.0.0.1:port/0",
            "invoke.limits.team_max_in_flight": "4",
            **rates,
        }
    )
    with pytest.raises(ConfigError) as caught:
        config.build_middleware(lambda environ, start_response: [])
    assert caught.value.key == "invoke.limits.storage_url"


def test_a_redis_password_never_appears_in_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"invoke.limits.storage_url": "memcached://:hunter2@cache:11211"})
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(LimitSettings(storage_url="redis://:hunter2@cache:6379"))


def _write(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(starter_config().replace("[limits]\n", "[limits]\n" + limits, 1))
    return path


def test_the_limits_table_of_the_standalone_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'team_rate = "100/minute"\nservice_max_in_flight = 2\n'
        f'[limits.teams."{TEAM}"]\nmax_in_flight = 6\n',
    )
    config = load_config(path).gateway.resolve({})
    assert config.limits == LimitSettings(
        team_rate=Rate(amount=100, window=60),
        service_max_in_flight=2,
        teams={TEAM: TeamLimits(max_in_flight=6)},
    )


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        pytest.param("team_rate = 100\n", "[limits] team_rate", id="number-for-rate"),
        pytest.param('team_max_in_flight = "4"\n', "[limits] team_max_in_flight", id="string"),
        pytest.param('[limits.teams.not-a-uuid]\nrate = "1/second"\n', "[limits] teams", id="team"),
        pytest.param("burst = 3\n", "[limits] burst", id="unknown"),
    ],
)
def test_a_bad_limits_table_fails_naming_the_key(tmp_path: Path, limits: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, limits))
    assert f"{key}:" in str(caught.value)


@pytest.mark.parametrize(
    ("limits", "reserve"),
    [
        pytest.param("", 1, id="default"),
        pytest.param("idle_team_reserve = 2\n", 2, id="the-reserve-alone"),
        pytest.param("idle_team_reserve = 0\n", 0, id="off"),
    ],
)
def test_the_standalone_gateway_gives_each_team_half_the_threads(
    tmp_path: Path, limits: str, reserve: int
) -> None:
    path = _write(tmp_path, limits)
    gateway = build_standalone_app(load_config(path), {}, threads=8)
    try:
        limiter = gateway.app.pipeline.limiter
        assert limiter is not None
        assert limiter.settings.team_max_in_flight == 4
        assert limiter.settings.max_in_flight == 7
        assert limiter.settings.idle_team_reserve == reserve
    finally:
        gateway.close()


def test_a_reserve_the_relays_cannot_hold_fails_naming_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_standalone_app(
            load_config(_write(tmp_path, "idle_team_reserve = 7\n")), {}, threads=8
        )
    assert "[limits] idle_team_reserve:" in str(caught.value)
    assert "must be below max_in_flight (7)" in str(caught.value)


def test_an_ini_reserve_without_its_caps_fails_naming_its_key() -> None:
    config = parse_settings({"invoke.limits.idle_team_reserve": "2"})
    with pytest.raises(ConfigError) as caught:
        config.build_middleware(lambda environ, start_response: [])
    assert caught.value.key == "invoke.limits.idle_team_reserve"


@pytest.mark.parametrize(
    ("threads", "team", "total"),
    [
        pytest.param(1, 1, 1, id="one-thread"),
        pytest.param(2, 1, 1, id="two-threads"),
        pytest.param(8, 4, 7, id="default"),
        pytest.param(33, 16, 32, id="many"),
    ],
)
def test_fair_share_defaults(threads: int, team: int, total: int) -> None:
    settings = fair_share(None, threads)
    assert (settings.team_max_in_flight, settings.max_in_flight) == (team, total)


def test_explicit_caps_win_over_the_fair_share_defaults() -> None:
    settings = fair_share(LimitSettings(team_max_in_flight=6, max_in_flight=20), 8)
    assert (settings.team_max_in_flight, settings.max_in_flight) == (6, 20)


def test_a_team_cap_that_covers_every_thread_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    team = uuid.UUID(int=7)
    given = LimitSettings(team_max_in_flight=8, teams={team: TeamLimits(max_in_flight=9)})
    with caplog.at_level(logging.WARNING, logger="invoke_middleware.limits"):
        settings = fair_share(given, 8)
    assert settings.team_max_in_flight == 8
    assert [record.getMessage() for record in caplog.records] == [
        "limits: team_max_in_flight = 8 lets one team hold all 8 worker threads; other teams' "
        "requests then wait for its relays to end",
        f"limits: teams.{team}.max_in_flight = 9 lets one team hold all 8 worker threads; "
        "other teams' requests then wait for its relays to end",
    ]


def test_caps_below_the_thread_count_pass_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    given = LimitSettings(
        team_max_in_flight=7, teams={uuid.UUID(int=7): TeamLimits(max_in_flight=7)}
    )
    with caplog.at_level(logging.WARNING, logger="invoke_middleware.limits"):
        fair_share(given, 8)
    assert caplog.records == []


# -- the SQL store ------------------------------------------------------------------------

#: What a store made before per-service and per-team limits lacks.
_NO_SERVICE_LIMITS = tuple(
    f"ALTER TABLE invoke_services DROP COLUMN {column}"
    for column in ("max_in_flight", "rate_amount", "rate_window")
)
_NO_TEAM_LIMITS = ("DROP TABLE invoke_team_limits",)


def _execute(url: str, statements: tuple[str, ...]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    engine.dispose()


def test_a_services_limits_round_trip_through_the_store(backend: Backend) -> None:
    store = backend.open_store(service_cache_ttl=0)
    limits = ServiceLimits(rate=Rate(amount=100, window=60), max_in_flight=3)
    store.services.add(make_service("svc", "http://127.0.0.1:9", limits=limits))
    assert store.services.get(TEAM, "svc").limits == limits  # type: ignore[union-attr]
    assert store.services.set_limits(TEAM, "svc", ServiceLimits(max_in_flight=1))
    assert store.services.get(TEAM, "svc").limits == ServiceLimits(max_in_flight=1)  # type: ignore[union-attr]
    assert not store.services.set_limits(uuid.uuid4(), "svc", ServiceLimits())


def test_a_store_made_before_limits_keeps_working_and_init_adds_the_columns(
    backend: Backend,
) -> None:
    backend.open_store().services.add(make_service("svc", "http://127.0.0.1:9"))
    _execute(backend.url, _NO_SERVICE_LIMITS)

    with SQLStore(backend.url, service_cache_ttl=0) as old:
        service = old.services.get(TEAM, "svc")
        assert service is not None
        assert service.limits == ServiceLimits()
        old.services.add(make_service("other", "http://127.0.0.1:9"))
        assert [s.slug for s in old.services.list(TEAM)] == ["other", "svc"]
        with pytest.raises(ValueError, match="init"):
            old.services.set_limits(TEAM, "svc", ServiceLimits(max_in_flight=2))

        old.init()
        assert old.services.set_limits(TEAM, "svc", ServiceLimits(max_in_flight=2))
        assert old.services.get(TEAM, "svc").limits == ServiceLimits(max_in_flight=2)  # type: ignore[union-attr]
        old.init()  # and again: nothing to add


def test_a_teams_own_limits_round_trip_through_the_store(backend: Backend) -> None:
    store = backend.open_store(service_cache_ttl=0)
    other = uuid.uuid4()
    assert store.team_limits.get(TEAM) is None
    limits = TeamLimits(rate=Rate(amount=100, window=60), max_in_flight=3)
    store.team_limits.set(TEAM, limits)
    store.team_limits.set(other, TeamLimits(max_in_flight=1))
    assert store.team_limits.get(TEAM) == limits
    assert sorted(store.team_limits.list_all()) == sorted(
        [(TEAM, limits), (other, TeamLimits(max_in_flight=1))]
    )
    store.team_limits.set(TEAM, TeamLimits())  # nothing of its own left: the row goes
    assert store.team_limits.get(TEAM) is None
    assert store.team_limits.list_all() == [(other, TeamLimits(max_in_flight=1))]


def test_team_limits_are_cached_and_the_stores_own_writes_clear_the_cache(
    backend: Backend,
) -> None:
    store = backend.open_store(service_cache_ttl=60)
    elsewhere = backend.open_store(service_cache_ttl=0)  # another process's view
    assert store.team_limits.get(TEAM) is None
    elsewhere.team_limits.set(TEAM, TeamLimits(max_in_flight=2))
    assert store.team_limits.get(TEAM) is None  # cached: shows after the TTL
    store.team_limits.set(TEAM, TeamLimits(max_in_flight=5))
    assert store.team_limits.get(TEAM) == TeamLimits(max_in_flight=5)


def test_a_store_made_before_team_limits_keeps_working_and_init_adds_the_table(
    backend: Backend,
) -> None:
    backend.open_store()
    _execute(backend.url, _NO_TEAM_LIMITS)

    with SQLStore(backend.url, service_cache_ttl=0) as old:
        assert old.team_limits.get(TEAM) is None
        assert old.team_limits.list_all() == []
        with pytest.raises(ValueError, match="init"):
            old.team_limits.set(TEAM, TeamLimits(max_in_flight=2))
        old.init()
        old.team_limits.set(TEAM, TeamLimits(max_in_flight=2))
        assert old.team_limits.get(TEAM) == TeamLimits(max_in_flight=2)


def test_init_run_by_several_processes_at_once_upgrades_a_store_once(backend: Backend) -> None:
    # Each reads the schema, then adds what it lacks: the later ones found the table or the
    # column already there ("duplicate column", "already exists") and failed.
    writers = 4
    for _ in range(5):  # a lost race shows in some rounds, not in every one
        backend.open_store()
        _execute(backend.url, _NO_SERVICE_LIMITS + _NO_TEAM_LIMITS)
        stores = [SQLStore(backend.url) for _ in range(writers)]
        try:
            run_concurrently(writers, lambda n, stores=stores: stores[n].init())
            stores[0].team_limits.set(TEAM, TeamLimits(max_in_flight=2))
            stores[0].services.add(make_service("svc", "http://127.0.0.1:9", limits=LIMITED))
            assert stores[0].services.get(TEAM, "svc").limits == LIMITED  # type: ignore[union-attr]
            assert stores[0].team_limits.get(TEAM) == TeamLimits(max_in_flight=2)
        finally:
            for store in stores:
                store.close()
        _execute(backend.url, ("DELETE FROM invoke_services",))


LIMITED = ServiceLimits(rate=Rate(amount=5, window=1), max_in_flight=2)


def test_init_upgrades_a_store_through_an_engine_that_sets_its_own_transactions(
    backend: Backend,
) -> None:
    # Engines a host may hand the store: AUTOCOMMIT on PostgreSQL (the init's lock and DDL
    # must still be one transaction, or inits at once fail as above), and on SQLite the
    # recipe that begins every transaction itself (an init's BEGIN IMMEDIATE then failed,
    # and without it inits at once were "database is locked").
    backend.open_store()
    _execute(backend.url, _NO_SERVICE_LIMITS + _NO_TEAM_LIMITS)
    engines = [create_engine(backend.url) for _ in range(4)]
    for engine in engines:
        if backend.name == "sqlite":
            sa.event.listen(engine, "connect", _no_implicit_transactions)
            sa.event.listen(engine, "begin", lambda c: c.exec_driver_sql("BEGIN"))
        else:
            engine.update_execution_options(isolation_level="AUTOCOMMIT")
    stores = [SQLStore(engine) for engine in engines]
    try:
        run_concurrently(len(stores), lambda n: stores[n].init())
        stores[0].services.add(make_service("svc", "http://127.0.0.1:9", limits=LIMITED))
        assert stores[0].services.get(TEAM, "svc").limits == LIMITED  # type: ignore[union-attr]
    finally:
        for engine in engines:
            engine.dispose()


def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def test_limits_stored_after_an_upgrade_elsewhere_reach_a_running_gateway_within_the_ttl(
    backend: Backend,
) -> None:
    backend.open_store().services.add(make_service("svc", "http://127.0.0.1:9"))
    _execute(backend.url, _NO_SERVICE_LIMITS + _NO_TEAM_LIMITS)
    clock = FakeClock()

    with SQLStore(backend.url, service_cache_ttl=2, clock=clock) as gateway:
        assert gateway.team_limits.get(TEAM) is None
        assert gateway.services.get(TEAM, "svc").limits == ServiceLimits()  # type: ignore[union-attr]
        # The command line, another process: `teams set-limits` and `services set-limits`.
        with SQLStore(backend.url, service_cache_ttl=0) as cli:
            cli.init()
            cli.team_limits.set(TEAM, TeamLimits(max_in_flight=2))
            cli.services.set_limits(TEAM, "svc", ServiceLimits(max_in_flight=1))
        clock.advance(2)

        seen = (gateway.team_limits.get(TEAM), gateway.services.get(TEAM, "svc").limits)  # type: ignore[union-attr]
        assert seen == (TeamLimits(max_in_flight=2), ServiceLimits(max_in_flight=1))


def test_an_uncached_limits_lookup_on_an_up_to_date_store_is_one_statement(
    backend: Backend,
) -> None:
    store = backend.open_store(service_cache_ttl=0)
    store.services.add(make_service("svc", "http://127.0.0.1:9"))

    def look_up() -> None:
        store.team_limits.get(TEAM)
        store.services.get(TEAM, "svc")

    look_up()  # the store's own write made it ask about the schema again
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for _ in range(3):
        look_up()
    assert len(statements) == 6, statements


def test_concurrent_writes_of_one_teams_limits_all_succeed_and_one_is_kept(
    backend: Backend,
) -> None:
    writers = 4
    stores = [backend.open_store(service_cache_ttl=0) for _ in range(writers)]
    written = [TeamLimits(max_in_flight=n + 1) for n in range(writers)]

    def write(team: uuid.UUID, n: int) -> None:
        stores[n].team_limits.set(team, written[n])

    for _ in range(10):  # a lost race shows in some rounds, not in every one
        team = uuid.uuid4()
        run_concurrently(writers, functools.partial(write, team))
        assert stores[0].team_limits.get(team) in written


_RATE = Rate(amount=100, window=60)


def test_concurrent_writers_of_different_limits_keep_both_changes(backend: Backend) -> None:
    # Two `set-limits` runs at once, one with --rate, one with --max-in-flight: reading the
    # row and writing it all back lost one change in some rounds.
    stores = [backend.open_store(service_cache_ttl=0) for _ in range(2)]
    written = (ServiceLimits(rate=_RATE), ServiceLimits(max_in_flight=3))
    fields = (["rate"], ["max_in_flight"])

    for round_number in range(10):
        team = uuid.uuid4()
        slug = f"svc{round_number}"
        stores[0].services.add(make_service(slug, "http://127.0.0.1:9", team=team))

        def write(n: int, team: uuid.UUID = team, slug: str = slug) -> None:
            assert stores[n].services.set_limits(team, slug, written[n], fields=fields[n])
            own = TeamLimits(rate=written[n].rate, max_in_flight=written[n].max_in_flight)
            stores[n].team_limits.set(team, own, fields=fields[n])

        run_concurrently(2, write)
        both = ServiceLimits(rate=_RATE, max_in_flight=3)
        assert stores[0].services.get(team, slug).limits == both  # type: ignore[union-attr]
        assert stores[0].team_limits.get(team) == TeamLimits(rate=_RATE, max_in_flight=3)


def test_a_limit_written_alone_leaves_the_others_and_the_last_one_cleared_drops_the_row(
    backend: Backend,
) -> None:
    store = backend.open_store(service_cache_ttl=0)
    store.services.add(make_service("svc", "http://127.0.0.1:9"))
    store.services.set_limits(TEAM, "svc", ServiceLimits(rate=_RATE, max_in_flight=3))
    assert store.services.set_limits(TEAM, "svc", ServiceLimits(), fields=["max_in_flight"])
    assert store.services.get(TEAM, "svc").limits == ServiceLimits(rate=_RATE)  # type: ignore[union-attr]

    store.team_limits.set(TEAM, TeamLimits(rate=_RATE, max_in_flight=3))
    store.team_limits.set(TEAM, TeamLimits(max_in_flight=7), fields=["max_in_flight"])
    assert store.team_limits.get(TEAM) == TeamLimits(rate=_RATE, max_in_flight=7)
    store.team_limits.set(TEAM, TeamLimits(), fields=["rate"])
    assert store.team_limits.list_all() == [(TEAM, TeamLimits(max_in_flight=7))]
    store.team_limits.set(TEAM, TeamLimits(), fields=["max_in_flight"])
    assert store.team_limits.list_all() == []
    # A first row holds only what is named.
    store.team_limits.set(TEAM, TeamLimits(rate=_RATE, max_in_flight=9), fields=["rate"])
    assert store.team_limits.get(TEAM) == TeamLimits(rate=_RATE)


@pytest.mark.parametrize("fields", [[], ["rate", "burst"]], ids=["none", "unknown"])
def test_limits_to_write_must_be_named_among_the_known_ones(
    backend: Backend, fields: list[str]
) -> None:
    store = backend.open_store(service_cache_ttl=0)
    store.services.add(make_service("svc", "http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="fields must name"):
        store.services.set_limits(TEAM, "svc", ServiceLimits(), fields=fields)
    with pytest.raises(ValueError, match="fields must name"):
        store.team_limits.set(TEAM, TeamLimits(), fields=fields)


def test_a_teams_stored_limits_take_precedence_over_the_configured_ones() -> None:
    configured = TeamLimits(rate=Rate(amount=50, window=60), max_in_flight=4)
    assert TeamLimits(max_in_flight=1).over(configured) == TeamLimits(
        rate=Rate(amount=50, window=60), max_in_flight=1
    )
    assert TeamLimits(rate=Rate(amount=5, window=1)).over(None) == TeamLimits(
        rate=Rate(amount=5, window=1)
    )


# -- the command line ---------------------------------------------------------------------


def test_services_set_limits_and_add_options(workspace: Workspace) -> None:
    team = str(workspace.team)
    workspace.run(
        "services", "add", "svc", "--team", team, "--name", "Svc",
        "--upstream", "http://127.0.0.1:9", "--rate", "20/minute",
    )  # fmt: skip
    workspace.run("services", "set-limits", "svc", "--team", team, "--max-in-flight", "3")
    shown = workspace.run("services", "show", "svc", "--team", team).stdout
    assert "rate:           20 per 60 seconds" in shown
    assert "max_in_flight:  3" in shown

    workspace.run("services", "set-limits", "svc", "--team", team, "--rate", "none")
    shown = workspace.run("services", "show", "svc", "--team", team).stdout
    assert "rate:" not in shown
    assert "max_in_flight:  3" in shown

    refused = workspace.run(
        "services", "set-limits", "svc", "--team", team, "--rate", "x", check=False
    )
    assert refused.returncode == 2
    assert "not a rate" in refused.stderr

    # A list of rates was cut to its first: the service's 10 a second was dropped unsaid.
    listed = workspace.run(
        "services", "set-limits", "svc", "--team", team, "--rate", "1000/minute;10/second",
        check=False,
    )  # fmt: skip
    assert listed.returncode == 2
    assert "not a list of rates" in listed.stderr
    assert "rate:" not in workspace.run("services", "show", "svc", "--team", team).stdout


def test_teams_set_limits_applies_to_the_served_gateway(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    team = str(workspace.team)
    workspace.add_service("svc", upstream.url, team=team)
    key = workspace.issue("--kind", "integration")
    workspace.run("teams", "set-limits", "--team", team, "--rate", "2/hour")
    workspace.run("teams", "set-limits", "--team", team, "--max-in-flight", "3")
    listed = workspace.run("teams", "limits").stdout.splitlines()
    assert listed[1].split() == [team, "2", "per", "3600", "seconds", "3"]

    gateway = build_standalone_app(load_config(workspace.config), {}, threads=8)
    try:
        app = TestApp(gateway.app)
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [
            app.get("/r/containers/svc/x", headers=headers, expect_errors=True).status_int
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]  # the team's own rate, not the gateway's (none)
        assert len(upstream.received) == 2
        limiter = gateway.app.pipeline.limiter
        assert limiter is not None
        assert limiter.team_limits is gateway.store.team_limits
    finally:
        gateway.close()

    workspace.run(
        "teams", "set-limits", "--team", team, "--rate", "none", "--max-in-flight", "none"
    )
    assert workspace.run("teams", "limits").stdout.splitlines()[1:] == []


def test_teams_set_limits_needs_a_known_team_and_a_limit(workspace: Workspace) -> None:
    unknown = workspace.run(
        "teams", "set-limits", "--team", str(uuid.uuid4()), "--rate", "1/hour", check=False
    )
    assert unknown.returncode == 1
    assert "unknown team" in unknown.stderr
    workspace.issue("--kind", "integration")
    nothing = workspace.run("teams", "set-limits", "--team", str(workspace.team), check=False)
    assert nothing.returncode == 2
    assert "--rate" in nothing.stderr


# -- optional parts load only when used ------------------------------------------------------


def test_importing_the_package_loads_neither_limits_nor_redis() -> None:
    code = (
        "import sys, invoke_middleware, invoke_middleware.config, invoke_middleware.limits;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('limits', 'redis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
