"""Fixtures of the gateway's tests beyond the recording upstream of ``tests/conftest.py``."""

from tests.upstreams import raw_upstream  # noqa: F401  (fixture)
