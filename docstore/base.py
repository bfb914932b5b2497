"""The docstore API, modelled on a Couchbase collection (DESIGN.md section 3).

Every backend implements the same seven calls with the same answers; `NotFound`, `AlreadyExists`
and `CasMismatch` are answers, never retried inside a backend. `TemporaryFailure` is what a backend
raises once its own bounded retries of a transient error are used up; `Ambiguous` means a write may
or may not have been applied (the caller re-reads; it never blindly repeats).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar


class DocstoreError(Exception):
    """Base of every docstore error."""


class NotFound(DocstoreError):
    pass


class AlreadyExists(DocstoreError):
    pass


class CasMismatch(DocstoreError):
    pass


class TemporaryFailure(DocstoreError):
    """A transient backend error that outlived the backend's retries; nothing is known to be written."""


class Ambiguous(DocstoreError):
    """A write that may have been applied: re-read before deciding anything."""


@dataclass(frozen=True, slots=True)
class Doc:
    value: Any
    cas: int


class Store:
    """Interface of every backend. Keys are strings; values are JSON-serialisable."""

    prefix: str = ""

    def get(self, key: str) -> Doc:
        raise NotImplementedError

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        raise NotImplementedError

    def insert(self, key: str, value: Any) -> int:
        raise NotImplementedError

    def replace(self, key: str, value: Any, cas: int) -> int:
        raise NotImplementedError

    def upsert(self, key: str, value: Any) -> int:
        raise NotImplementedError

    def remove(self, key: str, cas: int | None = None) -> None:
        raise NotImplementedError

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        """Atomically add `delta` (> 0); an absent counter is created holding `initial`, returned as is."""
        raise NotImplementedError

    def close(self) -> None:
        pass


T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T],
    is_transient: Callable[[BaseException], bool],
    attempts: int = 8,
    first_delay: float = 0.005,
    max_delay: float = 1.0,
) -> T:
    """Run `fn`, retrying transient errors with capped exponential backoff and jitter."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts - 1:
                raise TemporaryFailure(str(exc)) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
