"""The sell page: create a campaign, and see my campaigns with their current price."""

from __future__ import annotations

import pytest

from adspace import buy, gateway

pytestmark = pytest.mark.django_db

URL = "/ads/sell-ad-space/"
GOOD = {
    "min_price": "0.00300000",
    "slot_hours": "24",
    "width": "300",
    "height": "250",
    "disallowed": ["Porn", "Weapons"],
}


@pytest.fixture
def seller_client(client, seller):
    client.force_login(seller)
    return client


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/?next=/ads/sell-ad-space/")


def test_the_form_shows_the_defaults(seller_client):
    html = seller_client.get(URL).content.decode()
    assert 'value="0.00300000"' in html
    assert 'value="24"' in html
    for category in gateway.CATEGORIES:
        assert f'value="{category}"' in html
    assert "You have no campaigns yet" in html


def test_it_creates_a_campaign_and_says_so(seller_client, store, clock):
    response = seller_client.post(URL, GOOD, follow=True)
    assert response.redirect_chain == [(URL, 302)]
    assert "Campaign #0 created" in response.content.decode()
    campaign = gateway.get_campaign(store, "seller", 0).value
    assert campaign["minPrice"] == 300_000
    assert (campaign["slotHours"], campaign["width"], campaign["height"]) == (24, 300, 250)
    assert campaign["disallowed"] == ["Porn", "Weapons"]
    assert campaign["createdAt"] == clock.now()


def test_campaigns_are_numbered_in_order(seller_client, store):
    seller_client.post(URL, GOOD)
    response = seller_client.post(URL, {**GOOD, "disallowed": []}, follow=True)
    assert "Campaign #1 created" in response.content.decode()
    assert gateway.get_campaign(store, "seller", 1).value["disallowed"] == []


def test_the_page_lists_my_campaigns_with_sales_and_current_price(
    seller_client, store, clock, buyer
):
    seller_client.post(URL, {**GOOD, "min_price": "0.005"})
    gateway.create_filler(store, clock, "buyer", "a", "h", "https://a.test/", 300, 250, "x")
    buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 500_000)
    clock.advance(12 * 3600)  # half way down from 2P = 0.01 to M = 0.005
    html = seller_client.get(URL).content.decode()
    assert 'href="/ads/buy-ad-space/seller/0"' in html
    assert "300x250 px" in html
    assert "0.00500000" in html  # minimum
    assert "0.00750000" in html  # price now
    assert "24 h" in html
    assert ">1</td>" in html  # slots sold
    assert "Earned (BTC)" in html


def test_other_sellers_campaigns_are_not_listed(seller_client, store, clock):
    gateway.create_campaign(store, clock, "someone", 400_000, 5, 20, 20, [])
    html = seller_client.get(URL).content.decode()
    assert "/ads/buy-ad-space/someone/" not in html


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_price", "0.00299999", "The minimum is 0.00300000 BTC."),
        ("min_price", "0.003000001", "at most 8 decimal places"),
        ("min_price", "-1", "cannot be negative"),
        ("min_price", "NaN", "not NaN"),
        ("min_price", "1e-2", "without an exponent"),
        ("min_price", "", "Enter an amount in BTC."),
        ("slot_hours", "0", "at least 1 hour"),
        ("slot_hours", "8761", "at most 8760 hours"),
        ("slot_hours", "1.5", "whole number of hours"),
        ("slot_hours", "24.0", "whole number of hours"),
        ("slot_hours", "abc", "whole number of hours"),
        ("width", "15", "from 16 to 2048"),
        ("width", "2049", "from 16 to 2048"),
        ("height", "15", "from 16 to 2048"),
        ("height", "2049", "from 16 to 2048"),
        ("height", "", "from 16 to 2048"),
        ("disallowed", ["Porn", "Spam"], "Spam is not one of the categories"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_creates_nothing(
    seller_client, store, field, value, message
):
    before = store.dump()
    response = seller_client.post(URL, {**GOOD, field: value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert store.dump() == before


def test_the_typed_values_are_kept_after_an_error(seller_client):
    html = seller_client.post(URL, {**GOOD, "width": "15"}).content.decode()
    assert 'value="15"' in html and 'value="250"' in html
