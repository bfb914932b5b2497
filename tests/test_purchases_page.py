"""The buyer's purchases page, read from their ledger; ledger rows link to campaign and slot."""

from __future__ import annotations

import re

import pytest

from accounts.adjust import adjust_balance
from adspace import buy, gateway, review, services

pytestmark = pytest.mark.django_db

URL = "/account/purchases/"
M = 300_000


@pytest.fixture
def market(store, clock, seller, buyer):
    gateway.create_campaign(store, clock, "seller", M, 24, 300, 250, [], title="Knitting <weekly>")
    gateway.create_filler(store, clock, "buyer", "shoes ad", "h", "https://b.test/", 300, 250, "0")


@pytest.fixture
def buyer_client(client, buyer):
    client.force_login(buyer)
    return client


def buy_one(store, clock):
    sale = buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, M)
    clock.advance(25 * 3600)  # past the slot's end: the next one costs the minimum again
    return sale


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302 and "/accounts/login/" in response.url


def test_a_purchase_shows_campaign_ad_times_and_price(buyer_client, store, clock, market):
    sale = buy_one(store, clock)
    html = buyer_client.get(URL).content.decode()
    assert 'href="/ads/buy-ad-space/seller/0">Knitting &lt;weekly&gt;</a>' in html
    assert "shoes ad" in html and "0.00300000" in html
    assert f'datetime="{services.utc(sale.starts_at).isoformat()}"' in html
    assert f'datetime="{services.utc(sale.ends_at).isoformat()}"' in html
    assert 'src="/static/js/localtime.js"' in html and "<script>" not in html
    # The suite's REVIEW_HOURS is 0: the window closed at the purchase, so the ad stands.
    assert re.search(r'data-role="review">approved<', html)


def test_the_review_shows_in_review_then_the_rejection_and_its_refund(
    buyer_client, store, clock, market, settings
):
    settings.REVIEW_HOURS = 24
    sale = buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, M)
    html = buyer_client.get(URL).content.decode()
    assert re.search(r'data-role="review">in review</span> until <time', html)
    review.reject_sale(store, clock, "seller", "seller", 0, sale.slot, "off-topic <b>ad</b>")
    html = buyer_client.get(URL).content.decode()
    assert re.search(r'data-role="review">rejected<', html)
    assert "by the seller: off-topic &lt;b&gt;ad&lt;/b&gt;; the full price was refunded." in html


def test_an_approved_purchase_says_so(buyer_client, store, clock, market, settings):
    settings.REVIEW_HOURS = 24
    sale = buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, M)
    review.approve_sale(store, clock, "seller", 0, sale.slot)
    assert re.search(r'data-role="review">approved<', buyer_client.get(URL).content.decode())


def test_nothing_bought_says_so(buyer_client, market):
    assert "You have not bought any slot yet" in buyer_client.get(URL).content.decode()


def test_purchases_are_paged_newest_first_across_ledger_pages(buyer_client, store, clock, market):
    # 25 buys among 150 other ledger entries: the buys span two ledger pages.
    for i in range(25):
        buy_one(store, clock)
        for _ in range(6):
            adjust_balance(store, clock, "buyer", 1, f"noise {i}")
    first = buyer_client.get(URL).content.decode()
    shown = [int(k) for k in re.findall(r'id="p-seller-0-(\d+)"', first)]
    assert shown == list(range(24, 4, -1))
    older = re.search(r'href="/account/purchases/\?before=(\d+)"', first).group(1)
    second = buyer_client.get(f"{URL}?before={older}").content.decode()
    assert [int(k) for k in re.findall(r'id="p-seller-0-(\d+)"', second)] == [4, 3, 2, 1, 0]
    assert "?before=" not in second.split('class="pager"')[1]


@pytest.mark.parametrize("before", ["0", "-1", "abc", "07", "1" * 30])
def test_a_forged_cursor_is_a_404(buyer_client, market, before):
    assert buyer_client.get(f"{URL}?before={before}").status_code == 404


def test_a_cursor_past_the_end_shows_the_newest(buyer_client, store, clock, market):
    buy_one(store, clock)
    html = buyer_client.get(f"{URL}?before=999999").content.decode()
    assert 'id="p-seller-0-0"' in html


def test_ledger_rows_link_to_the_campaign_and_the_slot(buyer_client, store, clock, market):
    buy_one(store, clock)
    html = buyer_client.get("/account/").content.decode()
    assert "slot::seller::0::0" not in html
    assert '<a href="/ads/buy-ad-space/seller/0">seller\'s campaign #0</a>' in html
    link = re.search(r'<a href="(/account/purchases/\?before=\d+#p-seller-0-0)">slot #0</a>', html)
    assert link is not None
    target = buyer_client.get(link.group(1).split("#")[0]).content.decode()
    assert 'id="p-seller-0-0"' in target
