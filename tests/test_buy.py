"""The buy protocol, called directly: outcomes, lagging campaigns and recovery."""

from __future__ import annotations

import pytest

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from accounts.recovery import run_recovery
from adspace import buy, gateway
from docstore import NotFound
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once

M = 100_000
HUGE = 10**12


def make_market(store, clock, buyers=("bob", "cat"), funds=1_000_000):
    ensure_account(store, clock, "sam")
    n = gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    for name in buyers:
        ensure_account(store, clock, name)
        adjust_balance(store, clock, name, funds, "funding")
        gateway.create_filler(store, clock, name, "main", "hover", "https://x.test/", 300, 250, "0")
        gateway.create_filler(store, clock, name, "small", "h", "https://x.test/", 100, 100, "0")
    return n


@pytest.fixture
def market(store, clock):
    return make_market(store, clock)


def balance(store, name):
    return get_account(store, name).value["balance"]


def test_first_buy_costs_the_minimum_and_starts_now(store, clock, market):
    sale = buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    assert (sale.slot, sale.price, sale.starts_at) == (0, M, clock.now())
    assert sale.ends_at == clock.now() + 24 * 3600
    assert balance(store, "bob") == 1_000_000 - M
    campaign = gateway.get_campaign(store, "sam", market).value
    assert campaign["last"]["slot"] == 0
    tx = store.get(gateway.tx_key("sam", market, 0)).value
    assert (tx["amount"], tx["fee"], tx["state"]) == (M, 1500, "uncredited")
    assert_audit_clean(store)


def test_next_slot_is_queued_at_double_the_price(store, clock, market):
    first = buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    second = buy.buy_next_slot(store, clock, "cat", "sam", market, 0, 2 * M)
    assert second.price == 2 * M
    assert second.starts_at == first.ends_at
    assert_each_sale_charged_once(store)


def test_price_higher_than_accepted_sells_nothing(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    with pytest.raises(buy.PriceChanged) as exc:
        buy.buy_next_slot(store, clock, "cat", "sam", market, 0, M)
    assert exc.value.price == 2 * M
    assert balance(store, "cat") == 1_000_000


def test_losing_buyer_is_not_charged(store, clock, market):
    # cat locks slot 0 but bob inserts it first: cat's insert finds bob's slot.
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    lock = locks.take_lock(
        store, clock, "cat", "buy", gateway.slot_key("sam", market, 0), spend=M,
        owner="sam", n=market, slot=0, filler=gateway.filler_key("cat", 0), price=M,
        purchasedAt=clock.now(), startsAt=clock.now(), endsAt=clock.now() + 86400,
    )  # fmt: skip
    buy.finish_buy_lock(store, clock, "cat", lock)
    assert balance(store, "cat") == 1_000_000
    assert get_account(store, "cat").value["lock"] is None
    assert_audit_clean(store)


def test_ad_of_the_wrong_size_is_refused(store, clock, market):
    with pytest.raises(buy.FillerInvalid, match="300x250"):
        buy.buy_next_slot(store, clock, "bob", "sam", market, 1, HUGE)


def test_someone_elses_ad_is_refused(store, clock, market):
    with pytest.raises(buy.FillerInvalid):
        buy.buy_next_slot(store, clock, "bob", "sam", market, 7, HUGE)


def test_a_seller_cannot_buy_their_own_slot_and_is_not_charged(store, clock, market):
    adjust_balance(store, clock, "sam", 1_000_000, "funding")
    gateway.create_filler(store, clock, "sam", "mine", "h", "https://x.test/", 300, 250, "0")
    before = store.get(gateway.campaign_key("sam", market))
    account = get_account(store, "sam")
    with pytest.raises(buy.OwnCampaign) as refused:
        buy.buy_next_slot(store, clock, "sam", "sam", market, 0, HUGE)
    assert "your own campaign" in str(refused.value)
    assert get_account(store, "sam").cas == account.cas  # no lock taken, nothing charged
    assert store.get(gateway.campaign_key("sam", market)).cas == before.cas
    with pytest.raises(NotFound):
        store.get(gateway.slot_key("sam", market, 0))
    # Others still buy it at the minimum: the seller could not double the next price.
    assert buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M).price == M


def test_unknown_campaign_is_refused(store, clock, market):
    with pytest.raises(buy.CampaignMissing):
        buy.buy_next_slot(store, clock, "bob", "sam", 9, 0, HUGE)


def test_short_balance_is_refused_and_changes_nothing(store, clock):
    n = make_market(store, clock, funds=M - 1)
    with pytest.raises(locks.InsufficientFunds):
        buy.buy_next_slot(store, clock, "bob", "sam", n, 0, HUGE)
    assert get_account(store, "bob").value["lock"] is None
    with pytest.raises(Exception):
        store.get(gateway.slot_key("sam", n, 0))


def test_live_lock_makes_the_buyer_wait(store, clock, market):
    locks.take_lock(store, clock, "bob", "adjust", "adjust:x", delta=1, reason="r")
    with pytest.raises(locks.AccountBusy):
        buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)


def test_next_buyer_finishes_a_sale_the_campaign_lags_behind(store, clock, market):
    # bob's sale got as far as the slot insert, then the process died.
    lock = locks.take_lock(
        store, clock, "bob", "buy", gateway.slot_key("sam", market, 0), spend=M,
        owner="sam", n=market, slot=0, filler=gateway.filler_key("bob", 0), price=M,
        purchasedAt=clock.now(), startsAt=clock.now(), endsAt=clock.now() + 86400,
    )  # fmt: skip
    assert buy._insert_slot(store, "bob", lock)
    clock.advance(60)
    sale = buy.buy_next_slot(store, clock, "cat", "sam", market, 0, HUGE)
    assert sale.slot == 1
    assert balance(store, "bob") == 1_000_000 - M
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_recovery_rolls_a_stale_buy_lock_forward(store, clock, market):
    lock = locks.take_lock(
        store, clock, "bob", "buy", gateway.slot_key("sam", market, 0), spend=M,
        owner="sam", n=market, slot=0, filler=gateway.filler_key("bob", 0), price=M,
        purchasedAt=clock.now(), startsAt=clock.now(), endsAt=clock.now() + 86400,
    )  # fmt: skip
    assert lock
    clock.advance(locks.lease_seconds())
    assert run_recovery(store, clock)["locks"] == 1
    assert gateway.get_campaign(store, "sam", market).value["last"]["slot"] == 0
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_recovery_pass_over_campaigns_finishes_a_lagging_sale(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    campaign = gateway.get_campaign(store, "sam", market)
    store.replace(
        gateway.campaign_key("sam", market), {**campaign.value, "last": None}, campaign.cas
    )
    assert run_recovery(store, clock)["campaigns"] == 1
    assert gateway.get_campaign(store, "sam", market).value["last"]["slot"] == 0
    assert_audit_clean(store)


def test_slots_stay_contiguous_over_many_sales(store, clock):
    market = make_market(store, clock, funds=100_000_000)
    for i in range(6):
        clock.advance(3600)
        name = "bob" if i % 2 else "cat"
        buy.buy_next_slot(store, clock, name, "sam", market, 0, HUGE)
    slots = gateway.get_slots(store, "sam", market, 0, 10)
    assert sorted(slots) == list(range(6))
    for k in range(1, 6):
        assert slots[k]["startsAt"] == slots[k - 1]["endsAt"]
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)
