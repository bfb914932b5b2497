"""The parts of a campaign page that only a sale or a slot boundary changes, rendered once.

"Showing now" and the queue of sold slots are the same for every visitor until the campaign doc
changes (a sale moves `last`) or the next boundary passes (the live slot ends, or the next one
starts). Each process keeps them per campaign with the doc they were made from and that
boundary, so a page view re-renders them only when they really change: the slot reads, the ad
and image reads and most of the template work leave the per-request path. Slot and ad documents
never change once written, so the campaign doc and the clock decide everything here. Review
decisions live on the campaign doc too (adspace.review.mark): a rejected or taken-down ad leaves
"Showing now" and each decided slot of the queue says so.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from docstore import Store

from . import review, services
from .serving import store_ident

# A few KB each; the campaigns hot in one process.
CACHE_SIZE = 2000


@dataclass(frozen=True)
class SlotsPart:
    showing: SafeString  # the "Showing now" section
    queue: SafeString  # the "Sold slots still to run" section
    computed_at: int
    until: int | None  # the next boundary; None when only a sale can change these parts

    def holds_at(self, now: int) -> bool:
        # A clock that stepped back (or a page computed ahead of it) is never trusted.
        return self.computed_at <= now and (self.until is None or now < self.until)


_parts: OrderedDict[tuple[Any, ...], tuple[dict, SlotsPart]] = OrderedDict()
_lock = threading.Lock()


def slots_part(store: Store, owner: str, n: int, campaign: dict, now: int) -> SlotsPart:
    key = (store_ident(store), owner, n)
    hit = _parts.get(key)
    if hit is not None and hit[0] == campaign and hit[1].holds_at(now):
        return hit[1]
    part = _render(store, owner, n, campaign, now)
    with _lock:
        _parts[key] = (campaign, part)
        _parts.move_to_end(key)
        while len(_parts) > CACHE_SIZE:
            _parts.popitem(last=False)
    return part


def clear() -> None:
    with _lock:
        _parts.clear()


def _render(store: Store, owner: str, n: int, campaign: dict, now: int) -> SlotsPart:
    queue = services.unended_slots(store, owner, n, campaign.get("last"), now)
    reviews = {slot.index: review.review_state(campaign, slot.index) for slot in queue}
    live = queue[0] if queue and queue[0].live else None
    live_ad = withdrawn = None
    if live is not None and reviews[live.index] in ("rejected", "hidden"):
        withdrawn = live  # what the embed and the API serve instead: nothing
    elif live is not None:
        filler = services.get_filler_by_key(store, live.filler)
        if filler is not None:
            url = services.image_urls(store, [filler["image"]]).get(filler["image"])
            live_ad = {**filler, "image_url": url, "slot": live}
    # Slots run back to back: the first unended one is the next to end, or else to start.
    until = None
    if queue:
        until = int(queue[0].ends_at.timestamp() if live else queue[0].starts_at.timestamp())
    showing = render_to_string(
        "adspace/_campaign_showing.html", {"live_ad": live_ad, "withdrawn": withdrawn}
    )
    queue_html = render_to_string(
        "adspace/_campaign_queue.html", {"queue": queue, "reviews": reviews}
    )
    # Jinja2 hands back plain text; it is our own escaped markup, to be inserted as it is.
    return SlotsPart(
        showing=mark_safe(showing),  # noqa: S308
        queue=mark_safe(queue_html),  # noqa: S308
        computed_at=now,
        until=until,
    )
