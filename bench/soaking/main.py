"""The run: arguments, set-up, the load phase under faults, heal, audit, reconcile, the summary."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from . import cluster, netfaults
from .chain import Chain, SoakNode, derive_regtest_addresses
from .common import (
    ADDRESSES_PER_LIST_PAGE,
    HTTP_TIMEOUT,
    PAYOUT_WALLET,
    PY,
    ROOT,
    SATS,
    Stats,
    free_port,
)
from .faults import (
    chain_loop,
    cluster_fault_loop,
    fault_loop,
    guarded,
    net_fault_loop,
    processor_loop,
    race_loop,
)
from .gocaves import Gocaves
from .processes import Processes, make_env, wait_healthy
from .reconcile import check_payouts, drained, reconcile
from .report import Finish, summary
from .users import Site, User


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=PACKAGE_DOC.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load phase")
    parser.add_argument("--users", type=int, default=30, help="simulated users (20-50 is usual)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--heal-timeout", type=float, default=180.0, help="seconds to drain")
    parser.add_argument(
        "--processor-lease",
        type=int,
        default=15,
        help="seconds of the withdrawal processor's lease in the soak (0: run the command "
        "unchanged, with its default lease, and never kill it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--couchbase",
        action="store_true",
        help="run the site and workers on gocaves (GOCAVES, ../shared/tools/gocaves or PATH) "
        "instead of the embedded store",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the production topology (implies --couchbase): gocaves, Redis and PostgreSQL "
        "started by the run, two web nodes (requests spread at random) and two worker nodes "
        "(run_workers --shard 0/2 and 1/2); kills of whole nodes too; a password change on one "
        "node must end the sessions on the other",
    )
    parser.add_argument(
        "--net-faults",
        action="store_true",
        help="with --couchbase or --cluster: drop, cut and slow the traffic to gocaves' KV ports "
        "at random (root, iptables and tc; every rule removed on heal, exit and signals)",
    )
    parser.add_argument(
        "--heal-net",
        action="store_true",
        help="only remove any network fault a soak left behind (rules marked adspace-soak)",
    )
    args = parser.parse_args(argv)
    if args.cluster:
        args.couchbase = True
    if args.net_faults and not args.couchbase:
        parser.error(
            "--net-faults puts faults between the site and Couchbase: add --couchbase or --cluster"
        )
    if args.cluster and not args.heal_net and (lacking := cluster.missing()):
        parser.error("--cluster needs: " + "; ".join(lacking))
    if args.net_faults and (why := netfaults.unavailable()):
        parser.error(why)
    return args


def _exit_on_signal(signum, frame) -> None:
    # SIGTERM ends the run through the same finally blocks as an error: processes stopped,
    # network faults healed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.heal_net:
        removed = netfaults.heal_leftovers()
        print("soak: removed " + ("; ".join(removed) if removed else "nothing: no rule was left"))
        return 0
    signal.signal(signal.SIGTERM, _exit_on_signal)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    started = time.monotonic()
    stats = Stats()
    work = Path(tempfile.mkdtemp(prefix="adspace-soak-"))
    node = SoakNode()
    node.start()
    node.create_wallet(PAYOUT_WALLET, watch_only=False, balance=1_000_000 * SATS)
    ports = [free_port() for _ in range(cluster.WEB_NODES if args.cluster else 1)]
    caves = Gocaves(work) if args.couchbase else None
    services = cluster.Services() if args.cluster else None
    try:
        if caves is not None:
            caves.start()
        if services is not None:
            services.start()
    except BaseException:
        if services is not None:
            services.stop()
        if caves is not None:
            caves.stop()
        node.stop()
        raise
    env, backend = make_env(work, node.url, caves.env() if caves else None)
    if services is not None:
        env.update(services.env())
    net = netfaults.NetFaults(caves.kv_ports()) if args.net_faults else None
    stats.journal = open(work / "soak.log", "a")  # noqa: SIM115 - closed at the end
    procs = Processes(
        work,
        env,
        stats,
        web_ports=ports,
        worker_args=cluster.worker_args() if args.cluster else None,
    )
    chain = Chain(node, stats)
    site = Site(args, ports, stats, chain)
    print(f"soak: seed {seed}, {args.users} users, {args.minutes:g} min, {backend} docstore, "
          f"work dir {work}", flush=True)  # fmt: skip
    if services is not None:
        print(f"soak: {services.describe()}; web nodes on ports {', '.join(map(str, ports))}; "
              "worker nodes " + ", ".join(" ".join(a) for a in cluster.worker_args())
              + ("" if net else "; no network faults (not asked for)"), flush=True)  # fmt: skip
    ok = False
    try:
        # 1. The real thing, fresh.
        procs.manage("migrate", "--noinput", "-v", "0")
        procs.manage("collectstatic", "--noinput", "-v", "0")
        procs.manage("init_docstore", "-v", "0")
        count = max(100, args.users * 8)
        count = -(-count // ADDRESSES_PER_LIST_PAGE) * ADDRESSES_PER_LIST_PAGE
        keys = work / "keys.txt"
        keys.write_text("\n".join(derive_regtest_addresses("m/84h/1h/0h", count)) + "\n")
        procs.manage("import_keys", str(keys), "-v", "0")
        payout_addresses = derive_regtest_addresses("m/84h/1h/1h", args.users)
        procs.start_workers()
        procs.start_web()
        for p in ports:
            if not wait_healthy(p, 60):
                raise RuntimeError(
                    f"the site on port {p} did not answer /healthz with 200; see {work}"
                )
        setup_seconds = time.monotonic() - started
        print(f"soak: up in {setup_seconds:.1f} s ({count} pool addresses); load for "
              f"{args.minutes:g} min", flush=True)  # fmt: skip

        # 2 and 3. Users, the chain, the processor and the faults.
        users = [User(site, i, seed, payout_addresses[i]) for i in range(args.users)]
        threads = [threading.Thread(target=u.run, name=u.name, daemon=True) for u in users]
        rngs = {
            name: random.Random(f"{seed}:{name}")
            for name in ("chain", "faults", "proc", "race", "net")
        }
        loops = [
            ("chain", chain_loop, (site, rngs["chain"])),
            (
                "faults",
                cluster_fault_loop if args.cluster else fault_loop,
                (site, procs, rngs["faults"]),
            ),
            ("processor", processor_loop, (site, procs, rngs["proc"], args.processor_lease)),
            ("races", race_loop, (site, users, rngs["race"])),
        ]
        if net is not None:
            loops.append(("network faults", net_fault_loop, (site, net, rngs["net"], args.cluster)))
        threads += [
            threading.Thread(target=guarded, args=(stats, name, fn, *a), name=name, daemon=True)
            for name, fn, a in loops
        ]
        for t in threads:
            t.start()
        load_end = time.monotonic() + args.minutes * 60
        while time.monotonic() < load_end:
            time.sleep(min(5.0, max(0.0, load_end - time.monotonic())))
            if procs.web_died():
                raise RuntimeError("a gunicorn master died")
        site.stop.set()
        for t in threads:
            t.join(timeout=HTTP_TIMEOUT * 4)
        stuck = [t.name for t in threads if t.is_alive()]
        if args.minutes >= 1 and args.users >= 3 and not site.campaigns:
            # Sellers create campaigns in their first steps: none means the soak's forms or page
            # parsing no longer fit the site, and nothing was bought or sold.
            stats.problem("no campaign was created or seen: the soak no longer fits the sell page")
        if net is not None:
            net.heal()
            if net.active() or netfaults.our_rules():
                raise RuntimeError("network faults still in place after the heal")

        # 4. Heal: no more faults; let the system drain.
        heal_start = time.monotonic()
        left, dump = heal(args, procs, chain, stats, ports)
        heal_seconds = time.monotonic() - heal_start

        # 4b. The cluster: what it must have injected; a password change across nodes.
        cluster_lines: list[str] = []
        cluster_problems: list[str] = []
        if args.cluster:
            kills, nets = cluster.node_kills(stats.faults), cluster.net_faults(stats.faults)
            short, asked = cluster.shortfalls(args.minutes, stats.faults, net is not None)
            cluster_problems += short
            cluster_lines.append(
                f"cluster: {len(ports)} web nodes, {len(procs.workers)} worker nodes, Redis, "
                f"PostgreSQL; node kills {kills}, network faults {nets}"
                + ("" if net is not None else " (not asked for)")
                + f"; {asked}: {'met' if not short else 'NOT met'}"
            )
            cluster_lines += [f"  {why}" for why in short]
            line, problems = cluster.password_check(users, ports, stats)
            cluster_problems += problems
            cluster_lines += [line] if line else []
            cluster_lines += [f"  {p}" for p in problems]

        # 5. Audit, read everything, reconcile.
        audit = subprocess.run(
            [PY, "manage.py", "audit"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        for u in users:
            u.final_read()
        dump = procs.dump(full=True)
        locks_left = [f"account::{n} ({a['lock']['kind']})" for n, a in dump["accounts"].items()
                      if a["lock"]]  # fmt: skip
        rec = reconcile(users, dump, chain)
        rec.disagreements += site.address_conflicts
        rec.disagreements += check_payouts(dump, chain)

        # 6. The summary.
        out, ok = summary(
            Finish(
                seed=seed, users=args.users, minutes=args.minutes, backend=backend,
                setup_seconds=setup_seconds, started=started, stats=stats, dump=dump, rec=rec,
                left=left, heal_seconds=heal_seconds, locks_left=locks_left, audit=audit,
                web_logs=procs.log_paths("gunicorn"), worker_logs=procs.log_paths("worker"),
                stuck=stuck, replay=replay_options(args),
                extra=cluster_lines, extra_problems=cluster_problems,
            )
        )  # fmt: skip
        print("\n".join(out), flush=True)
    except Exception as exc:
        print(f"soak: ERROR {exc!r} (seed {seed}); logs in {work}", flush=True)
        args.keep = True
        raise
    finally:
        site.stop.set()
        if net is not None:
            net.heal()
        procs.stop()
        if caves is not None:
            caves.stop()
        if services is not None:
            services.stop()
        node.stop()
        with stats.lock:
            stats.journal.close()
            stats.journal = None
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: logs and store kept in {work}", flush=True)
    return 0 if ok else 1


def replay_options(args) -> str:
    names = ("cluster", "net_faults") if args.cluster else ("couchbase", "net_faults")
    return "".join(f" --{name.replace('_', '-')}" for name in names if getattr(args, name))


def heal(
    args, procs: Processes, chain: Chain, stats: Stats, ports: list[int]
) -> tuple[list[str], dict]:
    """No more faults: restart what is down and let recovery, the creditor, the watcher and the
    processor drain everything. Returns what is still left (empty: drained) and the last dump."""
    heal_start = time.monotonic()
    procs.start_workers()
    procs.start_web()
    for port in ports:
        wait_healthy(port, 30)
    chain.mine(1)
    left: list[str] = ["not checked yet"]
    last_processor = 0.0
    dump: dict = {}
    while time.monotonic() - heal_start < args.heal_timeout:
        dump = procs.dump()
        left = drained(dump, chain)
        if not left:
            break
        pending = any(
            r["state"] in ("queued", "sending", "failed")
            for reqs in dump["withdrawals"].values()
            for r in reqs
        )
        if pending and time.monotonic() - last_processor > 2:
            outcome = procs.run_processor(args.processor_lease)
            stats.op("process_withdrawals (heal)", outcome)
            last_processor = time.monotonic()
        procs.start_workers()
        chain.mine(1)
        time.sleep(1.0)
    return left, dump
