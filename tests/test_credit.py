"""Crediting sellers (the transaction creditor), called directly: amounts, order, waiting, earnings,
the lock finisher, the audit's credit checks and the `credit_sellers` command."""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import call_command

from accounts import locks, workers
from accounts.adjust import adjust_balance
from accounts.audit import run_audit
from accounts.gateway import ensure_account, full_ledger, get_account
from accounts.heartbeat import last_beat
from accounts.recovery import run_recovery
from accounts.workers import StopFlag
from adspace import buy, credit, gateway
from docstore.backends.memory import MemoryStore
from docstore.faults import HookedStore
from tests.harness import CountingHook
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, M, balance, make_market


@pytest.fixture
def market(store, clock):
    return make_market(store, clock, funds=10_000_000)


def sell(store, clock, n, buyer="bob", owner="sam"):
    clock.advance(60)
    return buy.buy_next_slot(store, clock, buyer, owner, n, 0, HUGE)


def credits(store, name="sam"):
    return [e for e in full_ledger(store, name) if e["kind"] == "credit"]


def cursor(store, n, owner="sam"):
    return store.get(gateway.creditcursor_key(owner, n)).value


def tx(store, n, k, owner="sam"):
    return store.get(gateway.tx_key(owner, n, k)).value


def half_bought(store, clock, n, k, price, buyer="cat", tx_too=False):
    """A sale that died after its slot insert (and, with tx_too, after its tx insert)."""
    lock = locks.take_lock(
        store, clock, buyer, "buy", gateway.slot_key("sam", n, k), spend=price,
        owner="sam", n=n, slot=k, filler=gateway.filler_key(buyer, 0), price=price,
        purchasedAt=clock.now(), startsAt=clock.now(), endsAt=clock.now() + 86400,
    )  # fmt: skip
    assert buy._insert_slot(store, buyer, lock)
    if tx_too:
        slot = store.get(gateway.slot_key("sam", n, k)).value
        store.insert(gateway.tx_key("sam", n, k), buy._tx_doc("sam", slot))
    return lock


def writes_of(fn, store, clock):
    hook = CountingHook()
    fn(HookedStore(store, hook), clock)
    return hook.writes


# --- crediting ----------------------------------------------------------------------------------


def test_a_sale_is_credited_its_price_minus_the_sale_fee(store, clock, market):
    sell(store, clock, market)
    assert credit.credit_campaign(store, clock, "sam", market) == 1
    assert balance(store, "sam") == 98_500  # 100 000 minus 1.5 % = 1 500
    t = tx(store, market, 0)
    assert t["state"] == "credited" and t["creditedAt"] == clock.now() and t["creditToken"]
    [entry] = credits(store)
    assert (entry["ref"], entry["delta"]) == (gateway.tx_key("sam", market, 0), 98_500)
    assert cursor(store, market) == {"next": 1, "earned": 98_500, "sales": 1}
    assert get_account(store, "sam").value["lock"] is None
    assert_audit_clean(store)


def test_the_fee_rounds_up_to_a_whole_sat(store, clock, market):
    n = gateway.create_campaign(store, clock, "sam", 100_001, 24, 300, 250, [])
    sell(store, clock, n)
    assert tx(store, n, 0)["fee"] == 1_501  # 1 500.015 rounds up
    credit.credit_all(store, clock)
    assert balance(store, "sam") == 98_500
    assert_audit_clean(store)


def test_several_sales_are_credited_in_slot_order(store, clock, market):
    prices = [sell(store, clock, market, buyer).price for buyer in ("bob", "cat", "bob")]
    counters = credit.credit_all(store, clock)
    nets = [p - buy.sale_fee(p) for p in prices]
    assert counters["credited"] == 3 and counters["sats"] == sum(nets)
    assert [e["ref"] for e in credits(store)] == [
        gateway.tx_key("sam", market, k) for k in range(3)
    ]
    assert [e["delta"] for e in credits(store)] == nets
    assert cursor(store, market) == {"next": 3, "earned": sum(nets), "sales": 3}
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_only_new_sales_are_credited_on_a_later_pass(store, clock, market):
    sell(store, clock, market)
    credit.credit_all(store, clock)
    second = sell(store, clock, market, "cat")
    assert credit.credit_all(store, clock)["credited"] == 1
    assert balance(store, "sam") == 98_500 + second.price - buy.sale_fee(second.price)
    assert cursor(store, market)["next"] == 2


def test_a_sale_without_its_tx_yet_stops_the_cursor(store, clock, market):
    sell(store, clock, market)
    half_bought(store, clock, market, 1, 2 * M)
    assert credit.credit_all(store, clock)["credited"] == 1
    assert cursor(store, market)["next"] == 1
    clock.advance(locks.lease_seconds())
    run_recovery(store, clock)  # the buy recovery writes the tx and debits cat
    assert credit.credit_all(store, clock)["credited"] == 1
    assert cursor(store, market)["next"] == 2
    assert_audit_clean(store)


def test_a_sale_whose_buyer_is_not_debited_yet_is_not_credited(store, clock, market):
    # The tx exists but the buyer still holds the money: the campaign's `last` has not moved.
    half_bought(store, clock, market, 0, M, tx_too=True)
    assert credit.credit_all(store, clock)["credited"] == 0
    assert tx(store, market, 0)["state"] == "uncredited"
    assert run_audit(store, check_locks=False).ok
    clock.advance(locks.lease_seconds())
    run_recovery(store, clock)
    assert credit.credit_all(store, clock)["credited"] == 1
    assert_audit_clean(store)


def test_a_busy_seller_is_skipped_then_credited_next_pass(store, clock, market):
    other = gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    sell(store, clock, market)
    sell(store, clock, other, "cat")
    lock = locks.take_lock(store, clock, "sam", "adjust", "adjust:x", delta=5, reason="r")
    counters = credit.credit_all(store, clock)
    # Both campaigns wait; the second is not even walked once the seller is known busy.
    assert (counters["credited"], counters["busy"], counters["campaigns"]) == (0, 2, 1)
    assert tx(store, market, 0)["state"] == "uncredited"
    locks.settle(store, clock, "sam", lock["token"], 5)
    assert credit.credit_all(store, clock)["credited"] == 2
    assert balance(store, "sam") == 5 + 2 * 98_500
    assert_audit_clean(store)


def many_sellers_with_sales(store, clock, sellers=6):
    make_market(store, clock, funds=10**12)
    for i in range(sellers):
        name = f"seller{i}"
        ensure_account(store, clock, name)
        for _ in range(2):
            n = gateway.create_campaign(store, clock, name, M, 24, 300, 250, [])
            for buyer in ("bob", "cat"):
                clock.advance(60)
                buy.buy_next_slot(store, clock, buyer, name, n, 0, HUGE)
    return [f"seller{i}" for i in range(sellers)]


def test_a_pass_crediting_sellers_in_parallel_credits_each_sale_once(store, clock):
    sellers = many_sellers_with_sales(store, clock)
    counters = credit.credit_all(store, clock, threads=4)
    assert (counters["credited"], counters["errors"], counters["busy"]) == (24, 0, 0)
    for name in sellers:
        assert len(credits(store, name)) == 4
    assert_audit_clean(store)
    assert writes_of(credit.credit_all, store, clock) == []


def test_two_parallel_passes_at_once_credit_each_sale_once(store, clock):
    many_sellers_with_sales(store, clock)
    results = []
    passes = [
        threading.Thread(target=lambda: results.append(credit.credit_all(store, clock, threads=4)))
        for _ in range(2)
    ]
    for t in passes:
        t.start()
    for t in passes:
        t.join()
    credited = sum(r["credited"] for r in results)
    assert credited + credit.credit_all(store, clock)["credited"] == 24
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)


def test_a_busy_seller_waits_while_the_others_are_credited_in_parallel(store, clock):
    sellers = many_sellers_with_sales(store, clock)
    lock = locks.take_lock(store, clock, "seller0", "adjust", "adjust:x", delta=5, reason="r")
    counters = credit.credit_all(store, clock, threads=4)
    # seller0's first campaign finds the lock, its second is not walked: both wait.
    assert (counters["credited"], counters["busy"]) == (20, 2)
    assert credits(store, "seller0") == []
    locks.settle(store, clock, "seller0", lock["token"], 5)
    assert credit.run_creditor(store, clock)["credited"] == 4
    assert all(len(credits(store, name)) == 4 for name in sellers)
    assert_audit_clean(store)


def test_a_second_pass_writes_nothing(store, clock, market):
    sell(store, clock, market)
    sell(store, clock, market, "cat")
    credit.credit_all(store, clock)
    assert writes_of(credit.credit_all, store, clock) == []


def test_a_sale_to_its_own_seller_from_before_they_were_refused_is_credited_too(
    store, clock, market, monkeypatch
):
    # Buying one's own slot is refused now (adspace.buy.OwnCampaign); a store may still hold
    # such sales from before, and crediting them must still balance.
    adjust_balance(store, clock, "sam", 1_000_000, "funding")
    gateway.create_filler(store, clock, "sam", "own", "h", "https://x.test/", 300, 250, "0")
    monkeypatch.setattr(buy, "is_own_campaign", lambda buyer, campaign: False)
    sell(store, clock, market, "sam")
    monkeypatch.undo()
    credit.credit_all(store, clock)
    assert balance(store, "sam") == 1_000_000 - M + 98_500
    assert_audit_clean(store)


# --- crashes and rivals -------------------------------------------------------------------------


def credit_lock(store, clock, n, k):
    t = tx(store, n, k)
    return locks.take_lock(
        store, clock, "sam", "credit", gateway.tx_key("sam", n, k),
        owner="sam", n=n, slot=k, amount=t["amount"], fee=t["fee"],
    )  # fmt: skip


def test_recovery_settles_a_credit_that_committed_then_crashed(store, clock, market):
    # The original's unfinished case: seller locked to a tx already credited.
    sell(store, clock, market)
    lock = credit_lock(store, clock, market, 0)
    assert credit._commit(store, clock, lock["ref"], lock["token"]) == lock["token"]
    clock.advance(locks.lease_seconds())
    assert run_recovery(store, clock)["locks"] == 1
    assert balance(store, "sam") == 98_500
    assert credit.credit_all(store, clock)["credited"] == 0  # the cursor catches up, no credit
    assert cursor(store, market) == {"next": 1, "earned": 98_500, "sales": 1}
    assert_audit_clean(store)


def test_recovery_commits_a_credit_that_only_took_its_lock(store, clock, market):
    sell(store, clock, market)
    credit_lock(store, clock, market, 0)
    clock.advance(locks.lease_seconds())
    run_recovery(store, clock)
    assert tx(store, market, 0)["state"] == "credited"
    assert balance(store, "sam") == 98_500
    assert_audit_clean(store)


def test_a_stale_credit_lock_for_a_tx_credited_by_a_rival_is_released(store, clock, market):
    sell(store, clock, market)
    credit.credit_all(store, clock)
    credit_lock(store, clock, market, 0)
    clock.advance(locks.lease_seconds())
    run_recovery(store, clock)
    assert balance(store, "sam") == 98_500
    assert [e["delta"] for e in credits(store)] == [98_500]
    assert_audit_clean(store)


def test_the_cursor_waits_for_a_live_committed_credit(store, clock, market):
    sell(store, clock, market)
    lock = credit_lock(store, clock, market, 0)
    credit._commit(store, clock, lock["ref"], lock["token"])
    assert credit.credit_all(store, clock)["busy"] == 1
    with pytest.raises(Exception):
        cursor(store, market)
    clock.advance(locks.lease_seconds())
    credit.credit_all(store, clock)  # finishes the expired lock itself, then moves on
    assert cursor(store, market) == {"next": 1, "earned": 98_500, "sales": 1}
    assert balance(store, "sam") == 98_500
    assert_audit_clean(store)


# --- earnings (the sell page) -------------------------------------------------------------------


def test_earnings_show_pending_sales_then_earned_ones(store, clock, market):
    assert credit.campaign_earnings(store, "sam", market) == {
        "earned": 0, "sales": 0, "pending": 0, "pendingSales": 0,
    }  # fmt: skip
    first = sell(store, clock, market)
    second = sell(store, clock, market, "cat")
    nets = [s.price - buy.sale_fee(s.price) for s in (first, second)]
    assert credit.campaign_earnings(store, "sam", market) == {
        "earned": 0, "sales": 0, "pending": sum(nets), "pendingSales": 2,
    }  # fmt: skip
    credit.credit_all(store, clock)
    assert credit.campaign_earnings(store, "sam", market) == {
        "earned": sum(nets), "sales": 2, "pending": 0, "pendingSales": 0,
    }  # fmt: skip


def test_earnings_stay_exact_while_the_cursor_lags(store, clock, market):
    sell(store, clock, market)
    lock = credit_lock(store, clock, market, 0)
    credit._commit(store, clock, lock["ref"], lock["token"])
    locks.settle(store, clock, "sam", lock["token"], 98_500)  # then died before the cursor
    assert credit.campaign_earnings(store, "sam", market)["earned"] == 98_500
    assert credit.campaign_earnings(store, "sam", market)["pending"] == 0


def test_owner_earnings_cover_every_campaign_and_skip_sales_in_flight(store, clock, market):
    other = gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    sell(store, clock, market)
    credit.credit_all(store, clock)
    sell(store, clock, other, "cat")
    half_bought(store, clock, other, 1, 2 * M, buyer="bob", tx_too=True)
    assert credit.owner_earnings(store, "sam") == {
        market: {"earned": 98_500, "sales": 1, "pending": 0, "pendingSales": 0},
        other: {"earned": 0, "sales": 0, "pending": 98_500, "pendingSales": 1},
    }
    assert credit.owner_earnings(store, "nobody") == {}
    assert credit.campaign_earnings(store, "sam", 9)["earned"] == 0


# --- the audit ----------------------------------------------------------------------------------


def test_audit_catches_a_tx_marked_credited_without_paying_the_seller(store, clock, market):
    sell(store, clock, market)
    key = gateway.tx_key("sam", market, 0)
    doc = store.get(key)
    store.replace(key, {**doc.value, "state": "credited", "creditToken": "x"}, doc.cas)
    report = run_audit(store)
    assert not report.balanced
    assert any(key in b and "[]" in b for b in report.breaches), report.breaches


def test_audit_catches_a_sale_credited_twice(store, clock, market):
    sell(store, clock, market)
    credit.credit_all(store, clock)
    again = credit_lock(store, clock, market, 0)
    locks.settle(store, clock, "sam", again["token"], 98_500)
    report = run_audit(store)
    assert any("[98500, 98500]" in b for b in report.breaches), report.breaches


def test_audit_catches_a_credit_for_an_uncredited_sale(store, clock, market):
    sell(store, clock, market)
    lock = credit_lock(store, clock, market, 0)
    locks.settle(store, clock, "sam", lock["token"], 98_500)
    report = run_audit(store)
    assert any("not a credited sale" in b for b in report.breaches), report.breaches


def test_audit_counts_a_committed_credit_in_flight_as_held(store, clock, market):
    sell(store, clock, market)
    lock = credit_lock(store, clock, market, 0)
    credit._commit(store, clock, lock["ref"], lock["token"])
    report = run_audit(store, check_locks=False)
    assert report.ok, report.lines()
    assert report.held["seller credits in flight"] == 98_500
    assert report.held["sale fees earned"] == 1_500
    assert not run_audit(store).ok  # the lock itself is still a breach in a full audit


# --- the worker pass over many campaigns --------------------------------------------------------


def test_an_idle_pass_over_2000_campaigns_costs_a_few_batched_reads(clock):
    store = MemoryStore()
    make_market(store, clock)
    for _ in range(1999):
        gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    buy.buy_next_slot(store, clock, "bob", "sam", 7, 0, HUGE)
    credit.credit_all(store, clock)
    hook = CountingHook()
    assert credit.credit_all(HookedStore(store, hook), clock)["credited"] == 0
    # directory: counter + 4 pages; then per 500 campaigns: cursors + next txs.
    assert hook.calls == 1 + 4 + 4 * 2
    assert hook.writes == []


# --- registrations and the command --------------------------------------------------------------


def test_the_creditor_is_a_worker_task_and_credit_locks_have_a_finisher():
    assert workers.registered_tasks()["creditor"] is credit.run_creditor
    assert locks._finishers["credit"] is credit.finish_credit_lock


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def test_credit_sellers_once_credits_and_beats(store, clock, market):
    sell(store, clock, market)
    out = run("credit_sellers", "--once")
    assert "credit pass 1: credited 1 sale(s), 0.00098500 BTC" in out
    assert balance(store, "sam") == 98_500
    beat = last_beat(store, "credit_sellers")
    assert beat["at"] == clock.now() and beat["credited"] == 1 and beat["passes"] == 1
    assert "credited 0 sale(s)" in run("credit_sellers", "--once")


def test_credit_sellers_is_quiet_at_verbosity_0(store, clock, market):
    sell(store, clock, market)
    assert run("credit_sellers", "--once", verbosity=0) == ""
    assert balance(store, "sam") == 98_500


def test_credit_sellers_loops_every_interval_until_asked_to_stop(
    store, clock, market, monkeypatch, settings
):
    settings.WORKER_INTERVAL_SECONDS = 7
    slept = []

    def sleep(self, seconds):
        # Stands in for SIGTERM arriving while the loop sleeps between passes.
        slept.append(seconds)
        if len(slept) == 2:
            self.request()

    monkeypatch.setattr(StopFlag, "sleep", sleep)
    sell(store, clock, market)
    out = run("credit_sellers", verbosity=2)
    assert slept == [7, 7]
    assert "credit pass 1: credited 1 sale(s)" in out
    assert "credit pass 3" not in out
    assert "credit_sellers stopped after 2 pass(es)." in out
    assert last_beat(store, "credit_sellers")["passes"] == 2


def test_the_sell_page_shows_earnings_and_embed_snippets(client, db, store, clock):
    from accounts.models import User
    from adspace.credit import credit_all
    from tests.test_buy import make_market

    n = make_market(store, clock)
    user = User.objects.create_user(username="sam", password="a-long-password-1")
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, 10**12)
    credit_all(store, clock)
    client.force_login(user)
    html = client.get("/ads/sell-ad-space/").content.decode()
    assert "0.00098500" in html  # 100 000 sats sold, 1.5 % fee kept
    assert "data-campaign=&#34;sam/0&#34;" in html and "/embed/sam/0" in html
