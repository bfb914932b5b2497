"""Embedded backend: one SQLite file standing in for Couchbase on a single machine.

Each call is a single SQL statement in autocommit mode, which SQLite applies atomically, so the
conditional writes need no explicit transaction: `UPDATE ... WHERE cas = ?` is the CAS, `INSERT ...
ON CONFLICT DO NOTHING` is the add. WAL lets readers run beside the one writer; `busy_timeout`
queues writers from other processes (gunicorn workers, the worker process) instead of failing.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..base import AlreadyExists, CasMismatch, Doc, NotFound, Store, retry_transient

_SCHEMA = "CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, value TEXT NOT NULL, cas INTEGER NOT NULL) WITHOUT ROWID"
_MULTI_CHUNK = 500


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _new_cas() -> int:
    # Random, not sequential: a removed and re-inserted key must never match a stale CAS.
    return secrets.randbits(62) + 1


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


class EmbeddedStore(Store):
    def __init__(self, path: str | os.PathLike, prefix: str = "", durable: bool = True):
        self.path = str(path)
        self.prefix = prefix
        self.durable = durable
        self._local = threading.local()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
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

    def _exists(self, key: str) -> bool:
        return self._run("SELECT 1 FROM docs WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> Doc:
        row = self._run(
            "SELECT value, cas FROM docs WHERE key = ?", (self.prefix + key,)
        ).fetchone()
        if row is None:
            raise NotFound(key)
        return Doc(json.loads(row[0]), row[1])

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
        cur = self._run(
            "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (self.prefix + key, _dumps(value), cas),
        )
        if cur.rowcount != 1:
            raise AlreadyExists(key)
        return cas

    def replace(self, key: str, value: Any, cas: int) -> int:
        new = _new_cas()
        cur = self._run(
            "UPDATE docs SET value = ?, cas = ? WHERE key = ? AND cas = ?",
            (_dumps(value), new, self.prefix + key, cas),
        )
        if cur.rowcount != 1:
            if self._exists(self.prefix + key):
                raise CasMismatch(key)
            raise NotFound(key)
        return new

    def upsert(self, key: str, value: Any) -> int:
        cas = _new_cas()
        self._run(
            "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, cas = excluded.cas",
            (self.prefix + key, _dumps(value), cas),
        )
        return cas

    def remove(self, key: str, cas: int | None = None) -> None:
        if cas is None:
            cur = self._run("DELETE FROM docs WHERE key = ?", (self.prefix + key,))
        else:
            cur = self._run("DELETE FROM docs WHERE key = ? AND cas = ?", (self.prefix + key, cas))
        if cur.rowcount != 1:
            if cas is not None and self._exists(self.prefix + key):
                raise CasMismatch(key)
            raise NotFound(key)

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        if delta <= 0:
            raise ValueError("counter delta must be positive")
        row = self._run(
            "INSERT INTO docs (key, value, cas) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET value = CAST(value AS INTEGER) + ?, cas = excluded.cas RETURNING value",
            (self.prefix + key, str(int(initial)), _new_cas(), delta),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    # Not part of the API: lets tests compare a whole store before and after hostile input.
    def dump(self) -> dict[str, Any]:
        plen = len(self.prefix)
        rows = self._run(
            "SELECT key, value FROM docs WHERE key >= ? AND key < ?",
            (self.prefix, self.prefix + "\U0010ffff"),
        ).fetchall()
        return {k[plen:]: json.loads(v) for k, v in rows}
