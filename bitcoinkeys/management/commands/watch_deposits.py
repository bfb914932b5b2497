"""The deposit watcher on its own: poll the node and credit confirmed payments, in a loop.

`run_workers` runs the same pass among its tasks; this command is for deployments that give the
watcher its own process (or a one-off `--once` after the node was down).
"""

from __future__ import annotations

from django.conf import settings

from accounts.commands import StoreCommand
from accounts.leases import LeaseLost
from accounts.nodes import default_name
from accounts.workers import Node, StopFlag, serve
from bitcoinkeys.chain import get_chain
from bitcoinkeys.deposits import ROLE, fenced_chain, watch_pass

HEARTBEAT = "watch_deposits"


class Command(StoreCommand):
    help = (
        "Credit confirmed bitcoin payments to deposit addresses; loops until SIGTERM unless --once."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="run one pass and exit")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="seconds between passes (default WORKER_INTERVAL_SECONDS)",
        )

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]
        interval = options["interval"] or settings.WORKER_INTERVAL_SECONDS
        chain = get_chain()
        if not chain.available:
            self.stderr.write(
                self.style.WARNING(
                    "CHAIN_BACKEND is none: deposits cannot be detected here, nothing to watch. "
                    "Staff can credit balances by hand from the admin."
                )
            )
            return
        if verbosity >= 1:
            every = "once" if once else f"every {interval:g} s"
            self.stdout.write(f"watch_deposits: {chain.name} backend; {every}")

        def report(passes: int, counters: dict[str, int]) -> None:
            busy = {k: v for k, v in counters.items() if v}
            if verbosity >= 2 or (verbosity >= 1 and (busy or once)):
                text = ", ".join(f"{k}={v}" for k, v in sorted(busy.items())) or "nothing new"
                bad = (
                    counters.get("unavailable")
                    or counters.get("chainerror")
                    or counters.get("failed")
                )
                style = self.style.ERROR if bad else self.style.SUCCESS
                self.stdout.write(style(f"pass {passes}: {text}"))

        # The same role lease as run_workers' watcher: one watcher at a time, wherever it runs.
        node = Node(default_name(), lease_seconds=settings.WORKER_LEASE_SECONDS)

        def work(store, clock) -> dict[str, int]:
            lease = node.lease(store, clock, ROLE)
            if not lease.hold():
                return {"standby": 1}
            try:
                return watch_pass(store, clock, fenced_chain(get_chain(), lease))
            except LeaseLost:
                return {"leaselost": 1}

        stop = StopFlag()
        try:
            with stop.handling_signals():
                passes = serve(
                    HEARTBEAT, work, interval=interval, once=once, stop=stop, report=report
                )
        finally:
            node.release_leases()
        if verbosity >= 1 and not once:
            self.stdout.write(
                self.style.SUCCESS(f"watch_deposits stopped after {passes} pass(es).")
            )
