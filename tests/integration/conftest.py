"""Fixtures for the integration tests: real upstreams on loopback, real servers, real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.recording_upstream import RecordingUpstream, recording_upstream
from tests.upstreams import (  # noqa: F401  (fixtures)
    raw_upstream,
    scripted_url,
    tls_files,
)


@pytest.fixture
def recording() -> Iterator[RecordingUpstream]:
    """A fresh upstream that records every request that reaches it."""
    with recording_upstream() as upstream:
        yield upstream
