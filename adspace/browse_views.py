"""Finding the right space: the filter form of /ads/buy-ad-space/, its results, and the home
page's live lists (adspace.browse holds the index; this module only parses and renders).

A request with any filter field (even empty, as the form sends them) lists campaigns; without
one the page is the sellers list, with the form above it. Every value is checked before anything
is read: a malformed or out-of-range one re-shows the form with its message (status 400).
"""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urlencode

from django.core.paginator import EmptyPage, Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.utils.safestring import mark_safe

from accounts.money import MoneyError, format_btc, parse_btc
from accounts.templatetags.cached_url import cached_reverse, url_scope
from docstore import Store, get_clock, get_store

from . import browse, images, serving
from .forms import MAX_SLOT_HOURS

FILTER_FIELDS = ("size", "price_min", "price_max", "hours", "site")
CAMPAIGNS_PER_PAGE = 20
MAX_FIELD_LENGTH = 40
MAX_PAGE_DIGITS = 6  # 20 a page: a million pages is far past any real list
# Rendered result rows and home lists, per (snapshot, query, second, page, URL scope): every
# view of the same list in the same second shows the same thing.
_rendered = serving.BoundedCache(256)

# ASCII digits only (full-width digits and "300.0" are not sizes); "300x250", "300 X 250" and
# "300" U+00D7 "250" (the multiplication sign) are.
_SIZE = re.compile(r"\s*([0-9]{1,4})\s*[xX\u00d7]\s*([0-9]{1,4})\s*")
_WHOLE = re.compile(r"\s*([0-9]{1,4})\s*")
_PAGE = re.compile(rf"[1-9][0-9]{{0,{MAX_PAGE_DIGITS - 1}}}")

SIZE_MESSAGE = (
    f"Enter the ad size as width x height in pixels, each {images.MIN_AD_SIDE} to "
    f"{images.MAX_AD_SIDE} (for example 300x250)."
)
HOURS_MESSAGE = f"Enter the slot length as a whole number of hours, 1 to {MAX_SLOT_HOURS}."
SITE_MESSAGE = "The site filter is either on or off."
COMMON_SIZE_OPTIONS = mark_safe(  # noqa: S308 - numbers only
    "".join(f'<option value="{w}x{h}">' for w, h in browse.COMMON_SIZES)
)
PAGE_MESSAGE = "The page must be a whole number from 1 to 999999."


def is_query(params: QueryDict) -> bool:
    return any(name in params for name in FILTER_FIELDS)


def parse_query(params: QueryDict) -> tuple[browse.Query, dict[str, str]]:
    """The query the parameters ask for, and a message per field that is not acceptable."""
    errors: dict[str, str] = {}
    values = {name: params.get(name, "") for name in FILTER_FIELDS}
    for name, text in values.items():
        if len(text) > MAX_FIELD_LENGTH:
            errors[name] = f"That is too long ({MAX_FIELD_LENGTH} characters at most)."
    size = None
    if values["size"].strip() and "size" not in errors:
        match = _SIZE.fullmatch(values["size"])
        if match is None:
            errors["size"] = SIZE_MESSAGE
        else:
            w, h = int(match[1]), int(match[2])
            if not (images.MIN_AD_SIDE <= w <= images.MAX_AD_SIDE) or not (
                images.MIN_AD_SIDE <= h <= images.MAX_AD_SIDE
            ):
                errors["size"] = SIZE_MESSAGE
            else:
                size = (w, h)
    prices: dict[str, int | None] = {"price_min": None, "price_max": None}
    for name, label in (("price_min", "Lowest price"), ("price_max", "Highest price")):
        if values[name].strip() and name not in errors:
            try:
                prices[name] = parse_btc(values[name])
            except MoneyError as exc:
                errors[name] = f"{label}: {exc.message}"
    low, high = prices["price_min"], prices["price_max"]
    if low is not None and high is not None and low > high:
        errors["price_max"] = (
            f"The highest price ({format_btc(high)} BTC) is below the lowest "
            f"({format_btc(low)} BTC)."
        )
    hours = None
    if values["hours"].strip() and "hours" not in errors:
        match = _WHOLE.fullmatch(values["hours"])
        if match is None or not 1 <= int(match[1]) <= MAX_SLOT_HOURS:
            errors["hours"] = HOURS_MESSAGE
        else:
            hours = int(match[1])
    if values["site"] not in ("", "1", "on") and "site" not in errors:
        errors["site"] = SITE_MESSAGE
    query = browse.Query(size, low, high, hours, values["site"] in ("1", "on"))
    return query, errors


def campaigns(request: HttpRequest) -> HttpResponse:
    """The filtered list, cheapest now first, 20 a page."""
    params = request.GET
    query, errors = parse_query(params)
    number = params.get("page", "1")
    if not _PAGE.fullmatch(number):
        errors["page"] = PAGE_MESSAGE
    context = {
        "form": {name: params.get(name, "")[:MAX_FIELD_LENGTH] for name in FILTER_FIELDS},
        "errors": errors,
        "common_sizes": COMMON_SIZE_OPTIONS,
    }
    if errors:
        return render(request, "adspace/browse.html", context, status=400)
    store: Store = get_store()
    now = get_clock().now()
    serial = browse.snapshot(store, now).serial
    rows = browse.matching(store, query, now)
    paginator = Paginator(rows, CAMPAIGNS_PER_PAGE, allow_empty_first_page=True)
    try:
        page = paginator.page(int(number))
    except EmptyPage:
        errors["page"] = (
            f"There is no page {number}: {paginator.count} campaign"
            f"{'' if paginator.count == 1 else 's'} match, {paginator.num_pages} page"
            f"{'' if paginator.num_pages == 1 else 's'}."
        )
        return render(request, "adspace/browse.html", context, status=404)
    kept = {name: context["form"][name] for name in FILTER_FIELDS if context["form"][name]}
    context.update(
        page=page,
        rows=page.object_list,
        rows_html=_rendered_once(
            (serial, query, now, page.number, scope := url_scope()),
            lambda: _rows_html(page.object_list, now, scope),
        ),
        total=paginator.count,
        # Every filter field, kept on the pager's links (an empty one keeps the list mode).
        pager_query=urlencode(kept or {"size": ""}) + "&",
    )
    return render(request, "adspace/browse.html", context)


def form_context() -> dict:
    """What the sellers list needs to show the (empty) form above it."""
    return {
        "form": dict.fromkeys(FILTER_FIELDS, ""),
        "errors": {},
        "common_sizes": COMMON_SIZE_OPTIONS,
    }


def _rendered_once(key: tuple, make) -> str:
    html = _rendered.get(key)
    if html is None:
        html = make()
        _rendered.put(key, html)
    return html


def _link(c: browse.Head, scope: tuple) -> str:
    href = escape(cached_reverse("campaign", (c.owner, c.n), scope=scope))
    return f'<a href="{href}">{escape(c.title)}</a>'


def _rows_html(rows: list[browse.Row], now: int, scope: tuple) -> str:
    """The result table's rows, built here: as template code they were most of the page's cost
    (as the sellers list found)."""
    out = []
    for r in rows:
        c = r.head
        site = f'<br><span class="muted">{escape(c.site_url)}</span>' if c.site_url else ""
        seller = escape(cached_reverse("seller", (c.owner,), scope=scope))
        out.append(
            f"<tr><td>{_link(c, scope)}{site}</td>"
            f'<td><a href="{seller}">{escape(c.owner)}</a></td>'
            f'<td class="nowrap">{c.width}x{c.height} px</td>'
            f'<td class="num">{c.slot_hours} h</td>'
            f'<td class="num amount">{format_btc(r.price)}</td>'
            f"<td>{'starts at once' if c.open_at(now) else 'after the queue'}</td></tr>"
        )
    return mark_safe("\n".join(out))  # noqa: S308 - every value is escaped


def _items_html(rows: list[browse.Row], note, scope: tuple) -> str:
    items = []
    for r in rows:
        c = r.head
        items.append(
            f"<li>{_link(c, scope)} "
            f'<span class="muted">{c.width}x{c.height} px · {c.slot_hours} h slots</span> '
            f'<span class="amount">{format_btc(r.price)} BTC</span>{note(r)}</li>'
        )
    return mark_safe("\n".join(items))  # noqa: S308 - every value is escaped


def _fall_note(r: browse.Row) -> str:
    rate = format_btc(r.head.fall_per_hour())
    return f' <span class="muted">falling {rate} BTC an hour</span>'


HOME_LISTS = (
    # (element id, heading, which list, what an empty one says, a note after each price)
    ("cheapest", "Cheapest right now", "cheapest", "No campaign is open for sale yet.", None),
    ("falling", "Falling fastest", "falling",
     "No price is falling right now: every campaign is at its minimum.", _fall_note),
    ("open-now", "Open for sale now", "open_now",
     "Every campaign has slots queued: a slot bought now would wait for them.",
     lambda r: ' <span class="muted">starts at once</span>'),
    ("newest", "Newest", "newest", "No campaign yet.", None),
)  # fmt: skip


def home_context(request: HttpRequest) -> dict:
    """The home page's four lists (registered with accounts.views in AdspaceConfig.ready)."""
    store, now = get_store(), get_clock().now()
    lists = browse.home_lists(store, now)
    scope = url_scope()
    key = (browse.snapshot(store, now).serial, "home", now, scope)
    sections = _rendered.get(key)
    if sections is None:
        sections = []
        for element_id, heading, name, empty, note in HOME_LISTS:
            rows = getattr(lists, name)
            html = _items_html(rows, note or (lambda r: ""), scope) if rows else None
            sections.append({"id": element_id, "heading": heading, "html": html, "empty": empty})
        _rendered.put(key, sections)
    return {"live": sections}
