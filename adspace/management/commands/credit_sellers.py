"""Credit sellers for their sales (the transaction creditor), once or in a loop until SIGTERM."""

from __future__ import annotations

from django.conf import settings

from accounts.commands import StoreCommand
from accounts.money import format_btc
from accounts.workers import StopFlag, serve
from adspace.credit import run_creditor

HEARTBEAT = "credit_sellers"


class Command(StoreCommand):
    help = (
        "Credit each finished sale to its seller, minus the fee; loops until SIGTERM unless --once."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="run one pass and exit")

    def handle(self, *args, **options) -> None:
        verbosity, once = options["verbosity"], options["once"]

        def report(passes: int, counters: dict[str, int]) -> None:
            news = any(counters.get(k) for k in ("credited", "busy", "errors", "failed"))
            if not (verbosity >= 2 or (verbosity >= 1 and (news or once))):
                return
            if counters.get("failed"):
                self.stdout.write(self.style.ERROR(f"credit pass {passes}: failed (see the log)"))
                return
            text = (
                f"credited {counters.get('credited', 0)} sale(s), "
                f"{format_btc(counters.get('sats', 0))} BTC"
            )
            extra = [f"{k}={counters[k]}" for k in ("busy", "errors") if counters.get(k)]
            if extra:
                text += f" ({', '.join(extra)})"
            style = self.style.ERROR if counters.get("errors") else self.style.SUCCESS
            self.stdout.write(style(f"credit pass {passes}: {text}"))

        stop = StopFlag()
        with stop.handling_signals():
            passes = serve(
                HEARTBEAT,
                run_creditor,
                interval=settings.WORKER_INTERVAL_SECONDS,
                once=once,
                stop=stop,
                report=report,
            )
        if verbosity >= 1 and not once:
            self.stdout.write(
                self.style.SUCCESS(f"credit_sellers stopped after {passes} pass(es).")
            )
