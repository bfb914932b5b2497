"""The seller's sales pages and their review buttons (approve, reject, review mode).

Every action acts on the signed-in seller's own campaigns only: the owner is never taken from the
request, so another seller's sale cannot even be named. Refusals are a page with a 4xx status
and change nothing (adspace.review checks everything before its first write).
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import TooManyFieldsSent
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST, require_safe

from accounts import locks
from accounts.security import accepts_body_up_to
from docstore import Ambiguous, NotFound, TemporaryFailure, get_clock, get_store

from . import gateway, orders, review, sales, stats_chart, stats_report
from .views import _INDEX, MAX_INDEX, PageError, _back, _page_or_404, _shows_errors

log = logging.getLogger(__name__)

# A reason and a CSRF token, with room to spare; anything larger is not from our form.
DECISION_MAX_BODY_BYTES = 8 * 1024
BUSY = "The buyer's account is busy with another operation; try again in a moment."
UNKNOWN = (
    "We could not confirm the change; reload the sales page in a minute to see whether it "
    "happened. A rejection refunds the buyer at most once."
)


def _index_or_404(text: str, what: str) -> int:
    if not _INDEX.fullmatch(text) or int(text) > MAX_INDEX:
        raise PageError(404, f"There is no such {what} of yours.", _back("sales", "All sales"))
    return int(text)


def _own_campaign_or_404(owner: str, n: str) -> tuple[int, dict]:
    index = _index_or_404(n, "campaign")
    try:
        return index, gateway.get_campaign(get_store(), owner, index).value
    except NotFound:
        raise PageError(404, "There is no such campaign of yours.", _back("sales", "All sales"))


def _delivery(request: HttpRequest, store, campaign: dict, now: int) -> dict:
    """The campaign's impressions and clicks over the asked days (default: the last two weeks)."""
    try:
        first, last = stats_report.parse_range(
            request.GET.get("from"), request.GET.get("to"), stats_report.utc_day(now)
        )
    except stats_report.RangeError as exc:
        back = (reverse("campaign_sales", args=[campaign["n"]]), "The last two weeks")
        raise PageError(400, exc.message, back) from None
    owner, n = campaign["owner"], campaign["n"]
    report = stats_report.campaign_report(store, owner, n, campaign, first, last)
    return {
        "report": report,
        "chart": mark_safe(stats_chart.chart_svg(report.days)),  # noqa: S308 our markup
    }


def _render(request: HttpRequest, campaigns: list[dict], campaign: dict | None) -> HttpResponse:
    store, now = get_store(), get_clock().now()
    paginator = Paginator(sales.SoldSlots(campaigns), sales.SALES_PER_PAGE)
    page = _page_or_404(paginator, request.GET.get("page"), "your sales")
    delivery = {} if campaign is None else _delivery(request, store, campaign, now)
    context = {
        **delivery,
        "campaign": campaign,
        "rows": sales.rows(store, request.user.username, list(page.object_list), now),
        "page": page,
        "total": paginator.count,
        "reason_max": review.MAX_REASON,
        "order_book": None
        if campaign is None
        else orders.book_summary(store, campaign["owner"], campaign["n"], now),
    }
    return render(request, "adspace/sales.html", context)


@login_required
@require_safe
@_shows_errors
def all_sales(request: HttpRequest) -> HttpResponse:
    return _render(request, gateway.owner_campaigns(get_store(), request.user.username), None)


@login_required
@require_safe
@_shows_errors
def campaign_sales(request: HttpRequest, n: str) -> HttpResponse:
    _, campaign = _own_campaign_or_404(request.user.username, n)
    return _render(request, [campaign], campaign)


def _post_field(request: HttpRequest, name: str) -> str | None:
    try:
        return request.POST.get(name)
    except TooManyFieldsSent:
        raise PageError(400, "The form has too many fields.") from None


def _act(request: HttpRequest, action, done: str, back: str) -> HttpResponse:
    """Run one review action; its refusals are pages, its success a message on the sales page."""
    try:
        result = action()
    except review.ReviewError as exc:
        raise PageError(exc.status, str(exc), (back, "Back to your sales")) from None
    except locks.AccountBusy:
        raise PageError(409, BUSY, (back, "Back to your sales")) from None
    except (Ambiguous, TemporaryFailure):
        log.warning("review action outcome unknown", exc_info=True)
        raise PageError(503, UNKNOWN, (back, "Back to your sales")) from None
    messages.success(request, done if result is None else done.format(result=result))
    return redirect(back)


@login_required
@require_POST
@accepts_body_up_to(DECISION_MAX_BODY_BYTES)
@_shows_errors
def decide(request: HttpRequest, n: str, k: str, action: str) -> HttpResponse:
    owner = request.user.username
    index, _ = _own_campaign_or_404(owner, n)
    slot = _index_or_404(k, "sale")
    store, clock = get_store(), get_clock()
    back = reverse("campaign_sales", args=[index])
    if action == "approve":
        return _act(
            request,
            lambda: review.approve_sale(store, clock, owner, index, slot),
            f"Sale {slot} of campaign #{index} approved: it is credited on the next pass.",
            back,
        )
    if action == "reject":
        reason = _post_field(request, "reason")
        return _act(
            request,
            lambda: review.reject_sale(store, clock, owner, owner, index, slot, reason),
            f"Sale {slot} of campaign #{index} rejected: the buyer was refunded in full.",
            back,
        )
    raise PageError(404, "There is no such action.")


@login_required
@require_POST
@accepts_body_up_to(DECISION_MAX_BODY_BYTES)
@_shows_errors
def review_mode(request: HttpRequest, n: str) -> HttpResponse:
    owner = request.user.username
    index, _ = _own_campaign_or_404(owner, n)
    mode = _post_field(request, "mode") or ""
    back = reverse("campaign_sales", args=[index])
    label = {"show": "show at once", "approve": "approve first"}.get(mode, "")
    return _act(
        request,
        lambda: review.set_mode(get_store(), owner, index, mode),
        f"Campaign #{index} now reviews ads: {label}.",
        back,
    )
