"""The per-process caches of the live-ad API and the embed page never serve a stale answer.

Each process keeps the JSON answer, the embed page and image URLs built from a showing slot
(adspace.api, adspace.services.image_urls): a slot, its ad and its image never change, so these
need no invalidation. What must still be decided on every request is checked here with the caches
warm: the seller's key, which slot is showing (a new sale, the early switch, the slot end), the
per-slot allowance, the store and the host the answer is for, and the caches' bounds.
"""

from __future__ import annotations

import gc
import re

import pytest

import docstore
from accounts import apikeys
from accounts.gateway import ensure_account, get_account
from adspace import api, buy, gateway, services, serving
from docstore import NotFound
from tests.conftest import T0, make_test_store
from tests.test_ad_api import SHA, URL, ask, make_world, sell
from tests.test_ad_api import urlpatterns as urlpatterns

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

EMBED = "/embed/sam/0"
WARM = 3  # requests that fill (and then hit) the caches before the change under test


@pytest.fixture
def world(store, clock):
    return make_world(store, clock)


@pytest.fixture
def key(store, world):
    return get_account(store, "sam").value["apiKey"]


def ad_url(client, key, url=URL) -> str | None:
    body = ask(client, key, url).json()
    return None if body["ad"] is None else body["ad"]["url"]


def embed(client, url=EMBED) -> str:
    """The embed page, followed by where its ad link leads (the click redirect's Location)."""
    page = client.get(url).content.decode()
    link = re.search(r'class="ad" href="([^"]+)"', page)
    if link is None:
        return page
    return page + "\n" + client.get(link[1])["Location"]


def warm(client, key):
    for _ in range(WARM):
        assert ask(client, key).status_code == 200
        assert client.get(EMBED).status_code == 200


class CountingStore:
    """The test store, counting reads by key prefix."""

    def __init__(self, inner):
        self.inner, self.prefix, self.reads = inner, inner.prefix, []

    def get(self, key):
        self.reads.append(key.split("::")[0])
        return self.inner.get(key)

    def get_fields(self, key, fields):
        self.reads.append(key.split("::")[0])
        return self.inner.get_fields(key, fields)

    def get_multi(self, keys):
        keys = list(keys)
        self.reads.extend(k.split("::")[0] for k in keys)
        return self.inner.get_multi(keys)

    def get_several(self, reads):
        self.reads.extend(key.split("::")[0] for key, _ in reads)
        return self.inner.get_several(reads)


# --- what is decided on every request -----------------------------------------------------------


def test_a_regenerated_key_is_refused_at_once_when_the_answer_is_cached(
    client, store, clock, world, key
):
    sell(store, clock)
    warm(client, key)
    answer = ask(client, key).content
    new = apikeys.regenerate_api_key(store, "sam")
    assert ask(client, key).status_code == 403
    assert ask(client, key, HTTP_IF_NONE_MATCH="*").status_code == 403
    response = ask(client, new)
    assert response.status_code == 200 and response.content == answer


def test_a_sale_is_seen_at_once_after_a_cached_placeholder(client, store, clock, world, key):
    warm(client, key)
    assert ad_url(client, key) is None and "buy this space" in embed(client)
    sell(store, clock)
    assert ad_url(client, key).startswith("https://bob.test/")
    assert "https://bob.test/" in embed(client)


def test_a_sale_on_a_lapsed_campaign_is_seen_at_once(client, store, clock, world, key):
    first = sell(store, clock)
    warm(client, key)
    clock.set(first.ends_at)
    warm(client, key)
    assert ad_url(client, key) is None and "buy this space" in embed(client)
    sell(store, clock, "cat")
    assert ad_url(client, key).startswith("https://cat.test/")
    assert "https://cat.test/" in embed(client)


def test_the_next_slot_shows_exactly_at_its_early_switch(client, store, clock, world, key):
    first = sell(store, clock)
    second = sell(store, clock, "cat")
    clock.set(second.starts_at - serving.EARLY_SWITCH_SECONDS - 1)
    warm(client, key)
    assert ad_url(client, key).startswith("https://bob.test/")
    assert "https://bob.test/" in embed(client)
    clock.advance(1)
    assert ad_url(client, key).startswith("https://cat.test/")
    assert "https://cat.test/" in embed(client)
    assert first.ends_at == second.starts_at


def test_the_ad_goes_exactly_at_its_slot_end(client, store, clock, world, key):
    sale = sell(store, clock)
    clock.set(sale.ends_at - 1)
    warm(client, key)
    response = ask(client, key)
    assert response.json()["ad"] is not None and response["Cache-Control"].endswith("max-age=1")
    clock.set(sale.ends_at)
    assert ad_url(client, key) is None
    assert "buy this space" in embed(client)


def test_max_age_counts_down_while_the_answer_is_cached(client, store, clock, world, key):
    sale = sell(store, clock)
    warm(client, key)
    first = ask(client, key)
    clock.advance(1000)
    later = ask(client, key)
    assert later.content == first.content and later["ETag"] == first["ETag"]
    assert later["Cache-Control"] == f"private, max-age={sale.ends_at - clock.now()}"
    assert client.get(EMBED)["Cache-Control"] == f"public, max-age={api.EMBED_MAX_AGE}"


def test_the_allowance_counts_cached_answers_and_resets_with_the_slot(
    client, store, clock, world, key, settings
):
    settings.API_REQUESTS_PER_SLOT = WARM + 1
    sell(store, clock)
    second = sell(store, clock, "cat")
    warm(client, key)
    assert ask(client, key).status_code == 200
    assert ask(client, key).status_code == 429
    assert ask(client, key, HTTP_IF_NONE_MATCH="*").status_code == 304  # revalidating is free
    clock.set(second.starts_at - serving.EARLY_SWITCH_SECONDS)
    assert ad_url(client, key).startswith("https://cat.test/")


# --- what a cached answer is for ----------------------------------------------------------------


def test_a_cached_answer_is_the_same_as_a_fresh_one(client, store, clock, world, key):
    sell(store, clock)
    clock.advance(600)
    fresh, page = ask(client, key), embed(client)
    warm(client, key)
    cached = ask(client, key)
    assert (cached.content, cached["ETag"]) == (fresh.content, fresh["ETag"])
    assert embed(client) == page
    assert ask(client, key, HTTP_IF_NONE_MATCH=fresh["ETag"]).status_code == 304
    serving.clear_cache()
    again = ask(client, key)
    assert (again.content, again["ETag"]) == (fresh.content, fresh["ETag"])


def test_answers_and_placeholders_link_to_site_url_whatever_host_or_port_was_asked(
    client, store, clock, world, key
):
    sell(store, clock)
    warm(client, key)
    image = "http://testserver" + f"/img/{SHA}.png"
    assert ask(client, key).json()["ad"]["image"] == image
    assert ask(client, key, HTTP_HOST="localhost:6666").json()["ad"]["image"] == image
    assert ask(client, key, HTTP_HOST="evil.test").status_code == 400  # not in ALLOWED_HOSTS
    clock.set(T0 + 2 * 24 * 3600)  # the placeholder links to the campaign on SITE_URL
    for host in ("localhost:6666", "testserver:1", "localhost"):
        page = client.get(EMBED, HTTP_HOST=host).content.decode("utf-8")
        assert 'href="http://testserver/ads/buy-ad-space/sam/0"' in page
        assert ":6666" not in page and "localhost" not in page


def test_another_store_never_gets_this_stores_answer(client, store, clock, world, key, tmp_path):
    sell(store, clock)
    warm(client, key)
    # The same campaign, the same slot document, another ad: only the store tells them apart.
    other = make_test_store(tmp_path / "other")
    try:
        ensure_account(other, clock, "sam")
        gateway.create_campaign(other, clock, "sam", 100_000, 24, 300, 250, [])
        gateway.store_image(other, "cd" * 32, "image/png", "png", b"another", 300, 250)
        ensure_account(other, clock, "bob")
        gateway.create_filler(
            other, clock, "bob", "main", "other", "https://other.test/", 300, 250, "cd" * 32
        )
        other.insert(gateway.slot_key("sam", 0, 0), store.get(gateway.slot_key("sam", 0, 0)).value)
        last = gateway.get_campaign(store, "sam", 0).value["last"]
        gateway.advance_campaign_last(other, "sam", 0, last)
        assert gateway.get_campaign(other, "sam", 0).value == (
            gateway.get_campaign(store, "sam", 0).value
        )
        other_key = get_account(other, "sam").value["apiKey"]
        docstore.set_store(other)
        assert ad_url(client, other_key) == "https://other.test/"
        assert "https://other.test/" in embed(client)
        assert f"/img/{'cd' * 32}.png" in embed(client)
        assert ask(client, key).status_code == 403  # and the first store's key means nothing
    finally:
        docstore.set_store(store)
        other.close()
    assert ad_url(client, key).startswith("https://bob.test/")


def test_a_store_is_never_named_like_an_earlier_one(tmp_path):
    first = make_test_store(tmp_path / "a")
    name = serving.store_ident(first)
    assert serving.store_ident(first) == name
    first.close()
    del first
    gc.collect()
    names = set()
    for i in range(20):  # id() of a new object often repeats a freed one's; this must not
        s = make_test_store(tmp_path / f"s{i}")
        names.add(serving.store_ident(s))
        s.close()
        del s
        gc.collect()
    assert name not in names and len(names) == 20


# --- cost and bounds ----------------------------------------------------------------------------


def test_a_cached_answer_reads_only_the_account_and_the_campaign(client, store, clock, world, key):
    sell(store, clock)
    counting = CountingStore(store)
    docstore.set_store(counting)
    try:
        warm(client, key)
        counting.reads.clear()
        assert ad_url(client, key).startswith("https://bob.test/")
        assert sorted(counting.reads) == ["account", "campaign"]
        counting.reads.clear()
        assert 'class="ad"' in client.get(EMBED).content.decode()
        assert counting.reads == ["campaign"]
    finally:
        docstore.set_store(store)


def test_the_caches_are_bounded(client, store, clock, world, key, monkeypatch):
    caches = (
        api._answers,
        api._embed_pages,
        api._placeholders,
        api._campaign_paths,
        services._image_urls,
    )
    for bounded in caches:
        monkeypatch.setattr(bounded, "size", 2)
    shas = []
    for n in range(1, 6):
        assert gateway.create_campaign(store, clock, "sam", 100_000, 24, 300, 250, []) == n
        sha = f"{n:02d}" * 32
        shas.append(sha)
        gateway.store_image(store, sha, "image/png", "png", b"x", 300, 250)
        gateway.create_filler(
            store, clock, "bob", f"ad{n}", "", f"https://{n}.test/", 300, 250, sha
        )
        buy.buy_next_slot(store, clock, "bob", "sam", n, n, 10**12)
    for _ in range(2):
        for n in range(1, 6):
            assert ad_url(client, key, f"/api/v1/ads/sam/{n}/current") == f"https://{n}.test/"
            assert f"https://{n}.test/" in embed(client, f"/embed/sam/{n}")
            assert ask(client, key, f"/api/v1/ads/sam/{n}/current", HTTP_HOST="localhost")
    clock.set(T0 + 2 * 24 * 3600)
    for n in range(1, 6):
        assert ad_url(client, key, f"/api/v1/ads/sam/{n}/current") is None
        assert "buy this space" in embed(client, f"/embed/sam/{n}")
    assert set(services.image_urls(store, shas)) == set(shas)
    for bounded in caches:
        assert len(bounded) == 2


def test_a_bounded_cache_drops_its_oldest_entries():
    cache = serving.BoundedCache(3)
    try:
        for i in range(10):
            cache.put(i, str(i))
        assert len(cache) == 3
        assert [cache.get(i) for i in range(10)] == [None] * 7 + ["7", "8", "9"]
        cache.put(7, "seven")  # a rewrite counts as the newest
        cache.put(10, "10")
        assert cache.get(8) is None and cache.get(7) == "seven"
        serving.clear_cache()
        assert len(cache) == 0
    finally:
        serving._bounded.remove(cache)


def test_an_image_stored_later_is_found(store):
    sha = "ef" * 32
    assert services.image_urls(store, [sha]) == {}
    gateway.store_image(store, sha, "image/png", "png", b"late", 300, 250)
    assert services.image_urls(store, [sha]) == {sha: f"/img/{sha}.png"}


def test_image_urls_come_from_the_process_once_known(store, monkeypatch):
    sha = "ef" * 32
    gateway.store_image(store, sha, "image/png", "png", b"x", 300, 250)
    assert services.image_urls(store, [sha, sha]) == {sha: f"/img/{sha}.png"}
    store.remove(gateway.image_key(sha))  # never happens (images are immutable): proves no read

    class NoSharedCache:
        def get_many(self, keys):
            pytest.fail("the shared cache was read")

    monkeypatch.setattr(services, "cache", NoSharedCache())
    assert services.image_urls(store, [sha]) == {sha: f"/img/{sha}.png"}
    with pytest.raises(NotFound):
        store.get(gateway.image_key(sha))


def test_the_allowance_setting_is_read_per_request(client, store, clock, world, key, settings):
    # The bench turns the allowance off; turning it back on needs no restart or cache flush.
    settings.API_REQUESTS_PER_SLOT = 0
    sell(store, clock)
    warm(client, key)
    settings.API_REQUESTS_PER_SLOT = 1
    assert ask(client, key).status_code == 200
    assert ask(client, key).status_code == 429
