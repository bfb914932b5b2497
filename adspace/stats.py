"""Delivery counts (impressions, clicks, API fetches): counted in memory, flushed as counters.

A view never writes to the docstore to count. `record` adds one to an in-process buffer (a dict
under a lock); every STATS_FLUSH_SECONDS a background thread `flush`es it: the buffer is swapped
for an empty one, and each (slot, UTC day, kind) it held becomes one counter add of its delta on
`stat::<owner>::<n>::<k>::<day>::<kind>` (adspace.gateway.stat_key), however many views it
stands for. The adds go out as `store.counter_multi` calls of FLUSH_CHUNK counters (one
transaction each on the embedded store; one counter call per key on Couchbase), several in
flight. Clean shutdown flushes too (atexit, and gunicorn's worker_exit hook in
config/gunicorn.py).

Exactness. A view is in exactly one buffer generation (the swap happens under the lock), and a
generation is written once:
- a counter add that fails with TemporaryFailure wrote nothing (docstore.base), so its delta
  goes back into the buffer for the next flush;
- one that fails with Ambiguous (or an unexpected error) may have been applied, and a re-read cannot tell our increment
  from another process's, so its delta is dropped (logged): a view may be lost, never counted
  twice;
- a forked child drops what it inherited from its parent (the parent flushes its own).
A crash (SIGKILL, power cut) loses what was counted since the last flush: at most
STATS_FLUSH_SECONDS of views. Counters are durable like every docstore write. With
STATS_FLUSH_SECONDS = 0 (the tests' setting) there is no flusher thread and no flush at exit:
counts are written only when `flush` is called.

Counts are kept per store object (tests and tools open several); a store's counts are flushed to
that store.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from django.conf import settings

from docstore import Store, TemporaryFailure

from . import gateway, serving

log = logging.getLogger(__name__)

IMPRESSIONS, CLICKS, API_FETCHES = "i", "c", "a"
KINDS = (IMPRESSIONS, CLICKS, API_FETCHES)
DAY_SECONDS = 86400
# Counters added by one counter_multi call (one transaction on the embedded store).
FLUSH_CHUNK = 1000


_last_day: tuple[int, str] = (-1, "")


def day_of(t: int) -> str:
    """The UTC day (YYYY-MM-DD) of unix time t."""
    global _last_day
    number, text = _last_day
    if t // DAY_SECONDS != number:  # formatted once a day, not once a view
        number = t // DAY_SECONDS
        text = datetime.fromtimestamp(number * DAY_SECONDS, tz=UTC).strftime("%Y-%m-%d")
        _last_day = (number, text)
    return text


class Recorder:
    """The process's buffer of counts not yet written, and its flusher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _pending and _pid
        self._flushing = threading.Lock()  # one flush at a time
        self._pending: dict[int, tuple[Store, dict[str, int]]] = {}
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None

    def add(self, store: Store, key: str, delta: int = 1) -> None:
        ident = serving.store_ident(store)
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: what it inherited is its parent's to flush.
                self._pending, self._pid = {}, os.getpid()
            entry = self._pending.get(ident)
            if entry is None:
                entry = self._pending[ident] = (store, {})
            counts = entry[1]
            counts[key] = counts.get(key, 0) + delta
        if self._thread_pid != os.getpid():
            self._start_thread()

    def pending(self) -> int:
        """How many views are counted but not yet written (all stores)."""
        with self._lock:
            if self._pid != os.getpid():
                return 0
            return sum(sum(c.values()) for _, c in self._pending.values())

    def settled(self) -> bool:
        """Nothing buffered and no flush writing: every count so far is in the store."""
        return self.pending() == 0 and not self._flushing.locked()

    def discard(self) -> None:
        """Forget every buffered count (tests start from nothing)."""
        self._take()

    def _take(self) -> list[tuple[Store, dict[str, int]]]:
        with self._lock:
            if self._pid != os.getpid():
                self._pending, self._pid = {}, os.getpid()
            taken, self._pending = list(self._pending.values()), {}
        return taken

    def _put_back(self, store: Store, counts: dict[str, int]) -> None:
        for key, delta in counts.items():
            self.add(store, key, delta)

    def flush(self) -> int:
        """Write every buffered count; returns how many counter calls succeeded."""
        with self._flushing:
            written = 0
            for store, counts in self._take():
                failed = _write(store, counts)
                written += len(counts) - len(failed)
                if failed:
                    self._put_back(store, failed)
            return written

    def _start_thread(self) -> None:
        interval = settings.STATS_FLUSH_SECONDS
        if interval <= 0:
            return  # flushed only when asked (tests) and at exit
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, args=(interval,), name="stats-flusher", daemon=True
            )
            self._thread.start()

    def _run(self, interval: float) -> None:
        stop = threading.Event()  # never set: the thread dies with its process (atexit flushes)
        while not stop.wait(interval):
            try:
                self.flush()
            except Exception:
                log.exception("flushing delivery counts failed; they are kept for the next try")


def _write(store: Store, counts: dict[str, int]) -> dict[str, int]:
    """Add every count to its counter; returns the counts to try again (none of them written)."""
    items = list(counts.items())
    chunks = [dict(items[i : i + FLUSH_CHUNK]) for i in range(0, len(items), FLUSH_CHUNK)]

    def one(chunk: dict[str, int]) -> dict[str, int]:
        try:
            failed = store.counter_multi(chunk)
        except Exception:
            # Unknown how much of the chunk applied: dropped rather than risk counting twice.
            log.exception("%d delivery counts dropped", len(chunk))
            return {}
        retry = {}
        for key, exc in failed.items():
            if isinstance(exc, TemporaryFailure):
                retry[key] = chunk[key]  # not applied: safe to add again
            else:
                log.warning("count of %s (+%d) may not be written; not retried", key, chunk[key])
        return retry

    if len(chunks) <= 1:
        results = [one(chunk) for chunk in chunks]
    else:
        # A chunk is one transaction on the embedded store and a run of round trips on
        # Couchbase: several in flight keep a flush of 10 000 slots well under a second.
        with ThreadPoolExecutor(max_workers=settings.STATS_FLUSH_THREADS) as pool:
            results = list(pool.map(one, chunks))
    return {key: delta for retry in results for key, delta in retry.items()}


recorder = Recorder()


def record(store: Store, owner: str, n: int, k: int, now: int, kind: str) -> None:
    """Count one delivery of slot k of campaign owner/n at time `now` (written at the next flush)."""
    recorder.add(store, gateway.stat_key(owner, n, k, day_of(now), kind))


def flush() -> int:
    return recorder.flush()


def flush_at_exit() -> None:
    # STATS_FLUSH_SECONDS = 0 is the tests' setting: their stores are closed by then, and each
    # test that reads counts flushes them itself.
    try:
        if settings.STATS_FLUSH_SECONDS > 0:
            recorder.flush()
    except Exception:
        log.exception("flushing delivery counts at exit failed")


atexit.register(flush_at_exit)
