"""The impression beacon /i/<token>: the embed page loads it when the ad renders; API answers are
counted apart as API fetches; bots, prefetches and floods are not counted."""

from __future__ import annotations

import base64

import pytest

from adspace import delivery, gateway, review, stats
from tests.delivery_helpers import BROWSER_AGENT, EMBED, counted, links, view
from tests.test_ad_api import DAY, ask, make_world, sell
from tests.test_clicks import tampered

pytestmark = pytest.mark.django_db


def beacon_path(client) -> str:
    return links(client.get(EMBED).content.decode())[1]


def test_each_rendering_of_the_embed_counts_one_impression(client, store, sold):
    for i in range(3):
        page = client.get(EMBED)  # a shared cache may serve this page; the beacon still runs
        assert page["Cache-Control"].startswith("public, max-age=")
        response = view(client, links(page.content.decode())[1], ip=f"198.51.100.{i}")
        assert response.status_code == 200
        assert response["Content-Type"] == "image/gif" and len(response.content) < 100
        assert response["Cache-Control"] == "no-store"
    assert counted(store, stats.IMPRESSIONS) == 0  # buffered until the flush
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 3


def test_the_embed_page_itself_counts_nothing(client, store, sold):
    for _ in range(5):
        client.get(EMBED, HTTP_USER_AGENT=BROWSER_AGENT)
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0


def test_api_answers_are_api_fetches_not_impressions(client, store, sold):
    key = store.get("account::sam").value["apiKey"]
    first = ask(client, key)
    assert first.status_code == 200
    ask(client, key)
    # A revalidation the client already holds is not another fetch.
    assert ask(client, key, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    stats.flush()
    assert counted(store, stats.API_FETCHES) == 2
    assert counted(store, stats.IMPRESSIONS) == 0
    # A site rendering the ad from the API counts its impressions through impressionUrl.
    beacon = first.json()["ad"]["impressionUrl"].removeprefix("http://testserver")
    assert beacon == beacon_path(client)
    assert view(client, beacon).status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 1


def test_forged_truncated_and_oversized_beacons_are_404s_and_count_nothing(client, store, sold):
    path = beacon_path(client)
    for token in tampered("/c/" + path.removeprefix("/i/")):
        response = view(client, "/i/" + token)
        assert response.status_code == 404, token
        assert response["Cache-Control"] == "no-store"
        assert b"<" not in response.content  # plain text, nothing reflected
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0


def test_a_beacon_for_an_unknown_slot_is_a_404(client, store, sold):
    slot = store.get(gateway.slot_key("sam", 0, 0)).value
    for owner, n, k in [("sam", 0, 5), ("sam", 9, 0), ("nobody", 0, 0)]:
        token = delivery.token(delivery.IMPRESSION, owner, n, k, slot)
        assert view(client, "/i/" + token).status_code == 404
    stats.flush()
    assert counted(store, stats.IMPRESSIONS, k=5) == 0


def test_a_beacon_for_a_future_slot_is_a_404_until_it_starts(client, store, clock, sold):
    second = sell(store, clock, "cat")
    slot = store.get(gateway.slot_key("sam", 0, second.slot)).value
    path = "/i/" + delivery.token(delivery.IMPRESSION, "sam", 0, second.slot, slot)
    assert view(client, path).status_code == 404
    clock.set(second.starts_at - 30)  # the early switch: now it may show
    assert view(client, path).status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS, k=second.slot, day="2023-11-15") == 1


def test_a_beacon_after_its_slot_and_grace_is_a_404(client, store, clock, sold):
    path = beacon_path(client)
    clock.set(sold.ends_at + delivery.IMPRESSION_GRACE_SECONDS + 1)
    assert view(client, path).status_code == 404
    stats.flush()
    assert counted(store, stats.IMPRESSIONS, day="2023-11-15") == 0


def test_a_rejected_ads_beacon_is_not_counted(client, store, clock, settings):
    settings.REVIEW_HOURS = 24
    make_world(store, clock)
    sale = sell(store, clock)
    path = beacon_path(client)
    review.reject_sale(store, clock, "sam", "sam", 0, sale.slot, "off-topic")
    assert view(client, path).status_code == 404
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_USER_AGENT": "Mozilla/5.0 (compatible; bingbot/2.0)"},
        {"HTTP_USER_AGENT": "Mozilla/5.0 (X11) HeadlessChrome/120.0 Safari/537.36"},
        {"HTTP_USER_AGENT": "python-requests/2.31"},
        {"HTTP_USER_AGENT": "Mozilla/5.0 (compatible; GoogleBOT/2.1)"},
        # Outside ASCII the case-insensitive match still holds (long s, U+017F, folds to "s").
        {"HTTP_USER_AGENT": "Mozilla/5.0 (compatible; \u017fpider/1.0; ä)"},
        {"HTTP_USER_AGENT": ""},
        {"HTTP_SEC_PURPOSE": "prefetch"},
        {"HTTP_PURPOSE": "prefetch"},
        {"HTTP_X_MOZ": "prefetch"},
        {"HTTP_X_PURPOSE": "Preview"},
    ],
)
def test_bots_and_prefetches_get_the_pixel_but_are_not_counted(client, store, sold, headers):
    response = view(client, beacon_path(client), **headers)
    assert response.status_code == 200 and response["Content-Type"] == "image/gif"
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0


def test_a_flood_from_one_client_is_429_past_its_allowance(client, store, sold, settings):
    settings.STATS_IMPRESSIONS_PER_CLIENT = 10
    path = beacon_path(client)
    codes = [view(client, path).status_code for _ in range(50)]
    assert codes == [200] * 10 + [429] * 40
    assert view(client, path, ip="203.0.113.1").status_code == 200
    # An IPv6 client is one /64: changing the low bits is the same client.
    six = [view(client, path, ip=f"2001:db8::{i:x}").status_code for i in range(12)]
    assert six == [200] * 10 + [429] * 2
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 21


def test_the_allowance_starts_again_the_next_hour(client, store, clock, sold, settings):
    settings.STATS_IMPRESSIONS_PER_CLIENT = 2
    path = beacon_path(client)
    assert [view(client, path).status_code for _ in range(3)] == [200, 200, 429]
    clock.advance(3600)
    assert view(client, path).status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 3


def test_a_beacon_needs_no_session_auth_or_csrf_middleware(client, store, sold, settings):
    path = beacon_path(client)
    settings.MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    assert view(client, path).status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 1


def test_head_and_post_count_nothing(client, store, sold):
    path = beacon_path(client)
    assert client.head(path, HTTP_USER_AGENT=BROWSER_AGENT).status_code == 200
    assert client.post(path, HTTP_USER_AGENT=BROWSER_AGENT).status_code == 405
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0


def test_counts_fall_on_the_utc_day_of_the_view(client, store, clock, sold):
    path = beacon_path(client)
    clock.set(sold.starts_at + DAY - 700)  # 2023-11-15 22:01 UTC, still slot 0
    assert view(client, path).status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS, day="2023-11-15") == 1
    assert counted(store, stats.IMPRESSIONS, day="2023-11-14") == 0


def test_a_browser_with_a_non_ascii_user_agent_is_counted(client, store, sold):
    response = view(client, beacon_path(client), HTTP_USER_AGENT="Mozilla/5.0 (X11; ü) Firefox/1")
    assert response.status_code == 200
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 1


def test_the_token_mac_is_djangos_salted_hmac_under_the_current_secret(settings):
    from django.utils.crypto import salted_hmac

    for secret in ("one secret", "another secret"):
        settings.SECRET_KEY = secret
        for kind in (delivery.CLICK, delivery.IMPRESSION):
            expected = salted_hmac(f"adspace.delivery.{kind}", "sam-0-1-2-3", algorithm="sha256")
            assert delivery._mac(kind, "sam-0-1-2-3") == (
                base64.urlsafe_b64encode(expected.digest()[:16]).decode().rstrip("=")
            )
