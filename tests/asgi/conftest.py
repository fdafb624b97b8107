"""Fixtures for the ASGI host tests: the recording upstream is ``tests/conftest.py``'s."""
