"""A limiter works out what applies to a team's requests to a service once, and again as soon
as the team's or the service's own limits change; it keeps a bounded number of them."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid

import pytest

from invoke_middleware import CredentialKind, Service
from invoke_middleware.auth.principal import Principal
from invoke_middleware.errors import RateLimitedError, TooManyInFlightError
from invoke_middleware.limits import (
    _MAX_CALLERS,
    _MAX_POLICIES,
    Admission,
    Limiter,
    LimitEvent,
    LimitKind,
    LimitSettings,
    Rate,
    ServiceLimits,
    TeamLimits,
    fair_share,
)
from tests.limits.conftest import wait_until
from tests.toolkit.world import OTHER_TEAM, TEAM, make_service

PRINCIPAL = Principal(kind=CredentialKind.INTEGRATION, team_id=TEAM, credential_id="sk-abc")
SERVICE = make_service("svc", "http://127.0.0.1:9")


def admit(limiter: Limiter) -> Admission:
    return limiter.admit(PRINCIPAL, SERVICE, route="catch_all", request_id="r")


def test_a_teams_stored_cap_changed_at_run_time_applies_to_its_next_request() -> None:
    stored: dict[uuid.UUID, TeamLimits] = {TEAM: TeamLimits(max_in_flight=1)}
    limiter = Limiter(LimitSettings(team_max_in_flight=8), team_limits=stored)
    held = admit(limiter)
    with pytest.raises(TooManyInFlightError):
        admit(limiter)
    stored[TEAM] = TeamLimits(max_in_flight=2)  # as the store's cache hands out a new value
    second = admit(limiter)
    assert limiter.in_flight == 2
    del stored[TEAM]  # back to the configured cap
    assert admit(limiter).headers == ()
    assert limiter.in_flight == 3
    for admission in (held, second):
        admission.release()


def test_a_teams_stored_rate_changed_at_run_time_applies_to_its_next_request() -> None:
    stored: dict[uuid.UUID, TeamLimits] = {}
    limiter = Limiter(LimitSettings(team_rate=Rate(amount=1, window=3600)), team_limits=stored)
    assert dict(admit(limiter).headers)["RateLimit-Policy"] == '"team";q=1;w=3600'
    with pytest.raises(RateLimitedError):
        admit(limiter)
    stored[TEAM] = TeamLimits(rate=Rate(amount=5, window=60))
    # A changed rate counts in a window of its own.
    assert dict(admit(limiter).headers) == {
        "RateLimit-Policy": '"team";q=5;w=60',
        "RateLimit": '"team";r=4;t=60',
    }


def test_a_services_own_limits_changed_at_run_time_apply_to_its_next_request() -> None:
    limiter = Limiter(LimitSettings(service_max_in_flight=1))
    held = limiter.admit(PRINCIPAL, SERVICE, route="catch_all", request_id="a")
    with pytest.raises(TooManyInFlightError):
        limiter.admit(PRINCIPAL, SERVICE, route="catch_all", request_id="b")
    # The registry hands out the service again with its new limits (same id).
    raised = dataclasses.replace(SERVICE, limits=ServiceLimits(max_in_flight=2))
    second = limiter.admit(PRINCIPAL, raised, route="catch_all", request_id="c")
    with pytest.raises(TooManyInFlightError):
        limiter.admit(PRINCIPAL, raised, route="catch_all", request_id="d")
    held.release()
    second.release()
    assert limiter.in_flight == 0


def test_policies_kept_stay_bounded_however_many_teams_call() -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1, team_rate=Rate(amount=1, window=60)))
    for _ in range(_MAX_POLICIES + 100):
        team = uuid.uuid4()
        caller = Principal(kind=CredentialKind.INTEGRATION, team_id=team, credential_id="sk-t")
        service = make_service("svc", "http://127.0.0.1:9", team=team)
        limiter.admit(caller, service, route="catch_all", request_id="r").release()
    assert len(limiter._policies) <= _MAX_POLICIES
    assert limiter.in_flight == 0


def test_equal_limits_handed_out_again_keep_the_policy_and_its_counts() -> None:
    # A store's cache hands out a fresh but equal value after each refresh.
    stored: dict[uuid.UUID, TeamLimits] = {TEAM: TeamLimits(max_in_flight=1)}
    limiter = Limiter(LimitSettings(), team_limits=stored)
    held = admit(limiter)
    stored[TEAM] = TeamLimits(max_in_flight=1)
    with pytest.raises(TooManyInFlightError):
        admit(limiter)
    (policy,) = limiter._policies.values()
    assert policy.stored is stored[TEAM]  # found by identity from now on
    held.release()
    assert limiter.in_flight == 0


def test_a_teams_cap_counts_its_requests_to_every_service() -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1))
    other = make_service("other", "http://127.0.0.1:9")
    held = admit(limiter)
    with pytest.raises(TooManyInFlightError):
        limiter.admit(PRINCIPAL, other, route="catch_all", request_id="r")
    held.release()
    limiter.admit(PRINCIPAL, other, route="catch_all", request_id="r").release()
    assert limiter.in_flight == 0


def test_concurrency_counters_stay_bounded_however_many_teams_call() -> None:
    limiter = Limiter(LimitSettings(team_max_in_flight=1, service_max_in_flight=1))
    for _ in range(_MAX_POLICIES + 100):
        team = uuid.uuid4()
        caller = Principal(kind=CredentialKind.INTEGRATION, team_id=team, credential_id="sk-t")
        service = make_service("svc", "http://127.0.0.1:9", team=team)
        limiter.admit(caller, service, route="catch_all", request_id="r").release()
    # A team's and a service's counters go with the last policy that uses them.
    assert len(limiter._in_flight._slots) <= 2 * len(limiter._policies) <= 2 * _MAX_POLICIES


def test_a_wait_for_a_global_slot_that_raises_gives_the_teams_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = Limiter(LimitSettings(max_in_flight=1, team_max_in_flight=2, queue_timeout=5))
    held = admit(limiter)
    in_flight = limiter._in_flight

    def interrupted(timeout: float | None = None) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(in_flight._ready, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        admit(limiter)  # waits for the global slot, holding its team's meanwhile
    monkeypatch.undo()
    held.release()
    assert {kind: slot.count for (kind, _), slot in in_flight._slots.items()} == {"team": 0}
    assert limiter.waiting == 0


def test_callers_kept_stay_bounded_and_keep_their_budgets_when_worked_out_again() -> None:
    limiter = Limiter(LimitSettings(credential_rate=Rate(amount=1, window=3600)))
    admit(limiter)
    for number in range(_MAX_CALLERS + 100):
        caller = dataclasses.replace(PRINCIPAL, credential_id=f"sk-{number}")
        limiter.admit(caller, SERVICE, route="catch_all", request_id="r")
    assert len(limiter._callers) <= _MAX_CALLERS
    # Its keys were dropped with the others' and worked out again: its window is the same.
    assert PRINCIPAL.credential_id not in {who[1] for who in limiter._callers}
    with pytest.raises(RateLimitedError):
        admit(limiter)


def test_a_token_id_never_spends_a_key_s_budget_and_long_ids_count_under_their_hash() -> None:
    limiter = Limiter(
        LimitSettings(
            credential_rate=Rate(amount=1, window=3600), user_rate=Rate(amount=2, window=3600)
        )
    )
    admit(limiter)  # the key sk-abc spends its one request
    with pytest.raises(RateLimitedError):
        admit(limiter)
    # A user token whose jti is that key's id (an identity provider lets users pick it), of
    # another team: a budget of its own.
    token = Principal(
        kind=CredentialKind.JWT, team_id=OTHER_TEAM, user_id="ada", credential_id="sk-abc"
    )
    limiter.admit(token, SERVICE, route="catch_all", request_id="r")
    # Ids as long as a token may make them: the keys held stay short, and still count.
    long_token = dataclasses.replace(token, user_id="u" * 5000, credential_id="j" * 5000)
    limiter.admit(long_token, SERVICE, route="catch_all", request_id="r")
    with pytest.raises(RateLimitedError):
        limiter.admit(long_token, SERVICE, route="catch_all", request_id="r")
    keys = limiter._counter._windows  # type: ignore[union-attr]
    assert max(len(key) for key in keys) < 128


def test_a_user_token_without_a_token_id_counts_under_its_subject() -> None:
    # Without a jti nothing tells one of a user's tokens from another: it was counted under
    # no credential budget at all, and its answers named no credential policy.
    limiter = Limiter(LimitSettings(credential_rate=Rate(amount=2, window=3600)))
    ada = Principal(kind=CredentialKind.JWT, team_id=TEAM, user_id="ada")
    first = limiter.admit(ada, SERVICE, route="catch_all", request_id="r")
    assert '"credential"' in dict(first.headers)["RateLimit-Policy"]
    limiter.admit(ada, SERVICE, route="catch_all", request_id="r")
    with pytest.raises(RateLimitedError):
        limiter.admit(ada, SERVICE, route="catch_all", request_id="r")
    bob = dataclasses.replace(ada, user_id="bob")
    limiter.admit(bob, SERVICE, route="catch_all", request_id="r")  # a budget of its own
    # Nor does it share one with a token whose jti reads like a subject's key.
    ada_jti = dataclasses.replace(ada, user_id="carol", credential_id="-sub:ada")
    limiter.admit(ada_jti, SERVICE, route="catch_all", request_id="r")


def test_an_id_that_reads_like_a_hashed_one_never_shares_its_budget() -> None:
    # A long sub counts under "sha256:" and 32 hex digits; a sub of exactly that text (which
    # anyone can compute from the long one) spent the long sub's budget, across teams.
    limiter = Limiter(LimitSettings(user_rate=Rate(amount=1, window=3600)))
    long_sub = Principal(kind=CredentialKind.JWT, team_id=TEAM, user_id="u" * 100)
    limiter.admit(long_sub, SERVICE, route="catch_all", request_id="r")
    digest = "sha256:" + hashlib.sha256(b"u" * 100).hexdigest()[:32]
    lookalike = Principal(kind=CredentialKind.JWT, team_id=OTHER_TEAM, user_id=digest)
    limiter.admit(lookalike, SERVICE, route="catch_all", request_id="r")  # its own budget
    with pytest.raises(RateLimitedError):
        limiter.admit(long_sub, SERVICE, route="catch_all", request_id="r")


def test_two_teams_services_with_one_id_keep_their_own_budgets() -> None:
    # A registry may hold two teams' records with one id (a catalogued service mirrored into
    # each team). Keyed by the id alone, one team's calls spent the other's service rate and
    # slots, and its RateLimit field counted them.
    theirs = dataclasses.replace(SERVICE, team_id=OTHER_TEAM)
    other = Principal(kind=CredentialKind.INTEGRATION, team_id=OTHER_TEAM, credential_id="sk-x")
    limiter = Limiter(
        LimitSettings(service_rate=Rate(amount=2, window=60), service_max_in_flight=1)
    )
    mine = admit(limiter)
    held = limiter.admit(other, theirs, route="catch_all", request_id="r")  # a slot of its own
    assert dict(held.headers)["RateLimit"] == '"service";r=1;t=60'
    with pytest.raises(TooManyInFlightError):
        admit(limiter)
    for admission in (mine, held):
        admission.release()
    assert dict(admit(limiter).headers)["RateLimit"] == '"service";r=0;t=60'


# -- the reserve for teams with nothing in flight -------------------------------------------


def _caller(team: uuid.UUID) -> tuple[Principal, Service]:
    principal = Principal(kind=CredentialKind.INTEGRATION, team_id=team, credential_id="sk-t")
    return principal, make_service("svc", "http://127.0.0.1:9", team=team)


def _hold(limiter: Limiter, team: uuid.UUID, count: int) -> list[Admission]:
    """Admit ``team`` until it is refused or holds ``count``: what it was given."""
    principal, service = _caller(team)
    held: list[Admission] = []
    for _ in range(count):
        try:
            held.append(limiter.admit(principal, service, route="catch_all", request_id="r"))
        except TooManyInFlightError:
            break
    return held


def test_teams_holding_relays_leave_the_reserve_to_teams_with_none() -> None:
    # serve's defaults for 8 threads: 7 in all, 4 per team, 1 kept for idle teams. Without
    # the reserve, two hostile teams holding 4 and 3 streams refused every other team.
    events: list[LimitEvent] = []
    settings = fair_share(None, threads=8)
    assert (settings.max_in_flight, settings.team_max_in_flight) == (7, 4)
    assert settings.idle_team_reserve == 1
    limiter = Limiter(settings, on_event=[events.append])
    first, second, third, fourth = (uuid.uuid4() for _ in range(4))
    assert len(_hold(limiter, first, 8)) == 4
    assert len(_hold(limiter, second, 8)) == 2  # its third would take the reserved slot
    assert events[-1].limit is LimitKind.IN_FLIGHT
    assert len(_hold(limiter, third, 8)) == 1  # a team with none takes it
    assert len(_hold(limiter, fourth, 8)) == 0  # now every slot is held
    assert limiter.in_flight == 7


def test_a_team_holding_relays_does_not_wait_into_the_reserve() -> None:
    limiter = Limiter(
        LimitSettings(max_in_flight=3, team_max_in_flight=3, idle_team_reserve=1, queue_timeout=0.2)
    )
    team = uuid.uuid4()
    held = _hold(limiter, team, 2)
    assert len(held) == 2
    assert _hold(limiter, team, 1) == []  # waited its queue_timeout, then refused
    assert limiter.waiting == 0
    assert len(_hold(limiter, uuid.uuid4(), 1)) == 1  # the reserved slot was there all along


@pytest.mark.parametrize(("threads", "reserve"), [(2, 0), (4, 0), (8, 1), (16, 3), (32, 7)])
def test_the_fair_share_reserve_is_a_quarter_of_the_relays(threads: int, reserve: int) -> None:
    assert fair_share(None, threads).idle_team_reserve == reserve
    assert (
        fair_share(LimitSettings(max_in_flight=9, team_max_in_flight=2), threads).idle_team_reserve
        == 2
    )


def test_a_waiting_request_whose_team_got_a_relay_meanwhile_stops_at_the_reserve() -> None:
    # The waiter's limit was fixed when it began to wait: its team, idle then, had another
    # request admitted while it waited, and it then took the reserved slot too.
    limiter = Limiter(
        LimitSettings(max_in_flight=4, team_max_in_flight=4, idle_team_reserve=1, queue_timeout=1)
    )
    team = uuid.uuid4()
    fillers = [*_hold(limiter, uuid.uuid4(), 3), *_hold(limiter, uuid.uuid4(), 1)]
    waited: list[int] = []
    waiter = threading.Thread(target=lambda: waited.append(len(_hold(limiter, team, 1))))
    waiter.start()
    wait_until(lambda: limiter.waiting == 1, "the team's first request waits")
    lock = limiter._in_flight._lock
    with lock:  # the waiter is woken but cannot run before the team's next request
        fillers.pop().release()
        fillers.pop().release()
        assert len(_hold(limiter, team, 1)) == 1  # admitted: two slots are free
    waiter.join(5)
    assert waited == [0]  # refused at its deadline: the free slot is the reserved one
    assert len(_hold(limiter, uuid.uuid4(), 1)) == 1  # which an idle team then takes


def test_a_team_whose_relays_ended_while_it_waited_may_take_the_reserve() -> None:
    limiter = Limiter(
        LimitSettings(max_in_flight=4, team_max_in_flight=4, idle_team_reserve=1, queue_timeout=5)
    )
    team = uuid.uuid4()
    others = _hold(limiter, uuid.uuid4(), 3)
    [own] = _hold(limiter, team, 1)
    waited: list[int] = []
    waiter = threading.Thread(target=lambda: waited.append(len(_hold(limiter, team, 1))))
    waiter.start()
    wait_until(lambda: limiter.waiting == 1, "the team's second request waits")
    own.release()  # the team has nothing in flight but the waiting request
    waiter.join(5)
    assert waited == [1]
    assert len(others) == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"idle_team_reserve": 1, "max_in_flight": 4},
            "needs max_in_flight and team_max_in_flight",
        ),
        ({"idle_team_reserve": 1, "team_max_in_flight": 4}, "needs max_in_flight"),
        (
            {"idle_team_reserve": 4, "max_in_flight": 4, "team_max_in_flight": 2},
            r"idle_team_reserve \(4\) must be below max_in_flight \(4\)",
        ),
    ],
)
def test_a_reserve_that_cannot_apply_is_refused(settings: dict[str, int], message: str) -> None:
    given = LimitSettings(**settings)  # fair_share may still fill the caps in
    with pytest.raises(ValueError, match=message):
        Limiter(given)


def test_a_reserve_of_zero_turns_the_fair_share_reserve_off() -> None:
    assert fair_share(LimitSettings(idle_team_reserve=0), threads=8).idle_team_reserve == 0
    with pytest.raises(ValueError, match="0 or more"):
        LimitSettings(idle_team_reserve=-1)
