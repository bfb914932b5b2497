"""Pages for selling and buying ad space, and the ad images they show.

Views only parse input and call the gateway or the buy protocol; every refusal is a page or a
message the person can act on, never a 500.
"""

from __future__ import annotations

import functools
import logging
import re
from html import escape

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.core.paginator import EmptyPage, Page, Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from accounts import locks, ratelimit, unavailable
from accounts.gateway import ensure_account
from accounts.money import MAX_SATS, format_btc
from accounts.security import accepts_body_up_to
from accounts.templatetags.cached_url import cached_reverse
from docstore import Ambiguous, NotFound, TemporaryFailure, get_clock, get_store

from . import browse_views, buy, gateway, images, live, orders, pricing, services, serving
from .credit import owner_earnings
from .forms import AdForm, CampaignEditForm, CampaignForm

log = logging.getLogger(__name__)

SELLERS_PER_PAGE = 20
CAMPAIGNS_PER_PAGE = 20
PURCHASES_PER_PAGE = 20
ADS_PER_PAGE = 10
BUY_FORM_MAX_ADS = 200
MAX_INDEX = 10**9  # of a campaign or an ad

_USERNAME = re.compile(r"[A-Za-z0-9]{1,32}")
# Canonical ASCII decimal only: "07", "+7" and " 7" are not campaign 7.
_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_SATS = re.compile(r"[1-9][0-9]{0,15}")

OUTCOME_UNKNOWN = (
    "We could not confirm the purchase; it will complete or be undone automatically within a "
    "minute; you will never be charged twice."
)
UPLOAD_TOO_LARGE = (
    f"The upload is too large: an ad image can be at most "
    f"{images.MAX_IMAGE_BYTES // (1024 * 1024)} MB."
)
TOO_MANY_UPLOADS = "You have uploaded too many ads in the last hour; wait a while and try again."
# The body of an ad upload: the image and a few short fields, with room for multipart framing.
UPLOAD_MAX_BODY_BYTES = images.MAX_IMAGE_BYTES + 64 * 1024


class PageError(Exception):
    """A refusal shown as its own page with a status: bad input, a missing object."""

    def __init__(self, status: int, message: str, back: tuple[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.back = status, message, back


def _back(name: str, label: str, *args) -> tuple[str, str]:
    return reverse(name, args=args), label


def _error_page(request: HttpRequest, exc: PageError) -> HttpResponse:
    context = {"status": exc.status, "message": exc.message, "back": exc.back}
    return render(request, "adspace/error.html", context, status=exc.status)


def _shows_errors(view):
    """Turn a PageError raised anywhere in the view into its page."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except PageError as exc:
            return _error_page(request, exc)

    return wrapper


# --- access checks: one helper per kind of object ---------------------------------------------


def _seller_or_404(user: str) -> int:
    """How many campaign indexes the user has drawn; 404 for a malformed name or someone selling
    nothing."""
    if not _USERNAME.fullmatch(user):
        raise PageError(404, "There is no such user.")
    count = gateway.campaign_count(get_store(), user)
    if not count:
        raise PageError(404, f"User {user} has no ad campaigns.", _back("sellers", "All sellers"))
    return count


class _OwnerCampaigns:
    """An owner's campaigns by index, as a sequence the Paginator can slice (one read a page).

    Its length counts indexes drawn; a page leaves out the holes a crash or a refused create
    left, so a page may show fewer rows than its size."""

    def __init__(self, store, owner: str, count: int | None = None):
        self.store, self.owner = store, owner
        self.total = gateway.campaign_count(store, owner) if count is None else count

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, item: slice) -> list[dict]:
        start, stop, _ = item.indices(self.total)
        return gateway.campaigns_in_range(self.store, self.owner, start, stop)


def _campaign_ref_or_404(user: str, n: str) -> int:
    """The campaign index from the URL, if the owner and index could name a campaign at all."""
    if not _USERNAME.fullmatch(user) or not _INDEX.fullmatch(n) or int(n) > MAX_INDEX:
        raise PageError(404, buy.CampaignMissing.message, _back("sellers", "All sellers"))
    return int(n)


def _campaign_or_404(user: str, n: str) -> tuple[int, dict]:
    index = _campaign_ref_or_404(user, n)
    try:
        return index, gateway.get_campaign(get_store(), user, index).value
    except NotFound:
        raise PageError(404, buy.CampaignMissing.message, _back("sellers", "All sellers"))


def _filler_index_or_400(text: str | None) -> int:
    """A filler index as sent by the form. Whose it is, buy_next_slot checks on its own read."""
    if text is None or not _INDEX.fullmatch(text) or int(text) > MAX_INDEX:
        raise PageError(400, buy.FillerInvalid.message)
    return int(text)


def _accepted_price_or_400(text: str | None) -> int:
    if text is None or not _SATS.fullmatch(text) or int(text) > MAX_SATS:
        raise PageError(
            400,
            "The price you accepted was missing or not a whole positive number of satoshis. "
            "Reload the campaign page and try again.",
        )
    return int(text)


def _page_or_404(paginator: Paginator, number: str | None, what: str) -> Page:
    if number is None:
        number = "1"
    if not _INDEX.fullmatch(number) or number == "0":
        raise PageError(404, f"There is no page {number[:20]} of {what}.")
    try:
        return paginator.page(int(number))
    except EmptyPage:
        raise PageError(404, f"The requested page does not exist: {what} have no page {number}.")


# --- selling ------------------------------------------------------------------------------------


@login_required
@_shows_errors
def sell(request: HttpRequest) -> HttpResponse:
    store, clock = get_store(), get_clock()
    owner = request.user.username
    if request.method == "POST":
        form = CampaignForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                n = gateway.create_campaign(
                    store, clock, owner, data["min_price"], data["slot_hours"],
                    data["width"], data["height"], data["disallowed"],
                    max_campaigns=settings.MAX_CAMPAIGNS_PER_USER, title=data["title"],
                    site_url=data["site_url"], description=data["description"],
                )  # fmt: skip
            except gateway.TooManyCampaigns as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Campaign #{n} created.")
                return redirect("sell")
        status = 400
    else:
        form, status = CampaignForm(), 200
    now = clock.now()
    paginator = Paginator(_OwnerCampaigns(store, owner), CAMPAIGNS_PER_PAGE)
    page = _page_or_404(paginator, request.GET.get("page"), "your campaigns")
    campaigns = list(page.object_list)
    earnings = owner_earnings(store, owner, [c["n"] for c in campaigns])
    site = settings.SITE_URL
    rows = [
        {
            "row": services.campaign_row(c, now),
            "earnings": earnings.get(c["n"], {}),
            "script": f'<script async src="{site}/embed.js" data-campaign="{owner}/{c["n"]}"></script>',
            "iframe": (
                f'<iframe src="{site}/embed/{owner}/{c["n"]}" width="{c["width"]}" '
                f'height="{c["height"]}" style="border:0" loading="lazy" title="Ad"></iframe>'
            ),
        }
        for c in campaigns
    ]
    context = {
        "form": form,
        "campaigns": rows,
        "page": page,
        "sale_fee_permille": settings.SALE_FEE_PERMILLE,
    }
    return render(request, "adspace/sell.html", context, status=status)


def _own_campaign_or_4xx(request: HttpRequest, user: str, n: str) -> tuple[int, dict]:
    """The campaign at the URL, if the logged-in user owns it: 404 if none, 403 if another's."""
    index, doc = _campaign_or_404(user, n)
    if not buy.is_own_campaign(request.user.username, doc):
        raise PageError(
            403,
            str(gateway.NotCampaignOwner()),
            _back("campaign", "Back to the campaign", user, index),
        )
    return index, doc


def _edit_initial(doc: dict) -> dict:
    return {
        "title": doc.get("title", ""),
        "site_url": doc.get("siteUrl", ""),
        "description": doc.get("description", ""),
        "min_price": doc["minPrice"],
        "slot_hours": doc["slotHours"],
        "width": doc["width"],
        "height": doc["height"],
        "disallowed": doc.get("disallowed", []),
    }


@login_required
@_shows_errors
def edit_campaign(request: HttpRequest, user: str, n: str) -> HttpResponse:
    index, doc = _own_campaign_or_4xx(request, user, n)
    store = get_store()
    sold = gateway.has_sold(store, user, index, doc)
    form = CampaignEditForm(
        request.POST if request.method == "POST" else None,
        initial=_edit_initial(doc),
        terms_editable=not sold,
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                gateway.update_campaign(store, user, index, request.user.username, form.changes())
            except (gateway.TermsFrozen, gateway.NotCampaignOwner) as exc:
                form.add_error(None, str(exc))
            except NotFound:
                raise PageError(404, buy.CampaignMissing.message, _back("sell", "Your campaigns"))
            else:
                messages.success(request, "Campaign saved.")
                return redirect("campaign", user, index)
    context = {
        "form": form,
        "campaign": services.campaign_row(doc, get_clock().now()),
        "sold": sold,
    }
    return render(request, "adspace/edit_campaign.html", context, status=status)


@require_POST
@login_required
@_shows_errors
def pause_campaign(request: HttpRequest, user: str, n: str) -> HttpResponse:
    index, _ = _own_campaign_or_4xx(request, user, n)
    action = request.POST.get("action")
    if action not in ("pause", "resume"):
        raise PageError(
            400,
            "Choose to pause or to resume the campaign.",
            _back("campaign", "Back", user, index),
        )
    try:
        changed = gateway.set_campaign_paused(
            get_store(), user, index, request.user.username, action == "pause"
        )
    except NotFound:
        raise PageError(404, buy.CampaignMissing.message, _back("sell", "Your campaigns"))
    if action == "pause":
        text = "Campaign paused: no new slot can be bought; sold slots still run."
    else:
        text = "Campaign resumed: the next slot is on sale again."
    (messages.success if changed else messages.info)(
        request, text if changed else f"The campaign was already {action}d."
    )
    return redirect("campaign", user, index)


# --- my ads -------------------------------------------------------------------------------------


@require_POST
@login_required
@_shows_errors
def archive_ad(request: HttpRequest, index: str) -> HttpResponse:
    i = _filler_index_or_400(index)
    action = request.POST.get("action")
    if action not in ("archive", "restore"):
        raise PageError(400, "Choose to archive or to restore the ad.", _back("my_ads", "Your ads"))
    try:
        gateway.set_filler_archived(get_store(), request.user.username, i, action == "archive")
    except NotFound:
        raise PageError(404, "You have no such ad.", _back("my_ads", "Your ads"))
    if action == "archive":
        messages.success(request, "Ad archived: it is no longer offered when you buy a slot.")
    else:
        messages.success(request, "Ad restored: you can buy slots with it again.")
    return redirect(reverse("my_ads") + (f"?page={p}" if (p := _page_param(request)) else ""))


def _page_param(request: HttpRequest) -> str | None:
    p = request.POST.get("page")
    return p if p and _INDEX.fullmatch(p) and p != "0" else None


@login_required
@_shows_errors
def purchases(request: HttpRequest) -> HttpResponse:
    store, username = get_store(), request.user.username
    account = ensure_account(store, get_clock(), username).value
    before = request.GET.get("before")
    if before is not None and (not _INDEX.fullmatch(before) or before == "0"):
        raise PageError(
            404, "There is no such page of your purchases.", _back("purchases", "Newest purchases")
        )
    page = services.purchases_page(
        store,
        username,
        account,
        None if before is None else int(before),
        PURCHASES_PER_PAGE,
        get_clock().now(),
    )
    context = {
        "purchases": page.rows,
        "older": page.older,
        "first_page": before is None,
        "active_tab": "purchases",
    }
    return render(request, "adspace/purchases.html", context)


@login_required
@_shows_errors
def my_ads(request: HttpRequest) -> HttpResponse:
    store = get_store()
    fillers = services.NewestFirstFillers(store, request.user.username)
    page = _page_or_404(Paginator(fillers, ADS_PER_PAGE), request.GET.get("page"), "your ads")
    ads = list(page.object_list)
    urls = services.image_urls(store, [f["image"] for f in ads])
    context = {
        "page": page,
        "ads": [{**f, "image_url": urls.get(f["image"])} for f in ads],
        "total": len(fillers),
        "active_tab": "my_ads",
    }
    return render(request, "adspace/my_ads.html", context)


@accepts_body_up_to(UPLOAD_MAX_BODY_BYTES)
@login_required
@_shows_errors
def new_ad(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "adspace/new_ad.html", {"form": AdForm(), "active_tab": "new_ad"})
    store, username = get_store(), request.user.username
    # Counted before the body is read: decoding is the costly part of an upload.
    if not ratelimit.hit("upload", username, settings.UPLOAD_RATE_LIMIT, 3600):
        raise PageError(429, TOO_MANY_UPLOADS, _back("my_ads", "Your ads"))
    # Refused from the declared length, before the body is read or parsed.
    if _content_length(request) > UPLOAD_MAX_BODY_BYTES:
        raise PageError(413, UPLOAD_TOO_LARGE, _back("new_ad", "Try another file"))
    if gateway.filler_count(store, username) >= settings.MAX_ADS_PER_USER:
        # Before the image is decoded: nothing could come of it.
        raise PageError(
            400, str(gateway.TooManyAds(settings.MAX_ADS_PER_USER)), _back("my_ads", "Your ads")
        )
    try:
        form = AdForm(request.POST, request.FILES)
        valid = form.is_valid()
    except RequestDataTooBig:
        raise PageError(413, UPLOAD_TOO_LARGE, _back("new_ad", "Try another file"))
    except TooManyFieldsSent:
        raise PageError(400, "The form sent too many fields.", _back("new_ad", "Try another file"))
    if form.busy:
        raise PageError(503, form.busy, _back("new_ad", "Try again"))
    if valid and services.nickname_in_use(store, username, form.cleaned_data["nickname"]):
        form.add_error("nickname", _nickname_taken(form.cleaned_data["nickname"]))
        valid = False
    if not valid:
        return render(
            request, "adspace/new_ad.html", {"form": form, "active_tab": "new_ad"}, status=400
        )
    data = form.cleaned_data
    image: images.ValidatedImage = data["validated"]
    quota = settings.MAX_IMAGE_BYTES_PER_USER
    try:
        # The cap and the quota before anything is stored (see adspace.gateway, Caps): both
        # read first, so only a lost race can leave a drawn index or a charge unused.
        if gateway.image_bytes_used(store, username) + len(image.data) > quota:
            raise gateway.ImageQuotaFull(quota)
        index = gateway.reserve_filler_index(store, username, settings.MAX_ADS_PER_USER)
        gateway.charge_image_bytes(store, username, len(image.data), quota)
    except (gateway.TooManyAds, gateway.ImageQuotaFull) as exc:
        form.add_error("image", str(exc))
        return render(
            request, "adspace/new_ad.html", {"form": form, "active_tab": "new_ad"}, status=400
        )
    gateway.store_image(
        store, image.sha256, image.content_type, image.ext, image.data, image.width, image.height
    )
    try:
        gateway.create_filler(
            store, get_clock(), username, data["nickname"], data["hover_text"], data["url"],
            data["width"], data["height"], image.sha256, index=index,
        )  # fmt: skip
    except gateway.NicknameTaken:
        # Lost a race with another upload of the same name; the image stays (it is shared
        # by content and harmless).
        form.add_error("nickname", _nickname_taken(data["nickname"]))
        return render(
            request, "adspace/new_ad.html", {"form": form, "active_tab": "new_ad"}, status=400
        )
    messages.success(request, f"Your ad “{data['nickname']}” is ready to use.")
    return redirect("my_ads")


def _nickname_taken(nickname: str) -> str:
    return f"You already have an ad called “{nickname}”; choose another nickname."


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


# Images are content-addressed and never rewritten nor deleted (serving.BoundedCache): (store,
# sha256) -> (the image document without its base64 data, the image's bytes). At most 16 MB of
# images per process, none over 1.6 MB (larger ones are read each time).
_images = serving.ByteBoundedCache(1024, 16 * 1024 * 1024)


def _image(store, sha256: str) -> tuple[dict, bytes]:
    key = (serving.store_ident(store), sha256)
    found = _images.get(key)
    if found is None:
        meta, data = gateway.get_image(store, sha256)
        found = ({k: v for k, v in meta.items() if k != "data"}, data)
        _images.put(key, found, len(data))
    return found


# Served by the slim handler (config/handlers.py): no CSRF check runs there, so none runs here
# either, and a POST is this view's 405 on both paths; it changes nothing whatever the method.
@csrf_exempt
@require_safe
def image(request: HttpRequest, sha256: str, ext: str) -> HttpResponse:
    etag = f'"{sha256}"'
    # Content-addressed and immutable: a browser holding this name holds these bytes.
    if request.META.get("HTTP_IF_NONE_MATCH") == etag:
        response = HttpResponseNotModified()
    else:
        try:
            meta, data = _image(get_store(), sha256)
        except NotFound:
            return HttpResponse("No such image.", status=404, content_type="text/plain")
        except TemporaryFailure:
            # Plain text, not the error page: an <img> shows neither, and the page would read
            # the signed-in user, which the slim handler does not load.
            log.warning("docstore unavailable for %s", request.path, exc_info=True)
            response = HttpResponse(unavailable.MESSAGE, status=503, content_type="text/plain")
            response["Retry-After"] = unavailable.RETRY_AFTER_SECONDS
            response["Cache-Control"] = "no-store"
            return response
        if meta.get("ext") != ext:
            return HttpResponse("No such image.", status=404, content_type="text/plain")
        response = HttpResponse(data, content_type=meta["contentType"])
    response["ETag"] = etag
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    response["X-Content-Type-Options"] = "nosniff"
    # Opened directly, the image is a document of its own: let it run nothing.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


# --- browsing -----------------------------------------------------------------------------------


class _Sellers:
    """The sellers directory as a sequence the Paginator can slice (one read per page)."""

    def __init__(self, store):
        self.store = store
        self.total = gateway.seller_count(store)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, item: slice) -> list[str]:
        start, stop, _ = item.indices(self.total)
        if start >= stop:
            return []
        return gateway.sellers_page(self.store, start, stop - start, self.total)


@_shows_errors
def sellers(request: HttpRequest) -> HttpResponse:
    if browse_views.is_query(request.GET):
        return browse_views.campaigns(request)
    store = get_store()
    paginator = Paginator(_Sellers(store), SELLERS_PER_PAGE, allow_empty_first_page=True)
    page = _page_or_404(paginator, request.GET.get("page"), "sellers")
    names = list(page.object_list)
    context = {
        "page": page,
        "sellers": names,
        "seller_items": _seller_items(store, names, gateway.campaign_counts(store, names)),
        **browse_views.form_context(),
    }
    return render(request, "adspace/sellers.html", context)


# Campaign titles shown per seller in the sellers list (one batched read for the whole page).
TITLES_PER_SELLER = 3


def _seller_items(store, names: list[str], counts: dict[str, int]) -> str:
    """The list's items, built here: as template tags they were most of the page's cost."""
    keys = [
        gateway.campaign_key(name, n)
        for name in names
        for n in range(min(counts[name], TITLES_PER_SELLER))
    ]
    found = gateway.get_many(store, keys)
    items = []
    for name in names:
        count = counts[name]
        titles = []
        for n in range(min(count, TITLES_PER_SELLER)):
            doc = found.get(gateway.campaign_key(name, n))
            if doc is not None:
                paused = " (paused)" if doc.get("paused") else ""
                titles.append(
                    f'<a href="{escape(cached_reverse("campaign", (name, n)))}">'
                    f"{escape(gateway.campaign_title(doc))}</a>{paused}"
                )
        more = " …" if count > TITLES_PER_SELLER else ""
        listed = f": {', '.join(titles)}{more}" if titles else ""
        items.append(
            f'<li><a href="{escape(cached_reverse("seller", (name,)))}">{escape(name)}</a> '
            f'<span class="muted">{count} campaign{"" if count == 1 else "s"}</span>{listed}</li>'
        )
    return mark_safe("\n".join(items))  # noqa: S308 - names and URLs are escaped


@_shows_errors
def seller(request: HttpRequest, user: str) -> HttpResponse:
    count = _seller_or_404(user)
    paginator = Paginator(_OwnerCampaigns(get_store(), user, count), CAMPAIGNS_PER_PAGE)
    page = _page_or_404(paginator, request.GET.get("page"), f"{user}'s campaigns")
    now = get_clock().now()
    context = {
        "owner": user,
        "page": page,
        "total": count,
        "campaigns": [services.campaign_row(c, now) for c in page.object_list],
    }
    return render(request, "adspace/seller.html", context)


@_shows_errors
def campaign(request: HttpRequest, user: str, n: str) -> HttpResponse:
    index = _campaign_ref_or_404(user, n)
    store, now = get_store(), get_clock().now()
    # The campaign and its standing orders' book in one docstore call.
    found, book = store.get_several(
        [(gateway.campaign_key(user, index), None), (orders.book_key(user, index), None)]
    )
    if found is None:
        raise PageError(404, buy.CampaignMissing.message, _back("sellers", "All sellers"))
    doc = found.value
    last = doc.get("last")
    row = services.campaign_row(doc, now)
    # The parts a sale, a boundary, a pause or a review changes, as the live updates send them.
    head = live.head(store, user, index, doc, now)
    context = {
        "campaign": row,
        "parts": head.parts,
        "live": {"url": cached_reverse("campaign_live", (user, index)), "etag": head.etag},
        # Drawn at this moment (the live updates draw it at the last sale).
        "chart": mark_safe(pricing.chart_svg(row.min_price, last, now)),  # noqa: S308 our markup
        "js": {
            "server_now": now,
            "min_price": row.min_price,
            "purchased_at": last["purchasedAt"] if last else "",
            "ends_at": last["endsAt"] if last else "",
            "last_price": last["price"] if last else "",
        },
        **_buy_form_context(request, doc),
    }
    # Standing orders: the counts for everyone, the form for a buyer with an ad that fits.
    context["order_book"] = orders.summarize_book(None if book is None else book.value, now)
    context["order_ads"] = [a for a in context.get("ads") or () if a["fits"]]
    return render(request, "adspace/campaign.html", context)


def _buy_form_context(request: HttpRequest, doc: dict) -> dict:
    if not request.user.is_authenticated:
        return {"ads": None}
    store, username = get_store(), request.user.username
    if buy.is_own_campaign(username, doc):
        return {"ads": None, "own": True}
    # Read while paused too: the form is on the page, hidden, for the live updates to show it
    # again on a resume.
    # The newest ads only: a page view must not read thousands of documents.
    count = gateway.filler_count(store, username)
    first = max(0, count - BUY_FORM_MAX_ADS)
    ads = []
    for filler in gateway.user_fillers(store, username, first, BUY_FORM_MAX_ADS, count):
        if filler.get("archived"):
            continue
        fits = (filler["width"], filler["height"]) == (doc["width"], doc["height"])
        ads.append({**filler, "fits": fits})
    # Ads that fit first, newest first within each group.
    ads.sort(key=lambda a: (not a["fits"], -a["index"]))
    return {"ads": ads, "any_fits": any(a["fits"] for a in ads)}


# --- buying -------------------------------------------------------------------------------------


@require_POST
@_shows_errors
def buy_slot(request: HttpRequest, user: str, n: str) -> HttpResponse:
    # buy_next_slot reads the campaign itself (and says CampaignMissing), so no read here.
    index = _campaign_ref_or_404(user, n)
    back = reverse("campaign", args=[user, index])
    if not request.user.is_authenticated:
        # Back to the campaign page after logging in: this URL only takes POSTs.
        return redirect_to_login(back)
    accepted = _accepted_price_or_400(request.POST.get("accepted_price"))
    filler = _filler_index_or_400(request.POST.get("filler"))
    try:
        sale = buy.buy_next_slot(
            get_store(), get_clock(), request.user.username, user, index, filler, accepted
        )
    except buy.CampaignMissing:
        raise PageError(404, buy.CampaignMissing.message, _back("sellers", "All sellers"))
    except buy.FillerInvalid as exc:
        raise PageError(400, str(exc), (back, "Back to the campaign"))
    except buy.OwnCampaign:
        messages.error(request, buy.OwnCampaign.message)
    except buy.CampaignPaused:
        messages.error(request, buy.CampaignPaused.message)
    except buy.PriceChanged as exc:
        messages.warning(
            request,
            f"The price is now {format_btc(exc.price)} BTC, more than you accepted; "
            f"nothing was bought. Check the new price and buy again if it suits you.",
        )
    except buy.SlotTaken:
        messages.warning(
            request,
            "Someone else just bought that slot; you were not charged. "
            "The next slot is shown below at its new price.",
        )
    except locks.InsufficientFunds as exc:
        messages.error(
            request,
            format_html(
                "Your balance is {} BTC and this slot costs {} BTC. "
                '<a href="{}">Add funds</a> and try again.',
                format_btc(exc.balance),
                format_btc(exc.needed),
                reverse("account"),
            ),
        )
    except locks.AccountBusy:
        messages.warning(request, locks.AccountBusy.message)
    except locks.AccountMissing:
        messages.error(
            request,
            format_html(
                'Your account is not set up yet; open <a href="{}">your account</a> once, '
                "then try again.",
                reverse("account"),
            ),
        )
    except (Ambiguous, TemporaryFailure):
        log.warning(
            "buy outcome unknown buyer=%s campaign=%s/%s", request.user.username, user, index,
            exc_info=True,
        )  # fmt: skip
        raise PageError(503, OUTCOME_UNKNOWN, (back, "Back to the campaign"))
    else:
        messages.success(
            request,
            f"You bought slot #{sale.slot} for {format_btc(sale.price)} BTC; it shows from "
            f"{services.utc(sale.starts_at):%Y-%m-%d %H:%M:%S} to "
            f"{services.utc(sale.ends_at):%Y-%m-%d %H:%M:%S} UTC.",
        )
    return redirect(back)
