from __future__ import annotations

import pytest

from adspace import gateway


@pytest.fixture
def campaign(store, clock, seller):
    return gateway.create_campaign(store, clock, "seller", 300_000, 24, 300, 250, [])


@pytest.mark.parametrize("url", ["/", "/accounts/login/", "/ads/buy-ad-space/", "/healthz"])
def test_site_pages_carry_a_strict_policy_without_unsafe_inline(client, db, url):
    policy = client.get(url)["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy


def test_only_the_embed_may_be_framed_by_other_sites(client, campaign):
    embed = client.get(f"/embed/seller/{campaign}")
    assert "frame-ancestors *" in embed["Content-Security-Policy"]
    assert "unsafe-inline" not in embed["Content-Security-Policy"]
    assert "X-Frame-Options" not in embed
    page = client.get(f"/ads/buy-ad-space/seller/{campaign}")
    assert "frame-ancestors 'none'" in page["Content-Security-Policy"]
    assert page["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/no/such/page/",
        "/healthz",
        "/embed.js",
        "/api/v1/ads/seller/0/current",
        "/embed/seller/0.json",
        "/api/v1/campaigns/seller/0/live",
    ],
)
def test_every_answer_but_the_embed_page_refuses_to_be_framed(client, campaign, url):
    # Set by SiteSecurityMiddleware (not Django's XFrameOptionsMiddleware, whose deploy check
    # is silenced for it), on pages, errors, the API and the serving paths alike.
    assert client.get(url)["X-Frame-Options"] == "DENY"


def test_a_view_whose_store_is_down_still_answers_unframeable_503(client, campaign, monkeypatch):
    from adspace import views
    from docstore import TemporaryFailure

    def down(*args, **kwargs):
        raise TemporaryFailure("cluster unreachable")

    monkeypatch.setattr(views, "get_store", down)
    response = client.get(f"/ads/buy-ad-space/seller/{campaign}")
    assert response.status_code == 503 and response["X-Frame-Options"] == "DENY"
    assert "cannot be reached" in response.content.decode()


def test_admin_keeps_scripts_strict(admin_client):
    policy = admin_client.get("/admin/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "script-src 'self' 'unsafe-inline'" not in policy


@pytest.mark.parametrize("verb", ["put", "delete", "patch"])
def test_verbs_no_page_uses_are_refused_before_any_view(client, db, verb):
    response = getattr(client, verb)("/accounts/register/")
    assert response.status_code == 405
    assert "POST" in response["Allow"]


@pytest.mark.parametrize(
    "url",
    [
        "/account/",
        "/account/ads/",
        "/ads/sell-ad-space/",
        "/account/api-key/",
        "/ads/buy-ad-space/",
    ],
)
def test_signed_in_pages_are_private_and_never_stored(client, seller, url):
    client.force_login(seller)
    response = client.get(url)
    assert response.status_code == 200
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"private", "no-store"} <= directives


def test_shared_answers_keep_their_own_caching_when_signed_in(client, campaign, seller):
    client.force_login(seller)
    embed = client.get("/embed/seller/0")
    assert embed["Cache-Control"].startswith("public, max-age=")


def test_a_body_declared_too_large_is_refused_before_it_is_read(client, seller, settings):
    client.force_login(seller)
    body = "x=" + "a" * (settings.MAX_REQUEST_BODY_BYTES + 1)
    response = client.post(
        "/ads/sell-ad-space/", body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413
    assert "too large" in response.content.decode()
    bad = client.generic("POST", "/ads/sell-ad-space/", b"", CONTENT_LENGTH="12abc")
    assert bad.status_code == 400
