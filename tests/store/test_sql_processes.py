"""Two OS processes sharing one store: a revocation by one is refused by the other next time."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from invoke_middleware.auth.principal import CredentialKind
from tests.store.conftest import Backend

TEAM = uuid.UUID("6f1b1c52-0c39-4d8e-9d55-3c3f3f0e7a01")
REPO = Path(__file__).resolve().parents[2]
ANSWER_TIMEOUT = 30.0

# Checks each key read from stdin the way the credential resolver does, through one long-lived
# store (so its pooled connection is reused between lookups), and answers one line per key.
CHECKER = textwrap.dedent(
    """
    import datetime as dt, sys
    from invoke_middleware.auth.keys import key_matches, key_prefix
    from invoke_middleware.store import SQLStore

    with SQLStore(sys.argv[1]) as store:
        print("ready", flush=True)
        for line in sys.stdin:
            key = line.strip()
            now = dt.datetime.now(dt.UTC)
            records = store.credentials.find_by_prefix(key_prefix(key))
            usable = any(key_matches(key, r.key_hash) and r.is_usable(now) for r in records)
            print("accepted" if usable else "refused", flush=True)
    """
)

REVOKER = textwrap.dedent(
    """
    import sys, uuid
    from invoke_middleware.store import SQLStore

    with SQLStore(sys.argv[1]) as store:
        print(store.credentials.revoke(uuid.UUID(sys.argv[2])))
    """
)


def _answer(checker: subprocess.Popen[str], key: str | None = None) -> str:
    assert checker.stdin is not None
    assert checker.stdout is not None
    if key is not None:
        checker.stdin.write(key + "\n")
        checker.stdin.flush()
    ready, _, _ = select.select([checker.stdout], [], [], ANSWER_TIMEOUT)
    assert ready, "the checker process did not answer"
    return checker.stdout.readline().strip()


def test_a_revocation_in_one_process_is_refused_by_another_on_its_next_lookup(
    backend: Backend,
) -> None:
    issued = backend.open_store().credentials.issue(CredentialKind.INTEGRATION, team_id=TEAM)
    checker = subprocess.Popen(
        [sys.executable, "-c", CHECKER, backend.url],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _answer(checker) == "ready"
        assert _answer(checker, issued.key) == "accepted"
        assert _answer(checker, issued.key) == "accepted"

        revoker = subprocess.run(
            [sys.executable, "-c", REVOKER, backend.url, str(issued.record.id)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=ANSWER_TIMEOUT,
            check=True,
        )
        assert revoker.stdout.strip() == "True"

        assert _answer(checker, issued.key) == "refused"
    finally:
        assert checker.stdin is not None
        assert checker.stdout is not None
        checker.stdin.close()
        try:
            checker.wait(timeout=ANSWER_TIMEOUT)
        except subprocess.TimeoutExpired:
            checker.kill()
            checker.wait()
        checker.stdout.close()
    assert checker.returncode == 0
