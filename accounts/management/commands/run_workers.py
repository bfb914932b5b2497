"""The worker process: every registered task (recovery, and what the other apps add) in a loop."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.workers import StopFlag, registered_tasks, run_pass, serve

HEARTBEAT = "run_workers"


class Command(BaseCommand):
    help = "Run every worker task in passes, with a heartbeat, until SIGTERM/SIGINT (or --once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="run one pass and exit")

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]
        interval = settings.WORKER_INTERVAL_SECONDS
        if verbosity >= 1:
            names = ", ".join(registered_tasks()) or "none"
            every = "once" if once else f"every {interval:g} s"
            self.stdout.write(f"run_workers: tasks {names}; {every}")

        def report(passes: int, counters: dict[str, int]) -> None:
            busy = {k: v for k, v in counters.items() if v}
            if verbosity >= 2 or (verbosity >= 1 and busy):
                text = ", ".join(f"{k}={v}" for k, v in sorted(busy.items())) or "nothing to do"
                style = self.style.ERROR if counters.get("failed") else self.style.SUCCESS
                self.stdout.write(style(f"pass {passes}: {text}"))

        stop = StopFlag()
        with stop.handling_signals():
            passes = serve(
                HEARTBEAT, run_pass, interval=interval, once=once, stop=stop, report=report
            )
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"run_workers stopped after {passes} pass(es)."))
