"""The admin dashboard: figures from one audit walk, cached; workers, key pool, alerts, locks."""

from __future__ import annotations

import importlib
import re
import sys
from html import unescape

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.urls import NoReverseMatch, clear_url_caches, reverse

from accounts import dashboard, heartbeat, locks
from accounts.adjust import adjust_balance
from accounts.audit import run_audit
from accounts.gateway import account_key, get_account, iter_accounts
from adspace import admin_pages as adspace_pages
from adspace import buy, credit
from bitcoinkeys import admin_pages as bitcoinkeys_pages
from bitcoinkeys import deposits, pool
from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import Payment
from tests.test_buy import M, make_market
from tests.test_deposits import give_address
from tests.test_withdrawals import ADDR_A, FakeChain

DASHBOARD = "/admin/dashboard/"
RUN_AUDIT = "/admin/dashboard/run-audit/"
ADDRESS = "bcrt1qtestdeposit00000000000000000000000001"
OUTPOINT = "ab" * 32 + ":0"


def register_everything() -> None:
    """What the apps' ready() does once the registration lines are in (idempotent).

    The admin's URLs are read once, when the URLconf is first loaded; if that happened before
    the pages were registered (the apps.py lines not in yet), load it again.
    """
    adspace_pages.register_admin()
    bitcoinkeys_pages.register_admin()
    try:
        reverse("admin:bitcoinkeys_deposits")
        reverse("admin:adspace_campaigns")
    except NoReverseMatch:
        importlib.reload(sys.modules[settings.ROOT_URLCONF])
        clear_url_caches()


@pytest.fixture(autouse=True)
def _registered():
    register_everything()


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def banners(response) -> list[str]:
    """The red banners at the top of the dashboard, as text."""
    html = response.content.decode().split('id="dashboard-alerts"')[1].split("</div>")[0]
    found = re.findall(r'<p class="errornote red-banner" role="alert">(.*?)</p>', html, re.S)
    return [unescape(re.sub(r"<[^>]+>", "", b)).strip() for b in found]


def build_world(store, clock, settings) -> dict:
    """Two sales (one credited), a credited deposit, a queued and a sent withdrawal."""
    settings.MIN_WITHDRAWAL_SATS = 100_000
    n = make_market(store, clock)  # sam sells; bob and cat hold 1_000_000 each
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, M)
    credit.credit_campaign(store, clock, "sam", n)
    buy.buy_next_slot(store, clock, "cat", "sam", n, 0, 2 * M)
    give_address(store, clock, "alice", ADDRESS)
    counters = deposits.credit_confirmed(store, clock, [Payment(ADDRESS, OUTPOINT, 900_000, 3)])
    assert counters["credited"] == 1
    w.request_withdrawal(store, clock, "alice", 200_000, ADDR_A)
    p.process(store, clock, FakeChain(store))  # sends request 0
    w.request_withdrawal(store, clock, "alice", 300_000, ADDR_A)  # stays queued
    return {
        "sale_fee": buy.sale_fee(M),
        "uncredited": 2 * M,
        "held_withdrawals": 300_000 + w.withdrawal_fee(300_000),
        "withdrawal_fee": w.withdrawal_fee(200_000),
        "deposits": 900_000,
        "paid_out": 200_000,
    }


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [DASHBOARD, "/admin/"])
def test_anonymous_visitors_are_sent_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_a_non_staff_user_sees_nothing_and_cannot_run_the_audit(client, make_user, store):
    client.force_login(make_user("mallory"))
    for response in (client.get(DASHBOARD), client.post(RUN_AUDIT)):
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))
    assert dashboard.last_audit(store) is None


def test_the_index_links_the_dashboard_prominently(staff_client):
    html = staff_client.get("/admin/").content.decode()
    assert 'id="dashboard-link"' in html and f'href="{DASHBOARD}"' in html
    # Every registered page is linked from the Operations block.
    for name in ("accounts_list", "adspace_campaigns", "bitcoinkeys_withdrawals"):
        assert f'href="{reverse("admin:" + name)}"' in html


# --- figures ----------------------------------------------------------------------------------


def test_the_figures_of_a_small_world_are_exact(staff_client, store, clock, settings):
    want = build_world(store, clock, settings)
    response = staff_client.get(DASHBOARD)
    assert response.status_code == 200
    built = response.context["dashboard"]
    balances = sum(doc.value["balance"] for _, doc in iter_accounts(store))
    assert built.held["balances"] == balances
    assert built.held["held withdrawals"] == want["held_withdrawals"]
    assert built.held["uncredited sales"] == want["uncredited"]
    assert built.held["sale fees earned"] == want["sale_fee"]
    assert built.held["withdrawal fees earned"] == want["withdrawal_fee"]
    assert built.came_in["deposits"] == want["deposits"]
    assert built.came_in["paid out"] == -want["paid_out"]
    assert built.came_in["adjustments"] == 2_000_000
    assert built.report_ok is True
    html = response.content.decode()
    assert f"{want['uncredited']} sats" in html
    # Nothing is wrong but the worker that never ran in this test.
    assert banners(response) == ["Workers: run_workers has never sent a heartbeat."]
    panels = {p.title: p for p in built.panels}
    assert {"Money", "Locks", "Campaigns", "Key pool", "Deposits", "Withdrawals"} <= set(panels)
    money_rows = {r.label: r.value for r in panels["Money"].rows}
    assert money_rows["Users (ORM)"] == 1  # only the staff user is an ORM user here
    rows = {r.label: r.value for r in panels["Withdrawals"].rows}
    assert rows[w.STATE_LABELS["queued"]] == 1 and rows[w.STATE_LABELS["sent"]] == 1
    rows = {r.label: r.value for r in panels["Campaigns"].rows}
    assert rows["Slots sold"] == 2 and rows["Campaigns"] == 1


def test_the_dashboard_is_cached_and_the_audit_button_refreshes_it(staff_client, store, clock):
    make_market(store, clock)
    first = staff_client.get(DASHBOARD).context["dashboard"]
    adjust_balance(store, clock, "bob", 5, "late change")
    again = staff_client.get(DASHBOARD).context["dashboard"]
    assert again.held["balances"] == first.held["balances"]  # from the cache: no new walk
    staff_client.post(RUN_AUDIT)
    fresh = staff_client.get(DASHBOARD).context["dashboard"]
    assert fresh.held["balances"] == first.held["balances"] + 5


def test_a_failing_panel_shows_a_banner_instead_of_an_error(staff_client):
    def broken(store, clock):
        raise RuntimeError("boom")

    dashboard.register_panel("Broken", broken)
    try:
        response = staff_client.get(DASHBOARD)
    finally:
        dashboard._panels.pop("Broken")
    assert response.status_code == 200
    assert "Broken: This panel failed: RuntimeError('boom')" in banners(response)


# --- the audit --------------------------------------------------------------------------------


def test_running_the_audit_stores_it_as_the_last_audit(staff_client, store, clock):
    make_market(store, clock)
    assert "No audit has been stored yet" in staff_client.get(DASHBOARD).content.decode()
    response = staff_client.post(RUN_AUDIT)
    assert response.status_code == 302 and response.url == DASHBOARD
    assert "The audit passed" in texts(response)[-1]
    last = store.get("audit::last").value
    assert last["ok"] is True and last["at"] == clock.now() and last["by"] == "staffer"
    assert last["lines"] == run_audit(store, check_locks=False).lines()
    html = staff_client.get(DASHBOARD).content.decode()
    assert "ok: the books balance" in html


def test_a_breach_shows_in_the_last_audit(staff_client, store, clock):
    make_market(store, clock)
    doc = get_account(store, "bob")
    store.replace(account_key("bob"), {**doc.value, "balance": doc.value["balance"] + 1}, doc.cas)
    response = staff_client.post(RUN_AUDIT)
    assert "problem" in texts(response)[-1]
    assert store.get("audit::last").value["ok"] is False
    html = staff_client.get(DASHBOARD).content.decode()
    assert "FAILED" in html
    assert "BREACH account::bob balance" in html


def test_the_audit_runs_only_on_post(staff_client, store):
    response = staff_client.get(RUN_AUDIT)
    assert response.status_code == 302
    assert dashboard.last_audit(store) is None


def test_the_audit_command_result_is_shown(staff_client, store, clock):
    from django.core.management import call_command

    call_command("audit", verbosity=0)
    html = staff_client.get(DASHBOARD).content.decode()
    assert 'id="last-audit-result">ok' in html


# --- workers ----------------------------------------------------------------------------------


def test_a_stale_worker_is_red_and_a_fresh_one_is_not(staff_client, store, clock):
    stale = settings.WORKER_STALE_SECONDS
    heartbeat.beat(store, "run_workers", clock.now() - stale - 1, passes=3)
    heartbeat.beat(store, "credit_sellers", clock.now() - stale, passes=1)
    response = staff_client.get(DASHBOARD)
    beats = {b.name: b for b in response.context["beats"]}
    assert beats["run_workers"].stale and beats["run_workers"].age == stale + 1
    assert not beats["credit_sellers"].stale
    html = response.content.decode()
    assert 'class="red" id="worker-run_workers"' in html
    assert 'class="" id="worker-credit_sellers"' in html
    assert banners(response) == [
        f"Workers: run_workers last beat {stale + 1} s ago (stale after {stale} s)."
    ]


def test_a_required_worker_that_never_beat_is_red(staff_client):
    beats = {b.name: b for b in staff_client.get(DASHBOARD).context["beats"]}
    assert beats["run_workers"].stale and beats["run_workers"].at is None
    assert not beats["recover"].stale  # optional: only run on its own


# --- key pool and deposit alerts --------------------------------------------------------------


def test_the_out_of_keys_banner_shows_when_the_pool_is_dry(staff_client, store, clock, make_user):
    make_user("alice")
    assert not [b for b in banners(staff_client.get(DASHBOARD)) if "Key pool" in b]
    with pytest.raises(pool.OutOfKeys):
        pool.get_deposit_address(store, clock, "alice")
    assert store.get("keypool::alert").value
    staff_client.post(RUN_AUDIT)  # refreshes the cached figures
    (banner,) = [b for b in banners(staff_client.get(DASHBOARD)) if b.startswith("Key pool")]
    assert "OUT OF DEPOSIT ADDRESSES since" in banner and "Run import_keys" in banner


def test_a_credited_payment_that_vanished_is_a_red_banner(staff_client, store, clock):
    give_address(store, clock, "alice", ADDRESS)
    deposits.credit_confirmed(store, clock, [Payment(ADDRESS, OUTPOINT, 500_000, 2)])
    deposits.credit_confirmed(store, clock, [Payment(ADDRESS, OUTPOINT, 500_000, 0, True)])
    (banner,) = [b for b in banners(staff_client.get(DASHBOARD)) if b.startswith("Deposits")]
    assert f"alice: 500000 sats to {ADDRESS} ({OUTPOINT}) were credited, then its block" in banner
    assert "reorg" in banner and "NOT debited" in banner


# --- locks ------------------------------------------------------------------------------------


def test_locks_held_are_counted_with_the_oldest_age(staff_client, store, clock):
    make_market(store, clock)
    locks.take_lock(store, clock, "bob", "adjust", "adjust:x1", delta=1, reason="r")
    clock.advance(10)
    locks.take_lock(store, clock, "cat", "adjust", "adjust:x2", delta=1, reason="r")
    clock.advance(5)
    panels = {p.title: p for p in staff_client.get(DASHBOARD).context["dashboard"].panels}
    rows = {r.label: r for r in panels["Locks"].rows}
    assert rows["Locks held"].value == 2
    assert rows["Oldest"].value == "15 s" and not rows["Oldest"].red
    assert "adjust adjust:x1, 15 s" in rows["bob"].value
    assert panels["Locks"].alert is None


def test_a_lock_past_its_lease_is_red(staff_client, store, clock):
    make_market(store, clock)
    locks.take_lock(store, clock, "bob", "adjust", "adjust:x1", delta=1, reason="r")
    clock.advance(locks.lease_seconds() + 1)
    panels = {p.title: p for p in staff_client.get(DASHBOARD).context["dashboard"].panels}
    assert panels["Locks"].alert and "past the lease" in panels["Locks"].alert
    assert {r.label: r for r in panels["Locks"].rows}["bob"].red


def test_figures_of_an_app_whose_audit_is_not_registered_say_so(staff_client, monkeypatch):
    from accounts import audit

    # As before BitcoinkeysConfig.ready registers the deposit and withdrawal audits.
    monkeypatch.setattr(audit, "_audits", [audit.audit_accounts])
    response = staff_client.get(DASHBOARD)
    assert response.status_code == 200
    panels = {p.title: p for p in response.context["dashboard"].panels}
    rows = {r.label: r.value for r in panels["Withdrawals"].rows}
    assert rows["Withdrawal fees earned"] == "not audited"
    assert rows[w.STATE_LABELS["queued"]] == "not audited"
    assert {r.label: r.value for r in panels["Deposits"].rows}["Deposits credited"] == (
        "not audited"
    )


def test_a_short_payout_wallet_is_a_red_banner_with_the_numbers(staff_client, store, clock):
    from bitcoinkeys import payouts
    from bitcoinkeys.withdrawals import request_withdrawal
    from tests.test_withdrawals import fund

    fund(store, clock, "alice", 20_000_000)
    request_withdrawal(store, clock, "alice", 3_000_000, ADDR_A)
    request_withdrawal(store, clock, "alice", 4_000_000, ADDR_A)
    payouts.process(store, clock, FakeChain(store).configure(balance=50_000))
    html = staff_client.get(DASHBOARD).content.decode()
    assert (
        "PAYOUT WALLET SHORT (since 2023-11-14 22:13:20 UTC): 2 request(s), 0.07000000 BTC "
        "waiting, the wallet has 0.00050000 BTC; short by 0.07050000 BTC with the fee reserve."
    ) in html
    FakeChain(store).configure(balance=10**12)
    payouts.process(store, clock, FakeChain(store))
    staff_client.post(RUN_AUDIT)
    assert "PAYOUT WALLET SHORT" not in staff_client.get(DASHBOARD).content.decode()
