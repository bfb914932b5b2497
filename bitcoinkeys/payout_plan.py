"""What a payout pass would do, and what it did: read-only calculation and the report lines.

`calculate` reads the queue and writes nothing (`process_withdrawals --calculate-only`); `Line`
and `ProcessReport` are what a pass (payouts.process) tells the command, line by line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from accounts.money import format_btc
from docstore import Clock, Store

from .payout_lease import sent_today
from .withdraw_queue import scan
from .withdrawals import FAILED, QUEUED, SENDING


def fee_reserve() -> int:
    """Kept back from the payout wallet's balance for one batch's network fee."""
    return settings.PAYOUT_FEE_RESERVE_SATS


@dataclass
class Line:
    key: str
    username: str
    i: int
    amount: int
    fee: int
    address: str
    state: str
    result: str = ""
    txid: str | None = None
    detail: str = ""


@dataclass
class Calculation:
    """What a pass would do: requests to send (and look up), the refunds it owes."""

    lines: list[Line] = field(default_factory=list)
    needed: int = 0  # amounts this pass may send (the wallet needs this + fee_reserve)
    fees: int = 0
    cap_note: str = ""
    fee_reserve: int = 0

    @property
    def to_send(self) -> list[Line]:
        return [ln for ln in self.lines if ln.result in ("send", "look up")]


def make_line(key: str, req: dict, result: str = "", detail: str = "") -> Line:
    return Line(
        key, req["username"], req["i"], req["amount"], req["fee"], req["address"], req["state"],
        result=result, txid=req.get("txid"), detail=detail,
    )  # fmt: skip


def calculate(store: Store, clock: Clock, daily_cap: int | None = None) -> Calculation:
    """Read-only: every request the next pass would act on, and what the payout wallet needs."""
    calc = Calculation(fee_reserve=fee_reserve())
    used = sent_today(store, clock.now()) if daily_cap is not None else 0
    capped = False
    for row in scan(store, clock).in_state(QUEUED, SENDING, FAILED):
        req = row.doc.value
        if req["state"] == FAILED:
            calc.lines.append(
                make_line(row.key, req, "refund", "refused by the wallet: refund owed")
            )
            continue
        if req["state"] == SENDING:
            # Possibly sent already: the pass looks it up first. Counted in case it was not.
            calc.lines.append(make_line(row.key, req, "look up", "interrupted; looked up first"))
        else:
            if daily_cap is not None and (capped or used + req["amount"] > daily_cap):
                capped = True
                calc.lines.append(make_line(row.key, req, "wait", "over today's cap"))
                continue
            used += req["amount"]
            calc.lines.append(make_line(row.key, req, "send"))
        calc.needed += req["amount"]
        calc.fees += req["fee"]
    if capped:
        calc.cap_note = cap_note(daily_cap, sum(ln.result == "wait" for ln in calc.lines))
    return calc


def cap_note(cap: int, waiting: int) -> str:
    return (
        f"Daily cap of {format_btc(cap)} BTC reached: {waiting} request(s) wait for the next "
        f"day (UTC)."
    )


def short_note(alert: dict) -> str:
    return (
        f"Payout wallet short: {alert['waiting']} request(s), {format_btc(alert['waitingSats'])} "
        f"BTC waiting, the wallet has {format_btc(alert['balance'])} BTC (short by "
        f"{format_btc(alert['shortBy'])} BTC with the network fee reserve). They stay queued and "
        f"go out on the first pass after it is funded."
    )


@dataclass
class ProcessReport:
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (batch key, txid, requests) of every transaction this pass sent.
    batches: list[tuple[str, str, int]] = field(default_factory=list)
    # Why the pass stopped before the end: a send or look-up whose outcome is unknown, a lost
    # lease, a stop request. The command exits non-zero when set.
    stopped: str | None = None
    short: dict | None = None  # the short-wallet alert this pass raised

    def count(self, result: str) -> int:
        return sum(1 for ln in self.lines if ln.result == result)

    @property
    def sent_amount(self) -> int:
        return sum(ln.amount for ln in self.lines if ln.result == "sent")
