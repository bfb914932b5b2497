"""Staff pages for campaigns and slots, and the adspace panel of the admin dashboard.

`register_admin()` (called from `AdspaceConfig.ready`) adds them through the registries in
`accounts.admin` and `accounts.dashboard`, so `accounts` never imports adspace. Read-only but for
take-downs (below): a sale is final once its slot exists, and crediting is the creditor's job.

Lists page through the `campaigndir` directory by index (newest first), so a page costs a few
batched reads whatever the number of campaigns; a campaign's slots page by slot index the same
way. The one write: staff may take an ad down (`take_down_view`, adspace.review).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from accounts import dashboard, locks
from accounts.admin import admin_context, paginate, register_admin_urls, register_operation
from accounts.audit import Report
from accounts.gateway import directory_size
from accounts.models import USERNAME_RE
from docstore import Clock, DocstoreError, NotFound, Store, get_clock, get_store

from . import credit, gateway, pricing, review

log = logging.getLogger(__name__)

CAMPAIGNS_PER_PAGE = 50
SLOTS_PER_PAGE = 50


def _utc(t: int | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if isinstance(t, int) else None


def _inspect_url(username: str) -> str:
    return f"{reverse('admin:accounts_inspect')}?{urlencode({'username': username})}"


# --- the dashboard panel ----------------------------------------------------------------------


def _sats(side: dict[str, int], name: str) -> str:
    if name not in side:
        return "not audited"  # the adspace audit is not registered (AdspaceConfig.ready)
    return f"{side[name]} sats"


def campaigns_panel(store: Store, clock: Clock, report: Report) -> dashboard.Panel:
    rows = [
        ("Sellers", gateway.seller_count(store)),
        ("Campaigns", report.facts.get("campaigns", 0)),
        ("Slots sold", report.facts.get("slots sold", 0)),
        ("Uncredited sales (owed to sellers)", _sats(report.held, "uncredited sales")),
        ("Sale fees earned", _sats(report.held, "sale fees earned")),
        ("Seller credits in flight", _sats(report.held, "seller credits in flight")),
    ]
    return dashboard.Panel(
        "Campaigns",
        rows=rows,
        link=reverse("admin:adspace_campaigns"),
        link_text="All campaigns",
    )


# --- the campaigns list -------------------------------------------------------------------------


@dataclass
class CampaignLine:
    owner: str
    n: int
    width: int
    height: int
    min_price: int
    slot_hours: int
    slots_sold: int
    price: int
    created: datetime | None
    earned: int
    sales: int
    pending: int
    pending_sales: int

    @property
    def url(self) -> str:
        return reverse("admin:adspace_campaign", args=[self.owner, self.n])

    @property
    def owner_url(self) -> str:
        return _inspect_url(self.owner)


def _campaign_lines(store: Store, refs: list[tuple[str, int]], now: int) -> list[CampaignLine]:
    found = gateway.get_many(store, [gateway.campaign_key(o, n) for o, n in refs])
    lines = []
    for owner, n in refs:
        campaign = found.get(gateway.campaign_key(owner, n))
        if campaign is None:
            continue  # a dangling directory entry: the campaign insert never happened
        last = campaign.get("last")
        # One call per campaign (about three reads): a page is at most CAMPAIGNS_PER_PAGE.
        earnings = credit.campaign_earnings(store, owner, n)
        lines.append(
            CampaignLine(
                owner=owner,
                n=n,
                width=campaign["width"],
                height=campaign["height"],
                min_price=campaign["minPrice"],
                slot_hours=campaign["slotHours"],
                slots_sold=pricing.next_slot_index(last),
                price=pricing.current_price(campaign["minPrice"], last, now),
                created=_utc(campaign.get("createdAt")),
                earned=earnings["earned"],
                sales=earnings["sales"],
                pending=earnings["pending"],
                pending_sales=earnings["pendingSales"],
            )
        )
    return lines


def _directory_refs(store: Store, indexes: list[int]) -> list[tuple[str, int]]:
    found = gateway.get_many(store, [gateway.campaigndir_key(g) for g in indexes])
    refs: list[tuple[str, int]] = []
    for g in indexes:
        entry = found.get(gateway.campaigndir_key(g))
        if entry is not None and (entry["owner"], entry["n"]) not in refs:
            refs.append((entry["owner"], entry["n"]))
    return refs


def campaigns_view(request: HttpRequest) -> HttpResponse:
    """Every campaign, newest first, or one owner's (`?owner=`)."""
    store, now = get_store(), get_clock().now()
    owner = request.GET.get("owner", "").strip()
    context = admin_context(request, "Campaigns", owner=owner, lines=[], page=None)
    if owner and not re.match(USERNAME_RE, owner):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return TemplateResponse(request, "admin/adspace/campaigns.html", context)
    try:
        if owner:
            count = gateway.campaign_count(store, owner)
            page = paginate(request, range(count - 1, -1, -1), CAMPAIGNS_PER_PAGE)
            refs = [(owner, n) for n in page.object_list]
        else:
            size = directory_size(store, gateway.CAMPAIGNDIR)
            page = paginate(request, range(size - 1, -1, -1), CAMPAIGNS_PER_PAGE)
            refs = _directory_refs(store, list(page.object_list))
        lines = _campaign_lines(store, refs, now)
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return TemplateResponse(request, "admin/adspace/campaigns.html", context)
    context.update(lines=lines, page=page)
    return TemplateResponse(request, "admin/adspace/campaigns.html", context)


# --- one campaign and its slots -----------------------------------------------------------------


@dataclass
class SlotLine:
    index: int
    buyer: str
    price: int
    purchased: datetime | None
    starts: datetime | None
    ends: datetime | None
    status: str
    filler: str
    tx_state: str
    fee: int | None
    review: str = ""
    can_take_down: bool = False

    @property
    def buyer_url(self) -> str:
        return _inspect_url(self.buyer)


def _slot_status(slot: dict, now: int) -> str:
    if slot["endsAt"] <= now:
        return "ended"
    return "live" if slot["startsAt"] <= now else "queued"


def campaign_view(request: HttpRequest, owner: str, n: int) -> HttpResponse:
    back = HttpResponseRedirect(reverse("admin:adspace_campaigns"))
    if not re.match(USERNAME_RE, owner):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return back
    store, now = get_store(), get_clock().now()
    try:
        campaign = gateway.get_campaign(store, owner, n).value
    except NotFound:
        messages.error(request, f"There is no campaign {owner}/{n}.")
        return back
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return back
    last = campaign.get("last")
    top = last["slot"] if last else -1
    page = paginate(request, range(top, -1, -1), SLOTS_PER_PAGE)
    indexes = list(page.object_list)
    lines: list[SlotLine] = []
    try:
        slots = gateway.get_slots(store, owner, n, min(indexes), max(indexes)) if indexes else {}
        txs = gateway.get_many(store, [gateway.tx_key(owner, n, k) for k in indexes])
        # A slot past `last` is a sale in flight (or a campaign lagging behind one).
        beyond = gateway.get_slots(store, owner, n, top + 1, top + 2)
        earnings = credit.campaign_earnings(store, owner, n)
        cursor = gateway.get_many(store, [gateway.creditcursor_key(owner, n)]).get(
            gateway.creditcursor_key(owner, n)
        )
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return back
    for k in indexes:
        slot = slots.get(k)
        tx = txs.get(gateway.tx_key(owner, n, k))
        if slot is None:
            lines.append(SlotLine(k, "", 0, None, None, None, "MISSING", "", "", None))
            continue
        lines.append(
            SlotLine(
                index=k,
                buyer=slot["buyer"],
                price=slot["price"],
                purchased=_utc(slot.get("purchasedAt")),
                starts=_utc(slot.get("startsAt")),
                ends=_utc(slot.get("endsAt")),
                status=_slot_status(slot, now),
                filler=slot.get("filler", ""),
                tx_state=tx["state"] if tx else "no tx yet",
                fee=tx["fee"] if tx else None,
                review=_review_text(tx, now) if tx and k <= top else "",
                can_take_down=bool(tx) and k <= top and _can_take_down(tx),
            )
        )
    context = admin_context(
        request,
        f"Campaign {owner}/{n}",
        crumb=f"{owner}/{n}",
        parent_url=reverse("admin:adspace_campaigns"),
        parent_title="Campaigns",
        owner=owner,
        n=n,
        owner_url=_inspect_url(owner),
        campaign=campaign,
        created=_utc(campaign.get("createdAt")),
        price=pricing.current_price(campaign["minPrice"], last, now),
        slots_sold=top + 1,
        last=last,
        beyond=sorted(beyond),
        earnings=earnings,
        cursor=cursor or {"next": 0, "earned": 0, "sales": 0},
        lines=lines,
        page=page,
    )
    return TemplateResponse(request, "admin/adspace/campaign.html", context)


def _review_text(tx: dict, now: int) -> str:
    if tx["state"] == "rejected":
        by = "staff" if tx["rejection"].get("staff") else "seller"
        return f"rejected by {by} {tx['rejection']['by']}: {tx['rejection']['reason']}"
    if tx.get("takenDown"):
        return f"taken down by {tx['takenDown']['by']}: {tx['takenDown']['reason']}"
    if review.in_review(tx, now):
        return "in review"
    return "approved" if tx.get("approvedAt") else ""


def _can_take_down(tx: dict) -> bool:
    return tx["state"] == "uncredited" or (tx["state"] == "credited" and not tx.get("takenDown"))


TAKEN_DOWN = {
    "refunded": "Slot {k} of {owner}/{n} taken down: the sale was not credited yet, so it is "
    "rejected and its buyer refunded in full; the seller is credited nothing.",
    "hidden": "Slot {k} of {owner}/{n} taken down: the sale was already credited to the seller, "
    "so the ad is only hidden and no money moved.",
}


def take_down_view(request: HttpRequest, owner: str, n: int, k: int) -> HttpResponse:
    """Staff take an ad down, with a reason: a rejection with refund before its sale is
    credited, else only hidden (adspace.review.take_down). A refusal is the campaign page with
    the reason and a 4xx status; nothing is written."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not re.match(USERNAME_RE, owner):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return HttpResponseRedirect(reverse("admin:adspace_campaigns"))
    store, clock = get_store(), get_clock()
    try:
        result = review.take_down(
            store, clock, request.user.get_username(), owner, n, k, request.POST.get("reason")
        )
    except review.ReviewError as exc:
        messages.error(request, str(exc))
        response = campaign_view(request, owner, n)
        response.status_code = exc.status
        return response
    except (locks.AccountBusy, DocstoreError) as exc:
        messages.error(request, f"Not confirmed ({exc}); reload and check the slot, then retry.")
        response = campaign_view(request, owner, n)
        response.status_code = 409 if isinstance(exc, locks.AccountBusy) else 503
        return response
    log.warning("staff take-down by=%s slot=%s/%s/%s result=%s", request.user, owner, n, k, result)
    messages.success(request, TAKEN_DOWN[result].format(k=k, owner=owner, n=n))
    return HttpResponseRedirect(reverse("admin:adspace_campaign", args=[owner, n]))


# --- registration (from AdspaceConfig.ready) --------------------------------------------------


def register_admin() -> None:
    """Add the campaign pages, their index links and the dashboard panel. Idempotent."""
    register_admin_urls(
        [
            ("adspace/campaigns/", campaigns_view, "adspace_campaigns"),
            ("adspace/campaigns/<str:owner>/<int:n>/", campaign_view, "adspace_campaign"),
            (
                "adspace/campaigns/<str:owner>/<int:n>/<int:k>/take-down",
                take_down_view,
                "adspace_take_down",
            ),
        ]
    )
    register_operation(
        "Campaigns",
        "adspace_campaigns",
        "Every campaign with its owner, size, prices, slots sold and earnings; each one's slots.",
    )
    dashboard.register_panel("Campaigns", campaigns_panel, uses_report=True)
    dashboard.register_heartbeat("credit_sellers", "manage.py credit_sellers, when run on its own")
