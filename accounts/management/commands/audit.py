"""Check every invariant of DESIGN.md 6.7; exit non-zero on any breach or imbalance."""

from __future__ import annotations

from django.core.management.base import CommandError

from accounts.audit import run_audit
from accounts.commands import StoreCommand
from docstore import DocstoreError, get_clock, get_store

LAST_KEY = "audit::last"


class Command(StoreCommand):
    help = "Audit the books and every invariant; exits non-zero on any breach or imbalance."

    def handle(self, *args, **options) -> None:
        verbosity = options["verbosity"]
        store, clock = get_store(), get_clock()
        report = run_audit(store)
        lines = report.lines()
        if verbosity >= 1:
            for line in lines:
                failed = line.startswith("BREACH") or line.endswith(": NO")
                self.stdout.write(self.style.ERROR(line) if failed else line)
        try:
            # The last result is a cache for the admin and monitoring, not money: upsert is right.
            store.upsert(LAST_KEY, {"at": clock.now(), "ok": report.ok, "lines": lines})
        except DocstoreError as exc:
            self.stderr.write(f"could not store {LAST_KEY}: {exc}")
        if not report.ok:
            problems = [f"{len(report.breaches)} breach(es)"]
            if not report.balanced:
                problems.append("the books do not balance")
            raise CommandError("Audit failed: " + ", ".join(problems) + ".")
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS("Audit passed."))
