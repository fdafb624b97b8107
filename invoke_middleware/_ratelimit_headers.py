"""The IETF rate-limit response fields: ``RateLimit-Policy`` and ``RateLimit``.

Written as draft-ietf-httpapi-ratelimit-headers (-08 and later) spells them: each field is an
RFC 9651 Structured Field List whose members are a policy name (an sf-string) with parameters.
``RateLimit-Policy`` lists every policy that applied to the request with its quota ``q`` and
window ``w`` (seconds); ``RateLimit`` names the policy closest to exhaustion with what remains,
``r``, and the seconds until its window resets, ``t``::

    RateLimit-Policy: "team";q=100;w=60, "credential";q=10;w=1
    RateLimit: "credential";r=3;t=1

Policy names are the limit kinds (``credential``, ``user``, ``team``, ``service``), never a
key or an identity, so the fields say nothing about other callers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

POLICY_HEADER = "RateLimit-Policy"
STATE_HEADER = "RateLimit"
RETRY_AFTER_HEADER = "Retry-After"

#: The names the gateway writes; an upstream's own values are dropped when the gateway writes
#: its own, so a caller never sees two answers to one question.
NAMES = frozenset({POLICY_HEADER.lower(), STATE_HEADER.lower()})


#: A policy as the fields name it: (name, quota, window in seconds).
Policy = tuple[str, int, int]


class PolicySet:
    """The policies that apply to a request, in order, with what every request needs
    formatted once (the same few sets come back on every request): the ``RateLimit-Policy``
    field, each policy's quota, and the start of the ``RateLimit`` value that names it."""

    __slots__ = ("field", "policies", "quotas", "states", "value")

    def __init__(self, policies: tuple[Policy, ...]) -> None:
        self.policies = policies
        self.value = ", ".join(f'"{name}";q={quota};w={window}' for name, quota, window in policies)
        self.field = (POLICY_HEADER, self.value)
        self.quotas = tuple(quota for _, quota, _ in policies)
        self.states = tuple(f'"{name}";r=' for name, _, _ in policies)


def rate_limit_headers(
    policies: PolicySet, counts: Sequence[tuple[int, float]]
) -> tuple[tuple[tuple[str, str], ...], int]:
    """``RateLimit-Policy`` for every policy and ``RateLimit`` for the tightest one, and the
    index of the policy the request exceeds (-1 when it exceeds none; of several, the one
    that resets last, so that waiting for it is enough).

    ``counts`` holds, for each policy, the requests counted in its window (this one included)
    and the seconds until the window resets. The tightest policy is the one with the fewest
    requests remaining; of those, the one that resets last.
    """
    if not policies.policies:
        return (), -1
    quotas = policies.quotas
    tightest = 0
    remaining = -1
    reset = 0.0
    exceeded = -1
    index = 0
    # Indexing rather than zip(): building the zip object costs more than the loop's body.
    for count, left in counts:
        rest = quotas[index] - count
        if rest <= 0:
            if rest and (exceeded < 0 or left > counts[exceeded][1]):
                exceeded = index
            rest = 0
        if remaining < 0 or rest < remaining or (rest == remaining and left > reset):
            tightest, remaining, reset = index, rest, left
        index += 1  # noqa: SIM113 - enumerate() costs a tuple per policy
    state = f"{policies.states[tightest]}{remaining};t={reset_seconds(reset)}"
    return (policies.field, (STATE_HEADER, state)), exceeded


def until_admitted(policies: PolicySet, counts: Sequence[tuple[int, float]]) -> float:
    """Seconds until a request refused with ``counts`` could be admitted: until every policy
    with nothing remaining resets. A refused request is counted too, so it may have spent the
    last request of a policy it did not exceed; waiting only for the exceeded one would be
    refused again."""
    quotas = policies.quotas
    return max(left for quota, (count, left) in zip(quotas, counts, strict=True) if count >= quota)


def reset_seconds(reset: float) -> int:
    """Whole seconds until a window resets: rounded up, so that waiting that long is enough;
    at least one."""
    seconds = math.ceil(reset)
    return seconds if seconds > 0 else 1


def retry_after(seconds: float) -> tuple[str, str]:
    """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), at least one."""
    return (RETRY_AFTER_HEADER, str(reset_seconds(seconds)))
