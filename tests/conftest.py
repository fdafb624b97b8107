"""Fixtures for every test: the recording upstream (see :mod:`tests.toolkit`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.toolkit.upstream import RecordingUpstream, recording_upstream


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    """A fresh recording upstream on loopback, stopped after the test."""
    with recording_upstream() as running:
        yield running
