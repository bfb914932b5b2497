"""Couchbase backend on the official SDK 4.x (DESIGN.md section 3).

One `Cluster` per process and per (connection string, credentials), opened on first use and again
after a fork: the SDK's C++ core runs its own I/O threads, which a forked child does not have, so
an inherited cluster is never used (nor closed) there. Stores share that cluster, so `close()` on
a store only drops its handle; per-test stores with their own prefixes cost no reconnect.

Errors: `NotFound`/`AlreadyExists`/`CasMismatch` are answers and are never retried. Errors the
server or SDK guarantees were not applied are retried with capped backoff (`retry_transient`).
A write whose outcome is unknown is settled by re-reading the document, never by repeating it
blindly; if the re-read cannot prove the outcome the caller gets `Ambiguous`.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from couchbase import subdocument
from couchbase.durability import DurabilityLevel, ServerDurability
from couchbase.exceptions import (
    AmbiguousTimeoutException,
    AuthenticationException,
    CasMismatchException,
    DocumentExistsException,
    DocumentLockedException,
    DocumentNotFoundException,
    DocumentNotJsonException,
    DurabilitySyncWriteAmbiguousException,
    DurabilitySyncWriteInProgressException,
    PathMismatchException,
    RateLimitedException,
    RequestCanceledException,
    ServiceUnavailableException,
    TemporaryFailException,
    TimeoutException,
    UnAmbiguousTimeoutException,
)
from couchbase.options import (
    DeltaValue,
    GetMultiOptions,
    IncrementMultiOptions,
    IncrementOptions,
    InsertOptions,
    RemoveOptions,
    ReplaceOptions,
    SignedInt64,
    UpsertOptions,
)

from ..base import (
    AlreadyExists,
    Ambiguous,
    CasMismatch,
    Doc,
    DocstoreError,
    NotFound,
    Store,
    TemporaryFailure,
    check_deltas,
    field_names,
    retry_transient,
)

T = TypeVar("T")

_DURABILITY_LEVELS = {
    "none": None,
    "majority": DurabilityLevel.MAJORITY,
    "majority_and_persist_active": DurabilityLevel.MAJORITY_AND_PERSIST_TO_ACTIVE,
    "persist_to_majority": DurabilityLevel.PERSIST_TO_MAJORITY,
}

# The server rejected the request, or the SDK never sent it: repeating it cannot apply it twice.
# SyncWriteInProgress is the server refusing a mutation because another durable write on the same
# key is still pending; ours was not applied (the SDK docs say "client would typically retry").
NOT_APPLIED: tuple[type[BaseException], ...] = (
    TemporaryFailException,
    UnAmbiguousTimeoutException,
    DurabilitySyncWriteInProgressException,
    ServiceUnavailableException,
    RateLimitedException,
    DocumentLockedException,
)

# The request may have reached the server and been applied. The SDK's timeout exceptions share no
# base class beyond CouchbaseException, hence the explicit list.
MAYBE_APPLIED: tuple[type[BaseException], ...] = (
    AmbiguousTimeoutException,
    DurabilitySyncWriteAmbiguousException,
    RequestCanceledException,
    TimeoutException,
)

# A replace/remove with a stale CAS is CasMismatchException in SDK 4.x; older cores reported it as
# DocumentExistsException (the server's KEY_EEXISTS status).
_CAS_CONFLICT = (CasMismatchException, DocumentExistsException)

_MULTI_CHUNK = 1000
# Rounds of counter_multi for the increments the server refused (not applied), as retry_transient.
_COUNTER_ATTEMPTS = 8
_SETTLE_ATTEMPTS = 4
# Seconds before a cluster that could not be reached is dialled again.
_REDIAL_PAUSE = 2.0


def _is_transient_write(exc: BaseException) -> bool:
    return isinstance(exc, NOT_APPLIED)


def _is_transient_read(exc: BaseException) -> bool:
    # A read has no effect, so even an ambiguous timeout is safe to repeat.
    return isinstance(exc, NOT_APPLIED + MAYBE_APPLIED)


def _as_is(value: Any) -> Any:
    """For `LookupInResult.content_as[_as_is](i)`: the field's decoded JSON, whatever its type."""
    return value


def _canonical(value: Any) -> str:
    # Strict equality: True vs 1 and 1 vs 1.0 must differ, tuples and lists must not.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- process-wide clusters -------------------------------------------------------------------------

_lock = threading.Lock()
_pid = os.getpid()
_collections: dict[tuple[str, ...], Any] = {}
_clusters: dict[tuple[str, str, str], Any] = {}
_failed_at: dict[tuple[str, str, str], tuple[float, str]] = {}
# Clusters inherited across a fork: kept referenced so their destructor (which would try to stop
# I/O threads that do not exist in the child) never runs in the child.
_abandoned: list[Any] = []


def _forget_parent_clusters() -> None:
    global _lock, _pid
    _lock = threading.Lock()  # another thread may have held it at the moment of the fork
    _abandoned.extend(_clusters.values())
    _clusters.clear()
    _collections.clear()
    _failed_at.clear()
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_clusters)


def _open_cluster(connstr: str, username: str, password: str, timeout: timedelta) -> Any:
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.diagnostics import ServiceType
    from couchbase.options import ClusterOptions, ClusterTimeoutOptions, WaitUntilReadyOptions

    timeouts = ClusterTimeoutOptions(bootstrap_timeout=timeout, connect_timeout=timeout)
    options = ClusterOptions(PasswordAuthenticator(username, password), timeout_options=timeouts)
    cluster = Cluster(connstr, options)
    cluster.wait_until_ready(timeout, WaitUntilReadyOptions(service_types=[ServiceType.KeyValue]))
    return cluster


def _open_collection(target: tuple[str, str, str, str, str, str], timeout: timedelta) -> Any:
    """The SDK collection for `target`, opening this process's cluster on first use.

    A cluster that could not be reached is not dialled again for `_REDIAL_PAUSE` seconds: while it
    is down, requests fail at once with TemporaryFailure instead of each waiting out the timeout.
    """
    connstr, username, password, bucket, scope, collection = target
    with _lock:
        if _pid != os.getpid():  # forked without register_at_fork having run
            _forget_parent_clusters()
        coll = _collections.get(target)
        if coll is None:
            key = (connstr, username, password)
            failed = _failed_at.get(key)
            if failed is not None and time.monotonic() - failed[0] < _REDIAL_PAUSE:
                raise TemporaryFailure(f"cannot reach Couchbase at {_safe(connstr)}: {failed[1]}")
            try:
                cluster = _clusters.get(key)
                if cluster is None:
                    cluster = _open_cluster(connstr, username, password, timeout)
                    _clusters[key] = cluster
                coll = cluster.bucket(bucket).scope(scope).collection(collection)
            except NOT_APPLIED + MAYBE_APPLIED + (AuthenticationException,) as exc:
                # Nothing was sent yet; a call after the pause tries to connect again.
                reason = getattr(exc, "message", None) or type(exc).__name__
                _failed_at[key] = (time.monotonic(), reason)
                raise TemporaryFailure(
                    f"cannot reach Couchbase at {_safe(connstr)}: {reason}"
                ) from exc
            _failed_at.pop(key, None)
            _collections[target] = coll
        return coll


def _safe(connstr: str) -> str:
    """The connection string without its options (they may carry certificate paths and such)."""
    return connstr.split("?", 1)[0]


def close_clusters() -> None:
    """Close this process's clusters (for an orderly shutdown; stores reopen them on next use)."""
    with _lock:
        clusters = list(_clusters.values()) if _pid == os.getpid() else []
        _clusters.clear()
        _collections.clear()
    for cluster in clusters:
        cluster.close()


# -- the store -------------------------------------------------------------------------------------


class CouchbaseStore(Store):
    def __init__(
        self,
        connstr: str,
        bucket: str,
        username: str,
        password: str,
        scope: str = "_default",
        collection: str = "_default",
        durability: str | None = "majority",
        prefix: str = "",
        connect_timeout: float = 10.0,
    ):
        if not connstr:
            raise ValueError("COUCHBASE_CONNSTR is not set")
        if durability is not None and durability not in _DURABILITY_LEVELS:
            raise ValueError(
                "COUCHBASE_DURABILITY must be one of "
                f"{', '.join(_DURABILITY_LEVELS)}, not {durability!r}"
            )
        self.prefix = prefix
        self._target = (connstr, username, password, bucket, scope, collection)
        self._connect_timeout = timedelta(seconds=connect_timeout)
        level = _DURABILITY_LEVELS[durability] if durability is not None else None
        self._durability = None if level is None else ServerDurability(level)
        self._cached: tuple[int, Any] | None = None

    @classmethod
    def from_config(cls, config: dict, prefix: str) -> CouchbaseStore:
        relaxed = config.get("DURABILITY", "durable") == "relaxed"
        return cls(
            connstr=config.get("COUCHBASE_CONNSTR", ""),
            bucket=config.get("COUCHBASE_BUCKET") or "adspace",
            username=config.get("COUCHBASE_USERNAME", ""),
            password=config.get("COUCHBASE_PASSWORD", ""),
            scope=config.get("COUCHBASE_SCOPE") or "_default",
            collection=config.get("COUCHBASE_COLLECTION") or "_default",
            durability=None if relaxed else config.get("COUCHBASE_DURABILITY") or "majority",
            prefix=prefix,
            connect_timeout=float(config.get("COUCHBASE_CONNECT_TIMEOUT") or 10),
        )

    # -- plumbing ----------------------------------------------------------------------------------

    def _collection(self) -> Any:
        cached = self._cached
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        coll = _open_collection(self._target, self._connect_timeout)
        self._cached = (os.getpid(), coll)
        return coll

    def _durable(self) -> dict[str, Any]:
        return {} if self._durability is None else {"durability": self._durability}

    def _read(self, fn: Callable[[], T]) -> T:
        return retry_transient(fn, _is_transient_read)

    def _write(self, fn: Callable[[], T]) -> T:
        return retry_transient(fn, _is_transient_write)

    def _lookup(self, key: str) -> Doc | None:
        coll, full = self._collection(), self.prefix + key
        try:
            res = self._read(lambda: coll.get(full))
        except DocumentNotFoundException:
            return None
        return Doc(res.value, res.cas)

    def _reread(self, key: str) -> Doc | None:
        """The committed document after an ambiguous write, or None if absent."""
        try:
            return self._lookup(key)
        except TemporaryFailure as exc:
            raise Ambiguous(f"{key}: outcome unknown and the re-read failed") from exc

    def _settle(self, key: str, value: Any, exc: BaseException) -> int:
        """Our write of `value` may have landed: its cas if it visibly did, else Ambiguous."""
        doc = self._reread(key)
        if doc is not None and _canonical(doc.value) == _canonical(value):
            return doc.cas
        raise Ambiguous(key) from exc

    # -- the API -----------------------------------------------------------------------------------

    def get(self, key: str) -> Doc:
        doc = self._lookup(key)
        if doc is None:
            raise NotFound(key)
        return doc

    def get_fields(self, key: str, fields: Sequence[str]) -> Doc:
        names = field_names(fields)
        coll, full = self._collection(), self.prefix + key
        specs = [subdocument.get(name) for name in names]
        try:
            res = self._read(lambda: coll.lookup_in(full, specs))
        except DocumentNotFoundException:
            raise NotFound(key) from None
        except DocumentNotJsonException:
            # Not JSON to the server (a binary counter): no fields, but the caller gets its CAS.
            return Doc({}, self.get(key).cas)
        found: dict[str, Any] = {}
        for i, name in enumerate(names):
            # A missing path is a per-field status, not an error: exists() is False for it. A
            # document that is not a JSON object (a counter, a list) has none of the fields.
            try:
                if not res.exists(i):
                    continue
            except (PathMismatchException, DocumentNotJsonException):
                continue
            found[name] = res.content_as[_as_is](i)
        return Doc(found, res.cas)

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        wanted = list(dict.fromkeys(self.prefix + k for k in keys))
        plen = len(self.prefix)
        found: dict[str, Doc] = {}
        coll = self._collection() if wanted else None
        for start in range(0, len(wanted), _MULTI_CHUNK):
            pending = wanted[start : start + _MULTI_CHUNK]

            def attempt(pending: list[str] = pending) -> None:
                res = coll.get_multi(list(pending), GetMultiOptions(return_exceptions=True))
                for full, got in res.results.items():
                    found[full[plen:]] = Doc(got.value, got.cas)
                retry: list[str] = []
                first: BaseException | None = None
                for full, err in res.exceptions.items():
                    if isinstance(err, DocumentNotFoundException):
                        continue
                    if not _is_transient_read(err):
                        raise err
                    retry.append(full)
                    first = first or err
                if first is not None:
                    # Only the keys that failed go round again.
                    pending[:] = retry
                    raise first

            self._read(attempt)
        return found

    def insert(self, key: str, value: Any) -> int:
        coll, full = self._collection(), self.prefix + key

        def attempt() -> int:
            return coll.insert(full, value, InsertOptions(**self._durable())).cas

        try:
            return self._write(attempt)
        except DocumentExistsException:
            raise AlreadyExists(key) from None
        except MAYBE_APPLIED as exc:
            last: BaseException = exc
        for _ in range(_SETTLE_ATTEMPTS):
            doc = self._reread(key)
            if doc is not None:
                if _canonical(doc.value) == _canonical(value):
                    return doc.cas
                raise Ambiguous(key) from last
            # Absent after an ambiguous insert: it did not land (or was removed since), so
            # inserting is safe; AlreadyExists now may be our first attempt committing late.
            try:
                return self._write(attempt)
            except (DocumentExistsException, *MAYBE_APPLIED) as exc:
                last = exc
            except TemporaryFailure as exc:
                # Our first attempt may still be pending, so "nothing written" would be a lie.
                raise Ambiguous(key) from exc
        raise Ambiguous(key) from last

    def replace(self, key: str, value: Any, cas: int) -> int:
        if cas <= 0:
            # cas 0 means "no check" to Couchbase; in this API it matches no document.
            raise CasMismatch(key) if self._lookup(key) is not None else NotFound(key)
        coll, full = self._collection(), self.prefix + key
        opts = ReplaceOptions(cas=cas, **self._durable())
        try:
            return self._write(lambda: coll.replace(full, value, opts).cas)
        except DocumentNotFoundException:
            raise NotFound(key) from None
        except _CAS_CONFLICT:
            raise CasMismatch(key) from None
        except MAYBE_APPLIED as exc:
            return self._settle(key, value, exc)

    def upsert(self, key: str, value: Any) -> int:
        coll, full = self._collection(), self.prefix + key
        opts = UpsertOptions(**self._durable())
        try:
            return self._write(lambda: coll.upsert(full, value, opts).cas)
        except MAYBE_APPLIED as exc:
            return self._settle(key, value, exc)

    def remove(self, key: str, cas: int | None = None) -> None:
        if cas is not None and cas <= 0:
            raise CasMismatch(key) if self._lookup(key) is not None else NotFound(key)
        coll, full = self._collection(), self.prefix + key
        opts = RemoveOptions(**self._durable(), **({} if cas is None else {"cas": cas}))
        try:
            self._write(lambda: coll.remove(full, opts))
        except DocumentNotFoundException:
            raise NotFound(key) from None
        except _CAS_CONFLICT:
            raise CasMismatch(key) from None
        except MAYBE_APPLIED as exc:
            # Gone is the state the caller asked for; present means we cannot tell.
            if self._reread(key) is not None:
                raise Ambiguous(key) from exc

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        if delta <= 0:
            raise ValueError("counter delta must be positive")
        if initial < 0:
            # Couchbase counters are unsigned; the SDK reads a negative initial as "do not create".
            raise ValueError("counter initial must not be negative")
        coll, full = self._collection(), self.prefix + key
        opts = IncrementOptions(
            delta=DeltaValue(int(delta)), initial=SignedInt64(int(initial)), **self._durable()
        )
        try:
            res = self._write(lambda: coll.binary().increment(full, opts))
            return int(res.content)
        except MAYBE_APPLIED as exc:
            # A re-read cannot tell our increment from anyone else's.
            raise Ambiguous(key) from exc

    def counter_multi(self, deltas: Mapping[str, int]) -> dict[str, DocstoreError]:
        # The SDK's increment_multi sends a chunk's increments at once and waits for all of them
        # (one call per key paid a round trip each: 30 000 counters took ~9 s on gocaves). Keys
        # are grouped by their delta, which is also the initial value of a new counter.
        check_deltas(deltas)
        coll, plen = self._collection(), len(self.prefix)
        failed: dict[str, DocstoreError] = {}
        pending = dict(deltas)
        delay = 0.005
        for attempt in range(_COUNTER_ATTEMPTS):
            again: dict[str, int] = {}
            by_delta: dict[int, list[str]] = {}
            for key, delta in pending.items():
                by_delta.setdefault(int(delta), []).append(key)
            for delta, keys in by_delta.items():
                for start in range(0, len(keys), _MULTI_CHUNK):
                    chunk = [self.prefix + k for k in keys[start : start + _MULTI_CHUNK]]
                    opts = IncrementMultiOptions(
                        delta=DeltaValue(delta),
                        initial=SignedInt64(delta),
                        return_exceptions=True,
                        **self._durable(),
                    )
                    try:
                        errors = coll.binary().increment_multi(chunk, opts).exceptions
                    except NOT_APPLIED + MAYBE_APPLIED as exc:
                        errors = dict.fromkeys(chunk, exc)
                    for full, exc in errors.items():
                        key = full[plen:]
                        if isinstance(exc, NOT_APPLIED):
                            again[key] = delta
                        elif isinstance(exc, MAYBE_APPLIED):
                            # A re-read cannot tell our increment from anyone else's.
                            failed[key] = Ambiguous(key)
                        else:
                            raise exc
            if not again:
                return failed
            pending = again
            if attempt < _COUNTER_ATTEMPTS - 1:
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        for key in pending:
            failed[key] = TemporaryFailure(f"{key}: the counter could not be reached")
        return failed

    def close(self) -> None:
        self._cached = None
