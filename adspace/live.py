"""Live updates of an open campaign page: a small public JSON "head" the page polls with an ETag.

`GET /api/v1/campaigns/<user>/<n>/live` answers what a sale, a queued slot starting or ending, a
pause or a review decision changes on the page, and nothing that changes by the second:

- the price curve's parameters (`minPrice`, and `last`: the last sale's price, purchase time and
  slot end), so the page computes the falling price itself, as it does between updates;
- `paused`, `slotsSold`;
- `parts`: the page's own markup of the parts that change, by name: each is one element,
  `data-live-part="<name>"`, that replaces the page's element of that name: "showing", "queue", "nextSlot" (rendered by the same code as
  the page: one renderer) and "chart" (the price chart drawn at the last sale, or at the
  campaign's creation before any sale, so it is the same bytes in every process).

The answer is a pure function of the campaign doc and of which slot boundary was passed last, so
its ETag (a digest of the bytes) is the same in every process, and each process keeps the last
answer per campaign until that doc changes or the next boundary passes (adspace.fragments keeps
the slot parts the same way). A poll is then one read of the campaign doc, a comparison and a
304: it goes through the slim serving handler (config/handlers.py: no session, no cookie).

Adding a part (the standing-orders block, say): render it in `_parts` and give its element
`data-live-part="<name>"`; a part that depends on documents other than the campaign doc must also
return them (or their CAS) from `_version`, which a cached answer is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf
from django.utils.safestring import SafeString, mark_safe

from docstore import NotFound, Store, get_clock, get_store

from . import api, fragments, gateway, pricing, services, serving

# A page sends back the one ETag it was given (34 characters); anything far longer is not a
# browser's revalidation, and is refused before it is parsed.
MAX_IF_NONE_MATCH = 512
TOO_LONG = "The If-None-Match header is too long: send the one ETag this endpoint gave you."
# Every answer is revalidated (a poll must see a sale within its period); it is the same for
# everyone, so a shared cache may keep it and revalidate too.
CACHE_CONTROL = "public, no-cache"
CACHE_SIZE = 4096


@dataclass(frozen=True)
class Head:
    body: bytes
    etag: str
    parts: dict[str, SafeString]  # the same markup, for the page itself
    version: Any  # what it was made from (`_version`)
    computed_at: int
    until: int | None  # the next slot boundary; None when only a document change matters

    def holds_at(self, version: Any, now: int) -> bool:
        # A clock that stepped back (another worker's skew) is never trusted.
        return (
            self.version == version
            and self.computed_at <= now
            and (self.until is None or now < self.until)
        )


# (store, owner, n, urlconf, script prefix) -> Head; the prefix shapes the image links.
_heads = serving.BoundedCache(CACHE_SIZE)


def head(store: Store, owner: str, n: int, campaign: dict, now: int) -> Head:
    """The campaign's head at `now`, kept per process while its version and boundary hold."""
    key = (serving.store_ident(store), owner, n, get_urlconf(), get_script_prefix())
    version = _version(store, owner, n, campaign)
    found = _heads.get(key)
    if found is not None and found.holds_at(version, now):
        return found
    found = _build(store, owner, n, campaign, version, now)
    _heads.put(key, found)
    return found


def _version(store: Store, owner: str, n: int, campaign: dict) -> Any:
    """Every document the head is made from (besides slots and ads, which never change)."""
    return campaign


def _parts(
    store: Store, owner: str, n: int, campaign: dict, now: int
) -> tuple[dict[str, SafeString], int | None]:
    """The page's changing parts by name, and the next boundary at which one of them changes."""
    slots = fragments.slots_part(store, owner, n, campaign, now)
    last = campaign.get("last")
    next_starts_at = last["endsAt"] if last is not None and last["endsAt"] > now else None
    until = slots.until
    if next_starts_at is not None and (until is None or next_starts_at < until):
        until = next_starts_at
    next_slot = render_to_string(
        "adspace/_campaign_next_slot.html",
        {
            "next_starts_at": None if next_starts_at is None else services.utc(next_starts_at),
            "slot_hours": campaign["slotHours"],
        },
    )
    chart_at = last["purchasedAt"] if last is not None else campaign["createdAt"]
    parts = {
        "showing": slots.showing,
        "queue": slots.queue,
        # Our own escaped markup (Jinja2 and pricing.chart_svg), inserted as it is.
        "nextSlot": mark_safe(next_slot),  # noqa: S308
        "chart": mark_safe(  # noqa: S308
            '<figure class="chart" data-live-part="chart">'
            f"{pricing.chart_svg(campaign['minPrice'], last, chart_at)}</figure>"
        ),
    }
    return parts, until


def _build(store: Store, owner: str, n: int, campaign: dict, version: Any, now: int) -> Head:
    parts, until = _parts(store, owner, n, campaign, now)
    last = campaign.get("last")
    body = api._dumps(
        {
            "minPrice": campaign["minPrice"],
            "last": None
            if last is None
            else {k: last[k] for k in ("price", "purchasedAt", "endsAt")},
            "paused": bool(campaign.get("paused")),
            "slotsSold": pricing.next_slot_index(last),
            "parts": {name: str(html) for name, html in parts.items()},
        }
    )
    return Head(body, api._etag(body), parts, version, now, until)


def _not_modified(header: str | None, etag: str) -> bool:
    # The page sends back exactly the ETag it holds: one comparison, no parsing.
    return header == etag or (header is not None and api._etag_matches(header, etag))


@api._api_view
def campaign_live(request: HttpRequest, user: str, n: str) -> HttpResponse:
    owner, index = api._campaign_ref(user, n)
    header = request.META.get("HTTP_IF_NONE_MATCH")
    if header is not None and len(header) > MAX_IF_NONE_MATCH:
        raise api.ApiError(400, TOO_LONG)
    store, now = get_store(), get_clock().now()
    try:
        campaign = gateway.get_campaign(store, owner, index).value
    except NotFound:
        raise api.ApiError(404, api.NO_SUCH_CAMPAIGN) from None
    found = head(store, owner, index, campaign, now)
    if _not_modified(header, found.etag):
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(found.body, content_type="application/json")
    response["ETag"] = found.etag
    response["Cache-Control"] = CACHE_CONTROL
    return api._cors(response)
