"""``serve`` with several gunicorn workers: every process answers, a revocation made by another
command applies in all of them, and /metrics adds up the samples of every process."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.cli.conftest import Served, Workspace, running_gateway
from tests.cli.test_server_limits import set_server
from tests.toolkit.upstream import RecordingUpstream

_PER_PROCESS = re.compile(r'^invoke_server_requests\{pid="(\d+)"\} (\S+)$', re.MULTILINE)
_RELAYS = re.compile(
    r'^invoke_relays_total\{[^}]*status_class="(\dxx)"[^}]*\} (\S+)$', re.MULTILINE
)


def _per_process(served: Served) -> dict[str, float]:
    text = requests.get(f"{served.root}/metrics", timeout=10).text
    return {pid: float(value) for pid, value in _PER_PROCESS.findall(text)}


def _relayed(served: Served) -> dict[str, float]:
    text = requests.get(f"{served.root}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for status_class, value in _RELAYS.findall(text):
        totals[status_class] = totals.get(status_class, 0) + float(value)
    return totals


def _burst(url: str, key: str, count: int) -> list[int]:
    """``count`` requests over fresh connections, 2 at a time (each may reach any process).

    Two: the fair-share default lets one team hold half of a process's 8 threads, and a slot is
    given back when the server closes the body, which may be just after the client has read it
    and sent its next request; two clients hold at most four slots even then.
    """

    def one(_: int) -> int:
        with requests.Session() as session:
            return session.get(
                url, headers={"Authorization": f"Bearer {key}"}, timeout=20
            ).status_code

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(count)))


def test_two_workers_both_answer_share_revocations_and_add_up_their_metrics(
    workspace: Workspace, upstream: RecordingUpstream
) -> None:
    set_server(workspace, engine="gunicorn", workers=2, metrics=True)
    workspace.run(
        "services", "add", "hello", "--team", str(workspace.team), "--name", "Hello",
        "--upstream", upstream.url,
    )  # fmt: skip
    key = workspace.issue("--kind", "integration")
    with running_gateway(workspace) as gateway:
        url = f"{gateway.url}/r/containers/hello/ping"
        # Connections are spread by the kernel: send bursts (bounded) until both have answered.
        statuses: list[int] = []
        for _ in range(20):
            statuses += _burst(url, key, 40)
            if len([n for n in _per_process(gateway).values() if n > 0]) == 2:
                break
        before = _per_process(gateway)
        assert len(before) == 2, before
        assert all(count > 0 for count in before.values())
        assert set(statuses) == {200}
        # One scrape, from whichever process, counts the relays of both.
        assert _relayed(gateway) == {"2xx": len(statuses)}

        workspace.run("credentials", "revoke", key[:12])
        refused: list[int] = []
        for _ in range(20):
            refused += _burst(url, key, 40)
            after = _per_process(gateway)
            if all(after[pid] > before[pid] + 1 for pid in before):
                break
        # Both processes received requests after the revocation, and every one was refused.
        assert all(after[pid] > before[pid] + 1 for pid in before), (before, after)
        assert set(refused) == {401}
    assert len(upstream.received) == len(statuses)
