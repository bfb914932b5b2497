"""A real browser shows an ad through embed.js on a host page, yesterday and today (injected clock),
clicks it through the click URL, and the seller's page then shows exactly those impressions and
clicks for each slot and day; the CSV exports open cleanly with the csv module."""

from __future__ import annotations

import csv
import hashlib
import io

import pytest
from PIL import Image

from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account
from accounts.models import User
from adspace import buy, delivery, gateway, stats
from tests.delivery_helpers import BROWSER_AGENT
from tests.test_browser import browser, pytestmark  # noqa: F401 - the browser fixture
from tests.test_embeds import sellers_site
from tests.test_review_browser import PASSWORD, log_in

DAY = 24 * 3600


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 60, 20)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def sold(live_server, store, clock):
    """sally's 300x250 space; bert's ad (linking back to this server) in slots 0 and 1."""
    User.objects.create_user(username="sally", password=PASSWORD)
    for name in ("sally", "bert"):
        ensure_account(store, clock, name)
    adjust_balance(store, clock, "bert", 10**9, "browser test funds")
    n = gateway.create_campaign(store, clock, "sally", 300_000, 24, 300, 250, [], title="Knits")
    data = png(300, 250)
    sha = hashlib.sha256(data).hexdigest()
    gateway.store_image(store, sha, "image/png", "png", data, 300, 250)
    # The ad's link stays on the loopback: the test's browser reaches nothing else.
    landing = f"{live_server.url}/ads/buy-ad-space/"
    gateway.create_filler(store, clock, "bert", "knit ad", "Wool!", landing, 300, 250, sha)
    first = buy.buy_next_slot(store, clock, "bert", "sally", n, 0, 10**12)
    second = buy.buy_next_slot(store, clock, "bert", "sally", n, 0, 10**12)
    return first, second, landing


@pytest.fixture
def blog(live_server):
    """The seller's own site, on another origin, with the one-line embed."""
    html = (
        "<!doctype html><title>A knitting blog</title><h1>Patterns</h1>"
        f'<script async src="{live_server.url}/embed.js" data-campaign="sally/0" '
        'data-width="300" data-height="250"></script>'
    )
    with sellers_site(html) as address:
        yield address


def host_page(context, blog: str):
    """The blog in a new tab, once the ad has rendered and its beacon has been answered."""
    page = context.new_page()
    with page.expect_response(lambda r: "/i/" in r.url and r.status == 200):
        page.goto(blog)
    return page


def click_ad(page, landing: str) -> None:
    with page.expect_popup() as popup:
        page.frame_locator("iframe").locator("a.ad").click()
    opened = popup.value
    opened.wait_for_load_state()
    assert opened.url == landing  # through /c/<token>, to the URL stored on the ad
    opened.close()


def shown_cells(page, slot: int, day: str) -> tuple[int, int]:
    row = page.locator(f'table.delivery-slots tr[data-slot="{slot}"][data-day="{day}"]')
    return (
        int(row.locator('[data-role="impressions"]').inner_text()),
        int(row.locator('[data-role="clicks"]').inner_text()),
    )


def test_the_sellers_page_shows_exactly_what_the_browser_drove(
    live_server,
    browser,  # noqa: F811 - the browser fixture
    store,
    clock,
    sold,
    blog,
):
    first, second, landing = sold
    url = live_server.url
    redirects = []

    def visitor():
        # A browser's own agent string: headless Chromium names itself, and is not counted. A
        # fresh context per visit: the injected clock jumps hours, a browser's cache does not.
        context = browser.new_context(user_agent=BROWSER_AGENT)
        context.on("response", lambda r: redirects.append(r.status) if "/c/" in r.url else None)
        return context

    driven = {}

    # Yesterday (2023-11-14, 22:23 UTC), slot 0: three renderings, one click.
    clock.set(first.starts_at + 600)
    for _ in range(3):
        page = host_page(visitor(), blog)
    click_ad(page, landing)
    driven[(0, "2023-11-14")] = (3, 1)

    # Today (2023-11-15, 03:13 UTC), still slot 0: two renderings, two clicks.
    clock.set(first.starts_at + 5 * 3600)
    for _ in range(2):
        page = host_page(visitor(), blog)
    click_ad(page, landing)
    click_ad(page, landing)
    driven[(0, "2023-11-15")] = (2, 2)

    # Later today (22:23 UTC), slot 1: four renderings, one click.
    clock.set(second.starts_at + 600)
    for _ in range(4):
        page = host_page(visitor(), blog)
    click_ad(page, landing)
    driven[(1, "2023-11-15")] = (4, 1)
    assert redirects == [302] * 4

    # A crawler and a prefetch on top: served, never counted.
    bot = browser.new_context(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)")
    host_page(bot, blog)
    token = delivery.token(
        delivery.CLICK, "sally", 0, 1, store.get(gateway.slot_key("sally", 0, 1)).value
    )
    assert visitor().request.get(f"{url}/c/{token}", headers={"Sec-Purpose": "prefetch"},
                               max_redirects=0).status == 302  # fmt: skip

    stats.flush()  # what the flusher thread does every few seconds in a server

    seller = browser.new_context().new_page()
    log_in(seller, url, "sally")
    seller.goto(f"{url}/account/sales/0/?from=2023-11-14&to=2023-11-15")
    for (slot, day), expected in driven.items():
        assert shown_cells(seller, slot, day) == expected, (slot, day)
    assert shown_cells(seller, 0, "all") == (5, 3)
    assert shown_cells(seller, 1, "all") == (4, 1)
    assert (
        seller.locator('[data-role="delivery-total"] [data-role="impressions"]').inner_text() == "9"
    )
    assert seller.locator('[data-role="delivery-total"] [data-role="clicks"]').inner_text() == "4"
    assert seller.locator("svg.stats-chart").count() == 1

    # The exports, downloaded with the seller's session, parse cleanly and agree.
    def download(path: str) -> list[dict]:
        response = seller.request.get(url + path)
        assert response.status == 200 and response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.text(), newline="")))

    rows = download("/account/export/statistics.csv?campaign=0&from=2023-11-14&to=2023-11-15")
    assert {
        (int(r["slot"]), r["day_utc"]): (int(r["impressions"]), int(r["clicks"])) for r in rows
    } == driven
    sales = download("/account/export/sales.csv")
    assert [(r["slot"], r["buyer"]) for r in sales] == [("1", "bert"), ("0", "bert")]
    ledger = download("/account/export/ledger.csv")
    assert all(r["time_utc"].endswith("Z") for r in ledger)
