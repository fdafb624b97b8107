"""Fixtures: the world builder's worlds, in front of the recording upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.toolkit.upstream import RecordingUpstream
from tests.toolkit.world import World, build_world


@pytest.fixture
def make_world(upstream: RecordingUpstream) -> Iterator[Callable[..., World]]:
    """Build worlds with custom middleware options; their transports close afterwards."""
    built: list[World] = []

    def make(**options: Any) -> World:
        built.append(build_world(upstream, **options))
        return built[-1]

    yield make
    for each in built:
        each.middleware.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()
