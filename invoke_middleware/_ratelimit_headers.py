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

import functools
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


@functools.lru_cache(maxsize=1024)
def _policy_value(policies: tuple[Policy, ...]) -> str:
    # The same few combinations of policies come back on every request: format them once.
    return ", ".join(f'"{name}";q={quota};w={window}' for name, quota, window in policies)


def rate_limit_headers(
    policies: tuple[Policy, ...], counts: Sequence[tuple[int, float]]
) -> tuple[tuple[str, str], ...]:
    """``RateLimit-Policy`` for every policy, and ``RateLimit`` for the tightest one.

    ``counts`` holds, for each policy, the requests counted in its window (this one included)
    and the seconds until the window resets. The tightest policy is the one with the fewest
    requests remaining; of those, the one that resets last.
    """
    if not policies:
        return ()
    tightest = ("", 0, 0.0)
    best: tuple[int, float] | None = None
    for (name, quota, _), (count, reset) in zip(policies, counts, strict=True):
        remaining = quota - count if count < quota else 0
        if best is None or remaining < best[0] or (remaining == best[0] and reset > best[1]):
            best = (remaining, reset)
            tightest = (name, remaining, reset)
    name, remaining, reset = tightest
    return (
        (POLICY_HEADER, _policy_value(policies)),
        (STATE_HEADER, f'"{name}";r={remaining};t={reset_seconds(reset)}'),
    )


def reset_seconds(reset: float) -> int:
    """Whole seconds until a window resets: rounded up, so that waiting that long is enough."""
    return max(1, math.ceil(reset))


def retry_after(seconds: float) -> tuple[str, str]:
    """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), at least one."""
    return (RETRY_AFTER_HEADER, str(reset_seconds(seconds)))
