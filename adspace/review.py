"""Review of sold ads: approving, rejecting with a refund, and staff take-downs (DESIGN.md 6.6a).

Every sale's tx carries `reviewUntil`: the purchase + REVIEW_HOURS or the slot's end, whichever
is first. Until then the seller may reject it, and the creditor leaves it alone unless the seller
approved it (`approvedAt`). A campaign's `reviewMode` says what serves meanwhile: "show" (the
default) serves the ad from its slot's start; "approve" serves the placeholder until the ad is
approved or its window closes (undecided at the close means approved).

Rejection, the money part, in the shape of the credit protocol but on the buyer:
  1. lock the buyer: `{kind: reject, ref: tx key, owner, n, slot, amount, reason, by, staff}`
  2. CAS the tx `uncredited -> rejected{rejectToken: our token, rejection}`: THE COMMIT POINT,
     racing the creditor's `uncredited -> credited`; exactly one CAS lands. Lost (credited, or
     rejected under another token, or a seller's rejection meeting an approval): release, no effect.
  3. note the rejection on the campaign doc (`reviews`, below) so serving stops showing the ad
  4. settle: `balance += amount`, ledger entry (kind `reject`, ref = tx key), unlock, one CAS
Steps 2-4 are idempotent, so the lock's lease recovery (`finish_reject_lock`) rolls them forward
from the lock alone. The seller is never credited for a rejected tx (the creditor's commit
refuses anything but `uncredited`), and the creditor's cursor passes it adding nothing.

Serving reads the campaign doc on every request and caches slot answers per process, so the
decisions serving needs live on the campaign doc: `reviews` maps a slot index to
`{state: approved | rejected | hidden, endsAt}`, pruned of slots that have ended. It changes
the campaign doc, which is what invalidates every process's cached answer (serving.showing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings

from accounts import locks, notify
from docstore import Ambiguous, CasMismatch, Clock, Doc, DocstoreError, NotFound, Store

from . import gateway, webhooks

log = logging.getLogger(__name__)

KIND = "reject"
MODES = ("show", "approve")
MAX_REASON = 500
MAX_ATTEMPTS = 50


class ReviewError(locks.AccountError):
    status = 409


class SaleMissing(ReviewError):
    status = 404
    message = "There is no finished sale of yours at that slot."


class ReviewClosed(ReviewError):
    message = "The review window of this sale has closed; it can no longer be approved or rejected."


class AlreadyDecided(ReviewError):
    message = "This sale was already decided; nothing was changed."


class BadReason(ReviewError):
    status = 400
    message = f"Give a reason of 1 to {MAX_REASON} characters; nothing was changed."


class BadMode(ReviewError):
    status = 400
    message = "Choose a review mode: show at once, or approve first."


def window_end(purchased_at: int, ends_at: int) -> int:
    """When a sale's review window closes: REVIEW_HOURS after the purchase or the slot's end."""
    return min(purchased_at + settings.REVIEW_HOURS * 3600, ends_at)


def in_review(tx: dict, now: int) -> bool:
    """Undecided and still inside its window: the creditor must leave it alone."""
    return (
        tx["state"] == "uncredited" and not tx.get("approvedAt") and now < tx.get("reviewUntil", 0)
    )


def clean_reason(text: object) -> str:
    reason = text.strip() if isinstance(text, str) else ""
    if not reason or len(reason) > MAX_REASON or any(ord(c) < 32 and c not in "\t" for c in reason):
        raise BadReason()
    return reason


# --- what serving sees ----------------------------------------------------------------------


def review_state(campaign: dict, k: int) -> str | None:
    entry = (campaign.get("reviews") or {}).get(str(k))
    return entry["state"] if entry else None


def review_ident(campaign: dict) -> tuple:
    """What of the campaign's review data shapes what it serves (part of serving's cache key)."""
    reviews = campaign.get("reviews") or {}
    marks = tuple(sorted((k, v["state"]) for k, v in reviews.items()))
    return (campaign.get("reviewMode", "show"), marks)


# A later decision never turns a rejected or hidden ad back on.
_RANK = {"approved": 1, "rejected": 2, "hidden": 2}


def mark(store: Store, clock: Clock, owner: str, n: int, k: int, state: str, ends_at: int) -> None:
    """Record a decision on the campaign doc for serving; idempotent. Slots already ended need
    none (nothing serves them), and the map drops them as it goes, so it stays small."""
    now = clock.now()
    if ends_at <= now:
        return
    for _ in range(MAX_ATTEMPTS):
        doc = gateway.get_campaign(store, owner, n)
        reviews = {
            key: entry
            for key, entry in (doc.value.get("reviews") or {}).items()
            if entry["endsAt"] > now
        }
        current = reviews.get(str(k))
        if current and _RANK[current["state"]] >= _RANK[state]:
            return
        reviews[str(k)] = {"state": state, "endsAt": ends_at}
        try:
            store.replace(
                gateway.campaign_key(owner, n), {**doc.value, "reviews": reviews}, doc.cas
            )
            return
        except (CasMismatch, Ambiguous):
            continue
    raise locks.AccountBusy()


def set_mode(store: Store, owner: str, n: int, mode: str) -> None:
    if mode not in MODES:
        raise BadMode()
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = gateway.get_campaign(store, owner, n)
        except NotFound:
            raise SaleMissing("There is no such campaign of yours.") from None
        if doc.value.get("reviewMode", "show") == mode:
            return
        try:
            store.replace(
                gateway.campaign_key(owner, n), {**doc.value, "reviewMode": mode}, doc.cas
            )
            return
        except (CasMismatch, Ambiguous):
            continue
    raise locks.AccountBusy()


# --- reading a sale -------------------------------------------------------------------------


@dataclass
class _Sale:
    campaign: dict
    tx_doc: Doc
    ends_at: int

    @property
    def tx(self) -> dict:
        return self.tx_doc.value


def _finished_sale(store: Store, owner: str, n: int, k: int) -> _Sale:
    """A sale whose buyer was debited: at or below the campaign's `last` (buy step 5)."""
    try:
        campaign = gateway.get_campaign(store, owner, n).value
    except NotFound:
        raise SaleMissing() from None
    last = campaign.get("last")
    if k < 0 or last is None or k > last["slot"]:
        raise SaleMissing()
    try:
        tx_doc = store.get(gateway.tx_key(owner, n, k))
        slot = store.get(gateway.slot_key(owner, n, k)).value
    except NotFound:
        raise SaleMissing() from None
    return _Sale(campaign, tx_doc, slot["endsAt"])


def _check_open(tx: dict, now: int) -> None:
    if tx["state"] != "uncredited" or tx.get("approvedAt"):
        raise AlreadyDecided()
    if now >= tx.get("reviewUntil", 0):
        raise ReviewClosed()


# --- approving ------------------------------------------------------------------------------


def approve_sale(store: Store, clock: Clock, owner: str, n: int, k: int) -> None:
    """The seller approves sale k: it serves (in approve-first mode) and is credited at once."""
    sale = _finished_sale(store, owner, n, k)
    doc = sale.tx_doc
    key = gateway.tx_key(owner, n, k)
    token = locks.new_token()
    for _ in range(MAX_ATTEMPTS):
        tx = doc.value
        if tx.get("approvedToken") == token:
            break  # our write landed though its answer was lost
        if tx.get("approvedAt") and tx["state"] == "uncredited":
            # Approved by an earlier attempt that may have died before the campaign heard of it.
            mark(store, clock, owner, n, k, "approved", sale.ends_at)
            _hook(store, clock, owner, n, k, "review.approved", {})
            _notify(
                store, clock, tx["buyer"], "ad_approved", _sale(owner, n, k), _where(owner, n, k)
            )
            raise AlreadyDecided()
        _check_open(tx, clock.now())
        try:
            store.replace(key, {**tx, "approvedAt": clock.now(), "approvedToken": token}, doc.cas)
            break
        except (CasMismatch, Ambiguous):
            doc = store.get(key)  # re-read decides: ours landed, or the sale changed
    else:
        raise locks.AccountBusy()
    mark(store, clock, owner, n, k, "approved", sale.ends_at)
    _hook(store, clock, owner, n, k, "review.approved", {})
    _notify(
        store, clock, doc.value["buyer"], "ad_approved", _sale(owner, n, k), _where(owner, n, k)
    )


# --- rejecting ------------------------------------------------------------------------------


def _commit(store: Store, clock: Clock, lock: dict, doc: Doc | None = None) -> str | None:
    """THE COMMIT POINT: CAS the tx to `rejected` under the lock's token. Returns the token of the
    rejection that holds now, or None when the tx went another way (credited; approved, for a
    seller's rejection)."""
    key = lock["ref"]
    for _ in range(MAX_ATTEMPTS):
        if doc is None:
            doc = store.get(key)
        tx = doc.value
        if tx["state"] == "rejected":
            return tx["rejectToken"]
        if tx["state"] != "uncredited" or (tx.get("approvedAt") and not lock["staff"]):
            return None
        rejection = {"reason": lock["reason"], "by": lock["by"], "staff": lock["staff"]}
        rejected = {
            **tx,
            "state": "rejected",
            "rejectToken": lock["token"],
            "rejection": {**rejection, "at": clock.now()},
        }
        try:
            store.replace(key, rejected, doc.cas)
            return lock["token"]
        except (CasMismatch, Ambiguous):
            doc = None
    raise locks.AccountBusy()


def _finish(store: Store, clock: Clock, buyer: str, lock: dict, doc: Doc | None = None) -> bool:
    """Steps 2-4 from the lock. True if this rejection is the one that holds."""
    if _commit(store, clock, lock, doc) != lock["token"]:
        locks.release(store, buyer, lock["token"])
        return False
    mark(store, clock, lock["owner"], lock["n"], lock["slot"], "rejected", lock["endsAt"])
    # The buyer's email, queued after the commit point and before the refund settles: a crash
    # in between is rolled forward through here again, and the notice is idempotent by its slot,
    # so it is neither lost nor doubled. The refund never waits on it (a failure is only logged).
    where = _where(lock["owner"], lock["n"], lock["slot"])
    _notify(store, clock, buyer, "ad_rejected", lock, {**where, "reason": lock["reason"]})
    who = "staff" if lock["staff"] else "the seller"
    reason = f"Ad rejected by {who}: {lock['reason']}"
    o, n, k = lock["owner"], lock["n"], lock["slot"]
    decision = {"reason": lock["reason"], "staff": lock["staff"]}
    # Both before the refund settles, as the email: once settled the lock is gone and nothing
    # would roll a lost event forward. The refund is certain from the commit point on.
    _hook(store, clock, o, n, k, "review.rejected", decision)
    _hook(store, clock, o, n, k, "refund", {"buyer": buyer, "amount": lock["amount"]})
    locks.settle(store, clock, buyer, lock["token"], lock["amount"], reason=reason)
    return True


def _hook(store: Store, clock: Clock, owner: str, n: int, k: int, kind: str, data: dict) -> None:
    """The seller's webhook event for a decision; idempotent by (kind, slot), never raises."""
    event_id = f"{kind}:{webhooks.sale_ref(owner, n, k)}"
    data = {"campaign": n, "slot": k, **data}
    webhooks.queue_safely(store, clock, owner, kind, event_id, data)


def _sale(owner: str, n: int, k: int) -> dict:
    return {"owner": owner, "n": n, "slot": k}


def _where(owner: str, n: int, k: int) -> dict:
    return {"campaign": f"{owner}/{n}", "slot": k}


def _notify(store: Store, clock: Clock, buyer: str, kind: str, sale: dict, context: dict) -> None:
    slot = gateway.slot_key(sale["owner"], sale["n"], sale["slot"])
    try:
        notify.queue(store, clock, buyer, kind, slot, context)
    except DocstoreError:
        # The decision stands either way; an email is not worth failing it over.
        log.warning("review: could not queue %s for %s", kind, slot, exc_info=True)


def finish_reject_lock(store: Store, clock: Clock, buyer: str, lock: dict) -> None:
    """Roll a `reject` lock forward (registered as the finisher for kind `reject`)."""
    try:
        _finish(store, clock, buyer, lock)
    except NotFound:
        # The lock is only taken after reading the tx, and txs are never removed.
        locks.release(store, buyer, lock["token"])


def reject_sale(
    store: Store, clock: Clock, by: str, owner: str, n: int, k: int, reason: object,
    staff: bool = False,
) -> None:  # fmt: skip
    """Reject sale k of `owner/n`: the buyer gets the full price back, the seller nothing.

    A seller may reject an undecided sale inside its window; staff (`staff=True`) any sale not
    yet credited, approved or not. Refusals raise a ReviewError and change nothing.
    """
    reason = clean_reason(reason)
    sale = _finished_sale(store, owner, n, k)
    tx = sale.tx
    if staff:
        if tx["state"] != "uncredited":
            raise AlreadyDecided()
    else:
        _check_open(tx, clock.now())
    lock = locks.take_lock(
        store, clock, tx["buyer"], KIND, gateway.tx_key(owner, n, k), owner=owner, n=n, slot=k,
        amount=tx["amount"], reason=reason, by=by, staff=staff, endsAt=sale.ends_at,
    )  # fmt: skip
    if not _finish(store, clock, tx["buyer"], lock, sale.tx_doc):
        raise AlreadyDecided()


# --- staff take-downs -----------------------------------------------------------------------


def take_down(
    store: Store, clock: Clock, by: str, owner: str, n: int, k: int, reason: object
) -> str:
    """Staff take an ad down: before its sale is credited that is a rejection with a refund
    ("refunded"); after, the ad is only hidden and no money moves ("hidden")."""
    reason = clean_reason(reason)
    sale = _finished_sale(store, owner, n, k)
    if sale.tx["state"] == "uncredited":
        try:
            reject_sale(store, clock, by, owner, n, k, reason, staff=True)
            return "refunded"
        except AlreadyDecided:
            sale = _finished_sale(store, owner, n, k)  # the creditor won the race: hide instead
    key = gateway.tx_key(owner, n, k)
    doc = sale.tx_doc
    taken = {"reason": reason, "by": by, "at": clock.now(), "token": locks.new_token()}
    for _ in range(MAX_ATTEMPTS):
        tx = doc.value
        if tx.get("takenDown") == taken:
            break  # our write landed though its answer was lost
        if tx["state"] != "credited" or tx.get("takenDown"):
            raise AlreadyDecided()
        try:
            store.replace(key, {**tx, "takenDown": taken}, doc.cas)
            break
        except (CasMismatch, Ambiguous):
            doc = store.get(key)
    else:
        raise locks.AccountBusy()
    mark(store, clock, owner, n, k, "hidden", sale.ends_at)
    return "hidden"
