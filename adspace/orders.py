"""Standing orders: "buy the next slot with this ad when the price falls to X" (DESIGN.md 6.6b).

Documents (all changed by CAS only; placing an order takes no hold on the balance):
- `order::<buyer>::<i>`: campaign (`owner`, `n`), `filler` (the buyer's ad index), `limit` (sats),
  `expiresAt` (or None), `createdAt`, `version` (raised by every write: a buy lock names the
  version it priced, so an edit or a cancel in between makes that lock give up), and `state`:
  `open -> executing{token, slot, price} -> bought{slot, price} | open (the slot went to
  someone else)`, `open -> failed{reason} | cancelled | expired`, and `void` (a tombstone: a
  placement that stalled between its writes, see below).
- `orderuser::<buyer>`: `next` order index and `open` (index -> placed at): the one document a
  placement CASes, so MAX_OPEN_ORDERS holds against racing placements. Finished orders leave it
  after their final write; a crash in between is tidied at the next placement that needs room.
- `orderbook::<owner>::<n>`: the campaign's waiting orders, `entries` (`<buyer>::<i>` ->
  `{limit, createdAt, expiresAt, seq}`) and `next` (seq: equal limits go by the earlier order).
  The executor reads this one document per campaign to find the due order. `orderbookdir::<g>`
  (+ counter) lists every campaign that has a book; written before the book it points to.

Placing: reserve the index on `orderuser` -> add the book entry -> insert the order doc. The
entry is written before the order (a walker never misses an order); an entry whose order is
still missing after GRACE_SECONDS is voided by inserting the tombstone at the order's key, so a
stalled placement can never insert it later (its insert fails and the buyer is told to retry).

The executor and its recovery are in adspace.order_exec.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.conf import settings

from accounts import locks
from accounts.gateway import walk_directory
from accounts.money import MoneyError, format_btc, parse_btc
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

from . import buy, gateway, pricing

ORDERBOOKDIR = "orderbookdir"
GRACE_SECONDS = 60
MAX_ATTEMPTS = 50
FINAL = ("bought", "failed", "cancelled", "expired", "void")
LIVE = ("open", "executing")


def order_key(buyer: str, i: int) -> str:
    return f"order::{buyer}::{i}"


def order_ref(buyer: str, i: int) -> str:
    return f"{buyer}::{i}"


def key_of_ref(ref: str) -> str:
    return f"order::{ref}"


def user_key(buyer: str) -> str:
    return f"orderuser::{buyer}"


def book_key(owner: str, n: int) -> str:
    return f"orderbook::{owner}::{n}"


def orderbookdir_key(g: int) -> str:
    return f"orderbookdir::{g}"


class OrderError(locks.AccountError):
    status = 400
    message = "The order was refused; nothing was changed."


class OrderMissing(OrderError):
    status = 404
    message = "There is no such order of yours."


class OrderCampaignMissing(OrderError):
    status = 404
    message = "That campaign does not exist."


class OrderBusy(OrderError):
    status = 409
    message = "This order is being executed right now; look again in a moment."


class OrderClosed(OrderError):
    status = 409

    def __init__(self, state: str):
        super().__init__(f"This order is already {state}; nothing was changed.")


class TooManyOrders(OrderError):
    def __init__(self, limit: int):
        super().__init__(
            f"You already have {limit} open orders, the most one account may have; cancel one "
            "first. Nothing was placed."
        )


class PlacementStalled(OrderError):
    status = 503
    message = "Placing the order took too long and was undone; nothing was placed. Try again."


# --- input --------------------------------------------------------------------------------------


def parse_limit(text: object) -> int:
    """The limit as typed, in BTC. Refuses what parse_btc refuses (more than 8 decimals,
    negatives, NaN, infinity, exponents, garbage) and zero."""
    try:
        limit = parse_btc(text)  # type: ignore[arg-type]
    except MoneyError as exc:
        raise OrderError(f"Limit: {exc.message} Nothing was placed or changed.") from None
    if limit <= 0:
        raise OrderError("The limit must be more than zero. Nothing was placed or changed.")
    return limit


EXPIRY_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def parse_expiry(text: object, now: int) -> int | None:
    """An optional expiry typed as UTC `YYYY-MM-DD HH:MM` (what a datetime-local input sends);
    empty means none. It must be in the future."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    value = text.strip() if isinstance(text, str) else ""
    for fmt in EXPIRY_FORMATS:
        try:
            moment = datetime.datetime.strptime(value, fmt).replace(tzinfo=datetime.UTC)
            break
        except ValueError:
            continue
    else:
        raise OrderError(
            "Write the expiry as YYYY-MM-DD HH:MM (UTC), or leave it empty. Nothing was placed."
        )
    expires_at = int(moment.timestamp())
    if expires_at <= now:
        raise OrderError("The expiry is in the past; choose a later time. Nothing was placed.")
    return expires_at


def check_limit(campaign: dict, limit: int, now: int) -> None:
    """A limit must reach the minimum (else it never fills) and not exceed the price now (an
    order waits for the price to fall; at a higher limit, buying now costs less)."""
    if limit < campaign["minPrice"]:
        raise OrderError(
            f"The limit {format_btc(limit)} BTC is below this campaign's minimum price of "
            f"{format_btc(campaign['minPrice'])} BTC: it could never fill. Nothing was changed."
        )
    price = pricing.current_price(campaign["minPrice"], campaign.get("last"), now)
    if limit > price:
        raise OrderError(
            f"The price is {format_btc(price)} BTC now, below your limit of "
            f"{format_btc(limit)} BTC: buy the slot now instead. An order waits for the price "
            "to fall to its limit. Nothing was changed."
        )


def _campaign_for(store: Store, buyer: str, owner: str, n: int, filler_index: int) -> dict:
    """The campaign, if the buyer may order its next slot with that ad (the buy's own checks)."""
    try:
        campaign = gateway.get_campaign(store, owner, n).value
    except NotFound:
        raise OrderCampaignMissing() from None
    if buy.is_own_campaign(buyer, campaign):
        raise OrderError("You cannot order a slot of your own campaign. Nothing was placed.")
    if campaign.get("paused"):
        raise OrderError("The seller has paused this campaign; no order can be placed now.")
    try:
        buy.check_filler(store, buyer, filler_index, campaign)
    except buy.FillerInvalid as exc:
        raise OrderError(f"{exc} Nothing was placed.") from None
    return campaign


# --- placing ------------------------------------------------------------------------------------


def place_order(
    store: Store,
    clock: Clock,
    buyer: str,
    owner: str,
    n: int,
    filler_index: int,
    limit: int,
    expires_at: int | None,
) -> int:
    """Place an order and return its index. Every refusal comes before the first write."""
    campaign = _campaign_for(store, buyer, owner, n, filler_index)
    now = clock.now()
    check_limit(campaign, limit, now)
    if expires_at is not None and expires_at <= now:
        raise OrderError("The expiry is in the past; choose a later time. Nothing was placed.")
    i = _reserve_index(store, clock, buyer)
    ensure_book(store, owner, n)
    entry = {"limit": limit, "createdAt": now, "expiresAt": expires_at}
    _change_book(store, owner, n, lambda book: _with_entry(book, order_ref(buyer, i), entry))
    doc = {
        "buyer": buyer, "i": i, "owner": owner, "n": n, "filler": filler_index, "limit": limit,
        "expiresAt": expires_at, "createdAt": now, "state": "open", "version": 1,
    }  # fmt: skip
    try:
        store.insert(order_key(buyer, i), doc)
    except AlreadyExists:
        if store.get(order_key(buyer, i)).value["state"] == "void":
            raise PlacementStalled() from None
    return i


def _reserve_index(store: Store, clock: Clock, buyer: str) -> int:
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(user_key(buyer))
        except NotFound:
            try:
                store.insert(user_key(buyer), {"next": 0, "open": {}})
            except AlreadyExists:
                pass
            continue
        held = dict(doc.value["open"])
        if len(held) >= settings.MAX_OPEN_ORDERS:
            held = _still_open(store, clock, buyer, held)
        if len(held) >= settings.MAX_OPEN_ORDERS:
            raise TooManyOrders(settings.MAX_OPEN_ORDERS)
        i = doc.value["next"]
        held[str(i)] = clock.now()
        try:
            store.replace(user_key(buyer), {"next": i + 1, "open": held}, doc.cas)
            return i
        except CasMismatch:
            continue
    raise locks.AccountBusy()


def _still_open(store: Store, clock: Clock, buyer: str, held: dict) -> dict:
    """The user's open set without orders that finished (or whose placement stalled)."""
    found = store.get_multi([order_key(buyer, int(i)) for i in held])
    now = clock.now()
    kept = {}
    for i, placed_at in held.items():
        doc = found.get(order_key(buyer, int(i)))
        if doc is None:
            if now - placed_at < GRACE_SECONDS or not void(store, order_key(buyer, int(i))):
                kept[i] = placed_at
        elif doc.value["state"] in LIVE:
            kept[i] = placed_at
    return kept


def void(store: Store, key: str) -> bool:
    """Insert the tombstone where a stalled placement's order would go; True if it is void now
    (the placement can never complete), False if the order exists after all."""
    buyer, i = key.split("::")[1:]
    try:
        store.insert(key, {"buyer": buyer, "i": int(i), "state": "void", "version": 1})
        return True
    except AlreadyExists:
        return store.get(key).value["state"] == "void"


def ensure_book(store: Store, owner: str, n: int) -> None:
    try:
        store.get(book_key(owner, n))
        return
    except NotFound:
        pass
    # Directory entry first (DESIGN.md 3): a book nobody can reach must never exist.
    g = store.counter(ORDERBOOKDIR, 1, initial=0)
    store.insert(orderbookdir_key(g), {"owner": owner, "n": n})
    try:
        store.insert(book_key(owner, n), {"next": 0, "entries": {}})
    except AlreadyExists:
        pass


def _with_entry(book: dict, ref: str, entry: dict) -> dict | None:
    if ref in book["entries"]:
        return None
    entries = {**book["entries"], ref: {**entry, "seq": book["next"]}}
    return {"next": book["next"] + 1, "entries": entries}


def _change_book(store: Store, owner: str, n: int, change) -> None:
    """CAS the book with `change(book) -> new book | None (nothing to do)`."""
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(book_key(owner, n))
        except NotFound:
            return
        new = change(doc.value)
        if new is None:
            return
        try:
            store.replace(book_key(owner, n), new, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue
    raise locks.AccountBusy()


def book_refs(store: Store) -> list[tuple[str, int]]:
    """Every campaign with an order book: the executor's campaign list (shard it by filtering)."""
    refs: dict[tuple[str, int], None] = {}
    for entry in walk_directory(store, ORDERBOOKDIR, orderbookdir_key):
        refs[(entry["owner"], entry["n"])] = None
    return list(refs)


# --- finishing, editing, cancelling ---------------------------------------------------------


def unlist(store: Store, order: dict) -> None:
    """Take a finished order out of its book and its owner's open set (both idempotent)."""
    ref, i = order_ref(order["buyer"], order["i"]), str(order["i"])

    def without(book: dict) -> dict | None:
        if ref not in book["entries"]:
            return None
        return {**book, "entries": {k: v for k, v in book["entries"].items() if k != ref}}

    if "owner" in order:
        _change_book(store, order["owner"], order["n"], without)
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(user_key(order["buyer"]))
        except NotFound:
            return
        if i not in doc.value["open"]:
            return
        held = {k: v for k, v in doc.value["open"].items() if k != i}
        try:
            store.replace(user_key(order["buyer"]), {**doc.value, "open": held}, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue


def close(store: Store, clock: Clock, key: str, doc: Doc, state: str, **fields) -> bool:
    """CAS an open order (as read in `doc`) to a final state, then unlist it. False if the order
    changed since it was read (nothing written)."""
    order = doc.value
    new = {**order, **fields, "state": state, "version": order["version"] + 1}
    new["finishedAt"] = clock.now()
    try:
        store.replace(key, new, doc.cas)
    except CasMismatch:
        return False
    except Ambiguous:
        now_there = store.get(key).value
        if (now_there["state"], now_there["version"]) != (state, new["version"]):
            return False
    unlist(store, new)
    return True


def _own_order(store: Store, buyer: str, i: int) -> Doc:
    try:
        doc = store.get(order_key(buyer, i))
    except NotFound:
        raise OrderMissing() from None
    if doc.value["state"] == "void":
        raise OrderMissing()
    return doc


def _must_be_open(order: dict) -> None:
    if order["state"] == "executing":
        raise OrderBusy()
    if order["state"] != "open":
        raise OrderClosed(order["state"])


def cancel_order(store: Store, clock: Clock, buyer: str, i: int) -> None:
    """open -> cancelled, one CAS. An execution already under way wins (OrderBusy): its buy
    either takes the slot or puts the order back to open, never both."""
    for _ in range(MAX_ATTEMPTS):
        doc = _own_order(store, buyer, i)
        _must_be_open(doc.value)
        if close(store, clock, order_key(buyer, i), doc, "cancelled"):
            return
    raise locks.AccountBusy()


def edit_limit(store: Store, clock: Clock, buyer: str, i: int, limit: int) -> None:
    """A new limit for an open order: CAS the order (the truth), then its book entry."""
    for _ in range(MAX_ATTEMPTS):
        doc = _own_order(store, buyer, i)
        order = doc.value
        _must_be_open(order)
        try:
            campaign = gateway.get_campaign(store, order["owner"], order["n"]).value
        except NotFound:
            raise OrderCampaignMissing() from None
        check_limit(campaign, limit, clock.now())
        new = {**order, "limit": limit, "version": order["version"] + 1}
        try:
            store.replace(order_key(buyer, i), new, doc.cas)
        except CasMismatch:
            continue
        sync_entry(store, new)
        return
    raise locks.AccountBusy()


def sync_entry(store: Store, order: dict) -> None:
    """Make the book entry's limit the order's (after an edit, or a crash in the middle of one)."""
    ref = order_ref(order["buyer"], order["i"])

    def synced(book: dict) -> dict | None:
        entry = book["entries"].get(ref)
        if entry is None or entry["limit"] == order["limit"]:
            return None
        return {**book, "entries": {**book["entries"], ref: {**entry, "limit": order["limit"]}}}

    _change_book(store, order["owner"], order["n"], synced)


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookSummary:
    waiting: int
    highest: int | None


def live_entries(book: dict, now: int) -> list[tuple[str, dict]]:
    """Entries not past their expiry, in execution order: highest limit, then earliest."""
    live = [
        (ref, e)
        for ref, e in book["entries"].items()
        if e.get("expiresAt") is None or e["expiresAt"] > now
    ]
    live.sort(key=lambda item: (-item[1]["limit"], item[1]["seq"]))
    return live


def book_summary(store: Store, owner: str, n: int, now: int) -> BookSummary:
    """How many orders wait on the campaign and the highest limit (never who placed them)."""
    try:
        book = store.get(book_key(owner, n)).value
    except NotFound:
        book = None
    return summarize_book(book, now)


def summarize_book(book: dict | None, now: int) -> BookSummary:
    """book_summary of a book already read (None: the campaign has none)."""
    if book is None:
        return BookSummary(0, None)
    live = live_entries(book, now)
    return BookSummary(len(live), live[0][1]["limit"] if live else None)


def user_orders(store: Store, buyer: str, before: int | None, size: int) -> tuple[list, int]:
    """The buyer's orders with index below `before` (default: all), newest first, at most
    `size`; and the count drawn."""
    try:
        drawn = store.get(user_key(buyer)).value["next"]
    except NotFound:
        return [], 0
    top = drawn if before is None else min(before, drawn)
    keys = [order_key(buyer, i) for i in range(top - 1, max(top - 1 - size, -1), -1)]
    found = store.get_multi(keys)
    orders = [found[k].value for k in keys if k in found and found[k].value["state"] != "void"]
    return orders, drawn
