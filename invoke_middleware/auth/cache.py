"""A bounded cache of verified JWTs, so a signature is checked once per token, not per request.

Only the outcome of *verification* is cached: the token's subject, id and expiry. Team
membership and role are not: the JWT resolver reads them on every request, so a role change
or a removal applies on the next request whether the token was cached or not. Failures are
never cached. An entry never outlives the token's ``exp`` (leeway is not added: after ``exp``
the token is verified again, and the verifier decides about leeway), nor ``max_age`` seconds,
so a signing key withdrawn from a JWKS stops being trusted within that time.

Keys are the SHA-256 of the token, so the cache holds no bearer token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: How long an entry lives at most, whatever the token's ``exp``, in seconds.
DEFAULT_MAX_AGE = 300.0


@dataclass(frozen=True, kw_only=True)
class VerifiedToken:
    """What the JWT resolver keeps of a token whose signature and claims it checked.

    ``expires_at`` is the ``exp`` claim, in seconds since the epoch.
    """

    subject: str
    token_id: str | None
    expires_at: float


class VerifiedTokenCache:
    """A thread-safe LRU map of token digests to :class:`VerifiedToken`, ``max_entries`` long.

    ``clock`` returns seconds since the epoch (the same scale as ``exp``); inject one in tests.
    """

    def __init__(
        self,
        max_entries: int,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[VerifiedToken, float]] = OrderedDict()

    def get(self, token: str) -> VerifiedToken | None:
        """The cached verification of ``token``, or ``None`` when absent or stale."""
        digest = _digest(token)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            verified, valid_until = entry
            if now >= valid_until:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return verified

    def put(self, token: str, verified: VerifiedToken) -> None:
        """Remember that ``token`` verified as ``verified``; evicts the least recently used."""
        now = self._clock()
        valid_until = min(verified.expires_at, now + self._max_age)
        if now >= valid_until:
            return
        digest = _digest(token)
        with self._lock:
            self._entries[digest] = (verified, valid_until)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
