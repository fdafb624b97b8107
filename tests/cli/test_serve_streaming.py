"""``invoke-middleware serve`` relays server-sent events as they come, under both engines: each
event reaches the client before the upstream sends the next one (docs/contract.md §4), so no
server buffer between the relay and the socket holds a small write back."""

from __future__ import annotations

import http.client

import pytest

from tests.asgi.paced_upstream import MAX_WAIT, event, read_event, serve_paced
from tests.cli.conftest import Workspace, running_gateway
from tests.cli.test_server_limits import ENGINES, set_server

EVENT_COUNT = 5


@pytest.mark.parametrize("engine", ENGINES)
def test_served_gateway_relays_each_event_before_the_upstream_sends_the_next(
    workspace: Workspace, engine: str
) -> None:
    set_server(workspace, engine=engine, workers=1)
    key = workspace.issue("--kind", "integration", "--name", "events")
    with serve_paced() as upstream:
        workspace.add_service("events", upstream.url)
        with running_gateway(workspace) as gateway:
            host, port = gateway.root.removeprefix("http://").split(":")
            # A held-back event would leave this read waiting: the upstream sends nothing more
            # until the test has it. The timeout only bounds a failing run.
            connection = http.client.HTTPConnection(host, int(port), timeout=MAX_WAIT)
            try:
                connection.request(
                    "GET",
                    gateway.url.removeprefix(gateway.root) + "/r/containers/events/events",
                    headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
                )
                # A WSGI server sends the response head with the first bytes of the body
                # (PEP 3333), so the head comes with the first event.
                upstream.send_next()
                response = connection.getresponse()
                assert response.status == 200
                assert response.getheader("Content-Type") == "text/event-stream"
                for number in range(EVENT_COUNT):
                    if number:
                        upstream.send_next()
                    assert read_event(response) == event(number)
                    # Event n arrived on its own: the upstream has not sent n+1 yet.
                    assert len(upstream.sent_at) == number + 1
                upstream.end()
                assert response.read() == b""  # and the stream ends cleanly
            finally:
                connection.close()
