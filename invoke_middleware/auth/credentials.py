"""The resolver for stored credentials: ``sk-`` integration and ``dk-`` device keys.

The rules are the README's "Auth" section.

Example::

    credentials = InMemoryCredentialStore()
    memberships = InMemoryMembershipStore()
    resolver = CredentialResolver(credentials, memberships)

A bearer token with a credential prefix is this resolver's; any other token is not (the
resolver returns ``None`` and the JWT resolver gets its turn). The record is found by the key's
first 12 characters and checked against the SHA-256 of the whole key in constant time. The
team comes from the record, never from ``X-Team-ID``. A device key acts with its user's
*current* role, read from the membership store on every request, so a role change or a removal
applies on the next request; a device key whose user is no longer in the team gets 403, like
any user who is not a member. ``ak-`` agent keys may not call the gateway at all: 401.

Every refusal of a credential (unknown, malformed, wrong secret, expired, revoked, agent) is the
same :class:`~invoke_middleware.errors.UnauthenticatedError`; which check failed is logged at
debug level only, with the key's public prefix at most, never the key.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import threading
import uuid
from typing import NoReturn

from invoke_middleware.auth.base import bearer_token
from invoke_middleware.auth.keys import hash_key, key_prefix
from invoke_middleware.auth.principal import CredentialKind, Principal
from invoke_middleware.auth.stores import (
    Clock,
    CredentialRecord,
    CredentialStore,
    MembershipStore,
    utc_now,
)
from invoke_middleware.errors import ForbiddenError, UnauthenticatedError
from invoke_middleware.request import PipelineRequest

logger = logging.getLogger("invoke_middleware.auth")

#: The shape of a well-formed key: a kind prefix and at least 32 random bytes, URL-safe
#: base64 without padding (43 characters). The upper bound stops absurd inputs from being
#: hashed and looked up.
_KEY_PATTERN = re.compile(r"(?:sk|dk|ak)-[A-Za-z0-9_-]{43,128}")

#: ``last_used_at`` is written at most this often per key.
DEFAULT_TOUCH_INTERVAL = dt.timedelta(minutes=1)

# Compared against when no record has the prefix, so an unknown prefix costs the same
# hash-and-compare work as a known one.
_NO_MATCH_HASH = "0" * 64


class CredentialResolver:
    """Authenticates ``sk-`` and ``dk-`` bearer keys against a :class:`CredentialStore`
    (and refuses ``ak-`` agent keys).

    ``memberships`` gives device keys their user's current role. ``clock`` decides expiry
    and stamps ``last_used_at``, which is written through ``store.touch`` at most once per
    ``touch_interval`` per key, outside any lock.
    """

    def __init__(
        self,
        store: CredentialStore,
        memberships: MembershipStore,
        *,
        clock: Clock = utc_now,
        touch_interval: dt.timedelta = DEFAULT_TOUCH_INTERVAL,
    ) -> None:
        self._store = store
        self._memberships = memberships
        self._clock = clock
        self._touches = _TouchThrottle(touch_interval)

    def __call__(self, request: PipelineRequest) -> Principal | None:
        token = bearer_token(request)
        if token is None:
            return None
        kind = CredentialKind.of_key(token)
        if kind is None:
            return None
        if _KEY_PATTERN.fullmatch(token) is None:
            _refuse("malformed key")
        if kind is CredentialKind.AGENT:
            _refuse("agent keys may not call the gateway", key_prefix(token))

        now = self._clock()
        record = self._find(token, kind)
        if record is None:
            _refuse("unknown key or wrong secret", key_prefix(token))
        if record.revoked_at is not None:
            _refuse("revoked key", record.prefix)
        if not record.is_usable(now):
            _refuse("expired key", record.prefix)

        principal = self._principal(record)
        if self._touches.due(record.id, now):
            self._touch(record, now)
        return principal

    def _find(self, token: str, kind: CredentialKind) -> CredentialRecord | None:
        digest = hash_key(token)
        candidates = self._store.find_by_prefix(key_prefix(token))
        match: CredentialRecord | None = None
        # Compare against every candidate (and against a dummy when there is none) so the
        # time taken does not depend on which record, if any, matched.
        for record in candidates or ():
            same = hmac.compare_digest(digest, record.key_hash)
            if same and match is None:
                match = record
        if not candidates:
            hmac.compare_digest(digest, _NO_MATCH_HASH)
        if match is not None and match.kind is not kind:
            return None
        return match

    def _principal(self, record: CredentialRecord) -> Principal:
        if record.kind is CredentialKind.INTEGRATION:
            return Principal(
                kind=CredentialKind.INTEGRATION,
                team_id=record.team_id,
                credential_id=record.prefix,
            )
        if record.user_id is None:
            _refuse("device key without a user", record.prefix)
        role = self._memberships.role_of(record.team_id, record.user_id)
        if role is None:
            logger.debug("device key %s: its user is not a member of its team", record.prefix)
            raise ForbiddenError("You are not a member of this team.")
        return Principal(
            kind=CredentialKind.DEVICE,
            team_id=record.team_id,
            user_id=record.user_id,
            role=role,
            credential_id=record.prefix,
        )

    def _touch(self, record: CredentialRecord, now: dt.datetime) -> None:
        # Bookkeeping only: a failed write must not turn a valid credential away.
        try:
            self._store.touch(record.id, now)
        except Exception:
            logger.warning("could not record the use of key %s", record.prefix, exc_info=True)


def _refuse(reason: str, prefix: str | None = None) -> NoReturn:
    logger.debug("credential refused: %s (key %s)", reason, prefix or "-")
    raise UnauthenticatedError


class _TouchThrottle:
    """Remembers when each key was last written, so the store sees one write per interval."""

    def __init__(self, interval: dt.timedelta) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[uuid.UUID, dt.datetime] = {}

    def due(self, credential_id: uuid.UUID, now: dt.datetime) -> bool:
        """Whether a write is due now; if so, claims it (only one caller gets ``True``)."""
        with self._lock:
            last = self._last.get(credential_id)
            if last is not None and now - last < self._interval:
                return False
            self._last[credential_id] = now
            return True
