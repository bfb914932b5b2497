"""Crediting deposits under every crash point (two levels), the lease matrix and a seeded swarm.

The chain is scripted in memory (no HTTP: thousands of worlds are built), and moves forward one
block per listing, so racing watchers see different payments: one sees bob's second payment
confirmed, the other does not yet.
"""

from __future__ import annotations

import pytest

from accounts import locks, recovery
from accounts.audit import Report, audit_accounts
from accounts.gateway import full_ledger, get_account
from bitcoinkeys import deposits
from bitcoinkeys.chain import Payment
from bitcoinkeys.gateway import deposit_key, watchcursor_key
from docstore import NotFound
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
from tests.invariants import assert_audit_clean
from tests.test_deposits import addr, give_address

MIN = 300_000
USERS = ("alice", "bob")
A1, B1, B2 = addr(1), addr(2), addr(3)


def outpoint(name: str, vout: int = 0) -> str:
    return f"{name * 64}"[:64] + f":{vout}"


# (address, outpoint, sats, height of the block that confirms it; None: never)
ALICE = [
    (A1, outpoint("a"), 500_000, 1),
    (A1, outpoint("e"), 90_000, None),  # stays pending
    (A1, outpoint("f"), 400_000, 2),  # a watcher that sees it credits {a, f}, one that does not {a}
]
BOB = [
    (B1, outpoint("b"), 200_000, 1),  # below the minimum alone...
    (B1, outpoint("c"), 150_000, 2),  # ...credited together once this one confirms
]
BOB_NEW = [(B2, outpoint("d"), 400_000, 2)]  # bob's second address
OWNERS = {A1: "alice", B1: "bob", B2: "bob"}


class ScriptedChain:
    """listsinceblock semantics over a fixed script; each listing after the first finds one
    more block (history lookups see the chain as the last listing did)."""

    available = True
    name = "scripted"

    def __init__(self, payments: list[tuple], height: int):
        self.payments, self.height = payments, height
        self.listed = False

    def _payment(self, address: str, op: str, sats: int, mined: int | None) -> Payment:
        confirmations = self.height - mined + 1 if mined is not None and mined <= self.height else 0
        return Payment(address, op, sats, confirmations)

    def payments_since(self, cursor, confirmations=1):
        if self.listed:
            self.height += 1
        self.listed = True
        since = int(cursor[1:]) if cursor else 0
        listed = [
            self._payment(*p)
            for p in self.payments
            if p[3] is None or p[3] > since - (confirmations - 1)
        ]
        return listed, f"h{max(0, self.height - (confirmations - 1))}"

    def payments_for(self, address):
        return [self._payment(*p) for p in self.payments if p[0] == address]


def make_setup(payments: list[tuple], height: int):
    def setup(store, clock):
        for address in dict.fromkeys(p[0] for p in payments):
            give_address(store, clock, OWNERS[address], address)
        return {"chain": ScriptedChain(payments, height)}

    return setup


def watcher(store, clock, ctx):
    return ("watcher", deposits.watch_pass(store, clock, ctx["chain"]))


def checker(name: str):
    def check_now(store, clock, ctx):
        return ("check", deposits.check_deposits(store, clock, ctx["chain"], name))

    return check_now


def recover(store, clock):
    # The deposit protocol's recovery is the lock recovery (the finisher rolls it forward).
    return recovery.recover_locks(store, clock)


def assert_nothing_creditable_behind_the_cursor(store, payments) -> None:
    """The watcher never lists blocks before its cursor again: whatever creditable was confirmed
    by then must be credited, or it would be lost."""
    try:
        height = int(store.get(watchcursor_key("deposits")).value["cursor"][1:])
    except NotFound:
        return
    for address in dict.fromkeys(p[0] for p in payments):
        credited = store.get(deposit_key(address)).value["credited"]
        left = sum(
            s for a, op, s, mined in payments
            if a == address and mined is not None and mined <= height and op not in credited
        )  # fmt: skip
        assert left < MIN, f"{left} sats to {address} left uncredited behind cursor h{height}"


def assert_books_clean(store) -> None:
    """The audit of the money in these worlds (accounts and deposits). The swarm uses it instead
    of every registered audit: the key pool's walks 1000 key sets a seed, and nothing here
    touches the pool (give_address stands in for it)."""
    report = Report()
    audit_accounts(store, report)
    deposits.audit_deposits(store, report)
    assert report.ok, "\n".join(report.lines())


def check(world: World, full_audit: bool = True) -> None:
    store, payments = world.store, world.ctx["chain"].payments
    if full_audit:
        assert_audit_clean(store)
    else:
        assert_books_clean(store)
    users = sorted({OWNERS[p[0]] for p in payments})
    for name in users:
        assert get_account(store, name).value["lock"] is None, f"{name} still locked"
    ops = [op for name in users for e in full_ledger(store, name) for op in e.get("outpoints", [])]
    assert len(ops) == len(set(ops)), f"an outpoint credited twice: {sorted(ops)}"
    assert outpoint("e") not in ops, "a pending payment was credited"
    assert_nothing_creditable_behind_the_cursor(store, payments)
    for outcome in world.outcomes:
        if outcome[0] == "ok" and isinstance(outcome[1], tuple) and outcome[1][0] == "watcher":
            counters = outcome[1][1]
            # (a pass whose notices could not be queued keeps its listing too)
            if not (counters.get("busy") or counters.get("failed") or counters.get("noticesheld")):
                store.get(watchcursor_key("deposits"))  # a clean pass moved the cursor


@pytest.fixture(autouse=True)
def _registered():
    deposits.ready_deposits()


EXPECTED = (locks.AccountBusy,)
# Crash points: bob's two payments, credited together under one lock, at two levels.
SCENARIO = Scenario("deposit", make_setup(BOB, 2), watcher, recover, check, expected=EXPECTED)
# Races: the first listing sees alice's payment and only bob's first; the next sees both of bob's.
RACE = Scenario("deposit race", make_setup(ALICE + BOB, 1), watcher, recover, check, EXPECTED)
WIDE = Scenario(
    "deposits",
    make_setup(ALICE + BOB + BOB_NEW, 1),
    watcher,
    recover,
    lambda world: check(world, full_audit=False),
    EXPECTED,
)


def test_a_clean_pass_credits_each_payment_once(make_world_store):
    world = new_world(WIDE, make_world_store)
    world.ctx["chain"].height = 2
    _, counters = watcher(world.store, world.clock, world.ctx)
    assert counters["credited"] == 5 and counters["sats"] == 1_650_000
    assert get_account(world.store, "alice").value["balance"] == 900_000
    assert get_account(world.store, "bob").value["balance"] == 750_000
    check(world)


def test_crediting_survives_every_crash_point_at_two_levels(make_world_store):
    assert run_crash_points(SCENARIO, make_world_store) > 100


def test_crediting_survives_the_lease_matrix(make_world_store):
    rivals = {
        "recovery": lambda s, c, ctx: recover(s, c),
        "a second watcher": watcher,
    }
    assert run_lease_matrix(RACE, make_world_store, rivals) > 50


def test_a_lock_finished_while_its_write_looked_failed_is_not_credited_again(make_world_store):
    world = new_world(WIDE, make_world_store)
    world.ctx["chain"].height = 2
    hooked = HookedStore(world.store, FinishedBehindOurBack(world, "account::alice", recover))
    # The pass cannot know whether its lock landed: it stops with an unknown outcome...
    with pytest.raises(InjectedError):
        watcher(hooked, world.clock, world.ctx)
    # ...and the next pass finds everything credited exactly once.
    watcher(world.store, world.clock, world.ctx)
    assert get_account(world.store, "alice").value["balance"] == 900_000
    check(world)


def swarm_actors(world, rng):
    return [watcher, watcher, checker(rng.choice(USERS)), lambda s, c, ctx: recover(s, c)]


def test_deposit_swarm_credits_each_payment_exactly_once(swarm_seeds):
    assert run_swarm(WIDE, MemoryStore, swarm_actors, swarm_seeds(2000)) > 0


def test_harness_catches_a_commit_that_ignores_a_rival(make_world_store, monkeypatch):
    real = deposits._commit

    def careless(store, username, lock):
        real(store, username, lock)
        return True  # credits even when another token committed these outpoints

    monkeypatch.setattr(deposits, "_commit", careless)
    with pytest.raises(AssertionError):
        run_lease_matrix(RACE, make_world_store, {"a second watcher": watcher})


def test_harness_catches_a_cursor_moved_past_uncredited_payments(monkeypatch):
    real = deposits.credit_confirmed

    def forgetful(store, clock, payments, chain=None):
        counters = real(store, clock, payments, chain)
        return {**counters, "busy": 0}  # pretends a busy account was dealt with

    monkeypatch.setattr(deposits, "credit_confirmed", forgetful)
    with pytest.raises(AssertionError, match="swarm seed"):
        run_swarm(WIDE, MemoryStore, swarm_actors, range(300))
