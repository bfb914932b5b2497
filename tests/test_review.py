"""Review of sold ads, called directly: the window, approvals, rejections with refunds, staff
take-downs, what serving shows meanwhile, and the audit's new invariants."""

from __future__ import annotations

import time

import pytest

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.audit import run_audit
from accounts.gateway import ensure_account, full_ledger, get_account
from adspace import buy, credit, gateway, pricing, review, serving
from docstore.backends.memory import MemoryStore
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, M, make_market

HOUR = 3600
FEE = 1500  # of a sale at M


@pytest.fixture(autouse=True)
def review_window(settings):
    settings.REVIEW_HOURS = 24


@pytest.fixture
def market(store, clock):
    return make_market(store, clock)


def balance(store, name):
    return get_account(store, name).value["balance"]


def tx(store, n, k):
    return store.get(gateway.tx_key("sam", n, k)).value


def cursor(store, n):
    doc = store.get_multi([gateway.creditcursor_key("sam", n)]).get(
        gateway.creditcursor_key("sam", n)
    )
    return doc.value if doc else {"next": 0, "earned": 0, "sales": 0}


def sell_two(store, clock, n):
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, HUGE)
    clock.advance(60)
    buy.buy_next_slot(store, clock, "cat", "sam", n, 0, HUGE)


def showing_index(store, n, now):
    return serving.showing(store, "sam", n, now).index


# --- the window and the creditor ------------------------------------------------------------


def test_review_window_is_the_purchase_plus_review_hours_or_the_slot_end(store, clock, market):
    sell_two(store, clock, market)
    first, second = tx(store, market, 0), tx(store, market, 1)
    slot0 = store.get(gateway.slot_key("sam", market, 0)).value
    # Slot 0 starts now and lasts 24 h: its end and the purchase + 24 h coincide.
    assert first["reviewUntil"] == min(slot0["purchasedAt"] + 24 * HOUR, slot0["endsAt"])
    slot1 = store.get(gateway.slot_key("sam", market, 1)).value
    assert second["reviewUntil"] == slot1["purchasedAt"] + 24 * HOUR < slot1["endsAt"]


def test_review_window_ends_with_a_short_slot(store, clock, settings):
    ensure_account(store, clock, "sam")
    n = gateway.create_campaign(store, clock, "sam", M, 1, 300, 250, [])
    make_market(store, clock, buyers=("bob",))
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, HUGE)
    assert tx(store, n, 0)["reviewUntil"] == clock.now() + HOUR


def test_sale_in_review_is_credited_only_when_its_window_closes(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    credit.credit_all(store, clock)
    assert tx(store, market, 0)["state"] == "uncredited"
    assert balance(store, "sam") == 0
    assert credit.campaign_earnings(store, "sam", market)["pending"] == M - FEE
    clock.advance(24 * HOUR - 1)
    credit.credit_all(store, clock)
    assert balance(store, "sam") == 0
    clock.advance(1)
    credit.credit_all(store, clock)
    assert balance(store, "sam") == M - FEE
    assert cursor(store, market) == {"next": 1, "earned": M - FEE, "sales": 1}
    assert_audit_clean(store)


def test_approving_a_later_sale_credits_it_while_the_cursor_waits(store, clock, market):
    sell_two(store, clock, market)
    review.approve_sale(store, clock, "sam", market, 1)
    credit.credit_all(store, clock)
    assert (tx(store, market, 0)["state"], tx(store, market, 1)["state"]) == (
        "uncredited",
        "credited",
    )
    first, second = (credit.net_amount(tx(store, market, k)) for k in (0, 1))
    assert balance(store, "sam") == second
    # The cursor stays at the sale in review, never skipping it.
    assert cursor(store, market)["next"] == 0
    assert credit.campaign_earnings(store, "sam", market) == {
        "earned": second,
        "sales": 1,
        "pending": first,
        "pendingSales": 1,
    }
    clock.advance(24 * HOUR)
    credit.credit_all(store, clock)
    assert cursor(store, market) == {"next": 2, "earned": first + second, "sales": 2}
    assert balance(store, "sam") == first + second
    assert_audit_clean(store)


# --- rejection ------------------------------------------------------------------------------


def test_rejection_refunds_the_buyer_in_full_and_credits_the_seller_nothing(store, clock, market):
    sell_two(store, clock, market)
    price_before = pricing.current_price(
        M, gateway.get_campaign(store, "sam", market).value["last"], clock.now()
    )
    review.reject_sale(store, clock, "sam", "sam", market, 0, "  Misleading claims  ")
    assert balance(store, "bob") == 1_000_000
    rejected = tx(store, market, 0)
    assert rejected["state"] == "rejected"
    assert rejected["rejection"]["reason"] == "Misleading claims"
    assert rejected["rejection"]["by"] == "sam"
    refunds = [e for e in full_ledger(store, "bob") if e["kind"] == "reject"]
    assert [(e["ref"], e["delta"]) for e in refunds] == [(gateway.tx_key("sam", market, 0), M)]
    # The next slot's price is not affected: `last` still points at the last sale.
    campaign = gateway.get_campaign(store, "sam", market).value
    assert campaign["last"]["slot"] == 1
    assert pricing.current_price(M, campaign["last"], clock.now()) == price_before
    clock.advance(25 * HOUR)
    credit.credit_all(store, clock)
    second = credit.net_amount(tx(store, market, 1))
    assert balance(store, "sam") == second  # sale 1 only
    assert cursor(store, market) == {"next": 2, "earned": second, "sales": 1}
    assert not [
        e for e in full_ledger(store, "sam") if e["ref"] == gateway.tx_key("sam", market, 0)
    ]
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)


def test_a_rejected_ad_shows_the_placeholder_at_once(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    now = clock.now()
    assert showing_index(store, market, now) == 0  # cached in this process now
    review.reject_sale(store, clock, "sam", "sam", market, 0, "no")
    answer = serving.showing(store, "sam", market, now)
    assert (answer.index, answer.slot) == (None, None)
    assert serving.live_slot(store, "sam", market, now) is None


def test_rejecting_after_the_window_is_refused_and_changes_nothing(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    clock.advance(24 * HOUR)
    before = store.dump()
    with pytest.raises(review.ReviewClosed):
        review.reject_sale(store, clock, "sam", "sam", market, 0, "late")
    with pytest.raises(review.ReviewClosed):
        review.approve_sale(store, clock, "sam", market, 0)
    assert store.dump() == before


@pytest.mark.parametrize("reason", ["", "   ", "x" * (review.MAX_REASON + 1), "a\x00b", None, 7])
def test_bad_reasons_are_refused_and_change_nothing(store, clock, market, reason):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    before = store.dump()
    with pytest.raises(review.BadReason):
        review.reject_sale(store, clock, "sam", "sam", market, 0, reason)
    with pytest.raises(review.BadReason):
        review.take_down(store, clock, "admin", "sam", market, 0, reason)
    assert store.dump() == before


@pytest.mark.parametrize("k", [-1, 1, 10**9])
def test_forged_sale_indexes_are_refused_and_change_nothing(store, clock, market, k):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    before = store.dump()
    with pytest.raises(review.SaleMissing):
        review.reject_sale(store, clock, "sam", "sam", market, k, "why")
    with pytest.raises(review.SaleMissing):
        review.approve_sale(store, clock, "sam", market, k)
    with pytest.raises(review.SaleMissing):
        review.reject_sale(store, clock, "sam", "sam", market + 1, 0, "why")
    assert store.dump() == before


def test_a_decided_sale_cannot_be_decided_again(store, clock, market):
    sell_two(store, clock, market)
    review.reject_sale(store, clock, "sam", "sam", market, 0, "no")
    review.approve_sale(store, clock, "sam", market, 1)
    before = store.dump()
    for k in (0, 1):
        with pytest.raises(review.AlreadyDecided):
            review.reject_sale(store, clock, "sam", "sam", market, k, "again")
        with pytest.raises(review.AlreadyDecided):
            review.approve_sale(store, clock, "sam", market, k)
    assert store.dump() == before
    assert balance(store, "bob") == 1_000_000


def test_a_sale_still_being_bought_cannot_be_reviewed(store, clock, market):
    # The slot exists but the buyer's debit and `last` are still in flight: not a finished sale.
    lock = locks.take_lock(
        store, clock, "bob", "buy", gateway.slot_key("sam", market, 0), spend=M,
        owner="sam", n=market, slot=0, filler=gateway.filler_key("bob", 0), price=M,
        purchasedAt=clock.now(), startsAt=clock.now(), endsAt=clock.now() + 86400,
    )  # fmt: skip
    buy._insert_slot(store, "bob", lock)
    with pytest.raises(review.SaleMissing):
        review.reject_sale(store, clock, "sam", "sam", market, 0, "no")


def test_when_the_creditor_commits_first_the_rejection_has_no_effect(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    # Staff's rejection takes the buyer's lock; the sale is approved and credited meanwhile.
    key = gateway.tx_key("sam", market, 0)
    lock = locks.take_lock(
        store, clock, "bob", "reject", key, owner="sam", n=market, slot=0, amount=M,
        reason="r", by="admin", staff=True, endsAt=clock.now() + 86400,
    )  # fmt: skip
    review.approve_sale(store, clock, "sam", market, 0)
    credit.credit_all(store, clock)
    review.finish_reject_lock(store, clock, "bob", lock)
    assert tx(store, market, 0)["state"] == "credited"
    assert balance(store, "bob") == 1_000_000 - M
    assert get_account(store, "bob").value["lock"] is None
    assert balance(store, "sam") == M - FEE
    assert_audit_clean(store)


def test_when_the_rejection_commits_first_the_creditor_credits_nothing(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    key = gateway.tx_key("sam", market, 0)
    clock.advance(24 * HOUR)  # window closed: the creditor is due
    lock = locks.take_lock(store, clock, "sam", "credit", key, owner="sam", n=market, slot=0,
                           amount=M, fee=FEE)  # fmt: skip
    # A staff rejection lands its commit before the creditor's.
    review.reject_sale(store, clock, "admin", "sam", market, 0, "illegal", staff=True)
    credit.finish_credit_lock(store, clock, "sam", lock)
    assert balance(store, "sam") == 0
    assert get_account(store, "sam").value["lock"] is None
    credit.credit_all(store, clock)
    assert cursor(store, market) == {"next": 1, "earned": 0, "sales": 0}
    assert balance(store, "bob") == 1_000_000
    assert_audit_clean(store)


# --- approve-first mode ---------------------------------------------------------------------


def test_approve_first_serves_the_placeholder_until_approved(store, clock, market):
    review.set_mode(store, "sam", market, "approve")
    sell_two(store, clock, market)
    now = clock.now()
    answer = serving.showing(store, "sam", market, now)
    assert answer.slot is None
    review.approve_sale(store, clock, "sam", market, 0)
    assert showing_index(store, market, now) == 0


def test_approve_first_shows_an_undecided_ad_once_its_window_closes(store, clock, settings):
    settings.REVIEW_HOURS = 2
    n = make_market(store, clock)
    review.set_mode(store, "sam", n, "approve")
    buy.buy_next_slot(store, clock, "bob", "sam", n, 0, HUGE)
    now = clock.now()
    answer = serving.showing(store, "sam", n, now)
    assert (answer.slot, answer.until) == (None, now + 2 * HOUR)
    assert showing_index(store, n, now + 2 * HOUR) == 0


def test_show_at_once_serves_an_undecided_ad(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    assert showing_index(store, market, clock.now()) == 0


def test_unknown_review_modes_are_refused(store, clock, market):
    before = store.dump()
    with pytest.raises(review.BadMode):
        review.set_mode(store, "sam", market, "never")
    assert store.dump() == before


def test_decisions_on_the_campaign_are_pruned_once_their_slot_ends(store, clock, market):
    sell_two(store, clock, market)
    review.approve_sale(store, clock, "sam", market, 0)
    clock.advance(24 * HOUR - 60)  # slot 0 has just ended; sale 1 is still in review
    review.reject_sale(store, clock, "sam", "sam", market, 1, "no")
    assert gateway.get_campaign(store, "sam", market).value["reviews"] == {
        "1": {"state": "rejected", "endsAt": tx_slot_end(store, market, 1)}
    }


def tx_slot_end(store, n, k):
    return store.get(gateway.slot_key("sam", n, k)).value["endsAt"]


# --- staff take-downs -----------------------------------------------------------------------


def test_staff_take_down_before_credit_is_a_rejection_with_refund(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    review.approve_sale(store, clock, "sam", market, 0)  # approved, not yet credited
    assert review.take_down(store, clock, "admin", "sam", market, 0, "illegal") == "refunded"
    assert tx(store, market, 0)["rejection"] == {
        "reason": "illegal", "by": "admin", "staff": True, "at": clock.now(),
    }  # fmt: skip
    assert balance(store, "bob") == 1_000_000
    assert showing_index(store, market, clock.now()) is None
    assert_audit_clean(store)


def test_staff_take_down_after_credit_only_hides_the_ad(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    review.approve_sale(store, clock, "sam", market, 0)
    credit.credit_all(store, clock)
    assert showing_index(store, market, clock.now()) == 0
    assert review.take_down(store, clock, "admin", "sam", market, 0, "illegal") == "hidden"
    assert showing_index(store, market, clock.now()) is None
    assert tx(store, market, 0)["takenDown"]["reason"] == "illegal"
    assert (balance(store, "bob"), balance(store, "sam")) == (1_000_000 - M, M - FEE)
    with pytest.raises(review.AlreadyDecided):
        review.take_down(store, clock, "admin", "sam", market, 0, "again")
    assert_audit_clean(store)


# --- the audit's new invariants -------------------------------------------------------------


def test_audit_reports_a_rejected_sale_whose_seller_was_credited(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    review.approve_sale(store, clock, "sam", market, 0)
    credit.credit_all(store, clock)
    doc = store.get(gateway.tx_key("sam", market, 0))
    forged = {**doc.value, "state": "rejected", "rejectToken": "x"}
    del forged["creditToken"]
    store.replace(gateway.tx_key("sam", market, 0), forged, doc.cas)
    report = run_audit(store)
    assert any("has a credit for" in b for b in report.breaches), report.lines()
    assert any("refunded to bob as []" in b for b in report.breaches), report.lines()


def test_audit_reports_a_refund_without_a_rejected_sale(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    lock = locks.take_lock(store, clock, "cat", "reject", gateway.tx_key("sam", market, 0))
    locks.settle(store, clock, "cat", lock["token"], M)
    report = run_audit(store)
    assert any("cat has a rejection refund" in b for b in report.breaches), report.lines()
    assert not report.balanced


def test_money_held_counts_a_refund_in_flight(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    key = gateway.tx_key("sam", market, 0)
    lock = locks.take_lock(
        store, clock, "bob", "reject", key, owner="sam", n=market, slot=0, amount=M,
        reason="r", by="sam", staff=False, endsAt=clock.now() + 86400,
    )  # fmt: skip
    assert review._commit(store, clock, lock) == lock["token"]
    report = run_audit(store, check_locks=False)
    assert report.balanced and not report.breaches, report.lines()
    assert report.held["rejection refunds in flight"] == M
    review.finish_reject_lock(store, clock, "bob", lock)
    assert_audit_clean(store)


# --- performance ----------------------------------------------------------------------------


def test_a_creditor_pass_over_2000_campaigns_in_review_is_fast(clock):
    store = MemoryStore()
    ensure_account(store, clock, "bob")
    adjust_balance(store, clock, "bob", HUGE, "funding")
    gateway.create_filler(store, clock, "bob", "main", "h", "https://x.test/", 300, 250, "0")
    for s in range(40):
        seller = f"s{s}"
        ensure_account(store, clock, seller)
        for _ in range(50):
            n = gateway.create_campaign(store, clock, seller, M, 24, 300, 250, [])
            buy.buy_next_slot(store, clock, "bob", seller, n, 0, HUGE)
    started = time.perf_counter()
    counters = credit.credit_all(store, clock)
    elapsed = time.perf_counter() - started
    assert counters["credited"] == 0 and counters["campaigns"] == 2000
    assert elapsed < 2.0, f"a pass over 2000 campaigns in review took {elapsed:.2f}s"
