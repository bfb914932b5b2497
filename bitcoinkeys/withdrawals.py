"""Withdrawal requests (DESIGN.md 6.5): the hold, the cancel and the refund of a refused payout.

The processor that pays requests is bitcoinkeys.payouts; the directory walk both use is
withdraw_queue; recovery and the audit are withdraw_audit.

The hold. A request holds `amount + fee` at once through a `withdraw-hold` lock, so a user can
never overspend:

  1. number the request: `withdrawcount::<u>` counter -> i, then the `withdrawdir::<g>` entry
     ({username, i, at}) BEFORE anything it points to (a walker skips a dangling entry)
  2. take the `withdraw-hold` lock (spend = amount + fee), carrying everything to finish
  3. insert `withdraw::<u>::<i>` state `queued` with the lock's token: THE HOLD'S COMMIT POINT
  4. settle: balance -= amount + fee, unlock, ledger entry (kind withdraw-hold, ref the key)

The refund (the user cancelling a queued request, or a payout the wallet refused) goes through a
`withdraw-refund` lock: lock -> CAS the request to its refunded state with `refundToken`: THE
REFUND'S COMMIT POINT (`queued -> refunded` for a cancel, `failed -> failed-refunded` for a
refused payout; a distinct state rather than a flag, so "still holds money" is readable from the
state alone) -> settle +(amount + fee). The refund's ledger ref is `refund:<key>`, not the key
itself: the audit refuses a ledger that applies one ref twice, and the hold already used the key.

States: queued -> sending -> sent | failed -> failed-refunded; queued -> refunded (cancelled);
sending -> queued when the payout wallet was short (payouts.py: never failed for want of funds).
Every state change is appended to the request's `history`, which the user sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings

from accounts import locks
from accounts.gateway import get_account
from accounts.money import MAX_SATS, fee_up, format_btc
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

from .addresses import AddressError, validate_address
from .gateway import (
    WITHDRAWDIR,
    withdraw_key,
    withdrawcount_key,
    withdrawdir_key,
    withdrawsubmit_key,
)

log = logging.getLogger("bitcoinkeys.withdrawals")

QUEUED, SENDING, SENT = "queued", "sending", "sent"
REFUNDED, FAILED, FAILED_REFUNDED = "refunded", "failed", "failed-refunded"
STATES = (QUEUED, SENDING, SENT, REFUNDED, FAILED, FAILED_REFUNDED)
# States whose amount + fee has left the balance and not come back (the audit's "held").
HOLDING = frozenset({QUEUED, SENDING, FAILED})
# States nothing will ever change again: the processor's cursor may pass them for good.
TERMINAL = frozenset({SENT, REFUNDED, FAILED_REFUNDED})
REFUNDED_STATES = frozenset({REFUNDED, FAILED_REFUNDED})

CHUNK = 500
MAX_ATTEMPTS = 50
STATE_LABELS = {
    QUEUED: "Queued",
    SENDING: "Sending",
    SENT: "Sent",
    REFUNDED: "Cancelled and refunded",
    FAILED: "Failed; refund pending",
    FAILED_REFUNDED: "Failed and refunded",
}


class WithdrawError(locks.AccountError):
    message = "This withdrawal could not be made."


class BelowMinimum(WithdrawError):
    pass


class BadAddress(WithdrawError):
    pass


class WithdrawalNotFound(WithdrawError):
    message = "There is no such withdrawal."


class NotCancellable(WithdrawError):
    pass


def sentence(text: str) -> str:
    """addresses.py words its errors to follow "Invalid address: "; we show them on their own."""
    return text[:1].upper() + text[1:] if text else text


def refund_ref(key: str) -> str:
    return f"refund:{key}"


def withdrawal_fee(amount_sats: int) -> int:
    return fee_up(amount_sats, settings.WITHDRAW_FEE_PERMILLE)


def max_withdrawal(balance: int, permille: int | None = None) -> int:
    """The largest amount `a` with `a + fee_up(a) <= balance` (0 if none).

    Closed form: for whole `a`, a + ceil(a*p/1000) == ceil(a*(1000+p)/1000), and ceil(x) <= B
    exactly when x <= B for whole B, so the bound is a <= 1000*B/(1000+p), floored.
    """
    p = settings.WITHDRAW_FEE_PERMILLE if permille is None else permille
    if balance <= 0:
        return 0
    return balance * 1000 // (1000 + p)


def _cannot_cancel(req: dict) -> str:
    state = req["state"]
    if state == REFUNDED:
        return (
            f"This withdrawal was already cancelled; its "
            f"{format_btc(req['amount'] + req['fee'])} BTC went back to your balance."
        )
    if state in (SENDING, SENT):
        return "This withdrawal is already being sent and can no longer be cancelled."
    return "This withdrawal failed; its amount and fee are returned to your balance automatically."


# --- the hold ----------------------------------------------------------------------------------


class AlreadySubmitted(WithdrawError):
    message = "This withdrawal form was already submitted; your request is listed below."


def request_withdrawal(
    store: Store,
    clock: Clock,
    username: str,
    amount_sats: int,
    address: str,
    submission: str | None = None,
) -> int:
    """Queue a payout of `amount_sats` to `address`, holding amount + fee at once. Returns i.

    Raises BelowMinimum, BadAddress, locks.InsufficientFunds, locks.AccountBusy. A docstore
    failure after the lock leaves a lock that recovery rolls forward (the request then exists).
    """
    if isinstance(amount_sats, bool) or not isinstance(amount_sats, int):
        raise TypeError("amounts are whole satoshis")
    minimum = settings.MIN_WITHDRAWAL_SATS
    if amount_sats < minimum:
        raise BelowMinimum(f"The minimum withdrawal is {format_btc(minimum)} BTC.")
    if amount_sats > MAX_SATS:
        raise WithdrawError("That is more than all the bitcoin there will ever be.")
    try:
        address = validate_address(address, settings.BITCOIN_NETWORK)
    except AddressError as exc:
        raise BadAddress(sentence(str(exc))) from None
    fee = withdrawal_fee(amount_sats)
    _precheck(store, clock, username, amount_sats + fee)
    if submission:
        # The form's one-time token, claimed before anything else: a replayed or double-clicked
        # form finds it taken and queues nothing. A claim left by a crash costs nothing.
        try:
            store.insert(withdrawsubmit_key(username, submission), {"at": clock.now()})
        except AlreadyExists:
            raise AlreadySubmitted(AlreadySubmitted.message) from None
    i = store.counter(withdrawcount_key(username), 1, initial=0)
    g = store.counter(WITHDRAWDIR, 1, initial=0)
    store.insert(withdrawdir_key(g), {"username": username, "i": i, "at": clock.now()})
    key = withdraw_key(username, i)
    lock = locks.take_lock(
        store, clock, username, "withdraw-hold", key, spend=amount_sats + fee,
        i=i, amount=amount_sats, fee=fee, address=address, createdAt=clock.now(),
    )  # fmt: skip
    if not _insert_request(store, username, lock):
        # Unreachable while i comes from the counter; kept so a foreign request is never debited.
        locks.release(store, username, lock["token"])
        raise WithdrawError("That withdrawal number is taken; please try again.")
    _settle_hold(store, clock, username, lock)
    return i


def _precheck(store: Store, clock: Clock, username: str, total: int) -> None:
    """Refuse the obvious cases before a request number or a directory entry is used up.

    take_lock checks again on the read its CAS depends on; this only keeps refusals cheap and
    the numbering mostly gap-free (a race lost after this point leaves a gap and a dangling
    directory entry, both harmless).
    """
    try:
        account = get_account(store, username).value
    except NotFound:
        raise locks.AccountMissing() from None
    lock = account.get("lock")
    if lock and not locks.lease_expired(lock, clock.now()):
        raise locks.AccountBusy()
    if not lock and account["balance"] < total:
        raise locks.InsufficientFunds(account["balance"], total)


def _request_doc(username: str, lock: dict) -> dict:
    return {
        "username": username,
        "i": lock["i"],
        "amount": lock["amount"],
        "fee": lock["fee"],
        "address": lock["address"],
        "state": QUEUED,
        "token": lock["token"],
        "createdAt": lock["createdAt"],
        "txid": None,
        "error": None,
        "history": [{"at": lock["createdAt"], "state": QUEUED}],
    }


def _insert_request(store: Store, username: str, lock: dict) -> bool:
    """The hold's commit point. True if the request is ours (now or from an earlier attempt)."""
    key = lock["ref"]
    for _ in range(MAX_ATTEMPTS):
        try:
            store.insert(key, _request_doc(username, lock))
            return True
        except (AlreadyExists, Ambiguous):
            try:
                return store.get(key).value["token"] == lock["token"]
            except NotFound:
                continue  # an ambiguous insert that did not land: try again
    raise locks.AccountBusy()


def _settle_hold(store: Store, clock: Clock, username: str, lock: dict) -> bool:
    reason = (
        f"Withdrawal #{lock['i']}: {format_btc(lock['amount'])} BTC + "
        f"{format_btc(lock['fee'])} BTC fee to {lock['address']}"
    )
    return locks.settle(
        store, clock, username, lock["token"], -(lock["amount"] + lock["fee"]), reason=reason
    )


def finish_hold(store: Store, clock: Clock, username: str, lock: dict) -> None:
    """Roll a `withdraw-hold` lock forward: the request exists (or is inserted now) -> debit;
    a request under another token at that number -> release with no debit."""
    if _insert_request(store, username, lock):
        _settle_hold(store, clock, username, lock)
    else:
        locks.release(store, username, lock["token"])


# --- refunds: cancel, and payouts the wallet refused --------------------------------------------


def cancel_withdrawal(store: Store, clock: Clock, username: str, i: int) -> dict:
    """Cancel the user's own queued request and refund amount + fee once. Returns the request.

    Raises WithdrawalNotFound (no such request of this user: someone else's is not reachable
    under their name), NotCancellable (already sending, sent, cancelled, failed) or AccountBusy.
    """
    key = withdraw_key(username, i)
    try:
        doc = store.get(key)
    except NotFound:
        raise WithdrawalNotFound() from None
    if doc.value["state"] != QUEUED:
        raise NotCancellable(_cannot_cancel(doc.value))
    lock = _take_refund_lock(store, clock, username, key, doc.value, QUEUED, REFUNDED)
    committed = _commit_refund(store, clock, lock, doc)
    if committed is None:
        locks.release(store, username, lock["token"])
        raise NotCancellable(_cannot_cancel(store.get(key).value))
    _settle_refund(store, clock, username, lock)
    return committed.value


def _take_refund_lock(
    store: Store, clock: Clock, username: str, key: str, req: dict, expect: str, target: str
) -> dict:
    return locks.take_lock(
        store, clock, username, "withdraw-refund", refund_ref(key),
        request=key, expect=expect, target=target, i=req["i"], amount=req["amount"],
        fee=req["fee"], error=req.get("error"),
    )  # fmt: skip


def _commit_refund(store: Store, clock: Clock, lock: dict, doc: Doc | None = None) -> Doc | None:
    """The refund's commit point: CAS the request `expect -> target` carrying our token.

    The request if it now carries our refundToken; None if it moved on (the processor took a
    queued request, or another refund already committed) and this refund must have no effect.
    `doc` is a read from before the lock, good for a first CAS attempt only.
    """
    key = lock["request"]

    def change(req: dict) -> dict | None:
        if req["state"] != lock["expect"]:
            return None
        now = clock.now()
        return {
            **req,
            "state": lock["target"],
            "refundToken": lock["token"],
            "refundedAt": now,
            "history": [*req["history"], {"at": now, "state": lock["target"]}],
        }

    try:
        return _update_request(
            store, key, change, lambda r: r.get("refundToken") == lock["token"], doc
        )
    except NotFound:
        return None


def _settle_refund(store: Store, clock: Clock, username: str, lock: dict) -> bool:
    if lock["target"] == REFUNDED:
        reason = f"Withdrawal #{lock['i']} cancelled"
    else:
        reason = f"Withdrawal #{lock['i']} failed: {lock.get('error') or 'refused by the wallet'}"
    return locks.settle(
        store, clock, username, lock["token"], lock["amount"] + lock["fee"], reason=reason
    )


def finish_refund(store: Store, clock: Clock, username: str, lock: dict) -> None:
    """Roll a `withdraw-refund` lock forward to its commit point, then credit; if the request
    moved on under someone else, release with no credit."""
    if _commit_refund(store, clock, lock) is not None:
        _settle_refund(store, clock, username, lock)
    else:
        locks.release(store, username, lock["token"])


def refund_failed(store: Store, clock: Clock, key: str, doc: Doc | None = None) -> dict | None:
    """Refund a `failed` request's hold, exactly once: the commit point decides. Returns the
    refunded request if this call refunded it; None if it was refunded already or the account
    is busy (the recovery pass comes back for it)."""
    if doc is None:
        try:
            doc = store.get(key)
        except NotFound:
            return None
    req = doc.value
    if req["state"] != FAILED:
        return None
    username = req["username"]
    try:
        lock = _take_refund_lock(store, clock, username, key, req, FAILED, FAILED_REFUNDED)
    except locks.AccountBusy:
        return None
    committed = _commit_refund(store, clock, lock, doc)
    if committed is None:
        locks.release(store, username, lock["token"])
        return None
    _settle_refund(store, clock, username, lock)
    return committed.value


# --- request documents ---------------------------------------------------------------------------


def _update_request(
    store: Store,
    key: str,
    change: Callable[[dict], dict | None],
    landed: Callable[[dict], bool],
    doc: Doc | None = None,
) -> Doc | None:
    """CAS `change(request)` onto the request; None when `change` refuses (state moved on).

    `landed(request)` recognises our own write, so an ambiguous CAS that did land is neither
    applied twice nor refused as "moved on". `doc` (a read we already hold, possibly stale)
    saves the first read; a stale one costs a CasMismatch and a fresh read.
    """
    for _ in range(MAX_ATTEMPTS):
        if doc is None:
            doc = store.get(key)
        if landed(doc.value):
            return doc
        new = change(doc.value)
        if new is None:
            return None
        try:
            return Doc(new, store.replace(key, new, doc.cas))
        except (CasMismatch, Ambiguous):
            doc = None
    raise locks.AccountBusy()


def withdrawal_count(store: Store, username: str) -> int:
    try:
        return int(store.get(withdrawcount_key(username)).value) + 1
    except NotFound:
        return 0


def user_withdrawals(store: Store, username: str, limit: int = 50) -> list[dict]:
    """The user's latest requests, newest first (numbers never used are skipped)."""
    count = withdrawal_count(store, username)
    keys = [withdraw_key(username, i) for i in range(count - 1, max(-1, count - 1 - limit), -1)]
    found = store.get_multi(keys)
    return [found[k].value for k in keys if k in found]
