"""Standing order pages: placing one from a campaign page, and the buyer's Orders tab (list,
edit the limit, cancel). The protocol is adspace.orders; these views parse and report."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from accounts import locks
from accounts.money import format_btc
from docstore import Ambiguous, TemporaryFailure, get_clock, get_store

from . import gateway, orders, services
from .views import (
    _INDEX,
    MAX_INDEX,
    PageError,
    _back,
    _campaign_ref_or_404,
    _filler_index_or_400,
    _shows_errors,
)

log = logging.getLogger(__name__)

ORDERS_PER_PAGE = 20
OUTCOME_UNKNOWN = (
    "We could not confirm the change to your order; look at your orders again in a moment."
)


def _order_index_or_404(text: str) -> int:
    if not _INDEX.fullmatch(text) or int(text) > MAX_INDEX:
        raise PageError(404, orders.OrderMissing.message, _back("orders", "Your orders"))
    return int(text)


@require_POST
@_shows_errors
def place(request: HttpRequest, user: str, n: str) -> HttpResponse:
    index = _campaign_ref_or_404(user, n)
    back = reverse("campaign", args=[user, index])
    if not request.user.is_authenticated:
        return redirect_to_login(back)
    filler = _filler_index_or_400(request.POST.get("filler"))
    store, clock = get_store(), get_clock()
    try:
        limit = orders.parse_limit(request.POST.get("limit"))
        expires_at = orders.parse_expiry(request.POST.get("expires"), clock.now())
        i = orders.place_order(
            store, clock, request.user.username, user, index, filler, limit, expires_at
        )
    except orders.OrderError as exc:
        raise PageError(exc.status, str(exc), (back, "Back to the campaign"))
    except locks.AccountBusy:
        raise PageError(503, locks.AccountBusy.message, (back, "Back to the campaign"))
    except (Ambiguous, TemporaryFailure):
        log.warning("order placement outcome unknown for %s", request.user.username, exc_info=True)
        raise PageError(503, OUTCOME_UNKNOWN, _back("orders", "Your orders"))
    messages.success(
        request,
        f"Order #{i} placed: the next slot is bought for you when the price falls to "
        f"{format_btc(limit)} BTC (if your balance covers it then). Nothing is held meanwhile.",
    )
    return redirect(back)


def _change(request: HttpRequest, index: str, act, done: str) -> HttpResponse:
    i = _order_index_or_404(index)
    store, clock = get_store(), get_clock()
    back = _back("orders", "Your orders")
    try:
        act(store, clock, request.user.username, i)
    except orders.OrderError as exc:
        raise PageError(exc.status, str(exc), back)
    except locks.AccountBusy:
        raise PageError(503, locks.AccountBusy.message, back)
    except (Ambiguous, TemporaryFailure):
        log.warning("order change outcome unknown for %s", request.user.username, exc_info=True)
        raise PageError(503, OUTCOME_UNKNOWN, back)
    messages.success(request, done.format(i=i))
    return redirect("orders")


@login_required
@require_POST
@_shows_errors
def cancel(request: HttpRequest, index: str) -> HttpResponse:
    return _change(request, index, orders.cancel_order, "Order #{i} is cancelled.")


@login_required
@require_POST
@_shows_errors
def edit(request: HttpRequest, index: str) -> HttpResponse:
    try:
        limit = orders.parse_limit(request.POST.get("limit"))
    except orders.OrderError as exc:
        raise PageError(exc.status, str(exc), _back("orders", "Your orders"))

    def act(store, clock, buyer, i):
        orders.edit_limit(store, clock, buyer, i, limit)

    return _change(request, index, act, f"Order #{{i}} now buys at {format_btc(limit)} BTC.")


@login_required
@require_safe
@_shows_errors
def order_list(request: HttpRequest) -> HttpResponse:
    before = request.GET.get("before")
    if before is not None and (not _INDEX.fullmatch(before) or int(before) > MAX_INDEX):
        raise PageError(404, "There is no such page of your orders.", _back("orders", "Orders"))
    store, username = get_store(), request.user.username
    found, drawn = orders.user_orders(
        store, username, None if before is None else int(before), ORDERS_PER_PAGE
    )
    campaigns = gateway.get_many(
        store, list({gateway.campaign_key(o["owner"], o["n"]) for o in found})
    )
    ads = gateway.get_many(store, list({gateway.filler_key(username, o["filler"]) for o in found}))
    rows = []
    for o in found:
        campaign = campaigns.get(gateway.campaign_key(o["owner"], o["n"]))
        ad = ads.get(gateway.filler_key(username, o["filler"]))
        rows.append(
            {
                **o,
                "title": gateway.campaign_title(campaign) if campaign else "(unavailable)",
                "ad": ad["nickname"] if ad else "(unavailable)",
                "expires": services.utc(o["expiresAt"]) if o.get("expiresAt") else None,
                "placed": services.utc(o["createdAt"]),
            }
        )
    lowest = min((o["i"] for o in found), default=None)
    context = {
        "rows": rows,
        "older": lowest if lowest else None,
        "active_tab": "orders",
        "max_open": settings.MAX_OPEN_ORDERS,
        "drawn": drawn,
    }
    return render(request, "adspace/orders.html", context)
