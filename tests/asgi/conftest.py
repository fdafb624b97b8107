"""Fixtures for the ASGI host tests."""

from tests.integrations.conftest import upstream  # noqa: F401  (fixture)
