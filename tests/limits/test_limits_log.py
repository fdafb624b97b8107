"""``RelayLogger.on_limit`` writes one line per refusal, without keys or credentials."""

from __future__ import annotations

import logging

import pytest

from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.errors import TooManyInFlightError
from invoke_middleware.limits import Limiter, LimitSettings
from invoke_middleware.logging_hook import RelayLogger
from tests.toolkit.world import TEAM, make_service


def test_a_refusal_is_logged_with_its_limit_and_outcome(caplog: pytest.LogCaptureFixture) -> None:
    principal = Principal(
        kind=CredentialKind.DEVICE, team_id=TEAM, user_id="ada", credential_id="dk-secretish"
    )
    service = make_service("svc", "http://127.0.0.1:9")
    limiter = Limiter(LimitSettings(team_max_in_flight=1), on_event=[RelayLogger().on_limit])
    held = limiter.admit(principal, service, route="catch_all", request_id="first")
    with (
        caplog.at_level(logging.INFO, logger="invoke_middleware.access"),
        pytest.raises(TooManyInFlightError),
    ):
        limiter.admit(principal, service, route="invoke", request_id="second")
    held.release()

    (record,) = caplog.records
    assert record.getMessage() == (
        f"limit request_id=second route=invoke team={TEAM} user=ada slug=svc "
        "limit=team_in_flight outcome=refused"
    )
    assert "dk-" not in record.getMessage()
