"""Small read helpers for the adspace pages: what a page shows, gathered from the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.core.cache import cache
from django.urls import get_script_prefix, get_urlconf, reverse

from accounts.money import format_btc
from docstore import NotFound, Store

from . import gateway, pricing, serving

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


def campaign_row(campaign: dict, now: int) -> CampaignRow:
    last = campaign.get("last")
    return CampaignRow(
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
    cached = cache.get_many([_EXT_CACHE_PREFIX + s for s in wanted])
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
        cache.set_many(fresh, timeout=None)
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
