"""Worker shards (`run_workers --shard i/n`): spec parsing, refusals, and the split itself.

Every directory entry is owned by exactly one of n shards; two nodes 0/2 and 1/2 over one store
together do all of the recovery and crediting and neither touches the other's items; nodes that
overlap (a lone 0/1 beside 0/2 and 1/2, all at once) do no harm: every sale is credited once, every
lock finished once, the audit clean.
"""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts import locks, nodes, shards, workers
from accounts.gateway import account_key, ensure_account, full_ledger, get_account
from accounts.shards import ALL, Shard, ShardSpecError
from adspace import buy, credit, gateway
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, make_market

SELLERS = [f"seller{i}" for i in range(8)]
LOCKED = [f"locked{i}" for i in range(8)]


def run(*args) -> str:
    out = StringIO()
    call_command("run_workers", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def owned(shard: Shard, names: list[str]) -> set[str]:
    return {n for n in names if shard.owns(account_key(n))}


@pytest.fixture
def world(store, clock):
    """Eight sellers with one uncredited sale each, eight accounts each holding an expired lock."""
    make_market(store, clock, buyers=("bob",), funds=10_000_000)
    for seller in SELLERS:
        ensure_account(store, clock, seller)
        n = gateway.create_campaign(store, clock, seller, 100_000, 24, 300, 250, [])
        buy.buy_next_slot(store, clock, "bob", seller, n, 0, HUGE)
    for name in LOCKED:
        ensure_account(store, clock, name)
        locks.take_lock(store, clock, name, "adjust", f"adjust:{name}", delta=7, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS + 1)
    # Both halves of the split have work, or the test would prove nothing.
    for i in range(2):
        assert owned(Shard(i, 2), SELLERS) and owned(Shard(i, 2), LOCKED)
    return store


def credited_sellers(store) -> set[str]:
    return {s for s in SELLERS if any(e["kind"] == "credit" for e in full_ledger(store, s))}


def finished_locks(store) -> set[str]:
    return {n for n in LOCKED if get_account(store, n).value["lock"] is None}


# --- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, shard", [("0/1", ALL), ("1/2", Shard(1, 2)), (" 3/4 ", Shard(3, 4))]
)
def test_a_shard_spec_is_i_of_n(spec, shard):
    assert shards.parse(spec) == shard
    assert str(shard) == spec.strip()


@pytest.mark.parametrize(
    "spec, says",
    [
        ("2/2", "counts from 0"),
        ("5/3", "counts from 0"),
        ("-1/3", "whole numbers"),
        ("a/b", "whole numbers"),
        ("0/0", "at least 1"),
        ("1/", "whole numbers"),
        ("", "whole numbers"),
        ("1/2/3", "whole numbers"),
        ("0/5000", "at most"),
        ("1.0/2", "whole numbers"),
    ],
)
def test_a_malformed_spec_is_refused_with_a_clear_message(spec, says):
    with pytest.raises(ShardSpecError, match=says):
        shards.parse(spec)


@pytest.mark.parametrize("spec", ["2/2", "-1/3", "a/b", "0/0"])
def test_a_worker_with_a_malformed_spec_refuses_to_start_and_writes_nothing(store, spec):
    before = store.dump()
    with pytest.raises(CommandError, match="refuses to start: --shard"):
        run("--once", f"--shard={spec}")  # -1/3 as its own word would look like an option
    assert store.dump() == before


def test_a_bad_node_name_is_refused(store):
    with pytest.raises(CommandError, match="--node must be"):
        run("--once", "--node", "a b/c")


# --- refusing overlap ----------------------------------------------------------------------------


def live_node(store, clock, name: str, spec: str) -> None:
    nodes.register(store, clock, name, shards.parse(spec), settings.WORKER_STALE_SECONDS)
    nodes.beat(store, name, clock.now(), shards.parse(spec), [])


def test_a_second_node_on_the_same_shard_refuses_to_start(store, clock):
    live_node(store, clock, "web1", "0/2")
    with pytest.raises(CommandError, match="shard 0/2 is already run by live node web1"):
        run("--once", "--shard", "0/2", "--node", "web2")
    assert set(nodes.read_nodes(store, clock.now(), 60)) == {"web1"}


def test_a_node_with_a_different_n_refuses_to_start(store, clock):
    live_node(store, clock, "web1", "0/2")
    with pytest.raises(CommandError, match="splits the store into 2 shard"):
        run("--once", "--shard", "1/3", "--node", "web2")
    with pytest.raises(CommandError, match="splits the store into 2 shard"):
        run("--once", "--node", "web3")  # no --shard is 0/1: the whole store


def test_the_other_shard_of_the_same_split_starts(store, clock):
    live_node(store, clock, "web1", "0/2")
    out = run("--once", "--shard", "1/2", "--node", "web2")
    assert "node web2, shard 1/2" in out
    assert {n.shard for n in nodes.read_nodes(store, clock.now(), 60).values()} == {"0/2", "1/2"}


def test_a_dead_nodes_shard_can_be_taken_once_its_heartbeat_is_stale(store, clock):
    live_node(store, clock, "web1", "0/2")
    clock.advance(settings.WORKER_STALE_SECONDS + 1)
    assert "shard 0/2" in run("--once", "--shard", "0/2", "--node", "web2")


def test_a_restarted_node_of_the_same_name_is_not_an_overlap(store, clock):
    live_node(store, clock, "web1", "0/2")
    assert "shard 0/2" in run("--once", "--shard", "0/2", "--node", "web1")


def test_two_nodes_starting_at_once_on_one_shard_cannot_both_start(store, clock):
    barrier, results = threading.Barrier(6), []

    def start(i: int) -> None:
        barrier.wait()
        try:
            nodes.register(store, clock, f"n{i}", Shard(1, 3), settings.WORKER_STALE_SECONDS)
            results.append("started")
        except nodes.ShardOverlap:
            results.append("refused")

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["refused"] * 5 + ["started"]


# --- the split -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16])
def test_every_directory_entry_is_owned_by_exactly_one_shard(count):
    keys = [account_key(f"user{i}") for i in range(3000)] + [
        f"campaigndir::{g}" for g in range(500)
    ]
    share = dict.fromkeys(range(count), 0)
    for key in keys:
        owners = [i for i in range(count) if Shard(i, count).owns(key)]
        assert len(owners) == 1, (key, owners)
        share[owners[0]] += 1
    # A fair split: no shard gets less than half its share of 3 500 keys.
    assert min(share.values()) > len(keys) / count / 2


def test_ownership_is_the_same_in_every_process():
    # A salted hash (Python's hash()) would give each process its own split and drop entries.
    assert shards.shard_of("account::alice", 7) == 3
    assert shards.shard_of("account::bob", 1024) == 258


def test_two_shards_together_do_everything_and_neither_does_the_others(world, store, clock):
    first, second = workers.Node("w0", Shard(0, 2)), workers.Node("w1", Shard(1, 2))
    workers.run_pass(store, clock, node=first)
    assert credited_sellers(store) == owned(first.shard, SELLERS)
    assert finished_locks(store) == owned(first.shard, LOCKED)

    workers.run_pass(store, clock, node=second)
    assert credited_sellers(store) == set(SELLERS)
    assert finished_locks(store) == set(LOCKED)
    for name in LOCKED:
        assert get_account(store, name).value["balance"] == 7
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_the_sharded_walks_skip_what_they_do_not_own(world, store, clock):
    shard = Shard(1, 2)
    assert credit.credit_all(store, clock, shard=shard)["credited"] == len(owned(shard, SELLERS))
    from accounts.recovery import run_recovery

    finished = run_recovery(store, clock, shard=shard)
    assert finished["locks"] == len(owned(shard, LOCKED))
    assert "withdrawals" not in finished  # an unsplit pass: the lead shard's alone
    assert "withdrawals" in run_recovery(store, clock, shard=Shard(0, 2))


def test_unsplit_tasks_run_on_the_lead_shard_only(store, clock, monkeypatch):
    ran = []
    monkeypatch.setattr(workers, "_tasks", {"outbox": lambda s, c: ran.append(1) or {}})
    workers.run_pass(store, clock, node=workers.Node("w1", Shard(1, 2)))
    assert ran == []
    workers.run_pass(store, clock, node=workers.Node("w0", Shard(0, 2)))
    assert ran == [1]


def test_overlapping_nodes_do_no_harm(world, store, clock):
    """A lone node that covers everything, beside both halves of a split, all at once."""
    crowd = [
        workers.Node("all", ALL),
        workers.Node("a", Shard(0, 2)),
        workers.Node("b", Shard(1, 2)),
    ]
    barrier, errors = threading.Barrier(len(crowd)), []

    def work(node) -> None:
        barrier.wait()
        try:
            for _ in range(3):
                counters = workers.run_pass(store, clock, node=node)
                assert counters["failed"] == 0, counters
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in crowd]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    workers.run_pass(store, clock, node=workers.Node("all", ALL))  # whatever a busy lock deferred
    assert credited_sellers(store) == set(SELLERS)
    for seller in SELLERS:
        assert [e["delta"] for e in full_ledger(store, seller) if e["kind"] == "credit"] == [98_500]
    for name in LOCKED:
        assert get_account(store, name).value["balance"] == 7
        assert [e["kind"] for e in full_ledger(store, name)] == ["adjust"]
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_run_workers_with_a_shard_does_its_part(world, store, clock):
    out = run("--once", "--shard", "1/2", "--node", "w1", "-v", "2")
    assert "node w1, shard 1/2" in out and "creditor [sharded]" in out
    assert credited_sellers(store) == owned(Shard(1, 2), SELLERS)
    beat = nodes.read_nodes(store, clock.now(), 60)["w1"].beat
    assert beat["shard"] == "1/2" and beat["passes"] == 1


def test_a_node_that_died_on_this_machine_does_not_block_its_restart(store, clock, monkeypatch):
    import subprocess
    import sys

    if not nodes.machine_id():
        pytest.skip("no /proc here: a dead process cannot be told from a live one")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    monkeypatch.setattr(nodes.os, "getpid", lambda: proc.pid)
    live_node(store, clock, "web-old", "0/2")  # registered with the pid that has now exited
    monkeypatch.undo()
    assert "shard 0/2" in run("--once", "--shard", "0/2", "--node", "web-new")
    assert set(nodes.read_nodes(store, clock.now(), 60)) == {"web-new"}


def test_standing_orders_are_executed_by_the_shard_that_owns_their_seller(store, clock):
    """The order executor and its recovery split the books by seller, like the campaigns."""
    from accounts.recovery import run_recovery
    from adspace import order_exec, orders

    make_market(store, clock, buyers=("bob",), funds=10_000_000)
    placed = {}
    for seller in SELLERS:
        ensure_account(store, clock, seller)
        n = gateway.create_campaign(store, clock, seller, 100_000, 24, 300, 250, [])
        buy.buy_next_slot(store, clock, "bob", seller, n, 0, HUGE)
        placed[seller] = orders.place_order(store, clock, "bob", seller, n, 0, 150_000, None)
    clock.advance(24 * 3600)  # every order is due: the price fell from 200 000 to 100 000

    def bought() -> set[str]:
        return {
            seller
            for seller, i in placed.items()
            if store.get(orders.order_key("bob", i)).value["state"] == "bought"
        }

    first, second = Shard(0, 2), Shard(1, 2)
    assert order_exec.run_executor(store, clock, shard=first)["bought"] == len(
        owned(first, SELLERS)
    )
    assert bought() == owned(first, SELLERS)
    assert "orders" in run_recovery(store, clock, shard=second)  # a sharded pass on every node
    order_exec.run_executor(store, clock, shard=second)
    assert bought() == set(SELLERS)
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)
