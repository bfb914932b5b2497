"""Campaign details: title, site address and description, set at creation and edited by the
owner; the sale terms change only while nothing is sold."""

from __future__ import annotations

import pytest

from adspace import buy, gateway

pytestmark = pytest.mark.django_db

SELL = "/ads/sell-ad-space/"
EDIT = "/ads/buy-ad-space/seller/0/edit"
CAMPAIGN = "/ads/buy-ad-space/seller/0"
CREATE = {
    "title": "Knitting weekly",
    "site_url": "https://knit.test/",
    "description": "Readers who knit.\r\nMostly in Europe.",
    "min_price": "0.00300000",
    "slot_hours": "24",
    "width": "300",
    "height": "250",
}
EDITED = {**CREATE, "title": "Knitting daily", "description": "Now every day."}


@pytest.fixture
def seller_client(client, seller):
    client.force_login(seller)
    return client


@pytest.fixture
def created(seller_client, store):
    assert seller_client.post(SELL, CREATE).status_code == 302
    return gateway.get_campaign(store, "seller", 0).value


def test_creating_a_campaign_stores_its_details(created):
    assert created["title"] == "Knitting weekly"
    assert created["siteUrl"] == "https://knit.test/"
    assert created["description"] == "Readers who knit.\r\nMostly in Europe."


def test_the_campaign_page_seller_page_and_sellers_list_show_the_details(client, created):
    page = client.get(CAMPAIGN).content.decode()
    assert "<h1>Knitting weekly</h1>" in page
    assert 'href="https://knit.test/"' in page and "Readers who knit." in page
    assert "Knitting weekly" in client.get("/ads/buy-ad-space/seller/").content.decode()
    listing = client.get("/ads/buy-ad-space/").content.decode()
    assert 'href="/ads/buy-ad-space/seller/0">Knitting weekly</a>' in listing


def test_the_embed_placeholder_names_the_campaign(client, created):
    html = client.get("/embed/seller/0").content.decode()
    assert "buy this ad space: Knitting weekly" in html


def test_a_campaign_without_a_title_shows_a_fallback(client, store, clock, seller):
    del seller  # the owner's account exists
    gateway.create_campaign(store, clock, "seller", 300_000, 24, 300, 250, [])
    doc = store.get(gateway.campaign_key("seller", 0))
    legacy = {k: v for k, v in doc.value.items() if k not in ("title", "siteUrl", "description")}
    store.replace(gateway.campaign_key("seller", 0), legacy, doc.cas)
    page = client.get(CAMPAIGN)
    assert page.status_code == 200
    assert "seller&#39;s ad space #0" in page.content.decode()
    assert client.get("/ads/buy-ad-space/seller/").status_code == 200
    assert client.get("/ads/buy-ad-space/").status_code == 200
    assert client.get("/embed/seller/0").status_code == 200


def test_the_owner_edits_details_and_terms_while_nothing_is_sold(seller_client, store, created):
    response = seller_client.post(
        EDIT, {**EDITED, "slot_hours": "12", "width": "728", "height": "90"}
    )
    assert response.status_code == 302
    doc = gateway.get_campaign(store, "seller", 0).value
    assert (doc["title"], doc["description"]) == ("Knitting daily", "Now every day.")
    assert (doc["slotHours"], doc["width"], doc["height"]) == (12, 728, 90)
    assert doc["createdAt"] == created["createdAt"]


def test_once_sold_the_terms_are_frozen_but_details_still_change(
    seller_client, store, clock, created, buyer
):
    gateway.create_filler(store, clock, "buyer", "ad", "h", "https://b.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 300_000)
    page = seller_client.get(EDIT).content.decode()
    assert "can no longer change" in page or "stay as they were sold" in page
    # The disabled terms fields are not sent by a browser; a forged post of them is ignored.
    response = seller_client.post(EDIT, {**EDITED, "width": "728"})
    assert response.status_code == 302
    doc = gateway.get_campaign(store, "seller", 0).value
    assert doc["title"] == "Knitting daily" and doc["width"] == 300
    assert doc["last"]["slot"] == 0


def test_the_gateway_refuses_a_terms_change_after_a_sale(store, clock, created, buyer):
    gateway.create_filler(store, clock, "buyer", "ad", "h", "https://b.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 300_000)
    before = store.dump()
    with pytest.raises(gateway.TermsFrozen):
        gateway.update_campaign(store, "seller", 0, "seller", {"minPrice": 1})
    assert store.dump() == before


def test_a_sale_that_lags_behind_its_campaign_still_freezes_the_terms(store, clock, created):
    """Slot 0 exists but `last` is not yet set (a sale between its commit point and step 5)."""
    store.insert(gateway.slot_key("seller", 0, 0), {"buyer": "x", "price": 1})
    with pytest.raises(gateway.TermsFrozen):
        gateway.update_campaign(store, "seller", 0, "seller", {"width": 728})


def test_disallowed_categories_stay_editable_after_a_sale(
    seller_client, store, clock, created, buyer
):
    gateway.create_filler(store, clock, "buyer", "ad", "h", "https://b.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 300_000)
    seller_client.post(EDIT, {**EDITED, "disallowed": ["Weapons", "Porn"]})
    assert gateway.get_campaign(store, "seller", 0).value["disallowed"] == ["Porn", "Weapons"]


def test_another_user_cannot_edit_the_campaign(client, store, created, buyer):
    client.force_login(buyer)
    before = store.dump()
    response = client.post(EDIT, EDITED)
    assert response.status_code == 403
    assert "Only the campaign&#39;s owner can change it" in response.content.decode()
    assert client.get(EDIT).status_code == 403
    assert store.dump() == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("title", "<b>Bold</b>", "the characters &lt; and &gt; are not allowed"),
        ("title", "a" * 81, "Titles are at most 80 characters."),
        ("title", "", "Give the campaign a title."),
        ("title", "Tab\there", "without control or invisible characters"),
        ("title", "evil\u202eright-to-left", "without control or invisible characters"),
        ("description", "x" * 10_000, "Descriptions are at most 1000 characters."),
        ("description", "<script>alert(1)</script>", "are not allowed"),
        ("description", "nul\x00byte", "without control or invisible characters"),
        ("site_url", "javascript:alert(1)", "starting with http:// or https://"),
        ("site_url", "https://user:pw@knit.test/", "cannot contain a user name or password"),
        ("site_url", "https://knit.test/a b", "cannot contain spaces"),
        ("site_url", "ftp://knit.test/", "starting with http:// or https://"),
    ],
)
def test_bad_details_are_refused_on_create_and_edit(
    seller_client, store, created, field, value, message
):
    before = store.dump()
    for url in (SELL, EDIT):
        response = seller_client.post(url, {**CREATE, field: value})
        assert response.status_code == 400, url
        assert message in response.content.decode(), url
    assert store.dump() == before
