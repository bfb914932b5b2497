"""The CSV export links (adspace.exports): the signed-in user's own data only.

The user is never taken from the request: every export reads `request.user`'s documents, and a
campaign is named by its index among their own campaigns, so another user's data cannot even be
named. A bad range or campaign is a 4xx page before anything is streamed.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from docstore import NotFound, get_clock, get_store

from . import exports, gateway, stats_report
from .views import _INDEX, MAX_INDEX, PageError, _back, _shows_errors


def _range(request: HttpRequest) -> tuple:
    today = stats_report.utc_day(get_clock().now())
    try:
        return stats_report.parse_range(
            request.GET.get("from"),
            request.GET.get("to"),
            today,
            default_days=stats_report.MAX_RANGE_DAYS,
        )
    except stats_report.RangeError as exc:
        raise PageError(400, exc.message, _back("account", "Your account")) from None


def _name(kind: str, first, last) -> str:
    return f"{kind}-{first.isoformat()}-to-{last.isoformat()}.csv"


def _export(kind: str, rows_of, header: list[str]):
    """The view of one export: the signed-in user's rows of `kind` in the asked range."""

    @login_required
    @require_safe
    @_shows_errors
    def view(request: HttpRequest) -> HttpResponse:
        first, last = _range(request)
        rows = rows_of(get_store(), request.user.username, first, last)
        return exports.streamed_csv(_name(kind, first, last), header, rows)

    view.__name__ = view.__qualname__ = f"{kind}_csv"
    return view


ledger_csv = _export("ledger", exports.ledger_rows, exports.LEDGER_HEADER)
purchases_csv = _export("purchases", exports.purchases_rows, exports.PURCHASES_HEADER)
sales_csv = _export("sales", exports.sales_rows, exports.SALES_HEADER)


@login_required
@require_safe
@_shows_errors
def stats_csv(request: HttpRequest) -> HttpResponse:
    """Per slot and day; one campaign (`?campaign=<n>`, one of yours) or all of them."""
    first, last = _range(request)
    store, owner = get_store(), request.user.username
    n = request.GET.get("campaign")
    if n is None:
        campaigns = gateway.owner_campaigns(store, owner)
    else:
        missing = PageError(404, "There is no such campaign of yours.", _back("sales", "Sales"))
        if not _INDEX.fullmatch(n) or int(n) > MAX_INDEX:
            raise missing
        try:
            campaigns = [gateway.get_campaign(store, owner, int(n)).value]
        except NotFound:
            raise missing from None
    rows = exports.stats_rows(store, owner, campaigns, first, last)
    return exports.streamed_csv(_name("statistics", first, last), exports.STATS_HEADER, rows)
