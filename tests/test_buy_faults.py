"""Buying under every crash point (two levels), the lease matrix and a seeded swarm."""

from __future__ import annotations

import pytest

from accounts import locks
from accounts.gateway import get_account
from accounts.recovery import run_recovery
from adspace import buy, gateway
from docstore import FixedClock
from docstore.backends.memory import MemoryStore
from docstore.faults import HookedStore
from tests.harness import (
    FinishedBehindOurBack,
    InjectedError,
    Scenario,
    World,
    new_world,
    run_crash_points,
    run_lease_matrix,
    run_swarm,
)
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, make_market

EXPECTED = (buy.BuyError, locks.AccountBusy, locks.InsufficientFunds)


def setup(store, clock):
    n = make_market(store, clock, buyers=("bob", "cat", "dan"), funds=50_000_000)
    # One earlier sale, so the flow prices against a `last` and queues behind it.
    buy.buy_next_slot(store, clock, "dan", "sam", n, 0, HUGE)
    clock.advance(1800)
    return {"n": n}


def bob_buys(store, clock, ctx):
    return buy.buy_next_slot(store, clock, "bob", "sam", ctx["n"], 0, HUGE)


def cat_buys(store, clock, ctx):
    return buy.buy_next_slot(store, clock, "cat", "sam", ctx["n"], 0, HUGE)


def check(world: World) -> None:
    assert_audit_clean(world.store)
    assert_each_sale_charged_once(world.store)
    for name in ("bob", "cat", "dan"):
        assert get_account(world.store, name).value["lock"] is None
    if world.owner and world.owner[0] == "ok":
        sale = world.owner[1]
        slot = world.store.get(gateway.slot_key("sam", sale.n, sale.slot)).value
        assert slot["buyer"] == "bob", "bob was told he bought a slot someone else holds"


SCENARIO = Scenario("buy", setup, bob_buys, run_recovery, check, expected=EXPECTED)


def test_buy_survives_every_crash_point_at_two_levels(make_world_store):
    assert run_crash_points(SCENARIO, make_world_store) > 100


def test_buy_survives_the_lease_matrix(make_world_store):
    rivals = {
        "recovery": lambda s, c, ctx: run_recovery(s, c),
        "another buyer": lambda s, c, ctx: cat_buys(s, c, ctx),
        "the same buyer in another tab": bob_buys,
    }
    assert run_lease_matrix(SCENARIO, make_world_store, rivals) > 20


def swarm_actors(world, rng):
    actors = []
    for _ in range(rng.randint(2, 6)):
        name = rng.choice(["bob", "cat", "dan"])
        accepted = rng.choice([HUGE, HUGE, 100_000, 250_000])

        def act(store, clock, ctx, name=name, accepted=accepted):
            return buy.buy_next_slot(store, clock, name, "sam", ctx["n"], 0, accepted)

        actors.append(act)
    if rng.random() < 0.5:
        actors.append(lambda store, clock, ctx: run_recovery(store, clock))
    return actors


def test_buy_swarm_never_sells_a_slot_twice_or_charges_twice(swarm_seeds):
    assert run_swarm(SCENARIO, MemoryStore, swarm_actors, swarm_seeds(8000)) > 0


def test_harness_catches_a_buy_that_debits_before_the_slot_is_won(make_world_store, monkeypatch):
    # A broken variant: debit first, then race for the slot (and never refund the loser).
    real_insert = buy._insert_slot

    def debit_then_insert(store, buyer, lock):
        won = real_insert(store, buyer, lock)
        if not won:
            locks.settle(store, FixedClock(), buyer, lock["token"], -lock["price"])
        return won

    monkeypatch.setattr(buy, "_insert_slot", debit_then_insert)
    rivals = {"another buyer": lambda s, c, ctx: cat_buys(s, c, ctx)}
    try:
        run_lease_matrix(SCENARIO, make_world_store, rivals)
    except AssertionError:
        return
    raise AssertionError("the harness did not notice a loser being charged")


def test_a_lock_finished_while_its_write_looked_failed_is_not_charged_twice(make_world_store):
    world = new_world(SCENARIO, make_world_store)
    hooked = HookedStore(world.store, FinishedBehindOurBack(world, "account::bob", run_recovery))
    with pytest.raises(InjectedError):
        bob_buys(hooked, world.clock, world.ctx)
    check(world)
    assert_each_sale_charged_once(world.store)
