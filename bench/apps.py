"""The three gateways of the relay benchmark, as factories gunicorn calls (``apps:make_relay()``).

All wrap the same trivial host app:

- ``make_relay()``: the host wrapped by :class:`InvokeMiddleware`, with the deployed services
  ``bench`` and ``stream`` pointing at the upstreams, and one ``sk-`` integration key in the
  in-memory store;
- ``make_proxy()``: the host wrapped by werkzeug's ``ProxyMiddleware``, relaying
  ``/r/containers/<slug>/<tail>`` to ``<tail>`` on the same upstreams;
- ``make_bare()``: the host alone, answering every request itself;
- ``make_floor()``: the least any relay of ``/r/containers/bench/<tail>`` can do (one
  kept-alive upstream connection per thread, one send and one receive per request, nothing
  checked): what a relay costs under a server before it does any of a gateway's work;
- ``make_relay_ab()``: for ``bench/bench_limits.py``, the relay without a limiter, with the
  in-memory one, and with two floors under it (:class:`FieldsOnlyLimiter`,
  :class:`LeastLimiter`), in one process.

They read ``BENCH_UPSTREAM`` (the upstream's base URL) and ``BENCH_STREAM_UPSTREAM`` (that of
the ``stream`` service and route, for downloads, uploads and events; ``BENCH_UPSTREAM`` when
unset); ``make_relay`` writes its key to the
file named by ``BENCH_KEY_FILE``. ``make_relay(limits="memory")``, ``make_relay(limits=
"redis")`` and ``make_relay(limits="redis-each")`` (Redis asked for every request:
``rate_batch=1``) add the limiter of ``bench/bench_limits.py`` (Redis at ``BENCH_REDIS``, keys
under ``BENCH_REDIS_PREFIX``) and write their key to ``BENCH_KEY_FILE`` plus ``.`` and the
limiter's name. Run gunicorn with ``--preload`` so that every worker shares the key issued once in
the master.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from werkzeug.middleware.http_proxy import ProxyMiddleware

from invoke_middleware import (
    CredentialKind,
    InMemoryCredentialStore,
    InMemoryServiceRegistry,
    InvokeMiddleware,
    Service,
    ServiceStatus,
    ServiceType,
)
from invoke_middleware._ratelimit_headers import PolicySet, rate_limit_headers
from invoke_middleware.errors import RateLimitedError, TooManyInFlightError
from invoke_middleware.limits import DEFAULT_RATE_BATCH, Admission, Limiter, LimitSettings, Rate

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from invoke_middleware.auth.principal import Principal
    from invoke_middleware.registry import Service

TEAM = uuid.UUID("0b0b0b0b-0000-4000-8000-00000000be4c")
BODY = b"hello, world\n"
#: Fields of one connection that a relay does not pass on (and WSGI servers refuse).
HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})


def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The host application: the same small answer as the upstream's, for any path."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def bench_registry(upstream_url: str, stream_url: str | None = None) -> InMemoryServiceRegistry:
    """The deployed service every gateway of the benchmarks relays to, ``bench``, and, with
    ``stream_url``, ``stream`` (the streaming upstream when small requests go to nginx)."""
    registry = InMemoryServiceRegistry()
    slugs = {"bench": upstream_url, "stream": stream_url or upstream_url}
    for slug, url in slugs.items():
        registry.add(
            Service(
                id=uuid.uuid4(),
                team_id=TEAM,
                slug=slug,
                display_name=slug.title(),
                service_type=ServiceType.DEPLOYED,
                service_status=ServiceStatus.RUNNING,
                upstream_url=url,
            )
        )
    return registry


#: The rates of :func:`bench_limiter`: high enough never to refuse.
BENCH_RATE = Rate(amount=10**9, window=3600)
#: Its concurrency cap per team.
BENCH_TEAM_CAP = 64
#: Its policies, as its ``RateLimit`` fields name them.
BENCH_POLICIES = PolicySet(
    (
        ("credential", BENCH_RATE.amount, BENCH_RATE.window),
        ("team", BENCH_RATE.amount, BENCH_RATE.window),
    )
)


def bench_limiter(storage_url: str, prefix: str, rate_batch: int = DEFAULT_RATE_BATCH) -> Limiter:
    """The limiter the limits benchmark measures: a per-team concurrency cap and two rates
    (per credential, per team) high enough never to refuse."""
    return Limiter(
        LimitSettings(
            team_max_in_flight=BENCH_TEAM_CAP,
            credential_rate=BENCH_RATE,
            team_rate=BENCH_RATE,
            storage_url=storage_url,
            key_prefix=prefix,
            rate_batch=rate_batch,
        )
    )


def make_relay(limits: str | None = None) -> WSGIApplication:
    registry = bench_registry(os.environ["BENCH_UPSTREAM"], os.environ.get("BENCH_STREAM_UPSTREAM"))
    limiter = None
    key_file = os.environ["BENCH_KEY_FILE"]
    if limits is not None:
        storage = "memory://" if limits == "memory" else os.environ["BENCH_REDIS"]
        batch = 1 if limits == "redis-each" else DEFAULT_RATE_BATCH
        limiter = bench_limiter(storage, os.environ["BENCH_REDIS_PREFIX"], batch)
        key_file += f".{limits}"
    middleware = InvokeMiddleware(host, registry=registry, limiter=limiter)
    key = middleware.credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    Path(key_file).write_text(key, encoding="utf-8")
    return middleware


class FieldsOnlyLimiter(Limiter):
    """A floor under any limiter that writes the IETF fields: every request is admitted with
    the same two fields (the values :func:`bench_limiter` writes, fixed), and nothing is
    counted or held. What it adds to the relay is the pipeline attaching two fields and the
    server checking and writing them: the part of a limiter's cost that no limiter's own code
    can remove."""

    def __init__(self) -> None:
        super().__init__()
        window = float(BENCH_RATE.window)
        fields, _ = rate_limit_headers(BENCH_POLICIES, [(1, window), (1, window)])
        self._admission = Admission(fields, None)

    def admit(
        self,
        principal: Principal,
        service: Service,
        *,
        route: str,
        request_id: str,
        within_caller: bool = False,
    ) -> Admission:
        return self._admission


class LeastLimiter(Limiter):
    """A floor under the in-memory limiter: the least work that :func:`bench_limiter`'s policy
    needs, written for it alone. Under one lock, it takes the team's slot and counts the
    credential's and the team's fixed windows, kept in two plain tables; it formats
    ``RateLimit`` from the tightest of the two, and gives the slot back when the relay ends.
    No settings, overrides, other limits, store or events; a refusal says nothing but 429."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self._credentials: dict[str | None, list[float]] = {}
        self._teams: dict[int, list[float]] = {}
        self._policies = BENCH_POLICIES.field

    def admit(
        self,
        principal: Principal,
        service: Service,
        *,
        route: str,
        request_id: str,
        within_caller: bool = False,
    ) -> Admission:
        now = time.monotonic()
        team = principal.team_id.int
        amount, window = BENCH_RATE.amount, BENCH_RATE.window
        self._lock.acquire()
        try:
            held = self._held.get(team, 0)
            if held >= BENCH_TEAM_CAP:
                raise TooManyInFlightError()
            credential = self._credentials.get(principal.credential_id)
            if credential is None or credential[1] <= now:
                credential = self._credentials[principal.credential_id] = [0, now + window]
            shared = self._teams.get(team)
            if shared is None or shared[1] <= now:
                shared = self._teams[team] = [0, now + window]
            credential[0] += 1
            shared[0] += 1
            self._held[team] = held + 1
        finally:
            self._lock.release()
        left, shared_left = amount - credential[0], amount - shared[0]
        if left < 0 or shared_left < 0:
            self._release(team)
            raise RateLimitedError()
        if shared_left < left or (shared_left == left and shared[1] > credential[1]):
            state = f'"team";r={shared_left};t={math.ceil(shared[1] - now)}'
        else:
            state = f'"credential";r={left};t={math.ceil(credential[1] - now)}'
        return Admission(
            (self._policies, ("RateLimit", state)), functools.partial(self._release, team)
        )

    def _release(self, team: int) -> None:
        with self._lock:
            self._held[team] -= 1


def make_relay_ab() -> WSGIApplication:
    """Gateways in one process, one key for all: ``/a/r/...`` without a limiter, ``/b/r/...``
    with the in-memory one, and the two floors under it, ``/c/r/...`` with
    :class:`FieldsOnlyLimiter` and ``/d/r/...`` with :class:`LeastLimiter`; so that each
    limiter is measured in the same worker (same threads, same memory layout) as its
    baseline. Writes ``BENCH_KEY_FILE`` + ``.ab``.

    Each request goes straight to its own gateway (by its first path segment), so none pays
    for the others."""
    registry = bench_registry(os.environ["BENCH_UPSTREAM"])
    credentials = InMemoryCredentialStore()
    limiters: dict[str, Limiter | None] = {
        "a": None,
        "b": bench_limiter("memory://", os.environ["BENCH_REDIS_PREFIX"]),
        "c": FieldsOnlyLimiter(),
        "d": LeastLimiter(),
    }
    gateways = {
        f"/{name}/": InvokeMiddleware(
            host, prefix=f"/{name}", registry=registry, credentials=credentials, limiter=limiter
        )
        for name, limiter in limiters.items()
    }

    def dispatch(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        gateway = gateways.get(environ.get("PATH_INFO", "")[:3], host)
        return gateway(environ, start_response)

    key = credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM).key
    Path(os.environ["BENCH_KEY_FILE"] + ".ab").write_text(key, encoding="utf-8")
    return dispatch


def make_proxy() -> WSGIApplication:
    targets = {
        "bench": os.environ["BENCH_UPSTREAM"],
        "stream": os.environ.get("BENCH_STREAM_UPSTREAM") or os.environ["BENCH_UPSTREAM"],
    }
    # The upstream sees the tail alone, as the catch-all sends it (``/download?bytes=N``).
    routes = {
        f"/r/containers/{slug}/": {"target": url.rstrip("/") + "/", "remove_prefix": True}
        for slug, url in targets.items()
    }
    return ProxyMiddleware(host, routes)


def make_bare() -> WSGIApplication:
    return host


def make_floor() -> WSGIApplication:
    """A relay reduced to its system calls, for ``bench_relay.py`` to measure how near the
    bare server any relay can come.

    Each server thread keeps one connection to ``BENCH_UPSTREAM``; a request's tail is sent
    in a head made by concatenation and the answer read until its ``Content-Length`` is in;
    its status and fields are passed on as they came. No authentication, no look-up, no
    checks of any kind: not a gateway, a floor under one. Anything else goes to the host."""
    upstream = urlsplit(os.environ["BENCH_UPSTREAM"])
    address = (upstream.hostname or "127.0.0.1", upstream.port or 80)
    host_field = f"\r\nHost: {upstream.netloc}\r\n\r\n".encode("latin-1")
    prefix = "/r/containers/bench"
    connections = threading.local()

    def floor(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(prefix + "/"):
            return host(environ, start_response)
        sock = getattr(connections, "sock", None)
        if sock is None:
            sock = connections.sock = socket.create_connection(address)
        sock.sendall(b"GET " + path[len(prefix) :].encode("latin-1") + b" HTTP/1.1" + host_field)
        data = sock.recv(65536)
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = [(n, v) for n, _, v in (line.partition(": ") for line in lines[1:])]
        length = next(int(v) for n, v in fields if n.lower() == "content-length")
        while len(body) < length:
            body += sock.recv(65536)
        start_response(lines[0][9:], [(n, v) for n, v in fields if n.lower() not in HOP])
        return [body]

    return floor
