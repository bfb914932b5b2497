"""Which slot of a campaign is showing right now, answered in O(1) amortised per request.

A slot is served from `EARLY_SWITCH_SECONDS` before its `startsAt` (the original's lookahead, so
a client whose clock is a little ahead never asks between two ads) until its `endsAt`. Slots are
back to back in index order (`startsAt[k+1] >= endsAt[k]`), so the slot showing at `now` is the
highest-indexed one whose serving has begun, provided it has not ended; when it has ended, every
earlier one has too and nothing is showing (a lapsed queue).

Cache. Each process keeps, per campaign, the last answer and the time until which it holds:
the earliest of the live slot's end and the next slot's early switch. A new sale can change the
answer before then only through `campaign["last"]` (the buy protocol advances it right after the
slot insert), so every caller reads the campaign doc (one KV get; the API needs it anyway for the
campaign's existence, size and price) and an entry whose stored `last` differs is recomputed.
There is no staleness window: at every boundary the answer is exact. Review decisions (a
rejection, an approval, a staff take-down, the campaign's review mode) are written to the campaign
doc too (adspace.review), and are part of the entry's identity, so they take effect at once.

The other per-process caches of the serving path (the API's answers, the embed's pages, image
URLs) are `BoundedCache`s keyed by `store_ident`: they hold only what is immutable for their key
(slots, ads and images are written once and never changed), so they need no invalidation, and
`clear_cache` empties them all.

The one imprecision is a sale a crash left half done: its slot exists but `last` still points
at the slot before it until the next buyer or the recovery pass finishes it. The walk reads
`last + 1` too, so such a sale is served; only its 30 s early switch can be missed when the
answer was cached before it appeared.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from docstore import NotFound, Store

from . import gateway, review

EARLY_SWITCH_SECONDS = 30
# Slots one read fetches while walking back from the last sale: the live slot is almost always
# `last` or the one before it, and `last + 1` rides along to catch a half-finished sale.
SLOT_WINDOW = 4
# Each sale doubles the next price, so a real queue is a handful of slots; the walk stops here
# rather than reading a corrupt campaign's whole history on a request.
MAX_WALK = 1000
# Entries are a few hundred bytes; 10 000 campaigns hot in one process is a few MB.
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Showing:
    """What a campaign shows at one moment, and until when that holds (absent a new sale).

    `until` is None when nothing scheduled changes the answer (nothing live and nothing queued):
    only a new sale does, and that is seen through `campaign["last"]`.
    """

    index: int | None
    slot: dict | None
    until: int | None


@dataclass
class _Entry:
    ident: tuple[Any, ...]
    computed_at: int
    showing: Showing


_cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_cache_lock = threading.Lock()


class BoundedCache:
    """A per-process map of at most `size` entries, for values that never go stale for their key.

    Reads take no lock (a dict lookup is atomic); writes do, and drop the oldest entries beyond
    `size`. Every instance is emptied by `clear_cache`.
    """

    def __init__(self, size: int):
        self.size = size
        self._data: dict[Any, Any] = {}
        self._lock = threading.Lock()
        _bounded.append(self)

    def get(self, key: Any) -> Any:
        return self._data.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            data = self._data
            data.pop(key, None)
            data[key] = value
            while len(data) > self.size:
                del data[next(iter(data))]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class ByteBoundedCache(BoundedCache):
    """A BoundedCache that also keeps the total `weight` of its values (their size in bytes) at
    most `max_bytes`, dropping the oldest entries beyond it; a value over a tenth of that is not
    kept at all (one upload must not empty the cache)."""

    def __init__(self, size: int, max_bytes: int):
        super().__init__(size)
        self.max_bytes = max_bytes
        self._weights: dict[Any, int] = {}
        self._total = 0

    def put(self, key: Any, value: Any, weight: int = 0) -> None:
        if weight > self.max_bytes // 10:
            return
        with self._lock:
            data, weights = self._data, self._weights
            data.pop(key, None)
            self._total -= weights.pop(key, 0)
            data[key] = value
            weights[key] = weight
            self._total += weight
            while len(data) > self.size or self._total > self.max_bytes:
                oldest = next(iter(data))
                del data[oldest]
                self._total -= weights.pop(oldest)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._weights.clear()
            self._total = 0

    @property
    def total_bytes(self) -> int:
        return self._total


_bounded: list[BoundedCache] = []
_store_ids: weakref.WeakKeyDictionary[Store, int] = weakref.WeakKeyDictionary()
_store_counter = itertools.count(1)


def store_ident(store: Store) -> int:
    """A number naming this store object, never reused in the process (unlike `id()`).

    Tests and tools open many stores whose keys (and even contents) look alike; a cache keyed by
    this number can never hand one store's answer to another.
    """
    try:
        return _store_ids[store]
    except KeyError:
        with _cache_lock:
            return _store_ids.setdefault(store, next(_store_counter))
    except TypeError:  # a store that cannot be weakly referenced: never share its entries
        return -next(_store_counter)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
    for bounded in _bounded:
        bounded.clear()


def cache_size() -> int:
    return len(_cache)


def live_slot(
    store: Store, owner: str, n: int, now: int, campaign: dict | None = None
) -> tuple[int, dict] | None:
    """(index, slot doc) of the slot showing at `now`, or None (no sale, lapsed, or no campaign).

    Pass `campaign` when the caller has just read it, to save the read. The slot doc is shared
    with the cache: treat it as read-only.
    """
    result = showing(store, owner, n, now, campaign)
    if result.index is None or result.slot is None:
        return None
    return result.index, result.slot


def showing(store: Store, owner: str, n: int, now: int, campaign: dict | None = None) -> Showing:
    """The answer of `live_slot` plus the time until which it holds."""
    if campaign is None:
        try:
            campaign = gateway.get_campaign(store, owner, n).value
        except NotFound:
            return Showing(None, None, None)
    last = campaign.get("last")
    if last is None:
        return Showing(None, None, None)
    # The store is part of the key (tests and tools open several); createdAt tells a campaign
    # from an older one of the same name, and `last` is what a sale changes.
    key = (store_ident(store), owner, n)
    ident = (campaign.get("createdAt"), dict(last), review.review_ident(campaign))
    with _cache_lock:
        entry = _cache.get(key)
        # computed_at guards against a clock that moved back (another worker's skew).
        if (
            entry is not None
            and entry.ident == ident
            and entry.computed_at <= now
            and (entry.showing.until is None or now < entry.showing.until)
        ):
            _cache.move_to_end(key)
            return entry.showing
    result = _reviewed(campaign, _walk(store, owner, n, last["slot"], now), now)
    with _cache_lock:
        _cache[key] = _Entry(ident, now, result)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _reviewed(campaign: dict, result: Showing, now: int) -> Showing:
    """The placeholder instead of an ad its seller rejected (or staff took down), and, in an
    approve-first campaign, instead of one not approved while its review window is open."""
    if result.slot is None or result.index is None:
        return result
    state = review.review_state(campaign, result.index)
    if state in ("rejected", "hidden"):
        return Showing(None, None, result.until)
    if campaign.get("reviewMode") == "approve" and state != "approved":
        closes = review.window_end(result.slot["purchasedAt"], result.slot["endsAt"])
        if now < closes:
            until = closes if result.until is None else min(result.until, closes)
            return Showing(None, None, until)
    return result


def _serving_from(slot: dict) -> int:
    return slot["startsAt"] - EARLY_SWITCH_SECONDS


def _walk(store: Store, owner: str, n: int, last_index: int, now: int) -> Showing:
    top = last_index + 1
    seen: dict[int, dict] = {}
    hi = top
    current: int | None = None
    while hi >= 0 and top - hi < MAX_WALK:
        lo = max(0, hi - SLOT_WINDOW + 1)
        slots = gateway.get_slots(store, owner, n, lo, hi)
        seen.update(slots)
        if hi == top:
            # A half-finished sale may have several slots past `last`; follow them forward.
            k = top
            while k in seen and k - top < MAX_WALK:
                k += 1
                seen.update(gateway.get_slots(store, owner, n, k, k))
        # The highest-indexed slot whose serving has begun is the candidate; slots below
        # `last` always exist, but a missing one is skipped rather than trusted.
        for k in sorted((i for i in seen if i >= lo), reverse=True):
            if _serving_from(seen[k]) <= now:
                current = k
                break
        if current is not None:
            break
        hi = lo - 1

    if current is None:
        # Every slot read is still queued: nothing shows until the earliest one's switch.
        first = min(seen) if seen else None
        return Showing(None, None, _serving_from(seen[first]) if first is not None else None)
    slot = seen[current]
    following = seen.get(current + 1)
    next_switch = _serving_from(following) if following is not None else None
    if now < slot["endsAt"]:
        until = slot["endsAt"] if next_switch is None else min(slot["endsAt"], next_switch)
        return Showing(current, slot, until)
    return Showing(None, None, next_switch)
