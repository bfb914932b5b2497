"""Pay out queued withdrawals from the payout wallet (DESIGN.md 6.5), or show what that would take.

    manage.py process_withdrawals --calculate-only [--daily-cap-btc X]
    manage.py process_withdrawals --execute [--yes] [--daily-cap-btc X]

--calculate-only changes nothing: one line per request, the totals, and the payout wallet's balance
when the node answers, so the operator can top the wallet up first (the original's calculate pass,
which ignored what the wallet already held). --execute asks before sending unless --yes; without a
terminal (stdin closed or at EOF) it sends nothing. It exits non-zero when the pass had to stop
with a payout whose outcome is unknown: that batch stays `sending` and the next run looks it up
in the wallet before anything is sent again. A payout wallet too short for the queue is not an
error: what fits is paid (oldest first), the rest stays queued with an alert (admin dashboard,
log, /healthz), and the first run after the wallet is funded pays it. `--execute --yes` from a
timer every minute is safe: the lease lets one run at a time, and an idle run only reads.
"""

from __future__ import annotations

import sys
import uuid

from django.core.management.base import CommandError

from accounts.commands import StoreCommand
from accounts.money import MoneyError, format_btc, parse_btc
from accounts.nodes import default_name
from accounts.workers import StopFlag
from bitcoinkeys import payouts as w
from bitcoinkeys.chain import get_chain
from docstore import get_clock, get_store


class Command(StoreCommand):
    help = "Send queued withdrawals (--execute) or show what they need (--calculate-only)."
    # `stdin` lets tests (and call_command users) answer the confirmation prompt.
    stealth_options = ("stdin",)

    def add_arguments(self, parser) -> None:
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument(
            "--calculate-only",
            action="store_true",
            help="list what would be sent and what the payout wallet needs; change nothing",
        )
        mode.add_argument(
            "--execute", action="store_true", help="send the queued withdrawals (asks first)"
        )
        parser.add_argument(
            "--yes", action="store_true", help="with --execute: do not ask for confirmation"
        )
        parser.add_argument(
            "--daily-cap-btc",
            metavar="BTC",
            help="send at most this much per UTC day; later requests wait for the next day",
        )

    def handle(self, *args, **options) -> None:
        self.verbosity = options["verbosity"]
        cap = self._cap(options.get("daily_cap_btc"))
        store, clock = get_store(), get_clock()
        calc = w.calculate(store, clock, cap)
        self._show_calculation(calc)
        chain = get_chain()
        self._show_payout_balance(chain, calc.needed + calc.fee_reserve if calc.needed else 0)
        if options["calculate_only"]:
            return
        if not getattr(chain, "available", True):
            raise CommandError(
                "No bitcoin node is configured (CHAIN_BACKEND=none): nothing can be sent."
            )
        if not calc.lines:
            self._say("Nothing to send.")
            return
        sends = calc.to_send
        if sends and not options["yes"]:
            self._confirm(len(sends), calc.needed, options.get("stdin") or sys.stdin)
        stop = StopFlag()
        try:
            with stop.handling_signals():
                report = w.process(
                    store, clock, chain, cap,
                    on_line=self._show_outcome, should_stop=lambda: stop.requested,
                    # Named after the machine and process, so /healthz says where it runs.
                    owner=f"{default_name()}-{uuid.uuid4().hex[:8]}",
                )  # fmt: skip
        except (w.ProcessorBusy, w.NoPayoutWallet, w.NodeNotReady) as exc:
            raise CommandError(str(exc)) from None
        for note in report.notes:
            self._say(self.style.WARNING(note))
        self._say(
            f"{report.count('sent')} sent ({format_btc(report.sent_amount)} BTC), "
            f"{report.count('failed')} failed and refunded, {report.count('waiting')} waiting; "
            f"{len(report.batches)} transaction(s)."
        )
        if report.stopped:
            raise CommandError(report.stopped)
        self._say(self.style.SUCCESS("Withdrawal pass complete."))

    # -- input --

    def _cap(self, text: str | None) -> int | None:
        if text is None:
            return None
        try:
            return parse_btc(text)
        except MoneyError as exc:
            raise CommandError(f"--daily-cap-btc: {exc.message}") from None

    def _confirm(self, count: int, total: int, stdin) -> None:
        # The question is asked whatever the verbosity: silence must never mean "yes".
        self.stdout.write(
            f"Send {count} withdrawal{'s' if count != 1 else ''} totalling {format_btc(total)} BTC? "
            "[y/N] ",
            ending="",
        )
        self.stdout.flush()
        answer = stdin.readline() if stdin is not None else ""
        if answer.strip().lower() not in ("y", "yes"):
            self.stdout.write("")
            raise CommandError("Aborted: nothing was sent.")

    # -- output --

    def _say(self, text: str, level: int = 1) -> None:
        if self.verbosity >= level:
            self.stdout.write(text)

    def _show_calculation(self, calc: w.Calculation) -> None:
        if not calc.lines:
            self._say("No queued withdrawals.")
            return
        for ln in calc.lines:
            note = f"  ({ln.detail})" if ln.detail else ""
            self._say(
                f"{ln.result:<8} {ln.key}  {format_btc(ln.amount)} BTC "
                f"(fee {format_btc(ln.fee)}) -> {ln.address}{note}"
            )
        sends = calc.to_send
        self._say(
            f"Total: {len(sends)} withdrawal(s), {format_btc(calc.needed)} BTC to send "
            f"(fees earned {format_btc(calc.fees)} BTC), in one transaction. The payout wallet "
            f"must hold at least {format_btc(calc.needed + calc.fee_reserve)} BTC (with the "
            f"{format_btc(calc.fee_reserve)} BTC network fee reserve); what does not fit stays "
            f"queued."
        )
        if calc.cap_note:
            self._say(self.style.WARNING(calc.cap_note))

    def _show_payout_balance(self, chain, needed: int) -> None:
        if not getattr(chain, "available", True):
            self._say("Payout wallet: no bitcoin node configured (CHAIN_BACKEND=none).")
            return
        try:
            balance = chain.payout_balance()
        except Exception as exc:  # an unreachable node must not hide the calculation above
            self._say(self.style.WARNING(f"Payout wallet balance unavailable: {exc}"))
            return
        line = f"Payout wallet balance: {format_btc(balance)} BTC"
        if balance < needed:
            short = format_btc(needed - balance)
            self._say(self.style.WARNING(f"{line}; short by {short} BTC."))
        else:
            self._say(line)

    def _show_outcome(self, ln: w.Line) -> None:
        amount = f"{format_btc(ln.amount)} BTC -> {ln.address}"
        if ln.result == "sent":
            found = f" ({ln.detail})" if ln.detail else ""
            self._say(self.style.SUCCESS(f"sent     {ln.key}  {amount}  txid {ln.txid}{found}"))
        elif ln.result == "failed":
            self._say(self.style.ERROR(f"failed   {ln.key}  {amount}: {ln.detail}"))
        elif ln.result in ("sending", "conflict"):
            self._say(self.style.ERROR(f"{ln.result:<8} {ln.key}  {amount}: {ln.detail}"), 0)
        elif ln.result == "waiting":
            self._say(f"waiting  {ln.key}  {amount}: {ln.detail}")
        else:
            self._say(f"{ln.result:<8} {ln.key}: {ln.detail}", 2)
