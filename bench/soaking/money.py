"""A simulated user's money moves: buying a slot, withdrawing, cancelling a withdrawal, and, when
an answer was lost, re-reading the account page as a person would to learn what happened.

A mixin of users.User (it uses the user's page(), follow(), op() and unknown()).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from .client import ACCEPTED, CANCEL_FORM, FILLER, Lost, ledger_rows
from .common import (
    LEDGER_ROWS_PER_PAGE,
    MIN_WITHDRAWAL_SATS,
    WITHDRAW_FEE_PERMILLE,
    btc,
    fee_up,
    parse_sats,
)


@dataclass
class Unknown:
    """An operation whose answer was lost: it may or may not have happened."""

    kind: str  # buy | withdraw | cancel
    at: float
    why: str
    owner: str = ""
    n: int = -1
    accepted: int = 0
    amount: int = 0
    fee: int = 0
    i: int = -1
    resolved: str = ""  # "" (still unknown) | happened | not
    how: str = ""  # how the user learned it: "account page" or "ledger at the end"
    ref: str = ""
    retry_after: float = 0.0


class MoneyMoves:
    """Buying, withdrawing and cancelling, with the unknown outcomes they can leave."""

    # -- buying --

    def pick_campaign(self) -> tuple[str, int, int, int] | None:
        with self.site.lock:
            choices = sorted(
                (o, n, w, h) for (o, n), (w, h) in self.site.campaigns.items() if o != self.name
            )
        return self.rng.choice(choices) if choices else None

    def prepare_buy(self, owner: str, n: int) -> tuple[int, str] | str | None:
        """Read the campaign page: (price shown, a fitting ad), or "no ad", or None."""
        page = self.page(f"/ads/buy-ad-space/{owner}/{n}")
        if page is None or page.status != 200:
            return None
        price = ACCEPTED.search(page.text)
        fits = [v for v, disabled in FILLER.findall(page.text) if not disabled]
        if not price or not fits:
            return "no ad"
        return int(price.group(1)), self.rng.choice(fits)

    def buy(self) -> None:
        picked = self.pick_campaign()
        if picked is None:
            self.browse()
            return
        owner, n, w, h = picked
        prepared = self.prepare_buy(owner, n)
        if prepared == "no ad":
            self.upload_ad(w, h)
            return
        if prepared is None:
            return
        price, filler = prepared
        if price > (self.balance or 0) and self.rng.random() < 0.85:
            if time.monotonic() - self.last_deposit > 8 and self.rng.random() < 0.5:
                self.deposit()
            return
        self.post_buy(owner, n, price, filler)

    def post_buy(self, owner: str, n: int, accepted: int, filler: str) -> None:
        path = f"/ads/buy-ad-space/{owner}/{n}/buy"
        op = Unknown("buy", time.monotonic(), "", owner=owner, n=n, accepted=accepted)
        try:
            resp = self.http.post(
                path, {"filler": filler, "accepted_price": str(accepted)}, money=True
            )
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf  # may still be running: only the end can tell
            self.unknown(op)
            self.op("buy", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("buy", "unknown (503)")
            return
        if resp.status != 302:
            self.op("buy", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            won = re.search(r"You bought slot #(\d+) for (\d+\.\d{8}) BTC", m)
            if won:
                price = parse_sats(won.group(2))
                self.buys[f"slot::{owner}::{n}::{won.group(1)}"] = price
                detail = f"slot::{owner}::{n}::{won.group(1)} for {price} (accepted {accepted})"
                if price > accepted:
                    self.stats.problem(f"{self.name} charged {price} > accepted {accepted}")
                self.op("buy", "won", detail)
                return
        text = " ".join(msgs)
        for needle, outcome in (
            ("Someone else just bought", "lost the race"),
            ("The price is now", "price went up"),
            ("Your balance is", "insufficient funds"),
            ("Another operation on your account", "account busy"),
        ):
            if needle in text:
                self.op("buy", outcome, f"{owner}/{n} at {accepted}")
                return
        op.why = "no message shown"
        self.unknown(op)
        self.op("buy", "unknown (no message)")

    # -- withdrawing --

    def withdraw(self) -> None:
        page = self.page("/account/withdraw/")
        if page is None or page.status != 200:
            return
        top = re.search(r'data-max-amount="(\d+)"', page.text)
        if not top or int(top.group(1)) < MIN_WITHDRAWAL_SATS:
            return
        top_amount = int(top.group(1))
        if self.rng.random() < 0.2:
            amount = top_amount  # "withdraw everything"
        else:
            amount = self.rng.randint(MIN_WITHDRAWAL_SATS, max(MIN_WITHDRAWAL_SATS, top_amount))
        fee = fee_up(amount, WITHDRAW_FEE_PERMILLE)
        fields = {"amount": btc(amount), "address": self.payout_address, "action": "withdraw"}
        op = Unknown("withdraw", time.monotonic(), "", amount=amount, fee=fee)
        try:
            resp = self.http.post("/account/withdraw/", fields, money=True)
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf
            self.unknown(op)
            self.op("withdraw", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("withdraw", "unknown (503)")
            return
        if resp.status != 302:
            self.seen(resp)
            self.op("withdraw", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            queued = re.search(
                r"Withdrawal #(\d+) of (\d+\.\d{8}) BTC queued \(fee (\d+\.\d{8})", m
            )
            if queued:
                got = (parse_sats(queued.group(2)), parse_sats(queued.group(3)))
                if got != (amount, fee):
                    self.stats.problem(f"{self.name} withdrawal {got} != asked {amount}")
                self.withdrawals[int(queued.group(1))] = got
                self.op("withdraw", "queued", f"#{queued.group(1)} {got}")
                return
        op.why = "no message shown"
        self.unknown(op)
        self.op("withdraw", "unknown (no message)")

    def cancel(self) -> None:
        page = self.page("/account/withdraw/")
        if page is None or page.status != 200:
            return
        cancellable = [int(i) for i in CANCEL_FORM.findall(page.text)]
        if not cancellable:
            return
        i = self.rng.choice(cancellable)
        self.cancel_tried.add(i)
        op = Unknown("cancel", time.monotonic(), "", i=i)
        try:
            resp = self.http.post(f"/account/withdraw/{i}/cancel/", money=True)
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf
            self.unknown(op)
            self.op("cancel", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("cancel", "unknown (503)")
            return
        if resp.status != 302:
            self.op("cancel", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            done = re.search(r"Withdrawal #(\d+) cancelled; (\d+\.\d{8}) BTC went back", m)
            if done:
                self.cancels[int(done.group(1))] = parse_sats(done.group(2))
                self.op("cancel", "cancelled", f"#{i}")
                return
        if msgs:
            self.op("cancel", "refused (too late or busy)")
            return
        op.why = "no message shown"
        self.unknown(op)
        self.op("cancel", "unknown (no message)")

    # -- learning what happened to an unknown outcome, as a person would --

    def re_read_account(self, due: list[Unknown]) -> None:
        page = self.page("/account/")
        if page is None or page.status != 200:
            return
        if "An operation is in progress on your account" in page.text:
            for op in due:
                op.retry_after = time.monotonic() + 2
            return
        rows = ledger_rows(page.text)
        claimed = set(self.buys) | {f"withdraw::{self.name}::{i}" for i in self.withdrawals}
        claimed |= {f"refund:withdraw::{self.name}::{i}" for i in self.cancels}
        claimed |= {u.ref for u in self.unknowns if u.resolved == "happened"}
        # The page holds the newest 50 entries; an entry older than all of them is not on it.
        covers = len(rows) < LEDGER_ROWS_PER_PAGE
        for op in due:
            match = None
            for _, ref, delta in rows:
                if ref in claimed:
                    continue
                if op.kind == "buy" and ref.startswith(f"slot::{op.owner}::{op.n}::"):
                    if -delta <= op.accepted:
                        match = ref
                elif op.kind == "withdraw" and ref.startswith(f"withdraw::{self.name}::"):
                    if -delta == op.amount + op.fee:
                        match = ref
                elif op.kind == "cancel" and ref == f"refund:withdraw::{self.name}::{op.i}":
                    match = ref
                if match:
                    break
            if match:
                op.resolved, op.ref, op.how = "happened", match, "account page"
                claimed.add(match)
                self.op("re-read account", f"{op.kind} had happened", match)
            elif covers:
                op.resolved, op.how = "not", "account page"
                self.op("re-read account", f"{op.kind} had not happened")
            else:
                op.retry_after = math.inf  # too many newer entries: the end reconciles it
                self.op("re-read account", f"{op.kind} left to the end")
