"""Recovery: every pass that rolls forward work a crash left behind. Apps register what it checks.

A recovery pass (`run_recovery`) walks the accounts once and runs every registered per-account
check on each account it reads, then runs the registered whole passes (the adspace app's walk over
campaigns, the withdrawals' refunds, ...) in registration order. The accounts app registers the
first check: finish each lock older than the lease (`ExpiredLocks`), so the checks registered
after it (a deposit address stuck `getting`, ...) and every whole pass see the locks finished.

A check is made afresh for each pass by its factory, `start(store, clock)`, which may do that
app's own work first (the key pool finishes its stuck set fills, which are not accounts); the walk
then calls `check(username, doc)` for every account, in registration order, with the account as
the walk read it (a check that acts re-reads it: an earlier check may have changed it), and reads
`check.finished` at the end. Each account is read once per pass, whatever the number of checks.

Sharded (`run_workers --shard i/n`, accounts/shards.py): the walk acts only on the accounts whose
key the shard owns, a pass registered `sharded=True` gets the shard and splits its own walk the
same way, and a pass that cannot be split (or a check's start that does whole-store work and is
not registered `sharded_start=True`) runs on the lead shard only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from docstore import Clock, Doc, Store

from . import locks
from .gateway import account_key, iter_accounts
from .shards import ALL, Shard

log = logging.getLogger(__name__)

RecoveryPass = Callable[[Store, Clock], int]
_passes: dict[str, RecoveryPass] = {}
_sharded_passes: set[str] = set()


class AccountCheck(Protocol):
    """One pass's check of each account; `finished` counts what it finished in that pass."""

    finished: int

    def __call__(self, username: str, doc: Doc) -> None: ...


StartCheck = Callable[[Store, Clock], AccountCheck]
_account_checks: dict[str, StartCheck] = {}
_sharded_starts: set[str] = set()


def register_pass(name: str, fn: RecoveryPass, *, sharded: bool = False) -> None:
    """A whole pass (`fn(store, clock)` returns how much it finished), run after the account walk.

    `sharded`: it is called `fn(store, clock, shard=...)` on every shard and splits its walk;
    otherwise it runs on the lead shard only."""
    _passes[name] = fn
    _sharded_passes.discard(name)
    if sharded:
        _sharded_passes.add(name)


def register_account_check(name: str, start: StartCheck, *, sharded_start: bool = False) -> None:
    """A check the account walk runs on every account (see the module docstring).

    `sharded_start`: its start is called `start(store, clock, shard=...)` (it keeps any
    whole-store work of its own to the lead shard); otherwise `start(store, clock)`."""
    _account_checks[name] = start
    _sharded_starts.discard(name)
    if sharded_start:
        _sharded_starts.add(name)


class ExpiredLocks:
    """Finish each account's lock once it is older than the lease (DESIGN.md 6.1 rule 3)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.now = clock.now()
        self.finished = 0

    def __call__(self, username: str, doc: Doc) -> None:
        lock = doc.value.get("lock")
        if not lock or not locks.lease_expired(lock, self.now):
            return
        try:
            if locks.resolve(self.store, self.clock, username):
                self.finished += 1
        except locks.AccountBusy:
            log.warning("account %s stayed busy during recovery; next pass", username)


def walk_accounts(
    store: Store,
    clock: Clock,
    starts: Mapping[str, StartCheck] | None = None,
    shard: Shard = ALL,
) -> dict[str, int]:
    """One walk over every account of `shard` running each check (all registered by default)."""
    checks = {
        name: start(store, clock, shard=shard) if name in _sharded_starts else start(store, clock)
        for name, start in (starts or _account_checks).items()
    }
    if checks:
        for username, doc in iter_accounts(store):
            if not shard.owns(account_key(username)):
                continue
            for check in checks.values():
                check(username, doc)
    return {name: check.finished for name, check in checks.items()}


def recover_locks(store: Store, clock: Clock) -> int:
    """The lock check alone, in a walk of its own (for callers that want only that)."""
    return walk_accounts(store, clock, {"locks": ExpiredLocks})["locks"]


def run_recovery(store: Store, clock: Clock, shard: Shard = ALL) -> dict[str, int]:
    """One pass of every registered recovery over `shard`; returns how much each one finished
    (a pass this shard does not run is left out)."""
    finished = walk_accounts(store, clock, shard=shard)
    for name, fn in _passes.items():
        if name in _sharded_passes:
            finished[name] = fn(store, clock, shard=shard)
        elif shard.lead:
            finished[name] = fn(store, clock)
    return finished
