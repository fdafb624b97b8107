"""The ``RateLimit-Policy`` and ``RateLimit`` fields for a request's counts, and which policy
it exceeds."""

from __future__ import annotations

import random

import pytest

from invoke_middleware._ratelimit_headers import (
    PolicySet,
    rate_limit_headers,
    reset_seconds,
    retry_after,
    until_admitted,
)

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


@pytest.mark.parametrize(
    ("counts", "wait"),
    [
        # Only the credential's is exceeded: its window is the one to wait for.
        ([(11, 0.5), (50, 59.0), (3, 59.0)], 0.5),
        # The refused request took the team's last one: the team's window too.
        ([(11, 0.5), (100, 59.0), (3, 30.0)], 59.0),
        # Exceeded and spent alike: the last of them to reset.
        ([(11, 0.5), (101, 20.0), (10, 40.0)], 40.0),
    ],
)
def test_a_refused_request_waits_until_every_spent_policy_resets(
    counts: list[tuple[int, float]], wait: float
) -> None:
    assert until_admitted(POLICIES, counts) == wait


def test_no_policy_no_fields() -> None:
    assert rate_limit_headers(PolicySet(()), []) == ((), -1)


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, text: str) -> None:
    assert retry_after(seconds) == ("Retry-After", text)


def _spelled_out(
    policies: tuple[tuple[str, int, int], ...], counts: list[tuple[int, float]]
) -> tuple[tuple[tuple[str, str], ...], int]:
    """The fields as the draft defines them, formatted from scratch for each request."""
    rests = [
        max(quota - count, 0) for (_, quota, _), (count, _) in zip(policies, counts, strict=True)
    ]
    tightest = min(range(len(policies)), key=lambda i: (rests[i], -counts[i][1]))
    over = [
        i
        for i, ((_, quota, _), (count, _)) in enumerate(zip(policies, counts, strict=True))
        if count > quota
    ]
    exceeded = max(over, key=lambda i: (counts[i][1], -i)) if over else -1
    policy = ", ".join(f'"{name}";q={quota};w={window}' for name, quota, window in policies)
    name = policies[tightest][0]
    state = f'"{name}";r={rests[tightest]};t={reset_seconds(counts[tightest][1])}'
    return (("RateLimit-Policy", policy), ("RateLimit", state)), exceeded


def test_the_fields_formatted_from_parts_kept_per_policy_set_match_fresh_formatting() -> None:
    names = ("credential", "user", "team", "service")
    chance = random.Random(9)
    for _ in range(2000):
        size = chance.randint(1, 4)
        policies = tuple(
            (names[i], chance.choice((1, 2, 10, 10**9)), chance.choice((1, 60, 3600)))
            for i in range(size)
        )
        kept = PolicySet(policies)
        # The same set again and again, as the limiter keeps it, across windows that reset.
        for _ in range(5):
            counts = [
                (chance.randint(1, quota + 2), chance.choice((0.0, 0.2, 1.0, 59.5, 3600.0)))
                for _, quota, _ in policies
            ]
            assert rate_limit_headers(kept, counts) == _spelled_out(policies, counts)
