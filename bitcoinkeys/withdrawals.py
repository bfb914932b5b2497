"""Withdrawals (DESIGN.md 6.5): the hold, the cancel, the payout processor, recovery and audit.

A request holds `amount + fee` at once through a `withdraw-hold` lock, so a user can never
overspend (the original scheduled requests without touching the balance and let the processor
"reject or skip" what no longer fitted):

  1. number the request: `withdrawcount::<u>` counter -> i, then the `withdrawdir::<g>` entry
     ({username, i, at}) BEFORE anything it points to (a walker skips a dangling entry)
  2. take the `withdraw-hold` lock (spend = amount + fee), carrying everything to finish
  3. insert `withdraw::<u>::<i>` state `queued` with the lock's token: THE COMMIT POINT
  4. settle: balance -= amount + fee, unlock, ledger entry (kind withdraw-hold, ref the key)

A refund (the user cancelling a queued request, or a payout the wallet refused) goes through a
`withdraw-refund` lock: lock -> CAS the request to its refunded state with `refundToken` (THE
COMMIT POINT: `queued -> refunded` for a cancel, `failed -> failed-refunded` for a refused payout;
a distinct state rather than a flag, so "still holds money" is readable from the state alone) ->
settle +(amount + fee). The refund's ledger ref is `refund:<key>`, not the key itself: the audit
refuses a ledger that applies one ref twice, and the hold already used the key.

The processor (one at a time: a lease document taken by CAS and renewed before every send) moves
`queued -> sending` (CAS, with attempt info) -> `chain.send(..., comment=<key>)` -> `sent{txid}`.
A request found in `sending` was interrupted: the payout wallet is asked first (`find_sent` by
the comment) and only a request it has never seen is sent. When the wallet does not answer
(`ChainUnavailable`) nobody knows whether the money left, so the request stays `sending` and the
pass stops; the next pass looks before it sends. A wallet refusal (a `ChainError` carrying an
RPC error code: insufficient funds, invalid address) makes the request `failed` with the error,
and its hold is refunded exactly once (the refund's commit point).

States: queued -> sending -> sent | failed -> failed-refunded; queued -> refunded (cancelled).
Every state change is appended to the request's `history`, which the user sees.

Processor documents: `withdrawprocessor::lease` {owner, until, day, sentToday} (the lease, and
what left today for the optional daily cap, counted in the same CAS as the renewal before each
send) and `withdrawprocessor::cursor` {next} (directory entries below it are finished for good,
so a pass reads O(unfinished + new), not every request ever made).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings

from accounts import locks
from accounts.audit import Report
from accounts.gateway import account_key, directory_size, full_ledger, get_account
from accounts.money import MAX_SATS, fee_up, format_btc
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

from . import node_alerts, notices
from .addresses import AddressError, validate_address
from .chain import NOT_READY_CODES, ChainError, ChainUnavailable
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

LEASE_KEY = "withdrawprocessor::lease"
CURSOR_KEY = "withdrawprocessor::cursor"
# Must stay far longer than one wallet call (BITCOIND_TIMEOUT, 30 s): the lease is renewed right
# before each send, and a rival may only look a request up after our lease has run out.
# A directory entry whose request never appeared is passed by the cursor only after this long
# (its writer died before taking the hold lock; see _scan).
DANGLING_GRACE_SECONDS = 24 * 3600
CHUNK = 500
MAX_ATTEMPTS = 50
SECONDS_PER_DAY = 86400

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


class ProcessorBusy(Exception):
    """Another processor holds the lease: this one must not touch a single request."""


class NoPayoutWallet(Exception):
    """The chain backend cannot send (CHAIN_BACKEND=none): refuse before touching a request."""


class NodeNotReady(Exception):
    """The node cannot be paid from as configured (wrong password, warming up, another network,
    no payout wallet, unreachable): refuse before touching a request."""


class LeaseLost(Exception):
    """Our lease was taken over (we were paused past it): stop before sending anything more."""


def sentence(text: str) -> str:
    """addresses.py words its errors to follow "Invalid address: "; we show them on their own."""
    return text[:1].upper() + text[1:] if text else text


def refund_ref(key: str) -> str:
    return f"refund:{key}"


def utc_day(now: int) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")


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


# --- the directory walk and the processor's cursor ------------------------------------------------


@dataclass
class _Row:
    g: int
    key: str | None
    entry: dict | None
    doc: Doc | None


def _read_cursor(store: Store) -> tuple[int, Doc | None]:
    try:
        doc = store.get(CURSOR_KEY)
    except NotFound:
        return 0, None
    return int(doc.value["next"]), doc


def _walk(store: Store, start: int, size: int) -> Iterator[_Row]:
    """Directory entries g >= start with their requests, read in batches (two get_multi each)."""
    for first in range(start, size, CHUNK):
        gs = range(first, min(size, first + CHUNK))
        entries = store.get_multi([withdrawdir_key(g) for g in gs])
        keys = {}
        for g in gs:
            doc = entries.get(withdrawdir_key(g))
            if doc is not None:
                keys[g] = withdraw_key(doc.value["username"], doc.value["i"])
        requests = store.get_multi(list(keys.values())) if keys else {}
        for g in gs:
            entry = entries.get(withdrawdir_key(g))
            key = keys.get(g)
            yield _Row(g, key, entry.value if entry else None, requests.get(key) if key else None)


@dataclass
class _Scan:
    rows: list[_Row]
    cursor: int
    cursor_doc: Doc | None
    passable: dict[int, bool]

    def in_state(self, *states: str) -> list[_Row]:
        return [r for r in self.rows if r.doc is not None and r.doc.value["state"] in states]

    def frontier(self, finished: set[str] = frozenset()) -> int:
        """First entry the cursor may not pass; `finished` are keys this pass made terminal."""
        frontier = self.cursor
        for row in self.rows:
            if not (self.passable[row.g] or row.key in finished):
                break
            frontier = row.g + 1
        return frontier


def _scan(store: Store, clock: Clock, size: int | None = None) -> _Scan:
    """Read every request from the cursor on, and how far the cursor may move.

    The cursor passes a contiguous run of entries that can never need work again: terminal
    requests, and entries whose request never appeared. An entry is dangling when its writer died
    before (or lost the race for) the hold lock; it is passed only after DANGLING_GRACE_SECONDS and
    while the owner holds no lock for it, because a live hold lock still inserts the request. A
    missing entry (the writer died between the counter and the entry) is passed once a later
    entry is older than the grace: numbers are handed out in order, so its writer is that old.
    """
    cursor, cursor_doc = _read_cursor(store)
    if size is None:
        size = directory_size(store, WITHDRAWDIR)
    rows = list(_walk(store, cursor, size))
    old = clock.now() - DANGLING_GRACE_SECONDS
    dangling = [r for r in rows if r.entry is not None and r.doc is None and r.entry["at"] <= old]
    owners = {r.entry["username"] for r in dangling}
    accounts = store.get_multi([account_key(u) for u in owners]) if owners else {}
    oldest_later = None
    passable: dict[int, bool] = {}
    for row in reversed(rows):
        if row.entry is None:
            passable[row.g] = oldest_later is not None and oldest_later <= old
            continue
        oldest_later = (
            row.entry["at"] if oldest_later is None else min(oldest_later, row.entry["at"])
        )
        if row.doc is not None:
            passable[row.g] = row.doc.value["state"] in TERMINAL
        elif row.entry["at"] <= old:
            account = accounts.get(account_key(row.entry["username"]))
            lock = account.value.get("lock") if account else None
            passable[row.g] = not (lock and lock["ref"] == row.key)
        else:
            passable[row.g] = False
    return _Scan(rows, cursor, cursor_doc, passable)


def _advance_cursor(store: Store, scan: _Scan, frontier: int) -> None:
    """Move the cursor forward (never back). Safe without the lease: it only passes entries that
    can never change again, so whoever writes it, the value is right."""
    if frontier <= scan.cursor:
        return
    doc = scan.cursor_doc
    for _ in range(MAX_ATTEMPTS):
        try:
            if doc is None:
                store.insert(CURSOR_KEY, {"next": frontier})
            elif int(doc.value["next"]) >= frontier:
                return
            else:
                store.replace(CURSOR_KEY, {"next": frontier}, doc.cas)
            return
        except (AlreadyExists, CasMismatch, Ambiguous):
            try:
                doc = store.get(CURSOR_KEY)
            except NotFound:
                doc = None


# --- calculate -----------------------------------------------------------------------------------


@dataclass
class Line:
    key: str
    username: str
    i: int
    amount: int
    fee: int
    address: str
    state: str
    result: str = ""
    txid: str | None = None
    detail: str = ""


@dataclass
class Calculation:
    """What a pass would do: requests to send (and look up), the refunds it owes."""

    lines: list[Line] = field(default_factory=list)
    needed: int = 0  # what the payout wallet must hold: amounts this pass may send
    fees: int = 0
    cap_note: str = ""

    @property
    def to_send(self) -> list[Line]:
        return [ln for ln in self.lines if ln.result in ("send", "look up")]


def _line(key: str, req: dict, result: str = "", detail: str = "") -> Line:
    return Line(
        key, req["username"], req["i"], req["amount"], req["fee"], req["address"], req["state"],
        result=result, txid=req.get("txid"), detail=detail,
    )  # fmt: skip


def _sent_today(store: Store, now: int) -> int:
    try:
        held = store.get(LEASE_KEY).value
    except NotFound:
        return 0
    return int(held.get("sentToday", 0)) if held.get("day") == utc_day(now) else 0


def calculate(store: Store, clock: Clock, daily_cap: int | None = None) -> Calculation:
    """Read-only: every request the next pass would act on, and what the payout wallet needs."""
    scan = _scan(store, clock)
    calc = Calculation()
    used = _sent_today(store, clock.now()) if daily_cap is not None else 0
    capped = False
    for row in scan.in_state(QUEUED, SENDING, FAILED):
        req = row.doc.value
        if req["state"] == FAILED:
            calc.lines.append(_line(row.key, req, "refund", "refused by the wallet: refund owed"))
            continue
        if req["state"] == SENDING:
            # Possibly sent already: the pass looks it up first. Counted in case it was not.
            calc.lines.append(_line(row.key, req, "look up", "interrupted; looked up first"))
        else:
            if daily_cap is not None and (capped or used + req["amount"] > daily_cap):
                capped = True
                calc.lines.append(_line(row.key, req, "wait", "over today's cap"))
                continue
            used += req["amount"]
            calc.lines.append(_line(row.key, req, "send"))
        calc.needed += req["amount"]
        calc.fees += req["fee"]
    if capped:
        calc.cap_note = _cap_note(daily_cap, sum(ln.result == "wait" for ln in calc.lines))
    return calc


def _cap_note(cap: int, waiting: int) -> str:
    return (
        f"Daily cap of {format_btc(cap)} BTC reached: {waiting} request(s) wait for the next "
        f"day (UTC)."
    )


# --- the processor -------------------------------------------------------------------------------


class ProcessorLease:
    """`withdrawprocessor::lease` {owner, until, day, sentToday}: one processor at a time.

    Taken by insert or by CAS once expired, renewed by CAS right before every send. A processor
    that was paused past its lease finds another owner on renewal and stops (LeaseLost) before
    it can send anything a rival may already have looked up and sent.

    The same document counts what left today (UTC) for the daily cap: the renewal right before
    a send adds its amount in the same CAS, so the count cannot miss a payout, and only the
    lease holder ever writes it. A send attempt that was interrupted and made again counts
    twice: the cap errs on the side of sending less.
    """

    def __init__(self, store: Store, clock: Clock, seconds: int, owner: str | None = None):
        self.store, self.clock, self.seconds = store, clock, seconds
        self.owner = owner or uuid.uuid4().hex
        self.cas: int | None = None
        self.day = ""
        self.sent = 0

    @property
    def sent_today(self) -> int:
        return self.sent if self.day == utc_day(self.clock.now()) else 0

    def _value(self, add: int = 0) -> dict:
        now = self.clock.now()
        return {
            "owner": self.owner,
            "until": now + self.seconds,
            "day": utc_day(now),
            "sentToday": self.sent_today + add,
        }

    def _adopt(self, value: dict, cas: int) -> None:
        self.cas, self.day, self.sent = cas, value.get("day", ""), int(value.get("sentToday", 0))

    def acquire(self) -> None:
        for _ in range(MAX_ATTEMPTS):
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                value = self._value()
                try:
                    self._adopt(value, self.store.insert(LEASE_KEY, value))
                    return
                except (AlreadyExists, Ambiguous):
                    continue  # re-read: ours landed, or a rival's did
            held = doc.value
            if held.get("owner") == self.owner:
                self._adopt(held, doc.cas)
                return
            if held.get("owner") and held["until"] > self.clock.now():
                until = datetime.fromtimestamp(held["until"], tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
                raise ProcessorBusy(
                    f"Another withdrawal processor is running (lease {held['owner']} until "
                    f"{until} UTC); nothing was done. Try again when it has finished."
                )
            self._adopt(held, doc.cas)  # keep today's count across processors
            value = self._value()
            try:
                self._adopt(value, self.store.replace(LEASE_KEY, value, doc.cas))
                return
            except (CasMismatch, Ambiguous):
                continue
        raise ProcessorBusy("Could not take the withdrawal processor lease; try again.")

    def renew(self, add: int = 0) -> None:
        """Extend the lease; with `add`, count a payout about to leave in today's total."""
        value = self._value(add)
        for _ in range(MAX_ATTEMPTS):
            try:
                self._adopt(value, self.store.replace(LEASE_KEY, value, self.cas))
                return
            except (CasMismatch, Ambiguous):
                pass
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                raise LeaseLost("the processor lease disappeared") from None
            if doc.value == value:
                self._adopt(value, doc.cas)  # our ambiguous write did land
                return
            if doc.value.get("owner") != self.owner:
                # Even an expired lease is still ours while nobody took it: no rival has acted.
                raise LeaseLost("another processor took over the lease")
            self.cas = doc.cas
        raise LeaseLost("could not renew the processor lease")

    def release(self) -> None:
        value = {
            "owner": None,
            "until": 0,
            "last": self.owner,
            "day": self.day,
            "sentToday": self.sent,
        }
        for _ in range(MAX_ATTEMPTS):
            try:
                self.store.replace(LEASE_KEY, value, self.cas)
                return
            except (CasMismatch, Ambiguous):
                pass
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                return
            if doc.value.get("owner") != self.owner:
                return  # released (our ambiguous write landed) or taken over
            self.cas = doc.cas


@dataclass
class ProcessReport:
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Why the pass stopped before the end: a send or look-up whose outcome is unknown, a lost
    # lease, a stop request. The command exits non-zero when set.
    stopped: str | None = None

    def count(self, result: str) -> int:
        return sum(1 for ln in self.lines if ln.result == result)

    @property
    def sent_amount(self) -> int:
        return sum(ln.amount for ln in self.lines if ln.result == "sent")


class _Stop(Exception):
    pass


def process(
    store: Store,
    clock: Clock,
    chain,
    daily_cap: int | None = None,
    *,
    lease_seconds: int | None = None,
    on_line: Callable[[Line], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    owner: str | None = None,
) -> ProcessReport:
    """One processor pass over every queued, sending and failed request, in the order received.

    Raises ProcessorBusy when another processor holds the lease, NoPayoutWallet when `chain`
    cannot send, NodeNotReady when the node fails its check (then an admin alert is up). A pass with nothing to do takes no lease and writes nothing (not even the
    cursor: the next pass with work moves it), so an idle processor costs reads only.
    """
    if not getattr(chain, "available", True):
        raise NoPayoutWallet(
            "No bitcoin node is configured (CHAIN_BACKEND=none), so nothing can be sent; set "
            "CHAIN_BACKEND=bitcoind and BITCOIND_URL first."
        )
    report = ProcessReport()
    scan = _scan(store, clock)
    work = scan.in_state(QUEUED, SENDING, FAILED)
    if not work:
        # Sent requests the cursor never passed (a crash after their `sent` CAS): their notices.
        notices.queue_withdrawals_sent(store, clock, [r.key for r in scan.in_state(SENT)])
        return report
    check = getattr(chain, "check_node", None)
    if check is not None:
        try:
            check((chain.payout_wallet,))
        except ChainError as exc:
            node_alerts.raise_alert(store, clock, "withdrawals", exc)
            raise NodeNotReady(
                f"The bitcoin node cannot be paid from: {exc} Nothing was sent; every request "
                f"stays as it was."
            ) from exc
        node_alerts.clear_alert(store, "withdrawals")
    # Renewed before every send, so it only has to outlive one wallet call; a killed processor
    # blocks the next one for at most this long.
    lease_seconds = lease_seconds or settings.WITHDRAW_PROCESSOR_LEASE_SECONDS
    lease = ProcessorLease(store, clock, lease_seconds, owner)
    lease.acquire()
    try:
        pass_ = _Pass(store, clock, chain, daily_cap, lease, report, on_line)
        for row in work:
            if should_stop is not None and should_stop():
                report.stopped = "Stopped on request; the rest waits for the next pass."
                break
            try:
                pass_.handle(row)
            except _Stop as exc:
                report.stopped = str(exc)
                break
            except LeaseLost as exc:
                report.stopped = f"Stopped: {exc}; the other processor carries on."
                break
        if pass_.waiting:
            report.notes.append(_cap_note(daily_cap, pass_.waiting))
        finished = {ln.key for ln in report.lines if ln.state in TERMINAL}
        # Before the cursor passes them: a crash right after a `sent` CAS loses no notice.
        sent = [r.key for r in scan.in_state(SENT)] + [
            ln.key for ln in report.lines if ln.state == SENT
        ]
        notices.queue_withdrawals_sent(store, clock, sent)
        _advance_cursor(store, scan, scan.frontier(finished))
    except Exception:
        _release_quietly(lease)
        raise
    lease.release()
    return report


def _release_quietly(lease: ProcessorLease) -> None:
    try:
        lease.release()
    except Exception:
        log.warning("could not release the processor lease; it expires by itself", exc_info=True)


class _Pass:
    """One pass's work under the lease. Every request costs three docstore calls on the happy
    path (CAS to sending, the lease renewal, CAS to sent): reads from the scan and the CAS
    values we got back stand in for fresh reads, and a stale one only costs a retry."""

    def __init__(self, store, clock, chain, daily_cap, lease, report, on_line):
        self.store, self.clock, self.chain = store, clock, chain
        self.daily_cap, self.lease, self.report, self.on_line = daily_cap, lease, report, on_line
        self.capped = False
        self.waiting = 0

    def emit(self, key: str, req: dict, result: str, txid: str | None = None, detail: str = ""):
        line = _line(key, req, result, detail)
        line.txid = txid or req.get("txid")
        self.report.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def skipped(self, key: str) -> None:
        current = self.store.get(key).value
        self.emit(key, current, "skipped", detail=f"now {current['state']}; nothing to do")

    def handle(self, row: _Row) -> None:
        state = row.doc.value["state"]
        if state == QUEUED:
            self.send_queued(row.key, row.doc)
        elif state == SENDING:
            self.resume_sending(row.key)
        elif state == FAILED:
            self.refund(row.key, None)

    def send_queued(self, key: str, doc: Doc) -> None:
        amount = doc.value["amount"]
        cap = self.daily_cap
        if cap is not None and (self.capped or self.lease.sent_today + amount > cap):
            # First in, first out: once one request waits for tomorrow, the later ones do too.
            self.capped = True
            self.waiting += 1
            self.emit(
                key, doc.value, "waiting", detail="over the daily cap; waits for the next day"
            )
            return
        attempt = {"n": 1, "by": self.lease.owner, "at": self.clock.now(), "id": uuid.uuid4().hex}

        def change(r: dict) -> dict | None:
            if r["state"] != QUEUED:
                return None
            history = [*r["history"], {"at": attempt["at"], "state": SENDING}]
            return {**r, "state": SENDING, "attempt": attempt, "history": history}

        # The scan's read may be stale (a cancel while we waited for the lease): the CAS decides.
        moved = _update_request(self.store, key, change, lambda r: _is_attempt(r, attempt), doc)
        if moved is None:
            self.skipped(key)
            return
        self.send(key, moved)

    def resume_sending(self, key: str) -> None:
        # Interrupted between `sending` and `sent`: the money may have left. Look before sending.
        doc = self.store.get(key)  # fresh: another processor may have settled it meanwhile
        if doc.value["state"] != SENDING:
            return
        self.lease.renew()
        try:
            txid = self.chain.find_sent(key)
        except Exception as exc:  # ChainUnavailable, ChainError or worse: we know nothing
            self.emit(key, doc.value, "sending", detail=f"could not look it up: {exc}")
            raise _Stop(
                f"The payout wallet could not be asked whether {key} was sent ({exc}). It stays "
                f"'sending'; the next pass looks it up before sending anything."
            ) from exc
        if txid:
            self.record_sent(key, txid, doc, found=True)
            return
        previous = doc.value.get("attempt") or {}
        attempt = {
            "n": int(previous.get("n", 0)) + 1,
            "by": self.lease.owner,
            "at": self.clock.now(),
            "id": uuid.uuid4().hex,
        }

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING or (r.get("attempt") or {}).get("id") != previous.get("id"):
                return None
            note = {
                "at": attempt["at"],
                "state": SENDING,
                "note": "not in the payout wallet; sent again",
            }
            return {**r, "attempt": attempt, "history": [*r["history"], note]}

        moved = _update_request(self.store, key, change, lambda r: _is_attempt(r, attempt), doc)
        if moved is None:
            self.skipped(key)
            return
        self.send(key, moved)

    def send(self, key: str, doc: Doc) -> None:
        req = doc.value
        # The renewal is the last docstore call before the send: a processor paused past its
        # lease stops here instead of sending what a rival may have looked up and sent. It also
        # counts the payout against today's cap, before the money can leave.
        self.lease.renew(add=req["amount"])
        try:
            txid = self.chain.send(req["address"], req["amount"], key)
        except Exception as exc:
            if not is_refusal(exc):
                self.unknown(key, req, exc)
            self.fail(key, doc, str(exc) or type(exc).__name__)
            return
        self.record_sent(key, txid, doc, found=False)

    def unknown(self, key: str, req: dict, exc: Exception) -> None:
        if getattr(exc, "code", None) in NOT_READY_CODES:
            # Nothing was sent, but the node is not in a state to pay: stop the whole pass
            # rather than fail (and refund) every request in turn.
            self.emit(key, req, "sending", detail=f"the node was not ready: {exc}")
            node_alerts.raise_alert(self.store, self.clock, "withdrawals", exc)
            raise _Stop(
                f"The payout wallet was not ready while sending {key} ({exc}); nothing was sent. "
                f"It stays 'sending' and is looked up by its comment before it is sent."
            ) from exc
        kind = "did not answer" if isinstance(exc, ChainUnavailable) else "answered oddly"
        self.emit(key, req, "sending", detail=f"outcome unknown: {exc}")
        log.error("payout of %s: wallet %s (%s); left 'sending'", key, kind, exc)
        raise _Stop(
            f"The payout wallet {kind} while sending {key} ({exc}): it may or may not have been "
            f"sent. It stays 'sending' and is NOT sent again blindly: the next pass looks it up "
            f"by its comment first."
        ) from exc

    def record_sent(self, key: str, txid: str, doc: Doc, found: bool) -> None:
        now = self.clock.now()

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING:
                return None
            history = [*r["history"], {"at": now, "state": SENT, "txid": txid}]
            return {**r, "state": SENT, "txid": txid, "sentAt": now, "history": history}

        done = _update_request(
            self.store, key, change, lambda r: r["state"] == SENT and r.get("txid") == txid, doc
        )
        if done is None:
            current = self.store.get(key).value
            # A request paid twice is the one outcome this protocol exists to prevent: be loud.
            log.critical("payout %s sent as %s but the request is %s", key, txid, current)
            detail = f"sent as {txid} but the request is {current['state']}"
            self.emit(key, current, "conflict", txid, detail)
            return
        self.emit(key, done.value, "sent", txid, "found in the payout wallet" if found else "")
        notices.queue_withdrawal_sent_quietly(self.store, self.clock, key, done.value)

    def fail(self, key: str, doc: Doc, error: str) -> None:
        attempt_id = (doc.value.get("attempt") or {}).get("id")
        now = self.clock.now()

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING:
                return None
            history = [*r["history"], {"at": now, "state": FAILED, "error": error}]
            return {**r, "state": FAILED, "error": error, "failedAt": now, "history": history}

        def landed(r: dict) -> bool:
            ours = (r.get("attempt") or {}).get("id") == attempt_id and r.get("error") == error
            return ours and r["state"] in (FAILED, FAILED_REFUNDED)

        failed = _update_request(self.store, key, change, landed, doc)
        if failed is None:
            self.skipped(key)
            return
        self.refund(key, failed)

    def refund(self, key: str, doc: Doc | None) -> None:
        refunded = refund_failed(self.store, self.clock, key, doc)
        if refunded is not None:
            self.emit(key, refunded, "failed", detail=f"{refunded.get('error')}; refunded")
            return
        current = self.store.get(key).value
        if current["state"] == FAILED_REFUNDED:
            self.emit(key, current, "failed", detail=f"{current.get('error')}; refunded")
        elif current["state"] == FAILED:
            detail = f"{current.get('error')}; refund pending (account busy)"
            self.emit(key, current, "failed", detail=detail)


def is_refusal(exc: BaseException) -> bool:
    """True only for a wallet that answered "no" (an RPC error object: insufficient funds,
    invalid address...), which proves nothing was sent. ChainUnavailable is a ChainError too, and
    a ChainError without a code (a garbled answer, a reply that is not a txid) may follow a send
    that went out: refunding those could pay a user twice, so they leave the request `sending`."""
    return (
        isinstance(exc, ChainError)
        and not isinstance(exc, ChainUnavailable)
        and getattr(exc, "code", None) is not None
        and exc.code not in NOT_READY_CODES
    )


def _is_attempt(req: dict, attempt: dict) -> bool:
    return (req.get("attempt") or {}).get("id") == attempt["id"]


# --- recovery and audit -------------------------------------------------------------------------


def recover_withdrawals(store: Store, clock: Clock) -> int:
    """Recovery pass: refund every `failed` request whose refund a crash interrupted.

    Hold and refund locks are finished by the accounts `locks` pass through the finishers; this
    covers the window between `failed` and the refund lock. Reads only the counter when nobody
    ever withdrew, and only the requests from the processor's cursor on otherwise.
    """
    size = directory_size(store, WITHDRAWDIR)
    if size == 0:
        return 0
    refunded = 0
    for row in _scan(store, clock, size).in_state(FAILED):
        if refund_failed(store, clock, row.key, row.doc) is not None:
            refunded += 1
    return refunded


def audit_withdrawals(store: Store, report: Report) -> None:
    """Withdrawals' side of the money equation, and each hold and refund once in the ledger."""
    report.add(report.held, "held withdrawals", 0)
    report.add(report.held, "withdrawal fees earned", 0)
    report.add(report.came_in, "paid out", 0)
    size = directory_size(store, WITHDRAWDIR)
    by_user: dict[str, list[tuple[str, dict]]] = {}
    for row in _walk(store, 0, size):
        if row.doc is not None:
            by_user.setdefault(row.entry["username"], []).append((row.key, row.doc.value))
    names = list(by_user)
    for start in range(0, len(names), CHUNK):
        chunk = names[start : start + CHUNK]
        accounts = store.get_multi([account_key(u) for u in chunk])
        for username in chunk:
            account = accounts.get(account_key(username))
            if account is None:
                report.breaches.append(f"withdrawals of {username} but no account::{username}")
                continue
            _audit_user(store, report, username, account.value, by_user[username])


def _audit_user(
    store: Store, report: Report, username: str, account: dict, requests: list[tuple[str, dict]]
) -> None:
    lock = account.get("lock") or {}
    ledger = full_ledger(store, username, account)
    holds = Counter(e["ref"] for e in ledger if e["kind"] == "withdraw-hold")
    refunds = Counter(e["ref"] for e in ledger if e["kind"] == "withdraw-refund")
    deltas = {(e["kind"], e["ref"]): e["delta"] for e in ledger}
    seen_holds, seen_refunds = set(), set()
    for key, req in requests:
        total = req["amount"] + req["fee"]
        state = req["state"]
        report.facts[f"withdrawals {state}"] = report.facts.get(f"withdrawals {state}", 0) + 1
        hold_in_flight = lock.get("kind") == "withdraw-hold" and lock.get("token") == req["token"]
        refund_in_flight = lock.get("kind") == "withdraw-refund" and lock.get("token") == req.get(
            "refundToken"
        )
        if state in HOLDING:
            report.add(report.held, "held withdrawals", total)
        elif state == SENT:
            report.add(report.held, "withdrawal fees earned", req["fee"])
            report.add(report.came_in, "paid out", -req["amount"])
            if not req.get("txid"):
                report.breaches.append(f"{key} is sent without a txid")
        elif state in REFUNDED_STATES:
            if not req.get("refundToken"):
                report.breaches.append(f"{key} is {state} without a refund token")
        else:
            report.breaches.append(f"{key} has unknown state {state!r}")
        # Between a commit point and its settle the balance has not moved yet: count the money
        # where it still is, so a live audit balances mid-flight.
        if hold_in_flight:
            report.add(report.held, "held withdrawals", -total)
        if refund_in_flight:
            report.add(report.held, "held withdrawals", total)
        want_hold = 0 if hold_in_flight else 1
        if holds[key] != want_hold:
            report.breaches.append(f"{key}: hold applied {holds[key]} times, expected {want_hold}")
        elif want_hold and deltas[("withdraw-hold", key)] != -total:
            report.breaches.append(f"{key}: hold debited {deltas[('withdraw-hold', key)]}")
        ref = refund_ref(key)
        want_refund = 1 if state in REFUNDED_STATES and not refund_in_flight else 0
        if refunds[ref] != want_refund:
            report.breaches.append(
                f"{key}: refund applied {refunds[ref]} times, expected {want_refund}"
            )
        elif want_refund and deltas[("withdraw-refund", ref)] != total:
            report.breaches.append(f"{key}: refund credited {deltas[('withdraw-refund', ref)]}")
        seen_holds.add(key)
        seen_refunds.add(ref)
    for ref in set(holds) - seen_holds:
        report.breaches.append(f"ledger of {username}: withdraw hold {ref} has no request")
    for ref in set(refunds) - seen_refunds:
        report.breaches.append(f"ledger of {username}: withdraw refund {ref} has no request")


def ready_withdrawals() -> None:
    """Register finishers, the recovery pass and the audit (call from BitcoinkeysConfig.ready)."""
    from accounts import audit, recovery

    locks.register_finisher("withdraw-hold", finish_hold)
    locks.register_finisher("withdraw-refund", finish_refund)
    recovery.register_pass("withdrawals", recover_withdrawals)
    audit.register_audit(audit_withdrawals)
