"""CSV exports of the ledger, sales, purchases and statistics: streamed, UTC ISO times, BTC with 8
decimals beside sats, formula-looking text made inert, the signed-in user's own data only, and
huge ranges refused."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest

from accounts.adjust import adjust_balance
from adspace import buy, exports, gateway
from tests.test_ad_api import HUGE, SHA, make_world, sell
from tests.test_stats_pages import delivered, signed_in  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def download(client, path: str) -> list[dict]:
    response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="')
    assert "no-store" in response["Cache-Control"]
    text = b"".join(response.streaming_content).decode("utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def assert_amounts(row: dict, name: str) -> None:
    """BTC with exactly 8 decimals, equal to the sats beside it."""
    assert re.fullmatch(r"-?\d+\.\d{8}", row[f"{name}_btc"]), row
    assert Decimal(row[f"{name}_btc"]) * 100_000_000 == int(row[f"{name}_sats"])


@pytest.fixture
def traded(store, clock):
    """sam's campaign with a formula-looking title; bob bought slot 0 with a formula-looking ad."""
    make_world(store, clock)
    gateway.update_campaign(store, "sam", 0, "sam", {"title": "+SUM(1;2)"})
    gateway.create_filler(
        store, clock, "bob", "evil", "=HYPERLINK(\"https://evil.test\";\"x\")",
        "https://bob.test/?q=1", 300, 250, SHA,
    )  # fmt: skip
    sale = buy.buy_next_slot(store, clock, "bob", "sam", 0, 1, HUGE)
    clock.advance(3600)
    adjust_balance(store, clock, "bob", 5, "@refund test")
    return sale


def test_the_ledger_export_has_utc_times_and_amounts_in_btc_and_sats(client, store, traded):
    rows = download(signed_in(client, "bob"), "/account/export/ledger.csv")
    assert [r["kind"] for r in rows] == ["adjust", "buy", "adjust"]  # newest first
    for row in rows:
        assert ISO.fullmatch(row["time_utc"])
        assert_amounts(row, "change")
        assert_amounts(row, "balance_after")
    bought = rows[1]
    assert bought["change_btc"].startswith("-0.00")  # a negative amount stays a number
    assert int(bought["change_sats"]) == -traded.price
    assert bought["reference"] == "slot::sam::0::0"
    assert rows[0]["time_utc"] == "2023-11-14T23:13:20Z"


def test_the_sales_export_makes_formula_text_inert(client, store, traded):
    rows = download(signed_in(client, "sam"), "/account/export/sales.csv")
    assert len(rows) == 1
    row = rows[0]
    assert row["campaign_title"] == "'+SUM(1;2)"
    assert row["ad_hover_text"] == '\'=HYPERLINK("https://evil.test";"x")'
    assert row["ad_url"] == "https://bob.test/?q=1"
    assert row["buyer"] == "bob" and row["slot"] == "0"
    for name in ("price", "fee", "credit"):
        assert_amounts(row, name)
    assert int(row["credit_sats"]) == int(row["price_sats"]) - int(row["fee_sats"])
    assert all(ISO.fullmatch(row[c]) for c in ("bought_utc", "starts_utc", "ends_utc"))


def test_the_purchases_export_lists_the_buyers_slots(client, store, traded):
    rows = download(signed_in(client, "bob"), "/account/export/purchases.csv")
    assert len(rows) == 1
    row = rows[0]
    assert (row["seller"], row["campaign"], row["slot"]) == ("sam", "0", "0")
    assert row["campaign_title"] == "'+SUM(1;2)"
    assert int(row["price_sats"]) == traded.price
    assert_amounts(row, "price")
    assert row["ad_url"] == "https://bob.test/?q=1"


def test_the_statistics_export_matches_the_page(client, store, clock, delivered):  # noqa: F811
    rows = download(
        signed_in(client, "sam"),
        "/account/export/statistics.csv?campaign=0&from=2023-11-14&to=2023-11-15",
    )
    got = {(r["slot"], r["day_utc"]): (int(r["impressions"]), int(r["clicks"])) for r in rows}
    assert got == {
        ("0", "2023-11-14"): (5, 2),
        ("0", "2023-11-15"): (3, 1),
        ("1", "2023-11-15"): (4, 0),
    }
    assert {r["ctr_percent"] for r in rows} == {"40.00", "33.33", "0.00"}
    everything = download(client, "/account/export/statistics.csv?from=2023-11-14&to=2023-11-15")
    assert len(everything) == 3


def test_exports_hold_only_the_signed_in_users_own_data(client, store, traded, make_user):
    make_user("eve")
    eve = signed_in(client, "eve")
    assert download(eve, "/account/export/sales.csv") == []
    assert download(eve, "/account/export/purchases.csv") == []
    assert download(eve, "/account/export/statistics.csv") == []
    # Naming another seller changes nothing: the owner is never taken from the request.
    assert download(eve, "/account/export/sales.csv?user=sam&owner=sam") == []
    response = eve.get("/account/export/statistics.csv?campaign=0&user=sam")
    # The page's CSRF tokens are random letters and digits, which may spell "bob" by chance.
    page = re.sub(rb'value="[A-Za-z0-9]{32,64}"', b"", response.content)
    assert response.status_code == 404 and b"bob" not in page
    ledger = download(eve, "/account/export/ledger.csv")
    assert all("bob" not in str(r) and "sam" not in str(r) for r in ledger)


def test_exports_need_a_signed_in_user(client, traded):
    for kind in ("ledger", "sales", "purchases", "statistics"):
        response = client.get(f"/account/export/{kind}.csv")
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.parametrize(
    "query",
    ["from=2000-01-01&to=2023-11-14", "from=2023-11-15&to=2023-11-01", "from=yesterday",
     "to=2023-13-01", "campaign=00", "campaign=-1", "campaign=99999999999"],
)  # fmt: skip
def test_huge_or_bad_requests_are_refused_with_a_4xx(client, traded, query):
    user = signed_in(client, "sam")
    for kind in ("ledger", "sales", "purchases", "statistics"):
        response = user.get(f"/account/export/{kind}.csv?{query}")
        if query.startswith("campaign") and kind != "statistics":
            continue  # only the statistics export names a campaign
        assert response.status_code in (400, 404), (kind, query)
        assert not response.streaming


def test_the_range_bounds_every_export(client, store, clock, traded):
    user = signed_in(client, "bob")
    assert download(user, "/account/export/ledger.csv?from=2023-11-13&to=2023-11-13") == []
    assert len(download(user, "/account/export/ledger.csv?from=2023-11-14&to=2023-11-14")) == 3
    assert download(user, "/account/export/purchases.csv?from=2023-11-15&to=2023-11-16") == []
    sam = signed_in(client, "sam")
    assert download(sam, "/account/export/sales.csv?from=2023-11-15&to=2023-11-15") == []


def test_a_long_history_is_streamed_in_batches(client, store, clock):
    make_world(store, clock)
    for _ in range(exports.BATCH + 30):
        clock.set(sell(store, clock).ends_at)  # back to the minimum price for the next
    rows = download(signed_in(client, "sam"), "/account/export/sales.csv")
    assert [int(r["slot"]) for r in rows] == list(range(exports.BATCH + 29, -1, -1))
    bought = download(signed_in(client, "bob"), "/account/export/purchases.csv")
    assert len(bought) == exports.BATCH + 30


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@x", "\tx", "\rx"])
def test_formula_starts_are_made_inert(text):
    assert exports.inert(text) == "'" + text
    assert exports.inert("a" + text) == "a" + text
    assert exports.inert(exports.btc(-50)) == "-0.00000050" and exports.inert(-5) == -5
