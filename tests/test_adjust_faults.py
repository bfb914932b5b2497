"""Staff adjustments under every crash point (two levels), the lease matrix and a seeded swarm.

The request document `adjust::<id>` is the commit point: after recovery, a request id has its
document exactly when one ledger entry applies it, on the account the document names, however
many times it was submitted and however many entries came between.
"""

from __future__ import annotations

import pytest

from accounts import adjust, locks
from accounts.adjust import AdjustError, adjust_balance
from accounts.gateway import adjust_key, ensure_account, full_ledger, get_account
from accounts.recovery import run_recovery
from docstore import NotFound
from docstore.backends.memory import MemoryStore
from tests.harness import Scenario, World, run_crash_points, run_lease_matrix, run_swarm
from tests.invariants import assert_audit_clean

USERS = ("alice", "bob")
# Each request id means one amount; which account a replay names may differ (a reused id).
INTENDED = {"seed": 1000, "r1": -300, "r2": 50, "old": 7}
INTENDED.update({f"s{i}": d for i, d in enumerate([-400, -200, 25, 300])})


def setup(store, clock):
    for user in USERS:
        ensure_account(store, clock, user)
    adjust_balance(store, clock, "alice", 1000, "opening balance", request_id="seed")
    return {}


def request(user: str, request_id: str, reason: str = "staff"):
    def act(store, clock, ctx):
        return adjust_balance(store, clock, user, INTENDED[request_id], reason, request_id)

    return act


debit = request("alice", "r1", "chargeback")


def check_each_request_applied_at_most_once(world: World) -> None:
    assert_audit_clean(world.store)
    applied: dict[str, list[tuple[str, int]]] = {}
    for user in USERS:
        assert get_account(world.store, user).value["lock"] is None, f"{user} still locked"
        for e in full_ledger(world.store, user):
            if e["kind"] == "adjust":
                rid = e["ref"].removeprefix("adjust:")
                applied.setdefault(rid, []).append((user, e["delta"]))
    for rid, delta in INTENDED.items():
        entries = applied.get(rid, [])
        try:
            doc = world.store.get(adjust_key(rid)).value
        except NotFound:
            assert not entries, f"request {rid} applied without its request document: {entries}"
            continue
        assert entries == [(doc["username"], delta)], f"request {rid} applied as {entries}"


def check(world: World) -> None:
    check_each_request_applied_at_most_once(world)
    if world.owner == ("ok", True):
        assert world.store.get(adjust_key("r1")).value["username"] == "alice"


EXPECTED = (locks.AccountBusy, AdjustError)
SCENARIO = Scenario("adjust", setup, debit, run_recovery, check, expected=EXPECTED)


def test_adjust_survives_every_crash_point_at_two_levels(make_world_store):
    assert run_crash_points(SCENARIO, make_world_store) > 100


RIVALS = {
    "recovery": lambda s, c, ctx: run_recovery(s, c),
    "same request from another tab": debit,
    "another request": request("alice", "r2", "bonus"),
    "the same request id on another account": request("bob", "r1", "reused id"),
}


def test_adjust_survives_the_lease_matrix(make_world_store):
    assert run_lease_matrix(SCENARIO, make_world_store, RIVALS) > 50


def test_harness_catches_an_unlock_that_ignores_the_token(make_world_store, monkeypatch):
    monkeypatch.setattr(locks, "_holds", lambda lock, token: bool(lock))
    rivals = {"another request": RIVALS["another request"]}
    with pytest.raises(AssertionError, match=r"applied|balance"):
        run_lease_matrix(SCENARIO, make_world_store, rivals)


def test_harness_catches_an_adjust_that_skips_its_commit_point(make_world_store, monkeypatch):
    monkeypatch.setattr(adjust, "_commit", lambda store, clock, username, lock: True)
    rivals = {
        "the same request id on another account": RIVALS["the same request id on another account"]
    }
    with pytest.raises(AssertionError, match=r"applied|request document"):
        run_lease_matrix(SCENARIO, make_world_store, rivals)


# --- swarm: replays of old and new request ids, on either account ------------------------------


def swarm_setup(store, clock):
    setup(store, clock)
    # "old" was applied, then more entries than the account document keeps: its replay must
    # still be refused (the request document, not the ledger window, remembers it).
    adjust_balance(store, clock, "bob", INTENDED["old"], "long ago", request_id="old")
    for i in range(locks.LEDGER_PAGE_SIZE + 5):
        adjust_balance(store, clock, "bob", 1, "filler", request_id=f"filler{i}")
    return {}


def swarm_actors(world, rng):
    actors = []
    for _ in range(rng.randint(2, 5)):
        rid = rng.choice(["old", "s0", "s1", "s2", "s3"])  # repeats model replayed confirmations
        actors.append(request(rng.choice(USERS), rid, "swarm"))
    actors.append(lambda store, clock, ctx: run_recovery(store, clock))
    return actors


def swarm_check(world: World) -> None:
    check_each_request_applied_at_most_once(world)


SWARM = Scenario("adjust swarm", swarm_setup, debit, run_recovery, swarm_check, EXPECTED)


def test_adjust_swarm_applies_each_request_id_once(swarm_seeds):
    assert run_swarm(SWARM, MemoryStore, swarm_actors, swarm_seeds(4000)) > 0


def test_harness_swarm_catches_an_unlock_that_ignores_the_token(monkeypatch):
    monkeypatch.setattr(locks, "_holds", lambda lock, token: bool(lock))
    scenario = Scenario("adjust swarm", swarm_setup, debit, run_recovery, swarm_check, EXPECTED)
    with pytest.raises(AssertionError, match="swarm seed"):
        run_swarm(scenario, MemoryStore, swarm_actors, range(2000))


def test_harness_swarm_catches_a_replay_the_ledger_window_forgot(monkeypatch):
    # The old protocol: only the ledger kept in the account document remembered a request.
    def ledger_window_only(store, clock, username, lock):
        return True

    monkeypatch.setattr(adjust, "_commit", ledger_window_only)
    monkeypatch.setattr(adjust, "adjust_key", lambda rid: f"nowhere::{rid}")
    scenario = Scenario("adjust swarm", swarm_setup, debit, run_recovery, swarm_check, EXPECTED)
    with pytest.raises(AssertionError, match="swarm seed"):
        run_swarm(scenario, MemoryStore, swarm_actors, range(200))
