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


def test_admin_keeps_scripts_strict(admin_client):
    policy = admin_client.get("/admin/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "script-src 'self' 'unsafe-inline'" not in policy


@pytest.mark.parametrize("verb", ["put", "delete", "patch"])
def test_verbs_no_page_uses_are_refused_before_any_view(client, db, verb):
    response = getattr(client, verb)("/accounts/register/")
    assert response.status_code == 405
    assert "POST" in response["Allow"]
