""" "Your ad is about to start": a worker task queueing a notice (accounts/notify.py) for each
slot that was queued behind others and starts within SLOT_START_NOTICE_MINUTES.

A slot that starts in the future was bought while its predecessor was still running, so it
starts exactly when that one ends: a campaign's queued slots are back to back, `slotHours`
each, ending with `last`. From the campaign document alone the task therefore knows which slot
indexes can start in (now, now + window], and reads only those slot documents (one get_multi a
chunk of campaigns). A campaign whose `last` has already started costs nothing beyond its read.
The notice's ref is the slot key, so a pass repeated inside the window queues nothing twice; a
slot that started while the worker was down gets no notice (it is no longer "about to").
"""

from __future__ import annotations

from django.conf import settings

from accounts import notify
from accounts.gateway import DIR_CHUNK
from docstore import Clock, Store

from . import review, webhooks
from .gateway import campaign_key, iter_campaign_refs, slot_key

# The task runs this often; far below the window, so no slot slips between two runs.
EVERY_SECONDS = 30


def window_seconds() -> int:
    return settings.SLOT_START_NOTICE_MINUTES * 60


def _candidates(last: dict, slot_seconds: int, now: int, window: int) -> range:
    """Indexes k whose start, counted back from `last` in whole slots, is in (now, now+window]."""
    start = last["startsAt"]
    if start <= now or slot_seconds <= 0:
        return range(0)
    # slot k starts at start - d * slot_seconds, with d = last.slot - k
    d_min = max(0, -(-(start - now - window) // slot_seconds))
    d_max = -(-(start - now) // slot_seconds) - 1
    return range(max(0, last["slot"] - d_max), last["slot"] - d_min + 1)


def queue_slot_notices(store: Store, clock: Clock) -> dict[str, int]:
    now, window = clock.now(), window_seconds()
    refs = list(iter_campaign_refs(store))
    counters = {"campaigns": 0, "queued": 0}
    for first in range(0, len(refs), DIR_CHUNK):
        chunk = refs[first : first + DIR_CHUNK]
        campaigns = store.get_multi([campaign_key(o, n) for o, n in chunk])
        wanted: dict[str, tuple[str, int, int]] = {}
        reviews: dict[tuple[str, int], dict] = {}
        for owner, n in chunk:
            doc = campaigns.get(campaign_key(owner, n))
            last = doc.value.get("last") if doc else None
            if not last:
                continue
            counters["campaigns"] += 1
            seconds = int(doc.value["slotHours"]) * 3600
            reviews[(owner, n)] = doc.value
            for k in _candidates(last, seconds, now, window):
                wanted[slot_key(owner, n, k)] = (owner, n, k)
        if not wanted:
            continue
        slots = store.get_multi(list(wanted))
        for key, (owner, n, k) in wanted.items():
            slot = slots.get(key)
            if slot is None:
                continue
            s = slot.value
            # Only a slot that waited in the queue; one live from its purchase needs no notice.
            if not (now < s["startsAt"] <= now + window and s["startsAt"] > s["purchasedAt"]):
                continue
            # The seller's `slot.started` webhook event, delivered at the start (the slot
            # starts, and earns, whatever the review decides about its ad).
            webhooks.queue_slot_started(store, clock, owner, n, k, s)
            # A rejected or taken-down ad will not show: its buyer was told so instead.
            if review.review_state(reviews[(owner, n)], k) in ("rejected", "hidden"):
                continue
            context = {
                "campaign": f"{owner}/{n}",
                "slot": k,
                "startsAt": s["startsAt"],
                "endsAt": s["endsAt"],
            }
            counters["queued"] += notify.queue(
                store, clock, s["buyer"], "slot_starting", key, context
            )
    return counters
