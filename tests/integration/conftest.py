"""Fixtures for the integration tests: real upstreams on loopback, real servers, real clients.

The recording upstream (``upstream``) comes from ``tests/conftest.py``.
"""

from tests.upstreams import (  # noqa: F401  (fixtures)
    raw_upstream,
    scripted_url,
    tls_files,
)
