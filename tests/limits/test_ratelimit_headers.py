"""The ``RateLimit-Policy`` and ``RateLimit`` fields for a request's counts, and which policy
it exceeds."""

from __future__ import annotations

import pytest

from invoke_middleware._ratelimit_headers import PolicySet, rate_limit_headers, retry_after

POLICIES = PolicySet((("credential", 10, 1), ("team", 100, 60), ("service", 10, 60)))


def test_the_policy_field_lists_every_policy_in_order() -> None:
    headers, _ = rate_limit_headers(POLICIES, [(1, 0.5), (1, 59.0), (1, 59.0)])
    assert headers[0] == (
        "RateLimit-Policy",
        '"credential";q=10;w=1, "team";q=100;w=60, "service";q=10;w=60',
    )


@pytest.mark.parametrize(
    ("counts", "state", "exceeded"),
    [
        # The fewest remaining: the team's.
        ([(1, 0.5), (99, 30.0), (2, 59.0)], '"team";r=1;t=30', -1),
        # A tie on what remains: the one that resets last (rounded up to whole seconds).
        ([(4, 0.2), (1, 59.0), (4, 12.1)], '"service";r=6;t=13', -1),
        # Exactly the quota is admitted, nothing remains.
        ([(10, 0.5), (1, 59.0), (1, 59.0)], '"credential";r=0;t=1', -1),
        # Past the quota: nothing remains (never less); of two exceeded, the one that resets
        # last is the one to wait for.
        ([(3, 0.5), (101, 20.0), (11, 40.0)], '"service";r=0;t=40', 2),
        ([(3, 0.5), (101, 50.0), (11, 40.0)], '"team";r=0;t=50', 1),
        ([(11, 0.5), (100, 50.0), (10, 40.0)], '"team";r=0;t=50', 0),
    ],
)
def test_the_state_names_the_tightest_policy_and_the_one_exceeded(
    counts: list[tuple[int, float]], state: str, exceeded: int
) -> None:
    headers, index = rate_limit_headers(POLICIES, counts)
    assert headers[1] == ("RateLimit", state)
    assert index == exceeded


def test_no_policy_no_fields() -> None:
    assert rate_limit_headers(PolicySet(()), []) == ((), -1)


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, text: str) -> None:
    assert retry_after(seconds) == ("Retry-After", text)
