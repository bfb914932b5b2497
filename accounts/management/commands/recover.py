"""Roll forward whatever a crash left behind (every registered recovery pass), once or in a loop.

Each pass runs at once when called (the first pass of the loop too); the loop then repeats it
every RECOVERY_INTERVAL_SECONDS, the cadence recovery has inside `run_workers`.
"""

from __future__ import annotations

from django.conf import settings

from accounts.commands import StoreCommand
from accounts.recovery import run_recovery
from accounts.workers import StopFlag, serve

HEARTBEAT = "recover"


class Command(StoreCommand):
    help = (
        "Finish stale locks and other interrupted work now; then every RECOVERY_INTERVAL_SECONDS "
        "until SIGTERM, unless --once."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="run one pass and exit")

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]

        def report(passes: int, counters: dict[str, int]) -> None:
            finished = {k: v for k, v in counters.items() if v}
            if verbosity >= 2 or (verbosity >= 1 and (finished or once)):
                text = ", ".join(f"{k}={v}" for k, v in sorted(finished.items())) or "nothing"
                style = self.style.ERROR if counters.get("failed") else self.style.SUCCESS
                self.stdout.write(style(f"recovery pass {passes}: finished {text}"))

        stop = StopFlag()
        with stop.handling_signals():
            passes = serve(
                HEARTBEAT,
                run_recovery,
                interval=settings.RECOVERY_INTERVAL_SECONDS,
                once=once,
                stop=stop,
                report=report,
            )
        if verbosity >= 1 and not once:
            self.stdout.write(self.style.SUCCESS(f"recover stopped after {passes} pass(es)."))
