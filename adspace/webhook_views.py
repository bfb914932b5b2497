"""The seller's webhook page: register or change the URL, rotate the secret, send a test event,
and the delivery log. Acts on the signed-in seller only. The secret is shown in the answer to the
POST that made it and never again (no redirect: a flash message would carry it in the session)."""

from __future__ import annotations

import logging
import time

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from accounts.security import accepts_body_up_to
from docstore import DocstoreError, get_clock, get_store

from . import webhooks

log = logging.getLogger(__name__)

FORM_MAX_BODY_BYTES = 4 * 1024


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _page(request: HttpRequest, status: int = 200, **extra) -> HttpResponse:
    store, seller = get_store(), request.user.username
    config = webhooks.get_config(store, seller)
    attempts = [{**a, "when": _when(a["at"])} for a in webhooks.delivery_log(store, seller)]
    context = {
        "hook_url": config.value["url"] if config else "",
        "configured": config is not None,
        "attempts": attempts,
        "url_max": webhooks.MAX_URL,
        "active_tab": "sales",
        **extra,
    }
    return render(request, "adspace/webhook.html", context, status=status)


@login_required
@never_cache
@accepts_body_up_to(FORM_MAX_BODY_BYTES)
def webhook(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD, POST"})
    if request.method != "POST":
        return _page(request)
    store, clock, seller = get_store(), get_clock(), request.user.username
    try:
        action = request.POST.get("action")
        url = request.POST.get("url")
    except TooManyFieldsSent:
        return _page(request, 400, error="The form has too many fields.")
    try:
        if action == "url":
            secret = webhooks.set_url(store, clock, seller, url)
            if secret is None:
                messages.success(request, "Your webhook URL was changed; the secret stays.")
                return redirect("webhook")
            return _page(request, secret=secret, notice="Your webhook URL was registered.")
        if action == "rotate":
            secret = webhooks.rotate_secret(store, seller)
            return _page(request, secret=secret, notice="A new secret was made; the old one no "
                         "longer signs anything.")  # fmt: skip
        if action == "test":
            event_id = webhooks.queue_test(store, clock, seller)
            messages.success(request, f"Test event {event_id} queued: it is sent within seconds.")
            return redirect("webhook")
    except webhooks.WebhookError as exc:
        return _page(request, exc.status, error=str(exc))
    except DocstoreError:
        log.warning("webhook page action failed user=%s", seller, exc_info=True)
        return _page(request, 503, error="That could not be saved just now; try again.")
    return _page(request, 400, error="There is no such action.")
