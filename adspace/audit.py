"""Adspace invariants: contiguous slots, one tx per sale matching its slot, no lagging campaign,
each credited sale credited to its seller exactly once with amount - fee; and its side of the
money equation (uncredited sales are money held for sellers, fees of credited sales are earned).

Reads are batched: campaigns, slots, txs and accounts come in get_multi batches, and a seller's
full ledger is read at most once per audit. Like the rest of the audit, the figures are exact on
a quiet store; on a live one (`check_locks=False`) a credit landing between the read of a tx and
the read of its seller can be reported, so run it quiet when it must be exact.
"""

from __future__ import annotations

from collections import defaultdict

from accounts.audit import Report
from accounts.gateway import account_key, full_ledger
from docstore import Store

from . import gateway
from .credit import net_amount
from .review import KIND as REJECT_KIND

CHUNK = 500


class _Sellers:
    """Each seller's (and each refunded buyer's) account, "credit" and "reject" ledger entries,
    read once per audit."""

    def __init__(self, store: Store):
        self.store = store
        self.accounts: dict[str, dict | None] = {}
        self.credits: dict[str, dict[str, list[int]]] = {}
        self.refunds: dict[str, dict[str, list[int]]] = {}
        self.matched: dict[str, set[str]] = defaultdict(set)
        self.refunds_matched: dict[str, set[str]] = defaultdict(set)

    def load(self, sellers: set[str]) -> None:
        wanted = [s for s in sellers if s not in self.accounts]
        found = gateway.get_many(self.store, [account_key(s) for s in wanted])
        for seller in wanted:
            account = found.get(account_key(seller))
            self.accounts[seller] = account
            entries = full_ledger(self.store, seller, account) if account else []
            credits: dict[str, list[int]] = defaultdict(list)
            refunds: dict[str, list[int]] = defaultdict(list)
            for entry in entries:
                if entry["kind"] == "credit":
                    credits[entry["ref"]].append(entry["delta"])
                elif entry["kind"] == REJECT_KIND:
                    refunds[entry["ref"]].append(entry["delta"])
            self.credits[seller] = credits
            self.refunds[seller] = refunds

    def lock(self, seller: str) -> dict | None:
        return (self.accounts.get(seller) or {}).get("lock")


def audit_adspace(store: Store, report: Report) -> None:
    report.add(report.held, "uncredited sales", 0)
    report.add(report.held, "sale fees earned", 0)
    report.add(report.held, "seller credits in flight", 0)
    report.add(report.held, "rejection refunds in flight", 0)
    sellers = _Sellers(store)

    refs = list(gateway.iter_campaign_refs(store))
    for start in range(0, len(refs), CHUNK):
        chunk = refs[start : start + CHUNK]
        campaigns = gateway.get_many(store, [gateway.campaign_key(o, n) for o, n in chunk])
        credited: list[tuple[str, str, dict]] = []
        rejected: list[tuple[str, str, dict]] = []
        selling: set[str] = set()  # owners with at least one sale in this chunk
        for owner, n in chunk:
            campaign = campaigns.get(gateway.campaign_key(owner, n))
            if campaign is None:
                continue  # a dangling directory entry: the campaign insert never happened
            report.facts["campaigns"] = report.facts.get("campaigns", 0) + 1
            last = campaign.get("last")
            top = last["slot"] if last else -1
            credited += _audit_slots(store, report, owner, n, top, rejected)
            if top >= 0:
                selling.add(owner)
        # Sellers are read after their txs, so a credit finishing in between shows as settled.
        sellers.load(selling | {tx["buyer"] for _, _, tx in rejected})
        for owner, key, tx in credited:
            _audit_credit(report, sellers, owner, key, tx)
        for _, key, tx in rejected:
            _audit_rejection(report, sellers, key, tx)
    # Every "credit" entry of a seller must be a sale of theirs that is credited.
    for seller, credits in sellers.credits.items():
        for ref in credits.keys() - sellers.matched[seller]:
            report.breaches.append(
                f"ledger of {seller} has a credit for {ref}, not a credited sale"
            )
    # Every "reject" entry of any account (the accounts audit, which runs first, collected them
    # all) must be the refund of a rejected sale that account bought.
    for buyer, entry in report.collected.get(REJECT_KIND, []):
        if entry["ref"] not in sellers.refunds_matched[buyer]:
            report.breaches.append(
                f"ledger of {buyer} has a rejection refund for {entry['ref']}, "
                "not a rejected sale of theirs"
            )


def _audit_slots(
    store: Store, report: Report, owner: str, n: int, top: int, rejected: list
) -> list[tuple[str, str, dict]]:
    """Check slots and txs 0..top; returns the credited txs, for the seller checks, and adds the
    rejected ones to `rejected`, for the buyer checks."""
    where = f"campaign::{owner}::{n}"
    credited: list[tuple[str, str, dict]] = []
    beyond = gateway.get_slots(store, owner, n, top + 1, top + 2)
    if beyond and report.check_locks:
        report.breaches.append(f"{where} lags: slot {min(beyond)} exists but last is {top}")
    for start in range(0, top + 1, CHUNK):
        end = min(top, start + CHUNK - 1)
        slots = gateway.get_slots(store, owner, n, start, end)
        txs = gateway.get_many(store, [gateway.tx_key(owner, n, k) for k in range(start, end + 1)])
        buyers = gateway.get_many(store, list({account_key(s["buyer"]) for s in slots.values()}))
        for k in range(start, end + 1):
            slot = slots.get(k)
            if slot is None:
                report.breaches.append(f"{where} slot {k} missing: slots are not contiguous")
                continue
            report.facts["slots sold"] = report.facts.get("slots sold", 0) + 1
            key = gateway.tx_key(owner, n, k)
            tx = txs.get(key)
            lock = (buyers.get(account_key(slot["buyer"])) or {}).get("lock")
            in_flight = bool(lock) and lock["token"] == slot["token"]
            if tx is None:
                if not in_flight:
                    report.breaches.append(f"{where} slot {k} has no tx and no buy in flight")
                continue
            if (tx["buyer"], tx["seller"], tx["amount"], tx["token"]) != (
                slot["buyer"],
                owner,
                slot["price"],
                slot["token"],
            ):
                report.breaches.append(f"{key} does not match its slot")
            if in_flight:
                # The buyer is not debited yet: the money is still in their balance, and the
                # creditor (which stops at the campaign's `last`) must not have paid the seller.
                if tx["state"] == "credited":
                    report.breaches.append(f"{key} credited before its buyer was debited")
                continue
            if tx["state"] == "uncredited":
                report.add(report.held, "uncredited sales", tx["amount"])
            elif tx["state"] == "rejected":
                # Nothing held: the price goes back to the buyer (counted there, or in flight).
                rejected.append((owner, key, tx))
                if "creditToken" in tx:
                    report.breaches.append(f"{key} is rejected but carries a credit")
            else:
                report.add(report.held, "sale fees earned", tx["fee"])
                credited.append((owner, key, tx))
    return credited


def _audit_credit(report: Report, sellers: _Sellers, seller: str, key: str, tx: dict) -> None:
    """A credited tx: its seller's ledger has exactly one "credit" entry for it, of amount - fee,
    unless the seller's credit lock for it is still in flight (committed, not yet settled)."""
    sellers.matched[seller].add(key)
    deltas = sellers.credits.get(seller, {}).get(key, [])
    lock = sellers.lock(seller)
    if lock and lock["token"] == tx.get("creditToken"):
        # Committed but not settled: the seller's share is owed, not yet in their balance.
        report.add(report.held, "seller credits in flight", net_amount(tx))
        if deltas:
            report.breaches.append(f"{key} credited to {seller} while its credit is in flight")
        return
    if deltas != [net_amount(tx)]:
        report.breaches.append(
            f"{key} credited to {seller} as {deltas}, expected once as {net_amount(tx)}"
        )


def _audit_rejection(report: Report, sellers: _Sellers, key: str, tx: dict) -> None:
    """A rejected tx: its buyer's ledger has exactly one "reject" refund of the full price,
    unless the rejection's lock on the buyer is still in flight (committed, not yet settled).
    (Its seller having no credit for it is the credit check above: a credit must name a
    credited tx.)"""
    buyer = tx["buyer"]
    sellers.refunds_matched[buyer].add(key)
    deltas = sellers.refunds.get(buyer, {}).get(key, [])
    lock = sellers.lock(buyer)
    if lock and lock["token"] == tx.get("rejectToken"):
        report.add(report.held, "rejection refunds in flight", tx["amount"])
        if deltas:
            report.breaches.append(f"{key} refunded to {buyer} while its refund is in flight")
        return
    if deltas != [tx["amount"]]:
        report.breaches.append(
            f"{key} refunded to {buyer} as {deltas}, expected once as {tx['amount']}"
        )
