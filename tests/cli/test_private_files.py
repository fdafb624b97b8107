"""The configuration and the SQLite store (with its -wal and -shm files) are the owner's alone,
whatever the umask; ``serve`` warns when they are not."""

from __future__ import annotations

import stat
from pathlib import Path

import requests

from tests.cli.conftest import Workspace, running_gateway
from tests.toolkit.upstream import RecordingUpstream


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_and_serve_keep_every_secret_file_0600_under_any_umask(
    tmp_path: Path, upstream: RecordingUpstream
) -> None:
    space = Workspace(tmp_path, umask=0)
    space.run("init")
    space.add_service("hello", upstream.url)
    key = space.issue("--kind", "integration")
    with running_gateway(space) as gateway:
        answer = requests.get(
            f"{gateway.url}/r/containers/hello/", headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )  # fmt: skip
        assert answer.status_code == 200
        # While the gateway holds the store open, SQLite keeps its -wal and -shm files.
        store = tmp_path / "invoke-middleware.sqlite3"
        files = [space.config, store, *tmp_path.glob("invoke-middleware.sqlite3-*")]
        modes = {path.name: _mode(path) for path in files}
    assert {"invoke-middleware.sqlite3-wal", "invoke-middleware.sqlite3-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)
    assert "readable by other users" not in gateway.log.read_text()


def test_init_force_makes_an_existing_config_private(workspace: Workspace) -> None:
    workspace.config.chmod(0o644)
    workspace.run("init", "--force")
    assert _mode(workspace.config) == 0o600


def test_serve_warns_when_a_secret_file_is_readable_by_others(workspace: Workspace) -> None:
    workspace.config.chmod(0o644)
    with running_gateway(workspace) as gateway:
        pass
    log = gateway.log.read_text()
    assert f"warning: {workspace.config.name}" in log or str(workspace.config) in log
    assert "readable by other users" in log
