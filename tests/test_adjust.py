from __future__ import annotations

import pytest

from accounts import locks
from accounts.adjust import AdjustError, adjust_balance
from accounts.audit import run_audit
from accounts.gateway import LEDGER_PAGE_SIZE, adjust_key, ensure_account, full_ledger, get_account


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


def test_a_request_id_is_refused_forever_however_many_entries_follow(store, clock, alice):
    assert adjust_balance(store, clock, alice, 700, "refund", request_id="r1")
    for i in range(LEDGER_PAGE_SIZE + 1):
        adjust_balance(store, clock, alice, 1, "filler", request_id=f"f{i}")
    assert all(e["ref"] != "adjust:r1" for e in get_account(store, alice).value["ledger"])
    before = get_account(store, alice).value["balance"]
    assert not adjust_balance(store, clock, alice, 700, "refund", request_id="r1")
    assert get_account(store, alice).value["balance"] == before


def test_a_request_id_used_on_one_account_is_refused_on_another(store, clock, alice):
    ensure_account(store, clock, "bob")
    assert adjust_balance(store, clock, alice, 700, "refund", request_id="r1")
    assert not adjust_balance(store, clock, "bob", 700, "refund", request_id="r1")
    assert get_account(store, "bob").value["balance"] == 0


def test_the_request_document_says_who_did_what(store, clock, alice):
    adjust_balance(store, clock, alice, 900, "goodwill", request_id="r9", staff="carol")
    doc = store.get(adjust_key("r9")).value
    assert (doc["username"], doc["delta"], doc["reason"], doc["staff"]) == (
        "alice",
        900,
        "goodwill",
        "carol",
    )
    [entry] = get_account(store, alice).value["ledger"]
    assert entry["staff"] == "carol" and entry["request"] == "r9"


def test_a_refused_debit_leaves_its_request_id_unused(store, clock, alice):
    with pytest.raises(AdjustError, match="below zero"):
        adjust_balance(store, clock, alice, -5, "too much", request_id="r1")
    assert adjust_balance(store, clock, alice, 5, "fixed", request_id="r1")


@pytest.mark.parametrize("request_id", ["a b", "x" * 65, "::", "é"])
def test_a_bad_request_id_is_refused(store, clock, alice, request_id):
    with pytest.raises(AdjustError, match="request id"):
        adjust_balance(store, clock, alice, 1, "why", request_id=request_id)
    assert get_account(store, alice).value["ledger"] == []


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
