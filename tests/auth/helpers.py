"""Shared builders for the auth tests."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable

from invoke_middleware.headers import Headers
from invoke_middleware.request import PipelineRequest


def gateway_request(
    *,
    token: str | None = None,
    team: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> PipelineRequest:
    """A GET request carrying ``Authorization: Bearer <token>`` and ``X-Team-ID: <team>``."""
    fields = list(headers)
    if token is not None:
        fields.append(("Authorization", f"Bearer {token}"))
    if team is not None:
        fields.append(("X-Team-ID", team))
    return PipelineRequest(
        method="GET",
        path="/r/containers",
        query="",
        headers=Headers(fields),
        remote_addr="127.0.0.1",
        scheme="http",
        host="gateway.test",
        body=io.BytesIO(b""),
    )


class FakeClock:
    """A settable UTC clock."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeEpochClock:
    """A settable clock in seconds since the epoch."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
