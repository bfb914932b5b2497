"""Buying the next slot of a campaign (DESIGN.md 6.2) and finishing any sale a crash left behind.

The order is the original's "perfected" flow, made complete:
  1. lock the buyer's account (the balance must cover the price; nothing else may spend meanwhile)
  2. insert the slot doc: the commit point. Whoever inserts slot k owns it.
  3. insert the tx doc (accept "exists")
  4. debit and unlock the buyer in one CAS (only while the lock holds our token)
  5. point the campaign's `last` at the slot (accept "already there or later")
Before step 1 the buyer is checked: a seller may not buy a slot of their own campaign (each sale
doubles the next price, so buying one's own slot would let a seller raise the price others pay,
for a fee). Refused before the lock, nothing is charged.
A paused campaign (its owner stopped new sales) is refused the same way, before the lock, from
the campaign read that prices the sale. A buy that read the campaign before a pause may still
commit afterwards (from step 2, or its lock's recovery): it completes normally, as a sale that
happened at the moment of the pause; the pause stops every buy that reads after it.
Only step 1 can fail for the buyer. After step 2 the sale is final whatever crashes: steps 3-5
are idempotent and run from the lock or the slot doc by whoever gets there first (the buyer, the
next buyer of that campaign, the lock's lease recovery, or the campaign recovery pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from accounts import locks
from accounts.gateway import account_key, get_account
from accounts.money import fee_up
from accounts.shards import ALL, Shard
from docstore import AlreadyExists, Ambiguous, Clock, NotFound, Store

from . import gateway, pricing, review, webhooks


class BuyError(locks.AccountError):
    pass


class CampaignMissing(BuyError):
    message = "That campaign does not exist."


class FillerInvalid(BuyError):
    message = "Choose one of your own ads."


class PriceChanged(BuyError):
    message = "The price has changed."

    def __init__(self, price: int):
        super().__init__(self.message)
        self.price = price


class CampaignPaused(BuyError):
    message = "The seller has paused this campaign: no slot can be bought now; nothing was charged."


class OwnCampaign(BuyError):
    message = "You cannot buy a slot of your own campaign; nothing was charged."


def is_own_campaign(buyer: str, campaign: dict) -> bool:
    # Usernames are one user in any case (DESIGN.md 4); the stored spelling is the same anyway.
    return buyer.casefold() == campaign["owner"].casefold()


class SlotTaken(BuyError):
    message = "Someone else just bought that slot; you were not charged."


class Withdrawn(BuyError):
    message = "The buy was withdrawn before it could take the slot; you were not charged."


@dataclass(frozen=True)
class Sale:
    owner: str
    n: int
    slot: int
    price: int
    purchased_at: int
    starts_at: int
    ends_at: int


def sale_fee(price: int) -> int:
    return fee_up(price, settings.SALE_FEE_PERMILLE)


def check_filler(store: Store, buyer: str, filler_index: int, campaign: dict) -> dict:
    """The buyer's ad `filler_index`, if it may fill a slot of `campaign` (else FillerInvalid,
    saying why): it exists, is not archived and has the campaign's size."""
    try:
        filler = gateway.get_filler(store, buyer, filler_index)
    except NotFound:
        raise FillerInvalid() from None
    if filler.get("archived"):
        raise FillerInvalid(f"Your ad '{filler['nickname']}' is archived; choose another ad.")
    if (filler["width"], filler["height"]) != (campaign["width"], campaign["height"]):
        raise FillerInvalid(
            f"This space takes {campaign['width']}x{campaign['height']} px ads; "
            f"'{filler['nickname']}' is {filler['width']}x{filler['height']} px."
        )
    return filler


def buy_next_slot(
    store: Store,
    clock: Clock,
    buyer: str,
    owner: str,
    n: int,
    filler_index: int,
    accepted_price: int,
    *,
    lock_fields: dict | None = None,
    before_commit: Callable[[dict], bool] | None = None,
) -> Sale:
    """Buy the next slot of `owner/n` with the buyer's ad, at no more than `accepted_price`.

    A standing order (adspace.orders) adds `lock_fields` to the buy lock and `before_commit`,
    called with the taken lock just before the commit point: False releases the lock with no
    effect and raises Withdrawn. The lock's finisher must then decide the same way."""
    try:
        campaign = gateway.get_campaign(store, owner, n).value
    except NotFound:
        raise CampaignMissing() from None
    if is_own_campaign(buyer, campaign):
        raise OwnCampaign()
    if campaign.get("paused"):
        raise CampaignPaused()
    check_filler(store, buyer, filler_index, campaign)
    k = pricing.next_slot_index(campaign.get("last"))
    if finish_lagging_sales(store, clock, owner, n, k):
        # The campaign lagged behind a sale; now that it is finished, price once more.
        campaign = gateway.get_campaign(store, owner, n).value
        if campaign.get("paused"):
            raise CampaignPaused()
        k = pricing.next_slot_index(campaign.get("last"))
    now = clock.now()
    last = campaign.get("last")
    price = pricing.current_price(campaign["minPrice"], last, now)
    if price > accepted_price:
        raise PriceChanged(price)
    starts_at, ends_at = pricing.next_slot_times(campaign["slotHours"], last, now)
    lock = locks.take_lock(
        store, clock, buyer, "buy", gateway.slot_key(owner, n, k), spend=price,
        owner=owner, n=n, slot=k, filler=gateway.filler_key(buyer, filler_index), price=price,
        purchasedAt=now, startsAt=starts_at, endsAt=ends_at, **(lock_fields or {}),
    )  # fmt: skip
    if before_commit is not None and not before_commit(lock):
        locks.release(store, buyer, lock["token"])
        raise Withdrawn()
    if not _insert_slot(store, buyer, lock):
        locks.release(store, buyer, lock["token"])
        raise SlotTaken()
    complete_sale(store, clock, buyer, lock)
    return Sale(owner, n, k, price, now, starts_at, ends_at)


def _slot_doc(buyer: str, lock: dict) -> dict:
    return {
        "buyer": buyer,
        "filler": lock["filler"],
        "price": lock["price"],
        "purchasedAt": lock["purchasedAt"],
        "startsAt": lock["startsAt"],
        "endsAt": lock["endsAt"],
        "token": lock["token"],
    }


def _insert_slot(store: Store, buyer: str, lock: dict) -> bool:
    """The commit point. True if the slot is ours (now or from an earlier attempt)."""
    key = gateway.slot_key(lock["owner"], lock["n"], lock["slot"])
    while True:
        try:
            store.insert(key, _slot_doc(buyer, lock))
            return True
        except (AlreadyExists, Ambiguous):
            # An ambiguous insert is re-read, never repeated blindly: the slot tells who won.
            try:
                return store.get(key).value["token"] == lock["token"]
            except NotFound:
                continue


def _tx_doc(owner: str, slot: dict) -> dict:
    return {
        "buyer": slot["buyer"],
        "seller": owner,
        "amount": slot["price"],
        "fee": sale_fee(slot["price"]),
        "state": "uncredited",
        "token": slot["token"],
        # Fixed at sale time from the slot (the same whoever writes the tx): see adspace.review.
        "reviewUntil": review.window_end(slot["purchasedAt"], slot["endsAt"]),
    }


def _campaign_last(k: int, slot: dict) -> dict:
    return {
        "slot": k,
        "purchasedAt": slot["purchasedAt"],
        "startsAt": slot["startsAt"],
        "endsAt": slot["endsAt"],
        "price": slot["price"],
    }


def _finish_from_slot(store: Store, clock: Clock, owner: str, n: int, k: int, slot: dict) -> None:
    """Steps 3-5 for a slot that exists: tx, debit and unlock, campaign. Idempotent."""
    try:
        store.insert(gateway.tx_key(owner, n, k), _tx_doc(owner, slot))
    except AlreadyExists:
        pass
    # settle() only acts while the buyer's lock still holds this sale's token.
    locks.settle(store, clock, slot["buyer"], slot["token"], -slot["price"])
    # Every path that finishes a sale (the buyer, the next buyer, lock recovery, the campaign
    # pass) comes through here; before step 5, so a crash before it is rolled forward through
    # here again. The event ids make repeats no-ops.
    webhooks.queue_sale(store, clock, owner, n, k, slot)
    gateway.advance_campaign_last(store, owner, n, _campaign_last(k, slot))


def complete_sale(store: Store, clock: Clock, buyer: str, lock: dict) -> None:
    _finish_from_slot(store, clock, lock["owner"], lock["n"], lock["slot"], _slot_doc(buyer, lock))


def finish_lagging_sales(store: Store, clock: Clock, owner: str, n: int, k: int) -> int:
    """Finish every sale at index k, k+1... whose slot exists while the campaign lags."""
    finished = 0
    while True:
        try:
            slot = store.get(gateway.slot_key(owner, n, k)).value
        except NotFound:
            return finished
        _finish_from_slot(store, clock, owner, n, k, slot)
        finished += 1
        k += 1


def finish_buy_lock(store: Store, clock: Clock, buyer: str, lock: dict) -> None:
    """Roll a buy lock forward: take the slot if it is still free, then finish the sale; if
    another buyer's sale holds the slot, release the lock with no debit."""
    if _insert_slot(store, buyer, lock):
        complete_sale(store, clock, buyer, lock)
    else:
        locks.release(store, buyer, lock["token"])


def recover_campaigns(store: Store, clock: Clock, shard: Shard = ALL) -> int:
    """Recovery pass: finish every sale whose slot exists while its campaign's `last` lags (of
    the campaigns whose seller `shard` owns)."""
    refs = [ref for ref in gateway.iter_campaign_refs(store) if shard.owns(account_key(ref[0]))]
    finished = 0
    for start in range(0, len(refs), 500):
        chunk = refs[start : start + 500]
        campaigns = store.get_multi([gateway.campaign_key(o, n) for o, n in chunk])
        next_keys = {}
        for owner, n in chunk:
            doc = campaigns.get(gateway.campaign_key(owner, n))
            if doc is None:
                continue
            k = pricing.next_slot_index(doc.value.get("last"))
            next_keys[gateway.slot_key(owner, n, k)] = (owner, n, k)
        # One batched read answers "does slot last+1 exist?" for the whole chunk.
        for key in store.get_multi(list(next_keys)):
            owner, n, k = next_keys[key]
            finished += finish_lagging_sales(store, clock, owner, n, k)
    return finished


def buyer_balance(store: Store, buyer: str) -> int:
    return get_account(store, buyer).value["balance"]
