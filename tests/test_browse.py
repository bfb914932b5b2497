"""Browsing: the sellers list, one seller's campaigns, and a campaign page."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess

import pytest
from django.conf import settings

from accounts.money import format_btc
from adspace import buy, gateway, pricing
from tests.conftest import T0

pytestmark = pytest.mark.django_db

SELLERS = "/ads/buy-ad-space/"
M = 300_000
HOUR = 3600


def make_sellers(store, clock, count: int) -> list[str]:
    names = [f"seller{i:02d}" for i in range(count)]
    for name in names:
        gateway.create_campaign(store, clock, name, M, 24, 300, 250, [])
    return names


def listed(html: str) -> list[str]:
    return re.findall(r'<a href="/ads/buy-ad-space/([A-Za-z0-9]+)/">', html)


# --- sellers list ------------------------------------------------------------------------------


def test_with_no_sellers_the_list_says_so(client):
    response = client.get(SELLERS)
    assert response.status_code == 200
    assert "Nobody sells ad space yet" in response.content.decode()


def test_sellers_are_listed_twenty_a_page(client, store, clock):
    names = make_sellers(store, clock, 25)
    gateway.create_campaign(store, clock, "seller00", M, 24, 16, 16, [])  # a second campaign
    first = client.get(SELLERS).content.decode()
    assert listed(first) == names[:20]
    assert "2 campaigns" in first and "Page 1 of 2" in first
    second = client.get(SELLERS, {"page": "2"}).content.decode()
    assert listed(second) == names[20:]


@pytest.mark.parametrize("page", ["3", "0", "-1", "x", "1.5", "99999999999999999999"])
def test_a_sellers_page_out_of_range_or_not_a_number_is_a_404(client, store, clock, page):
    make_sellers(store, clock, 25)
    response = client.get(SELLERS, {"page": page})
    assert response.status_code == 404
    assert "page" in response.content.decode()


def test_a_sellers_page_out_of_range_says_it_does_not_exist(client, store, clock):
    make_sellers(store, clock, 3)
    html = client.get(SELLERS, {"page": "2"}).content.decode()
    assert "The requested page does not exist" in html


# --- one seller -----------------------------------------------------------------------------


def test_a_seller_page_lists_their_campaigns(client, store, clock, buyer):
    gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, ["Porn"])
    gateway.create_campaign(store, clock, "sam", 500_000, 8, 728, 90, [])
    gateway.create_filler(store, clock, "buyer", "a", "h", "https://a.test/", 728, 90, "0")
    buy.buy_next_slot(store, clock, "buyer", "sam", 1, 0, 500_000)
    html = client.get("/ads/buy-ad-space/sam/").content.decode()
    assert "sam's ad space" in html
    assert 'href="/ads/buy-ad-space/sam/0"' in html and 'href="/ads/buy-ad-space/sam/1"' in html
    assert "300x250 px" in html and "728x90 px" in html
    assert "0.01000000" in html  # campaign 1 right after its sale: double 0.005
    assert '<td class="num">1</td>' in html  # slots sold


def test_a_seller_page_lists_twenty_campaigns_a_page(client, store, clock):
    for _ in range(41):
        gateway.create_campaign(store, clock, "sam", 300_000, 24, 300, 250, [])
    first = client.get("/ads/buy-ad-space/sam/").content.decode()
    assert "sam sells 41 ad campaigns" in first
    assert 'href="/ads/buy-ad-space/sam/19"' in first
    assert 'href="/ads/buy-ad-space/sam/20"' not in first
    third = client.get("/ads/buy-ad-space/sam/?page=3").content.decode()
    assert 'href="/ads/buy-ad-space/sam/40"' in third
    assert 'href="/ads/buy-ad-space/sam/39"' not in third
    assert client.get("/ads/buy-ad-space/sam/?page=4").status_code == 404


@pytest.mark.parametrize("user", ["nobody", "a" * 33, "bad-name", "b%C3%B6b"])
def test_an_unknown_or_malformed_seller_is_a_404(client, user):
    response = client.get(f"/ads/buy-ad-space/{user}/")
    assert response.status_code == 404


def test_a_user_without_campaigns_is_a_404_saying_so(client, outsider):
    response = client.get("/ads/buy-ad-space/outsider/")
    assert response.status_code == 404
    assert "User outsider has no ad campaigns" in response.content.decode()


# --- the campaign page ------------------------------------------------------------------------


@pytest.fixture
def campaign(store, clock):
    return gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, ["Gambling", "Alcohol"])


@pytest.mark.parametrize(
    "path",
    [
        "/ads/buy-ad-space/sam/1",  # unknown
        "/ads/buy-ad-space/sam/-1",
        "/ads/buy-ad-space/sam/x",
        "/ads/buy-ad-space/sam/1.0",
        "/ads/buy-ad-space/sam/00",
        "/ads/buy-ad-space/sam/1000000001",
        "/ads/buy-ad-space/sam/99999999999999999999999",
        "/ads/buy-ad-space/nobody/0",
        "/ads/buy-ad-space/bad-name/0",
        "/ads/buy-ad-space/" + "a" * 33 + "/0",
    ],
)
def test_a_campaign_that_does_not_exist_is_a_404(client, campaign, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "That campaign does not exist" in response.content.decode()


def test_a_campaign_page_shows_its_terms_price_and_chart(client, campaign):
    response = client.get("/ads/buy-ad-space/sam/0")
    assert response.status_code == 200
    html = response.content.decode()
    assert "sam&#39;s ad space #0" in html  # the fallback title of a campaign without one
    assert "300 x 250 px" in html
    assert "24 hours" in html
    assert "Gambling, Alcohol ads" in html
    assert '<span class="amount" data-role="price">0.00300000</span>' in html
    assert "<svg" in html and "<title>Price of the next slot" in html
    assert "Nothing is showing yet" in html
    assert f'data-server-now="{T0}"' in html
    assert 'data-min-price="300000"' in html
    assert 'data-last-price=""' in html


def test_a_campaign_page_loads_its_script_and_has_no_inline_script(client, campaign):
    html = client.get("/ads/buy-ad-space/sam/0").content.decode()
    assert 'src="/static/js/campaign.js"' in html
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert re.search(r"\son[a-z]+=", html) is None


def test_after_a_sale_the_page_shows_the_live_ad_and_the_doubled_price(
    client, store, clock, campaign, buyer
):
    sha = "ab" * 32
    gateway.store_image(store, sha, "image/png", "png", b"png-bytes", 300, 250)
    gateway.create_filler(
        store, clock, "buyer", "mine", "Best <b>shoes</b>", "https://shoes.test/", 300, 250, sha
    )
    buy.buy_next_slot(store, clock, "buyer", "sam", 0, 0, M)
    clock.advance(HOUR)
    html = client.get("/ads/buy-ad-space/sam/0").content.decode()

    last = gateway.get_campaign(store, "sam", 0).value["last"]
    price = pricing.current_price(M, last, clock.now())
    assert price == 587_500  # 2P = 0.006 falling to M = 0.003 over 24 h, one hour in
    assert '<span class="amount" data-role="price">0.00587500</span>' in html
    assert f'<img src="/img/{sha}.png" width="300" height="250"' in html
    assert 'href="https://shoes.test/"' in html
    assert 'title="Best &lt;b&gt;shoes&lt;/b&gt;"' in html
    assert "Nothing is showing yet" not in html
    assert f'data-purchased-at="{T0}"' in html
    assert f'data-ends-at="{T0 + 24 * HOUR}"' in html
    assert 'data-last-price="300000"' in html


def test_once_the_slot_has_ended_nothing_is_showing_and_the_price_is_the_minimum(
    client, store, clock, campaign, buyer
):
    gateway.create_filler(store, clock, "buyer", "mine", "h", "https://shoes.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "buyer", "sam", 0, 0, M)
    clock.advance(24 * HOUR)
    html = client.get("/ads/buy-ad-space/sam/0").content.decode()
    assert "Nothing is showing yet" in html
    assert "No sold slot is running or waiting" in html
    assert '<span class="amount" data-role="price">0.00300000</span>' in html


def test_the_queue_lists_unended_slots_with_utc_times(client, store, clock, campaign, make_user):
    for name in ("bob", "cat", "dan"):
        make_user(name, balance=10_000_000)
        gateway.create_filler(store, clock, name, "ad", "h", "https://a.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    clock.advance(25 * HOUR)  # slot 0 is over
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, M)
    buy.buy_next_slot(store, clock, "dan", "sam", 0, 0, 2 * M)
    html = client.get("/ads/buy-ad-space/sam/0").content.decode()
    queue = html.split("Sold slots still to run", 1)[1]
    assert "#0" not in queue
    assert '#1 <span class="badge">showing now</span>' in queue
    assert "#2" in queue
    # Slot 1 was bought at T0 + 25 h = 2023-11-15 23:13:20 UTC and started at once.
    assert '<time class="utc" datetime="2023-11-15T23:13:20+00:00">' in queue
    assert "2023-11-15 23:13:20 UTC" in queue


# --- the ticking price: the page's script agrees with the server to the sat ---------------------

NODE_CHECK = """
const { currentPrice, formatBtc } = require(process.argv[1]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const big = (v) => (v === null ? null : BigInt(v));
const out = cases.map(([m, p, bought, ends, now]) => {
  const price = currentPrice(big(m), big(p), big(bought), big(ends), big(now));
  return [price.toString(), formatBtc(price)];
});
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_campaign_script_computes_the_same_price_as_the_server():
    rng = random.Random(20240101)
    cases = [
        # The DESIGN.md check values, and the edges: before the sale, at and after the end.
        (100_000, 100_000, 1390319630, 1390319630 + 86400, 1390319630 + 1800),
        (100_000, 178_454, 1390343930, 1390343930 + 86400, 1390343930 + 86399),
        (100_000, 178_454, 1390343930, 1390343930 + 86400, 1390343930 + 86400),
        (100_000, 178_454, 1390343930, 1390343930 + 86400, 1390343930 - 5),
        (300_000, None, None, None, T0),
    ]
    for _ in range(2000):
        m = rng.choice([1, 300_000, rng.randrange(1, 21_000_000 * 10**8)])
        p = rng.randrange(m, 21_000_000 * 10**8 + 1)
        bought = rng.randrange(T0, T0 + 10**8)
        ends = bought + rng.randrange(1, 8760 * 3600 + 1)
        now = rng.randrange(bought - 10, ends + 10)
        cases.append((m, p, bought, ends, now))
    script = str(settings.BASE_DIR / "static" / "js" / "campaign.js")
    result = subprocess.run(
        ["node", "-e", NODE_CHECK, script],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for case, (sats, text) in zip(cases, json.loads(result.stdout), strict=True):
        m, p, bought, ends, now = case
        last = None if p is None else {"price": p, "purchasedAt": bought, "endsAt": ends}
        expected = pricing.current_price(m, last, now)
        assert (int(sats), text) == (expected, format_btc(expected)), case
