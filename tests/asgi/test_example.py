"""``examples/fastapi_app.py``, run as a user would: under uvicorn, relaying to a real upstream."""

from __future__ import annotations

import base64
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import requests

from invoke_middleware.store import SQLStore
from tests.asgi.server import START_TIMEOUT
from tests.integrations.helpers import SLUG, bearer, issue_key, register_echo
from tests.toolkit.upstream import Received, RecordingUpstream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
PREFIX = "/api/v1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_fastapi_example_serves_its_page_and_relays_when_run_as_a_script(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    database = f"sqlite:///{tmp_path / 'invoke.db'}"
    with SQLStore(database) as store:
        store.init()
        register_echo(store.services, upstream.url)
        key = issue_key(store.credentials)
    port = _free_port()
    # The script listens on 8000; uvicorn's command line (the docstring's other way to run it)
    # takes a free port.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "fastapi_app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=EXAMPLE.parent,
        env={**os.environ, "INVOKE_DATABASE_URL": database},
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(int(START_TIMEOUT / 0.1)):
                try:
                    home = session.get(base + "/", timeout=5)
                    break
                except requests.ConnectionError:
                    assert process.poll() is None, "the example exited"
                    select.select([], [], [], 0.1)
            assert home.json() == {"host": "fastapi example"}
            relayed = session.put(
                f"{base}{PREFIX}/r/containers/{SLUG}/files/a.txt?v=2",
                data=b"new contents",
                headers=bearer(key),
                timeout=5,
            )
            invoked = session.post(
                f"{base}{PREFIX}/r/invoke/{SLUG}",
                json={
                    "method": "POST",
                    "path": "/x",
                    "body_base64": base64.b64encode(b"hi").decode(),
                },
                headers=bearer(key),
                timeout=5,
            )
            refused = session.get(f"{base}{PREFIX}/r/containers/{SLUG}/", timeout=5)
    finally:
        process.terminate()
        process.wait(START_TIMEOUT)
        assert process.stderr is not None
        process.stderr.close()
    assert relayed.status_code == 200
    echoed = Received.from_json(relayed.content)
    assert echoed.target == "/files/a.txt?v=2"
    assert echoed.body == b"new contents"
    assert echoed.header("Authorization") is None
    assert invoked.status_code == 200
    assert Received.from_json(base64.b64decode(invoked.json()["body_base64"])).body == b"hi"
    assert refused.status_code == 401
    assert refused.headers["X-Invoke-Error"] == "unauthenticated"
