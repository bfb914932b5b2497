"""Live updates of the campaign page (adspace/live.py): the head an open page polls.

Its ETag changes on a sale, a queued slot starting or ending, a pause or resume and a review
decision, and on nothing else; a poll holding it gets a 304 after one read of the campaign doc.
Driven through the site's WSGI application (the slim serving handler) and the test client.
"""

from __future__ import annotations

import json
import re

import pytest

import docstore
from adspace import buy, fragments, gateway, live, pricing, review, serving
from config import handlers
from docstore import TemporaryFailure
from docstore.faults import Hook, HookedStore
from tests.test_lean_serving import environ_for

pytestmark = pytest.mark.django_db

M = 300_000
HOUR = 3600
URL = "/api/v1/campaigns/sam/0/live"
PAGE = "/ads/buy-ad-space/sam/0"


@pytest.fixture
def market(store, clock, make_user):
    """sam sells campaign 0 (24 h slots); bob and cat each have a fitting ad and money."""
    make_user("sam")
    gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [], title="Sam's blog")
    for name in ("bob", "cat"):
        make_user(name, balance=10**9)
        gateway.create_filler(store, clock, name, "ad", "h", f"https://{name}.test/", 300, 250, "0")


@pytest.fixture
def app():
    return handlers.build_application()


def get(app, url: str = URL, method: str = "GET", **headers) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of one request through the WSGI app."""
    environ = environ_for(method, url, headers)
    started = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: started.append((s, h))))
    status, pairs = started[0]
    return int(status[:3]), {k.lower(): v for k, v in pairs}, body


def head(app) -> tuple[str, dict]:
    status, headers, body = get(app)
    assert status == 200, body
    return headers["etag"], json.loads(body)


def still(app, etag: str) -> bool:
    """Whether a poll holding `etag` is told nothing changed."""
    status, headers, body = get(app, IF_NONE_MATCH=etag)
    assert status in (200, 304) and headers["etag"]
    return status == 304 and body == b""


# --- what changes the ETag, and what does not -----------------------------------------------------


def test_an_unchanged_campaign_answers_304_to_the_etag_it_gave(app, market, clock):
    etag, body = head(app)
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert body["minPrice"] == M and body["last"] is None and body["paused"] is False
    assert body["slotsSold"] == 0
    assert set(body["parts"]) == {"showing", "queue", "nextSlot", "chart"}
    assert "Nothing is showing yet" in body["parts"]["showing"]
    assert still(app, etag)
    assert still(app, "W/" + etag)  # weak comparison, as RFC 9110 has it
    assert still(app, f'"other", {etag}')
    assert not still(app, '"something-else"')
    clock.advance(5 * HOUR)  # the price falls (the page computes it); the head is the same
    assert still(app, etag)


def test_a_sale_changes_the_etag_and_gives_the_new_curve_showing_and_queue(
    app, market, store, clock
):
    before, old = head(app)
    clock.advance(10)
    sale = buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    after, body = head(app)
    assert after != before and not still(app, before) and still(app, after)
    assert body["last"] == {"price": M, "purchasedAt": clock.now(), "endsAt": sale.ends_at}
    assert body["slotsSold"] == 1
    assert "https://bob.test/" in body["parts"]["showing"]
    assert "#0" in body["parts"]["queue"] and "showing now" in body["parts"]["queue"]
    assert body["parts"]["chart"] != old["parts"]["chart"]
    assert body["parts"]["chart"].startswith('<figure class="chart" data-live-part="chart">')
    # The page computes the price from the head exactly as the server prices the next buy.
    clock.advance(HOUR)
    last = body["last"]
    campaign = gateway.get_campaign(store, "sam", 0).value
    assert pricing.current_price(body["minPrice"], last, clock.now()) == pricing.current_price(
        campaign["minPrice"], campaign["last"], clock.now()
    )
    second = buy.buy_next_slot(
        store, clock, "cat", "sam", 0, 0, pricing.current_price(body["minPrice"], last, clock.now())
    )
    assert second.slot == 1
    _, queued = head(app)
    assert "#1" in queued["parts"]["queue"] and "https://bob.test/" in queued["parts"]["showing"]
    assert "The next slot starts right after the last one sold" in queued["parts"]["nextSlot"]


def test_a_queued_slot_starting_and_the_last_slot_ending_change_the_etag(app, market, store, clock):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, 2 * M)
    first_end = gateway.get_slots(store, "sam", 0, 0, 0)[0]["endsAt"]
    clock.set(first_end - 1)
    etag, body = head(app)
    assert "https://bob.test/" in body["parts"]["showing"]
    clock.set(first_end)  # cat's slot starts: no document changed, the boundary passed
    assert not still(app, etag)
    etag, body = head(app)
    assert "https://cat.test/" in body["parts"]["showing"] and "#0" not in body["parts"]["queue"]
    clock.set(first_end + 24 * HOUR)  # the queue has run out
    assert not still(app, etag)
    etag, body = head(app)
    assert "Nothing is showing yet" in body["parts"]["showing"]
    assert "No sold slot is running or waiting" in body["parts"]["queue"]
    assert "starts the moment you buy it" in body["parts"]["nextSlot"]
    clock.advance(HOUR)
    assert still(app, etag)


def test_a_pause_and_a_resume_each_change_the_etag(app, market, store, clock):
    etag, _ = head(app)
    gateway.set_campaign_paused(store, "sam", 0, "sam", True)
    assert not still(app, etag)
    paused, body = head(app)
    assert body["paused"] is True
    gateway.set_campaign_paused(store, "sam", 0, "sam", False)
    resumed, body = head(app)
    assert body["paused"] is False and resumed == etag  # the same head as before the pause
    assert not still(app, paused)


def test_a_rejection_changes_the_etag_and_withdraws_the_ad_from_showing_now(
    app, market, store, clock, settings
):
    settings.REVIEW_HOURS = 24
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, 2 * M)
    etag, _ = head(app)
    review.approve_sale(store, clock, "sam", 0, 1)
    assert not still(app, etag)
    etag, body = head(app)
    assert "approved" in body["parts"]["queue"]
    review.reject_sale(store, clock, "sam", "sam", 0, 0, "not for this site")
    assert not still(app, etag)
    _, body = head(app)
    assert "https://bob.test/" not in body["parts"]["showing"]
    assert "withdrawn after review" in body["parts"]["showing"]
    assert "rejected" in body["parts"]["queue"]
    assert "not for this site" not in json.dumps(body)  # the reason stays the buyer's


def test_the_head_is_the_same_bytes_in_every_process(app, market, store, clock):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    clock.advance(7)
    etag, body = head(app)
    # Another process: nothing cached, and a few seconds later.
    serving.clear_cache()
    fragments.clear()
    clock.advance(3)
    assert head(app) == (etag, body)


def test_a_poll_is_one_read_of_the_campaign_doc(app, market, store, clock):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)

    class Count(Hook):
        calls: list[tuple[str, str]] = []

        def before(self, op: str, key: str) -> None:
            self.calls.append((op, key))

    docstore.set_store(HookedStore(store, Count()))
    try:
        etag, _ = head(app)  # made once (slots, ad, image) and kept
        Count.calls.clear()
        for _ in range(5):
            assert still(app, etag)
    finally:
        docstore.set_store(store)
    assert Count.calls == [("get", gateway.campaign_key("sam", 0))] * 5


# --- the answers --------------------------------------------------------------------------------


def test_the_head_is_public_json_with_every_security_header_and_no_cookie(
    app, market, client, make_user
):
    status, headers, _ = get(app, COOKIE="sessionid=whatever; csrftoken=" + "t" * 32)
    assert status == 200 and app.handler_for({"PATH_INFO": URL}) is app.routes[0][1]
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "public, no-cache"
    assert headers["access-control-allow-origin"] == "*"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "set-cookie" not in headers and "Cookie" not in headers.get("vary", "")
    status, headers, _body = get(app, IF_NONE_MATCH=headers["etag"])
    assert status == 304 and headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "public, no-cache"


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/campaigns/sam/07/live",
        "/api/v1/campaigns/sam/-1/live",
        "/api/v1/campaigns/sam/99999999999/live",
        "/api/v1/campaigns/sa%20m/0/live",
        "/api/v1/campaigns/" + "s" * 33 + "/0/live",
        "/api/v1/campaigns/sam/0x1/live",
        "/api/v1/campaigns/sam/5/live",
        "/api/v1/campaigns/nobody/0/live",
        "/api/v1/campaigns/sam/0/live/extra",
        "/api/v1/campaigns/sam%2F0/0/live",
    ],
)
def test_a_malformed_or_unknown_campaign_is_the_apis_json_404(app, market, url):
    status, headers, body = get(app, url)
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]
    assert headers["cache-control"] == "no-store"


def test_a_huge_if_none_match_is_a_json_400_and_a_long_list_still_works(app, market):
    etag, _ = head(app)
    status, _headers, body = get(app, IF_NONE_MATCH='"x"' * 10_000)
    assert status == 400 and "If-None-Match" in json.loads(body)["error"]
    listed = ", ".join(f'"{i:032x}"' for i in range(12)) + ", " + etag
    assert len(listed) <= live.MAX_IF_NONE_MATCH
    assert still(app, listed)
    status, _, _ = get(app, IF_NONE_MATCH="garbage without quotes")
    assert status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_only_get_is_answered_and_nothing_changes(app, market, store, method):
    before = store.dump()
    status, _headers, body = get(app, method=method)
    assert status == 405 and json.loads(body)["error"] == "Only GET is supported."
    assert store.dump() == before


def test_an_unreachable_store_is_the_json_503(app, market, store):
    class Down(Hook):
        def before(self, op: str, key: str) -> None:
            raise TemporaryFailure("cluster down")

    docstore.set_store(HookedStore(store, Down()))
    try:
        status, headers, body = get(app)
    finally:
        docstore.set_store(store)
    assert status == 503 and headers["cache-control"] == "no-store"
    assert "unavailable" in json.loads(body)["error"]


# --- the page -----------------------------------------------------------------------------------


def test_the_page_holds_the_heads_etag_and_shows_the_same_parts(app, market, store, clock, client):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    html = client.get(PAGE).content.decode()
    etag, body = head(app)
    held = re.search(r'data-live-etag="([^"]*)"', html)[1]
    assert held.replace("&#34;", '"') == etag  # the page's first poll is a 304
    assert f'data-live-url="{URL}"' in html
    for name in ("showing", "queue", "nextSlot"):
        assert body["parts"][name] in html, name
    assert 'data-live-part="chart"' in html and 'data-live-text="slotsSold">1<' in html


def test_the_page_without_javascript_shows_a_pause_and_a_resume_on_reload(
    market, store, clock, client, make_user
):
    client.force_login(make_user("dora", balance=10**9))
    gateway.create_filler(store, clock, "dora", "ad", "h", "https://dora.test/", 300, 250, "0")
    assert '<div data-live-when="selling">' in client.get(PAGE).content.decode()
    gateway.set_campaign_paused(store, "sam", 0, "sam", True)
    html = client.get(PAGE).content.decode()
    assert '<div data-live-when="selling" hidden>' in html
    assert 'data-live-when="paused" hidden' not in html
    gateway.set_campaign_paused(store, "sam", 0, "sam", False)
    html = client.get(PAGE).content.decode()
    assert '<div data-live-when="selling">' in html and 'data-role="buy-form"' in html
