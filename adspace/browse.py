"""Finding the right space: campaigns filtered by size, price now, slot length and site, sorted by
price now; and the home page's four lists of live campaigns.

The index is no document. KV only (no SQL++), so instead of a per-size directory that every
create, edit, pause and sale would have to keep right (a second write in each protocol, a crash
window to repair, and a hot document per common size written by every sale of that size), each
process keeps a **snapshot of every campaign's head**: the fields a list filters, sorts and shows
(owner, n, title, size, slot hours, minimum price, site URL, paused, createdAt and the last
sale's price, purchase time and end). It is built from what already exists:
  1. the global campaign directory (`campaigndir::<g>`, append-only): only entries past the ones
     this process has seen are read, plus any it found missing before (a directory entry is
     written before its campaign, so a create in flight, or one a crash cut short, shows up as a
     hole now and is read again next time);
  2. one batched read (`get_multi`, 1 000 keys a call) of every listed campaign doc.
A snapshot is rebuilt when it is `SNAPSHOT_SECONDS` old by the injected clock, by whichever
request finds it stale first (the others keep answering from the old one meanwhile; only a
process with none at all waits). So every change (a sale, an edit of size, slot length or site,
a pause, a new campaign) shows in every list within that window, and nothing can go stale for
longer: there is nothing to maintain, repair or audit, and no money protocol changed.

Cost: a rebuild reads every campaign (10 000 campaigns: ~10 get_multi calls, a few tens of ms
here) at most once per window per process, and only while someone browses; requests between
rebuilds read nothing. A list at one second is a pure function of the snapshot and that second,
so its sorted result is kept for the second (`_results`) and a page only slices and renders it.
Past ~100 000 campaigns, or with many web processes against one cluster, a change feed would be
cheaper than re-reading everything: see README, Architecture.
"""

from __future__ import annotations

import functools
import heapq
import threading
from dataclasses import dataclass

from accounts.gateway import directory_size
from docstore import Store

from . import gateway, pricing, serving

SNAPSHOT_SECONDS = 2
DIR_CHUNK = 1000
HOME_LIST_SIZE = 5
# Common ad sizes offered in the size filter (IAB's most sold units); any exact size can be typed.
COMMON_SIZES = (
    (300, 250),
    (728, 90),
    (160, 600),
    (300, 600),
    (320, 50),
    (970, 250),
    (336, 280),
    (468, 60),
    (250, 250),
    (120, 600),
)


@dataclass(frozen=True, slots=True)
class Head:
    """What the lists need of one campaign, taken from its doc when the snapshot was built."""

    owner: str
    n: int
    title: str
    width: int
    height: int
    slot_hours: int
    min_price: int
    site_url: str
    paused: bool
    created_at: int
    last: dict | None  # {"price", "purchasedAt", "endsAt"} of the last sale, or None

    def price(self, now: int) -> int:
        last = self.last
        if last is None or now >= last["endsAt"]:
            return self.min_price  # most campaigns most of the time: no arithmetic
        return pricing.current_price(self.min_price, last, now)

    def open_at(self, now: int) -> bool:
        """A slot bought now would start at once: nothing sold is running or queued."""
        return self.last is None or now >= self.last["endsAt"]

    def falling_at(self, now: int) -> bool:
        last = self.last
        return last is not None and last["purchasedAt"] <= now < last["endsAt"]

    def fall_per_hour(self) -> int:
        """Sats the price drops each hour while it falls (a straight line, so the same all the
        way down), rounded to the nearest sat."""
        last = self.last
        if last is None or last["endsAt"] <= last["purchasedAt"]:
            return 0
        span = last["endsAt"] - last["purchasedAt"]
        drop = (2 * last["price"] - self.min_price) * pricing.SECONDS_PER_HOUR
        return max(0, (2 * drop + span) // (2 * span))


def _head(doc: dict) -> Head:
    last = doc.get("last")
    return Head(
        owner=doc["owner"],
        n=doc["n"],
        title=gateway.campaign_title(doc),
        width=doc["width"],
        height=doc["height"],
        slot_hours=doc["slotHours"],
        min_price=doc["minPrice"],
        site_url=doc.get("siteUrl") or "",
        paused=bool(doc.get("paused")),
        created_at=doc.get("createdAt", 0),
        last=None
        if last is None
        else {"price": last["price"], "purchasedAt": last["purchasedAt"], "endsAt": last["endsAt"]},
    )


class Snapshot:
    """Every campaign's head at one moment, and the orders the lists walk."""

    def __init__(self, ident: int, built_at: int, serial: int, dir_seen: int, holes: list[int],
                 refs: list[tuple[str, int]], heads: list[Head]):  # fmt: skip
        self.ident, self.built_at, self.serial = ident, built_at, serial
        self.dir_seen, self.holes, self.refs = dir_seen, holes, refs
        self.live = [h for h in heads if not h.paused]
        self.by_size: dict[tuple[int, int], list[Head]] = {}
        for h in self.live:
            self.by_size.setdefault((h.width, h.height), []).append(h)

    # Orders that do not depend on the second, sorted once per snapshot and only if the home
    # page asks (the browse list does not need them).
    @functools.cached_property
    def by_min_price(self) -> list[Head]:
        return sorted(self.live, key=lambda h: (h.min_price, h.owner, h.n))

    @functools.cached_property
    def newest(self) -> list[Head]:
        return sorted(self.live, key=lambda h: (-h.created_at, h.owner, -h.n))

    @functools.cached_property
    def by_slope(self) -> list[Head]:
        """Campaigns with a sale, steepest fall first. The fall is a straight line, so its slope
        (sats a second) is fixed by the last sale; compared as an integer scaled by 2^64, exact
        to far below a sat a second (a Fraction per campaign cost more than the rest)."""
        falling = [h for h in self.live if h.last is not None]
        return sorted(falling, key=lambda h: (-_slope_key(h), h.owner, h.n))


def _slope_key(h: Head) -> int:
    last = h.last
    span = last["endsAt"] - last["purchasedAt"]
    return ((2 * last["price"] - h.min_price) << 64) // span if span > 0 else 0


_snapshots = serving.BoundedCache(4)  # store ident -> Snapshot (emptied by clear_cache)
_results = serving.BoundedCache(512)  # (snapshot serial, query, second) -> sorted rows
_build_lock = threading.Lock()
_serials = iter(range(1, 1 << 62))


def snapshot(store: Store, now: int) -> Snapshot:
    """This process's snapshot for `store`, rebuilt if it is SNAPSHOT_SECONDS old (or from a
    clock that went back)."""
    ident = serving.store_ident(store)
    current = _snapshots.get(ident)
    if current is not None and current.built_at <= now < current.built_at + SNAPSHOT_SECONDS:
        return current
    # One rebuild at a time; a request that finds one under way answers from the old snapshot.
    if not _build_lock.acquire(blocking=current is None):
        return current
    try:
        latest = _snapshots.get(ident)
        if (
            latest is not None
            and latest is not current
            and latest.built_at <= now < (latest.built_at + SNAPSHOT_SECONDS)
        ):
            return latest
        built = _build(store, ident, now, latest)
        _snapshots.put(ident, built)
        return built
    finally:
        _build_lock.release()


def _build(store: Store, ident: int, now: int, previous: Snapshot | None) -> Snapshot:
    refs = list(previous.refs) if previous else []
    seen = set(refs)
    start = previous.dir_seen if previous else 0
    size = directory_size(store, gateway.CAMPAIGNDIR)
    wanted = (previous.holes if previous else []) + list(range(start, size))
    holes: list[int] = []
    for i in range(0, len(wanted), DIR_CHUNK):
        chunk = wanted[i : i + DIR_CHUNK]
        found = store.get_multi([gateway.campaigndir_key(g) for g in chunk])
        for g in chunk:
            entry = found.get(gateway.campaigndir_key(g))
            if entry is None:
                holes.append(g)
                continue
            ref = (entry.value["owner"], entry.value["n"])
            if ref not in seen:
                seen.add(ref)
                refs.append(ref)
    heads: list[Head] = []
    for i in range(0, len(refs), DIR_CHUNK):
        keys = [gateway.campaign_key(o, n) for o, n in refs[i : i + DIR_CHUNK]]
        found = store.get_multi(keys)
        heads.extend(_head(found[k].value) for k in keys if k in found)
    return Snapshot(ident, now, next(_serials), max(size, start), holes, refs, heads)


# --- the filtered list ----------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A validated browse query (adspace.forms.BrowseForm makes one)."""

    size: tuple[int, int] | None = None
    price_min: int | None = None
    price_max: int | None = None
    slot_hours: int | None = None
    has_site: bool = False


@dataclass(frozen=True, slots=True)
class Row:
    head: Head
    price: int


def matching(store: Store, query: Query, now: int) -> list[Row]:
    """Live (not paused) campaigns matching `query`, cheapest now first (then owner, index).
    The list is shared between requests of the same second: do not change it."""
    snap = snapshot(store, now)
    key = (snap.serial, query, now)
    rows = _results.get(key)
    if rows is not None:
        return rows
    heads = snap.live if query.size is None else snap.by_size.get(query.size, [])
    rows = []
    for h in heads:
        if query.slot_hours is not None and h.slot_hours != query.slot_hours:
            continue
        if query.has_site and not h.site_url:
            continue
        price = h.price(now)
        if query.price_min is not None and price < query.price_min:
            continue
        if query.price_max is not None and price > query.price_max:
            continue
        rows.append(Row(h, price))
    rows.sort(key=lambda r: (r.price, r.head.owner, r.head.n))
    _results.put(key, rows)
    return rows


# --- the home page's lists ------------------------------------------------------------------


@dataclass(frozen=True)
class HomeLists:
    cheapest: list[Row]
    falling: list[Row]
    open_now: list[Row]
    newest: list[Row]


def home_lists(store: Store, now: int, size: int = HOME_LIST_SIZE) -> HomeLists:
    """The home page's four lists at `now` (not paused campaigns only):
    - cheapest: lowest price now;
    - falling fastest: largest drop per second now (only campaigns whose price is falling);
    - open for sale now: a slot bought now starts at once (nothing sold is running or queued),
      cheapest first;
    - newest: by creation time.
    """
    snap = snapshot(store, now)
    key = (snap.serial, "home", size, now)
    lists = _results.get(key)
    if lists is None:
        lists = HomeLists(
            cheapest=_cheapest(snap, now, size),
            falling=_first(snap.by_slope, lambda h: h.falling_at(now), now, size),
            open_now=_first(snap.by_min_price, lambda h: h.open_at(now), now, size),
            newest=_first(snap.newest, lambda h: True, now, size),
        )
        _results.put(key, lists)
    return lists


def _first(heads: list[Head], keep, now: int, size: int) -> list[Row]:
    out: list[Row] = []
    for h in heads:
        if keep(h):
            out.append(Row(h, h.price(now)))
            if len(out) == size:
                break
    return out


def _cheapest(snap: Snapshot, now: int, size: int) -> list[Row]:
    # A price is never below its minimum, so the walk by minimum stops once the minimum alone
    # exceeds the size-th lowest price seen: usually after a few campaigns, not all of them.
    rows: list[Row] = []
    lowest: list[int] = []  # the `size` lowest prices seen, negated (a max-heap)
    for h in snap.by_min_price:
        if len(lowest) == size and h.min_price > -lowest[0]:
            break
        price = h.price(now)
        rows.append(Row(h, price))
        if len(lowest) < size:
            heapq.heappush(lowest, -price)
        elif price < -lowest[0]:
            heapq.heapreplace(lowest, -price)
    rows.sort(key=lambda r: (r.price, r.head.owner, r.head.n))
    return rows[:size]
