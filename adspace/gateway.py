"""Key builders and typed access for the adspace documents (DESIGN.md section 4).

Campaigns are numbered per owner by `campaigncount::<u>`; every campaign also gets a global
`campaigndir::<g>` entry and every seller (at their first campaign) a `sellerdir::<g>` entry, each
written before what it points to, so recovery, the creditor, the audit and the sellers list reach
everything by key. A slot's existence means "sold"; `tx::` records what the sale owes the seller.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

from accounts.gateway import directory_size, walk_directory
from docstore import AlreadyExists, CasMismatch, Clock, Doc, NotFound, Store

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
) -> int:
    """Create the owner's next campaign and return its index."""
    n = store.counter(campaigncount_key(owner), 1, initial=0)
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
        },
    )
    return n


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
    count = campaign_count(store, owner)
    keys = [campaign_key(owner, n) for n in range(count)]
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
) -> int:
    """Create an immutable ad; nicknames are unique per user (case-insensitively).

    The nickname is claimed first with the index it will get; a claim whose ad never appeared (a
    crash between the two writes) is taken over rather than blocking the name forever.
    """
    i = store.counter(fillercount_key(username), 1, initial=0)
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
