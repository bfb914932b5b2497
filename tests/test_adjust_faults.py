"""Staff adjustments under every crash point, the lease matrix and a seeded swarm."""

from __future__ import annotations

import pytest

from accounts import locks
from accounts.adjust import AdjustError, adjust_balance
from accounts.audit import run_audit
from accounts.gateway import ensure_account, full_ledger, get_account
from accounts.recovery import run_recovery
from docstore.backends.memory import MemoryStore
from tests.harness import Scenario, World, run_crash_points, run_lease_matrix, run_swarm

USER = "alice"


def setup(store, clock):
    ensure_account(store, clock, USER)
    adjust_balance(store, clock, USER, 1000, "opening balance", request_id="seed")
    return {}


def debit(store, clock, ctx):
    return adjust_balance(store, clock, USER, -300, "chargeback", request_id="r1")


INTENDED = {"adjust:seed": 1000, "adjust:r1": -300, "adjust:r2": 50}
INTENDED.update({f"adjust:s{i}": d for i, d in enumerate([-400, -200, 25, 300])})


def check_ledger_matches_requests(world: World) -> list[dict]:
    report = run_audit(world.store)
    assert report.ok, report.lines()
    entries = full_ledger(world.store, USER)
    for e in entries:
        assert e["delta"] == INTENDED[e["ref"]], f"{e['ref']} applied as {e['delta']}"
    return entries


def check(world: World) -> None:
    entries = check_ledger_matches_requests(world)
    applied = [e for e in entries if e["ref"] == "adjust:r1"]
    assert len(applied) <= 1, "one request applied twice"
    if world.owner == ("ok", True):
        assert applied, "the owner was told it succeeded but nothing was applied"
    assert get_account(world.store, USER).value["lock"] is None


EXPECTED = (locks.AccountBusy, AdjustError)
SCENARIO = Scenario("adjust", setup, debit, run_recovery, check, expected=EXPECTED)


def test_adjust_survives_every_crash_point_at_two_levels(make_world_store):
    runs = run_crash_points(SCENARIO, make_world_store)
    assert runs > 20


def test_adjust_survives_the_lease_matrix(make_world_store):
    rivals = {
        "recovery": lambda s, c, ctx: run_recovery(s, c),
        "same request from another tab": debit,
        "another request": lambda s, c, ctx: adjust_balance(s, c, USER, 50, "bonus", "r2"),
    }
    assert run_lease_matrix(SCENARIO, make_world_store, rivals) > 10


def test_harness_catches_an_unlock_that_ignores_the_token(make_world_store, monkeypatch):
    monkeypatch.setattr(locks, "_holds", lambda lock, token: bool(lock))
    rivals = {"another request": lambda s, c, ctx: adjust_balance(s, c, USER, 50, "bonus", "r2")}
    with pytest.raises(AssertionError, match=r"twice|applied as"):
        run_lease_matrix(SCENARIO, make_world_store, rivals)


def swarm_actors(world, rng):
    actors = []
    for i in range(rng.randint(2, 5)):
        request = f"s{rng.randint(0, 3)}"  # repeated ids model replayed confirmations
        delta = INTENDED[f"adjust:{request}"]

        def act(store, clock, ctx, delta=delta, request=request, i=i):
            return adjust_balance(store, clock, USER, delta, f"swarm {i}", request_id=request)

        actors.append(act)
    actors.append(lambda store, clock, ctx: run_recovery(store, clock))
    return actors


def swarm_check(world: World) -> None:
    check_ledger_matches_requests(world)


def test_adjust_swarm_keeps_the_books(swarm_seeds):
    scenario = Scenario("adjust swarm", setup, debit, run_recovery, swarm_check, EXPECTED)
    assert run_swarm(scenario, MemoryStore, swarm_actors, swarm_seeds(4000)) > 0


def test_harness_swarm_catches_an_unlock_that_ignores_the_token(monkeypatch):
    monkeypatch.setattr(locks, "_holds", lambda lock, token: bool(lock))
    scenario = Scenario("adjust swarm", setup, debit, run_recovery, swarm_check, EXPECTED)
    with pytest.raises(AssertionError, match="swarm seed"):
        run_swarm(scenario, MemoryStore, swarm_actors, range(2000))
