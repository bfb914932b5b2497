"""Staff balance adjustments: the `adjust` lock kind, with a written reason.

Each request carries an id (from the confirmation page, or generated) so that submitting the same
confirmation twice applies it once: its ref is `adjust:<id>`, and a ref already in the ledger or in
the current lock is not applied again. The commit point is the balance CAS itself (`settle`).
"""

from __future__ import annotations

import secrets

from docstore import Clock, Store

from . import locks

MAX_REASON = 500
MAX_ADJUST_SATS = 21_000_000 * 100_000_000


class AdjustError(locks.AccountError):
    pass


def new_request_id() -> str:
    return secrets.token_hex(12)


def adjust_balance(
    store: Store,
    clock: Clock,
    username: str,
    delta: int,
    reason: str,
    request_id: str | None = None,
    staff: str = "",
) -> bool:
    """Credit (delta > 0) or debit (delta < 0) a balance. Returns False if already applied."""
    reason = (reason or "").strip()
    if not reason:
        raise AdjustError("A reason is required.")
    if len(reason) > MAX_REASON:
        raise AdjustError(f"The reason may be at most {MAX_REASON} characters.")
    if not isinstance(delta, int) or isinstance(delta, bool) or delta == 0:
        raise AdjustError("The amount must be a whole, non-zero number of satoshis.")
    if abs(delta) > MAX_ADJUST_SATS:
        raise AdjustError("The amount is larger than all bitcoin there will ever be.")
    ref = f"adjust:{request_id or new_request_id()}"
    try:
        lock = locks.take_lock(
            store, clock, username, "adjust", ref, spend=max(0, -delta), unique_ref=True,
            delta=delta, reason=reason, staff=staff,
        )  # fmt: skip
    except locks.AlreadyApplied:
        return False  # applied already, or in flight (its owner or recovery finishes it)
    except locks.InsufficientFunds as exc:
        raise AdjustError(
            f"A debit of {-delta} sats would take the balance ({exc.balance} sats) below zero."
        ) from None
    return locks.settle(store, clock, username, lock["token"], delta, reason=reason)


def finish_adjust(store: Store, clock: Clock, username: str, lock: dict) -> None:
    locks.settle(store, clock, username, lock["token"], lock["delta"], reason=lock["reason"])
