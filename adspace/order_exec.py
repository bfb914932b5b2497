"""Executing standing orders (DESIGN.md 6.6b): the executor task, the lock finisher, recovery.

An order buys through the ordinary buy (adspace.buy, DESIGN.md 6.2) at the price of that second,
with `accepted_price = limit`, so it never pays above its limit. The buy lock carries the order's
key and the `version` it was priced from, and the order is tied to it in one more CAS:
  1. lock the buyer (the balance must cover the price: else the order fails with the reason)
  2. CAS the order `open (that version) -> executing{token: the lock's, slot k, price}`; if the
     order changed meanwhile (cancelled, edited, another execution), release the lock: no effect
  3. insert the slot: THE COMMIT POINT, as for every buy (whoever inserts slot k owns it)
  4-6. the buy's tx, debit and unlock, the campaign's `last`
  7. resolve the order: `bought{slot k}` if the slot holds the token, else `open` again (the
     slot went to someone else; the order waits for the next fall)
Why it never buys twice: an order leaves `executing{T}` only once lock T is gone from the
account (resolve reads the lock before the slot), and after that slot k's owner is decided for
good (T was settled after its insert, or released because k was taken); step 2 accepts only the
version the lock was priced from, which no later write brings back, so a stale lock can never
re-enter. A cancel is a CAS from `open` only, so it lands before step 2 (the buy gives up) or is
refused while executing (the buy decides): it cancels or buys, never both.
Who finishes a crashed execution: the buy lock's finisher (`finish_buy_lock`, registered for
every buy lock) runs step 2 itself when the order is still at the lock's version, then the buy
steps, then step 7; the recovery pass (`recover_orders`) resolves executing orders whose lock
is gone (a sale finished by a later buyer of the campaign) and tidies the books.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from django.conf import settings

from accounts import locks
from accounts.gateway import account_key, get_account
from accounts.money import format_btc
from accounts.shards import ALL, Shard
from docstore import Ambiguous, CasMismatch, Clock, DocstoreError, NotFound, Store
from docstore.clock import SystemClock

from . import buy, gateway, orders, pricing

log = logging.getLogger(__name__)

# Sales one visit of a campaign may make (each doubles the price, so one is the rule).
MAX_SALES_PER_VISIT = 5
CHUNK = 500


def enter_executing(store: Store, key: str, lock: dict) -> bool:
    """Step 2: True when the order is executing under this lock (now or already)."""
    for _ in range(orders.MAX_ATTEMPTS):
        try:
            doc = store.get(key)
        except NotFound:
            return False
        order = doc.value
        if order["state"] == "executing" and order["token"] == lock["token"]:
            return True
        if order["state"] != "open" or order["version"] != lock["orderVersion"]:
            return False
        new = {
            **order, "state": "executing", "token": lock["token"], "slot": lock["slot"],
            "price": lock["price"], "since": lock["since"], "version": order["version"] + 1,
        }  # fmt: skip
        try:
            store.replace(key, new, doc.cas)
            return True
        except (CasMismatch, Ambiguous):
            continue
    raise locks.AccountBusy()


def resolve_executing(store: Store, clock: Clock, key: str) -> str:
    """Step 7, once the execution's lock is gone: bought if slot k holds its token, else open.
    Returns the order's state afterwards ("executing" while the lock is still held)."""
    for _ in range(orders.MAX_ATTEMPTS):
        try:
            doc = store.get(key)
        except NotFound:
            return "missing"
        order = doc.value
        if order["state"] != "executing":
            return order["state"]
        # The lock first, then the slot: once the lock is gone the slot's owner cannot change.
        lock = get_account(store, order["buyer"]).value.get("lock")
        if lock and lock["token"] == order["token"]:
            return "executing"
        try:
            slot = store.get(gateway.slot_key(order["owner"], order["n"], order["slot"])).value
        except NotFound:
            slot = None
        base = {k: v for k, v in order.items() if k not in ("token", "since", "price")}
        if slot is not None and slot["token"] == order["token"]:
            new = {
                **base, "state": "bought", "price": slot["price"], "token": order["token"],
                "finishedAt": slot["purchasedAt"],
            }  # fmt: skip
        else:
            new = {**base, "state": "open", "lost": order.get("lost", 0) + 1}
            new.pop("slot", None)
        new["version"] = order["version"] + 1
        try:
            store.replace(key, new, doc.cas)
        except (CasMismatch, Ambiguous):
            continue
        if new["state"] == "bought":
            orders.unlist(store, new)
        return new["state"]
    raise locks.AccountBusy()


def finish_buy_lock(store: Store, clock: Clock, buyer: str, lock: dict) -> None:
    """The finisher of every buy lock: a plain buy as before; an order's buy runs step 2 first
    (or releases the lock when the order moved on), then the buy, then step 7."""
    key = lock.get("order")
    if key is None:
        buy.finish_buy_lock(store, clock, buyer, lock)
        return
    if not enter_executing(store, key, lock):
        locks.release(store, buyer, lock["token"])
        return
    buy.finish_buy_lock(store, clock, buyer, lock)
    resolve_executing(store, clock, key)


def _fail(store: Store, clock: Clock, key: str, doc, reason: str) -> str:
    return "failed" if orders.close(store, clock, key, doc, "failed", reason=reason) else "changed"


def execute_order(store: Store, clock: Clock, key: str, entry: dict | None = None) -> str:
    """Try one order now; returns what happened (bought, lost, failed, not due, busy, ...)."""
    try:
        doc = store.get(key)
    except NotFound:
        # A placement stalled between its book entry and its order: void it once past grace.
        created = (entry or {}).get("createdAt", clock.now())
        stalled = clock.now() - created >= orders.GRACE_SECONDS
        return "void" if stalled and orders.void(store, key) else "missing"
    order = doc.value
    if order["state"] == "executing":
        return resolve_executing(store, clock, key)
    if order["state"] != "open":
        orders.unlist(store, order)
        return "closed"
    if order.get("expiresAt") is not None and clock.now() >= order["expiresAt"]:
        return "expired" if orders.close(store, clock, key, doc, "expired") else "changed"
    try:
        buy.buy_next_slot(
            store, clock, order["buyer"], order["owner"], order["n"], order["filler"],
            order["limit"], lock_fields={"order": key, "orderVersion": order["version"]},
            before_commit=lambda lock: enter_executing(store, key, lock),
        )  # fmt: skip
    except buy.PriceChanged:
        orders.sync_entry(store, order)
        return "not due"
    except buy.CampaignPaused:
        return "paused"
    except buy.Withdrawn:
        return "changed"
    except buy.SlotTaken:
        resolve_executing(store, clock, key)
        return "lost"
    except (buy.CampaignMissing, buy.OwnCampaign, buy.FillerInvalid) as exc:
        return _fail(store, clock, key, doc, str(exc))
    except locks.InsufficientFunds as exc:
        reason = (
            f"Your balance was {format_btc(exc.balance)} BTC when the price reached "
            f"{format_btc(exc.needed)} BTC; nothing was bought or charged."
        )
        return _fail(store, clock, key, doc, reason)
    except locks.AccountMissing:
        return _fail(store, clock, key, doc, "Your account is not set up.")
    except locks.AccountBusy:
        return "busy"
    return resolve_executing(store, clock, key)


def execute_campaign(store: Store, clock: Clock, owner: str, n: int) -> Counter:
    """Execute the campaign's due orders: highest limit first, equal limits by the earlier
    order; the first that completes a sale wins the slot (the price then doubles, so the rest
    wait). Expired entries are closed on the way."""
    outcomes: Counter = Counter()
    for _ in range(MAX_SALES_PER_VISIT):
        try:
            campaign = gateway.get_campaign(store, owner, n).value
            book = store.get(orders.book_key(owner, n)).value
        except NotFound:
            return outcomes
        if campaign.get("paused"):
            return outcomes
        now = clock.now()
        for ref, entry in book["entries"].items():
            if entry.get("expiresAt") is not None and entry["expiresAt"] <= now:
                outcomes[execute_order(store, clock, orders.key_of_ref(ref), entry)] += 1
        price = pricing.current_price(campaign["minPrice"], campaign.get("last"), now)
        sold = False
        for ref, entry in orders.live_entries(book, now):
            if entry["limit"] < price:
                break
            outcome = execute_order(store, clock, orders.key_of_ref(ref), entry)
            outcomes[outcome] += 1
            if outcome == "void":
                _drop_entry(store, owner, n, ref)
            if outcome in ("bought", "lost"):
                sold = True
                break
        if not sold:
            return outcomes
    return outcomes


def _drop_entry(store: Store, owner: str, n: int, ref: str) -> None:
    """A void entry leaves the book (the tombstone does not name its campaign)."""
    buyer, i = ref.split("::")
    orders.unlist(store, {"buyer": buyer, "i": int(i), "owner": owner, "n": n})


def execute_due(
    store: Store, clock: Clock, refs: list[tuple[str, int]] | None = None
) -> tuple[Counter, int | None]:
    """One pass over the campaigns in `refs` (default: every campaign with a book; a shard
    passes its share): execute what is due. Returns the outcomes and the next second at which
    an order of these campaigns becomes due (None if none will)."""
    if refs is None:
        refs = orders.book_refs(store)
    outcomes: Counter = Counter()
    next_due: int | None = None
    for start in range(0, len(refs), CHUNK):
        chunk = refs[start : start + CHUNK]
        books = store.get_multi([orders.book_key(o, n) for o, n in chunk])
        busy = [(o, n) for o, n in chunk if orders.book_key(o, n) in books]
        busy = [r for r in busy if books[orders.book_key(*r)].value["entries"]]
        campaigns = store.get_multi([gateway.campaign_key(o, n) for o, n in busy])
        now = clock.now()
        for owner, n in busy:
            campaign = campaigns.get(gateway.campaign_key(owner, n))
            if campaign is None or campaign.value.get("paused"):
                continue
            book = books[orders.book_key(owner, n)].value
            live = orders.live_entries(book, now)
            expired = len(live) < len(book["entries"])
            last, m = campaign.value.get("last"), campaign.value["minPrice"]
            due = pricing.due_at(m, last, live[0][1]["limit"]) if live else None
            if expired or (due is not None and due <= now):
                try:
                    outcomes += execute_campaign(store, clock, owner, n)
                except (DocstoreError, locks.AccountBusy):
                    log.warning("orders of %s/%s: pass failed; next pass", owner, n, exc_info=True)
                    outcomes["errors"] += 1
            elif due is not None:
                next_due = due if next_due is None else min(next_due, due)
    return outcomes, next_due


def _shard_refs(store: Store, shard: Shard) -> list[tuple[str, int]]:
    """The campaigns with a book whose seller `shard` owns (as recover_campaigns splits them)."""
    return [(o, n) for o, n in orders.book_refs(store) if shard.owns(account_key(o))]


def run_executor(store: Store, clock: Clock, shard: Shard = ALL) -> dict[str, int]:
    """The worker task: a pass over `shard`'s campaigns, then (on the real clock) wait for the
    next order coming due within ORDERS_WAIT_SECONDS and execute it at once, so an order fills
    within milliseconds of its second rather than up to a worker interval later."""
    wait = settings.ORDERS_WAIT_SECONDS if isinstance(clock, SystemClock) else 0
    deadline = time.monotonic() + wait
    total: Counter = Counter()
    while True:
        outcomes, next_due = execute_due(store, clock, _shard_refs(store, shard))
        total += outcomes
        if next_due is None:
            break
        delay = next_due - time.time()
        if delay > deadline - time.monotonic():
            break
        time.sleep(max(delay, 0))
    return {k.replace(" ", "_"): v for k, v in total.items()}


def recover_orders(store: Store, clock: Clock, shard: Shard = ALL) -> int:
    """Recovery pass over `shard`'s campaigns: resolve executions whose lock is gone, finish
    those whose lock outlived its lease, void entries whose placement stalled, and tidy
    finished orders out of books."""
    finished = 0
    now = clock.now()
    for owner, n in _shard_refs(store, shard):
        try:
            book = store.get(orders.book_key(owner, n)).value
        except NotFound:
            continue
        refs = list(book["entries"])
        found = store.get_multi([orders.key_of_ref(r) for r in refs])
        for ref in refs:
            key, entry = orders.key_of_ref(ref), book["entries"][ref]
            doc = found.get(key)
            if doc is None:
                if execute_order(store, clock, key, entry) == "void":
                    _drop_entry(store, owner, n, ref)
                    finished += 1
                continue
            order = doc.value
            if order["state"] == "executing":
                lock = get_account(store, order["buyer"]).value.get("lock")
                if lock and lock["token"] == order["token"]:
                    if not locks.lease_expired(lock, now):
                        continue
                    locks.resolve(store, clock, order["buyer"])
                if resolve_executing(store, clock, key) != "executing":
                    finished += 1
            elif order["state"] != "open":
                orders.unlist(store, order)
                finished += 1
            elif order["limit"] != entry["limit"]:
                orders.sync_entry(store, order)
                finished += 1
    return finished
