"""Fixtures for the fair-share limits: a gateway with a limiter on a real threaded server,
real loopback upstreams, and a Redis namespace of each test's own. The recording upstream
(``upstream``) comes from ``tests/conftest.py``.

Redis is the server on 127.0.0.1:6379 (``INVOKE_TEST_REDIS_URL`` overrides it). When it is
unreachable the Redis tests are skipped, except under ``CI=true``, where they fail. Each test
gets a unique key prefix, and its keys are deleted afterwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from invoke_middleware.limits import Limiter
from tests.cli.conftest import workspace  # noqa: F401  (fixture)
from tests.store.conftest import backend, postgres_server  # noqa: F401  (fixtures)
from tests.upstreams import raw_upstream  # noqa: F401  (fixture)

REDIS_URL = os.environ.get("INVOKE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Upper bound for any wait of these tests, so a leaked slot fails instead of hanging.
WAIT = 15.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds.

    For effects that land on a server thread after the client has its answer (a slot given
    back when the server closes the body), never as a stand-in for an assertion.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def wait_released(limiter: Limiter) -> None:
    """Wait until no relay holds a slot of ``limiter``."""
    wait_until(lambda: limiter.in_flight == 0, "every concurrency slot is released")


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The Redis URL, or a skip (a failure under ``CI=true``) when it cannot be reached."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        client.close()
    return REDIS_URL


@dataclass(frozen=True)
class RedisNamespace:
    """Where one test keeps its counters: the server and a key prefix of its own."""

    url: str
    prefix: str

    def keys(self) -> list[bytes]:
        import redis

        with redis.Redis.from_url(self.url) as client:
            return list(client.scan_iter(match=f"{self.prefix}:*"))


@pytest.fixture
def redis_namespace(redis_server: str) -> Iterator[RedisNamespace]:
    """A unique key prefix on the test Redis; its keys are deleted after the test."""
    import redis

    namespace = RedisNamespace(url=redis_server, prefix=f"invoke-test-{uuid.uuid4().hex}")
    yield namespace
    with redis.Redis.from_url(redis_server) as client:
        keys = list(client.scan_iter(match=f"{namespace.prefix}:*"))
        if keys:
            client.delete(*keys)


def run_concurrently(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` for ``i`` in ``range(count)`` on ``count`` threads started together."""
    start = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        start.wait(WAIT)
        try:
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors, errors[0]
    return results
