"""Fixtures for every test, from the toolkit (see :mod:`tests.toolkit`): the recording
upstream and worlds in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.toolkit.upstream import RecordingUpstream, recording_upstream
from tests.toolkit.world import World, build_world


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    """A fresh recording upstream on loopback, stopped after the test."""
    with recording_upstream() as running:
        yield running


@pytest.fixture
def make_world(upstream: RecordingUpstream) -> Iterator[Callable[..., World]]:
    """Build worlds on ``upstream`` with custom middleware options; closed afterwards."""
    built: list[World] = []

    def make(**options: Any) -> World:
        built.append(build_world(upstream, **options))
        return built[-1]

    yield make
    for each in built:
        each.middleware.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """A world with the default services and keys (see :func:`tests.toolkit.world.build_world`)."""
    return make_world()
