"""The docstore API, modelled on a Couchbase collection (DESIGN.md section 3).

Every backend implements the same eight calls with the same answers: get, get_fields (a few
named top-level fields of one document, without decoding the rest), get_multi, insert, replace,
upsert, remove and counter; counter_multi (many counters at once) has a default made of
counter calls, which a backend may replace with a batched one. `NotFound`, `AlreadyExists` and `CasMismatch` are answers, never
retried inside a backend. `TemporaryFailure` is what a backend raises once its own bounded retries
of a transient error are used up; `Ambiguous` means a write may or may not have been applied (the
caller re-reads; it never blindly repeats).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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

    def get_fields(self, key: str, fields: Sequence[str]) -> Doc:
        """The named top-level fields of the document, as a dict, with the document's CAS.

        A field the document lacks (or every field, if it is not a JSON object) is absent from the
        dict; a field holding JSON null is there as None. `NotFound` if the document is absent.
        The whole document is never decoded, so reading one small field of a large document is
        cheap (a sub-document lookup on Couchbase). `fields` is checked by `field_names`.
        """
        raise NotImplementedError

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        raise NotImplementedError

    def get_several(self, reads: Sequence[tuple[str, Sequence[str] | None]]) -> list[Doc | None]:
        """For each (key, fields): the whole document (fields None) or those fields, as
        `get_fields` gives them; None where the document is absent. In order, at most
        MAX_SEVERAL reads.

        For a request that needs a few documents at once (the API reads the seller's key and the
        campaign): a backend that can answer them in one round trip does (the embedded store: one
        statement, a third cheaper than two); the others read them in turn, so the answers may
        be from different moments, as separate reads would be.
        """
        check_several(reads)
        found: list[Doc | None] = []
        for key, fields in reads:
            try:
                found.append(self.get(key) if fields is None else self.get_fields(key, fields))
            except NotFound:
                found.append(None)
        return found

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

    def counter_multi(self, deltas: Mapping[str, int]) -> dict[str, DocstoreError]:
        """Add each delta (> 0) to its counter; an absent counter is created holding its delta.

        For writers of many counts at once (adspace.stats): the same effect as
        `counter(key, delta, initial=delta)` for each key, in as few round trips or commits as
        the backend can. Returns the keys whose add did not certainly apply, each with
        `TemporaryFailure` (not applied) or `Ambiguous` (may have been applied: never repeat it
        blindly); an empty dict when every add applied. ValueError, before anything is written,
        if a delta is not positive. This default makes one `counter` call per key.
        """
        check_deltas(deltas)
        failed: dict[str, DocstoreError] = {}
        for key, delta in deltas.items():
            try:
                self.counter(key, delta, initial=delta)
            except (TemporaryFailure, Ambiguous) as exc:
                failed[key] = exc
        return failed

    def close(self) -> None:
        pass


def check_deltas(deltas: Mapping[str, int]) -> None:
    for key, delta in deltas.items():
        if isinstance(delta, bool) or not isinstance(delta, int) or delta <= 0:
            raise ValueError(f"counter delta of {key!r} must be a positive int, not {delta!r}")


# The field names get_fields accepts: plain identifiers need no quoting in a SQLite JSON path or a
# Couchbase sub-document path. At most 16 of them: one Couchbase lookup_in takes no more.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_FIELDS = 16


def field_names(fields: Sequence[str]) -> tuple[str, ...]:
    """`fields` of a get_fields call, checked alike for every backend, without repeats, in order.

    ValueError unless there are 1 to MAX_FIELDS names, each matching [A-Za-z_][A-Za-z0-9_]*;
    TypeError for a bare string (a sequence of one-letter names is never what was meant).
    """
    if isinstance(fields, str | bytes):
        raise TypeError("get_fields takes a sequence of field names, not a string")
    names = tuple(dict.fromkeys(fields))
    if not 1 <= len(names) <= MAX_FIELDS:
        raise ValueError(f"get_fields takes 1 to {MAX_FIELDS} field names, not {len(names)}")
    for name in names:
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid field name {name!r}: must match [A-Za-z_][A-Za-z0-9_]*")
    return names


MAX_SEVERAL = 8


def check_several(reads: Sequence[tuple[str, Sequence[str] | None]]) -> None:
    """The reads of a get_several call, checked alike for every backend."""
    if not 1 <= len(reads) <= MAX_SEVERAL:
        raise ValueError(f"get_several takes 1 to {MAX_SEVERAL} reads, not {len(reads)}")
    for _key, fields in reads:
        if fields is not None:
            field_names(fields)


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
