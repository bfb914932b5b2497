"""Key builders and typed access for the adspace documents (DESIGN.md section 4).

Campaigns are numbered per owner by `campaigncount::<u>`; every campaign also gets a global
`campaigndir::<g>` entry and every seller (at their first campaign) a `sellerdir::<g>` entry, each
written before what it points to, so recovery, the creditor, the audit and the sellers list reach
everything by key. A slot's existence means "sold"; `tx::` records what the sale owes the seller.

Caps. A user's campaigns and ads are numbered by their counters, so the number a create draws is
also how many came before it: a create that draws an index at or past the cap is refused before
it writes anything, which holds however many creates race (each draws its own index). A refused
index is a hole, like one a crash leaves, and every walk skips holes. Image bytes are charged to
`imagebytes::<u>` the same way (the total after adding is the one checked), before the image is
stored; a charge refused in a race stays counted, which can only make the quota stricter.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

from accounts.gateway import directory_size, walk_directory
from accounts.locks import AccountError
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

CAMPAIGNDIR = "campaigndir"
SELLERDIR = "sellerdir"
NICKNAME_CLAIM_SECONDS = 300
CATEGORIES = ("Porn", "Gambling", "Medicine", "Alcohol", "Tobacco", "Weapons")


def campaign_key(owner: str, n: int) -> str:
    return f"campaign::{owner}::{n}"


def campaigncount_key(owner: str) -> str:
    return f"campaigncount::{owner}"


def campaigndir_key(g: int) -> str:
    return f"campaigndir::{g}"


def sellerdir_key(g: int) -> str:
    return f"sellerdir::{g}"


def slot_key(owner: str, n: int, k: int) -> str:
    return f"slot::{owner}::{n}::{k}"


def tx_key(owner: str, n: int, k: int) -> str:
    return f"tx::{owner}::{n}::{k}"


def stat_key(owner: str, n: int, k: int, day: str, kind: str) -> str:
    """Counter of one kind of delivery (adspace.stats.KINDS) of slot k on one UTC day (YYYY-MM-DD)."""
    return f"stat::{owner}::{n}::{k}::{day}::{kind}"


def creditcursor_key(owner: str, n: int) -> str:
    return f"creditcursor::{owner}::{n}"


def fillercount_key(username: str) -> str:
    return f"fillercount::{username}"


def filler_key(username: str, i: int) -> str:
    return f"filler::{username}::{i}"


def fillernick_key(username: str, nickname: str) -> str:
    digest = hashlib.sha256(nickname.casefold().encode()).hexdigest()[:32]
    return f"fillernick::{username}::{digest}"


def image_key(sha256: str) -> str:
    return f"image::{sha256}"


def imagebytes_key(username: str) -> str:
    return f"imagebytes::{username}"


class TooManyCampaigns(AccountError):
    def __init__(self, limit: int):
        super().__init__(
            f"You have {limit} campaigns, the most one account can have; nothing was created."
        )


class TooManyAds(AccountError):
    def __init__(self, limit: int):
        super().__init__(
            f"You have {limit} ads, the most one account can have; nothing was stored."
        )


class ImageQuotaFull(AccountError):
    def __init__(self, quota: int):
        super().__init__(
            f"Your ads' images would take more than {quota // (1024 * 1024)} MB, the most one "
            "account can store; nothing was stored."
        )


# --- campaigns ------------------------------------------------------------------------------


def create_campaign(
    store: Store,
    clock: Clock,
    owner: str,
    min_price: int,
    slot_hours: int,
    width: int,
    height: int,
    disallowed: list[str],
    max_campaigns: int | None = None,
    *,
    title: str = "",
    site_url: str = "",
    description: str = "",
) -> int:
    """Create the owner's next campaign and return its index.

    With `max_campaigns`, refuses (TooManyCampaigns, nothing written) the create that would be
    the owner's campaign number `max_campaigns` + 1 or later (see Caps above).
    """
    if max_campaigns is not None and campaign_count(store, owner) >= max_campaigns:
        raise TooManyCampaigns(max_campaigns)  # the common case, without spending an index
    n = store.counter(campaigncount_key(owner), 1, initial=0)
    if max_campaigns is not None and n >= max_campaigns:
        raise TooManyCampaigns(max_campaigns)
    if n == 0:
        store.insert(sellerdir_key(store.counter(SELLERDIR, 1, initial=0)), {"owner": owner})
    g = store.counter(CAMPAIGNDIR, 1, initial=0)
    store.insert(campaigndir_key(g), {"owner": owner, "n": n})
    store.insert(
        campaign_key(owner, n),
        {
            "owner": owner,
            "n": n,
            "minPrice": min_price,
            "slotHours": slot_hours,
            "width": width,
            "height": height,
            "disallowed": [c for c in CATEGORIES if c in disallowed],
            "createdAt": clock.now(),
            "title": title,
            "siteUrl": site_url,
            "description": description,
        },
    )
    return n


def campaign_title(campaign: dict) -> str:
    """The title to show; campaigns made before titles existed (or with none) get their number."""
    return campaign.get("title") or f"{campaign['owner']}'s ad space #{campaign['n']}"


# The sale terms: what a buyer priced and sized a slot by. Changed only while nothing is sold.
TERMS = ("minPrice", "slotHours", "width", "height")
# What the owner may change at any time.
DETAILS = ("title", "siteUrl", "description", "disallowed")


class NotCampaignOwner(AccountError):
    def __init__(self):
        super().__init__("Only the campaign's owner can change it; nothing was changed.")


class TermsFrozen(AccountError):
    def __init__(self):
        super().__init__(
            "A slot of this campaign has been sold, so its minimum price, slot length and ad "
            "size can no longer change; nothing was changed."
        )


def has_sold(store: Store, owner: str, n: int, campaign: dict) -> bool:
    # Slot 0 can exist while `last` still lags (a sale between its commit point and step 5).
    if campaign.get("last") is not None:
        return True
    try:
        store.get(slot_key(owner, n, 0))
        return True
    except NotFound:
        return False


def update_campaign(store: Store, owner: str, n: int, editor: str, changes: dict) -> dict:
    """Change the campaign's details (and its terms while nothing is sold) in one CAS.

    `changes` holds keys of DETAILS and TERMS only. A terms change that alters nothing is not a
    change (the edit form sends every field). The sale fields (`last`) and `paused` are carried
    over from the doc the CAS replaces, so a sale or a pause racing the edit is never undone.
    NotFound, NotCampaignOwner or TermsFrozen change nothing. Returns the new doc.
    """
    unknown = set(changes) - set(TERMS) - set(DETAILS)
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    while True:
        doc = get_campaign(store, owner, n)
        campaign = doc.value
        if editor.casefold() != campaign["owner"].casefold():
            raise NotCampaignOwner()
        terms = {k: v for k, v in changes.items() if k in TERMS and campaign.get(k) != v}
        if terms and has_sold(store, owner, n, campaign):
            raise TermsFrozen()
        updated = {**campaign, **changes}
        if "disallowed" in changes:
            updated["disallowed"] = [c for c in CATEGORIES if c in changes["disallowed"]]
        try:
            store.replace(campaign_key(owner, n), updated, doc.cas)
            return updated
        except (CasMismatch, Ambiguous):
            continue  # re-read: an ambiguous write that applied is seen and applied again as is


def set_campaign_paused(store: Store, owner: str, n: int, editor: str, paused: bool) -> bool:
    """Pause (stop new sales) or resume the campaign; one CAS on its doc. Returns whether the
    doc changed (pausing a paused campaign is a no-op). Sold slots are untouched either way,
    and the price stays the function of time and `last` it always was."""
    while True:
        doc = get_campaign(store, owner, n)
        campaign = doc.value
        if editor.casefold() != campaign["owner"].casefold():
            raise NotCampaignOwner()
        if bool(campaign.get("paused")) == paused:
            return False
        try:
            store.replace(campaign_key(owner, n), {**campaign, "paused": paused}, doc.cas)
            return True
        except (CasMismatch, Ambiguous):
            continue  # re-read: one that applied is then seen as already done


def get_campaign(store: Store, owner: str, n: int) -> Doc:
    return store.get(campaign_key(owner, n))


def campaign_count(store: Store, owner: str) -> int:
    return directory_size(store, campaigncount_key(owner))


def campaign_counts(store: Store, owners: list[str]) -> dict[str, int]:
    """`campaign_count` of each owner, in one batched read."""
    found = store.get_multi([campaigncount_key(o) for o in owners])
    return {
        o: int(found[campaigncount_key(o)].value) + 1 if campaigncount_key(o) in found else 0
        for o in owners
    }


def owner_campaigns(store: Store, owner: str) -> list[dict]:
    """All of an owner's campaigns, by index (indexes a crash skipped are left out)."""
    return campaigns_in_range(store, owner, 0, campaign_count(store, owner))


def campaigns_in_range(store: Store, owner: str, start: int, stop: int) -> list[dict]:
    """The owner's campaigns with index in [start, stop), by index, in one read; holes left out."""
    keys = [campaign_key(owner, n) for n in range(start, stop)]
    found = store.get_multi(keys)
    return [found[k].value for k in keys if k in found]


def iter_campaign_refs(store: Store) -> Iterator[tuple[str, int]]:
    seen: set[tuple[str, int]] = set()
    for entry in walk_directory(store, CAMPAIGNDIR, campaigndir_key):
        ref = (entry["owner"], entry["n"])
        if ref not in seen:
            seen.add(ref)
            yield ref


def seller_count(store: Store) -> int:
    return directory_size(store, SELLERDIR)


def sellers_page(store: Store, start: int, size: int, total: int | None = None) -> list[str]:
    """Sellers whose directory index is in [start, start + size): a page of the sellers list.

    `total` is `seller_count` when the caller has just read it."""
    if total is None:
        total = seller_count(store)
    keys = [sellerdir_key(g) for g in range(start, min(start + size, total))]
    found = store.get_multi(keys)
    out: list[str] = []
    for key in keys:
        if key in found and found[key].value["owner"] not in out:
            out.append(found[key].value["owner"])
    return out


def advance_campaign_last(store: Store, owner: str, n: int, last: dict) -> None:
    """Point the campaign's `last` at this sale, unless it already points there or later."""
    while True:
        doc = get_campaign(store, owner, n)
        current = doc.value.get("last")
        if current is not None and current["slot"] >= last["slot"]:
            return
        try:
            store.replace(campaign_key(owner, n), {**doc.value, "last": last}, doc.cas)
            return
        except CasMismatch:
            continue


def get_slots(store: Store, owner: str, n: int, first: int, last: int) -> dict[int, dict]:
    """Slots first..last (inclusive) that exist, by index."""
    keys = {k: slot_key(owner, n, k) for k in range(max(0, first), last + 1)}
    found = store.get_multi(keys.values())
    return {k: found[key].value for k, key in keys.items() if key in found}


# --- slot fillers (ads) and images ----------------------------------------------------------


class NicknameTaken(Exception):
    pass


def store_image(
    store: Store, sha256: str, content_type: str, ext: str, data: bytes, w: int, h: int
) -> None:
    """Images are content-addressed and immutable: an existing one is the same image."""
    try:
        store.insert(
            image_key(sha256),
            {
                "contentType": content_type,
                "ext": ext,
                "width": w,
                "height": h,
                "data": base64.b64encode(data).decode("ascii"),
            },
        )
    except AlreadyExists:
        pass


def get_image(store: Store, sha256: str) -> tuple[dict, bytes]:
    value = store.get(image_key(sha256)).value
    return value, base64.b64decode(value["data"])


def reserve_filler_index(store: Store, username: str, max_ads: int | None = None) -> int:
    """Draw the user's next ad index; with `max_ads`, TooManyAds past the cap (see Caps)."""
    if max_ads is not None and filler_count(store, username) >= max_ads:
        raise TooManyAds(max_ads)  # the common case, without spending an index
    i = store.counter(fillercount_key(username), 1, initial=0)
    if max_ads is not None and i >= max_ads:
        raise TooManyAds(max_ads)
    return i


def image_bytes_used(store: Store, username: str) -> int:
    try:
        return int(store.get(imagebytes_key(username)).value)
    except NotFound:
        return 0


def charge_image_bytes(store: Store, username: str, size: int, quota: int) -> None:
    """Count `size` bytes of images against the user's quota; ImageQuotaFull past it."""
    if image_bytes_used(store, username) + size > quota:
        raise ImageQuotaFull(quota)  # the common case, without counting anything
    if store.counter(imagebytes_key(username), size, initial=size) > quota:
        raise ImageQuotaFull(quota)


def create_filler(
    store: Store,
    clock: Clock,
    username: str,
    nickname: str,
    hover_text: str,
    url: str,
    width: int,
    height: int,
    image_sha256: str,
    index: int | None = None,
) -> int:
    """Create an ad (immutable but for its `archived` flag); nicknames are unique per user (case-insensitively).

    `index` is one drawn by reserve_filler_index (which enforces the cap), else one is drawn
    here. The nickname is claimed first with the index it will get; a claim whose ad never
    appeared (a crash between the two writes) is taken over rather than blocking the name forever.
    """
    i = reserve_filler_index(store, username) if index is None else index
    claim = fillernick_key(username, nickname)
    now = clock.now()
    try:
        store.insert(claim, {"index": i, "at": now})
    except AlreadyExists:
        doc = store.get(claim)
        # A claim without its ad is either an upload still in flight (leave it alone) or one a
        # crash abandoned: only an old one may be taken over.
        if now - doc.value.get("at", 0) < NICKNAME_CLAIM_SECONDS:
            raise NicknameTaken(nickname) from None
        try:
            store.get(filler_key(username, doc.value["index"]))
            raise NicknameTaken(nickname) from None
        except NotFound:
            try:
                store.replace(claim, {"index": i, "at": now}, doc.cas)
            except CasMismatch:
                raise NicknameTaken(nickname) from None
    store.insert(
        filler_key(username, i),
        {
            "owner": username,
            "index": i,
            "nickname": nickname,
            "hoverText": hover_text,
            "url": url,
            "width": width,
            "height": height,
            "image": image_sha256,
            "createdAt": clock.now(),
        },
    )
    return i


def set_filler_archived(store: Store, username: str, i: int, archived: bool) -> bool:
    """Archive (hide from the buy form) or restore one of the user's ads; one CAS.

    The flag is the only field of an ad that ever changes: its image, link and text stay as
    they were sold, and an ad is never deleted, so every slot that shows it keeps showing it.
    Returns whether the doc changed; NotFound if the user has no such ad.
    """
    while True:
        doc = store.get(filler_key(username, i))
        if bool(doc.value.get("archived")) == archived:
            return False
        try:
            store.replace(filler_key(username, i), {**doc.value, "archived": archived}, doc.cas)
            return True
        except (CasMismatch, Ambiguous):
            continue  # re-read: one that applied is then seen as already done


def filler_count(store: Store, username: str) -> int:
    return directory_size(store, fillercount_key(username))


def get_filler(store: Store, username: str, i: int) -> dict:
    return store.get(filler_key(username, i)).value


def user_fillers(
    store: Store, username: str, start: int = 0, size: int | None = None, count: int | None = None
) -> list[dict]:
    """The user's ads with index in [start, start + size), newest last. Pass `count` (from
    filler_count) when it was just read, to save reading it again."""
    if count is None:
        count = filler_count(store, username)
    end = count if size is None else min(count, start + size)
    keys = [filler_key(username, i) for i in range(start, end)]
    found = store.get_multi(keys)
    return [found[k].value for k in keys if k in found]


def get_many(store: Store, keys: list[str]) -> dict[str, Any]:
    return {k: d.value for k, d in store.get_multi(keys).items()}
