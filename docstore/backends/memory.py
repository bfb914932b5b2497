"""Deterministic in-memory backend for the seeded swarm: same contract, no I/O, reproducible CAS."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from ..base import AlreadyExists, CasMismatch, Doc, NotFound, Store, field_names


class MemoryStore(Store):
    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self._docs: dict[str, tuple[str, int]] = {}
        self._next_cas = 1
        self._lock = threading.Lock()

    def _cas(self) -> int:
        self._next_cas += 1
        return self._next_cas

    def get(self, key: str) -> Doc:
        with self._lock:
            try:
                raw, cas = self._docs[self.prefix + key]
            except KeyError:
                raise NotFound(key) from None
        return Doc(json.loads(raw), cas)

    def get_fields(self, key: str, fields: Sequence[str]) -> Doc:
        names = field_names(fields)
        doc = self.get(key)  # decoded afresh from the stored JSON: the caller owns every value
        value = doc.value
        if not isinstance(value, dict):
            return Doc({}, doc.cas)
        return Doc({name: value[name] for name in names if name in value}, doc.cas)

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        found = {}
        for key in keys:
            try:
                found[key] = self.get(key)
            except NotFound:
                pass
        return found

    def insert(self, key: str, value: Any) -> int:
        raw = json.dumps(value, ensure_ascii=False)
        with self._lock:
            if self.prefix + key in self._docs:
                raise AlreadyExists(key)
            cas = self._cas()
            self._docs[self.prefix + key] = (raw, cas)
            return cas

    def replace(self, key: str, value: Any, cas: int) -> int:
        raw = json.dumps(value, ensure_ascii=False)
        with self._lock:
            current = self._docs.get(self.prefix + key)
            if current is None:
                raise NotFound(key)
            if current[1] != cas:
                raise CasMismatch(key)
            new = self._cas()
            self._docs[self.prefix + key] = (raw, new)
            return new

    def upsert(self, key: str, value: Any) -> int:
        raw = json.dumps(value, ensure_ascii=False)
        with self._lock:
            cas = self._cas()
            self._docs[self.prefix + key] = (raw, cas)
            return cas

    def remove(self, key: str, cas: int | None = None) -> None:
        with self._lock:
            current = self._docs.get(self.prefix + key)
            if current is None:
                raise NotFound(key)
            if cas is not None and current[1] != cas:
                raise CasMismatch(key)
            del self._docs[self.prefix + key]

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        if delta <= 0:
            raise ValueError("counter delta must be positive")
        with self._lock:
            current = self._docs.get(self.prefix + key)
            value = int(initial) if current is None else int(json.loads(current[0])) + delta
            self._docs[self.prefix + key] = (json.dumps(value), self._cas())
            return value

    def clone(self) -> MemoryStore:
        """An independent copy: lets a swarm build its world once and start every seed from it."""
        copy = MemoryStore(self.prefix)
        with self._lock:
            copy._docs = dict(self._docs)
            copy._next_cas = self._next_cas
        return copy

    def dump(self) -> dict[str, Any]:
        plen = len(self.prefix)
        with self._lock:
            return {
                k[plen:]: json.loads(raw)
                for k, (raw, _) in self._docs.items()
                if k.startswith(self.prefix)
            }
