"""The suite's stores, the same on every backend.

`TEST_DOCSTORE_BACKEND` picks the backend (`embedded`, the default; `couchbase`, with the
`COUCHBASE_*` settings; `memory`). Every store a test gets is a `RecordingStore`: it remembers
each key written through it, so `dump()` (the "changes nothing" snapshot) reads exactly those
keys back with one `get_multi`, on any backend. Couchbase has no cheap way to list a prefix (the
project is KV-only), and it needs none here: a write the test store did not see cannot have
happened through it. `config` and `prefix` rebuild an equivalent store in another process.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from django.conf import settings

import docstore
from docstore import Doc, Store

BACKEND = os.environ.get("TEST_DOCSTORE_BACKEND", "embedded")
ON_COUCHBASE = BACKEND == "couchbase"
# Set by `make test-couchbase` when the cluster at COUCHBASE_CONNSTR is the gocaves mock, whose
# sub-document reads
# round integers above 2^53 (a real server returns them exactly).
ON_GOCAVES = os.environ.get("TEST_COUCHBASE_MOCK", "") == "gocaves"


class RecordingStore(Store):
    """Delegates every call to `inner` and records the keys written (by prefix-free name)."""

    def __init__(self, inner: Store, config: dict):
        self.inner = inner
        self.prefix = inner.prefix
        self.config = config
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def _wrote(self, key: str) -> None:
        with self._lock:
            self._written.add(key)

    def get(self, key: str) -> Doc:
        return self.inner.get(key)

    def get_fields(self, key: str, fields: Sequence[str]) -> Doc:
        return self.inner.get_fields(key, fields)

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        return self.inner.get_multi(keys)

    # Recorded before the call: a write that raises may still have been applied (Ambiguous).
    def insert(self, key: str, value: Any) -> int:
        self._wrote(key)
        return self.inner.insert(key, value)

    def replace(self, key: str, value: Any, cas: int) -> int:
        self._wrote(key)
        return self.inner.replace(key, value, cas)

    def upsert(self, key: str, value: Any) -> int:
        self._wrote(key)
        return self.inner.upsert(key, value)

    def remove(self, key: str, cas: int | None = None) -> None:
        self._wrote(key)
        return self.inner.remove(key, cas)

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        self._wrote(key)
        return self.inner.counter(key, delta, initial)

    def counter_multi(self, deltas):
        for key in deltas:
            self._wrote(key)
        return self.inner.counter_multi(deltas)

    def close(self) -> None:
        self.inner.close()

    def written(self) -> list[str]:
        with self._lock:
            return sorted(self._written)

    def dump(self) -> dict[str, Any]:
        """Every document written through this store, as it is now (removed ones are absent)."""
        return {k: d.value for k, d in sorted(self.inner.get_multi(self.written()).items())}


def backend_only(name: str, why: str):
    """Marks a test that is about one backend's own machinery; the other legs skip it, saying so."""
    return pytest.mark.skipif(name != BACKEND, reason=f"{name} backend only: {why}")


def store_config(tmp_path, name: str = "docstore.sqlite3") -> tuple[dict, str]:
    """(config, prefix) of a fresh, isolated store on the suite's backend."""
    if BACKEND == "couchbase":
        return {**settings.DOCSTORE, "BACKEND": "couchbase"}, f"test-{uuid.uuid4().hex[:12]}::"
    if BACKEND == "memory":
        return {"BACKEND": "memory"}, ""
    return {"BACKEND": "embedded", "PATH": str(tmp_path / name)}, ""


def store_env(store: RecordingStore) -> dict[str, str]:
    """Environment variables that make a child process (manage.py, gunicorn) open `store`."""
    config = store.config
    env = {"DOCSTORE_BACKEND": config["BACKEND"], "DOCSTORE_PREFIX": store.prefix}
    if config["BACKEND"] == "embedded":
        env["DOCSTORE_PATH"] = str(config["PATH"])
    for name, value in config.items():
        if name.startswith("COUCHBASE_") and value not in (None, ""):
            env[name] = str(value)
    return env


def open_store(config: dict, prefix: str) -> RecordingStore:
    return RecordingStore(docstore.build_store(config, prefix=prefix), config)


def make_test_store(tmp_path) -> RecordingStore:
    return open_store(*store_config(tmp_path))
