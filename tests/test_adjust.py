from __future__ import annotations

import pytest

from accounts import locks
from accounts.adjust import AdjustError, adjust_balance
from accounts.audit import run_audit
from accounts.gateway import ensure_account, full_ledger, get_account


@pytest.fixture
def alice(store, clock):
    ensure_account(store, clock, "alice")
    return "alice"


def test_credit_adds_to_balance_and_ledger(store, clock, alice):
    assert adjust_balance(store, clock, alice, 5000, "goodwill")
    account = get_account(store, alice).value
    assert account["balance"] == 5000
    assert account["lock"] is None
    [entry] = account["ledger"]
    assert entry["kind"] == "adjust" and entry["delta"] == 5000 and entry["balanceAfter"] == 5000
    assert entry["reason"] == "goodwill"


def test_debit_below_zero_is_refused_and_changes_nothing(store, clock, alice):
    adjust_balance(store, clock, alice, 100, "seed")
    before = get_account(store, alice)
    with pytest.raises(AdjustError, match="below zero"):
        adjust_balance(store, clock, alice, -101, "too much")
    assert get_account(store, alice).value == before.value


def test_same_request_id_applies_once(store, clock, alice):
    assert adjust_balance(store, clock, alice, 700, "refund", request_id="r1")
    assert not adjust_balance(store, clock, alice, 700, "refund", request_id="r1")
    assert get_account(store, alice).value["balance"] == 700


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
def test_bad_reason_is_refused(store, clock, alice, reason):
    with pytest.raises(AdjustError):
        adjust_balance(store, clock, alice, 1, reason)
    assert get_account(store, alice).value["ledger"] == []


@pytest.mark.parametrize("delta", [0, True, 1.5, 21_000_000 * 10**8 + 1])
def test_bad_amount_is_refused(store, clock, alice, delta):
    with pytest.raises(AdjustError):
        adjust_balance(store, clock, alice, delta, "why")


def test_ledger_rolls_into_pages_and_still_sums(store, clock, alice):
    for i in range(250):
        adjust_balance(store, clock, alice, i + 1, "n")
    account = get_account(store, alice).value
    assert account["ledgerPages"] == 2 and len(account["ledger"]) == 50
    entries = full_ledger(store, alice)
    assert len(entries) == 250
    assert sum(e["delta"] for e in entries) == account["balance"] == 250 * 251 // 2
    assert run_audit(store).ok


def test_live_lock_makes_account_busy(store, clock, alice):
    locks.take_lock(store, clock, alice, "adjust", "adjust:x", delta=5, reason="r")
    with pytest.raises(locks.AccountBusy):
        adjust_balance(store, clock, alice, 1, "other")


def test_expired_lock_is_finished_before_the_next_operation(store, clock, alice):
    locks.take_lock(store, clock, alice, "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(locks.lease_seconds())
    assert adjust_balance(store, clock, alice, 1, "other")
    assert get_account(store, alice).value["balance"] == 6
