"""``invoke-middleware demo``: the README's first command. The ``curl`` line it prints is run
as printed, and reaches the example service through the gateway."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path

from tests.cli.conftest import COMMAND_TIMEOUT, STARTUP_TIMEOUT, cli_command, cli_environment

_STORE = re.compile(r"store sqlite:///(\S+), ")


def test_demo_prints_a_curl_line_that_works_and_cleans_up_on_exit(tmp_path: Path) -> None:
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        demo = subprocess.Popen(
            [*cli_command(), "demo", "--port", "0"],
            cwd=tmp_path,
            env=cli_environment(),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not out.read_text().endswith("\n") and time.monotonic() < deadline:
            assert demo.poll() is None, err.read_text()
            time.sleep(0.05)
        line = out.read_text()
        assert line.count("\n") == 1, "stdout is the curl line alone"
        assert line.startswith("curl ")

        answer = subprocess.run(
            ["bash", "-c", line],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
        )
        envelope = json.loads(answer.stdout)
        assert envelope["status_code"] == 200
        sent = json.loads(re.findall(r"-d '([^']*)'", line)[0])
        assert json.loads(base64.b64decode(envelope["body_base64"]))["path"] == sent["path"]
    finally:
        demo.terminate()
        try:
            status = demo.wait(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=15)
            raise
    log = err.read_text()
    assert status == 0, log
    assert "Traceback" not in log
    store = Path(_STORE.findall(log)[0])
    assert not store.parent.exists(), "the temporary directory is removed on exit"
    assert set(tmp_path.iterdir()) == {out, err}, "nothing is left in the working directory"
