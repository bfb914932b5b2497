"""Executing standing orders: which order wins, at what price and second, and what is left."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.gateway import get_account
from adspace import buy, gateway, order_exec, orders, pricing
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, M, make_market

DAY = 24 * 3600


def balance(store, name):
    return get_account(store, name).value["balance"]


def order(store, i, buyer="bob"):
    return store.get(orders.order_key(buyer, i)).value


@pytest.fixture
def market(store, clock):
    """sam's campaign with one sale by dan at the minimum: the price is 2M and falls to M over
    the day."""
    n = make_market(store, clock, buyers=("bob", "cat", "dan"), funds=10_000_000)
    buy.buy_next_slot(store, clock, "dan", "sam", n, 0, HUGE)
    return n


def place(store, clock, buyer, n, limit, expires_at=None, filler=0):
    return orders.place_order(store, clock, buyer, "sam", n, filler, limit, expires_at)


def run_until_sold(store, clock, n, step=60, limit_s=2 * DAY):
    """Run the executor as the worker does until a sale happens: the clock moves straight to the
    next second an order falls due (as the worker's wait does), else by `step`. Jumping rather
    than ticking keeps this to a few passes, which matters on Couchbase."""
    sold_before = gateway.get_campaign(store, "sam", n).value["last"]["slot"]
    deadline = clock.now() + limit_s
    while clock.now() < deadline:
        _, next_due = order_exec.execute_due(store, clock)
        if gateway.get_campaign(store, "sam", n).value["last"]["slot"] != sold_before:
            return
        now = clock.now()
        clock.set(next_due if next_due is not None and next_due > now else now + step)
    raise AssertionError("nothing sold")


def test_order_buys_at_the_price_of_its_due_second_never_above_its_limit(store, clock, market):
    limit = 150_000
    place(store, clock, "bob", market, limit)
    last = gateway.get_campaign(store, "sam", market).value["last"]
    due = pricing.due_at(M, last, limit)
    clock.set(due - 1)
    order_exec.execute_due(store, clock)
    assert order(store, 0)["state"] == "open", "executed before its price was reached"
    clock.set(due)
    outcomes, _ = order_exec.execute_due(store, clock)
    assert outcomes["bought"] == 1
    sold = order(store, 0)
    assert (sold["state"], sold["slot"]) == ("bought", 1)
    price = pricing.current_price(M, last, due)
    assert sold["price"] == price <= limit
    assert balance(store, "bob") == 10_000_000 - price
    assert orders.book_summary(store, "sam", market, clock.now()).waiting == 0
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_highest_limit_wins_then_the_price_doubles_and_the_others_wait(store, clock, market):
    place(store, clock, "bob", market, 120_000)
    place(store, clock, "cat", market, 160_000)
    place(store, clock, "bob", market, 110_000)
    run_until_sold(store, clock, market)
    assert order(store, 0, "cat")["state"] == "bought"
    assert order(store, 0, "bob")["state"] == order(store, 1, "bob")["state"] == "open"
    summary = orders.book_summary(store, "sam", market, clock.now())
    assert (summary.waiting, summary.highest) == (2, 120_000)
    # The new price is double the sale; bob's 120 000 is next, once it falls that far.
    run_until_sold(store, clock, market)
    assert order(store, 0, "bob")["state"] == "bought"
    assert order(store, 1, "bob")["state"] == "open"
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_equal_limits_go_by_the_earlier_order(store, clock, market):
    place(store, clock, "cat", market, 130_000)
    clock.advance(1)
    place(store, clock, "bob", market, 130_000)
    run_until_sold(store, clock, market)
    assert order(store, 0, "cat")["state"] == "bought"
    assert order(store, 0, "bob")["state"] == "open"


def test_an_owner_who_cannot_pay_fails_with_the_reason_and_the_next_order_buys(
    store, clock, market
):
    from accounts.adjust import adjust_balance

    adjust_balance(store, clock, "cat", -9_990_000, "spent elsewhere")
    place(store, clock, "cat", market, 160_000)
    place(store, clock, "bob", market, 150_000)
    run_until_sold(store, clock, market, step=1, limit_s=DAY)
    failed = order(store, 0, "cat")
    assert failed["state"] == "failed"
    assert "Your balance was 0.00010000 BTC" in failed["reason"]
    assert balance(store, "cat") == 10_000
    assert order(store, 0, "bob")["state"] == "bought"
    assert_audit_clean(store)


def test_an_order_that_loses_the_slot_to_a_manual_buyer_waits_for_the_next_fall(
    store, clock, market
):
    place(store, clock, "bob", market, 150_000)
    clock.advance(3600)
    buy.buy_next_slot(store, clock, "cat", "sam", market, 0, HUGE)  # at a higher price
    order_exec.execute_due(store, clock)
    assert order(store, 0)["state"] == "open"
    run_until_sold(store, clock, market)
    assert order(store, 0)["state"] == "bought"
    assert_each_sale_charged_once(store)


def test_an_order_expires_unfilled(store, clock, market):
    place(store, clock, "bob", market, 110_000, expires_at=clock.now() + 3600)
    clock.advance(3600)
    outcomes, _ = order_exec.execute_due(store, clock)
    assert outcomes["expired"] == 1
    assert order(store, 0)["state"] == "expired"
    assert orders.book_summary(store, "sam", market, clock.now()).waiting == 0
    clock.advance(DAY)
    order_exec.execute_due(store, clock)
    assert balance(store, "bob") == 10_000_000


def test_an_archived_ad_fails_the_order_with_the_reason(store, clock, market):
    place(store, clock, "bob", market, 150_000)
    gateway.set_filler_archived(store, "bob", 0, True)
    clock.advance(DAY)
    order_exec.execute_due(store, clock)
    failed = order(store, 0)
    assert failed["state"] == "failed" and "archived" in failed["reason"]
    assert balance(store, "bob") == 10_000_000


def test_a_paused_campaign_holds_its_orders_until_it_resumes(store, clock, market):
    place(store, clock, "bob", market, 150_000)
    gateway.set_campaign_paused(store, "sam", market, "sam", True)
    clock.advance(DAY)
    order_exec.execute_due(store, clock)
    assert order(store, 0)["state"] == "open"
    gateway.set_campaign_paused(store, "sam", market, "sam", False)
    order_exec.execute_due(store, clock)
    assert order(store, 0)["state"] == "bought"
    assert order(store, 0)["price"] == M


def test_the_executor_reports_the_next_due_second(store, clock, market):
    place(store, clock, "bob", market, 150_000)
    _, next_due = order_exec.execute_due(store, clock)
    last = gateway.get_campaign(store, "sam", market).value["last"]
    assert next_due == pricing.due_at(M, last, 150_000) > clock.now()


def test_a_shard_executes_only_the_campaigns_it_is_given(store, clock, market):
    place(store, clock, "bob", market, 150_000)
    clock.advance(DAY)
    order_exec.execute_due(store, clock, refs=[])
    assert order(store, 0)["state"] == "open"
    assert orders.book_refs(store) == [("sam", market)]
    order_exec.execute_due(store, clock, refs=orders.book_refs(store))
    assert order(store, 0)["state"] == "bought"


@given(
    m=st.integers(1, 10**8),
    extra=st.integers(0, 10**8),
    span=st.integers(1, 5000),
    frac=st.floats(0, 1.2),
    start=st.integers(0, 2 * 10**9),
)
def test_due_second_is_the_first_second_the_price_reaches_the_limit(m, extra, span, frac, start):
    p = m + extra
    last = {"slot": 0, "price": p, "purchasedAt": start, "startsAt": start, "endsAt": start + span}
    limit = m + int((2 * p - m) * frac)
    t = pricing.due_at(m, last, limit)
    assert pricing.current_price(m, last, t) <= limit
    assert t == start or pricing.current_price(m, last, t - 1) > limit


def test_a_limit_below_the_minimum_is_never_due():
    last = {"slot": 0, "price": 5, "purchasedAt": 0, "startsAt": 0, "endsAt": 10}
    assert pricing.due_at(4, last, 3) is None
    assert pricing.due_at(4, None, 4) == 0
