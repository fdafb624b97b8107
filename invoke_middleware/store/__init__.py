"""Persistent stores for services, credentials and memberships (see :mod:`.sql`)."""

from invoke_middleware.store.sql import (
    DuplicateServiceError,
    SQLCredentialStore,
    SQLMembershipStore,
    SQLServiceRegistry,
    SQLStore,
    create_engine,
)

__all__ = [
    "DuplicateServiceError",
    "SQLCredentialStore",
    "SQLMembershipStore",
    "SQLServiceRegistry",
    "SQLStore",
    "create_engine",
]
