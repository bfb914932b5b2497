"""The fault schedule: background loops that play the rest of the world during the load phase.

The chain (blocks, fee bumps, double spends, reorgs, node hiccups), the kills (gunicorn workers,
worker nodes), the withdrawal processor on a timer (sometimes killed mid-payout) and slot races.
Each loop draws from its own seeded random stream.
"""

from __future__ import annotations

import random
import threading

from .client import Lost
from .common import HTTP_TIMEOUT, Stats
from .processes import Processes
from .users import Site, User


def guarded(stats: Stats, name: str, fn, *args) -> None:
    """Run a background loop; an exception in the soak itself is reported, not swallowed."""
    try:
        fn(*args)
    except Exception:
        stats.crashed(name)


def chain_loop(site: Site, rng: random.Random) -> None:
    chain, stats = site.chain, site.stats
    while not site.stop.wait(rng.uniform(1.0, 3.0)):
        r = rng.random()
        if r < 0.15:
            chain.bump(rng)
        elif r < 0.22:
            chain.double_spend(rng)
        if rng.random() < 0.03 and chain.node.tip > 2:
            chain.node.reorg(1)  # its payments are unconfirmed until the next block
            stats.chain_event("reorgs")
            site.stop.wait(rng.uniform(0.3, 1.5))
        if rng.random() < 0.05:
            # The node hiccups: the next few calls of one read RPC fail (Core's "warming up"),
            # whoever makes them (the watcher, "check now", the add-funds page).
            method = rng.choice(["listsinceblock", "listreceivedbyaddress", "gettransaction"])
            chain.node.fail(method, -28, "Loading block index...", times=rng.randint(1, 3))
            stats.chain_event("node hiccups", detail=method)
        chain.mine(1)


def fault_loop(site: Site, procs: Processes, rng: random.Random) -> None:
    stats = site.stats
    while not site.stop.wait(rng.uniform(1.5, 5.0)):
        if rng.random() < 0.65:
            # Mostly aimed at a worker serving a POST, so kills land inside money protocols
            # rather than between requests; sometimes wherever it is.
            how = procs.kill_web_worker(rng, aim=3.0 if rng.random() < 0.8 else 0.0)
            if how:
                stats.fault(f"gunicorn worker SIGKILL ({how})")
        else:
            if procs.kill_worker(rng, aim=2.0 if rng.random() < 0.8 else 0.0):
                stats.fault("run_workers SIGKILL")
                site.stop.wait(rng.uniform(0.5, 3.0))
                procs.start_workers()
                stats.fault("run_workers restarted")


def cluster_fault_loop(site: Site, procs: Processes, rng: random.Random) -> None:
    """--cluster: kills of any node. A gunicorn worker of either web node (mostly mid-request), a
    whole web node (master and workers at once, then started again: meanwhile the users' requests
    go to the other node), or a worker node (`run_workers --shard i/2`, started again under the
    same name, so it takes its shard and any lease it held straight back). Paced so that five
    minutes hold well over the 20 node kills `make soak-cluster` asks for (~45 expected)."""
    stats = site.stats
    while not site.stop.wait(rng.uniform(1.0, 3.0)):
        r = rng.random()
        if r < 0.35:
            how = procs.kill_web_worker(rng, aim=3.0 if rng.random() < 0.8 else 0.0)
            if how:
                stats.fault(f"gunicorn worker SIGKILL ({how})")
        elif r < 0.675:
            node = procs.kill_web_node(rng, aim=2.0 if rng.random() < 0.7 else 0.0)
            if node is not None:
                stats.fault("web node SIGKILL", detail=f"node {node.index} port {node.port}")
                site.stop.wait(rng.uniform(0.5, 3.0))
                procs.start_web()
                stats.fault("web node restarted")
        elif procs.kill_worker(rng, aim=2.0 if rng.random() < 0.8 else 0.0):
            stats.fault("worker node SIGKILL")
            site.stop.wait(rng.uniform(0.5, 3.0))
            procs.start_workers()
            stats.fault("worker node restarted")


def processor_loop(site: Site, procs: Processes, rng: random.Random, lease: int) -> None:
    node, stats = site.chain.node, site.stats
    while not site.stop.wait(rng.uniform(3.0, 6.0)):
        r = rng.random()
        kill = ""
        if r < 0.1:
            node.fail("sendmany", -6, "Insufficient funds")
            stats.chain_event("wallet refusals armed")
        elif r < 0.2:
            with node.lock:
                node.drop_sends = 1
            stats.chain_event("payout answers to lose armed")
        elif lease > 0 and r < 0.4:
            kill = "after the money left"
        elif lease > 0 and r < 0.5:
            kill = "before the money left"
        node.sent_event.clear()
        node.send_hold = 0.5 if kill else 0.0
        node.abort_next_send = kill == "before the money left"
        try:
            outcome = procs.run_processor(lease, kill_on_send=node if kill else None)
        finally:
            node.send_hold = 0.0
            node.abort_next_send = False
        if outcome == "killed mid-payout":
            outcome = f"killed mid-payout ({kill})"
            stats.fault(f"processor SIGKILL mid-payout ({kill})")
        stats.op("process_withdrawals", outcome)


def _race_buy(barrier, u: User, owner: str, n: int, price: int, filler: str) -> None:
    try:
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        pass
    try:
        u.post_buy(owner, n, price, filler)
    except Lost:
        pass
    except Exception:
        u.stats.crashed(f"race {u.name}")


def race_loop(site: Site, users: list[User], rng: random.Random) -> None:
    """Now and then several users load the same campaign and press "buy" at the same moment."""
    stats = site.stats
    while not site.stop.wait(rng.uniform(3.0, 8.0)):
        with site.lock:
            campaigns = sorted(site.campaigns.items())
        if not campaigns:
            continue
        (owner, n), _ = rng.choice(campaigns)
        racers = [u for u in users if u.name != owner and u.registered]
        racers = rng.sample(racers, min(len(racers), rng.randint(3, 8)))
        held: list[tuple[User, int, str]] = []
        try:
            for u in racers:
                if not u.lock.acquire(timeout=3):
                    continue
                prepared = None
                try:
                    prepared = u.prepare_buy(owner, n)
                except Lost:
                    pass
                if isinstance(prepared, tuple):
                    held.append((u, *prepared))
                else:
                    u.lock.release()
            if len(held) < 2:
                continue
            barrier = threading.Barrier(len(held))
            threads = [
                threading.Thread(target=_race_buy, args=(barrier, u, owner, n, price, filler))
                for u, price, filler in held
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=HTTP_TIMEOUT * 3)
            stats.op("race", f"{len(held)} buyers")
        finally:
            for u, *_ in held:
                u.lock.release()


def net_fault_loop(site: Site, net, rng: random.Random, fast: bool = False) -> None:
    """Network faults between the site and Couchbase (netfaults.NetFaults), one at a time: on one
    KV port (one node) or all, held a few seconds, then healed before the next. `fast` (--cluster):
    shorter gaps and holds, ~75 faults in five minutes where `make soak-cluster` asks for 50."""
    stats = site.stats
    gap, drop, cut, slow = (
        ((1.0, 3.0), (1.0, 3.0), (0.5, 2.0), (2.0, 5.0))
        if fast
        else ((2.0, 6.0), (1.0, 5.0), (0.5, 3.0), (3.0, 10.0))
    )
    while not site.stop.wait(rng.uniform(*gap)):
        ports = net.ports if rng.random() < 0.3 else [rng.choice(net.ports)]
        where = "every KV port" if len(ports) == len(net.ports) else f"KV port {ports[0]}"
        r = rng.random()
        try:
            if r < 0.45:
                hold = rng.uniform(*drop)
                net.drop(ports)
                stats.fault("net DROP (silent loss)", detail=f"{where} for {hold:.1f} s")
            elif r < 0.7:
                hold = rng.uniform(*cut)
                net.reset(ports)
                stats.fault("net REJECT tcp-reset (cut)", detail=f"{where} for {hold:.1f} s")
            else:
                hold, kbit = rng.uniform(*slow), rng.randint(60, 600)
                net.slow(ports, kbit)
                stats.fault("net slow link (htb)", detail=f"{where} {kbit} kbit for {hold:.1f} s")
            site.stop.wait(hold)
        finally:
            net.heal()
