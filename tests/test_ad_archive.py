"""Archiving an ad: it leaves the buy form, slots already sold keep showing it."""

from __future__ import annotations

import pytest

from adspace import buy, gateway, serving
from adspace.images import validate_ad_image
from tests.hostile_cases import png
from tests.test_embeds import embed_text

pytestmark = pytest.mark.django_db

CAMPAIGN = "/ads/buy-ad-space/seller/0"


@pytest.fixture
def market(store, clock, seller, buyer):
    gateway.create_campaign(store, clock, "seller", 300_000, 24, 300, 250, [], title="Blog")
    image = validate_ad_image(png(300, 250), 300, 250)
    gateway.store_image(store, image.sha256, image.content_type, image.ext, image.data, 300, 250)
    for name in ("old", "new"):
        gateway.create_filler(
            store, clock, "buyer", name, "h", "https://b.test/", 300, 250, image.sha256
        )


@pytest.fixture
def buyer_client(client, buyer):
    client.force_login(buyer)
    return client


def test_archiving_takes_the_ad_out_of_the_buy_form(buyer_client, store, market):
    response = buyer_client.post("/account/ads/0/archive", {"action": "archive"})
    assert response.status_code == 302
    assert gateway.get_filler(store, "buyer", 0)["archived"] is True
    page = buyer_client.get(CAMPAIGN).content.decode()
    assert 'name="filler" value="1"' in page
    assert 'name="filler" value="0"' not in page
    assert "archived" in buyer_client.get("/account/ads/").content.decode()


def test_a_forged_buy_with_an_archived_ad_is_refused_and_charges_nothing(
    buyer_client, store, market
):
    gateway.set_filler_archived(store, "buyer", 0, True)
    before = store.dump()
    response = buyer_client.post(CAMPAIGN + "/buy", {"filler": "0", "accepted_price": "300000"})
    assert response.status_code == 400
    assert "is archived" in response.content.decode()
    assert store.dump() == before


def test_a_sold_slot_keeps_showing_its_archived_ad(buyer_client, client, store, clock, market):
    buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 300_000)
    buyer_client.post("/account/ads/0/archive", {"action": "archive"})
    live = serving.live_slot(store, "seller", 0, clock.now())
    assert live is not None and live[1]["filler"] == gateway.filler_key("buyer", 0)
    assert gateway.get_filler(store, "buyer", 0)["url"] == "https://b.test/"
    assert embed_text(client, "/embed/seller/0").endswith("\nhttps://b.test/")


def test_a_restored_ad_can_be_bought_with_again(buyer_client, store, clock, market):
    gateway.set_filler_archived(store, "buyer", 0, True)
    buyer_client.post("/account/ads/0/archive", {"action": "restore"})
    assert gateway.get_filler(store, "buyer", 0)["archived"] is False
    assert buy.buy_next_slot(store, clock, "buyer", "seller", 0, 0, 300_000).slot == 0


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/account/ads/9/archive", {"action": "archive"}, 404),  # no such ad of mine
        ("/account/ads/07/archive", {"action": "archive"}, 400),
        ("/account/ads/-1/archive", {"action": "archive"}, 400),
        ("/account/ads/0/archive", {"action": "delete"}, 400),
        ("/account/ads/0/archive", {}, 400),
    ],
)
def test_bad_archive_requests_change_nothing(buyer_client, store, market, path, data, status):
    before = store.dump()
    assert buyer_client.post(path, data).status_code == status
    assert store.dump() == before


def test_another_users_ad_cannot_be_archived(client, store, market, outsider):
    client.force_login(outsider)
    before = store.dump()
    assert client.post("/account/ads/0/archive", {"action": "archive"}).status_code == 404
    assert store.dump() == before


def test_archiving_only_flags_the_ad(store, market):
    doc = gateway.get_filler(store, "buyer", 0)
    gateway.set_filler_archived(store, "buyer", 0, True)
    assert gateway.get_filler(store, "buyer", 0) == {**doc, "archived": True}
