"""The seller's sales pages: every sold slot with its ad, buyer, price, fee and review; approve and
reject buttons; the review mode; and every hostile request refused with a 4xx, nothing written."""

from __future__ import annotations

import pytest

from accounts.gateway import ensure_account, get_account
from adspace import buy, credit, gateway
from tests.test_buy import HUGE
from tests.test_embeds import embed_text

pytestmark = pytest.mark.django_db

M = 300_000
HOUR = 3600
SHA = "a" * 64


@pytest.fixture(autouse=True)
def review_window(settings):
    settings.REVIEW_HOURS = 24


@pytest.fixture
def seller_client(client, seller):
    client.force_login(seller)
    return client


def campaign_with_sales(store, clock, owner, sales=1, hours=24):
    gateway.store_image(store, SHA, "image/png", "png", b"not really a png", 300, 250)
    n = gateway.create_campaign(store, clock, owner, M, hours, 300, 250, [])
    for i in range(sales):
        name = f"b{i}"
        ensure_account(store, clock, name)
        from accounts.adjust import adjust_balance

        adjust_balance(store, clock, name, HUGE // 1000, "funding")
        try:
            gateway.create_filler(
                store,
                clock,
                name,
                "main",
                f"hover of {name}",
                f"https://{name}.test/",
                300,
                250,
                SHA,
            )
        except gateway.NicknameTaken:
            pass  # the same buyer, buying in another campaign
        buy.buy_next_slot(store, clock, name, owner, n, 0, HUGE)
        clock.advance(60)
    return n


def balance(store, name):
    return get_account(store, name).value["balance"]


def test_it_requires_login(client):
    response = client.get("/account/sales/")
    assert response.status_code == 302 and "/accounts/login/" in response.url


def test_the_page_lists_each_sale_with_its_ad_buyer_price_fee_and_review(
    seller_client, store, clock
):
    n = campaign_with_sales(store, clock, "seller", sales=2)
    html = seller_client.get(f"/account/sales/{n}/").content.decode()
    assert html.count('class="sale sale-in-review"') == 2
    assert 'href="https://b1.test/"' in html and 'title="hover of b1"' in html
    assert 'width="300" height="250"' in html
    assert "b0" in html and "0.00300000" in html and "0.00004500" in html  # price and fee
    assert "In review until" in html
    assert "running" in html and "queued" in html
    assert html.count(">Approve</button>") == 2
    # The newest sale comes first.
    assert html.index("https://b1.test/") < html.index("https://b0.test/")


def test_all_campaigns_page_shows_every_campaign_and_paginates(seller_client, store, clock):
    first = campaign_with_sales(store, clock, "seller", sales=1)
    second = campaign_with_sales(store, clock, "seller", sales=1)
    html = seller_client.get("/account/sales/").content.decode()
    assert f'href="/account/sales/{first}/"' in html and f'href="/account/sales/{second}/"' in html
    assert "Sales: 2." in html
    for _ in range(20):
        clock.advance(25 * HOUR)
        buy.buy_next_slot(store, clock, "b0", "seller", first, 0, HUGE)
    page2 = seller_client.get("/account/sales/?page=2")
    assert page2.status_code == 200 and "Page 2 of 2" in page2.content.decode()
    assert seller_client.get("/account/sales/?page=3").status_code == 404
    assert seller_client.get("/account/sales/?page=x").status_code == 404


def test_approving_credits_the_sale_on_the_next_pass(seller_client, store, clock):
    n = campaign_with_sales(store, clock, "seller")
    response = seller_client.post(f"/account/sales/{n}/0/approve", follow=True)
    assert response.status_code == 200
    assert "approved" in response.content.decode()
    credit.credit_all(store, clock)
    assert balance(store, "seller") == M - 4500
    html = seller_client.get(f"/account/sales/{n}/").content.decode()
    assert "Approved" in html and ">Approve</button>" not in html


def test_rejecting_refunds_the_buyer_and_shows_the_reason(seller_client, store, clock, make_user):
    n = campaign_with_sales(store, clock, "seller")
    before = balance(store, "b0")
    response = seller_client.post(
        f"/account/sales/{n}/0/reject", {"reason": "Off-topic <b>ad</b>"}, follow=True
    )
    assert response.status_code == 200
    assert balance(store, "b0") == before + M
    html = seller_client.get(f"/account/sales/{n}/").content.decode()
    assert "Rejected by you: Off-topic &lt;b&gt;ad&lt;/b&gt; (buyer refunded)" in html
    # The buyer reads the reason in their account history.
    seller_client.force_login(make_user("b0"))
    history = seller_client.get("/account/").content.decode()
    assert "Refund: ad rejected" in history
    assert "Ad rejected by the seller: Off-topic &lt;b&gt;ad&lt;/b&gt;" in history


def test_review_mode_is_saved_and_refuses_unknown_modes(seller_client, store, clock):
    n = campaign_with_sales(store, clock, "seller", sales=0)
    assert (
        seller_client.post(f"/account/sales/{n}/review-mode", {"mode": "approve"}).status_code
        == 302
    )
    assert gateway.get_campaign(store, "seller", n).value["reviewMode"] == "approve"
    before = store.dump()
    assert (
        seller_client.post(f"/account/sales/{n}/review-mode", {"mode": "never"}).status_code == 400
    )
    assert seller_client.post(f"/account/sales/{n}/review-mode", {}).status_code == 400
    assert store.dump() == before


# --- hostile requests: a clear 4xx and nothing written --------------------------------------


@pytest.mark.parametrize(
    "path, data, status",
    [
        ("/account/sales/0/0/reject", {"reason": ""}, 400),
        ("/account/sales/0/0/reject", {"reason": "   "}, 400),
        ("/account/sales/0/0/reject", {}, 400),
        ("/account/sales/0/0/reject", {"reason": "x" * 501}, 400),
        ("/account/sales/0/0/reject", {"reason": "x" * 20_000}, 413),
        ("/account/sales/0/1/approve", {}, 404),  # a forged slot index
        ("/account/sales/0/-1/approve", {}, 404),
        ("/account/sales/0/01/approve", {}, 404),
        ("/account/sales/0/99999999999/approve", {}, 404),
        ("/account/sales/7/0/approve", {}, 404),  # no such campaign of mine
        ("/account/sales/x/0/approve", {}, 404),
        ("/account/sales/0/0/delete", {}, 404),
    ],
)
def test_bad_decisions_are_refused_and_change_nothing(
    seller_client, store, clock, path, data, status
):
    campaign_with_sales(store, clock, "seller")
    before = store.dump()
    assert seller_client.post(path, data).status_code == status
    assert store.dump() == before


def test_another_sellers_sale_cannot_be_decided(seller_client, store, clock):
    ensure_account(store, clock, "other")
    n = campaign_with_sales(store, clock, "other")
    before = store.dump()
    # The owner is the signed-in seller: "other"'s campaign 0 is not theirs to name.
    assert seller_client.post(f"/account/sales/{n}/0/reject", {"reason": "mine"}).status_code == 404
    assert seller_client.post(f"/account/sales/{n}/0/approve").status_code == 404
    assert seller_client.get(f"/account/sales/{n}/").status_code == 404
    assert store.dump() == before


def test_a_sale_past_its_window_or_already_decided_is_refused(seller_client, store, clock):
    n = campaign_with_sales(store, clock, "seller", sales=2)
    seller_client.post(f"/account/sales/{n}/1/reject", {"reason": "no"})
    clock.advance(24 * HOUR)
    before = store.dump()
    late = seller_client.post(f"/account/sales/{n}/0/reject", {"reason": "late"})
    assert late.status_code == 409 and "review window" in late.content.decode()
    again = seller_client.post(f"/account/sales/{n}/1/approve")
    assert again.status_code == 409 and "already decided" in again.content.decode()
    assert store.dump() == before


def test_decisions_take_post_only(seller_client, store, clock):
    n = campaign_with_sales(store, clock, "seller")
    before = store.dump()
    assert seller_client.get(f"/account/sales/{n}/0/approve").status_code == 405
    assert store.dump() == before


def test_a_busy_buyer_is_a_409_and_nothing_changes(seller_client, store, clock):
    from accounts import locks

    n = campaign_with_sales(store, clock, "seller")
    locks.take_lock(store, clock, "b0", "adjust", "someone-else")
    before = store.dump()
    response = seller_client.post(f"/account/sales/{n}/0/reject", {"reason": "no"})
    assert response.status_code == 409 and "busy" in response.content.decode()
    assert store.dump() == before


def test_the_embed_shows_the_placeholder_once_the_ad_is_rejected(
    seller_client, client, store, clock
):
    n = campaign_with_sales(store, clock, "seller")
    clock.advance(-60)  # back inside slot 0
    assert "https://b0.test/" in embed_text(client, f"/embed/seller/{n}")
    seller_client.post(f"/account/sales/{n}/0/reject", {"reason": "no"})
    html = embed_text(client, f"/embed/seller/{n}")
    assert "https://b0.test/" not in html and "Your ad here" in html


def test_approve_first_embeds_the_placeholder_until_approved(seller_client, client, store, clock):
    n = campaign_with_sales(store, clock, "seller", sales=0)
    seller_client.post(f"/account/sales/{n}/review-mode", {"mode": "approve"})
    campaign_with_sales_into(store, clock, n)
    assert "Your ad here" in embed_text(client, f"/embed/seller/{n}")
    seller_client.post(f"/account/sales/{n}/0/approve")
    assert "https://b0.test/" in embed_text(client, f"/embed/seller/{n}")


def campaign_with_sales_into(store, clock, n):
    from accounts.adjust import adjust_balance

    ensure_account(store, clock, "b0")
    adjust_balance(store, clock, "b0", HUGE // 1000, "funding")
    gateway.create_filler(store, clock, "b0", "main", "h", "https://b0.test/", 300, 250, SHA)
    buy.buy_next_slot(store, clock, "b0", "seller", n, 0, HUGE)
