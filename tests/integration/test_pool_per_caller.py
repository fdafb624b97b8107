"""Upstream connections are pooled per caller, not only per team (docs/contract.md §11.2).

An upstream that answers a request before reading its body (Python's ``http.server`` does,
as many handlers do) reads that body next as a request of its own, and answers it too, on
a connection the gateway has already taken back. A caller whose body is itself a request
makes it so: every later answer on that connection is one behind. Pooled per team, the next
caller of the team took that connection and read the answer to a request it never sent;
pooled per caller, only the caller who sent it is one behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from invoke_middleware import Role
from tests.toolkit.servers import serving
from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import World, build_world, make_service

#: What the smuggled request is, and how long its answer takes: long enough for the next
#: caller's request to be sent on a connection that still looks quiet.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: upstream\r\n\r\n"
SMUGGLED_DELAY = 0.3


class _AnswersBeforeReading(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._answer(401, "refused")  # the body is left unread, the connection kept alive

    def do_GET(self) -> None:
        if self.path == "/smuggled":
            time.sleep(SMUGGLED_DELAY)
        self._answer(200, f"answer to {self.path}")


@pytest.fixture
def answers_before_reading() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AnswersBeforeReading)
    server.daemon_threads = True
    with serving(server) as url:
        yield url


@pytest.fixture
def world(answers_before_reading: str, upstream: RecordingUpstream) -> Iterator[World]:
    built = build_world(upstream, services=[make_service("echo", answers_before_reading)])
    yield built
    built.middleware.close()


def test_a_caller_who_shifts_a_connection_shifts_only_its_own(world: World) -> None:
    member, owner = Role.MEMBER.value, Role.OWNER.value
    assert world.relay("echo/first", key=member).text == "answer to /first"
    refused = world.app.post(
        "/r/containers/echo/login", SMUGGLED, headers=world.auth(owner), expect_errors=True
    )
    assert (refused.status_int, refused.text) == (401, "refused")
    # Another user of the same team, at once: each answer its own, never /smuggled's.
    answers = [world.relay(f"echo/page/{n}", key=member).text for n in range(3)]
    assert answers == [f"answer to /page/{n}" for n in range(3)]
    # The same key of the team's, not a user's: a caller of its own.
    assert world.relay("echo/by-key", key="sk").text == "answer to /by-key"
