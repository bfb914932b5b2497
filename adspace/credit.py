"""Crediting sellers for their sales, minus the sale fee (DESIGN.md 6.6): the transaction creditor.

Each sale leaves `tx::<owner>::<n>::<k>` in state `uncredited`. The creditor walks each campaign
from `creditcursor::<owner>::<n>` (`{next, earned, sales}`; absent = all zero) and credits each
sale through a `credit` lock on the seller, in the shape of the buy protocol:
  1. lock the seller's account: `{kind: credit, ref: tx key, owner, n, slot, amount, fee, token}`
  2. CAS the tx to `credited` with `creditToken` = our token: THE COMMIT POINT. Already credited
     under another token: release our lock with no effect and move on.
  3. settle: `balance += amount - fee`, ledger entry (kind `credit`, ref = tx key), unlock, one CAS
  4. advance the cursor past k (a cache of progress; see `_Cursor.advance` for why it is exact)
Every step after the lock is idempotent, so the lock's lease recovery (`finish_credit_lock`, the
finisher for kind `credit`) rolls it forward from the lock alone. This fixes what the original
left unfinished: a seller left locked to a tx that was already credited stayed locked forever.

Review (adspace.review): a sale still in its review window, not approved, is left alone; the
cursor stops at the first such sale while the walk goes on to credit approved ones past it. A
rejected tx is never credited (`_commit` only moves `uncredited`, the state the rejection's own
commit CAS also starts from, so exactly one of the two lands); the cursor passes it adding nothing.

The walk stops at the campaign's `last` slot, not merely at the first missing tx: `last` moves
past k only after the buyer of k was debited (buy step 5 precedes step 6), so a seller is never
credited for a sale whose buyer still holds the money, and the books never count it twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from django.conf import settings

from accounts import locks
from accounts.gateway import account_key, get_account
from accounts.shards import ALL, Shard
from docstore import (
    AlreadyExists,
    Ambiguous,
    CasMismatch,
    Clock,
    Doc,
    DocstoreError,
    NotFound,
    Store,
)

from . import gateway, review, webhooks

log = logging.getLogger(__name__)

KIND = "credit"
CHUNK = 500
MAX_ATTEMPTS = 50


def _empty_cursor() -> dict:
    return {"next": 0, "earned": 0, "sales": 0}


def net_amount(tx: dict) -> int:
    """What the seller receives for a sale: the price minus the sale fee (fixed at sale time)."""
    return tx["amount"] - tx["fee"]


class _Cursor:
    """The cursor doc with the CAS we last saw (None: absent), so advancing costs one write."""

    def __init__(self, store: Store, owner: str, n: int, batch: dict[str, Doc] | None = None):
        self.store, self.key = store, gateway.creditcursor_key(owner, n)
        if batch is None:
            self.reload()
        else:
            self._set(batch.get(self.key))  # from the pass's batched read; absent in it = absent

    def _set(self, doc: Doc | None) -> None:
        self.value, self.cas = (doc.value, doc.cas) if doc else (_empty_cursor(), None)

    def reload(self) -> None:
        try:
            self._set(self.store.get(self.key))
        except NotFound:
            self._set(None)

    def advance(self, k: int, net: int, sales: int = 1) -> bool:
        """Move `next` from k to k+1, adding tx k to earned/sales; False if the cursor is behind k.

        A rejected tx passes with net 0 and sales 0: it was never credited, and never will be.

        Why earned stays exact across crashes and rival creditors: `next` only ever moves by one,
        from k to k+1, in a CAS (insert when absent) that also adds tx k's net amount and one
        sale, and the walk calls this only once tx k is `credited` and its credit settled. A
        crash before the CAS leaves `next` at k and the next pass (finding k already credited)
        adds it then; a rival that advanced first makes our CAS fail, and the re-read shows
        `next > k`, so we add nothing. Hence earned == sum of net amounts of txs 0..next-1.
        """
        for _ in range(MAX_ATTEMPTS):
            current = self.value["next"]
            if current > k:
                return True
            if current < k:
                return False  # cannot happen while the walk starts at `next`; never skip a slot
            new = {
                "next": k + 1,
                "earned": self.value["earned"] + net,
                "sales": self.value["sales"] + sales,
            }
            try:
                if self.cas is None:
                    cas = self.store.insert(self.key, new)
                else:
                    cas = self.store.replace(self.key, new, self.cas)
            except (AlreadyExists, CasMismatch, Ambiguous):
                self.reload()  # ours may have landed (ambiguous) or a rival's did: re-read decides
                continue
            self.value, self.cas = new, cas
            return True
        raise locks.AccountBusy()


@dataclass
class _Walk:
    credited: int = 0
    sats: int = 0
    busy: bool = False
    missing: list[str] = field(default_factory=list)


def _credit_lock_fields(owner: str, n: int, k: int, tx: dict) -> dict:
    return {"owner": owner, "n": n, "slot": k, "amount": tx["amount"], "fee": tx["fee"]}


def _commit(
    store: Store, clock: Clock, tx_key: str, token: str, doc: Doc | None = None
) -> str | None:
    """The commit point: CAS the tx to `credited` under `token`. Returns the token it holds now,
    or None when the tx was rejected (the rejection's CAS from `uncredited` won the race).

    `doc` is the tx as the walk read it: its CAS saves a read, and if the tx changed since (a
    rival credited it), the CAS fails and the re-read decides.
    """
    for _ in range(MAX_ATTEMPTS):
        if doc is None:
            doc = store.get(tx_key)
        tx = doc.value
        if tx["state"] == "credited":
            return tx["creditToken"]
        if tx["state"] != "uncredited":
            return None  # rejected (adspace.review): its buyer was refunded, nobody is credited
        credited = {**tx, "state": "credited", "creditToken": token, "creditedAt": clock.now()}
        try:
            store.replace(tx_key, credited, doc.cas)
            return token
        except (CasMismatch, Ambiguous):
            doc = None  # re-read decides: ours landed, a rival's did, or try again
    raise locks.AccountBusy()


def finish_credit_lock(store: Store, clock: Clock, seller: str, lock: dict) -> None:
    """Roll a `credit` lock forward: commit the tx under its token if still uncredited, then
    settle; if the tx is credited under another token, release the lock with no effect."""
    try:
        winner = _commit(store, clock, lock["ref"], lock["token"])
    except NotFound:
        # The lock is only taken after reading the tx, and txs are never removed.
        log.error("credit lock of %s points at missing %s; releasing it", seller, lock["ref"])
        locks.release(store, seller, lock["token"])
        return
    if winner == lock["token"]:
        locks.settle(store, clock, seller, lock["token"], lock["amount"] - lock["fee"])
        _queue_credit(store, clock, lock["owner"], lock["n"], lock["slot"], lock)
    else:
        locks.release(store, seller, lock["token"])


def _ensure_settled(store: Store, clock: Clock, seller: str, credit_token: str) -> None:
    """A credited tx whose credit lock may still be on the seller: finish it if its lease ran
    out, else raise AccountBusy (its owner is still at work), so the cursor never runs ahead of
    the seller's balance."""
    try:
        lock = get_account(store, seller).value.get("lock")
    except NotFound:
        raise locks.AccountMissing() from None
    if not lock or lock["token"] != credit_token:
        return
    if not locks.lease_expired(lock, clock.now()):
        raise locks.AccountBusy()
    locks.finish(store, clock, seller, lock)


def _credit_one(
    store: Store, clock: Clock, owner: str, n: int, k: int, doc: Doc
) -> tuple[int, bool]:
    """Make sure tx k (out of review) is credited and settled. Returns the sats this call
    credited (0 if a previous pass or a rival did) and whether the tx is credited (False: it
    was rejected). Raises AccountBusy when the seller holds another live lock."""
    key, tx = gateway.tx_key(owner, n, k), doc.value
    seller = tx["seller"]
    if tx["state"] == "credited":
        _ensure_settled(store, clock, seller, tx["creditToken"])
        _queue_credit(store, clock, owner, n, k, tx)  # a pass that died before queueing it
        return 0, True
    if tx["state"] == "rejected":
        return 0, False
    lock = locks.take_lock(store, clock, seller, KIND, key, **_credit_lock_fields(owner, n, k, tx))
    winner = _commit(store, clock, key, lock["token"], doc)
    if winner != lock["token"]:
        # A rival credited it (its lock is gone: we hold the seller's lock now, and its lock could
        # only end through settle, so that credit is settled) or a rejection won: no effect.
        locks.release(store, seller, lock["token"])
        return 0, winner is not None
    if not locks.settle(store, clock, seller, lock["token"], net_amount(tx)):
        return 0, True  # our lock outlived its lease and someone else's recovery settled it
    _queue_credit(store, clock, owner, n, k, tx)
    return net_amount(tx), True


def _queue_credit(store: Store, clock: Clock, owner: str, n: int, k: int, tx: dict) -> None:
    """The seller's `credit` webhook event, once the credit is settled (idempotent by slot)."""
    data = {"campaign": n, "slot": k, "amount": tx["amount"], "fee": tx["fee"]}
    data["net"] = tx["amount"] - tx["fee"]
    webhooks.queue_safely(
        store, clock, owner, "credit", f"credit:{webhooks.sale_ref(owner, n, k)}", data
    )


def _walk(
    store: Store,
    clock: Clock,
    owner: str,
    n: int,
    cursors: dict[str, Doc] | None = None,
    campaign: dict | None = None,
    head: Doc | None = None,
) -> _Walk:
    """Credit `owner/n` from its cursor up to its `last` slot. A pass hands in what it already
    read in batches: the cursors, the campaign, and `head`, the tx at the cursor."""
    out = _Walk()
    cursor = _Cursor(store, owner, n, cursors)
    if campaign is None:
        try:
            campaign = gateway.get_campaign(store, owner, n).value
        except NotFound:
            return out
    # A `last` read a while ago is still safe: it only grows, and every slot up to any value
    # it ever held was paid for by its buyer.
    last = campaign.get("last")
    top = last["slot"] if last else -1
    k = cursor.value["next"]
    now = clock.now()
    if head is not None and review.in_review(head.value, now) and not _approved_after(campaign, k):
        # Review windows close in slot order (purchase and slot end both grow with k), so every
        # later sale is in review too, unless approved: and approvals are noted on the campaign.
        return out
    # Past a sale still in review the walk goes on crediting approved sales, but the cursor stays
    # at the first one in review: it only moves over sales that are settled for good.
    blocked = False
    known = {} if head is None else {gateway.tx_key(owner, n, k): head}
    while k <= top:
        end = min(top, k + CHUNK - 1)
        keys = [gateway.tx_key(owner, n, j) for j in range(k, end + 1)]
        unread = [key for key in keys if key not in known]
        txs = {**known, **(store.get_multi(unread) if unread else {})}
        known = {}
        for j, key in zip(range(k, end + 1), keys, strict=True):
            doc = txs.get(key)
            if doc is None:
                # Below `last` every sale has its tx; the audit reports this one. Wait here.
                out.missing.append(key)
                return out
            if review.in_review(doc.value, now):
                blocked = True
                continue
            try:
                sats, credited = _credit_one(store, clock, owner, n, j, doc)
                if sats:
                    out.credited += 1
                    out.sats += sats
                if blocked:
                    continue
                net = net_amount(doc.value) if credited else 0
                if not cursor.advance(j, net, 1 if credited else 0):
                    return out
            except locks.AccountBusy:
                out.busy = True
                return out
        k = end + 1
    return out


def _approved_after(campaign: dict, k: int) -> bool:
    reviews = campaign.get("reviews") or {}
    return any(int(i) > k and e["state"] == "approved" for i, e in reviews.items())


def credit_campaign(store: Store, clock: Clock, owner: str, n: int) -> int:
    """Credit every finished, uncredited sale of `owner/n` in slot order; returns how many.

    Stops (to try again next pass) at a sale still in flight or while the seller is busy.
    """
    return _walk(store, clock, owner, n).credited


def credit_all(store: Store, clock: Clock, threads: int = 1, shard: Shard = ALL) -> dict[str, int]:
    """One creditor pass over every campaign (the worker task "creditor").

    A pass with nothing to do costs the directory walk plus, per 500 campaigns, one batched read
    of their cursors and one of the tx each cursor points at: only campaigns whose next tx exists
    are walked (their campaign docs come in one more batched read). A seller found busy is
    skipped for the rest of the pass (the original's locked set): their other campaigns would
    only find the same lock.

    With `threads` > 1, different sellers are credited at once, each seller's campaigns in turn
    by one thread (so a pass never meets its own credit lock). Every step is a CAS or an insert
    that accepts "already done", exactly as when two worker processes overlap; the gain is that
    their durable writes share commits (a sale's credit is four: lock, tx, settle, cursor).

    With a `shard` (run_workers --shard), only the campaigns of the sellers it owns: a seller's
    credit lock is then only ever taken by one node.
    """
    counters = {"credited": 0, "sats": 0, "campaigns": 0, "busy": 0, "errors": 0}
    refs = [ref for ref in gateway.iter_campaign_refs(store) if shard.owns(account_key(ref[0]))]
    busy: set[str] = set()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="creditor") if threads > 1 else None
    try:
        for start in range(0, len(refs), CHUNK):
            chunk = refs[start : start + CHUNK]
            cursors = store.get_multi([gateway.creditcursor_key(o, n) for o, n in chunk])
            heads: dict[str, tuple[str, int]] = {}
            for owner, n in chunk:
                doc = cursors.get(gateway.creditcursor_key(owner, n))
                k = (doc.value if doc else _empty_cursor())["next"]
                heads[gateway.tx_key(owner, n, k)] = (owner, n)
            found = store.get_multi(list(heads))
            # Nothing sold since the cursor (or the sale is still in flight): nothing to walk.
            active = {key: ref for key, ref in heads.items() if key in found}
            campaigns = (
                store.get_multi([gateway.campaign_key(o, n) for o, n in active.values()])
                if active
                else {}
            )
            work: dict[str, list[tuple[int, Doc, Doc]]] = {}
            for key, (owner, n) in active.items():
                campaign = campaigns.get(gateway.campaign_key(owner, n))
                if campaign is None:
                    continue
                if owner in busy:
                    counters["busy"] += 1
                    continue
                work.setdefault(owner, []).append((n, campaign, found[key]))

            owners, lists = list(work), list(work.values())
            seller = partial(_credit_seller, store, clock, cursors=cursors)
            results = (pool.map if pool and len(owners) > 1 else map)(seller, owners, lists)
            for owner, result in zip(owners, results, strict=True):
                if result.pop("sellerBusy"):
                    busy.add(owner)
                for name, value in result.items():
                    counters[name] += value
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return counters


def _credit_seller(
    store: Store,
    clock: Clock,
    owner: str,
    campaigns: list[tuple[int, Doc, Doc]],
    cursors: dict[str, Doc],
) -> dict[str, int]:
    """Walk one seller's campaigns of a chunk in turn; stop at the first that finds them busy."""
    out = {"credited": 0, "sats": 0, "campaigns": 0, "busy": 0, "errors": 0, "sellerBusy": 0}
    for i, (n, campaign, head) in enumerate(campaigns):
        out["campaigns"] += 1
        try:
            walk = _walk(store, clock, owner, n, cursors, campaign.value, head)
        except locks.AccountMissing:
            log.error("seller %s of campaign %s has no account", owner, n)
            out["errors"] += 1
            continue
        except DocstoreError as exc:
            # Transient or ambiguous: everything so far is idempotent; the next pass resumes.
            log.warning("crediting %s/%s failed (%r); next pass", owner, n, exc)
            out["errors"] += 1
            continue
        out["credited"] += walk.credited
        out["sats"] += walk.sats
        for missing in walk.missing:
            log.error("%s is missing below its campaign's last slot", missing)
            out["errors"] += 1
        if walk.busy:
            # This campaign and every later one of the seller's wait for the next pass.
            out["busy"] += len(campaigns) - i
            out["sellerBusy"] = 1
            break
    return out


def run_creditor(store: Store, clock: Clock, shard: Shard = ALL) -> dict[str, int]:
    """The creditor as the worker runs it: sellers in parallel (CREDITOR_THREADS)."""
    return credit_all(store, clock, threads=settings.CREDITOR_THREADS, shard=shard)


# --- earnings, for the sell page ------------------------------------------------------------


def _earnings(store: Store, refs: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, int]]:
    """earned/sales from the cursor, plus whatever the txs past the cursor say.

    Txs past the cursor are read, not assumed: one credited by a pass that crashed before
    advancing the cursor counts as earned, so the figures are exact whatever the cursor lags.
    """
    campaigns = store.get_multi([gateway.campaign_key(o, n) for o, n in refs])
    cursors = store.get_multi([gateway.creditcursor_key(o, n) for o, n in refs])
    out: dict[tuple[str, int], dict[str, int]] = {}
    wanted: dict[str, tuple[str, int]] = {}
    for owner, n in refs:
        campaign = campaigns.get(gateway.campaign_key(owner, n))
        if campaign is None:
            continue
        doc = cursors.get(gateway.creditcursor_key(owner, n))
        cursor = doc.value if doc else _empty_cursor()
        out[(owner, n)] = {
            "earned": cursor["earned"],
            "sales": cursor["sales"],
            "pending": 0,
            "pendingSales": 0,
        }
        last = campaign.value.get("last")
        # Only sales up to `last` are finished: a sale past it is still in flight.
        for k in range(cursor["next"], (last["slot"] if last else -1) + 1):
            wanted[gateway.tx_key(owner, n, k)] = (owner, n)
    keys = list(wanted)
    for start in range(0, len(keys), CHUNK):
        for key, doc in store.get_multi(keys[start : start + CHUNK]).items():
            figures = out[wanted[key]]
            if doc.value["state"] == "credited":
                figures["earned"] += net_amount(doc.value)
                figures["sales"] += 1
            elif doc.value["state"] == "uncredited":
                figures["pending"] += net_amount(doc.value)
                figures["pendingSales"] += 1
    return out


def campaign_earnings(store: Store, owner: str, n: int) -> dict[str, int]:
    """`{earned, sales, pending, pendingSales}` of one campaign, in sats (net of the sale fee):
    earned = credited to the seller so far; pending = sold but not credited yet."""
    empty = {"earned": 0, "sales": 0, "pending": 0, "pendingSales": 0}
    return _earnings(store, [(owner, n)]).get((owner, n), empty)


def owner_earnings(
    store: Store, owner: str, indexes: list[int] | None = None
) -> dict[int, dict[str, int]]:
    """`campaign_earnings` for the campaigns of `owner` with these indexes (default: all), by
    campaign index, in batched reads."""
    if indexes is None:
        indexes = list(range(gateway.campaign_count(store, owner)))
    refs = [(owner, n) for n in indexes]
    return {n: figures for (_, n), figures in _earnings(store, refs).items()}
