"""``invoke-middleware demo``: a throwaway gateway with an example service, for a first try.

Everything lives in a temporary directory that disappears on exit: a starter configuration,
its SQLite store, one team with the service ``hello`` (a small HTTP server on loopback that
answers every ``GET`` with a JSON greeting) and one ``sk-`` key. The command prints a ready
``curl`` line and serves until interrupted.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from invoke_middleware._private_files import create_private_file
from invoke_middleware._toml_config import (
    DEFAULT_CONFIG_NAME,
    StandaloneConfig,
    load_config,
    starter_config,
)
from invoke_middleware.auth.principal import CredentialKind
from invoke_middleware.registry import Service, ServiceStatus, ServiceType
from invoke_middleware.store.sql import SQLStore

DEMO_SLUG = "hello"


@dataclass(frozen=True, kw_only=True)
class Demo:
    """The demo's configuration (in its temporary directory), team and key."""

    config: StandaloneConfig
    team_id: uuid.UUID
    key: str

    def curl_line(self, base_url: str) -> str:
        """A shell command that invokes the example service through the gateway."""
        envelope = json.dumps({"method": "GET", "path": "/greeting?name=you"})
        return (
            f"curl -s {base_url}/r/invoke/{DEMO_SLUG} -H 'Authorization: Bearer {self.key}' "
            f"-H 'Content-Type: application/json' -d '{envelope}'"
        )


class _GreetingHandler(BaseHTTPRequestHandler):
    """The example service: every GET gets a small JSON document naming its path."""

    def do_GET(self) -> None:
        body = json.dumps({"hello": "world", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The gateway logs each relay; the example service stays quiet.
        pass


@contextmanager
def example_service() -> Iterator[str]:
    """Run the example service on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GreetingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-upstream", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def demo_setup(upstream_url: str) -> Iterator[Demo]:
    """A temporary configuration and store holding the example service and a key."""
    with tempfile.TemporaryDirectory(prefix="invoke-middleware-demo-") as directory:
        path = Path(directory) / DEFAULT_CONFIG_NAME
        create_private_file(path, starter_config().encode())
        config = load_config(path)
        team_id = uuid.uuid4()
        with SQLStore(config.database) as store:
            store.init()
            store.services.add(
                Service(
                    id=uuid.uuid4(),
                    team_id=team_id,
                    slug=DEMO_SLUG,
                    display_name="Hello (demo)",
                    service_type=ServiceType.DEPLOYED,
                    service_status=ServiceStatus.RUNNING,
                    upstream_url=upstream_url,
                    usage_prompt="Answers every GET with a JSON greeting.",
                )
            )
            key = store.credentials.issue(
                CredentialKind.INTEGRATION, team_id=team_id, name="demo"
            ).key
        yield Demo(config=config, team_id=team_id, key=key)
