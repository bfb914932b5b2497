"""Adspace invariants: contiguous slots, one tx per sale matching its slot, no lagging campaign;
and its side of the money equation (uncredited sales are money held for sellers)."""

from __future__ import annotations

from accounts.audit import Report
from accounts.gateway import account_key
from docstore import NotFound, Store

from . import gateway

CHUNK = 500


def audit_adspace(store: Store, report: Report) -> None:
    report.add(report.held, "uncredited sales", 0)
    report.add(report.held, "sale fees earned", 0)
    for owner, n in gateway.iter_campaign_refs(store):
        try:
            campaign = gateway.get_campaign(store, owner, n).value
        except NotFound:
            continue  # a dangling directory entry: the campaign insert never happened
        report.facts["campaigns"] = report.facts.get("campaigns", 0) + 1
        last = campaign.get("last")
        top = last["slot"] if last else -1
        _audit_slots(store, report, owner, n, top)


def _audit_slots(store: Store, report: Report, owner: str, n: int, top: int) -> None:
    where = f"campaign::{owner}::{n}"
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
            tx = txs.get(gateway.tx_key(owner, n, k))
            lock = (buyers.get(account_key(slot["buyer"])) or {}).get("lock")
            in_flight = bool(lock) and lock["token"] == slot["token"]
            if tx is None:
                if not in_flight:
                    report.breaches.append(f"{where} slot {k} has no tx and no buy in flight")
                continue
            if (tx["buyer"], tx["amount"], tx["token"]) != (
                slot["buyer"],
                slot["price"],
                slot["token"],
            ):
                report.breaches.append(f"tx::{owner}::{n}::{k} does not match its slot")
            if in_flight:
                continue  # the buyer is not debited yet: the money is still in their balance
            if tx["state"] == "uncredited":
                report.add(report.held, "uncredited sales", tx["amount"])
            else:
                report.add(report.held, "sale fees earned", tx["fee"])
