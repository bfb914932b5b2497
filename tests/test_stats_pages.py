"""Delivery statistics on the pages: the seller's campaign page (per day, per slot, a chart) and the
buyer's purchases page (per purchase), every figure from one report so they always agree."""

from __future__ import annotations

import re

import pytest

from accounts.models import User
from adspace import stats, stats_chart, stats_report
from tests.delivery_helpers import counted, links, view
from tests.test_ad_api import make_world, sell

pytestmark = pytest.mark.django_db

EMBED = "/embed/sam/0"
PAGE = "/account/sales/0/"


@pytest.fixture
def delivered(store, clock, client):
    """Slot 0 (bob) and slot 1 (cat): views and clicks driven through the embed on two days."""
    make_world(store, clock)
    first = sell(store, clock)
    second = sell(store, clock, "cat")
    clock.advance(600)  # 2023-11-14 22:23 UTC: slot 0
    drive(client, impressions=5, clicks=2)
    clock.set(first.starts_at + 3 * 3600)  # 2023-11-15 01:13 UTC: still slot 0
    drive(client, impressions=3, clicks=1)
    clock.set(second.starts_at + 600)  # 2023-11-15 22:23 UTC: slot 1
    drive(client, impressions=4, clicks=0)
    stats.flush()
    return first, second


def drive(client, impressions: int, clicks: int) -> None:
    click, beacon = links(client.get(EMBED).content.decode())
    for i in range(impressions):
        assert view(client, beacon, ip=f"198.51.100.{i}").status_code == 200
    for i in range(clicks):
        assert view(client, click, ip=f"198.51.100.{i}").status_code == 302


def signed_in(client, username: str):
    user = User.objects.filter(username=username).first() or User.objects.create_user(username)
    client.force_login(user)
    return client


def cells(html: str, role: str) -> dict[tuple[str, str], int]:
    """(slot, day) -> the number in the row's `role` cell, from the per-slot table."""
    out = {}
    for slot, day, row in re.findall(
        r'<tr[^>]*data-slot="(\d+)" data-day="([^"]+)">(.*?)</tr>', html
    ):
        out[(slot, day)] = int(re.search(rf'data-role="{role}">(\d+)<', row)[1])
    return out


def test_the_seller_sees_impressions_and_clicks_per_slot_and_day(client, store, clock, delivered):
    html = signed_in(client, "sam").get(PAGE + "?from=2023-11-14&to=2023-11-15").content.decode()
    assert cells(html, "impressions") == {
        ("0", "2023-11-14"): 5, ("0", "2023-11-15"): 3, ("0", "all"): 8,
        ("1", "2023-11-15"): 4, ("1", "all"): 4,
    }  # fmt: skip
    assert cells(html, "clicks") == {
        ("0", "2023-11-14"): 2, ("0", "2023-11-15"): 1, ("0", "all"): 3,
        ("1", "2023-11-15"): 0, ("1", "all"): 0,
    }  # fmt: skip
    headline = re.search(r'data-role="delivery-total">(.*?)</p>', html, re.S)[1]
    assert 'data-role="impressions">12<' in headline and 'data-role="clicks">3<' in headline
    assert 'data-role="ctr">25.00 %<' in headline


def test_the_headline_is_the_sum_of_the_rows(client, store, clock, delivered):
    first, second = (
        stats_report.utc_day(clock.now()) - stats_report.timedelta(days=d) for d in (1, 0)
    )
    campaign = store.get("campaign::sam::0").value
    report = stats_report.campaign_report(store, "sam", 0, campaign, first, second)
    assert report.total.impressions == sum(c.impressions for _, c in report.days) == 12
    assert report.total.clicks == sum(s.total.clicks for s in report.slots) == 3
    html = signed_in(client, "sam").get(PAGE + "?from=2023-11-14&to=2023-11-15").content.decode()
    days = re.findall(r'<tr data-day="([^"]+)">(.*?)</tr>', html)
    per_day = {d: int(re.search(r'data-role="impressions">(\d+)<', row)[1]) for d, row in days}
    assert per_day == {"2023-11-14": 5, "2023-11-15": 7}


def test_the_page_draws_a_chart_without_script(client, store, clock, delivered):
    html = signed_in(client, "sam").get(PAGE + "?from=2023-11-14&to=2023-11-15").content.decode()
    chart = re.search(r'<svg[^>]*class="stats-chart".*?</svg>', html, re.S)[0]
    assert "12 impressions, 3 clicks" in chart
    assert chart.count('class="impressions"') == 2 and chart.count('class="clicks"') == 2
    assert "<script" not in chart and "on" + "load" not in chart and "href" not in chart


def test_a_day_with_nothing_shows_zero_and_no_ctr(client, store, clock, delivered):
    html = signed_in(client, "sam").get(PAGE + "?from=2023-11-13&to=2023-11-13").content.decode()
    assert 'data-role="impressions">0<' in html and 'data-role="ctr">-<' in html
    assert "No slot of this campaign ran in these days." in html


def test_the_default_range_is_the_last_two_weeks(client, store, clock, delivered):
    html = signed_in(client, "sam").get(PAGE).content.decode()
    assert 'name="from" value="2023-11-02"' in html and 'name="to" value="2023-11-15"' in html
    assert cells(html, "impressions")[("0", "all")] == 8


@pytest.mark.parametrize(
    "query",
    ["from=2023-11-15&to=2023-11-14", "from=2000-01-01&to=2023-11-14", "from=2023-1-1",
     "to=2023-02-30", "from=20231114", "from=%00"],
)  # fmt: skip
def test_a_bad_or_huge_range_is_a_400(client, store, clock, delivered, query):
    response = signed_in(client, "sam").get(PAGE + "?" + query)
    assert response.status_code == 400
    assert b'data-role="delivery-total"' not in response.content


def test_another_seller_sees_nothing_of_it(client, store, clock, delivered):
    response = signed_in(client, "bob").get(PAGE)
    assert response.status_code == 404
    assert b"impressions" not in response.content


def test_the_buyer_sees_what_each_purchase_delivered(client, store, clock, delivered):
    html = signed_in(client, "bob").get("/account/purchases/").content.decode()
    row = re.search(r'<tr id="p-sam-0-0">(.*?)</tr>\s*(?=<tr id=|</tbody>)', html, re.S)[1]
    assert re.search(r'<td class="num" data-role="impressions">8</td>', row)
    assert re.search(r'<td class="num" data-role="clicks">3</td>', row)
    assert 'data-role="ctr">37.50 %' in row
    assert re.search(
        r'data-day="2023-11-14"><td>2023-11-14</td><td class="num" data-role="impressions">5<', row
    )
    cat = signed_in(client, "cat").get("/account/purchases/").content.decode()
    assert re.search(r'<td class="num" data-role="impressions">4</td>', cat)
    assert "p-sam-0-0" not in cat  # bob's purchase is not cat's


def test_counts_not_yet_flushed_are_not_shown_but_are_not_lost(client, store, clock, delivered):
    drive(client, impressions=2, clicks=0)
    page = signed_in(client, "sam")
    html = page.get(PAGE + "?from=2023-11-15&to=2023-11-15").content.decode()
    assert cells(html, "impressions")[("1", "all")] == 4
    stats.flush()
    html = page.get(PAGE + "?from=2023-11-15&to=2023-11-15").content.decode()
    assert cells(html, "impressions")[("1", "all")] == 6
    assert counted(store, stats.IMPRESSIONS, k=1, day="2023-11-15") == 6


def test_the_chart_of_no_days_and_of_big_numbers_is_well_formed():
    assert stats_chart.chart_svg([]).endswith("</svg>")
    day = stats_report.utc_day(1_700_000_000)
    svg = stats_chart.chart_svg([(day, stats_report.Counts(123_456, 789, 0))])
    assert ">200000<" in svg and ">1000<" in svg  # rounded axis tops
    assert 'height="-' not in svg
