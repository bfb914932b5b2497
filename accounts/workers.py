"""The worker process (`manage.py run_workers`) and the docstore's root documents (`init_docstore`).

Apps extend both through registries, from their `AppConfig.ready`, so `accounts` never imports
them: `register_task(name, fn)` adds a task every worker pass runs (`fn(store, clock)` returns a
dict of counters for the heartbeat), and `register_init(fn)` adds root documents that must exist
(`fn(store, clock)` creates what is missing and returns the keys it created). The foundation's own
entries (recovery, the schema doc) are registered in `AccountsConfig.ready`.

A pass runs every task in turn; a task that raises is logged with its traceback and the next task
still runs, so one broken walker cannot starve the others (recovery above all). Every pass ends in
a heartbeat, even a failed one, and `/healthz` goes red when the heartbeats stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from docstore import AlreadyExists, Clock, NotFound, Store, get_clock, get_store

from . import heartbeat

log = logging.getLogger(__name__)

Task = Callable[[Store, Clock], dict[str, int]]
InitFn = Callable[[Store, Clock], list[str]]

_tasks: dict[str, Task] = {}
_inits: list[InitFn] = []

SCHEMA_KEY = "meta::schema"
SCHEMA_VERSION = 1
# Seconds between checks of the stop flag while a worker sleeps between passes.
STOP_POLL_SECONDS = 0.2


class InitError(Exception):
    pass


def register_task(name: str, fn: Task) -> None:
    """Run `fn` on every worker pass. Registering a name again replaces it (ready() may rerun)."""
    if not name or "." in name:
        raise ValueError(f"task names are non-empty and without dots, not {name!r}")
    _tasks[name] = fn


def registered_tasks() -> dict[str, Task]:
    return dict(_tasks)


def register_init(fn: InitFn) -> None:
    if fn not in _inits:
        _inits.append(fn)


def init_schema(store: Store, clock: Clock) -> list[str]:
    try:
        store.insert(SCHEMA_KEY, {"version": SCHEMA_VERSION})
        return [SCHEMA_KEY]
    except AlreadyExists:
        pass
    version = store.get(SCHEMA_KEY).value.get("version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        # Newer documents than this code understands: writing to them could corrupt money.
        raise InitError(f"{SCHEMA_KEY} is at version {version!r}; this code knows {SCHEMA_VERSION}")
    return []


def init_documents(store: Store, clock: Clock) -> list[str]:
    """Create every registered root document that is missing; returns the keys created.

    Each init function inserts (never overwrites), so running this again, or from two processes
    at once, is safe: the loser of an insert takes the "already there" path.
    """
    created: list[str] = []
    for fn in _inits:
        created.extend(fn(store, clock))
    return created


def check_reachable(store: Store) -> None:
    """Raise if the store cannot answer a read (an absent key is an answer)."""
    try:
        store.get(SCHEMA_KEY)
    except NotFound:
        pass


def run_pass(store: Store, clock: Clock) -> dict[str, int]:
    """Run every registered task once. Counters come back as `<task>.<name>`, plus `failed`."""
    counters: dict[str, int] = {"failed": 0}
    for name, fn in list(_tasks.items()):
        try:
            result = fn(store, clock) or {}
        except Exception:
            log.exception("worker task %s failed; the next pass tries again", name)
            counters["failed"] += 1
            counters[f"{name}.failed"] = 1
            continue
        for key, value in result.items():
            counters[f"{name}.{key}"] = int(value)
    return counters


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its pass and exits. A second signal exits at once.

    The handler only flips a boolean: taking a lock inside a signal handler (threading.Event.set)
    can deadlock against the same lock held by the interrupted main thread.
    """

    def __init__(self) -> None:
        self.requested = False

    def request(self, signum: int = 0, frame: Any = None) -> None:
        if self.requested and signum:
            raise SystemExit(128 + signum)
        self.requested = True
        if signum:
            log.info("signal %s: stopping after the current pass", signum)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, STOP_POLL_SECONDS))

    @contextmanager
    def handling_signals(self) -> Iterator[StopFlag]:
        # signal.signal only works in the main thread; elsewhere (a test calling the command from
        # a thread) the loop still stops through `request()`.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        sigs = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self.request) for sig in sigs}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


Work = Callable[[Store, Clock], dict[str, int]]
Report = Callable[[int, dict[str, int]], None]


def serve(
    name: str,
    work: Work,
    *,
    interval: float,
    once: bool = False,
    stop: StopFlag | None = None,
    report: Report | None = None,
) -> int:
    """Run `work` in passes, a heartbeat `name` after each, until `stop` (or once); returns passes.

    The store and clock are fetched each pass: `get_store()` reopens after a fork and is cached
    otherwise. An exception from `work` as a whole (not one task) is logged and counted, and the
    heartbeat still goes out, so a failing worker is visible rather than silently dead.
    """
    stop = stop or StopFlag()
    passes = 0
    while True:
        store, clock = get_store(), get_clock()
        try:
            counters = dict(work(store, clock))
        except Exception:
            log.exception("worker %s: pass failed; the next pass tries again", name)
            counters = {"failed": 1}
        passes += 1
        try:
            heartbeat.beat(store, name, clock.now(), **{**counters, "passes": passes})
        except Exception:
            # No heartbeat means /healthz turns red, which is the alarm we want; keep working.
            log.exception("worker %s: heartbeat failed", name)
        if report is not None:
            report(passes, counters)
        if once or stop.requested:
            return passes
        stop.sleep(interval)
        if stop.requested:
            return passes
