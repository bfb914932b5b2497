"""Small read helpers for the adspace pages: what a page shows, gathered from the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.core.cache import cache
from django.urls import get_script_prefix, get_urlconf, reverse

from accounts.gateway import LEDGER_PAGE_SIZE, ledger_page_key
from accounts.money import format_btc
from config.cache import CacheUnavailable
from docstore import NotFound, Store

from . import gateway, pricing, serving, stats_report

# How many slots one read fetches while walking back from the last sale, and how far the walk
# goes at most. Each sale doubles the next price, so more than a few dozen queued slots would
# cost more bitcoin than exists; the cap only bounds a page against a corrupt campaign.
SLOT_WINDOW = 10
MAX_QUEUE = 100

_EXT_CACHE_PREFIX = "adspace:image-ext:"
# How pages print a UTC moment (followed by " UTC"), as the `date:"Y-m-d H:i:s"` filter would.
STAMP = "%Y-%m-%d %H:%M:%S"


def utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


@dataclass(frozen=True)
class CampaignRow:
    """One campaign in a list: what a seller or a buyer wants to see at a glance."""

    owner: str
    n: int
    width: int
    height: int
    min_price: int
    slot_hours: int
    slots_sold: int
    price: int
    disallowed: list[str]
    title: str
    site_url: str
    description: str
    paused: bool


def campaign_row(campaign: dict, now: int) -> CampaignRow:
    last = campaign.get("last")
    return CampaignRow(
        title=gateway.campaign_title(campaign),
        site_url=campaign.get("siteUrl", ""),
        description=campaign.get("description", ""),
        paused=bool(campaign.get("paused")),
        owner=campaign["owner"],
        n=campaign["n"],
        width=campaign["width"],
        height=campaign["height"],
        min_price=campaign["minPrice"],
        slot_hours=campaign["slotHours"],
        slots_sold=pricing.next_slot_index(last),
        price=pricing.current_price(campaign["minPrice"], last, now),
        disallowed=campaign.get("disallowed", []),
    )


@dataclass(frozen=True)
class SlotRow:
    index: int
    starts_at: datetime
    ends_at: datetime
    price: int
    filler: str
    live: bool

    # Display strings made here, once, rather than by template filters: `|date` costs ~20 us a
    # call, and the queue shows four of them a row.
    @property
    def starts_iso(self) -> str:
        return self.starts_at.isoformat()

    @property
    def starts_text(self) -> str:
        return self.starts_at.strftime(STAMP)

    @property
    def ends_iso(self) -> str:
        return self.ends_at.isoformat()

    @property
    def ends_text(self) -> str:
        return self.ends_at.strftime(STAMP)

    @property
    def price_btc(self) -> str:
        return format_btc(self.price)


def unended_slots(store: Store, owner: str, n: int, last: dict | None, now: int) -> list[SlotRow]:
    """Sold slots that have not ended, oldest first; the first one is live if it has started.

    Slots are back to back in index order, so walking back from the last sale can stop at the
    first slot that has ended: every earlier one ended before it.
    """
    if last is None:
        return []
    found: list[SlotRow] = []
    hi = last["slot"]
    while hi >= 0 and len(found) < MAX_QUEUE:
        lo = max(0, hi - SLOT_WINDOW + 1)
        slots = gateway.get_slots(store, owner, n, lo, hi)
        for k in range(hi, lo - 1, -1):
            slot = slots.get(k)
            if slot is None:
                continue  # an index below `last` always exists; never trust that blindly
            if slot["endsAt"] <= now:
                hi = -1
                break
            found.append(
                SlotRow(
                    index=k,
                    starts_at=utc(slot["startsAt"]),
                    ends_at=utc(slot["endsAt"]),
                    price=slot["price"],
                    filler=slot["filler"],
                    live=slot["startsAt"] <= now,
                )
            )
        else:
            hi = lo - 1
    found.reverse()
    return found


def get_filler_by_key(store: Store, key: str) -> dict | None:
    return gateway.get_many(store, [key]).get(key)


# sha -> URL of images already looked up, per store and URL configuration: an image never changes,
# so an entry never goes stale. ~200 bytes an entry.
_image_urls = serving.BoundedCache(20_000)


def image_urls(store: Store, shas: list[str]) -> dict[str, str]:
    """URL of each stored image, by sha256; images that do not exist are left out.

    The URL carries the image's extension, which only the image document knows. Images are
    immutable, so each URL is kept per process (and each extension in the shared cache, for the
    other processes) and the (large) document is read once.
    """
    urls: dict[str, str] = {}
    scope = (serving.store_ident(store), get_urlconf(), get_script_prefix())
    wanted = []
    for sha in dict.fromkeys(shas):
        url = _image_urls.get((scope, sha))
        if url is None:
            wanted.append(sha)
        else:
            urls[sha] = url
    if not wanted:
        return urls
    wanted.sort()
    exts: dict[str, str] = {}
    try:
        cached = cache.get_many([_EXT_CACHE_PREFIX + s for s in wanted])
    except CacheUnavailable:  # read from the store instead
        cached = {}
    missing = []
    for sha in wanted:
        ext = cached.get(_EXT_CACHE_PREFIX + sha)
        if ext is None:
            missing.append(sha)
        else:
            exts[sha] = ext
    if missing:
        found = gateway.get_many(store, [gateway.image_key(s) for s in missing])
        fresh = {}
        for sha in missing:
            doc = found.get(gateway.image_key(sha))
            if doc is not None:
                exts[sha] = fresh[_EXT_CACHE_PREFIX + sha] = doc["ext"]
        try:
            cache.set_many(fresh, timeout=None)
        except CacheUnavailable:
            pass  # kept in this process; others read the documents
    for sha, ext in exts.items():
        urls[sha] = url = reverse("image", args=[sha, ext])
        _image_urls.put((scope, sha), url)
    return urls


def nickname_in_use(store: Store, username: str, nickname: str) -> bool:
    """Whether the user already has an ad by this name (case-insensitively).

    A cheap check before the image is stored and an ad index is spent; create_filler's claim
    stays the authority when two uploads race.
    """
    try:
        claim = store.get(gateway.fillernick_key(username, nickname)).value
    except NotFound:
        return False
    try:
        gateway.get_filler(store, username, claim["index"])
    except NotFound:
        return False  # a claim left by a crash; create_filler takes it over
    return True


class NewestFirstFillers:
    """A user's ads, newest first, as a sequence the Paginator can slice (one read a page)."""

    def __init__(self, store: Store, username: str):
        self.store, self.username = store, username
        self.total = gateway.filler_count(store, username)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, item: slice) -> list[dict]:
        start, stop, _ = item.indices(self.total)
        if start >= stop:
            return []
        # Newest-first [start, stop) is index order [total - stop, total - start).
        lo = self.total - stop
        fillers = gateway.user_fillers(self.store, self.username, lo, stop - start, self.total)
        fillers.reverse()
        return fillers


# --- a buyer's purchases, read from their ledger --------------------------------------------

# Ledger pages (100 entries each) one purchases page reads at most while looking for buys: a
# page view stays bounded however many deposits or withdrawals lie between two purchases.
PURCHASE_SCAN_PAGES = 10


def parse_slot_key(key: str) -> tuple[str, int, int] | None:
    """(owner, n, k) of a `slot::<owner>::<n>::<k>` key, or None for any other ref."""
    parts = key.split("::")
    if len(parts) != 4 or parts[0] != "slot" or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[1], int(parts[2]), int(parts[3])


@dataclass(frozen=True)
class PurchasesPage:
    rows: list[dict]
    older: int | None  # the `before` cursor of the next (older) page, if there is one
    total: int  # ledger entries, the cursor's upper bound


def ledger_entries(store: Store, username: str, account: dict, lo: int, hi: int) -> list[dict]:
    """The account's ledger entries with oldest-first position in [lo, hi), in one read."""
    pages, recent = account.get("ledgerPages", 0), account.get("ledger", [])
    paged_end = pages * LEDGER_PAGE_SIZE
    found = {}
    if lo < paged_end:
        first, last = lo // LEDGER_PAGE_SIZE, (min(hi, paged_end) - 1) // LEDGER_PAGE_SIZE
        found = store.get_multi([ledger_page_key(username, p) for p in range(first, last + 1)])
    out = []
    for i in range(lo, hi):
        if i >= paged_end:
            out.append(recent[i - paged_end])
            continue
        doc = found.get(ledger_page_key(username, i // LEDGER_PAGE_SIZE))
        entries = doc.value["entries"] if doc is not None else []
        if i % LEDGER_PAGE_SIZE < len(entries):
            out.append(entries[i % LEDGER_PAGE_SIZE])
    return out


def purchases_page(
    store: Store, username: str, account: dict, before: int | None, size: int, now: int
) -> PurchasesPage:
    """Up to `size` of the user's purchases, newest first, from ledger positions below `before`.

    Each purchase is a `buy` ledger entry (its ref is the slot key), so the ledger is the index:
    the walk goes back a ledger page at a time, and the slots, campaigns and ads it found are
    then read in one batch each.
    """
    total = account.get("ledgerPages", 0) * LEDGER_PAGE_SIZE + len(account.get("ledger", []))
    hi = total if before is None else min(before, total)
    found: list[tuple[int, dict]] = []
    for _ in range(PURCHASE_SCAN_PAGES):
        if hi <= 0 or len(found) >= size:
            break
        lo = max(0, (hi - 1) // LEDGER_PAGE_SIZE * LEDGER_PAGE_SIZE)
        chunk = ledger_entries(store, username, account, lo, hi)
        for offset in range(len(chunk) - 1, -1, -1):
            entry = chunk[offset]
            if entry["kind"] == "buy" and parse_slot_key(str(entry["ref"])):
                found.append((lo + offset, entry))
                if len(found) == size:
                    hi = lo + offset
                    break
        else:
            hi = lo
    older = hi if hi > 0 else None
    return PurchasesPage(
        rows=_purchase_rows(store, [e for _, e in found], now), older=older, total=total
    )


def purchase_review(tx: dict, now: int) -> dict:
    """Where the seller's review of a bought slot stands, as its buyer sees it."""
    if tx["state"] == "rejected":
        rejection = tx.get("rejection") or {}
        by = "staff" if rejection.get("staff") else "the seller"
        return {"state": "rejected", "reason": rejection.get("reason", ""), "by": by}
    if tx.get("takenDown"):
        return {"state": "taken_down", "reason": tx["takenDown"].get("reason", ""), "by": "staff"}
    if tx.get("approvedAt"):
        return {"state": "approved"}
    if tx["state"] == "uncredited" and now < tx.get("reviewUntil", 0):
        return {"state": "in_review", "until": utc(tx["reviewUntil"])}
    return {"state": "approved"}


def _purchase_rows(store: Store, entries: list[dict], now: int) -> list[dict]:
    refs = [parse_slot_key(e["ref"]) for e in entries]
    slots = gateway.get_many(store, [e["ref"] for e in entries])
    campaign_keys = {gateway.campaign_key(o, n) for o, n, _ in refs}
    campaigns = gateway.get_many(store, sorted(campaign_keys))
    fillers = gateway.get_many(store, sorted({s["filler"] for s in slots.values()}))
    txs = gateway.get_many(store, [gateway.tx_key(o, n, k) for o, n, k in refs])
    rows = []
    for entry, (owner, n, k) in zip(entries, refs, strict=True):
        slot = slots.get(entry["ref"])
        tx = txs.get(gateway.tx_key(owner, n, k))
        campaign = campaigns.get(gateway.campaign_key(owner, n))
        filler = fillers.get(slot["filler"]) if slot else None
        rows.append(
            {
                "owner": owner,
                "n": n,
                "k": k,
                "anchor": f"p-{owner}-{n}-{k}",
                "title": gateway.campaign_title(campaign) if campaign else f"{owner} #{n}",
                "ad": filler,
                "price": -entry["delta"],
                "starts_at": utc(slot["startsAt"]) if slot else None,
                "ends_at": utc(slot["endsAt"]) if slot else None,
                "review": purchase_review(tx, now) if tx else None,
                "slot": slot,
            }
        )
    _add_delivery(store, rows)
    return rows


def _add_delivery(store: Store, rows: list[dict]) -> None:
    """Each purchase's impressions and clicks (per day and in all), from one report."""
    found = stats_report.report(
        store, [(r["owner"], r["n"], r["k"], r["slot"]) for r in rows if r["slot"]]
    )
    by_ref = {(s.owner, s.n, s.k): s for s in found.slots}
    for row in rows:
        row["delivery"] = by_ref.get((row["owner"], row["n"], row["k"]))
