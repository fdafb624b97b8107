"""Fixtures for the ASGI host tests: the recording upstream is ``tests/conftest.py``'s."""

from tests.upstreams import scripted_url  # noqa: F401  (fixture)
