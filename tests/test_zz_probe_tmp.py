import pytest
from tests.test_hostile_input import world  # noqa
from tests.hostile_cases import request

URLS = [("/", None), ("/healthz", None), ("/accounts/register/", None), ("/accounts/login/", None), ("/accounts/logout/", "buyer"), ("/account/", "buyer"), ("/account/api-key/", "buyer"),
 ("/ads/sell-ad-space/", "seller"), ("/ads/buy-ad-space/", None), ("/ads/buy-ad-space/seller/", None), ("/ads/buy-ad-space/seller/0", None), ("/ads/buy-ad-space/seller/0/buy", "buyer"),
 ("/account/ads/", "buyer"), ("/account/ads/new/", "buyer"), ("/account/funds/", "buyer"), ("/account/funds/address/", "buyer"), ("/account/funds/address/new/", "buyer"), ("/account/funds/check/", "buyer"),
 ("/account/withdraw/", "buyer"), ("/account/withdraw/0/cancel/", "outsider"), ("/embed.js", None), ("/embed/seller/0", None), ("/embed/seller/0.json", None),
 ("/admin/accounts/adjust/buyer/", "staff"), ("/admin/accounts/inspect/", "staff"), ("/admin/accounts/adjust/", "staff"), ("/admin/accounts/inspect/buyer/finish-lock/", "staff"), ("/admin/dashboard/", "staff"), ("/admin/dashboard/run-audit/", "staff"), ("/admin/accounts/list/", "staff")]

@pytest.mark.django_db
@pytest.mark.parametrize("url,actor", URLS)
@pytest.mark.parametrize("verb", ["PUT", "DELETE", "PATCH"])
def test_probe(world, url, actor, verb):
    before = world.store.dump()
    ex = request(verb, url, as_=actor, follow=False)(world)[0]
    changed = before != world.store.dump()
    print("\nPROBE", verb, url, ex.response.status_code, "CHANGED" if changed else "")
