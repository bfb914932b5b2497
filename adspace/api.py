"""The live ad, served to sellers' sites: the JSON API (seller's key) and the public embeds.

`GET /api/v1/ads/<user>/<n>/current` answers the ad showing now, for the seller's own server to
cache and show (the original's getcurrentad, with its 50 requests per slot). The embeds need no
key and show only public data: `/embed/<user>/<n>` is the one page of the site another site may
frame, `/embed/<user>/<n>.json` its size, and `/embed.js` a script that inserts the frame.

Every answer carries Cache-Control up to the moment it can change (the slot's end or the next
slot's 30 s early switch), so a well-behaved client asks once per slot. Clicks go to the URL
stored with the ad, never to anything taken from the request.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import parse_etags
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from accounts import apikeys
from accounts.gateway import account_key
from accounts.money import format_btc
from accounts.security import frameable
from config.cache import CacheUnavailable, incr_window
from docstore import NotFound, Store, TemporaryFailure, get_clock, get_store

from . import delivery_views, gateway, pricing, review, services, serving, stats, stats_report

log = logging.getLogger(__name__)

# The original's allowance: a client that stores the answer needs one request per slot.
# With no ad the price falls every second and a sale can come at any moment: ask again soon.
NO_AD_MAX_AGE = 60
# Public embeds may sit in shared caches; an ad taken down still leaves them within the hour.
EMBED_MAX_AGE = 3600
STATIC_MAX_AGE = 3600
# A key is 32 characters; nothing this API reads needs a long query string.
MAX_QUERY_STRING = 2048
MAX_CAMPAIGN_INDEX = 10**9

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
# Canonical ASCII decimal only: "07", "+7" and " 7" are not campaign 7.
_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")

NO_SUCH_CAMPAIGN = "There is no ad campaign at that index, or that is an invalid user."
MISSING_KEY = (
    "Missing API key: send 'Authorization: Bearer <key>' (or ?key=<key>) with the key from "
    "the API key tab of your account."
)
INVALID_KEY = (
    "Invalid API key for this seller. Keys are shown (and regenerated) in the API key tab."
)
UNAVAILABLE = "The ad service is briefly unavailable; try again in a minute."
RETRY_UNAVAILABLE = 60
TOO_MANY = (
    "You have used up all of your API requests for the current ad slot ({limit}). Store the "
    "answer and show it until it expires (see Cache-Control); you get {limit} more when the "
    "next slot starts."
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# --- responses ----------------------------------------------------------------------------------


def _cors(response: HttpResponse) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Expose-Headers"] = "ETag, Retry-After"
    return response


_JSON = "application/json"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(_dumps({"error": message}), status=status, content_type=_JSON)
    for name, value in (headers or {}).items():
        response[name] = value
    response["Cache-Control"] = "no-store"
    return _cors(response)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = parse_etags(header)
    # Weak comparison (RFC 9110 13.1.2): a W/ prefix does not change which answer it names.
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _cached_json(request: HttpRequest, body: dict, cache_control: str) -> HttpResponse:
    data = _dumps(body)
    return _json_answer(request, data, _etag(data), cache_control)


def _json_answer(request: HttpRequest, data: bytes, etag: str, cache_control: str) -> HttpResponse:
    if _etag_matches(request.META.get("HTTP_IF_NONE_MATCH"), etag):
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(data, content_type=_JSON)
    response["ETag"] = etag
    response["Cache-Control"] = cache_control
    return _cors(response)


def _preflight() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
    response["Access-Control-Allow-Headers"] = "Authorization, If-None-Match"
    response["Access-Control-Max-Age"] = "86400"
    return _cors(response)


def _api_view(view):
    """CORS on every answer, the preflight, and an ApiError anywhere turned into its JSON.

    CSRF-exempt so that a POST gets this API's 405 rather than the HTML CSRF page: nothing here
    changes state, whatever the method.
    """

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "OPTIONS":
            return _preflight()
        if request.method not in ("GET", "HEAD"):
            return _error(405, "Only GET is supported.", {"Allow": "GET, HEAD, OPTIONS"})
        try:
            _check_raw_path(request)
            return view(request, *args, **kwargs)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except TemporaryFailure:
            log.warning("docstore unavailable for %s", request.path, exc_info=True)
            return _error(503, UNAVAILABLE, {"Retry-After": str(RETRY_UNAVAILABLE)})

    return wrapper


# --- input --------------------------------------------------------------------------------------


def _campaign_ref(user: str, n: str) -> tuple[str, int]:
    if not _USERNAME.fullmatch(user) or not _INDEX.fullmatch(n) or int(n) > MAX_CAMPAIGN_INDEX:
        raise ApiError(404, NO_SUCH_CAMPAIGN)
    return user, int(n)


def _check_raw_path(request: HttpRequest) -> None:
    """Refuse encoded slashes and oversized query strings before anything is parsed.

    WSGI decodes %2F into "/" before routing, so "a%2Fb" and "a/b" look alike to Django; the
    raw request line (RAW_URI from gunicorn, REQUEST_URI from uwsgi and others) still tells.
    """
    raw = request.META.get("RAW_URI") or request.META.get("REQUEST_URI") or ""
    raw_path = raw.partition("?")[0].lower()
    if "%2f" in raw_path or "%5c" in raw_path:
        raise ApiError(404, "Encoded slashes are not allowed in API paths.")
    if len(request.META.get("QUERY_STRING", "")) > MAX_QUERY_STRING:
        raise ApiError(400, "The query string is too long.")


def _presented_key(request: HttpRequest) -> str | None:
    """The key from `Authorization: Bearer` (preferred) or `?key=`; None when neither is sent."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    try:
        key = request.GET.get("key")
    except TooManyFieldsSent:
        raise ApiError(400, "The query string has too many fields.")
    return key or None


_API_KEY_FIELD = ("apiKey",)
# Compared against when the account does not exist, so that answer takes as long as a wrong key.
_NO_SUCH_ACCOUNT_KEY = "x" * 32


def _seller_and_campaign(store: Store, owner: str, n: int, key: str | None) -> dict:
    """The campaign doc, after checking the seller's key against their account doc."""
    if key is None:
        raise ApiError(401, MISSING_KEY, {"WWW-Authenticate": 'Bearer realm="api"'})
    # Read on every request, never cached: a regenerated key must stop the old one at once. Only
    # the key is read: the account document carries the latest ledger entries, and decoding all
    # of it was the largest single cost of this request. Both documents in one call (one
    # statement on the embedded store); the campaign is used only once the key matches.
    account, campaign = store.get_several(
        [(account_key(owner), _API_KEY_FIELD), (gateway.campaign_key(owner, n), None)]
    )
    # No account: the same answer as a wrong key, after the same comparison: whether a user
    # exists is not for anyone without their key to learn.
    stored = _NO_SUCH_ACCOUNT_KEY if account is None else account.value.get("apiKey")
    if not apikeys.keys_match(key, stored) or stored is _NO_SUCH_ACCOUNT_KEY:
        raise ApiError(403, INVALID_KEY)
    if campaign is None:
        raise ApiError(404, NO_SUCH_CAMPAIGN)
    return campaign.value


# --- the live ad --------------------------------------------------------------------------------

# Per-process caches of what is immutable for its key (serving.BoundedCache): a slot, its ad and
# the ad's image are written once and never changed, so an answer built from them holds for as
# long as that slot is the one showing; which slot that is (and the seller's key) is still
# decided on every request. Keys carry the store (serving.store_ident) and every field of the
# slot, so no other store's or other sale's answer can match.
CACHE_SIZE = 4096
# (_slot_ident, SITE_URL) -> (JSON body, ETag)
_answers = serving.BoundedCache(CACHE_SIZE)
# (_slot_ident, width, height) -> embed page
_embed_pages = serving.BoundedCache(CACHE_SIZE)
# (store, width, height, absolute campaign URL) -> placeholder embed page
_placeholders = serving.BoundedCache(CACHE_SIZE)
# (_scope, owner, n) -> path of the campaign page
_campaign_paths = serving.BoundedCache(CACHE_SIZE)


# Every field of a slot document (adspace.buy): a sale's slot is never rewritten, but should one be
# replaced by another sale's, its token and times tell them apart.
_SLOT_FIELDS = ("buyer", "filler", "price", "purchasedAt", "startsAt", "endsAt", "token")


def _scope(request: HttpRequest, store: Store) -> tuple[Any, ...]:
    """What shapes a cached answer besides the documents: the store and the URLs.

    The URL configuration and the script prefix the request is served under make the paths in
    an answer; `request.path` carries the prefix, as every route here has one canonical path per
    campaign (see _campaign_ref). Cheaper than asking django.urls for both.
    """
    urlconf = getattr(request, "urlconf", None) or settings.ROOT_URLCONF
    return (serving.store_ident(store), request.path, urlconf)


def _slot_ident(request: HttpRequest, store: Store, answer: serving.Showing) -> tuple[Any, ...]:
    """What an answer built from the showing slot depends on, besides the request's host."""
    slot = answer.slot
    assert slot is not None
    return (*_scope(request, store), answer.index, tuple(map(slot.get, _SLOT_FIELDS)))


def _campaign_url(request: HttpRequest, store: Store, owner: str, n: int) -> str:
    """Absolute URL of the campaign's page (where a buyer buys the next slot), on SITE_URL:
    never built from the request's Host, whose name and port the client chooses (and the embed
    is kept by shared caches)."""
    key = (*_scope(request, store), owner, n)
    path = _campaign_paths.get(key)
    if path is None:
        path = reverse("campaign", args=[owner, n])
        _campaign_paths.put(key, path)
    return settings.SITE_URL + path


def _live_ad(store: Store, owner: str, n: int, answer: serving.Showing) -> dict | None:
    """The showing slot's ad with its image path; None (and an error logged) if it is gone."""
    if answer.slot is None:
        return None
    filler_key = answer.slot["filler"]
    try:
        filler = store.get(filler_key).value
    except NotFound:
        log.error("live slot %s/%s#%s names missing ad %s", owner, n, answer.index, filler_key)
        return None
    image = services.image_urls(store, [filler["image"]]).get(filler["image"])
    if image is None:
        log.error("ad %s of live slot %s/%s#%s has no image", filler_key, owner, n, answer.index)
        return None
    return {**filler, "image_path": image}


def _ad_answer(
    request: HttpRequest, store: Store, owner: str, n: int, answer: serving.Showing
) -> tuple[bytes, str] | None:
    """(JSON body, ETag) of the showing slot's ad; None if its ad or image is gone (not cached)."""
    base = settings.SITE_URL
    key = (*_slot_ident(request, store, answer), base)
    cached = _answers.get(key)
    if cached is not None:
        return cached
    ad = _live_ad(store, owner, n, answer)
    if ad is None:
        return None
    slot = answer.slot
    assert slot is not None
    k = answer.index
    assert k is not None
    body = {
        "ad": {
            "url": ad["url"],
            "clickUrl": base + delivery_views.click_url(owner, n, k, slot),
            "impressionUrl": base + delivery_views.impression_url(owner, n, k, slot),
            # Sellers who render the ad themselves may link `url` directly; only clicks through
            # clickUrl and renderings that request impressionUrl are counted.
            "counted": {"clicks": "clickUrl", "impressions": "impressionUrl"},
            "hoverText": ad["hoverText"],
            "image": base + ad["image_path"],
            "width": ad["width"],
            "height": ad["height"],
        },
        "slot": {
            "index": answer.index,
            "startsAt": slot["startsAt"],
            "endsAt": slot["endsAt"],
            "startsAtIso": _iso(slot["startsAt"]),
            "endsAtIso": _iso(slot["endsAt"]),
        },
    }
    data = _dumps(body)
    result = (data, _etag(data))
    _answers.put(key, result)
    return result


def _seconds_until(until: int | None, now: int, cap: int) -> int:
    return cap if until is None else max(1, min(cap, until - now))


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def _within_slot_allowance(key: str, owner: str, n: int, slot: int, ttl: int) -> bool:
    """Count one request for this key, campaign and slot; True while within the allowance.

    Keyed by the slot index, so the count starts again with the next slot; the key is hashed so
    the cache never holds it. Counted as in accounts.ratelimit (atomic on Redis).
    """
    if not settings.API_REQUESTS_PER_SLOT:
        return True  # no limit configured
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    name = f"adapi:{digest}:{owner}:{n}:{slot}"
    try:
        count = incr_window(name, ttl)
    except CacheUnavailable:
        # The API keeps serving without its cache (README, Security): the allowance is open.
        log.warning("API allowance not counted: cache unreachable")
        return True
    return count <= settings.API_REQUESTS_PER_SLOT


@_api_view
def current_ad(request: HttpRequest, user: str, n: str) -> HttpResponse:
    owner, index = _campaign_ref(user, n)
    key = _presented_key(request)
    store, now = get_store(), get_clock().now()
    campaign = _seller_and_campaign(store, owner, index, key)
    answer = serving.showing(store, owner, index, now, campaign)
    found = None if answer.slot is None else _ad_answer(request, store, owner, index, answer)
    if found is None or answer.index is None:
        price = pricing.current_price(campaign["minPrice"], campaign.get("last"), now)
        body = {
            "ad": None,
            "campaignUrl": _campaign_url(request, store, owner, index),
            "price": price,
            "priceBtc": format_btc(price),
        }
        # Not counted, like the original's "not purchased" answers.
        max_age = _seconds_until(answer.until, now, NO_AD_MAX_AGE)
        return _cached_json(request, body, f"private, max-age={max_age}")

    # A showing slot always has an end, so `until` is set; the 1 s is only a guard.
    max_age = max(1, answer.until - now) if answer.until is not None else 1
    data, etag = found
    # A 304 (the client already holds this answer) is free: revalidating is what a well-behaved
    # client does, and it must not use up the allowance of the key's owner.
    revalidation = _etag_matches(request.META.get("HTTP_IF_NONE_MATCH"), etag)
    if not revalidation and not _within_slot_allowance(
        key or "", owner, index, answer.index, max_age + 60
    ):
        return _error(
            429,
            TOO_MANY.format(limit=settings.API_REQUESTS_PER_SLOT),
            {"Retry-After": str(max_age)},
        )
    if request.method == "GET" and not revalidation:
        stats.record(store, owner, index, answer.index, now, stats.API_FETCHES)
    # private: the answer was given for a key; a shared cache must not hand it to anyone.
    freshness = "no-cache" if _may_be_rejected(answer, now) else f"max-age={max_age}"
    response = _json_answer(request, data, etag, f"private, {freshness}")
    response["Vary"] = "Authorization"
    return response


@_api_view
def campaign_stats(request: HttpRequest, user: str, n: str) -> HttpResponse:
    """The campaign's impressions, clicks and API fetches per UTC day and per slot, under the
    seller's key (`?from=YYYY-MM-DD&to=YYYY-MM-DD`; the last 14 days by default)."""
    owner, index = _campaign_ref(user, n)
    key = _presented_key(request)
    store, now = get_store(), get_clock().now()
    campaign = _seller_and_campaign(store, owner, index, key)
    try:
        params = (request.GET.get("from"), request.GET.get("to"))
    except TooManyFieldsSent:
        raise ApiError(400, "The query string has too many fields.") from None
    try:
        first, last = stats_report.parse_range(*params, stats_report.utc_day(now))
    except stats_report.RangeError as exc:
        raise ApiError(400, exc.message) from None
    found = stats_report.campaign_report(store, owner, index, campaign, first, last)
    body = {
        "campaign": {"owner": owner, "n": index},
        "from": first.isoformat(),
        "to": last.isoformat(),
        "total": found.total.as_dict(),
        "days": [{"day": d.isoformat(), **c.as_dict()} for d, c in found.days],
        "slots": [
            {
                "index": s.k,
                "startsAtIso": _iso(s.slot["startsAt"]),
                "endsAtIso": _iso(s.slot["endsAt"]),
                "total": s.total.as_dict(),
                "days": [{"day": d.isoformat(), **c.as_dict()} for d, c in s.days],
            }
            for s in found.slots
        ],
    }
    response = HttpResponse(_dumps(body), content_type=_JSON)
    response["Cache-Control"] = "private, no-store"
    response["Vary"] = "Authorization"
    return _cors(response)


@_api_view
def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Anything else under /api/: a JSON 404, never Django's HTML page."""
    raise ApiError(404, "No such API endpoint. The live ad is at /api/v1/ads/<user>/<n>/current.")


# --- embeds -------------------------------------------------------------------------------------


def _public_campaign(store: Store, user: str, n: str) -> tuple[str, int, dict]:
    owner, index = _campaign_ref(user, n)
    try:
        return owner, index, gateway.get_campaign(store, owner, index).value
    except NotFound:
        raise ApiError(404, NO_SUCH_CAMPAIGN) from None


def placeholder_lines(width: int, height: int) -> tuple[int, list[tuple[str, int]]]:
    """Font size and (text, centre y) lines of "Your ad here — buy this space" for W x H px.

    One line where it fits, two on narrow spaces. A character is about 0.55 em wide, so the
    29-character line needs ~16 em and each half ~8.25 em; a line needs ~1.4 em of height.
    """
    room = max(width - 8, 0)
    one = min(18, room // 16, height * 10 // 16)
    two = min(18, room * 100 // 825, height * 10 // 28)
    if one >= 11 or one >= two:
        return max(one, 6), [("Your ad here — buy this space", height // 2)]
    size = max(two, 6)
    gap = size * 55 // 100
    return size, [("Your ad here —", height // 2 - gap), ("buy this space", height // 2 + gap)]


# CSRF-exempt (as every view here): the slim handler (config/handlers.py) runs no CSRF check, so
# the full one must not either, and a POST gets the view's own 405 on both; nothing here changes
# state.
@csrf_exempt
@xframe_options_exempt
@frameable
def embed(request: HttpRequest, user: str, n: str) -> HttpResponse:
    """The one frameable page: the live ad at its exact size, or a same-size placeholder."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return response
    try:
        return _embed_page(request, user, n)
    except ApiError:
        html = render_to_string("adspace/embed.html", {"missing": True})
        response = HttpResponse(html, status=404)
        response["Cache-Control"] = f"public, max-age={NO_AD_MAX_AGE}"
        return response
    except TemporaryFailure:
        # An empty frame for now; the host page is unaffected and the next view retries.
        log.warning("docstore unavailable for %s", request.path, exc_info=True)
        response = HttpResponse(
            render_to_string("adspace/embed.html", {"unavailable": True}), status=503
        )
        response["Cache-Control"] = "no-store"
        response["Retry-After"] = str(RETRY_UNAVAILABLE)
        return response


def _embed_page(request: HttpRequest, user: str, n: str) -> HttpResponse:
    store, now = get_store(), get_clock().now()
    owner, index, campaign = _public_campaign(store, user, n)
    answer = serving.showing(store, owner, index, now, campaign)
    width, height = campaign["width"], campaign["height"]
    html = (
        None
        if answer.slot is None
        else _ad_page(request, store, owner, index, answer, width, height)
    )
    html_is_ad = html is not None
    if html is None:
        title = gateway.campaign_title(campaign)
        html = _placeholder_page(request, store, owner, index, width, height, title)
        max_age = _seconds_until(answer.until, now, NO_AD_MAX_AGE)
    else:
        max_age = _seconds_until(answer.until, now, EMBED_MAX_AGE)
    response = HttpResponse(html)
    freshness = "no-cache" if html_is_ad and _may_be_rejected(answer, now) else f"max-age={max_age}"
    response["Cache-Control"] = f"public, {freshness}"
    return response


def _may_be_rejected(answer: serving.Showing, now: int) -> bool:
    """The showing ad's review window is open: its seller may reject it at any moment, and a
    rejected ad must leave every screen at once, so no cache may keep it (`no-cache`: a client
    revalidates each time; the API's ETag makes that a 304)."""
    slot = answer.slot
    return slot is not None and now < review.window_end(slot["purchasedAt"], slot["endsAt"])


# render_to_string without the request: no context processors, so nothing touches the session
# or the user and the page stays the same for everyone (cacheable by anyone, and by us).


def _ad_page(
    request: HttpRequest,
    store: Store,
    owner: str,
    n: int,
    answer: serving.Showing,
    width: int,
    height: int,
) -> str | None:
    """The embed page of the showing slot's ad; None if its ad or image is gone (not cached)."""
    key = (*_slot_ident(request, store, answer), width, height)
    html = _embed_pages.get(key)
    if html is None:
        ad = _live_ad(store, owner, n, answer)
        if ad is None:
            return None
        slot = answer.slot
        assert slot is not None and answer.index is not None
        context = {
            "width": width,
            "height": height,
            "ad": ad,
            "click_path": delivery_views.click_url(owner, n, answer.index, slot),
            "beacon_path": delivery_views.impression_url(owner, n, answer.index, slot),
        }
        html = render_to_string("adspace/embed.html", context)
        _embed_pages.put(key, html)
    return html


def _placeholder_page(
    request: HttpRequest, store: Store, owner: str, n: int, width: int, height: int, title: str
) -> str:
    """The same-size "buy this space" page, linking to the campaign (named by its title)."""
    campaign_url = _campaign_url(request, store, owner, n)
    key = (serving.store_ident(store), width, height, campaign_url, title)
    html = _placeholders.get(key)
    if html is None:
        size, lines = placeholder_lines(width, height)
        context = {
            "width": width,
            "height": height,
            "ad": None,
            "campaign_url": campaign_url,
            "title": title,
            "font_size": size,
            "lines": lines,
            "rect_width": max(width - 1, 0),
            "rect_height": max(height - 1, 0),
            "center_x": width // 2,
        }
        html = render_to_string("adspace/embed.html", context)
        _placeholders.put(key, html)
    return html


@_api_view
def embed_size(request: HttpRequest, user: str, n: str) -> HttpResponse:
    """{width, height} of a campaign's space, so embed.js can reserve it before the frame loads."""
    _, _, campaign = _public_campaign(get_store(), user, n)
    body = {"width": campaign["width"], "height": campaign["height"]}
    return _cached_json(request, body, f"public, max-age={STATIC_MAX_AGE}")


@csrf_exempt
@require_safe
def embed_js(request: HttpRequest) -> HttpResponse:
    """The one-line installable script; rendered so it knows this site's absolute URL."""
    script = render_to_string("adspace/embed.js", {"base_url": settings.SITE_URL + "/"})
    response = HttpResponse(script, content_type="application/javascript; charset=utf-8")
    response["Cache-Control"] = f"public, max-age={STATIC_MAX_AGE}"
    response["Access-Control-Allow-Origin"] = "*"
    return response


def seller_campaigns(store: Store, username: str) -> list[dict]:
    """What the API key tab needs of a seller's campaigns (registered with accounts.apikeys)."""
    return [
        {"n": c["n"], "width": c["width"], "height": c["height"]}
        for c in gateway.owner_campaigns(store, username)
    ]
