"""The worker process (`manage.py run_workers`) and the docstore's root documents (`init_docstore`).

Apps extend both through registries, from their `AppConfig.ready`, so `accounts` never imports
them: `register_task(name, fn)` adds a task every worker pass runs (`fn(store, clock)` returns a
dict of counters for the heartbeat), and `register_init(fn)` adds root documents that must exist
(`fn(store, clock)` creates what is missing and returns the keys it created). The foundation's own
entries (recovery, the schema doc) are registered in `AccountsConfig.ready`.

A task registered with `every=` has its own cadence: the worker's `Schedule` runs it on the
worker's first pass and then on the first pass at least `every` seconds (monotonic) after it
last started; the other tasks run on every pass (each WORKER_INTERVAL_SECONDS). Recovery is such
a task (RECOVERY_INTERVAL_SECONDS): walking every account and campaign each second is waste when
it only has work after a crash, and a restarted worker still recovers at once.

Several worker nodes (`run_workers --shard i/n`, README Operations) split the tasks three ways,
chosen at registration: a task registered `sharded=True` runs on every node and is called
`fn(store, clock, shard=...)` to act only on the directory entries its shard owns (recovery, the
creditor); a task registered with a `role` runs on the one node holding the lease `lease::<role>`
(accounts/leases.py) and is called `fn(store, clock, lease=...)` so it can check the lease before
each external call (the deposit watcher); any other task runs on the lead shard's node (0/n).
`run_pass` without a node (one process, tests) runs everything as a lone worker without leases.

A pass runs every task that is due in turn; a task that raises is logged with its traceback and
the next task still runs, so one broken walker cannot starve the others (recovery above all).
Every pass ends in a heartbeat, even a failed one, and `/healthz` goes red when the heartbeats
stop. A task that did not run in a pass has no counters in that pass's heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from docstore import AlreadyExists, Clock, NotFound, Store, TemporaryFailure, get_clock, get_store

from . import heartbeat, leases, nodes
from .shards import ALL, Shard

log = logging.getLogger(__name__)

Task = Callable[[Store, Clock], dict[str, int]]
InitFn = Callable[[Store, Clock], list[str]]
# A task's cadence in seconds, or a function that returns it (read at each pass, so it follows
# the settings); None runs the task on every pass.
Every = float | Callable[[], float] | None

_tasks: dict[str, Task] = {}
_every: dict[str, Every] = {}
_sharded: set[str] = set()
_roles: dict[str, str] = {}
_inits: list[InitFn] = []

SCHEMA_KEY = "meta::schema"
SCHEMA_VERSION = 1
# Seconds between checks of the stop flag while a worker sleeps between passes.
STOP_POLL_SECONDS = 0.2


class InitError(Exception):
    pass


def register_task(
    name: str, fn: Task, every: Every = None, *, sharded: bool = False, role: str | None = None
) -> None:
    """Run `fn` on every worker pass, or with `every` on its own cadence; `sharded` or under a
    `role` lease on several nodes (see the module docstring). Registering a name again replaces
    it, cadence and kind included (ready() may rerun)."""
    if not name or "." in name:
        raise ValueError(f"task names are non-empty and without dots, not {name!r}")
    if sharded and role:
        raise ValueError("a task is either split by shard or held by one node, not both")
    _tasks[name] = fn
    if every is None:
        _every.pop(name, None)
    else:
        _every[name] = every
    _sharded.discard(name)
    _roles.pop(name, None)
    if sharded:
        _sharded.add(name)
    if role:
        _roles[name] = role


def task_kind(name: str) -> str:
    """How several nodes share the task: `sharded`, `role <role>` or `lead`."""
    if name in _sharded:
        return "sharded"
    return f"role {_roles[name]}" if name in _roles else "lead"


def roles() -> list[str]:
    return sorted(set(_roles.values()))


def registered_tasks() -> dict[str, Task]:
    return dict(_tasks)


def task_every(name: str) -> float | None:
    """The task's cadence in seconds now, or None if it runs on every pass."""
    every = _every.get(name)
    return every() if callable(every) else every


class Schedule:
    """When each task with a cadence last started, in one worker process.

    A new schedule (a new or restarted worker) has run nothing, so its first pass runs every
    task. `monotonic` is injectable for tests; wall-clock jumps must not stall or rush a task.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.started: dict[str, float] = {}

    def take(self, name: str, every: float | None) -> bool:
        """True if the task runs in this pass (it is then counted as started now)."""
        now = self.monotonic()
        if every is not None and name in self.started and now - self.started[name] < every:
            return False
        self.started[name] = now
        return True


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


class Node:
    """One worker node: its name, its shard, and the role leases it holds (or tries to)."""

    def __init__(self, name: str, shard: Shard = ALL, lease_seconds: int = 60) -> None:
        self.name, self.shard, self.lease_seconds = name, shard, lease_seconds
        self.leases: dict[str, leases.Lease] = {}

    def lease(self, store: Store, clock: Clock, role: str) -> leases.Lease:
        lease = self.leases.get(role)
        if lease is None:
            lease = leases.Lease(
                store, clock, role, self.name, self.lease_seconds,
                may_take_over=lambda held: nodes.known_dead(held.get("node") or {}),
                extra={"node": {"machine": nodes.machine_id(), "pid": os.getpid()}},
            )  # fmt: skip
            self.leases[role] = lease
        lease.store, lease.clock = store, clock  # the worker fetches both afresh each pass
        return lease

    def held_roles(self) -> list[str]:
        return sorted(role for role, lease in self.leases.items() if lease.held)

    def release_leases(self) -> None:
        for lease in self.leases.values():
            try:
                lease.release()
            except Exception:
                log.warning("could not release lease %s; it expires by itself", lease.key,
                            exc_info=True)  # fmt: skip


def _call(name: str, fn: Task, store: Store, clock: Clock, node: Node | None, counters: dict):
    """Run one task as its kind and the node say; None when this node does not run it now."""
    if name in _sharded:
        return fn(store, clock, shard=node.shard if node else ALL)
    if name in _roles:
        if node is None:
            return fn(store, clock, lease=None)
        lease = node.lease(store, clock, _roles[name])
        if not lease.hold():
            counters[f"{name}.standby"] = 1  # another node holds the role
            return None
        return fn(store, clock, lease=lease)
    if node is not None and not node.shard.lead:
        return None
    return fn(store, clock)


def run_pass(
    store: Store, clock: Clock, schedule: Schedule | None = None, node: Node | None = None
) -> dict[str, int]:
    """Run every registered task once, or with `schedule` every task that is due; with a `node`,
    only its shard's part and its roles. Counters come back as `<task>.<name>`, plus `failed`.

    A task that raises counts as run: one with a cadence tries again on its next turn, not at
    once (a failing walk of the whole store must not run every second either). A task that
    finds its lease taken over mid-pass (LeaseLost) has stopped before its next external call.
    """
    counters: dict[str, int] = {"failed": 0}
    for name, fn in list(_tasks.items()):
        if schedule is not None and not schedule.take(name, task_every(name)):
            continue
        try:
            result = _call(name, fn, store, clock, node, counters) or {}
        except leases.LeaseLost as exc:
            log.warning("worker task %s stopped: %s", name, exc)
            counters[f"{name}.leaselost"] = 1
            continue
        except Exception:
            log.exception("worker task %s failed; it runs again on its next turn", name)
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
    node: Node | None = None,
) -> int:
    """Run `work` in passes, a heartbeat `name` after each, until `stop` (or once); returns passes.
    With a `node`, its own heartbeat too (shard, leases held) for /healthz.

    The store and clock are fetched each pass: `get_store()` reopens after a fork and is cached
    otherwise. An exception from `work` as a whole (not one task) is logged and counted, and the
    heartbeat still goes out, so a failing worker is visible rather than silently dead.
    """
    stop = stop or StopFlag()
    passes = 0
    while True:
        store, clock = get_store(), get_clock()
        unreachable = None
        try:
            counters = dict(work(store, clock))
        except TemporaryFailure as exc:
            # One line a pass, not a traceback a second, while the store is down.
            log.warning("worker %s: pass failed, store unreachable: %s", name, exc)
            counters, unreachable = {"failed": 1}, exc
        except Exception:
            log.exception("worker %s: pass failed; the next pass tries again", name)
            counters = {"failed": 1}
        passes += 1
        try:
            heartbeat.beat(store, name, clock.now(), **{**counters, "passes": passes})
            if node is not None:
                nodes.beat(store, node.name, clock.now(), node.shard, node.held_roles(),
                           **{**counters, "passes": passes})  # fmt: skip
        except TemporaryFailure as exc:
            log.warning("worker %s: heartbeat failed, store unreachable: %s", name, exc)
        except Exception:
            # No heartbeat means /healthz turns red, which is the alarm we want; keep working.
            log.exception("worker %s: heartbeat failed", name)
        if once and unreachable is not None:
            raise unreachable  # a one-off run must not look like it did its work
        if report is not None:
            report(passes, counters)
        if once or stop.requested:
            return passes
        stop.sleep(interval)
        if stop.requested:
            return passes
