"""The API key tab: the seller's key, a way to replace it, and copy-paste examples."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache

from docstore import Ambiguous, TemporaryFailure, get_clock, get_store

from . import apikeys, locks
from .gateway import ensure_account

log = logging.getLogger(__name__)

# The limit the API applies per key, campaign and slot (adspace.api.REQUESTS_PER_SLOT); shown
# here as text only, since accounts does not import adspace.
REQUESTS_PER_SLOT = 50


@login_required
@never_cache
def api_key(request: HttpRequest) -> HttpResponse:
    store, username = get_store(), request.user.username
    if request.method == "POST":
        try:
            apikeys.regenerate_api_key(store, username)
        except locks.AccountMissing:
            messages.error(request, "Your account is not set up yet; reload this page and retry.")
        except (locks.AccountBusy, TemporaryFailure, Ambiguous):
            log.warning("api key regeneration failed user=%s", username, exc_info=True)
            messages.error(request, "Your key could not be replaced just now; try again.")
        else:
            messages.success(
                request, "Your API key was replaced. The old key no longer works: update your site."
            )
        return redirect("api_key")
    # ensure_account, as on the account page: a user without the doc gets one on first sight.
    account = ensure_account(store, get_clock(), username).value
    campaigns = apikeys.seller_campaigns(store, username)
    example = campaigns[0] if campaigns else None
    context = {
        "api_key": account.get("apiKey", ""),
        "campaigns": campaigns,
        "example": example,
        "requests_per_slot": REQUESTS_PER_SLOT,
        "embed_js_url": settings.SITE_URL + reverse("embed_js"),
        "active_tab": "api_key",
    }
    if example is not None:
        args = [username, example["n"]]
        context.update(
            api_url=settings.SITE_URL + reverse("ad_api_current", args=args),
            embed_url=settings.SITE_URL + reverse("embed", args=args),
        )
    return render(request, "accounts/api_key.html", context)
