"""Staff take an ad down from the admin: a rejection with refund before the sale is credited,
only hidden after; a reason is required; refusals are a 4xx with nothing written."""

from __future__ import annotations

import pytest

from accounts.gateway import get_account
from adspace import buy, credit, gateway, review, serving
from tests.invariants import assert_audit_clean
from tests.test_admin_dashboard import register_everything
from tests.test_buy import HUGE, make_market

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _registered(settings):
    settings.REVIEW_HOURS = 24
    register_everything()


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def market(store, clock):
    """sam/0 with slot 0 sold to bob (approved and credited) and slot 1 to cat (in review)."""
    n = make_market(store, clock)
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, HUGE)
    review.approve_sale(store, clock, "sam", n, 0)
    credit.credit_all(store, clock)
    clock.advance(60)
    buy.buy_next_slot(store, clock, "cat", "sam", n, 0, HUGE)
    return n


def url(n, k):
    return f"/admin/adspace/campaigns/sam/{n}/{k}/take-down"


def balance(store, name):
    return get_account(store, name).value["balance"]


def test_the_campaign_page_offers_take_down_forms(staff_client, market):
    html = staff_client.get(f"/admin/adspace/campaigns/sam/{market}/").content.decode()
    assert "Take down and refund the buyer" in html
    assert "Hide (credited: no money moves)" in html
    assert "in review" in html


def test_taking_down_an_uncredited_sale_refunds_its_buyer(staff_client, store, clock, market):
    cat = balance(store, "cat")
    price = store.get(gateway.tx_key("sam", market, 1)).value["amount"]
    response = staff_client.post(url(market, 1), {"reason": "illegal"}, follow=True)
    assert response.status_code == 200
    assert "rejected and its buyer refunded in full" in response.content.decode()
    assert balance(store, "cat") == cat + price
    tx = store.get(gateway.tx_key("sam", market, 1)).value
    assert tx["state"] == "rejected" and tx["rejection"]["by"] == "staffer"
    assert_audit_clean(store)


def test_taking_down_a_credited_sale_only_hides_it(staff_client, store, clock, market):
    bob, sam = balance(store, "bob"), balance(store, "sam")
    assert serving.showing(store, "sam", market, clock.now()).index == 0
    response = staff_client.post(url(market, 0), {"reason": "illegal"}, follow=True)
    assert "no money moved" in response.content.decode()
    assert (balance(store, "bob"), balance(store, "sam")) == (bob, sam)
    assert serving.showing(store, "sam", market, clock.now()).index is None
    assert_audit_clean(store)


@pytest.mark.parametrize(
    "k, data, status",
    [
        (1, {"reason": ""}, 400),
        (1, {}, 400),
        (1, {"reason": "x" * 501}, 400),
        (2, {"reason": "forged"}, 404),
    ],
)
def test_bad_take_downs_are_refused_and_change_nothing(
    staff_client, store, market, k, data, status
):
    before = store.dump()
    assert staff_client.post(url(market, k), data).status_code == status
    assert store.dump() == before


def test_a_decided_take_down_is_refused_the_second_time(staff_client, store, market):
    staff_client.post(url(market, 0), {"reason": "illegal"})
    before = store.dump()
    assert staff_client.post(url(market, 0), {"reason": "again"}).status_code == 409
    assert store.dump() == before


def test_take_down_is_post_only_and_staff_only(client, staff_client, make_user, store, market):
    mallory = make_user("mallory")
    before = store.dump()
    assert staff_client.get(url(market, 1)).status_code == 405
    client.force_login(mallory)
    response = client.post(url(market, 1), {"reason": "x"})
    assert response.status_code == 302 and "/login/" in response.url
    assert store.dump() == before
