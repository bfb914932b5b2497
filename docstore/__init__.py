"""The Couchbase gateway: one small KV API (see base.py), two real backends and an in-memory one.

`get_store()` returns the process's store, created lazily from settings on first use and again
after a fork (never at import), so gunicorn workers each open their own connection.
"""

from __future__ import annotations

import os
import threading

from .base import (
    AlreadyExists,
    Ambiguous,
    CasMismatch,
    Doc,
    DocstoreError,
    NotFound,
    Store,
    TemporaryFailure,
)
from .clock import Clock, FixedClock, SystemClock

__all__ = [
    "AlreadyExists",
    "Ambiguous",
    "CasMismatch",
    "Clock",
    "Doc",
    "DocstoreError",
    "FixedClock",
    "NotFound",
    "Store",
    "SystemClock",
    "TemporaryFailure",
    "build_store",
    "get_clock",
    "get_store",
    "set_clock",
    "set_store",
]

_lock = threading.Lock()
_store: Store | None = None
_store_pid: int | None = None
_override: Store | None = None
_clock: Clock = SystemClock()


def build_store(config: dict, prefix: str | None = None) -> Store:
    backend = config.get("BACKEND", "embedded")
    prefix = config.get("PREFIX", "") if prefix is None else prefix
    durability = config.get("DURABILITY", "durable")
    if durability not in ("durable", "relaxed"):
        raise ValueError(f"DOCSTORE_DURABILITY must be durable or relaxed, not {durability!r}")
    if backend == "embedded":
        from .backends.embedded import EmbeddedStore

        return EmbeddedStore(config["PATH"], prefix=prefix, durable=durability == "durable")
    if backend == "couchbase":
        from .backends.couchbase import CouchbaseStore

        return CouchbaseStore.from_config(config, prefix=prefix)
    if backend == "memory":
        from .backends.memory import MemoryStore

        return MemoryStore(prefix=prefix)
    raise ValueError(f"DOCSTORE_BACKEND must be embedded or couchbase, not {backend!r}")


def get_store() -> Store:
    global _store, _store_pid
    if _override is not None:
        return _override
    if _store is None or _store_pid != os.getpid():
        with _lock:
            if _store is None or _store_pid != os.getpid():
                from django.conf import settings

                _store, _store_pid = build_store(settings.DOCSTORE), os.getpid()
    return _store


def set_store(store: Store | None) -> None:
    """Use `store` for this process (tests); None goes back to the one built from settings."""
    global _override
    _override = store


def get_clock() -> Clock:
    return _clock


def set_clock(clock: Clock | None) -> None:
    global _clock
    _clock = clock or SystemClock()
