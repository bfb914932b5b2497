"""The click redirect `/c/<token>` and the impression beacon `/i/<token>` (adspace.delivery).

Both are served on the lean path (only SecurityMiddleware and CommonMiddleware): they never read
the session, the user, CSRF or messages, and render their pages without a request context.
Every answer is `Cache-Control: no-store`, so each click and each rendering reaches us.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlsplit

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from docstore import Store, TemporaryFailure, get_clock, get_store

from . import delivery, stats

log = logging.getLogger(__name__)

# The smallest transparent GIF: what an <img> beacon expects back.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
TOO_MANY_CLICKS = "Too many clicks on this ad from your address; try again later."
UNAVAILABLE = "The ad service is briefly unavailable; try again in a minute."


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _method_not_allowed() -> HttpResponse:
    response = HttpResponse(status=405)
    response["Allow"] = "GET, HEAD"
    return _no_store(response)


def _click_page(status: int, message: str, campaign: tuple[str, int] | None) -> HttpResponse:
    """A small page saying why, with a link to the campaign (whose space the link was for)."""
    if campaign is not None:
        link = (reverse("campaign", args=list(campaign)), "the ad space this link was for")
    else:
        link = (reverse("sellers"), "ad spaces for sale")
    html = render_to_string("adspace/click_missing.html", {"message": message, "link": link})
    response = HttpResponse(html, status=status)
    if status == 429:
        response["Retry-After"] = str(delivery.ClientBudget.WINDOW)
    return _no_store(response)


_STAT_OF = {delivery.CLICK: stats.CLICKS, delivery.IMPRESSION: stats.IMPRESSIONS}


def _count(request: HttpRequest, store: Store, kind: str, ref: delivery.SlotRef, now: int) -> bool:
    """Count a person's GET of a served slot (a bot's, a prefetch or a HEAD is answered alike,
    uncounted); False when the client is past its allowance (then nothing is counted)."""
    if request.method != "GET" or not delivery.is_person(request):
        return True
    if not delivery.within_budget(request, kind, ref, now):
        return False
    stats.record(store, ref.owner, ref.n, ref.k, now, _STAT_OF[kind])
    return True


# Exempt: a POST gets the view's own 405 on both request paths (the slim one has no CSRF check).
@csrf_exempt
def click(request: HttpRequest, token: str) -> HttpResponse:
    """Count the click, then 302 to the URL stored on the slot's ad."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed()
    store, now = get_store(), get_clock().now()
    try:
        ref = delivery.read_token(delivery.CLICK, token, now)
        slot = delivery.served_slot(store, ref, now)
        url = delivery.ad_url(store, ref, slot)
    except delivery.NotCounted as exc:
        return _click_page(exc.status, exc.message, exc.campaign)
    except TemporaryFailure:
        log.warning("docstore unavailable for a click", exc_info=True)
        response = _click_page(503, UNAVAILABLE, None)
        response["Retry-After"] = "60"
        return response
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # Ads are stored with an absolute http(s) URL (adspace.forms); anything else goes nowhere.
        log.error("ad of slot %s/%s#%s has an unusable URL", ref.owner, ref.n, ref.k)
        return _click_page(404, delivery.UNKNOWN, (ref.owner, ref.n))
    if not _count(request, store, delivery.CLICK, ref, now):
        return _click_page(429, TOO_MANY_CLICKS, (ref.owner, ref.n))
    return _no_store(HttpResponseRedirect(url))


def _beacon_answer(
    status: int, body: bytes = b"", content_type: str = "text/plain"
) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=content_type)
    # A site showing the ad through the API may ping the beacon with fetch(); it reads nothing.
    response["Access-Control-Allow-Origin"] = "*"
    response["X-Robots-Tag"] = "noindex"
    return _no_store(response)


@csrf_exempt
def impression(request: HttpRequest, token: str) -> HttpResponse:
    """Count one showing of the slot's ad; a 1x1 transparent GIF."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed()
    store, now = get_store(), get_clock().now()
    try:
        ref = delivery.read_token(delivery.IMPRESSION, token, now)
        delivery.served_slot(store, ref, now)
    except delivery.NotCounted as exc:
        return _beacon_answer(exc.status, exc.message.encode())
    except TemporaryFailure:
        log.warning("docstore unavailable for a beacon", exc_info=True)
        return _beacon_answer(503, UNAVAILABLE.encode())
    if not _count(request, store, delivery.IMPRESSION, ref, now):
        return _beacon_answer(429, b"Too many impressions from this address.")
    return _beacon_answer(200, PIXEL, "image/gif")


def click_url(owner: str, n: int, k: int, slot: dict) -> str:
    """Path of the slot's click redirect."""
    return reverse("click", args=[delivery.token(delivery.CLICK, owner, n, k, slot)])


def impression_url(owner: str, n: int, k: int, slot: dict) -> str:
    """Path of the slot's impression beacon."""
    return reverse("impression", args=[delivery.token(delivery.IMPRESSION, owner, n, k, slot)])
