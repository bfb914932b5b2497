"""Embedded backend: one SQLite file standing in for Couchbase on a single machine.

Each call is a single SQL statement, which SQLite applies atomically, so the conditional writes
need nothing more: `UPDATE ... WHERE cas = ?` is the CAS, `INSERT ... ON CONFLICT DO NOTHING` is
the add. WAL lets readers run beside the one writer; `busy_timeout` queues writers from other
processes (gunicorn workers, the worker process) instead of failing.

Group commit. A durable commit costs an fdatasync (~2 ms on a cloud disk), and SQLite has one
writer at a time, so one write per commit caps a machine at a few hundred writes a second however
many threads wait. Durable writes from the threads of one process therefore queue up, and one of
them (the leader) runs every queued statement, in order, inside one transaction with one fsync;
each caller returns only after the commit that holds its write, so a write that has returned is
as durable as before. Statements still apply one at a time in queue order, so two CASes on one
key in one batch behave exactly as they would in sequence. A statement that fails rolls the batch
back: it gets its error, the others are queued again as if never tried. A crash loses only
writes whose callers have not returned, which is what the protocols already expect.

Writers from different processes queue on an flock of `<path>.lock` before they touch SQLite's
own lock. SQLite's busy handler polls with sleeps that grow to 100 ms, so two processes taking
turns every 2 ms would mostly sleep; the kernel wakes an flock waiter the moment it is free, and
releases it if the holder dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..base import (
    AlreadyExists,
    CasMismatch,
    Doc,
    DocstoreError,
    NotFound,
    Store,
    TemporaryFailure,
    check_deltas,
    check_several,
    field_names,
    retry_transient,
)
from ..files import private_sqlite_file, tighten

_SCHEMA = "CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, value TEXT NOT NULL, cas INTEGER NOT NULL) WITHOUT ROWID"
_MULTI_CHUNK = 500
_COUNTER_SQL = (
    "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
    "SET value = CAST(value AS INTEGER) + ?, cas = excluded.cas"
)
# get_fields answers kept per process (key and names -> CAS, field texts, and the decoded values
# when none can be changed by a caller: strings and numbers); cleared when full.
_FIELDS_CACHE_SIZE = 4096
_STATE_LOCK = threading.Lock()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_IMMUTABLE = (str, int, float, bool, type(None))


def _decode_fields(names: tuple[str, ...], raws: list[str | None]) -> dict[str, Any]:
    """Fresh values every call, so a caller may change what it gets."""
    return {name: json.loads(raw) for name, raw in zip(names, raws, strict=True) if raw is not None}


def _cached_fields(names: tuple[str, ...], cached: tuple) -> Doc:
    """A get_fields answer kept at (cas, field texts, decoded values or None)."""
    if cached[2] is not None:  # immutable values: a fresh dict of them is enough
        return Doc(dict(cached[2]), cached[0])
    return Doc(_decode_fields(names, cached[1]), cached[0])


def _names_tuple(fields: Sequence[str]) -> tuple:
    if isinstance(fields, str | bytes):
        raise TypeError("get_several takes a sequence of field names per read, not a string")
    return tuple(fields)


def _several_plan(shape: tuple) -> tuple[str, list]:
    """get_several's statement for reads of these fields (None: the whole document), and each
    read's (field names, their JSON paths)."""
    fields = [
        (None, ()) if f is None else (field_names(f), tuple(f"$.{n}" for n in field_names(f)))
        for f in shape
    ]
    width = max(1 if names is None else len(names) for names, _ in fields)
    selects = []
    for i, (names, _) in enumerate(fields):
        if names is None:
            columns = ["value"]
        else:
            columns = ["CASE WHEN cas = ? THEN NULL ELSE value -> ? END"] * len(names)
        columns += ["NULL"] * (width - len(columns))
        selects.append(f"SELECT {i}, cas, {', '.join(columns)} FROM docs WHERE key = ?")  # noqa: S608 - only placeholders and integers
    return " UNION ALL ".join(selects), fields


def _new_cas() -> int:
    # Random, not sequential: a removed and re-inserted key must never match a stale CAS.
    return secrets.randbits(62) + 1


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


@dataclass(eq=False)
class _Write:
    """One statement waiting in the group commit queue."""

    sql: str
    params: tuple
    rowcount: int = -1
    row: tuple | None = None
    error: BaseException | None = None
    finished: bool = False
    lead: bool = False  # set when this writer is made the leader of the next batch
    wake: threading.Event = field(default_factory=threading.Event)


class _ProcessState:
    """One process's writing state for a store: the group commit queue and the write lock."""

    def __init__(self, lock_path: str) -> None:
        self.lock = threading.Lock()  # guards `pending` and `leading`
        self.pending: list[_Write] = []
        self.leading = False
        self.writer = threading.Lock()  # one writing thread at a time in this process...
        self.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # ...and machine-wide

    def close(self) -> None:
        os.close(self.lock_fd)


class EmbeddedStore(Store):
    def __init__(self, path: str | os.PathLike, prefix: str = "", durable: bool = True):
        self.path = str(path)
        self.prefix = prefix
        self.durable = durable
        self._local = threading.local()
        self._process_state: tuple[int, _ProcessState] | None = None
        self._fields: dict[tuple[str, tuple[str, ...]], tuple[int, list[str | None]]] = {}
        # get_several's statements, by the fields each read names (_several_plan).
        self._several: dict[tuple, tuple[str, list]] = {}
        # The owner's alone, with its -wal, -shm and .lock (docstore.files); before SQLite opens it.
        private_sqlite_file(self.path)
        tighten(self.path + ".lock")
        # Processes opening a fresh file at once race to switch it to WAL, and SQLite reports the
        # loser as "locked" at once, without waiting on busy_timeout: retry like any busy error.
        retry_transient(lambda: self._conn().execute(_SCHEMA), _is_transient)

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and per process: a connection must never cross a fork.
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            except BaseException:
                conn.close()  # the caller retries with a new one; do not leak this one
                raise
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def _run(self, sql: str, params: tuple) -> sqlite3.Cursor:
        return retry_transient(lambda: self._conn().execute(sql, params), _is_transient)

    def _write(self, sql: str, params: tuple) -> tuple[int, tuple | None]:
        """Apply one write; (rowcount, first returned row) once it is committed."""
        if not self.durable:
            with self._writing():
                cur = self._run(sql, params)
                rows = cur.fetchall()
            return cur.rowcount, rows[0] if rows else None
        return retry_transient(lambda: self._write_grouped(sql, params), _is_transient)

    def _group(self) -> _ProcessState:
        # Per process: a fork must not inherit a queue, a leader or a held lock from its parent.
        state = self._process_state
        if state is None or state[0] != os.getpid():
            with _STATE_LOCK:
                state = self._process_state
                if state is None or state[0] != os.getpid():
                    state = self._process_state = (os.getpid(), _ProcessState(self.path + ".lock"))
        return state[1]

    @contextmanager
    def _writing(self) -> Iterator[None]:
        state = self._group()
        with state.writer:
            fcntl.flock(state.lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(state.lock_fd, fcntl.LOCK_UN)

    def _write_grouped(self, sql: str, params: tuple) -> tuple[int, tuple | None]:
        group = self._group()
        me = _Write(sql, params)
        with group.lock:
            group.pending.append(me)
            if not group.leading:
                group.leading = me.lead = True
        while not me.finished:
            if me.lead:
                me.lead = False
                self._lead(group)
            else:
                # Flags are set before the event, and read again after clearing it: no lost wake.
                me.wake.wait()
                me.wake.clear()
        if me.error is not None:
            raise me.error
        return me.rowcount, me.row

    def _lead(self, group: _ProcessState) -> None:
        """Commit everything queued (our own write included), then hand the lead on."""
        with group.lock:
            batch, group.pending = group.pending, []
        retry: list[_Write] = []
        try:
            retry = self._commit(batch)
        except BaseException as exc:
            for w in batch:
                if not w.finished:
                    w.error, w.finished = exc, True
            raise
        finally:
            with group.lock:
                group.pending[:0] = retry
                waiting = group.pending
                if waiting:
                    waiting[0].lead = True
                    waiting[0].wake.set()
                else:
                    group.leading = False
            for w in batch:
                if w.finished:
                    w.wake.set()

    def _commit(self, batch: list[_Write]) -> list[_Write]:
        """Run the batch in one transaction; returns the writes to queue again (none, or all but
        the one that failed and rolled the batch back)."""
        conn = self._conn()
        with self._writing():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                for w in batch:
                    w.error, w.finished = exc, True
                return []
            try:
                return self._run_batch(conn, batch)
            except BaseException:
                # An interrupt mid-batch: nothing may stay half-applied, nor the write lock held.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[_Write]:
        for i, w in enumerate(batch):
            try:
                cur = conn.execute(w.sql, w.params)
                rows = cur.fetchall()  # run RETURNING to its end before the next statement
                w.rowcount, w.row = cur.rowcount, rows[0] if rows else None
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                w.error, w.finished = exc, True
                return batch[:i] + batch[i + 1 :]
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for w in batch:
                w.error, w.finished = exc, True
            return []
        for w in batch:
            w.finished = True
        return []

    def _exists(self, key: str) -> bool:
        return self._run("SELECT 1 FROM docs WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> Doc:
        row = self._run(
            "SELECT value, cas FROM docs WHERE key = ?", (self.prefix + key,)
        ).fetchone()
        if row is None:
            raise NotFound(key)
        return Doc(json.loads(row[0]), row[1])

    def get_fields(self, key: str, fields: Sequence[str]) -> Doc:
        names = field_names(fields)
        full_key = self.prefix + key
        # SQLite parses the whole document for `->` (~40 us for a 5 KB account), so the fields'
        # JSON texts are kept per process with the CAS they were read at: a read costs one
        # look at the CAS, and the document is parsed again only after it has changed. CAS
        # values are random and never reused, so no other write can look unchanged.
        cached = self._fields.get((full_key, names))
        if cached is not None:
            row = self._run("SELECT cas FROM docs WHERE key = ?", (full_key,)).fetchone()
            if row is None:
                raise NotFound(key)
            if row[0] == cached[0]:
                return _cached_fields(names, cached)
        # `value -> '$.name'` is the field's JSON text, NULL when absent (and for every name when
        # the document is not an object). The paths are bound parameters; field_names allows no
        # name that needs quoting.
        row = self._run(
            f"SELECT cas{', value -> ?' * len(names)} FROM docs WHERE key = ?",  # noqa: S608 - only placeholders
            (*[f"$.{name}" for name in names], full_key),
        ).fetchone()
        if row is None:
            raise NotFound(key)
        cas, *raws = row
        return self._remember_fields(full_key, names, cas, raws)

    def _remember_fields(self, full_key: str, names: tuple[str, ...], cas: int, raws: list) -> Doc:
        if len(self._fields) >= _FIELDS_CACHE_SIZE:
            self._fields.clear()
        value = _decode_fields(names, raws)
        scalars = all(type(v) in _IMMUTABLE for v in value.values())
        self._fields[(full_key, names)] = (cas, raws, dict(value) if scalars else None)
        return Doc(value, cas)

    def get_several(self, reads: Sequence[tuple[str, Sequence[str] | None]]) -> list[Doc | None]:
        # One statement (so one read transaction: ~3 us of each statement here is starting one),
        # a SELECT per read joined by UNION ALL, every row as (read's place, cas, texts...): the
        # whole value for a whole read, else each field's JSON text, or NULLs when the CAS is the
        # one get_fields last parsed the fields at (their texts are kept, as there). The
        # statement depends only on which fields are read, so it is built once per shape.
        shape = tuple(f if f is None or type(f) is tuple else _names_tuple(f) for _, f in reads)
        plan = self._several.get(shape)
        if plan is None:
            check_several(reads)
            plan = _several_plan(shape)
            if len(self._several) >= _FIELDS_CACHE_SIZE:
                self._several.clear()
            self._several[shape] = plan
        sql, fields = plan
        params: list = []
        kept: list = []
        for (key, _), (names, paths) in zip(reads, fields, strict=True):
            full_key = self.prefix + key
            if names is None:
                kept.append(None)
            else:
                cached = self._fields.get((full_key, names))
                kept.append(cached)
                known = None if cached is None else cached[0]
                for path in paths:
                    params += (known, path)
            params.append(full_key)
        found: list[Doc | None] = [None] * len(reads)
        for i, cas, *texts in self._run(sql, tuple(params)).fetchall():
            names, cached = fields[i][0], kept[i]
            if names is None:
                found[i] = Doc(json.loads(texts[0]), cas)
            elif cached is not None and cached[0] == cas:
                found[i] = _cached_fields(names, cached)
            else:
                key = self.prefix + reads[i][0]
                found[i] = self._remember_fields(key, names, cas, texts[: len(names)])
        return found

    def get_multi(self, keys: Iterable[str]) -> dict[str, Doc]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Doc] = {}
        plen = len(self.prefix)
        for start in range(0, len(keys), _MULTI_CHUNK):
            chunk = [self.prefix + k for k in keys[start : start + _MULTI_CHUNK]]
            marks = ",".join("?" * len(chunk))
            rows = self._run(
                f"SELECT key, value, cas FROM docs WHERE key IN ({marks})",  # noqa: S608 - only placeholders
                tuple(chunk),
            ).fetchall()
            for key, value, cas in rows:
                found[key[plen:]] = Doc(json.loads(value), cas)
        return found

    def insert(self, key: str, value: Any) -> int:
        cas = _new_cas()
        rowcount, _ = self._write(
            "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (self.prefix + key, _dumps(value), cas),
        )
        if rowcount != 1:
            raise AlreadyExists(key)
        return cas

    def replace(self, key: str, value: Any, cas: int) -> int:
        new = _new_cas()
        rowcount, _ = self._write(
            "UPDATE docs SET value = ?, cas = ? WHERE key = ? AND cas = ?",
            (_dumps(value), new, self.prefix + key, cas),
        )
        if rowcount != 1:
            if self._exists(self.prefix + key):
                raise CasMismatch(key)
            raise NotFound(key)
        return new

    def upsert(self, key: str, value: Any) -> int:
        cas = _new_cas()
        self._write(
            "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, cas = excluded.cas",
            (self.prefix + key, _dumps(value), cas),
        )
        return cas

    def remove(self, key: str, cas: int | None = None) -> None:
        if cas is None:
            rowcount, _ = self._write("DELETE FROM docs WHERE key = ?", (self.prefix + key,))
        else:
            rowcount, _ = self._write(
                "DELETE FROM docs WHERE key = ? AND cas = ?", (self.prefix + key, cas)
            )
        if rowcount != 1:
            if cas is not None and self._exists(self.prefix + key):
                raise CasMismatch(key)
            raise NotFound(key)

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        if delta <= 0:
            raise ValueError("counter delta must be positive")
        _, row = self._write(
            _COUNTER_SQL + " RETURNING value",
            (self.prefix + key, str(int(initial)), _new_cas(), delta),
        )
        return int(row[0])

    def counter_multi(self, deltas: Mapping[str, int]) -> dict[str, DocstoreError]:
        """Every add in one transaction (one commit, one fsync): all applied or none."""
        check_deltas(deltas)
        rows = [(self.prefix + key, str(delta), delta) for key, delta in deltas.items()]
        if not rows:
            return {}

        def apply() -> None:
            conn = self._conn()
            with self._writing():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for full_key, initial, delta in rows:
                        conn.execute(_COUNTER_SQL, (full_key, initial, _new_cas(), delta))
                    conn.execute("COMMIT")
                except BaseException:
                    # Nothing of the batch stays applied when any of it (or the commit) failed.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

        try:
            retry_transient(apply, _is_transient)
        except TemporaryFailure as exc:
            return dict.fromkeys(deltas, exc)
        return {}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
        state, self._process_state = self._process_state, None
        if state is not None and state[0] == os.getpid():
            state[1].close()
