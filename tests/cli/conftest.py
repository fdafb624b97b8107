"""Fixtures for the ``invoke-middleware`` command: the real console script in a subprocess,
and a served gateway that is always stopped (the recording upstream is ``tests/conftest.py``'s)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

#: Every subprocess is bounded; a command that hangs fails the test instead.
COMMAND_TIMEOUT = 60
STARTUP_TIMEOUT = 30.0


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "invoke-middleware"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "invoke_middleware.cli"]


def cli_environment(**extra: str) -> dict[str, str]:
    """The test's environment without a config override, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "INVOKE_MIDDLEWARE_CONFIG"}
    env.update(extra)
    return env


@dataclass
class Workspace:
    """A directory with an initialised configuration and store, and a way to run commands."""

    path: Path
    team: uuid.UUID = field(default_factory=uuid.uuid4)
    env: dict[str, str] = field(default_factory=cli_environment)
    #: The umask of every command and served gateway (-1: the test's own).
    umask: int = -1

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*cli_command(), *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            umask=self.umask,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def issue(self, *args: str) -> str:
        """Issue a key and return it (the whole of standard output, one line)."""
        return self.run("credentials", "issue", "--team", str(self.team), *args).stdout.strip()

    def add_service(
        self, slug: str, upstream_url: str, *extra: str, team: uuid.UUID | str | None = None
    ) -> None:
        """``services add``: a deployed service named after its slug, of the workspace's team
        unless ``team`` says otherwise; ``extra`` options go at the end."""
        self.run(
            "services", "add", slug, "--team", str(team or self.team),
            "--name", slug.title(), "--upstream", upstream_url, *extra,
        )  # fmt: skip

    @property
    def config(self) -> Path:
        return self.path / "invoke-middleware.toml"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    space = Workspace(tmp_path)
    space.run("init")
    return space


# -- a served gateway ------------------------------------------------------------------------

_SERVING = re.compile(r"serving on (http://(?:127\.0\.0\.1|\[::1\]):\d+)(\S*) ")


@dataclass
class Served:
    """A running ``invoke-middleware serve``: its URLs, process and log file.

    ``root`` is the server's origin (``/healthz`` lives there); ``url`` adds the prefix of the
    runtime routes.
    """

    root: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """Send SIGTERM and wait (bounded) for the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
                raise
        return self.process.returncode


def start_gateway(space: Workspace, *extra: str) -> Served:
    """Run ``serve --port 0`` in ``space`` and wait until ``/healthz`` answers."""
    log = space.path / f"serve-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*cli_command(), "serve", "--host", "127.0.0.1", "--port", "0", *extra],
            cwd=space.path,
            env=space.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            umask=space.umask,
        )
    served = Served(root="", url="", process=process, log=log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
            found = _SERVING.search(log.read_text())
            if found and _healthy(found.group(1)):
                served.root = found.group(1)
                served.url = found.group(1) + found.group(2)
                return served
            time.sleep(0.05)
        raise AssertionError(f"serve did not come up: {log.read_text()}")
    except BaseException:
        served.stop()
        raise


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@contextmanager
def running_gateway(space: Workspace, *extra: str) -> Iterator[Served]:
    """A served gateway for the ``with`` block; always stopped afterwards."""
    served = start_gateway(space, *extra)
    try:
        yield served
    finally:
        served.stop()
