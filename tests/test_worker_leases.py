"""Role leases (accounts/leases.py): one holder at a time, takeover only after expiry, and a node
that lost its lease makes no further RPC call (the deposit watcher, the withdrawal processor).

The clock is a FixedClock everywhere (a process gets the round's time), the node is the scripted
JSON-RPC server of tests/rpcserver.py, and crashes come from the fault harness's FaultAt.
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from django.conf import settings

import docstore
from accounts import leases, nodes, workers
from accounts.leases import Lease, LeaseLost, lease_key
from accounts.shards import Shard
from bitcoinkeys import deposits, payouts
from bitcoinkeys.chain import BitcoindChain, set_chain
from docstore import FixedClock
from docstore.faults import Crash, HookedStore
from tests.harness import MODES, CountingHook, FaultAt, InjectedError
from tests.rpcserver import FakeBitcoind
from tests.test_deposits import addr, balance, give_address

SECONDS = 90
NEED = 35


def lease(store, clock, holder: str, role: str = "deposits") -> Lease:
    return Lease(store, clock, role, holder, SECONDS)


@pytest.fixture
def node():
    with FakeBitcoind() as n:
        yield n
    assert not n.errors, n.errors


@pytest.fixture
def chain(node):
    c = BitcoindChain(url=node.url, wallet="deposits", payout_wallet="payouts", timeout=5)
    yield c
    c.close()


# --- one holder ----------------------------------------------------------------------------------


def test_the_first_node_takes_the_lease_and_the_second_waits(store, clock):
    a, b = lease(store, clock, "a"), lease(store, clock, "b")
    assert a.hold() and not b.hold()
    value = store.get(lease_key("deposits")).value
    assert (value["holder"], value["until"]) == ("a", clock.now() + SECONDS)
    clock.advance(SECONDS - 1)
    assert a.hold()  # renewed: b waits a whole lease again
    clock.advance(SECONDS - 1)
    assert not b.hold()


def test_a_lease_is_taken_over_only_after_it_expires(store, clock):
    a, b = lease(store, clock, "a"), lease(store, clock, "b")
    assert a.hold()
    clock.advance(SECONDS - 1)
    assert not b.hold()  # one second left: still a's
    clock.advance(1)
    assert b.hold()  # expired (until <= now): taken over by CAS
    with pytest.raises(LeaseLost, match="b took the lease over"):
        a.ensure(NEED)  # a, paused until now, is stopped before its next call
    assert not a.hold()


def test_a_released_lease_is_taken_at_once(store, clock):
    a, b = lease(store, clock, "a"), lease(store, clock, "b")
    assert a.hold()
    a.release()
    assert b.hold()
    assert store.get(lease_key("deposits")).value["holder"] == "b"


def test_racing_threads_never_both_hold_the_lease(store, clock):
    racers, rounds = 8, 15
    winners: list[list[str]] = [[] for _ in range(rounds)]
    barrier = threading.Barrier(racers)
    held = [lease(store, clock, f"t{i}") for i in range(racers)]

    def race(i: int) -> None:
        for r in range(rounds):
            barrier.wait()
            if held[i].hold():
                winners[r].append(f"t{i}")
            barrier.wait()
            if i == 0:
                clock.advance(SECONDS)  # nobody renews between rounds: each round is a takeover
            barrier.wait()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(len(w) == 1 for w in winners), winners


def _process_racer(config, prefix, name, rounds, barrier, queue):
    store, clock = docstore.build_store(config, prefix=prefix), FixedClock(1_700_000_000)
    mine = Lease(store, clock, "deposits", name, SECONDS)
    won = []
    for r in range(rounds):
        clock.set(1_700_000_000 + r * SECONDS)  # every process at the round's time
        barrier.wait()
        if mine.hold():
            won.append(r)
    queue.put((name, won))


def test_racing_processes_never_both_hold_the_lease(store):
    rounds, ctx = 10, multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_racer,
            args=(store.config, store.prefix, f"p{i}", rounds, barrier, queue),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(60)
    wins = sorted(r for won in results.values() for r in won)
    assert wins == list(range(rounds)), results


# --- crash points around take and renew ------------------------------------------------------------


def calls_of(fn, store) -> int:
    hook = CountingHook()
    fn(HookedStore(store, hook))
    return hook.calls


def test_a_crash_anywhere_in_taking_the_lease_leaves_one_holder_at_most(make_world_store):
    probe = make_world_store()
    take_calls = calls_of(lambda s: lease(s, FixedClock(), "a").hold(), probe)
    assert take_calls >= 2  # the read and the insert
    for i in range(take_calls):
        for mode in MODES:
            store, clock = make_world_store(), FixedClock()
            a, b = lease(store, clock, "a"), lease(store, clock, "b")
            hooked = Lease(HookedStore(store, FaultAt(i, mode)), clock, "deposits", "a", SECONDS)
            try:
                hooked.hold()
            except (Crash, InjectedError):
                pass  # died, or a read failed: the pass stops either way
            landed = leases.read_lease(store, "deposits")
            if landed is None:
                assert b.hold(), (i, mode)  # nothing written: the rival takes it at once
                assert not a.hold()
                continue
            # a's write landed, whatever a was told: the rival must wait for its expiry...
            assert landed["holder"] == "a"
            assert not b.hold(), (i, mode)
            assert a.hold()  # ...while a, re-reading, finds it is its own
            clock.advance(SECONDS)
            assert b.hold() and not a.hold()
            with pytest.raises(LeaseLost):
                a.ensure(NEED)


def test_a_crash_anywhere_in_a_renewal_never_lets_a_lost_holder_call_on(make_world_store):
    probe, probe_clock = make_world_store(), FixedClock()
    lease(probe, probe_clock, "a").hold()
    renew_calls = calls_of(lambda s: Lease(s, probe_clock, "deposits", "a", SECONDS).hold(), probe)
    for i in range(renew_calls):
        for mode in MODES:
            store, clock = make_world_store(), FixedClock()
            a, b = lease(store, clock, "a"), lease(store, clock, "b")
            assert a.hold()
            clock.advance(SECONDS - 10)
            a.store = HookedStore(store, FaultAt(i, mode))
            try:
                a.hold()
            except (Crash, InjectedError):
                pass  # died, or a read failed: the pass stops either way
            a.store = store
            until = leases.read_lease(store, "deposits")["until"]
            assert until in (clock.now() + 10, clock.now() + SECONDS), (i, mode)
            clock.set(until)  # expired, whichever renewal landed
            assert b.hold()
            with pytest.raises(LeaseLost):
                a.ensure(NEED)


# --- fencing: no RPC after the lease is lost -----------------------------------------------------


def test_a_holder_that_lost_the_lease_makes_no_further_rpc_call(store, clock, node, chain):
    deposits.ready_deposits()
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    node.pay(addr(1), 500_000)
    node.mine()
    mine, rival = lease(store, clock, "a"), lease(store, clock, "b")
    assert mine.hold()
    fenced = deposits.fenced_chain(chain, mine)
    fenced.check_node()  # under the lease: the call goes out
    before = len(node.calls)
    assert before > 0

    # Paused past the lease; the rival takes the role over.
    clock.advance(SECONDS)
    assert rival.hold()
    with pytest.raises(LeaseLost):
        deposits.watch_pass(store, clock, fenced)
    assert len(node.calls) == before  # not one more RPC
    assert balance(store, "alice") == 0

    # The rival's own pass credits the payment, once.
    set_chain(chain)
    try:
        counters = deposits.run_watch_task(store, clock, lease=rival)
    finally:
        set_chain(None)
    assert counters["credited"] == 1 and balance(store, "alice") == 500_000


def test_a_call_is_made_only_with_time_left_to_cover_it(store, clock, node, chain):
    mine = lease(store, clock, "a")
    assert mine.hold()
    fenced = deposits.fenced_chain(chain, mine)
    need = settings.BITCOIND_TIMEOUT + leases.LEASE_MARGIN_SECONDS
    clock.advance(SECONDS - need + 1)  # fewer seconds left than a call may take
    fenced.check_node()
    # The fence renewed the lease before letting the call out.
    assert leases.read_lease(store, "deposits")["until"] == clock.now() + SECONDS


def test_the_worker_runs_the_watcher_on_the_lease_holder_only(store, clock, node, chain):
    set_chain(chain)
    try:
        first, second = workers.Node("w0", Shard(0, 2)), workers.Node("w1", Shard(1, 2))
        assert "deposits.standby" not in workers.run_pass(store, clock, node=first)
        before = len(node.calls)
        counters = workers.run_pass(store, clock, node=second)
        assert counters["deposits.standby"] == 1
        assert len(node.calls) == before  # the standby node never talks to bitcoind
        assert first.held_roles() == ["deposits"] and second.held_roles() == []

        # The holder dies (no more renewals): after the lease, the other node takes over.
        clock.advance(SECONDS)
        assert "deposits.standby" not in workers.run_pass(store, clock, node=second)
        assert second.held_roles() == ["deposits"]
        counters = workers.run_pass(store, clock, node=first)
        assert counters["deposits.standby"] == 1 and first.held_roles() == []
    finally:
        set_chain(None)


def test_a_processor_that_lost_its_lease_sends_nothing(store, clock, node, chain, monkeypatch):
    """The withdrawal processor's wallet calls are fenced by its own lease the same way."""
    from bitcoinkeys.payout_lease import LEASE_KEY, ProcessorLease

    processor = ProcessorLease(store, clock, SECONDS, owner="p1")
    processor.acquire()
    fenced = leases.fenced(chain, processor.ensure, NEED)
    clock.advance(SECONDS)
    ProcessorLease(store, clock, SECONDS, owner="p2").acquire()  # the rival after expiry
    before = len(node.calls)
    with pytest.raises(payouts.LeaseLost):
        fenced.send_many([("bcrt1qexample", 5_000_000)], "payoutbatch::x")
    assert len(node.calls) == before
    assert store.get(LEASE_KEY).value["owner"] == "p2"


# --- /healthz ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_shows_every_node_its_shard_and_its_leases(client, store, clock):
    for name, spec in (("w0", Shard(0, 2)), ("w1", Shard(1, 2))):
        nodes.register(store, clock, name, spec, settings.WORKER_STALE_SECONDS)
    assert lease(store, clock, "w1").hold()
    nodes.beat(store, "w0", clock.now(), Shard(0, 2), [])
    nodes.beat(store, "w1", clock.now(), Shard(1, 2), ["deposits"])
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["missing"] == [] and body["stale"] == []
    assert body["nodes"] == {
        "w0": {"at": clock.now(), "live": True, "shard": "0/2", "leases": []},
        "w1": {"at": clock.now(), "live": True, "shard": "1/2", "leases": ["deposits"]},
    }
    assert body["leases"]["deposits"] == {"holder": "w1", "until": clock.now() + SECONDS}
    assert body["leases"]["withdrawals"] is None


@pytest.mark.django_db
def test_healthz_is_red_while_a_shard_has_no_live_node(client, store, clock):
    for name, spec in (("w0", Shard(0, 2)), ("w1", Shard(1, 2))):
        nodes.register(store, clock, name, spec, settings.WORKER_STALE_SECONDS)
        nodes.beat(store, name, clock.now(), spec, [])
    clock.advance(settings.WORKER_STALE_SECONDS + 1)
    nodes.beat(store, "w0", clock.now(), Shard(0, 2), [])
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["stale"] == ["w1"] and response.json()["nodes"]["w1"]["live"] is False

    # A replacement for the dead node's shard, under a new name: healthy again.
    nodes.register(store, clock, "w2", Shard(1, 2), settings.WORKER_STALE_SECONDS)
    nodes.beat(store, "w2", clock.now(), Shard(1, 2), [])
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["stale"] == []


@pytest.mark.django_db
def test_healthz_is_red_when_a_shard_stopped_cleanly_and_nobody_runs_it(client, store, clock):
    for name, spec in (("w0", Shard(0, 2)), ("w1", Shard(1, 2))):
        nodes.register(store, clock, name, spec, settings.WORKER_STALE_SECONDS)
        nodes.beat(store, name, clock.now(), spec, [])
    nodes.deregister(store, "w1")
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["missing"] == ["1/2"]


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def test_a_lease_of_a_process_that_died_on_this_machine_is_taken_at_once(store, clock):
    """A worker killed and restarted here (a new pid, so a new node name) need not wait a lease."""
    gone = {"machine": nodes.machine_id(), "pid": dead_pid()}
    if not gone["machine"]:
        pytest.skip("no /proc here: a dead process cannot be told from a live one")
    Lease(store, clock, "deposits", "old-node", SECONDS, extra={"node": gone}).hold()
    restarted = workers.Node("new-node", Shard(0, 1))
    assert restarted.lease(store, clock, "deposits").hold()
    assert leases.read_lease(store, "deposits")["holder"] == "new-node"

    # A holder on another machine (or alive here) is never presumed dead.
    elsewhere = {"machine": "another-host|boot|pid:[1]", "pid": gone["pid"]}
    Lease(store, clock, "other", "far-node", SECONDS, extra={"node": elsewhere}).hold()
    assert not restarted.lease(store, clock, "other").hold()
