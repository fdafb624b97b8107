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
from dataclasses import dataclass

POLICY_HEADER = "RateLimit-Policy"
STATE_HEADER = "RateLimit"
RETRY_AFTER_HEADER = "Retry-After"

#: The names the gateway writes; an upstream's own values are dropped when the gateway writes
#: its own, so a caller never sees two answers to one question.
NAMES = frozenset({POLICY_HEADER.lower(), STATE_HEADER.lower()})


@dataclass(frozen=True, kw_only=True)
class PolicyState:
    """One rate limit as it stood after this request was counted."""

    name: str
    quota: int
    window: int
    remaining: int
    reset: float

    @property
    def reset_seconds(self) -> int:
        """Whole seconds until the window resets: rounded up, so waiting that long is enough."""
        return max(1, math.ceil(self.reset))


def rate_limit_headers(states: Sequence[PolicyState]) -> tuple[tuple[str, str], ...]:
    """``RateLimit-Policy`` for every state and ``RateLimit`` for the tightest one."""
    if not states:
        return ()
    policies = ", ".join(f'"{s.name}";q={s.quota};w={s.window}' for s in states)
    tightest = min(states, key=lambda s: (s.remaining, -s.reset))
    state = f'"{tightest.name}";r={tightest.remaining};t={tightest.reset_seconds}'
    return ((POLICY_HEADER, policies), (STATE_HEADER, state))


def retry_after(seconds: float) -> tuple[str, str]:
    """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), at least one."""
    return (RETRY_AFTER_HEADER, str(max(1, math.ceil(seconds))))
