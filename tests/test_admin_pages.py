"""Staff pages over docstore data: accounts, campaigns, the withdrawal queue, deposit addresses."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts import locks
from accounts.gateway import get_account
from adspace import buy, credit
from bitcoinkeys import deposits
from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import Payment
from tests.test_admin_dashboard import ADDRESS, OUTPOINT, register_everything, texts
from tests.test_buy import M, make_market
from tests.test_deposits import give_address
from tests.test_withdrawals import ADDR_A, REFUSED, FakeChain

ACCOUNTS = "/admin/accounts/list/"
CAMPAIGNS = "/admin/adspace/campaigns/"
WITHDRAWALS = "/admin/bitcoinkeys/withdrawals/"
DEPOSITS = "/admin/bitcoinkeys/deposits/"


def campaign_url(owner: str, n: int) -> str:
    return f"{CAMPAIGNS}{owner}/{n}/"


def refund_url(username: str, i: int) -> str:
    return f"{WITHDRAWALS}{username}/{i}/refund/"


PAGES = [
    ACCOUNTS,
    ACCOUNTS + "?locked=1",
    CAMPAIGNS,
    campaign_url("sam", 0),
    WITHDRAWALS,
    refund_url("alice", 0),
    DEPOSITS,
]


@pytest.fixture(autouse=True)
def _registered():
    register_everything()


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def market(store, clock):
    """sam/0 with slot 0 sold to bob (credited) and slot 1 to cat (not credited yet)."""
    n = make_market(store, clock)
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, M)
    credit.credit_campaign(store, clock, "sam", n)
    buy.buy_next_slot(store, clock, "cat", "sam", n, 0, 2 * M)  # the same second: exactly 2M
    clock.advance(600)
    return n


@pytest.fixture
def payouts(store, clock, make_user, settings):
    """alice: #0 sent, #1 failed with its refund still owed (her account was busy), #2 queued."""
    settings.MIN_WITHDRAWAL_SATS = 100_000
    make_user("alice", balance=5_000_000)
    chain = FakeChain(store)
    w.request_withdrawal(store, clock, "alice", 200_000, ADDR_A)
    p.process(store, clock, chain)
    w.request_withdrawal(store, clock, "alice", 300_000, REFUSED)
    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:busy", delta=1, reason="r")
    p.process(store, clock, chain)  # the wallet refuses; the refund finds alice locked
    locks.release(store, "alice", lock["token"])
    w.request_withdrawal(store, clock, "alice", 400_000, ADDR_A)
    states = [store.get(f"withdraw::alice::{i}").value["state"] for i in range(3)]
    assert states == ["sent", "failed", "queued"]
    return chain


# --- access -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", PAGES)
def test_anonymous_visitors_are_sent_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


@pytest.mark.parametrize("url", PAGES)
def test_a_non_staff_user_is_refused(client, make_user, url):
    client.force_login(make_user("mallory"))
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_a_non_staff_user_cannot_refund(client, make_user, store, payouts):
    client.force_login(make_user("mallory"))
    response = client.post(refund_url("alice", 1), {"confirm": "yes"})
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert store.get("withdraw::alice::1").value["state"] == "failed"


# --- accounts ---------------------------------------------------------------------------------


def test_accounts_are_found_by_prefix_with_the_exact_name_first(staff_client, make_user):
    make_user("al", balance=7)
    make_user("alice", balance=12_345)
    make_user("Alan")
    make_user("bob")
    response = staff_client.get(ACCOUNTS, {"q": "al"})
    assert response.status_code == 200
    rows = response.context["rows"]
    assert [r.username for r in rows] == ["al", "Alan", "alice"]
    alice = rows[2]
    assert alice.balance == 12_345 and alice.btc_state == "none" and alice.lock is None
    html = response.content.decode()
    assert 'href="/admin/accounts/inspect/?username=alice"' in html
    assert 'href="/admin/accounts/adjust/alice/"' in html
    assert "0.00012345" in html


def test_the_locked_filter_shows_locks_with_their_kind_and_age(staff_client, store, clock, market):
    locks.take_lock(store, clock, "bob", "adjust", "adjust:x", delta=1, reason="r")
    clock.advance(locks.lease_seconds() + 5)
    response = staff_client.get(ACCOUNTS, {"locked": "1"})
    (row,) = response.context["rows"]
    assert row.username == "bob" and row.lock.kind == "adjust"
    assert row.lock.age == locks.lease_seconds() + 5 and row.lock.past_lease
    assert "past the 30 s lease" in response.content.decode()


@pytest.mark.parametrize("q", ["no such!", "x" * 40, "a b", "<script>"])
def test_a_bad_search_is_a_form_error_not_a_crash(staff_client, q):
    response = staff_client.get(ACCOUNTS, {"q": q})
    assert response.status_code == 200
    assert response.context["form"].errors and response.context["rows"] == []


@pytest.mark.parametrize(
    ("page", "shown", "message"),
    [("abc", 1, "not a page number"), ("99", 2, "There is no page 99"), ("-1", 2, "no page")],
)
def test_a_bad_page_number_is_a_message(staff_client, make_user, settings, page, shown, message):
    from accounts import admin as accounts_admin

    original = accounts_admin.ACCOUNTS_PER_PAGE
    accounts_admin.ACCOUNTS_PER_PAGE = 2
    try:
        for name in ("u1", "u2", "u3"):
            make_user(name)
        response = staff_client.get(ACCOUNTS, {"page": page})
    finally:
        accounts_admin.ACCOUNTS_PER_PAGE = original
    assert response.status_code == 200
    assert response.context["page"].number == shown
    assert message in texts(response)[-1]


# --- campaigns --------------------------------------------------------------------------------


def test_the_campaign_list_shows_owner_size_prices_sales_and_earnings(
    staff_client, store, clock, market
):
    response = staff_client.get(CAMPAIGNS)
    assert response.status_code == 200
    (line,) = response.context["lines"]
    assert (line.owner, line.n, line.width, line.height) == ("sam", market, 300, 250)
    assert line.min_price == M and line.slots_sold == 2
    last = store.get(f"campaign::sam::{market}").value["last"]
    from adspace import pricing

    assert line.price == pricing.current_price(M, last, clock.now()) > M
    assert (line.earned, line.sales) == (M - buy.sale_fee(M), 1)
    assert (line.pending, line.pending_sales) == (2 * M - buy.sale_fee(2 * M), 1)
    html = response.content.decode()
    assert f'href="{campaign_url("sam", market)}"' in html


def test_the_campaign_list_pages_through_the_directory_newest_first(staff_client, store, clock):
    from adspace import admin_pages, gateway

    for owner in ("ann", "ben", "cy"):
        gateway.create_campaign(store, clock, owner, M, 24, 300, 250, [])
    original = admin_pages.CAMPAIGNS_PER_PAGE
    admin_pages.CAMPAIGNS_PER_PAGE = 2
    try:
        first = staff_client.get(CAMPAIGNS)
        second = staff_client.get(CAMPAIGNS, {"page": "2"})
    finally:
        admin_pages.CAMPAIGNS_PER_PAGE = original
    assert [c.owner for c in first.context["lines"]] == ["cy", "ben"]
    assert [c.owner for c in second.context["lines"]] == ["ann"]
    assert 'href="?page=2"' in first.content.decode()


def test_the_campaign_list_filters_by_owner(staff_client, store, clock, market):
    assert len(staff_client.get(CAMPAIGNS, {"owner": "sam"}).context["lines"]) == 1
    assert staff_client.get(CAMPAIGNS, {"owner": "bob"}).context["lines"] == []
    response = staff_client.get(CAMPAIGNS, {"owner": "no/such"})
    assert response.status_code == 200 and "letters and digits" in texts(response)[-1]


def test_a_campaign_shows_its_slots_with_buyers_and_tx_states(staff_client, store, clock, market):
    response = staff_client.get(campaign_url("sam", market))
    assert response.status_code == 200
    lines = response.context["lines"]
    assert [(s.index, s.buyer, s.price, s.tx_state) for s in lines] == [
        (1, "cat", 2 * M, "uncredited"),
        (0, "bob", M, "credited"),
    ]
    assert [s.status for s in lines] == ["queued", "live"]
    assert lines[1].starts.timestamp() == clock.now() - 600
    assert lines[0].starts == lines[1].ends
    html = response.content.decode()
    assert 'id="slots-sold">2<' in html


def test_campaign_slots_are_paginated(staff_client, store, clock, market):
    from adspace import admin_pages

    original = admin_pages.SLOTS_PER_PAGE
    admin_pages.SLOTS_PER_PAGE = 1
    try:
        first = staff_client.get(campaign_url("sam", market))
        second = staff_client.get(campaign_url("sam", market), {"page": "2"})
        bad = staff_client.get(campaign_url("sam", market), {"page": "zz"})
    finally:
        admin_pages.SLOTS_PER_PAGE = original
    assert [s.index for s in first.context["lines"]] == [1]
    assert [s.index for s in second.context["lines"]] == [0]
    assert bad.status_code == 200 and "not a page number" in texts(bad)[-1]


@pytest.mark.parametrize(
    ("url", "message"),
    [(campaign_url("sam", 7), "There is no campaign sam/7"), (campaign_url("s-m", 0), "letters")],
)
def test_a_missing_campaign_or_bad_owner_is_a_message(staff_client, market, url, message):
    response = staff_client.get(url)
    assert response.status_code == 302 and response.url == CAMPAIGNS
    assert message in texts(response)[-1]


def test_a_campaign_number_that_is_not_a_number_is_a_404(staff_client, market):
    assert staff_client.get(CAMPAIGNS + "sam/x/").status_code == 404


# --- withdrawals ------------------------------------------------------------------------------


def test_the_queue_shows_requests_and_totals_per_state(staff_client, store, payouts):
    response = staff_client.get(WITHDRAWALS)
    assert response.status_code == 200
    rows = response.context["rows"]
    assert [(r.key, r.state) for r in rows] == [
        ("withdraw::alice::2", "queued"),
        ("withdraw::alice::1", "failed"),
        ("withdraw::alice::0", "sent"),
    ]
    sent = rows[2]
    assert sent.txid == payouts.sends[0]["txid"] and sent.address == ADDR_A
    assert [h["state"] for h in sent.history] == ["queued", "sending", "sent"]
    assert rows[1].error and rows[1].refund_url == refund_url("alice", 1)
    assert rows[0].refund_url is None and rows[2].refund_url is None
    totals = {t["state"]: t for t in response.context["totals"]}
    assert totals["queued"]["count"] == 1 and totals["queued"]["amount"] == 400_000
    assert totals["sent"]["fee"] == w.withdrawal_fee(200_000)
    assert totals["failed"]["count"] == 1 and totals["refunded"]["count"] == 0
    html = response.content.decode()
    assert payouts.sends[0]["txid"] in html and f'href="{refund_url("alice", 1)}"' in html


def test_the_queue_filters_by_state_and_user(staff_client, payouts):
    rows = staff_client.get(WITHDRAWALS, {"state": "sent"}).context["rows"]
    assert [r.i for r in rows] == [0]
    assert len(staff_client.get(WITHDRAWALS, {"user": "alice"}).context["rows"]) == 3
    assert staff_client.get(WITHDRAWALS, {"user": "bob"}).context["rows"] == []
    response = staff_client.get(WITHDRAWALS, {"state": "bogus"})
    assert response.status_code == 200 and "There is no state" in texts(response)[-1]
    assert len(response.context["rows"]) == 3
    response = staff_client.get(WITHDRAWALS, {"user": "../x"})
    assert response.status_code == 200 and "letters and digits" in texts(response)[-1]


def test_a_failed_payout_is_refunded_after_confirmation_exactly_once(staff_client, store, payouts):
    before = get_account(store, "alice").value["balance"]
    total = 300_000 + w.withdrawal_fee(300_000)
    page = staff_client.get(refund_url("alice", 1))
    assert page.status_code == 200
    assert "Refund 0.00304500 BTC to alice" in page.content.decode()
    assert store.get("withdraw::alice::1").value["state"] == "failed"  # GET changes nothing

    response = staff_client.post(refund_url("alice", 1), {"confirm": "yes"})
    assert response.status_code == 302
    assert "Refunded 0.00304500 BTC" in texts(response)[-1]
    assert store.get("withdraw::alice::1").value["state"] == "failed-refunded"
    assert get_account(store, "alice").value["balance"] == before + total

    again = staff_client.post(refund_url("alice", 1), {"confirm": "yes"})
    assert "already refunded" in texts(again)[-1]
    assert get_account(store, "alice").value["balance"] == before + total


def test_a_refund_without_the_confirmation_only_shows_the_page(staff_client, store, payouts):
    response = staff_client.post(refund_url("alice", 1), {})
    assert response.status_code == 200 and "refund_confirm" in response.templates[0].name
    assert store.get("withdraw::alice::1").value["state"] == "failed"


def test_only_a_failed_payout_can_be_refunded(staff_client, store, payouts):
    for i, word in ((0, "Sent"), (2, "Queued")):
        response = staff_client.post(refund_url("alice", i), {"confirm": "yes"})
        assert response.status_code == 302 and word in texts(response)[-1]
    response = staff_client.get(refund_url("alice", 9))
    assert "There is no withdrawal withdraw::alice::9" in texts(response)[-1]
    response = staff_client.get(refund_url("al-ce", 1))
    assert response.status_code == 302 and "letters and digits" in texts(response)[-1]


def test_a_refund_while_the_account_is_busy_says_so(staff_client, store, clock, payouts):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:busy2", delta=1, reason="r")
    response = staff_client.post(refund_url("alice", 1), {"confirm": "yes"})
    assert "busy" in texts(response)[-1]
    assert store.get("withdraw::alice::1").value["state"] == "failed"


# --- deposits ---------------------------------------------------------------------------------


def deposit_world(store, clock) -> None:
    give_address(store, clock, "alice", ADDRESS)
    give_address(store, clock, "bob", ADDRESS.replace("01", "02"))
    deposits.credit_confirmed(store, clock, [Payment(ADDRESS, OUTPOINT, 500_000, 2)])
    deposits.credit_confirmed(store, clock, [Payment(ADDRESS, OUTPOINT, 500_000, -1)])


def test_deposit_addresses_show_user_issue_time_credits_and_alerts(staff_client, store, clock):
    deposit_world(store, clock)
    response = staff_client.get(DEPOSITS)
    assert response.status_code == 200
    lines = response.context["lines"]
    assert [a.username for a in lines] == ["bob", "alice"]  # newest first
    alice = lines[1]
    assert alice.address == ADDRESS and alice.issued.timestamp() == clock.now()
    assert alice.credited == [(OUTPOINT, 500_000)] and alice.credited_sats == 500_000
    (alert,) = alice.alerts
    assert alert["outpoint"] == OUTPOINT and "double-spent" in alert["what"]
    assert lines[0].credited == [] and lines[0].alerts == []
    assert "balance not debited" in response.content.decode()


def test_deposit_addresses_filter_by_user_and_by_alerts(staff_client, store, clock):
    deposit_world(store, clock)
    assert [a.username for a in staff_client.get(DEPOSITS, {"user": "bob"}).context["lines"]] == [
        "bob"
    ]
    assert [a.address for a in staff_client.get(DEPOSITS, {"alerts": "1"}).context["lines"]] == [
        ADDRESS
    ]
    response = staff_client.get(DEPOSITS, {"user": "nobody"})
    assert response.status_code == 200 and "There is no account" in texts(response)[-1]
    response = staff_client.get(DEPOSITS, {"user": "x" * 40})
    assert response.status_code == 200 and "letters and digits" in texts(response)[-1]


def test_deposit_pages_answer_bad_page_numbers_with_a_message(staff_client, store, clock):
    deposit_world(store, clock)
    for page in ("0", "x", "1e9", "99999999999999999999"):
        response = staff_client.get(DEPOSITS, {"page": page})
        assert response.status_code == 200, page
        assert texts(response), page
