"""The worker process: every registered task (recovery, and what the other apps add) in a loop."""

from __future__ import annotations

from functools import partial

from django.conf import settings

from accounts.commands import StoreCommand
from accounts.workers import Schedule, StopFlag, registered_tasks, run_pass, serve, task_every

HEARTBEAT = "run_workers"


class Command(StoreCommand):
    help = (
        "Run the worker tasks in passes, with a heartbeat, until SIGTERM/SIGINT (or --once). "
        "Recovery runs on the first pass and then every RECOVERY_INTERVAL_SECONDS."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="run one pass (every task) and exit"
        )

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]
        interval = settings.WORKER_INTERVAL_SECONDS
        if verbosity >= 1:
            names = []
            for name in registered_tasks():
                every = None if once else task_every(name)
                names.append(name if every is None else f"{name} (every {every:g} s)")
            every = "once" if once else f"every {interval:g} s"
            self.stdout.write(f"run_workers: tasks {', '.join(names) or 'none'}; {every}")

        def report(passes: int, counters: dict[str, int]) -> None:
            busy = {k: v for k, v in counters.items() if v}
            if verbosity >= 2 or (verbosity >= 1 and busy):
                text = ", ".join(f"{k}={v}" for k, v in sorted(busy.items())) or "nothing to do"
                style = self.style.ERROR if counters.get("failed") else self.style.SUCCESS
                self.stdout.write(style(f"pass {passes}: {text}"))

        # One schedule for the life of this process: a restarted worker recovers on its first pass.
        work = partial(run_pass, schedule=Schedule())
        stop = StopFlag()
        with stop.handling_signals():
            passes = serve(HEARTBEAT, work, interval=interval, once=once, stop=stop, report=report)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"run_workers stopped after {passes} pass(es)."))
