"""Recovery: every pass that rolls forward work a crash left behind. Apps register their passes.

`recover_locks` walks every account and finishes each lock older than the lease; the adspace app
adds the walk over campaigns (a sale whose slot exists while the campaign lags), and so on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from docstore import Clock, Store

from . import locks
from .gateway import iter_accounts

log = logging.getLogger(__name__)

RecoveryPass = Callable[[Store, Clock], int]
_passes: dict[str, RecoveryPass] = {}


def register_pass(name: str, fn: RecoveryPass) -> None:
    _passes[name] = fn


def recover_locks(store: Store, clock: Clock) -> int:
    finished = 0
    now = clock.now()
    for username, doc in iter_accounts(store):
        lock = doc.value.get("lock")
        if lock and locks.lease_expired(lock, now):
            try:
                if locks.resolve(store, clock, username):
                    finished += 1
            except locks.AccountBusy:
                log.warning("account %s stayed busy during recovery; next pass", username)
    return finished


def run_recovery(store: Store, clock: Clock) -> dict[str, int]:
    """One pass of every registered recovery; returns how much each one finished."""
    return {name: fn(store, clock) for name, fn in _passes.items()}
