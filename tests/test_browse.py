"""Browsing: the sellers list, finding campaigns by size, price now, slot length and site, one
seller's campaigns, and a campaign page."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess

import pytest
from django.conf import settings

from accounts.money import format_btc
from adspace import browse, buy, gateway, pricing
from tests.conftest import T0

pytestmark = pytest.mark.django_db

SELLERS = "/ads/buy-ad-space/"
M = 300_000
HOUR = 3600


_ads = itertools.count()


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


# --- finding campaigns: filters, order, pages ---------------------------------------------------

ROW = re.compile(r'<td><a href="/ads/buy-ad-space/([A-Za-z0-9]+)/([0-9]+)">')


def found(client, **params) -> list[str]:
    response = client.get(SELLERS, params)
    assert response.status_code == 200, response.content.decode()
    return [f"{o}/{n}" for o, n in ROW.findall(response.content.decode())]


def make(store, clock, owner, w=300, h=250, hours=24, price=M, site="https://site.test/") -> str:
    n = gateway.create_campaign(store, clock, owner, price, hours, w, h, [], site_url=site)
    return f"{owner}/{n}"


def sell_one(store, clock, ref: str, buyer: str = "buyer") -> None:
    """`buyer` buys the next slot of `ref` ("owner/n") at its price now, with a new ad."""
    owner, n = ref.split("/")
    doc = gateway.get_campaign(store, owner, int(n)).value
    filler = gateway.create_filler(
        store, clock, buyer, f"ad-{next(_ads)}", "h", "https://a.test/",
        doc["width"], doc["height"], "0",
    )  # fmt: skip
    price = pricing.current_price(doc["minPrice"], doc.get("last"), clock.now())
    buy.buy_next_slot(store, clock, buyer, owner, int(n), filler, price)


def test_the_sellers_list_shows_the_search_form(client, store, clock):
    make_sellers(store, clock, 2)
    html = client.get(SELLERS).content.decode()
    assert '<form class="browse-form" method="get"' in html
    assert '<option value="300x250">' in html and '<option value="728x90">' in html
    assert listed(html) == ["seller00", "seller01"]


def test_an_exact_size_lists_only_campaigns_of_that_size(client, store, clock):
    a = make(store, clock, "ann", 300, 250)
    make(store, clock, "bob", 728, 90)
    c = make(store, clock, "cat", 300, 250)
    make(store, clock, "dan", 250, 300)
    assert found(client, size="300x250") == [a, c]
    assert found(client, size="728x90") == ["bob/0"]
    assert found(client, size="123x45") == []


@pytest.mark.parametrize("typed", ["300x250", " 300 X 250 ", "300\u00d7250"])
def test_a_size_may_be_typed_with_spaces_a_capital_x_or_a_times_sign(client, store, clock, typed):
    a = make(store, clock, "ann", 300, 250)
    make(store, clock, "bob", 728, 90)
    assert found(client, size=typed) == [a]


def test_an_empty_search_lists_every_live_campaign_cheapest_first(client, store, clock):
    a = make(store, clock, "ann", price=500_000)
    b = make(store, clock, "bob", price=300_000)
    c = make(store, clock, "cat", 728, 90, price=400_000)
    html = client.get(SELLERS, {"size": "", "price_min": "", "hours": ""}).content.decode()
    assert [f"{o}/{n}" for o, n in ROW.findall(html)] == [b, c, a]
    assert "3 campaigns match" in html
    assert "0.00300000" in html and "300x250 px" in html and "24 h" in html


def test_the_order_is_by_price_now_which_falls_after_a_sale(client, store, clock, buyer):
    sold = make(store, clock, "ann", price=300_000)  # sold: 0.006 falling to 0.003 over 24 h
    other = make(store, clock, "bob", price=450_000)
    sell_one(store, clock, sold)
    clock.advance(HOUR)
    assert found(client, size="300x250") == [other, sold]  # 587 500 > 450 000
    clock.advance(20 * HOUR)  # 0.003 + 0.003 * 3/24 = 337 500
    assert found(client, size="300x250") == [sold, other]


def test_a_price_range_filters_on_the_price_now(client, store, clock, buyer):
    sold = make(store, clock, "ann", price=300_000)
    cheap = make(store, clock, "bob", price=300_000)
    dear = make(store, clock, "cat", price=900_000)
    sell_one(store, clock, sold)  # now 0.006
    assert found(client, price_max="0.003") == [cheap]
    assert found(client, price_min="0.00300001") == [sold, dear]
    assert found(client, price_min="0.006", price_max="0.006") == [sold]
    assert found(client, price_min="0.0059", price_max="0.0091") == [sold, dear]
    clock.advance(24 * HOUR)  # the sold slot has ended: back at its minimum
    assert found(client, price_max="0.003") == [sold, cheap]


def test_slot_length_and_site_filters(client, store, clock):
    day = make(store, clock, "ann", hours=24)
    hour = make(store, clock, "bob", hours=1)
    bare = make(store, clock, "cat", hours=24, site="")
    assert found(client, hours="24") == [day, bare]
    assert found(client, hours="1") == [hour]
    assert found(client, site="1") == [day, hour]
    assert found(client, site="on", hours="24", size="300x250") == [day]


def test_paused_campaigns_are_not_listed(client, store, clock):
    a = make(store, clock, "ann")
    b = make(store, clock, "bob")
    gateway.set_campaign_paused(store, "bob", 0, "bob", True)
    clock.advance(browse.SNAPSHOT_SECONDS)
    assert found(client, size="") == [a]
    gateway.set_campaign_paused(store, "bob", 0, "bob", False)
    clock.advance(browse.SNAPSHOT_SECONDS)
    assert found(client, size="") == [a, b]


def test_results_come_twenty_a_page_and_the_pager_keeps_the_filters(client, store, clock):
    refs = [make(store, clock, f"s{i:02d}", price=300_000 + i) for i in range(45)]
    make(store, clock, "other", 728, 90, price=1)
    first = client.get(SELLERS, {"size": "300x250", "site": "1"}).content.decode()
    assert [f"{o}/{n}" for o, n in ROW.findall(first)] == refs[:20]
    assert "45 campaigns match" in first and "Page 1 of 3" in first
    assert 'href="?size=300x250&amp;site=1&amp;page=2" rel="next"' in first
    assert found(client, size="300x250", site="1", page="3") == refs[40:]
    unfiltered = client.get(SELLERS, {"size": ""}).content.decode()
    assert 'href="?size=&amp;page=2"' in unfiltered  # an empty search keeps the list mode


def test_a_page_past_the_last_is_a_404_that_says_how_many_there_are(client, store, clock):
    for i in range(3):
        make(store, clock, f"s{i}")
    response = client.get(SELLERS, {"size": "300x250", "page": "2"})
    assert response.status_code == 404
    assert "There is no page 2: 3 campaigns match, 1 page." in response.content.decode()


BAD_QUERIES = [
    ({"size": "300"}, "Enter the ad size as width x height"),
    ({"size": "0x250"}, "Enter the ad size"),
    ({"size": "15x250"}, "Enter the ad size"),
    ({"size": "300x2049"}, "Enter the ad size"),
    ({"size": "30000x250"}, "Enter the ad size"),
    ({"size": "300x250x1"}, "Enter the ad size"),
    ({"size": "-300x250"}, "Enter the ad size"),
    ({"size": "\uff13\uff10\uff10x250"}, "Enter the ad size"),  # full-width digits
    ({"size": "300x250" + " " * 40}, "That is too long"),
    ({"price_min": "-0.001"}, "Lowest price: "),
    ({"price_max": "NaN"}, "Highest price: "),
    ({"price_min": "0.000000001"}, "at most 8 decimal places"),
    ({"price_max": "1e-3"}, "Highest price: "),
    ({"price_max": "1,5"}, "Highest price: "),
    ({"price_max": "21000001"}, "Highest price: "),
    ({"price_min": "0.5", "price_max": "0.1"}, "is below the lowest"),
    ({"hours": "0"}, "whole number of hours, 1 to 8760"),
    ({"hours": "8761"}, "whole number of hours"),
    ({"hours": "1.5"}, "whole number of hours"),
    ({"hours": "-1"}, "whole number of hours"),
    ({"site": "yes"}, "either on or off"),
    ({"size": "", "page": "0"}, "The page must be a whole number"),
    ({"size": "", "page": "-1"}, "The page must be a whole number"),
    ({"size": "", "page": "1.5"}, "The page must be a whole number"),
    ({"size": "", "page": "99999999999999999999"}, "The page must be a whole number"),
    ({"size": "", "page": "1000000"}, "The page must be a whole number"),
]


@pytest.mark.parametrize("params,message", BAD_QUERIES)
def test_a_bad_filter_is_a_400_saying_what_to_fix_and_writes_nothing(
    client, store, clock, params, message
):
    make(store, clock, "ann")
    before = store.dump()
    response = client.get(SELLERS, params)
    html = response.content.decode()
    assert response.status_code == 400
    assert message in html
    assert "Some filters need fixing; nothing was searched." in html
    assert ROW.findall(html) == []
    assert store.dump() == before


def test_the_form_shows_back_what_was_typed_escaped(client, store, clock):
    html = client.get(SELLERS, {"size": '"><script>x</script>'}).content.decode()
    assert "<script>x</script>" not in html
    assert 'value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"' in html


def test_a_new_sale_shows_in_the_list_within_the_cache_window(client, store, clock, buyer):
    sold = make(store, clock, "ann", price=300_000)
    other = make(store, clock, "bob", price=400_000)
    assert found(client, price_max="0.0035") == [sold]
    sell_one(store, clock, sold)  # now 0.006
    # Within the window this process still answers from its snapshot...
    clock.advance(browse.SNAPSHOT_SECONDS - 1)
    assert found(client, price_max="0.0035") == [sold]
    # ...and once it has passed, the sale is there: price now 0.006, after the other.
    clock.advance(1)
    assert found(client, price_max="0.0035") == []
    assert found(client, size="300x250") == [other, sold]
    assert "0.00599993" in client.get(SELLERS, {"size": ""}).content.decode()  # 2 s into the fall


def test_edits_and_new_campaigns_show_within_the_cache_window(client, store, clock):
    a = make(store, clock, "ann", 300, 250, hours=24)
    assert found(client, size="300x250") == [a]
    gateway.update_campaign(store, "ann", 0, "ann", {"width": 728, "height": 90, "slotHours": 8})
    b = make(store, clock, "bob", 300, 250)
    gateway.update_campaign(store, "bob", 0, "bob", {"siteUrl": ""})
    clock.advance(browse.SNAPSHOT_SECONDS)
    assert found(client, size="300x250") == [b]
    assert found(client, size="728x90", hours="8") == [a]
    assert found(client, site="1") == [a]


def test_a_directory_entry_whose_campaign_is_not_there_yet_is_read_again(client, store, clock):
    # A create writes the directory entry first; a request between the two writes (or after a
    # crash between them) must not make this process skip the campaign forever.
    g = store.counter(gateway.CAMPAIGNDIR, 1, initial=0)
    store.insert(gateway.campaigndir_key(g), {"owner": "ann", "n": 0})
    store.counter(gateway.campaigncount_key("ann"), 1, initial=0)
    later = make(store, clock, "bob")
    assert found(client, size="") == [later]
    store.insert(
        gateway.campaign_key("ann", 0),
        {"owner": "ann", "n": 0, "minPrice": 100_000, "slotHours": 24, "width": 300,
         "height": 250, "disallowed": [], "createdAt": clock.now()},
    )  # fmt: skip
    clock.advance(browse.SNAPSHOT_SECONDS)
    assert found(client, size="") == ["ann/0", later]


def test_each_process_snapshot_reads_nothing_between_rebuilds(store, clock):
    make(store, clock, "ann")
    browse.matching(store, browse.Query(), clock.now())
    calls = []
    inner_get_multi, inner_get = store.get_multi, store.get

    def counted(name, fn):
        def call(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return call

    store.get_multi, store.get = counted("get_multi", inner_get_multi), counted("get", inner_get)
    try:
        clock.advance(1)
        assert [r.head.owner for r in browse.matching(store, browse.Query(), clock.now())] == [
            "ann"
        ]
        assert calls == []
        clock.advance(1)
        browse.matching(store, browse.Query(), clock.now())
        # The directory counter (no entry is new), then one batch of campaigns.
        assert calls == ["get", "get_multi"]
    finally:
        store.get_multi, store.get = inner_get_multi, inner_get


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
