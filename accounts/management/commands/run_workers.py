"""The worker process: every registered task (recovery, and what the other apps add) in a loop.

`--shard i/n` makes this one of n worker nodes (README, Operations): the sharded tasks act only on
the directory entries the shard owns, role tasks run here only while this node holds their
lease, and the other tasks only on shard 0. `--node NAME` names the node (default
hostname-pid). A malformed spec, or one that overlaps a live node's, refuses to start.
"""

from __future__ import annotations

import logging
from functools import partial

from django.conf import settings
from django.core.management.base import CommandError

from accounts import nodes, shards
from accounts.commands import StoreCommand
from accounts.workers import (
    Node,
    Schedule,
    StopFlag,
    registered_tasks,
    run_pass,
    serve,
    task_every,
    task_kind,
)
from docstore import get_clock, get_store

HEARTBEAT = "run_workers"
log = logging.getLogger(__name__)


class Command(StoreCommand):
    help = (
        "Run the worker tasks in passes, with a heartbeat, until SIGTERM/SIGINT (or --once). "
        "Recovery runs on the first pass and then every RECOVERY_INTERVAL_SECONDS. With "
        "--shard i/n, this is node i of n."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="run one pass (every task) and exit"
        )
        parser.add_argument(
            "--shard",
            default="0/1",
            metavar="I/N",
            help="run shard I of N (0 <= I < N): every node of a deployment uses the same N",
        )
        parser.add_argument(
            "--node", default=None, metavar="NAME", help="this node's name (default hostname-pid)"
        )

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]
        try:
            shard = shards.parse(options["shard"])
            name = nodes.check_name(options["node"] or nodes.default_name())
        except ValueError as exc:
            raise CommandError(f"run_workers refuses to start: {exc}") from None
        interval = settings.WORKER_INTERVAL_SECONDS
        store, clock = get_store(), get_clock()
        try:
            nodes.register(store, clock, name, shard, settings.WORKER_STALE_SECONDS)
        except nodes.ShardOverlap as exc:
            raise CommandError(f"run_workers refuses to start: {exc}") from None
        node = Node(name, shard, settings.WORKER_LEASE_SECONDS)
        if verbosity >= 1:
            names = []
            for task in registered_tasks():
                every = None if once else task_every(task)
                kind = task_kind(task)
                text = task if every is None else f"{task} (every {every:g} s)"
                names.append(text if kind == "lead" or shard.count == 1 else f"{text} [{kind}]")
            every = "once" if once else f"every {interval:g} s"
            self.stdout.write(
                f"run_workers: node {name}, shard {shard}; tasks {', '.join(names) or 'none'}; "
                f"{every}"
            )

        def report(passes: int, counters: dict[str, int]) -> None:
            busy = {k: v for k, v in counters.items() if v}
            if verbosity >= 2 or (verbosity >= 1 and busy):
                text = ", ".join(f"{k}={v}" for k, v in sorted(busy.items())) or "nothing to do"
                style = self.style.ERROR if counters.get("failed") else self.style.SUCCESS
                self.stdout.write(style(f"pass {passes}: {text}"))

        # One schedule for the life of this process: a restarted worker recovers on its first pass.
        work = partial(run_pass, schedule=Schedule(), node=node)
        stop = StopFlag()
        try:
            with stop.handling_signals():
                passes = serve(
                    HEARTBEAT, work, interval=interval, once=once, stop=stop, report=report,
                    node=node,
                )  # fmt: skip
        finally:
            # A successor takes the roles at once instead of after the lease; a one-off pass
            # stays listed (its heartbeat shows when the worker last ran, as before).
            node.release_leases()
            if not once:
                try:
                    nodes.deregister(get_store(), name)
                except Exception:
                    # The entry goes stale; /healthz shows it until a node replaces it.
                    log.warning("could not remove node %s from workernodes", name, exc_info=True)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"run_workers stopped after {passes} pass(es)."))
