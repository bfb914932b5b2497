"""The click redirect /c/<token>: counts a click, then goes only to the URL stored on the slot's ad."""

from __future__ import annotations

import pytest

from adspace import delivery, gateway, review, stats
from tests.delivery_helpers import BROWSER_AGENT, EMBED, counted, links, view
from tests.test_ad_api import DAY, make_world, sell

pytestmark = pytest.mark.django_db


def click_path(client) -> str:
    return links(client.get(EMBED).content.decode())[0]


def test_a_click_is_counted_and_goes_to_the_ads_stored_url(client, store, sold):
    response = view(client, click_path(client))
    assert response.status_code == 302
    assert response["Location"] == "https://bob.test/landing?a=1&b=2"
    assert response["Cache-Control"] == "no-store"
    assert counted(store, stats.CLICKS) == 0  # buffered, not yet written
    stats.flush()
    assert counted(store, stats.CLICKS) == 1


def test_the_click_never_takes_its_destination_from_the_request(client, store, sold):
    path = click_path(client)
    response = view(client, path + "?url=https://evil.test/&next=https://evil.test/")
    assert response["Location"] == "https://bob.test/landing?a=1&b=2"
    response = view(client, path, HTTP_REFERER="https://evil.test/")
    assert response["Location"] == "https://bob.test/landing?a=1&b=2"


def test_the_api_answer_links_through_the_same_counted_click(client, store, sold):
    from tests.test_ad_api import ask

    key = store.get("account::sam").value["apiKey"]
    ad = ask(client, key).json()["ad"]
    assert ad["url"] == "https://bob.test/landing?a=1&b=2"  # the direct link, not counted
    assert ad["counted"] == {"clicks": "clickUrl", "impressions": "impressionUrl"}
    assert ad["clickUrl"] == "http://testserver" + click_path(client)
    assert view(client, ad["clickUrl"].removeprefix("http://testserver"))["Location"] == ad["url"]
    stats.flush()
    assert counted(store, stats.CLICKS) == 1


def tampered(path: str) -> list[str]:
    token = path.removeprefix("/c/")
    payload, _, mac = token.rpartition(".")
    owner, n, k, start, expires = payload.split("-")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
    return [
        f"{payload}.{flipped}",  # forged signature
        f"{owner}-{n}-1-{start}-{expires}.{mac}",  # pointed at another slot
        f"{owner}-{n}-{k}-{start}-{int(expires) + 10 * DAY}.{mac}",  # expiry stretched
        f"{owner}-{n}-{k}-{start}-{expires}",  # no signature
        token[:-5],  # truncated
        token[: len(token) // 2],
        token + "A",
        "x" * 5000,  # oversized
        "",
        "../../admin/",
        "sam-0-0-%00.aaaaaaaaaaaaaaaaaaaaaa",
        "<script>alert(1)</script>",
    ]


def test_forged_truncated_and_oversized_tokens_are_404s_and_count_nothing(client, store, sold):
    for token in tampered(click_path(client)):
        response = view(client, "/c/" + token)
        assert response.status_code == 404, token
        assert "Location" not in response
        assert response["Cache-Control"] == "no-store"
        assert b"<script>alert" not in response.content
    stats.flush()
    assert counted(store, stats.CLICKS) == 0 and counted(store, stats.CLICKS, k=1) == 0


def test_a_bad_link_names_the_campaign_it_was_for(client, store, sold):
    token = click_path(client).removeprefix("/c/")
    response = view(client, "/c/" + token[:-3] + "zzz")
    assert response.status_code == 404
    assert b'href="/ads/buy-ad-space/sam/0"' in response.content
    unknown = view(client, "/c/garbage")
    assert unknown.status_code == 404 and b'href="/ads/buy-ad-space/"' in unknown.content


def test_a_token_replayed_after_its_slot_and_grace_is_a_404(client, store, clock, sold):
    path = click_path(client)
    clock.set(sold.ends_at + delivery.CLICK_GRACE_SECONDS)
    assert view(client, path).status_code == 302  # a page left open: still counted
    clock.advance(1)
    assert view(client, path).status_code == 404
    stats.flush()
    assert counted(store, stats.CLICKS, day="2023-11-15") == 1


def test_a_token_accepted_before_the_secret_changed_is_refused_after(client, store, sold, settings):
    path = click_path(client)
    assert view(client, path).status_code == 302
    settings.SECRET_KEY = "a rotated secret " * 4
    assert view(client, path).status_code == 404
    stats.flush()
    assert counted(store, stats.CLICKS) == 1


def test_a_rejected_ads_click_is_a_404_with_the_campaign(client, store, clock, settings):
    settings.REVIEW_HOURS = 24
    make_world(store, clock)
    sale = sell(store, clock)
    path = click_path(client)
    review.reject_sale(store, clock, "sam", "sam", 0, sale.slot, "off-topic")
    response = view(client, path)
    assert response.status_code == 404
    assert b"/ads/buy-ad-space/sam/0" in response.content
    stats.flush()
    assert counted(store, stats.CLICKS) == 0


def test_a_click_token_is_not_a_beacon_nor_the_reverse(client, store, sold):
    click, beacon = links(client.get(EMBED).content.decode())
    assert view(client, "/i/" + click.removeprefix("/c/")).status_code == 404
    assert view(client, "/c/" + beacon.removeprefix("/i/")).status_code == 404
    stats.flush()
    assert counted(store, stats.CLICKS) == 0 and counted(store, stats.IMPRESSIONS) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {
            "HTTP_USER_AGENT": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        },
        {"HTTP_USER_AGENT": "curl/8.5.0"},
        {"HTTP_USER_AGENT": ""},
        {"HTTP_SEC_PURPOSE": "prefetch"},
        {"HTTP_SEC_PURPOSE": "prefetch;prerender"},
        {"HTTP_PURPOSE": "prefetch"},
    ],
)
def test_bots_and_prefetches_are_redirected_but_not_counted(client, store, sold, headers):
    response = view(client, click_path(client), **headers)
    assert response.status_code == 302
    stats.flush()
    assert counted(store, stats.CLICKS) == 0


def test_head_is_not_a_click(client, store, sold):
    response = client.head(click_path(client), HTTP_USER_AGENT=BROWSER_AGENT)
    assert response.status_code == 302
    stats.flush()
    assert counted(store, stats.CLICKS) == 0


def test_clicks_past_a_clients_allowance_are_429_and_not_counted(client, store, sold, settings):
    settings.STATS_CLICKS_PER_CLIENT = 3
    path = click_path(client)
    codes = [view(client, path).status_code for _ in range(5)]
    assert codes == [302, 302, 302, 429, 429]
    assert view(client, path, ip="203.0.113.9").status_code == 302  # another client
    stats.flush()
    assert counted(store, stats.CLICKS) == 4


def test_a_click_needs_no_session_auth_or_csrf_middleware(client, store, sold, settings):
    path = click_path(client)
    settings.MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    response = view(client, path)
    assert response.status_code == 302
    assert view(client, "/c/forged").status_code == 404
    stats.flush()
    assert counted(store, stats.CLICKS) == 1
    assert "sessionid" not in response.cookies


def test_a_post_is_405_and_not_counted(client, store, sold):
    response = client.post(click_path(client), HTTP_USER_AGENT=BROWSER_AGENT)
    assert response.status_code == 405
    stats.flush()
    assert counted(store, stats.CLICKS) == 0


def test_a_token_naming_a_slot_of_another_sale_is_a_404(client, store, clock, sold):
    # Signed by us but for a slot whose start differs from the stored one (another store's, or
    # a sale that was replaced): never counted against this slot.
    slot = dict(store.get(gateway.slot_key("sam", 0, 0)).value)
    slot["startsAt"] += 1
    token = delivery.token(delivery.CLICK, "sam", 0, 0, slot)
    assert view(client, "/c/" + token).status_code == 404
    stats.flush()
    assert counted(store, stats.CLICKS) == 0
