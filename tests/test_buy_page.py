"""Buying the next slot through the campaign page: the form, and a message for every outcome."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages

import docstore
from accounts import locks
from accounts.gateway import get_account
from accounts.recovery import run_recovery
from adspace import buy, gateway
from docstore import Ambiguous, TemporaryFailure
from docstore.faults import Hook, HookedStore
from tests.conftest import T0
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once

pytestmark = pytest.mark.django_db

M = 300_000
HOUR = 3600
PAGE = "/ads/buy-ad-space/sam/0"
BUY = "/ads/buy-ad-space/sam/0/buy"


@pytest.fixture
def campaign(store, clock):
    return gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])


@pytest.fixture
def ad(store, clock, buyer):
    """The buyer's ad #0, of the campaign's size."""
    return gateway.create_filler(
        store, clock, "buyer", "main", "h", "https://a.test/", 300, 250, "0"
    )


@pytest.fixture
def me(client, buyer):
    client.force_login(buyer)
    return client


def balance(store, name: str) -> int:
    return get_account(store, name).value["balance"]


def messages_of(response) -> list[str]:
    """The messages the page after the redirect showed (they are also checked in its HTML)."""
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    page = response.content.decode()
    assert all(text in page for text in shown)
    return shown


# --- the form -----------------------------------------------------------------------------------


def test_not_logged_in_the_page_offers_a_login_link_back_here(client, campaign):
    html = client.get(PAGE).content.decode()
    assert 'href="/accounts/login/?next=/ads/buy-ad-space/sam/0"' in html
    assert "Log in to buy" in html
    assert 'action="/ads/buy-ad-space/sam/0/buy"' not in html


def test_without_ads_the_page_links_to_uploading_one(me, campaign):
    html = me.get(PAGE).content.decode()
    assert 'href="/account/ads/new/"' in html
    assert 'name="accepted_price"' not in html


def test_the_form_offers_my_ads_and_disables_those_of_another_size(me, store, clock, campaign, ad):
    gateway.create_filler(store, clock, "buyer", "tiny", "h", "https://a.test/", 100, 100, "0")
    html = me.get(PAGE).content.decode()
    assert re.search(r'<input type="radio" name="filler" value="0" checked>\s*main', html)
    assert re.search(r'<input type="radio" name="filler" value="1" disabled>\s*tiny', html)
    assert "is 100x100, this space takes 300x250" in html
    assert '<input type="hidden" name="accepted_price" value="300000"' in html
    assert "Buy the next slot for at most" in html


def test_another_users_ads_are_not_offered(me, store, clock, campaign, ad):
    gateway.create_filler(store, clock, "outsider", "theirs", "h", "https://a.test/", 300, 250, "0")
    assert "theirs" not in me.get(PAGE).content.decode()


# --- outcomes -------------------------------------------------------------------------------


def test_buying_debits_the_price_and_shows_the_slot_times(me, store, clock, campaign, ad):
    response = me.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert messages_of(response) == [
        "You bought slot #0 for 0.00300000 BTC; it shows from 2023-11-14 22:13:20 to "
        "2023-11-15 22:13:20 UTC."
    ]
    assert balance(store, "buyer") == 10_000_000 - M
    html = response.content.decode()
    queue = html.split("Sold slots still to run", 1)[1]
    assert '#0 <span class="badge">showing now</span>' in queue
    assert f'data-purchased-at="{T0}"' in html


def test_the_sale_is_at_the_servers_price_when_it_has_fallen_below_the_accepted_one(
    me, store, clock, campaign, ad, make_user
):
    make_user("early", balance=10_000_000)
    gateway.create_filler(store, clock, "early", "e", "h", "https://a.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "early", "sam", 0, 0, M)
    clock.advance(12 * HOUR)  # 0.006 at the sale, 0.0045 half way
    response = me.post(BUY, {"filler": "0", "accepted_price": "600000"}, follow=True)
    assert "You bought slot #1 for 0.00450000 BTC" in messages_of(response)[0]
    assert balance(store, "buyer") == 10_000_000 - 450_000


def test_a_second_buyer_with_the_old_price_is_shown_the_doubled_price(
    client, store, clock, campaign, ad, make_user
):
    rival = make_user("rival", balance=10_000_000)
    gateway.create_filler(store, clock, "rival", "r", "h", "https://a.test/", 300, 250, "0")
    buy.buy_next_slot(store, clock, "buyer", "sam", 0, 0, M)  # the buyer got there first
    client.force_login(rival)
    before = store.dump()
    response = client.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert messages_of(response) == [
        "The price is now 0.00600000 BTC, more than you accepted; nothing was bought. "
        "Check the new price and buy again if it suits you."
    ]
    assert store.dump() == before
    assert '<span class="amount" data-role="price">0.00600000</span>' in response.content.decode()


def test_someone_taking_the_slot_mid_purchase_costs_nothing(
    me, store, clock, campaign, ad, monkeypatch
):
    # As if another buyer's slot insert had landed between our price check and ours.
    monkeypatch.setattr(buy, "_insert_slot", lambda store_, buyer_, lock: False)
    response = me.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    assert messages_of(response)[0].startswith("Someone else just bought that slot")
    assert balance(store, "buyer") == 10_000_000
    assert get_account(store, "buyer").value["lock"] is None


def test_insufficient_funds_says_so_with_a_link_to_add_funds(
    client, store, clock, campaign, make_user
):
    poor = make_user("poor", balance=100_000)
    gateway.create_filler(store, clock, "poor", "p", "h", "https://a.test/", 300, 250, "0")
    client.force_login(poor)
    before = store.dump()
    response = client.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    html = response.content.decode()
    assert "Your balance is 0.00100000 BTC and this slot costs 0.00300000 BTC." in html
    assert '<a href="/account/">Add funds</a>' in html
    assert store.dump() == before


def test_a_live_lock_on_the_account_says_try_again_in_a_moment(me, store, clock, campaign, ad):
    locks.take_lock(store, clock, "buyer", "adjust", "adjust:x", delta=1, reason="r")
    response = me.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    assert messages_of(response) == [locks.AccountBusy.message]
    assert "Another operation on your account is in progress" in response.content.decode()
    assert gateway.get_slots(store, "sam", 0, 0, 0) == {}


class FailsAfterInsert(Hook):
    """An insert lands, but the caller is told it failed (a timeout after sending)."""

    def __init__(self, failure: type[Exception], key: str):
        self.failure, self.key = failure, key

    def after(self, op: str, key: str) -> None:
        if op == "insert" and key == self.key:
            raise self.failure("timed out after the request left")


def test_an_ambiguous_slot_insert_is_reread_and_the_sale_completes(me, store, clock, campaign, ad):
    docstore.set_store(
        HookedStore(store, FailsAfterInsert(Ambiguous, gateway.slot_key("sam", 0, 0)))
    )
    try:
        response = me.post(BUY, {"filler": "0", "accepted_price": str(M)}, follow=True)
    finally:
        docstore.set_store(store)
    assert response.status_code == 200
    assert balance(store, "buyer") == 10_000_000 - M
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


@pytest.mark.parametrize("failure", [Ambiguous, TemporaryFailure])
def test_an_unknown_outcome_is_a_503_and_recovery_charges_once(
    me, store, clock, campaign, ad, failure
):
    docstore.set_store(HookedStore(store, FailsAfterInsert(failure, gateway.tx_key("sam", 0, 0))))
    try:
        response = me.post(BUY, {"filler": "0", "accepted_price": str(M)})
    finally:
        docstore.set_store(store)
    assert response.status_code == 503
    assert (
        "We could not confirm the purchase; it will complete or be undone automatically within "
        "a minute; you will never be charged twice."
    ) in response.content.decode()
    clock.advance(locks.lease_seconds())
    run_recovery(store, clock)
    assert balance(store, "buyer") == 10_000_000 - M
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", ["1", "5", "-1", "x", "", "1.0", "99999999999"])
def test_a_forged_or_missing_ad_is_a_400_and_writes_nothing(me, store, clock, campaign, ad, filler):
    gateway.create_filler(store, clock, "outsider", "theirs", "h", "https://a.test/", 300, 250, "0")
    # The outsider's ad is filler::outsider::0; index 1 does not exist for the buyer at all.
    before = store.dump()
    response = me.post(BUY, {"filler": filler, "accepted_price": str(M)})
    assert response.status_code == 400
    assert "Choose one of your own ads" in response.content.decode()
    assert store.dump() == before


def test_someone_elses_ad_index_buys_nothing(client, store, clock, campaign, make_user):
    # The index names an ad only among the buyer's own: index 0 of "thief" is not "buyer"'s ad 0.
    thief = make_user("thief", balance=10_000_000)
    gateway.create_filler(store, clock, "buyer", "main", "h", "https://a.test/", 300, 250, "0")
    client.force_login(thief)
    before = store.dump()
    response = client.post(BUY, {"filler": "0", "accepted_price": str(M)})
    assert response.status_code == 400
    assert store.dump() == before


def test_an_ad_of_the_wrong_size_is_a_400(me, store, clock, campaign):
    gateway.create_filler(store, clock, "buyer", "tiny", "h", "https://a.test/", 100, 100, "0")
    response = me.post(BUY, {"filler": "0", "accepted_price": str(M)})
    assert response.status_code == 400
    assert "This space takes 300x250 px ads; &#39;tiny&#39; is 100x100 px." in (
        response.content.decode()
    )


@pytest.mark.parametrize("price", ["0", "-300000", "abc", "", "0.003", "3e5", "+300000", None])
def test_a_bad_accepted_price_is_a_400_and_writes_nothing(me, store, campaign, ad, price):
    data = {"filler": "0"}
    if price is not None:
        data["accepted_price"] = price
    before = store.dump()
    response = me.post(BUY, data)
    assert response.status_code == 400
    assert "whole positive number of satoshis" in response.content.decode()
    assert store.dump() == before


def test_buying_from_a_missing_campaign_is_a_404(me, ad):
    response = me.post("/ads/buy-ad-space/sam/7/buy", {"filler": "0", "accepted_price": str(M)})
    assert response.status_code == 404
    assert "That campaign does not exist" in response.content.decode()


def test_not_logged_in_a_buy_redirects_to_login(client, store, campaign):
    before = store.dump()
    response = client.post(BUY, {"filler": "0", "accepted_price": str(M)})
    assert response.status_code == 302
    assert response.url == "/accounts/login/?next=/ads/buy-ad-space/sam/0"
    assert store.dump() == before


def test_the_seller_is_told_they_cannot_buy_their_own_slot_and_pays_nothing(
    client, store, clock, campaign, make_user
):
    sam = make_user("sam", balance=10_000_000)
    gateway.create_filler(store, clock, "sam", "mine", "h", "https://a.test/", 300, 250, "0")
    client.force_login(sam)
    page = client.get(PAGE).content.decode()
    assert "This is your own campaign" in page and 'name="accepted_price"' not in page
    before = store.dump()
    response = client.post(BUY, {"filler": "0", "accepted_price": str(10 * M)}, follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert messages_of(response) == [buy.OwnCampaign.message]
    assert store.dump() == before
    assert balance(store, "sam") == 10_000_000


def test_a_get_of_the_buy_url_is_a_405(me, campaign, ad):
    assert me.get(BUY).status_code == 405
