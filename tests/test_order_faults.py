"""Standing orders under every crash point (two levels), the lease matrix and a seeded swarm:
exactly one sale per slot, no order buys twice, losers are never charged, invariants clean."""

from __future__ import annotations

import pytest

from accounts import locks
from accounts.gateway import get_account
from accounts.recovery import run_recovery
from adspace import buy, order_exec, orders
from docstore import FixedClock
from docstore.backends.memory import MemoryStore
from docstore.faults import Hook, HookedStore
from tests.harness import (
    Scenario,
    World,
    full_matrix,
    run_crash_points,
    run_lease_matrix,
    run_swarm,
)
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once, sold_slots
from tests.test_buy import HUGE, make_market

ORDER_BUYERS = ("bob", "cat")
EXPECTED = (buy.BuyError, locks.AccountBusy, locks.InsufficientFunds, orders.OrderError)


def setup(store, clock):
    n = make_market(store, clock, buyers=("bob", "cat", "dan"), funds=5_000_000)
    buy.buy_next_slot(store, clock, "dan", "sam", n, 0, HUGE)
    orders.place_order(store, clock, "bob", "sam", n, 0, 150_000, None)
    orders.place_order(store, clock, "cat", "sam", n, 0, 150_000, None)
    orders.place_order(store, clock, "bob", "sam", n, 0, 140_000, None)
    clock.advance(23 * 3600)  # all three are due; bob's first order is first in line
    return {"n": n}


def executor(store, clock, ctx):
    return order_exec.execute_campaign(store, clock, "sam", ctx["n"])


def manual_buyer(store, clock, ctx):
    return buy.buy_next_slot(store, clock, "dan", "sam", ctx["n"], 0, HUGE)


def bob_cancels(store, clock, ctx):
    return orders.cancel_order(store, clock, "bob", 0)


def bob_edits(store, clock, ctx):
    return orders.edit_limit(store, clock, "bob", 0, 100_000)


def recovery(store, clock, ctx):
    return run_recovery(store, clock)


def all_orders(store) -> list[dict]:
    out = []
    for buyer in ORDER_BUYERS:
        drawn = store.get(orders.user_key(buyer)).value["next"]
        found = store.get_multi([orders.order_key(buyer, i) for i in range(drawn)])
        out += [doc.value for doc in found.values()]
    return out


def check(world: World) -> None:
    store, n = world.store, world.ctx["n"]
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    for name in ("bob", "cat", "dan"):
        assert get_account(store, name).value["lock"] is None, f"{name} left locked"
    slots = sold_slots(store)
    placed = all_orders(store)
    assert all(o["state"] != "executing" for o in placed), "an execution was left behind"
    for buyer in ORDER_BUYERS:
        # bob and cat buy only through orders: each slot of theirs is one order's one purchase.
        theirs = {s["token"]: s for s in slots.values() if s["buyer"] == buyer}
        bought = [o for o in placed if o["buyer"] == buyer and o["state"] == "bought"]
        assert sorted(theirs) == sorted(o["token"] for o in bought), (
            f"{buyer}'s slots and bought orders differ: {len(theirs)} slots, {len(bought)} bought"
        )
        for o in bought:
            assert theirs[o["token"]]["price"] == o["price"] <= o["limit"]
    cancelled = [o for o in placed if o["state"] == "cancelled"]
    assert all("token" not in o for o in cancelled), "a cancelled order had bought"
    book = store.get(orders.book_key("sam", n)).value["entries"]
    open_refs = {orders.order_ref(o["buyer"], o["i"]) for o in placed if o["state"] == "open"}
    assert set(book) == open_refs, f"book {sorted(book)} but open {sorted(open_refs)}"
    for ref in book:
        assert book[ref]["limit"] == next(
            o["limit"] for o in placed if orders.order_ref(o["buyer"], o["i"]) == ref
        )


SCENARIO = Scenario("order execution", setup, executor, run_recovery, check, expected=EXPECTED)


def writes_only(make_world_store) -> bool:
    # The executor's flow is long (a buy plus the order's own steps): on Couchbase, where every
    # call is a round trip, the runners crash and pause it at its writes (tests/harness.py,
    # fault_points); the embedded leg runs every call.
    return not full_matrix(make_world_store)


def test_order_execution_survives_every_crash_point_at_two_levels(make_world_store):
    runs = run_crash_points(SCENARIO, make_world_store, writes_only=writes_only(make_world_store))
    assert runs > 100


def test_order_execution_survives_the_lease_matrix(make_world_store):
    rivals = {
        "recovery": recovery,
        "another executor": executor,
        "a manual buyer": manual_buyer,
        "the buyer cancelling": bob_cancels,
        "the buyer lowering the limit": bob_edits,
    }
    runs = run_lease_matrix(
        SCENARIO, make_world_store, rivals, writes_only=writes_only(make_world_store)
    )
    assert runs > 50


def swarm_actors(world, rng):
    pool = [executor, executor, manual_buyer, bob_cancels, bob_edits, recovery]
    actors = [executor] + [rng.choice(pool) for _ in range(rng.randint(2, 5))]

    def cat_cancels(store, clock, ctx):
        return orders.cancel_order(store, clock, "cat", 0)

    if rng.random() < 0.3:
        actors.append(cat_cancels)
    return actors


def test_order_swarm_sells_each_slot_once_and_never_buys_an_order_twice(swarm_seeds):
    assert run_swarm(SCENARIO, MemoryStore, swarm_actors, swarm_seeds(3000)) > 0


@pytest.mark.parametrize("rival", ["cancel", "edit"])
def test_a_cancel_or_edit_racing_an_execution_never_lets_both_happen(make_world_store, rival):
    """The buyer acts after the executor locked the account but before the order's CAS: the
    buy gives up (no charge) and the buyer's change stands."""
    store, clock = make_world_store(), FixedClock(1_700_000_000)
    ctx = setup(store, clock)

    class ActBeforeOrderCas(Hook):
        fired = False

        def before(self, op, key):
            if op == "replace" and key == orders.order_key("bob", 0) and not self.fired:
                self.fired = True
                (bob_cancels if rival == "cancel" else bob_edits)(store, clock, ctx)

    hooked = HookedStore(store, ActBeforeOrderCas())
    assert order_exec.execute_order(hooked, clock, orders.order_key("bob", 0)) == "changed"
    first = store.get(orders.order_key("bob", 0)).value
    assert first["state"] == ("cancelled" if rival == "cancel" else "open")
    assert get_account(store, "bob").value["balance"] == 5_000_000
    assert get_account(store, "bob").value["lock"] is None
    assert_audit_clean(store)


def test_harness_catches_an_execution_that_ignores_the_orders_version(
    make_world_store, monkeypatch
):
    # A broken variant: the order is taken into execution whatever changed since it was priced.
    real = order_exec.enter_executing

    def careless(store, key, lock):
        return real(store, key, {**lock, "orderVersion": store.get(key).value["version"]})

    monkeypatch.setattr(order_exec, "enter_executing", careless)
    try:
        rivals = {"the buyer lowering the limit": bob_edits}
        run_lease_matrix(SCENARIO, make_world_store, rivals, writes_only=True)
    except AssertionError:
        return
    raise AssertionError("the harness did not notice an order buying above its new limit")


def test_harness_catches_a_resolution_that_reads_the_slot_before_the_lock(
    make_world_store, monkeypatch
):
    # A broken variant: an execution whose lock is still held is put back to open, so the order
    # can buy again while its first buy is still going to land.
    real_get_account = order_exec.get_account

    def no_lock_seen(store, username):
        doc = real_get_account(store, username)
        return type(doc)({**doc.value, "lock": None}, doc.cas)

    monkeypatch.setattr(order_exec, "get_account", no_lock_seen)
    try:
        run_lease_matrix(
            SCENARIO, make_world_store, {"another executor": executor}, writes_only=True
        )
    except AssertionError:
        return
    raise AssertionError("the harness did not notice an order buying twice")
