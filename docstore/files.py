"""Data files for the owner alone: created 0600 (in 0700 directories), tightened if they exist.

SQLite creates a database's -wal, -shm and -journal files with the database file's own mode, so
making the database 0600 before SQLite first opens it covers them. Existing files that others
may read (made before this rule, or under a loose umask) are tightened to the owner's bits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_file(path: str | os.PathLike) -> None:
    """Make sure `path` exists and only its owner may read or write it."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        tighten(path)
    else:
        os.close(fd)


def private_sqlite_file(path: str | os.PathLike) -> None:
    """`private_file` for an SQLite database, and any companion files it already has."""
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        tighten(Path(f"{path}{suffix}"))


def tighten(path: str | os.PathLike) -> None:
    """Drop group and other permissions from an existing file we own (nothing if absent)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
    except (FileNotFoundError, PermissionError):
        pass  # gone, or not ours to change (then not ours to worry about either)
