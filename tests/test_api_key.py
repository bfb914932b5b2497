"""The API key tab: showing the key with ready examples, and replacing it safely."""

from __future__ import annotations

import html

import pytest
from django.test import Client
from django.urls import include, path

from accounts import apikey_views, apikeys, locks
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from adspace import buy, gateway
from docstore import Ambiguous
from tests.test_ad_api import SHA

urlpatterns = [
    path("", include("config.urls")),
    path("", include("adspace.serving_urls")),
    path("account/api-key/", apikey_views.api_key, name="api_key"),
]
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/account/api-key/"


def key_of(store, username="seller") -> str:
    return get_account(store, username).value["apiKey"]


def live_campaign(store, clock, owner="seller") -> int:
    """A campaign of `owner` with a slot showing now, bought by `bob`."""
    n = gateway.create_campaign(store, clock, owner, 100_000, 24, 468, 60, [])
    gateway.store_image(store, SHA, "image/png", "png", b"x", 468, 60)
    ensure_account(store, clock, "bob")
    adjust_balance(store, clock, "bob", 10**9, "funding")
    i = gateway.create_filler(
        store, clock, "bob", "wide", "hover", "https://bob.test/", 468, 60, SHA
    )
    buy.buy_next_slot(store, clock, "bob", owner, n, i, 10**12)
    return n


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_it_shows_the_key_and_is_never_cached(client, store, seller):
    client.force_login(seller)
    response = client.get(URL)
    assert response.status_code == 200
    assert key_of(store) in response.content.decode()
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]


def test_examples_use_the_sellers_real_campaign(client, store, clock, seller):
    gateway.create_campaign(store, clock, "seller", 100_000, 24, 728, 90, [])
    gateway.create_campaign(store, clock, "seller", 100_000, 24, 160, 600, [])
    client.force_login(seller)
    raw = client.get(URL).content.decode()
    assert "<?php" not in raw and "<script async" not in raw  # shown as text, not run
    page = html.unescape(raw)
    key = key_of(store)
    api_url = "http://testserver/api/v1/ads/seller/0/current"
    assert f"curl -H 'Authorization: Bearer {key}' '{api_url}'" in page
    assert f'"{api_url}",\n    headers={{"Authorization": "Bearer {key}"}}' in page  # Python
    assert f"curl_init('{api_url}')" in page and f"Bearer {key}" in page  # PHP
    assert (
        '<script async src="http://testserver/embed.js" data-campaign="seller/0" '
        'data-width="728" data-height="90"></script>'
    ) in page
    assert '<iframe src="http://testserver/embed/seller/0" width="728" height="90"' in page
    assert 'data-campaign="seller/1" data-width="160" data-height="600"' in page  # the other


def test_without_campaigns_it_says_how_to_get_examples(client, seller):
    client.force_login(seller)
    page = client.get(URL).content.decode()
    assert "no campaigns yet" in page
    assert "/api/v1/ads/seller/" in page
    assert "curl -H" not in page


def test_regenerating_needs_the_csrf_token(store, seller):
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(seller)
    before = key_of(store)
    assert csrf_client.post(URL).status_code == 403
    assert key_of(store) == before


def test_regenerate_flow_old_key_403_new_key_200(client, store, clock, seller):
    n = live_campaign(store, clock)
    api = f"/api/v1/ads/seller/{n}/current"
    old = key_of(store)
    assert client.get(api, HTTP_AUTHORIZATION=f"Bearer {old}").status_code == 200
    client.force_login(seller)
    response = client.post(URL)
    assert response.status_code == 302 and response.url == URL
    new = key_of(store)
    assert new != old
    assert client.get(api, HTTP_AUTHORIZATION=f"Bearer {old}").status_code == 403
    assert client.get(api, HTTP_AUTHORIZATION=f"Bearer {new}").status_code == 200
    page = client.get(URL).content.decode()
    assert new in page and old not in page
    assert "old key no longer works" in page


def test_regenerating_keeps_the_lock_balance_and_ledger(store, clock, make_user):
    make_user("seller", balance=500_000)
    lock = locks.take_lock(store, clock, "seller", "adjust", "ref-1", amount=1)
    before = get_account(store, "seller").value
    new = apikeys.regenerate_api_key(store, "seller")
    after = get_account(store, "seller").value
    assert after == {**before, "apiKey": new}
    assert after["lock"]["token"] == lock["token"]
    # The lock's own protocol still finishes on the changed document.
    assert locks.release(store, "seller", lock["token"])


class RacingStore:
    """The test store, with a rival write (or an ambiguous answer) on the first replace."""

    def __init__(self, inner, mode):
        self.inner, self.mode, self.replaces = inner, mode, 0
        self.prefix = inner.prefix

    def get(self, key):
        return self.inner.get(key)

    def get_fields(self, key, fields):
        return self.inner.get_fields(key, fields)

    def replace(self, key, value, cas):
        self.replaces += 1
        if self.replaces == 1 and self.mode == "rival":
            doc = self.inner.get(key)
            self.inner.replace(key, {**doc.value, "balance": doc.value["balance"] + 7}, doc.cas)
        result = self.inner.replace(key, value, cas)
        if self.replaces == 1 and self.mode == "ambiguous":
            raise Ambiguous("timed out after the write")
        return result


def test_a_rival_write_is_kept_and_the_key_still_replaced(store, seller):
    racing = RacingStore(store, "rival")
    new = apikeys.regenerate_api_key(racing, "seller")
    after = get_account(store, "seller").value
    assert (after["apiKey"], after["balance"], racing.replaces) == (new, 7, 2)


def test_an_ambiguous_write_that_landed_is_not_repeated(store, seller):
    racing = RacingStore(store, "ambiguous")
    new = apikeys.regenerate_api_key(racing, "seller")
    assert key_of(store) == new and racing.replaces == 1


def test_a_missing_account_is_reported(store):
    with pytest.raises(locks.AccountMissing):
        apikeys.regenerate_api_key(store, "ghost")


def test_keys_are_compared_safely():
    assert apikeys.keys_match("abc", "abc")
    assert not apikeys.keys_match("abc", "abd")
    assert not apikeys.keys_match("", "")
    assert not apikeys.keys_match(None, "abc")
    assert not apikeys.keys_match("abc", None)
    assert not apikeys.keys_match("ключ", "abc")
    assert not apikeys.keys_match("a" * 10_000, "a" * 10_000)
