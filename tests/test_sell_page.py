"""The sell page: create a campaign, and see my campaigns with their current price."""

from __future__ import annotations

import pytest

from adspace import buy, gateway

pytestmark = pytest.mark.django_db

URL = "/ads/sell-ad-space/"
GOOD = {
    "title": "Seller's blog",
    "site_url": "https://seller.test/",
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


# --- caps and pages -----------------------------------------------------------------------------


def test_campaigns_past_the_cap_are_refused_and_write_nothing(seller_client, store, settings):
    settings.MAX_CAMPAIGNS_PER_USER = 3
    for _ in range(3):
        assert seller_client.post(URL, GOOD).status_code == 302
    before = store.dump()
    response = seller_client.post(URL, GOOD)
    assert response.status_code == 400
    assert "You have 3 campaigns, the most one account can have" in response.content.decode()
    assert store.dump() == before
    assert gateway.campaign_count(store, "seller") == 3


def test_the_campaign_cap_holds_when_creates_race(store, clock):
    import threading

    barrier = threading.Barrier(12)
    outcomes: list[object] = []

    def create() -> None:
        barrier.wait()
        try:
            outcomes.append(
                gateway.create_campaign(store, clock, "sam", 300_000, 24, 300, 250, [], 5)
            )
        except gateway.TooManyCampaigns as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = sorted(n for n in outcomes if isinstance(n, int))
    assert created == [0, 1, 2, 3, 4]
    assert [c["n"] for c in gateway.owner_campaigns(store, "sam")] == created
    # A refused create left no directory entry and no campaign behind.
    assert sorted(n for _, n in gateway.iter_campaign_refs(store)) == created


def test_my_campaigns_are_listed_twenty_a_page(seller_client, store, clock):
    for _ in range(45):
        gateway.create_campaign(store, clock, "seller", 300_000, 24, 300, 250, [])
    first = seller_client.get(URL).content.decode()
    assert 'href="/ads/buy-ad-space/seller/19"' in first
    assert 'href="/ads/buy-ad-space/seller/20"' not in first
    assert "Page 1 of 3" in first
    last = seller_client.get(URL + "?page=3").content.decode()
    assert 'href="/ads/buy-ad-space/seller/44"' in last
    assert 'href="/ads/buy-ad-space/seller/39"' not in last
    assert seller_client.get(URL + "?page=4").status_code == 404


def test_the_snippets_link_to_site_url_not_the_requests_host(seller_client, store, clock):
    gateway.create_campaign(store, clock, "seller", 300_000, 24, 300, 250, [])
    html = seller_client.get(URL, HTTP_HOST="localhost:6666").content.decode()
    assert "http://testserver/embed/seller/0" in html
    assert "6666" not in html
