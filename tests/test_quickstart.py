"""The README quickstart, followed literally: its shell commands, copied from the README, run
by ``bash`` in an empty directory, the last one being a ``curl`` through the gateway to a
local HTTP service."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- quickstart:start -->", "<!-- quickstart:end -->"
FENCE = re.compile(r"```(?:sh|bash|console)?\n(.*?)```", re.DOTALL)
RUN_TIMEOUT = 120
STOP_TIMEOUT = 15.0


def quickstart_source() -> Path:
    """The README, whose quickstart block is what a newcomer copies."""
    return ROOT / "README.md"


def quickstart_commands(text: str) -> list[str]:
    """The block's shell commands, one per entry, continuation lines kept as written."""
    assert text.count(START) == 1, f"exactly one {START} marker"
    assert text.count(END) == 1, f"exactly one {END} marker"
    block = text.split(START, 1)[1].split(END, 1)[0]
    fences = FENCE.findall(block)
    assert len(fences) == 1, "the quickstart is one fenced code block"
    commands: list[str] = []
    pending = ""
    for line in fences[0].splitlines():
        pending += line + "\n"
        if not line.endswith("\\"):
            if pending.strip():
                commands.append(pending)
            pending = ""
    assert not pending, "the block ends inside a continued line"
    return commands


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _stop_group(pgid: int) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a bounded wait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_members(pgid):
            return


def test_the_quickstart_block_parses_into_commands() -> None:
    commands = quickstart_commands(quickstart_source().read_text(encoding="utf-8"))
    assert commands[0].startswith("invoke-middleware init")
    assert commands[-1].startswith("curl ")
    assert "/r/invoke/" in commands[-1]
    assert any(c.startswith("invoke-middleware serve") for c in commands)


def test_the_quickstart_reaches_a_local_service_through_the_gateway(tmp_path: Path) -> None:
    commands = quickstart_commands(quickstart_source().read_text(encoding="utf-8"))
    ports = sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(commands))})
    busy = [port for port in ports if not _port_is_free(port)]
    if busy:
        pytest.fail(f"the quickstart needs 127.0.0.1 ports {busy}, which are in use")

    answer = tmp_path / "answer.json"
    workdir = tmp_path / "quickstart"
    workdir.mkdir()
    # Everything but the final curl runs as written; the curl's output alone goes to a file.
    script = "".join(commands[:-1]) + 'exec >"$QUICKSTART_ANSWER"\n' + commands[-1]
    (tmp_path / "quickstart.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "INVOKE_MIDDLEWARE_CONFIG"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["QUICKSTART_ANSWER"] = str(answer)

    log = tmp_path / "quickstart.log"
    with log.open("wb") as sink:
        shell = subprocess.Popen(
            ["bash", "-eu", str(tmp_path / "quickstart.sh")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = shell.wait(timeout=RUN_TIMEOUT)
    finally:
        _stop_group(shell.pid)
        if shell.poll() is None:
            shell.kill()
            shell.wait(timeout=STOP_TIMEOUT)

    assert status == 0, log.read_text(errors="replace")
    envelope = json.loads(answer.read_text())
    assert envelope["status_code"] == 200
    # The example service serves the quickstart's directory: the body is the invoked file.
    invoked = json.loads(re.findall(r"-d '([^']*)'", commands[-1])[0])
    served = workdir / invoked["path"].lstrip("/")
    assert base64.b64decode(envelope["body_base64"]) == served.read_bytes()
    assert "Traceback" not in log.read_text(errors="replace")
