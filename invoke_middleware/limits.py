"""Fair share: concurrency and rate limits per team, credential, user and service.

The pipeline asks a :class:`Limiter` to admit each invoke or relay after the caller is
authenticated and the service is found and authorized, and before anything goes upstream. A
request over a limit is refused at once with 429 (``too_many_in_flight`` or ``rate_limited``)
and ``Retry-After``; an admitted one gets the IETF ``RateLimit-Policy`` and ``RateLimit``
response fields (:mod:`invoke_middleware._ratelimit_headers`)::

    from invoke_middleware.limits import LimitSettings, Limiter, Rate

    limiter = Limiter(
        LimitSettings(
            team_max_in_flight=4,
            credential_rate=Rate.parse("10/second"),
            team_rate=Rate.parse("600/minute"),
            storage_url="redis://127.0.0.1:6379/0",  # one budget for every gateway process
        )
    )
    app.wsgi_app = InvokeMiddleware(app.wsgi_app, limiter=limiter)

**Concurrency** (in flight at once) is counted per process: a global cap, one per team and one
per service. A relay holds its slot until its response ends: at once for an invoke (its
response is buffered), at the end of the streamed body for the catch-all, whether the body
ends, fails or the client goes away. ``queue_timeout`` lets a request wait that many seconds
for a slot under the global cap before it is refused; the default, 0, refuses at once, since a
waiting request holds a worker thread, which is what the limits protect. A team's or a
service's own full cap is never waited for, and a waiting request counts under them: a team
holds at most its cap of threads, waiting or relaying.

**Rates** (requests per window) use the fixed-window strategy of the ``limits`` library: a
window opens at a key's first request and lasts the rate's period, and every request counts,
refused ones included. Counters live in this process (``memory://``) or in Redis
(``redis://``, shared by every process using the same Redis and key prefix, where all the rates
of a request are counted by one script call, in one round trip, which reserves up to
``rate_batch`` requests of each window for this process, and gives back what it did not
use); see
:mod:`invoke_middleware._rate_counters`. When Redis cannot be reached the request is served
(``fail_open``, the default: a warning is logged and the event reported) or refused with 503
``limits_unavailable``.

Overrides: ``teams`` maps a team id to its own rate and concurrency; a service's
:class:`ServiceLimits` (stored with the service) replace the service-wide settings for it.

Events: each refusal and each store failure is reported to the ``on_event`` hooks as a
:class:`LimitEvent`; :meth:`invoke_middleware.metrics.RelayMetrics.on_limit` counts them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, TypeVar

from invoke_middleware._bodies import RelayBody, close_body
from invoke_middleware._forking import after_fork_in_child
from invoke_middleware._log_throttle import LogThrottle
from invoke_middleware._rate_counters import (
    LocalCounter,
    RateCounter,
    RateKey,
    StoreUnavailable,
    open_counter,
)
from invoke_middleware._ratelimit_headers import NAMES as RATE_LIMIT_NAMES
from invoke_middleware._ratelimit_headers import (
    PolicySet,
    rate_limit_headers,
    retry_after,
    until_admitted,
)
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.errors import LimitsUnavailableError, RateLimitedError, TooManyInFlightError

if TYPE_CHECKING:
    from invoke_middleware.auth.principal import Principal
    from invoke_middleware.registry import Service

__all__ = [
    "Admission",
    "LimitEvent",
    "LimitHook",
    "LimitKind",
    "LimitOutcome",
    "LimitSettings",
    "Limiter",
    "Rate",
    "ServiceLimits",
    "TeamLimits",
    "TeamLimitsSource",
    "fair_share",
    "warn_unfair",
]

logger = logging.getLogger("invoke_middleware.limits")

DEFAULT_STORAGE_URL = "memory://"
DEFAULT_KEY_PREFIX = "invoke-limits"
#: Requests of a window one Redis round trip reserves at most: a round trip costs about as
#: much CPU as the relay's own work (``bench/results/limits.md``); one in 16 requests pays it.
DEFAULT_RATE_BATCH = 16


class LimitKind(StrEnum):
    """Which limit refused a request: low-cardinality names for headers, metrics and logs."""

    IN_FLIGHT = "in_flight"
    TEAM_IN_FLIGHT = "team_in_flight"
    SERVICE_IN_FLIGHT = "service_in_flight"
    CREDENTIAL_RATE = "credential_rate"
    USER_RATE = "user_rate"
    TEAM_RATE = "team_rate"
    SERVICE_RATE = "service_rate"

    @property
    def policy(self) -> str:
        """The policy name in the ``RateLimit`` fields: ``team_rate`` is ``team``."""
        return self.value.removesuffix("_rate")


@dataclass(frozen=True, slots=True)
class _RatePlan:
    """One rate of one kind, with what every request under it needs formatted once: its
    counter keys' prefix and suffix (``team_rate/<id>/60``: the window is part of the key,
    so a changed rate starts a fresh window, never reads a counter kept for another period)
    and its ``RateLimit-Policy`` entry."""

    kind: LimitKind
    amount: int
    window: int
    prefix: str
    suffix: str
    policy: tuple[str, int, int]


@functools.lru_cache(maxsize=256)
def _plan(kind: LimitKind, rate: Rate) -> _RatePlan:
    return _RatePlan(
        kind=kind,
        amount=rate.amount,
        window=rate.window,
        prefix=f"{kind.value}/",
        suffix=f"/{rate.window}",
        policy=(kind.policy, rate.amount, rate.window),
    )


#: Policies kept at most (one per team and service met): past it, they are worked out again.
_MAX_POLICIES = 4096

#: A caller as its rates tell it apart: its kind of credential, its credential id, its user.
_Who = tuple[CredentialKind, "str | None", "str | None"]
#: A caller's index in :attr:`_Policy.rates_by_caller` and the keys of its own rates.
_Caller = tuple[int, tuple["RateKey", ...]]
#: Callers whose keys are kept at most: past it, they are worked out again.
_MAX_CALLERS = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class _Policy:
    """What applies to one team's requests to one service, worked out when first met and
    again when the team's or the service's own limits change: the concurrency caps and how to
    give their slots back, and the rates, with the team's and service's keys formatted."""

    #: What it was made from: the team's stored limits and the service's own.
    stored: TeamLimits | None
    own: ServiceLimits
    caps: tuple[_Cap, ...]
    #: The slots a request takes: the total's (counted under every cap) and each cap's.
    slots: tuple[_Slot, ...]
    #: The team's slot, when a reserve is kept for teams with nothing in flight.
    team: _Slot | None
    release: Callable[[], None]
    #: The keys of the team's and the service's rates.
    shared_keys: tuple[RateKey, ...]
    #: By caller (with a credential id: +2, with a user id: +1), the rates that count its
    #: requests and their ``RateLimit-Policy``.
    rates_by_caller: tuple[tuple[tuple[_RatePlan, ...], PolicySet], ...]
    rates: bool

    @classmethod
    def make(
        cls,
        *,
        stored: TeamLimits | None,
        own: ServiceLimits,
        caps: tuple[_Cap, ...],
        slots: tuple[_Slot, ...],
        team: _Slot | None,
        release: Callable[[], None],
        credential: _RatePlan | None,
        user: _RatePlan | None,
        shared: tuple[tuple[_RatePlan, RateKey], ...],
    ) -> _Policy:
        """The policy with its rates laid out for each kind of caller."""
        rates_by_caller = []
        for caller in range(4):
            plans = (
                *([credential] if credential is not None and caller & 2 else []),
                *([user] if user is not None and caller & 1 else []),
                *(plan for plan, _ in shared),
            )
            rates_by_caller.append((plans, PolicySet(tuple(plan.policy for plan in plans))))
        return cls(
            shared_keys=tuple(key for _, key in shared),
            rates_by_caller=tuple(rates_by_caller),
            rates=bool(shared) or credential is not None or user is not None,
            stored=stored,
            own=own,
            caps=caps,
            slots=slots,
            team=team,
            release=release,
        )


# Ids longer than this (a JWT's sub, or any jti) count under their hash: every key held in
# memory and in Redis stays short whatever an identity provider puts in a token.
_MAX_RATE_ID = 64


_HASHED = "sha256:"


def _hashed(text: str) -> str:
    return _HASHED + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _rate_id(text: str, longest: int = _MAX_RATE_ID) -> str:
    """``text`` as a rate key's id: itself, or its hash when it is longer than ``longest``, or
    when it reads like a hash (so that no id is ever another's hashed form: a sub of
    "sha256:…" would share the budget of the long sub that hashes to it)."""
    if len(text) > longest or text.startswith(_HASHED):
        return _hashed(text)
    return text


_JWT = CredentialKind.JWT  # a module global: an enum member's lookup costs more on every request


def _token_rate_id(token_id: str) -> str:
    """The rate id of a user token's ``jti``: never equal to a key's id, at most 64 long."""
    return "jwt:" + _rate_id(token_id, _MAX_RATE_ID - 4)


class LimitOutcome(StrEnum):
    """What happened: a refusal, or a store failure that was let through or refused."""

    REFUSED = "refused"
    STORE_FAILED_OPEN = "store_failed_open"
    STORE_FAILED_CLOSED = "store_failed_closed"


#: A window of zero units in the ``limits`` notation (``5/0 seconds``, ``5 per 00 minutes``).
_ZERO_UNITS = re.compile(r"(?:/|per)\s*0+\s*[a-z]", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Rate:
    """``amount`` requests per ``window`` seconds."""

    amount: int
    window: int

    def __post_init__(self) -> None:
        if self.amount < 1 or self.window < 1:
            raise ValueError("a rate needs at least 1 request per at least 1 second")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """A rate in the ``limits`` library's notation: ``10/second``, ``100 per 5 minutes``.

        Raises :class:`ValueError` when ``text`` is not one rate: the library's lists of rates
        (``100/minute;10/second``) are refused, not cut to their first, and so is a window of
        zero units, which the library would read as one.
        """
        # The library loads only when rates are used.
        from limits import parse_many  # noqa: PLC0415

        text = text.strip()
        items = parse_many(text)
        if len(items) != 1:
            raise ValueError("one rate per limit, not a list of rates")
        if _ZERO_UNITS.search(text):
            raise ValueError("a rate's window is at least one unit")
        item = items[0]
        return cls(amount=item.amount, window=item.get_expiry())

    def __str__(self) -> str:
        # The library's notation, so that the text parses back to this rate.
        unit = "second" if self.window == 1 else "seconds"
        return f"{self.amount} per {self.window} {unit}"


@dataclass(frozen=True, kw_only=True)
class TeamLimits:
    """One team's own rate and concurrency, replacing ``team_rate`` and ``team_max_in_flight``.
    ``None`` keeps the setting below it (the configured override, then the gateway-wide one)."""

    rate: Rate | None = None
    max_in_flight: int | None = None

    def over(self, below: TeamLimits | None) -> TeamLimits:
        """These limits, with ``below``'s where these are ``None``."""
        if below is None:
            return self
        return TeamLimits(
            rate=self.rate or below.rate, max_in_flight=self.max_in_flight or below.max_in_flight
        )


class TeamLimitsSource(Protocol):
    """Where teams' own limits are kept at run time (the SQL store's ``team_limits``): they
    take precedence over the ``teams`` of :class:`LimitSettings`, field by field. Asked once
    per limited request, so an implementation should cache; one that cannot answer now raises
    :class:`~invoke_middleware.errors.StoreUnavailableError` (503)."""

    def get(self, team_id: uuid.UUID) -> TeamLimits | None:
        """The team's own limits, or ``None`` when it has none."""
        ...


@dataclass(frozen=True, kw_only=True)
class ServiceLimits:
    """Limits stored with a service, replacing ``service_rate`` and ``service_max_in_flight``
    for it. ``None`` keeps the gateway-wide setting."""

    rate: Rate | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """What to limit, and where rate counters live. Every limit is off unless set.

    ``max_in_flight`` caps relays in flight in this process; ``team_max_in_flight`` and
    ``service_max_in_flight`` cap them per team and per service; ``idle_team_reserve`` is how
    many of ``max_in_flight`` only a team with nothing in flight may take (so that teams
    already holding relays, however many and however hostile, leave a way in for the
    others; it needs both caps); ``queue_timeout`` is how
    long a request may wait for the global cap (never for a team's or a service's, whose
    caps count waiting requests too). ``*_rate`` are requests per
    window per credential (``sk-``/``dk-`` key or JWT ``jti``), per user, per team and per
    service. ``storage_url`` is ``memory://`` or a ``redis://`` URL; ``key_prefix`` namespaces
    the Redis keys; ``storage_timeout`` bounds each Redis round trip (seconds);
    ``rate_batch`` is the most requests of a window one Redis round trip reserves for this
    process (never more than a tenth of what the window has left; 1 asks Redis for every
    request).
    """

    max_in_flight: int | None = None
    team_max_in_flight: int | None = None
    service_max_in_flight: int | None = None
    idle_team_reserve: int | None = None
    queue_timeout: float = 0.0
    concurrency_retry_after: int = 1
    credential_rate: Rate | None = None
    user_rate: Rate | None = None
    team_rate: Rate | None = None
    service_rate: Rate | None = None
    teams: Mapping[uuid.UUID, TeamLimits] = field(default_factory=lambda: MappingProxyType({}))
    storage_url: str = field(default=DEFAULT_STORAGE_URL, repr=False)  # may hold a password
    key_prefix: str = DEFAULT_KEY_PREFIX
    storage_timeout: float = 0.5
    rate_batch: int = DEFAULT_RATE_BATCH
    fail_open: bool = True

    def __post_init__(self) -> None:
        if self.rate_batch < 1:
            raise ValueError("rate_batch must be at least 1")
        if self.idle_team_reserve is not None and self.idle_team_reserve < 0:
            raise ValueError("idle_team_reserve must be 0 or more")

    def check_reserve(self) -> None:
        """Raise :class:`ValueError` when ``idle_team_reserve`` cannot apply: it needs both
        ``max_in_flight`` and ``team_max_in_flight`` (which :func:`fair_share` may still fill
        in, so it is checked when a :class:`Limiter` is made), and must be below the first."""
        if not self.idle_team_reserve:
            return
        if self.max_in_flight is None or self.team_max_in_flight is None:
            raise ValueError("idle_team_reserve needs max_in_flight and team_max_in_flight")
        if self.idle_team_reserve >= self.max_in_flight:
            raise ValueError(
                f"idle_team_reserve ({self.idle_team_reserve}) must be below max_in_flight "
                f"({self.max_in_flight})"
            )

    @property
    def has_rates(self) -> bool:
        """Whether any rate is configured here (a service may still bring its own)."""
        return any(
            rate is not None
            for rate in (self.credential_rate, self.user_rate, self.team_rate, self.service_rate)
        ) or any(team.rate is not None for team in self.teams.values())


def fair_share(settings: LimitSettings | None, threads: int) -> LimitSettings:
    """``settings`` with the standalone server's concurrency defaults for ``threads`` workers.

    Unless set, a team may hold at most half of the threads (rounded down, at least one) and
    all relays together all but one thread, which stays free for other teams' requests,
    discovery and health checks: one team's slow streams can no longer starve another team.
    A quarter of the relays (``idle_team_reserve``, rounded down) is kept for teams with
    nothing in flight: two or more teams holding relays cannot take the last of them either.
    """
    settings = settings or LimitSettings()
    total = settings.max_in_flight or max(1, threads - 1)
    shared = replace(
        settings,
        max_in_flight=total,
        team_max_in_flight=settings.team_max_in_flight or max(1, threads // 2),
        idle_team_reserve=(
            total // 4 if settings.idle_team_reserve is None else settings.idle_team_reserve
        ),
    )
    warn_unfair(shared, threads)
    return shared


def warn_unfair(settings: LimitSettings, threads: int) -> None:
    """Log each team cap of ``settings`` that lets one team hold all ``threads`` workers: a
    cap that is not below them, or no team cap at all. The cap is the operator's to choose,
    but such a one brings back the starvation :func:`fair_share`'s defaults prevent: said
    once, at start-up."""
    if settings.team_max_in_flight is None:
        logger.warning(
            "limits: no team_max_in_flight: one team can hold all %d worker threads; other "
            "teams' requests then wait for its relays to end",
            threads,
        )
    caps = [("team_max_in_flight", settings.team_max_in_flight)]
    caps += [
        (f"teams.{team}.max_in_flight", own.max_in_flight) for team, own in settings.teams.items()
    ]
    for key, cap in caps:
        if cap is not None and cap >= threads:
            logger.warning(
                "limits: %s = %d lets one team hold all %d worker threads; other teams' "
                "requests then wait for its relays to end",
                key,
                cap,
                threads,
            )


@dataclass(frozen=True, kw_only=True)
class LimitEvent:
    """A request refused by a limit, or a rate-limit store that failed.

    ``limit`` is the limit that refused (``None`` for store failures); ``route`` is
    ``invoke`` or ``catch_all``, as in :class:`~invoke_middleware.hooks.RelayStarted`, or
    ``mcp`` for the MCP endpoint reading a message, which has no ``service`` yet (``None``).
    """

    request_id: str
    route: str
    principal: Principal
    service: Service | None
    outcome: LimitOutcome
    limit: LimitKind | None = None


LimitHook = Callable[[LimitEvent], None]


class _Response(Protocol):
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


_R = TypeVar("_R", bound=_Response)

_RATE_LIMIT_NAME_LENGTHS = frozenset(len(name) for name in RATE_LIMIT_NAMES)
_NO_NAMES: frozenset[str] = frozenset()


class Admission:
    """A request let through: the response fields to add, and the slot to give back.

    :meth:`hold` attaches both to the pipeline's response. :meth:`release` may be called more
    than once; only the first call gives the slot back. ``replaces`` names (lower-case) the
    response fields that are the gateway's to write, whether it adds them or not (by default,
    those of ``headers``): an upstream's fields of these names never reach the caller.
    """

    __slots__ = ("_pending", "headers", "replaces")

    def __init__(
        self,
        headers: tuple[tuple[str, str], ...],
        release: Callable[[], None] | None,
        replaces: frozenset[str] | None = None,
    ) -> None:
        self.headers = headers
        if replaces is None:
            replaces = RATE_LIMIT_NAMES if headers else _NO_NAMES
        self.replaces = replaces
        # A list, because list.pop() is atomic: the server's close() and the collection of
        # an abandoned body generator may both release, from different threads.
        self._pending = [] if release is None else [release]

    def release(self) -> None:
        """Give the concurrency slot back (once)."""
        if not self._pending:
            return  # the usual second call (body ended, then closed): no exception to raise
        try:
            release = self._pending.pop()
        except IndexError:
            return  # released by another thread in between
        release()

    def hold(self, response: _R, *, replaced: bool = False, until_close: bool = False) -> _R:
        """Add the rate-limit fields to ``response`` and keep the slot until its body ends.

        The response's own fields of the same names are dropped, unless ``replaced`` says
        that the caller already dropped them (the pipeline does, as it filters the upstream's
        fields, with :attr:`replaces`), so they need not be looked for.

        The body ends when it is exhausted, fails or is closed (the client went away),
        whichever comes first: a buffered one too, since the server's thread is held while
        it writes it to a client that may read slowly. With ``until_close``, only when it is
        closed: the server writes what it took from the body by then, not as it takes it
        (:data:`~invoke_middleware.request.WRITTEN_BY_CLOSE_KEY`).
        """
        if self.replaces:
            fields = response.headers
            if not replaced:
                for name, _ in fields:
                    # The length first: most fields are told apart without lower-casing them.
                    if len(name) in _RATE_LIMIT_NAME_LENGTHS and name.lower() in RATE_LIMIT_NAMES:
                        fields[:] = [(k, v) for k, v in fields if k.lower() not in RATE_LIMIT_NAMES]
                        break
            fields.extend(self.headers)
        if self._pending:
            body = response.body
            if isinstance(body, RelayBody) and not until_close:
                body.also_on_end(self.release)  # ends however the relay ends
            else:
                response.body = _HeldBody(body, self, until_close=until_close)
        return response


#: The admission of a request when nothing limits it.
UNLIMITED = Admission((), None)


class _HeldBody:
    """A response body that gives its concurrency slot back when it ends: written whole, failed
    or closed (``until_close``: closed, once the server wrote what it took)."""

    __slots__ = ("_admission", "_body", "_until_close")

    def __init__(self, body: Iterable[bytes], admission: Admission, *, until_close: bool) -> None:
        self._body = body
        self._admission = admission
        self._until_close = until_close

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        finally:
            # Exhausted, failed, or the generator closed: the relay is over either way, and
            # written, unless the server writes it later.
            if not self._until_close:
                self._admission.release()

    def close(self) -> None:
        try:
            close_body(self._body)
        finally:
            self._admission.release()

    def __del__(self) -> None:
        # Dropped without being read to its end or closed (a host that discards what it was
        # given, against PEP 3333): the slot goes back all the same (a second release is a
        # no-op).
        self._admission.release()


class _Slot:
    """The relays in flight under one cap's key: the process, one team or one service.

    Policies hold their slots, so a request finds its counters without a lookup; the
    table of :class:`_InFlight` only hands the same slot to every policy of the key.
    """

    __slots__ = ("__weakref__", "count")

    def __init__(self) -> None:
        self.count = 0


#: One concurrency cap of a policy: the limit it enforces, its slot and its cap.
_Cap = tuple[LimitKind, _Slot, int]


class _InFlight:
    """Per-process counters of relays in flight: global, per team, per service.

    One lock guards every counter, so a request takes all its slots or none. A team's or
    service's slot lives while a policy or a relay holds it, so memory follows the policies
    in use and the relays in flight, not the teams ever seen.
    """

    def __init__(self, reserve_from: int = sys.maxsize) -> None:
        #: The count of the process's relays from which only a team with none in flight is
        #: admitted (``max_in_flight - idle_team_reserve``; never reached without a reserve).
        self.reserve_from = reserve_from
        # Reentrant: a streamed body dropped unclosed gives its slot back when it is collected,
        # and the collector may run in this very thread, between acquire() and release().
        self._lock = threading.RLock()
        # Only requests allowed to queue wait on it; release notifies only when one does.
        self._ready = threading.Condition(self._lock)
        self._waiting = 0
        self.total = _Slot()
        self._slots: weakref.WeakValueDictionary[tuple[str | int, ...], _Slot] = (
            weakref.WeakValueDictionary()
        )
        after_fork_in_child(self)

    def _after_fork(self) -> None:
        """In a forked child: nothing in flight (the relays counted are the parent's threads',
        which are not in the child to give their slots back), and a lock of its own."""
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._waiting = 0
        self.total.count = 0
        for slot in list(self._slots.values()):
            slot.count = 0

    def slot(self, key: tuple[str | int, ...]) -> _Slot:
        """The one slot of ``key`` (``("team", team id)``, ``("service", team id, id)``)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
            return slot

    def acquire(
        self,
        caps: Sequence[_Cap],
        slots: Sequence[_Slot],
        timeout: float,
        team: _Slot | None = None,
    ) -> LimitKind | None:
        """Take ``slots`` (the total's, and each cap's), or return the cap that refuses: a
        full team's or service's at once, the process-wide one after waiting up to
        ``timeout`` seconds for it. ``team`` is the team's slot when a reserve is kept for
        teams with nothing in flight (:attr:`reserve_from`): a team holding relays finds the
        process full at the reserve."""
        # acquire() and release() rather than ``with``: the statement costs as much again as
        # the lock itself, and this runs twice per request.
        self._lock.acquire()
        try:
            for _, slot, cap in caps:
                if slot.count >= cap:
                    return self._when_full(caps, slots, timeout, team)
            if team is not None and team.count and self.total.count >= self.reserve_from:
                return self._when_full(caps, slots, timeout, team)
            for slot in slots:
                slot.count += 1
            return None
        finally:
            self._lock.release()

    def _when_full(
        self,
        caps: Sequence[_Cap],
        slots: Sequence[_Slot],
        timeout: float,
        team: _Slot | None,
    ) -> LimitKind | None:
        """With the lock held and a cap full: the cap that refuses, or ``None`` once the
        request holds its slots.

        Only the process-wide cap is waited for. A waiting request holds a worker thread as
        a relay does, so a team's requests waiting for its own full cap would hold more than
        its share of the threads; instead, a request waiting for the process-wide cap holds
        its team's and service's slots meanwhile, and its team's cap bounds its waiting
        requests and its relays together.
        """
        total = self.total
        total_cap = None
        for kind, slot, cap in caps:
            if slot is total:
                total_cap = cap
            elif slot.count >= cap:
                return kind
        if timeout <= 0:
            return LimitKind.IN_FLIGHT
        assert total_cap is not None  # no other cap is full: the process-wide one is
        # A team holding other slots than this request's (counted from here on) stops at the
        # reserve: asked again at each wake-up, as its other relays may have ended meanwhile,
        # or others of its requests been admitted.
        reserved = min(total_cap, self.reserve_from)
        own = [slot for slot in slots if slot is not total]
        for slot in own:
            slot.count += 1
        deadline = time.monotonic() + timeout
        self._waiting += 1
        admitted = False
        try:
            while total.count >= (reserved if team is not None and team.count > 1 else total_cap):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return LimitKind.IN_FLIGHT
                # Condition.wait releases the lock while it waits.
                self._ready.wait(remaining)
            total.count += 1
            admitted = True
            return None
        finally:
            self._waiting -= 1
            if not admitted:
                # Refused at the deadline, or the wait raised (an interrupt, say): the slots
                # held while waiting go back, or the team would keep them for good.
                for slot in own:
                    slot.count -= 1

    def release(self, slots: Sequence[_Slot]) -> None:
        self._lock.acquire()
        try:
            for slot in slots:
                slot.count -= 1
            if self._waiting:
                self._ready.notify_all()
        finally:
            self._lock.release()

    def held(self) -> int:
        """Relays in flight in this process (for tests and diagnostics)."""
        with self._lock:
            return self.total.count

    def waiting(self) -> int:
        """Requests waiting for the global cap in this process."""
        with self._lock:
            return self._waiting


class Limiter:
    """Admits or refuses requests under :class:`LimitSettings`; thread-safe, one per process.

    The rate-limit storage is opened here, so a bad storage URL fails at start-up; a Redis
    that is down is only found (and handled per ``fail_open``) when a request needs it.
    ``team_limits`` is where teams' own limits are kept at run time (the SQL store's
    ``team_limits``); they take precedence over ``settings.teams``.
    """

    def __init__(
        self,
        settings: LimitSettings | None = None,
        *,
        on_event: Sequence[LimitHook] = (),
        team_limits: TeamLimitsSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = self.settings = settings or LimitSettings()
        self.team_limits = team_limits
        self.on_event = tuple(on_event)
        settings.check_reserve()
        if settings.idle_team_reserve and settings.max_in_flight is not None:
            self._in_flight = _InFlight(settings.max_in_flight - settings.idle_team_reserve)
        else:
            self._in_flight = _InFlight()
        # By the UUID's integer: a UUID hashes in Python code, its integer in C.
        self._teams = {team_id.int: limits for team_id, limits in settings.teams.items()}
        # The configured rates, formatted once; a team's or service's own are formatted (and
        # cached) when met.
        self._plans = {
            kind: None if rate is None else _plan(kind, rate)
            for kind, rate in (
                (LimitKind.CREDENTIAL_RATE, settings.credential_rate),
                (LimitKind.USER_RATE, settings.user_rate),
                (LimitKind.TEAM_RATE, settings.team_rate),
                (LimitKind.SERVICE_RATE, settings.service_rate),
            )
        }
        self._policies: dict[tuple[int, int], _Policy] = {}
        self._callers: dict[_Who, _Caller] = {}
        self._counter: RateCounter | None = None
        self._counter_lock = threading.Lock()
        # A failing store is said once per interval, not once per request.
        self._store_warnings = LogThrottle(clock=clock)
        if settings.has_rates or settings.storage_url != DEFAULT_STORAGE_URL:
            # A storage URL that cannot be used fails here, at start-up, even when only a
            # team or a service brings its own rate later.
            self._counter = open_counter(settings)

    @property
    def in_flight(self) -> int:
        """Relays holding a slot in this process."""
        return self._in_flight.held()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot in this process (``queue_timeout``)."""
        return self._in_flight.waiting()

    @property
    def shares_store(self) -> bool:
        """Whether rates are counted in a store outside this process (Redis)."""
        return self._counter is not None and not isinstance(self._counter, LocalCounter)

    def check_store(self) -> None:
        """Raise :class:`StoreUnavailable` when the rate-limit store cannot be reached (for
        readiness checks; requests apply ``fail_open`` instead)."""
        if self._counter is not None:
            self._counter.ping()

    def close(self) -> None:
        """Give back to the rate-limit store what this process reserved and did not use, and
        close the connections to it; a later request reopens them."""
        if self._counter is not None:
            self._counter.close()

    def admit(
        self,
        principal: Principal,
        service: Service,
        *,
        route: str,
        request_id: str,
        within_caller: bool = False,
    ) -> Admission:
        """Take the request's slots and count it under its rates, or raise.

        ``within_caller``: the request is part of one that holds the process's and the team's
        slots already (:meth:`admit_caller`; an MCP message's tool call, run on the message's
        thread): only the service's cap is taken for it, so that one thread holds one slot.

        Raises :class:`~invoke_middleware.errors.TooManyInFlightError`,
        :class:`~invoke_middleware.errors.RateLimitedError` or (store down, fail-closed)
        :class:`~invoke_middleware.errors.LimitsUnavailableError`.
        """
        team_id = principal.team_id
        stored = self.team_limits.get(team_id) if self.team_limits is not None else None
        own = service.limits
        # UUIDs hash in Python code; their integer value hashes in C.
        pair = (team_id.int, service.id.int)
        policy = self._policies.get(pair)
        if policy is None or policy.stored is not stored or policy.own is not own:
            policy = self._policy(pair, stored, own, policy)
        release = None
        caps, slots, team, give_back = policy.caps, policy.slots, policy.team, policy.release
        if within_caller and caps:
            caps = tuple(cap for cap in caps if cap[0] is LimitKind.SERVICE_IN_FLIGHT)
            slots = tuple(slot for _, slot, _ in caps)
            team = None
            give_back = functools.partial(self._in_flight.release, slots)
        if caps:
            full = self._in_flight.acquire(caps, slots, self.settings.queue_timeout, team)
            if full is not None:
                self._report(
                    principal, service, route, request_id, outcome=LimitOutcome.REFUSED, limit=full
                )
                retry = retry_after(self.settings.concurrency_retry_after)
                raise TooManyInFlightError(headers=(retry,))
            release = give_back
        if not policy.rates:
            return UNLIMITED if release is None else Admission((), release)
        try:
            headers = self._count(policy, principal, service, route, request_id)
        except BaseException:
            if release is not None:
                release()
            raise
        # The rate fields are the gateway's even when it writes none (its store is down and
        # it fails open): a container's own must not pass for its policies.
        # Passed by position: through type() a keyword costs this call a dict, ~1,000
        # instructions a request.
        return Admission(headers, release, RATE_LIMIT_NAMES)

    def _policy(
        self,
        pair: tuple[int, int],
        stored: TeamLimits | None,
        own: ServiceLimits,
        known: _Policy | None,
    ) -> _Policy:
        """Work out what applies to one team's requests to one service, unless ``known``
        already does (the store's cache handed out equal limits again)."""
        if known is not None and known.stored == stored and known.own == own:
            # Kept with these very objects, so that the next request finds them by identity.
            policy = replace(known, stored=stored, own=own)
            self._policies[pair] = policy
            return policy
        settings = self.settings
        team = self._team(pair[0], stored)
        in_flight = self._in_flight
        caps = self._caller_caps(pair[0], team)
        service_cap = own.max_in_flight or settings.service_max_in_flight
        # A service's budgets are its team's too: a registry may hold two teams' records
        # with one id (a catalogued service mirrored into each team), and neither team may
        # spend or read the other's.
        if service_cap is not None:
            service_slot = in_flight.slot(("service", *pair))
            caps.append((LimitKind.SERVICE_IN_FLIGHT, service_slot, service_cap))
        plans = self._plans
        shared: list[tuple[_RatePlan, RateKey]] = []
        # The UUIDs' 32 hex digits: the same text in every process sharing a Redis.
        for plan, who in (
            (self._plan_over(LimitKind.TEAM_RATE, team.rate if team else None), f"{pair[0]:032x}"),
            (
                self._plan_over(LimitKind.SERVICE_RATE, own.rate),
                f"{pair[0]:032x}{pair[1]:032x}",
            ),
        ):
            if plan is not None:
                key = f"{plan.prefix}{who}{plan.suffix}"
                shared.append((plan, (key, plan.window, plan.amount)))
        slots = self._slots(caps)
        policy = _Policy.make(
            stored=stored,
            own=own,
            caps=tuple(caps),
            slots=slots if caps else (),
            team=self._reserving(caps),
            release=functools.partial(in_flight.release, slots),
            credential=plans[LimitKind.CREDENTIAL_RATE],
            user=plans[LimitKind.USER_RATE],
            shared=tuple(shared),
        )
        if len(self._policies) >= _MAX_POLICIES:
            # Memory follows the pairs in use, not every pair ever seen.
            self._policies.clear()
        self._policies[pair] = policy
        return policy

    def _team(self, team: int, stored: TeamLimits | None) -> TeamLimits | None:
        """The team's own limits: the stored ones over the configured ones."""
        configured = self._teams.get(team) if self._teams else None
        return configured if stored is None else stored.over(configured)

    def _caller_caps(self, team: int, limits: TeamLimits | None) -> list[_Cap]:
        """The caps every request of the team is under, whatever its service: the process's
        and the team's."""
        settings = self.settings
        in_flight = self._in_flight
        caps: list[_Cap] = []
        if settings.max_in_flight is not None:
            caps.append((LimitKind.IN_FLIGHT, in_flight.total, settings.max_in_flight))
        team_cap = (limits.max_in_flight if limits else None) or settings.team_max_in_flight
        if team_cap is not None:
            caps.append((LimitKind.TEAM_IN_FLIGHT, in_flight.slot(("team", team)), team_cap))
        return caps

    def _reserving(self, caps: Sequence[_Cap]) -> _Slot | None:
        """The team's slot among ``caps`` when a reserve is kept for teams with nothing in
        flight (``idle_team_reserve``), else ``None``."""
        if not self.settings.idle_team_reserve:
            return None
        return next((slot for kind, slot, _ in caps if kind is LimitKind.TEAM_IN_FLIGHT), None)

    def _slots(self, caps: Sequence[_Cap]) -> tuple[_Slot, ...]:
        """The slots a request under ``caps`` takes: the total's (counted under every cap),
        then each cap's own."""
        total = self._in_flight.total
        return (total, *(slot for _, slot, _ in caps if slot is not total))

    def admit_caller(self, principal: Principal, *, route: str, request_id: str) -> Admission:
        """Take the process's and the team's concurrency slots for work done for
        ``principal`` before any service is known (the MCP endpoint reading a message), or
        raise :class:`~invoke_middleware.errors.TooManyInFlightError`.

        The request holds a worker thread as a relay does, so it counts under the same caps,
        from reading its body until its answer is written: hand the answer to
        :meth:`Admission.hold`. No rate is counted: each service the message then calls is
        admitted by :meth:`admit` with ``within_caller``, under the service's cap alone.
        """
        team_id = principal.team_id
        stored = self.team_limits.get(team_id) if self.team_limits is not None else None
        caps = self._caller_caps(team_id.int, self._team(team_id.int, stored))
        if not caps:
            return UNLIMITED
        in_flight = self._in_flight
        slots = self._slots(caps)
        full = in_flight.acquire(caps, slots, self.settings.queue_timeout, self._reserving(caps))
        if full is not None:
            self._report(
                principal, None, route, request_id, outcome=LimitOutcome.REFUSED, limit=full
            )
            retry = retry_after(self.settings.concurrency_retry_after)
            raise TooManyInFlightError(headers=(retry,))
        return Admission((), functools.partial(in_flight.release, slots))

    # -- rates --------------------------------------------------------------------------------

    def _count(
        self,
        policy: _Policy,
        principal: Principal,
        service: Service,
        route: str,
        request_id: str,
    ) -> tuple[tuple[str, str], ...]:
        who = (principal.kind, principal.credential_id, principal.user_id)
        caller = self._callers.get(who)
        if caller is None:
            caller = self._caller(who)
        plans, policies = policy.rates_by_caller[caller[0]]
        keys = caller[1] + policy.shared_keys
        counter = self._counter if self._counter is not None else self._open_counter()
        try:
            counts = counter.hit(keys)
        except StoreUnavailable as exc:
            return self._store_failed(exc, principal, service, route, request_id)
        headers, exceeded = rate_limit_headers(policies, counts)
        if exceeded >= 0:
            self._report(
                principal,
                service,
                route,
                request_id,
                outcome=LimitOutcome.REFUSED,
                limit=plans[exceeded].kind,
            )
            wait = until_admitted(policies, counts)
            raise RateLimitedError(headers=(retry_after(wait), *headers))
        return headers

    def _caller(self, who: _Who) -> _Caller:
        """The rates that count one caller's requests whatever its service, worked out when
        the caller is first met: which of them apply (with a credential id: +2, with a user
        id: +1, the index of :attr:`_Policy.rates_by_caller`) and their keys."""
        kind, credential_id, user_id = who
        keys: list[RateKey] = []
        caller = 0
        plan = self._plans[LimitKind.CREDENTIAL_RATE]
        if kind is _JWT and plan is not None:
            # A token's jti is the identity provider's text: in a namespace of its own (an sk-
            # key's id as a jti must not spend that key's budget), and short. A token without
            # one is told from the user's others by nothing: it counts under its subject.
            if credential_id is not None:
                credential_id = _token_rate_id(credential_id)
            elif user_id is not None:
                credential_id = "jwt-sub:" + _rate_id(user_id)
        if plan is not None and credential_id is not None:
            caller = 2
            keys.append((plan.prefix + credential_id + plan.suffix, plan.window, plan.amount))
        plan = self._plans[LimitKind.USER_RATE]
        if plan is not None and user_id is not None:
            caller += 1
            user_id = _rate_id(user_id)  # a JWT sub may be up to the header cap long
            keys.append((plan.prefix + user_id + plan.suffix, plan.window, plan.amount))
        known = (caller, tuple(keys))
        if len(self._callers) >= _MAX_CALLERS:
            # Memory follows the callers of late, not every credential ever seen.
            self._callers.clear()
        self._callers[who] = known
        return known

    def _plan_over(self, kind: LimitKind, own: Rate | None) -> _RatePlan | None:
        """A team's or service's own rate of ``kind`` when it has one, else the configured."""
        return self._plans[kind] if own is None else _plan(kind, own)

    def _open_counter(self) -> RateCounter:
        with self._counter_lock:
            if self._counter is None:
                self._counter = open_counter(self.settings)
            return self._counter

    def _store_failed(
        self,
        exc: StoreUnavailable,
        principal: Principal,
        service: Service,
        route: str,
        request_id: str,
    ) -> tuple[tuple[str, str], ...]:
        fail_open = self.settings.fail_open
        if self._store_warnings.due() is not None:
            logger.warning(
                "rate-limit store unavailable (%s); requests are %s",
                type(exc.__cause__).__name__,
                "served without rate limits" if fail_open else "refused with 503",
            )
        outcome = LimitOutcome.STORE_FAILED_OPEN if fail_open else LimitOutcome.STORE_FAILED_CLOSED
        self._report(principal, service, route, request_id, outcome=outcome, limit=None)
        if not fail_open:
            raise LimitsUnavailableError(headers=(retry_after(1),))
        return ()

    def _report(
        self,
        principal: Principal,
        service: Service | None,
        route: str,
        request_id: str,
        *,
        outcome: LimitOutcome,
        limit: LimitKind | None,
    ) -> None:
        if not self.on_event:
            return
        event = LimitEvent(
            request_id=request_id,
            route=route,
            principal=principal,
            service=service,
            outcome=outcome,
            limit=limit,
        )
        # Imported here: hooks imports the registry, which imports this module.
        from invoke_middleware.hooks import call_hooks  # noqa: PLC0415

        call_hooks(self.on_event, event)
