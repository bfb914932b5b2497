"""The audit: invariants of DESIGN.md 6.7 over every document, reached by key from directories.

Each app registers a function that walks its own documents and adds to one `Report`: money held
(`held`, the left side of the equation: balances, holds, uncredited sales, fees earned) and money
that came in (`came_in`, the right side: credited deposits, staff adjustments, minus payouts), plus
any breach it finds. The books balance when both sides agree to the satoshi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from docstore import Store

from .gateway import adjust_key, full_ledger, iter_accounts


@dataclass
class Report:
    held: dict[str, int] = field(default_factory=dict)
    came_in: dict[str, int] = field(default_factory=dict)
    facts: dict[str, int] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    check_locks: bool = True
    # Ledger entries of these kinds, (username, entry), for the app that owns them to match
    # against its documents (adspace: every rejection refund must be a rejected sale's).
    collected: dict[str, list[tuple[str, dict]]] = field(default_factory=lambda: {"reject": []})

    def add(self, side: dict[str, int], name: str, amount: int) -> None:
        side[name] = side.get(name, 0) + amount

    @property
    def balanced(self) -> bool:
        return sum(self.held.values()) == sum(self.came_in.values())

    @property
    def ok(self) -> bool:
        return self.balanced and not self.breaches

    def lines(self) -> list[str]:
        out = [f"held {name}: {amount} sats" for name, amount in sorted(self.held.items())]
        out += [f"came in {name}: {amount} sats" for name, amount in sorted(self.came_in.items())]
        out += [f"{name}: {count}" for name, count in sorted(self.facts.items())]
        held, came_in = sum(self.held.values()), sum(self.came_in.values())
        out.append(f"money: held {held} == came in {came_in}: {'yes' if held == came_in else 'NO'}")
        out += [f"BREACH {breach}" for breach in self.breaches]
        return out


AuditFn = Callable[[Store, Report], None]
_audits: list[AuditFn] = []


def register_audit(fn: AuditFn) -> None:
    if fn not in _audits:
        _audits.append(fn)


def audit_accounts(store: Store, report: Report) -> None:
    report.add(report.held, "balances", 0)
    report.add(report.came_in, "adjustments", 0)
    for username, doc in iter_accounts(store):
        account = doc.value
        report.facts["accounts"] = report.facts.get("accounts", 0) + 1
        report.add(report.held, "balances", account["balance"])
        entries = full_ledger(store, username, account)
        ledger_sum = sum(e["delta"] for e in entries)
        if ledger_sum != account["balance"]:
            report.breaches.append(
                f"account::{username} balance {account['balance']} != ledger sum {ledger_sum}"
            )
        if account["balance"] < 0:
            report.breaches.append(f"account::{username} balance below zero")
        running = 0
        for e in entries:
            running += e["delta"]
            if e["balanceAfter"] != running:
                report.breaches.append(f"ledger of {username} breaks at ref {e['ref']}")
                break
        refs = [e["ref"] for e in entries]
        if len(refs) != len(set(refs)):
            report.breaches.append(f"ledger of {username} applies a ref twice")
        for e in entries:
            if e["kind"] in report.collected:
                report.collected[e["kind"]].append((username, e))
        adjusts = [e for e in entries if e["kind"] == "adjust"]
        report.add(report.came_in, "adjustments", sum(e["delta"] for e in adjusts))
        _check_adjust_commits(store, report, username, adjusts)
        if report.check_locks and account.get("lock"):
            report.breaches.append(f"account::{username} still locked: {account['lock']['kind']}")


def _check_adjust_commits(store: Store, report: Report, username: str, adjusts: list) -> None:
    """Each adjustment settled under a request document (entries that name their `request`;
    older ones predate them) has that document, for this account and this amount."""
    committed = [e for e in adjusts if "request" in e]
    found = store.get_multi([adjust_key(e["request"]) for e in committed]) if committed else {}
    for e in committed:
        doc = found.get(adjust_key(e["request"]))
        if doc is None:
            report.breaches.append(f"adjust {e['request']} of {username} has no request document")
        elif doc.value["username"] != username or doc.value["delta"] != e["delta"]:
            report.breaches.append(
                f"adjust {e['request']} of {username} ({e['delta']}) disagrees with its request "
                f"document ({doc.value['username']}, {doc.value['delta']})"
            )


def run_audit(store: Store, check_locks: bool = True) -> Report:
    report = Report(check_locks=check_locks)
    for fn in _audits:
        fn(store, report)
    return report
