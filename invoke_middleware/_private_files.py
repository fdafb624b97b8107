"""Files that hold secrets (the configuration, the SQLite store) are the owner's alone: 0600.

The store holds key hashes and the configuration may hold a JWT secret. The mode is set on the
open descriptor, so the process's umask cannot widen it; SQLite creates the store's ``-wal``
and ``-shm`` files with the mode of the database file, so they follow.
"""

from __future__ import annotations

import os
from pathlib import Path

from invoke_middleware._toml_config import StandaloneConfig, sqlite_file

__all__ = ["PRIVATE_MODE", "create_private_file", "secret_files"]

PRIVATE_MODE = 0o600

#: Files SQLite keeps next to a database in WAL mode.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def create_private_file(path: Path, data: bytes | None) -> None:
    """Make ``path`` mode 0600, writing ``data`` over its content (``None``: create it empty
    when missing, keep what it holds otherwise)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if data is not None else 0)
    descriptor = os.open(path, flags, PRIVATE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, PRIVATE_MODE)
        if data is not None:
            file.write(data)


def secret_files(config: StandaloneConfig) -> list[Path]:
    """The configuration file, and the SQLite store with its companion files if it is one."""
    files = [config.path]
    store = sqlite_file(config.database)
    if store is not None:
        files += [store, *(store.with_name(store.name + suffix) for suffix in SQLITE_COMPANIONS)]
    return files
