"""Standing orders through the pages: placing, every refusal (nothing written), editing,
cancelling, the Orders tab, and the counts on the campaign and sales pages."""

from __future__ import annotations

import html

import pytest
from django.contrib.messages import get_messages
from django.test import override_settings

from adspace import buy, gateway, order_exec, orders
from tests.conftest import T0
from tests.invariants import assert_audit_clean

pytestmark = pytest.mark.django_db

M = 300_000
PAGE = "/ads/buy-ad-space/seller/0"
PLACE = PAGE + "/order"
ORDERS = "/account/orders/"


@pytest.fixture
def campaign(store, clock, seller):
    n = gateway.create_campaign(store, clock, "seller", M, 24, 300, 250, [])
    return n


@pytest.fixture
def sold(store, clock, campaign, make_user):
    """One sale at the minimum: the price is now 2M, falling to M over the day."""
    make_user("dan", balance=10_000_000)
    gateway.create_filler(store, clock, "dan", "d", "h", "https://d.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "dan", "seller", campaign, 0, M)
    return campaign


@pytest.fixture
def ad(store, clock, buyer):
    gateway.create_filler(store, clock, "buyer", "main", "h", "https://a.test/", 300, 250, "0")
    gateway.create_filler(store, clock, "buyer", "small", "h", "https://a.test/", 100, 100, "0")
    return 0


@pytest.fixture
def me(client, buyer):
    client.force_login(buyer)
    return client


def form(limit="0.005", filler="0", expires=""):
    return {"limit": limit, "filler": filler, "expires": expires}


def the_order(store, i=0, buyer="buyer"):
    return store.get(orders.order_key(buyer, i)).value


def text(response) -> str:
    return html.unescape(response.content.decode())


def shown(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- placing ------------------------------------------------------------------------------------


def test_a_buyer_places_an_order_from_the_campaign_page(me, store, sold, ad):
    page = me.get(PAGE).content.decode()
    assert 'data-role="order-form"' in page and "No orders waiting." in page
    response = me.post(PLACE, form("0.005", expires="2030-01-01T00:00"), follow=True)
    assert response.status_code == 200
    assert any("Order #0 placed" in m for m in shown(response))
    order = the_order(store)
    assert (order["state"], order["limit"], order["filler"]) == ("open", 500_000, 0)
    assert order["expiresAt"] == 1893456000
    assert "1 order waiting; the highest limit is" in text(response)
    assert "0.00500000" in text(response)


def test_the_campaign_page_shows_counts_and_the_highest_limit_but_not_who(
    client, store, clock, sold, ad, make_user
):
    orders.place_order(store, clock, "buyer", "seller", sold, 0, 400_000, None)
    orders.place_order(store, clock, "buyer", "seller", sold, 0, 550_000, None)
    page = client.get(PAGE).content.decode()
    assert "2 orders waiting; the highest limit is" in page and "0.00550000" in page
    assert "buyer" not in page.split('id="orders-box"')[1].split("</section>")[0]
    assert 'data-role="order-form"' not in page, "a visitor gets no order form"


def test_the_seller_sees_the_counts_on_the_campaigns_sales_page(
    client, store, clock, sold, ad, seller
):
    orders.place_order(store, clock, "buyer", "seller", sold, 0, 400_000, None)
    client.force_login(seller)
    page = client.get("/account/sales/0/").content.decode()
    assert "Standing orders: 1 waiting, the highest limit" in page and "0.00400000" in page
    assert "buyer" not in page.split('data-role="order-counts"')[1].split("</p>")[0]


@pytest.mark.parametrize(
    "limit, message",
    [
        ("0.000000001", "at most 8 decimal places"),
        ("-0.005", "cannot be negative"),
        ("NaN", "not NaN or infinity"),
        ("inf", "not NaN or infinity"),
        ("Infinity", "not NaN or infinity"),
        ("1e-3", "without an exponent"),
        ("five", "using digits"),
        ("", "Enter an amount"),
        ("0", "more than zero"),
        ("0.002", "below this campaign's minimum price"),
        ("0.007", "buy the slot now instead"),
    ],
)
def test_bad_limits_are_refused_with_a_reason_and_nothing_written(
    me, store, sold, ad, limit, message
):
    before = store.dump()
    response = me.post(PLACE, form(limit))
    assert response.status_code == 400
    assert message in text(response)
    assert store.dump() == before


@pytest.mark.parametrize(
    "expires, message",
    [
        ("2023-11-14T22:13", "in the past"),  # T0 is 2023-11-14 22:13:20 UTC
        ("2000-01-01T00:00", "in the past"),
        ("tomorrow", "YYYY-MM-DD HH:MM"),
        ("2030-13-01T00:00", "YYYY-MM-DD HH:MM"),
    ],
)
def test_bad_expiries_are_refused_and_nothing_written(me, store, sold, ad, expires, message):
    before = store.dump()
    response = me.post(PLACE, form(expires=expires))
    assert response.status_code == 400
    assert message in text(response)
    assert store.dump() == before


def test_orders_on_unknown_campaigns_are_refused(me, store, sold, ad):
    before = store.dump()
    assert me.post("/ads/buy-ad-space/seller/7/order", form()).status_code == 404
    assert me.post("/ads/buy-ad-space/nobody/0/order", form()).status_code == 404
    assert me.post("/ads/buy-ad-space/seller/x/order", form()).status_code == 404
    assert store.dump() == before


def test_orders_on_a_paused_campaign_are_refused(me, store, sold, ad):
    gateway.set_campaign_paused(store, "seller", sold, "seller", True)
    before = store.dump()
    response = me.post(PLACE, form())
    assert response.status_code == 400 and "paused" in text(response)
    assert store.dump() == before


def test_an_order_on_ones_own_campaign_is_refused(client, store, clock, sold, seller):
    gateway.create_filler(store, clock, "seller", "own", "h", "https://s.test/", 300, 250, "0")
    client.force_login(seller)
    before = store.dump()
    response = client.post(PLACE, form())
    assert response.status_code == 400 and "your own campaign" in text(response)
    assert store.dump() == before


@pytest.mark.parametrize(
    "filler, message", [("1", "takes 300x250 px ads"), ("9", "Choose one of your own ads")]
)
def test_an_ad_of_the_wrong_size_or_not_ones_own_is_refused(me, store, sold, ad, filler, message):
    before = store.dump()
    response = me.post(PLACE, form(filler=filler))
    assert response.status_code == 400 and message in text(response)
    assert store.dump() == before


def test_an_archived_ad_is_refused(me, store, sold, ad):
    gateway.set_filler_archived(store, "buyer", 0, True)
    before = store.dump()
    response = me.post(PLACE, form())
    assert response.status_code == 400 and "archived" in text(response)
    assert store.dump() == before


@override_settings(MAX_OPEN_ORDERS=3)
def test_more_than_max_open_orders_are_refused_until_one_finishes(me, store, clock, sold, ad):
    for _ in range(3):
        assert me.post(PLACE, form()).status_code == 302
    before = store.dump()
    response = me.post(PLACE, form())
    assert response.status_code == 400 and "3 open orders" in text(response)
    assert store.dump() == before
    orders.cancel_order(store, clock, "buyer", 1)
    assert me.post(PLACE, form()).status_code == 302
    assert the_order(store, 3)["state"] == "open"


def test_a_visitor_is_sent_to_log_in(client, store, sold):
    before = store.dump()
    response = client.post(PLACE, form())
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert store.dump() == before


def test_a_placement_that_stalled_past_the_grace_is_voided_and_never_lands(
    store, clock, sold, ad, monkeypatch
):
    """Book entry written, then the placer stalls: the executor voids the order's key, so the
    late insert fails and the buyer is told to retry; nothing executes."""
    real_insert = store.insert
    stalled = {}

    def stall_on_order(key, value):
        if key.startswith("order::") and not stalled:
            stalled["yes"] = True
            clock.advance(orders.GRACE_SECONDS + 86_400)
            order_exec.execute_due(store, clock)
        return real_insert(key, value)

    monkeypatch.setattr(store, "insert", stall_on_order)
    with pytest.raises(orders.PlacementStalled):
        orders.place_order(store, clock, "buyer", "seller", sold, 0, 500_000, None)
    monkeypatch.undo()
    assert the_order(store)["state"] == "void"
    assert orders.book_summary(store, "seller", sold, clock.now()).waiting == 0
    assert gateway.get_campaign(store, "seller", sold).value["last"]["slot"] == 0
    assert_audit_clean(store)


# --- the Orders tab: listing, editing, cancelling -------------------------------------------


@pytest.fixture
def placed(store, clock, sold, ad):
    return orders.place_order(store, clock, "buyer", "seller", sold, 0, 500_000, None)


def test_the_orders_tab_lists_orders_with_their_state(me, store, clock, placed):
    page = me.get(ORDERS).content.decode()
    assert 'id="order-0"' in page and 'data-state="open"' in page and "0.00500000" in page
    assert 'aria-current="page">Orders<' in page
    clock.advance(86_400)
    order_exec.execute_due(store, clock)
    page = me.get(ORDERS).content.decode()
    assert 'data-state="bought"' in page and "slot #1" in page


def test_the_buyer_edits_the_limit(me, store, placed):
    response = me.post(f"{ORDERS}0/limit", {"limit": "0.004"}, follow=True)
    assert any("now buys at 0.00400000 BTC" in m for m in shown(response))
    assert the_order(store)["limit"] == 400_000
    book = store.get(orders.book_key("seller", 0)).value
    assert book["entries"]["buyer::0"]["limit"] == 400_000


@pytest.mark.parametrize(
    "limit, message",
    [
        ("0.000000001", "8 decimal places"),
        ("-1", "negative"),
        ("nan", "NaN"),
        ("abc", "digits"),
        ("0.002", "minimum price"),
        ("0.009", "buy the slot now instead"),
    ],
)
def test_bad_edits_are_refused_and_nothing_written(me, store, placed, limit, message):
    before = store.dump()
    response = me.post(f"{ORDERS}0/limit", {"limit": limit})
    assert response.status_code == 400 and message in text(response)
    assert store.dump() == before


def test_the_buyer_cancels_and_the_order_never_executes(me, store, clock, placed):
    response = me.post(f"{ORDERS}0/cancel", follow=True)
    assert any("Order #0 is cancelled" in m for m in shown(response))
    assert the_order(store)["state"] == "cancelled"
    assert orders.book_summary(store, "seller", 0, clock.now()).waiting == 0
    clock.advance(86_400)
    order_exec.execute_due(store, clock)
    assert the_order(store)["state"] == "cancelled"
    assert store.get("account::buyer").value["balance"] == 10_000_000


def test_another_users_order_cannot_be_edited_or_cancelled(client, store, placed, make_user):
    client.force_login(make_user("mallory"))
    before = store.dump()
    for path, data in ((f"{ORDERS}0/cancel", {}), (f"{ORDERS}0/limit", {"limit": "0.004"})):
        response = client.post(path, data)
        assert response.status_code == 404
        assert "no such order of yours" in text(response)
    assert store.dump() == before
    assert "0.00500000" not in client.get(ORDERS).content.decode()


@pytest.mark.parametrize("index", ["7", "x", "-1", "01", "99999999999"])
def test_unknown_orders_are_404(me, store, placed, index):
    before = store.dump()
    assert me.post(f"{ORDERS}{index}/cancel").status_code == 404
    assert store.dump() == before


def test_a_finished_order_cannot_be_edited_or_cancelled(me, store, clock, placed):
    clock.advance(86_400)
    order_exec.execute_due(store, clock)
    before = store.dump()
    for path, data in ((f"{ORDERS}0/cancel", {}), (f"{ORDERS}0/limit", {"limit": "0.004"})):
        response = me.post(path, data)
        assert response.status_code == 409
        assert "already bought" in text(response)
    assert store.dump() == before


def test_an_executing_order_cannot_be_cancelled(me, store, clock, placed):
    doc = store.get(orders.order_key("buyer", 0))
    store.replace(
        orders.order_key("buyer", 0),
        {**doc.value, "state": "executing", "token": "t", "slot": 1},
        doc.cas,
    )
    response = me.post(f"{ORDERS}0/cancel")
    assert response.status_code == 409 and "being executed" in text(response)


def test_order_pages_need_a_signed_in_user_and_the_right_method(client, me, placed):
    assert me.get(f"{ORDERS}0/cancel").status_code == 405
    assert me.post(ORDERS).status_code == 405
    client.logout()
    assert client.get(ORDERS).status_code == 302


def test_the_orders_tab_pages_back_through_older_orders(me, store, clock, sold, ad):
    for _ in range(25):
        i = orders.place_order(store, clock, "buyer", "seller", sold, 0, 500_000, None)
        orders.cancel_order(store, clock, "buyer", i)
    first = me.get(ORDERS).content.decode()
    assert 'id="order-24"' in first and 'id="order-5"' in first and 'id="order-4"' not in first
    assert "?before=5" in first
    older = me.get(ORDERS + "?before=5").content.decode()
    assert 'id="order-4"' in older and 'id="order-0"' in older
    assert me.get(ORDERS + "?before=abc").status_code == 404


def test_t0_is_what_the_expiry_cases_assume():
    assert T0 == 1_700_000_000
