"""Staff balance adjustments: the `adjust` lock kind, with a written reason and a request id.

Every adjustment carries a request id (from the confirmation page, `--request-id`, or generated),
and the id itself is the commit point, so a replay is refused forever, however many ledger
entries came since:

1. `adjust::<request id>` already exists: applied (or in flight) already; do nothing.
2. Lock the account (`adjust`, ref `adjust:<id>`, with the delta, reason and staff user; a debit
   needs the balance to cover it).
3. Insert `adjust::<request id>` carrying the lock's token: **the commit point**. Exists with our
   token: continue. Exists with another token: that request won; release the lock, no effect.
4. `settle`: change the balance, append the ledger entry, clear the lock (only while it holds our
   token; if it is gone, someone already finished this step).

Whoever reads an expired `adjust` lock finishes it through `finish_adjust`, rolling forward: it
inserts the request document if it is missing (so the request takes effect), then settles; if the
document holds another token, it releases the lock with no effect.
"""

from __future__ import annotations

import re
import secrets

from docstore import AlreadyExists, Ambiguous, Clock, NotFound, Store

from . import locks
from .gateway import adjust_key

MAX_REASON = 500
MAX_ADJUST_SATS = 21_000_000 * 100_000_000
REQUEST_ID_RE = r"\A[A-Za-z0-9_-]{1,64}\Z"


class AdjustError(locks.AccountError):
    pass


def new_request_id() -> str:
    return secrets.token_hex(12)


def _check(delta: int, reason: str, request_id: str) -> None:
    if not reason:
        raise AdjustError("A reason is required.")
    if len(reason) > MAX_REASON:
        raise AdjustError(f"The reason may be at most {MAX_REASON} characters.")
    if not isinstance(delta, int) or isinstance(delta, bool) or delta == 0:
        raise AdjustError("The amount must be a whole, non-zero number of satoshis.")
    if abs(delta) > MAX_ADJUST_SATS:
        raise AdjustError("The amount is larger than all bitcoin there will ever be.")
    if not re.match(REQUEST_ID_RE, request_id):
        raise AdjustError("A request id is 1 to 64 letters, digits, '-' or '_'.")


def adjust_balance(
    store: Store,
    clock: Clock,
    username: str,
    delta: int,
    reason: str,
    request_id: str | None = None,
    staff: str = "",
) -> bool:
    """Credit (delta > 0) or debit (delta < 0) a balance.

    Returns True when this request took effect (whoever finished its last step), False when the
    request id was already used (by this request earlier, or by any other).
    """
    reason = (reason or "").strip()
    request_id = request_id or new_request_id()
    _check(delta, reason, request_id)
    try:
        store.get(adjust_key(request_id))
        return False
    except NotFound:
        pass
    try:
        lock = locks.take_lock(
            store, clock, username, "adjust", f"adjust:{request_id}", spend=max(0, -delta),
            unique_ref=True, delta=delta, reason=reason, staff=staff,
        )  # fmt: skip
    except locks.AlreadyApplied:
        return False  # in flight under this id (its owner or recovery finishes it)
    except locks.InsufficientFunds as exc:
        raise AdjustError(
            f"A debit of {-delta} sats would take the balance ({exc.balance} sats) below zero."
        ) from None
    if not _commit(store, clock, username, lock):
        locks.release(store, username, lock["token"])
        return False
    _settle(store, clock, username, lock)
    return True


def _request_id(lock: dict) -> str:
    return lock["ref"].removeprefix("adjust:")


def _commit(store: Store, clock: Clock, username: str, lock: dict) -> bool:
    """Insert the request document under our token (the commit point); True if it is ours."""
    key = adjust_key(_request_id(lock))
    record = {
        "username": username,
        "delta": lock["delta"],
        "reason": lock["reason"],
        "staff": lock.get("staff", ""),
        "token": lock["token"],
        "at": clock.now(),
    }
    try:
        store.insert(key, record)
        return True
    except AlreadyExists:
        pass
    except Ambiguous as exc:
        # Landed or not: only the document can tell. Absent is an unknown outcome for the
        # caller; the lock stays, and whoever finishes it rolls forward.
        try:
            return store.get(key).value["token"] == lock["token"]
        except NotFound:
            raise exc from None
    return store.get(key).value["token"] == lock["token"]


def _settle(store: Store, clock: Clock, username: str, lock: dict) -> None:
    locks.settle(
        store, clock, username, lock["token"], lock["delta"],
        reason=lock["reason"], staff=lock.get("staff", ""), request=_request_id(lock),
    )  # fmt: skip


def finish_adjust(store: Store, clock: Clock, username: str, lock: dict) -> None:
    """Roll an `adjust` lock forward (recovery, the next request, or staff's "Finish now")."""
    if _commit(store, clock, username, lock):
        _settle(store, clock, username, lock)
    else:
        locks.release(store, username, lock["token"])
