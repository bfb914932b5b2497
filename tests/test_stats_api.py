"""GET /api/v1/stats/<user>/<n>: a campaign's delivery statistics as JSON, under the seller's key."""

from __future__ import annotations

import pytest

from adspace import stats_report
from tests.test_stats_pages import delivered  # noqa: F401 - the delivered fixture

pytestmark = pytest.mark.django_db

URL = "/api/v1/stats/sam/0"
RANGE = {"from": "2023-11-14", "to": "2023-11-15"}


def api_key(store, user="sam") -> str:
    return store.get(f"account::{user}").value["apiKey"]


def test_the_seller_gets_the_same_numbers_as_the_page(client, store, delivered):  # noqa: F811
    response = client.get(URL, RANGE, HTTP_AUTHORIZATION=f"Bearer {api_key(store)}")
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    body = response.json()
    assert body["total"] == {"impressions": 12, "clicks": 3, "apiFetches": 0, "ctrPercent": "25.00"}
    assert [(d["day"], d["impressions"], d["clicks"]) for d in body["days"]] == [
        ("2023-11-14", 5, 2),
        ("2023-11-15", 7, 1),
    ]
    slots = {s["index"]: s for s in body["slots"]}
    assert slots[0]["total"]["impressions"] == 8 and slots[1]["total"]["impressions"] == 4
    assert slots[1]["total"]["ctrPercent"] == "0.00"
    campaign = store.get("campaign::sam::0").value
    first, last = stats_report.parse_range(RANGE["from"], RANGE["to"], None)
    report = stats_report.campaign_report(store, "sam", 0, campaign, first, last)
    assert body["total"] == report.total.as_dict()


def test_api_fetches_are_counted_apart(client, store, clock, delivered):  # noqa: F811
    from adspace import stats
    from tests.test_ad_api import ask

    key = api_key(store)
    assert ask(client, key).status_code == 200
    stats.flush()
    body = client.get(URL, RANGE, HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert body["total"]["apiFetches"] == 1 and body["total"]["impressions"] == 12


def test_no_key_wrong_key_or_another_sellers_key_learns_nothing(client, store, delivered):  # noqa: F811
    assert client.get(URL).status_code == 401
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer " + "x" * 32).status_code == 403
    bob = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {api_key(store, 'bob')}")
    assert bob.status_code == 403 and b"impressions" not in bob.content
    nobody = client.get("/api/v1/stats/nobody/0", HTTP_AUTHORIZATION=f"Bearer {api_key(store)}")
    assert nobody.status_code == 403


@pytest.mark.parametrize(
    "query",
    [{"from": "2000-01-01", "to": "2023-11-15"}, {"from": "2023-11-16", "to": "2023-11-15"},
     {"from": "15/11/2023"}, {"to": "2023-02-30"}],
)  # fmt: skip
def test_a_huge_or_bad_range_is_a_json_400(client, store, delivered, query):  # noqa: F811
    response = client.get(URL, query, HTTP_AUTHORIZATION=f"Bearer {api_key(store)}")
    assert response.status_code == 400
    assert "error" in response.json()


def test_a_bad_campaign_is_a_json_404(client, store, delivered):  # noqa: F811
    key = api_key(store)
    for url in ("/api/v1/stats/sam/7", "/api/v1/stats/sam/07", "/api/v1/stats/s..m/0"):
        assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}").status_code in (403, 404)
