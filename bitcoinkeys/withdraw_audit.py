"""Withdrawals' recovery pass and audit (DESIGN.md 6.5, 8).

Recovery refunds every `failed` request whose refund a crash interrupted (the refund's commit
point, withdrawals._commit_refund, makes that exactly once). The audit counts each request's
money where it is (held, paid out, refunded), each hold and each refund once in the ledger, and
every request paid in a batch against that batch's record (payouts.py): a request sent with a
txid its batch does not carry would be a payout recorded twice or wrongly.
"""

from __future__ import annotations

from collections import Counter

from accounts import locks
from accounts.audit import Report
from accounts.gateway import account_key, directory_size, full_ledger
from docstore import Clock, Store

from .gateway import WITHDRAWDIR
from .withdraw_queue import scan, walk
from .withdrawals import (
    CHUNK,
    FAILED,
    HOLDING,
    REFUNDED_STATES,
    SENT,
    finish_hold,
    finish_refund,
    refund_failed,
    refund_ref,
)


def recover_withdrawals(store: Store, clock: Clock) -> int:
    """Recovery pass: refund every `failed` request whose refund a crash interrupted.

    Hold and refund locks are finished by the accounts `locks` pass through the finishers; this
    covers the window between `failed` and the refund lock. Reads only the counter when nobody
    ever withdrew, and only the requests from the processor's cursor on otherwise.
    """
    size = directory_size(store, WITHDRAWDIR)
    if size == 0:
        return 0
    refunded = 0
    for row in scan(store, clock, size).in_state(FAILED):
        if refund_failed(store, clock, row.key, row.doc) is not None:
            refunded += 1
    return refunded


def audit_withdrawals(store: Store, report: Report) -> None:
    """Withdrawals' side of the money equation, and each hold and refund once in the ledger."""
    report.add(report.held, "held withdrawals", 0)
    report.add(report.held, "withdrawal fees earned", 0)
    report.add(report.came_in, "paid out", 0)
    size = directory_size(store, WITHDRAWDIR)
    by_user: dict[str, list[tuple[str, dict]]] = {}
    for row in walk(store, 0, size):
        if row.doc is not None:
            by_user.setdefault(row.entry["username"], []).append((row.key, row.doc.value))
    names = list(by_user)
    for start in range(0, len(names), CHUNK):
        chunk = names[start : start + CHUNK]
        accounts = store.get_multi([account_key(u) for u in chunk])
        for username in chunk:
            account = accounts.get(account_key(username))
            if account is None:
                report.breaches.append(f"withdrawals of {username} but no account::{username}")
                continue
            _audit_user(store, report, username, account.value, by_user[username])
    _audit_batches(store, report, [r for rows in by_user.values() for r in rows])


def _audit_batches(store: Store, report: Report, requests: list[tuple[str, dict]]) -> None:
    """Every request sent in a batch carries the txid its batch record carries."""
    sent = [
        (key, req, (req.get("attempt") or {}).get("batch"))
        for key, req in requests
        if req["state"] == SENT and (req.get("attempt") or {}).get("batch")
    ]
    for start in range(0, len(sent), CHUNK):
        chunk = sent[start : start + CHUNK]
        batches = store.get_multi(sorted({b for _, _, b in chunk}))
        for key, req, batch in chunk:
            doc = batches.get(batch)
            if doc is None:
                report.breaches.append(f"{key} was sent in {batch}, which does not exist")
            elif doc.value.get("txid") != req.get("txid") or key not in doc.value["requests"]:
                report.breaches.append(
                    f"{key} was sent as {req.get('txid')} but {batch} says "
                    f"{doc.value.get('state')} {doc.value.get('txid')}"
                )


def _audit_user(
    store: Store, report: Report, username: str, account: dict, requests: list[tuple[str, dict]]
) -> None:
    lock = account.get("lock") or {}
    ledger = full_ledger(store, username, account)
    holds = Counter(e["ref"] for e in ledger if e["kind"] == "withdraw-hold")
    refunds = Counter(e["ref"] for e in ledger if e["kind"] == "withdraw-refund")
    deltas = {(e["kind"], e["ref"]): e["delta"] for e in ledger}
    seen_holds, seen_refunds = set(), set()
    for key, req in requests:
        total = req["amount"] + req["fee"]
        state = req["state"]
        report.facts[f"withdrawals {state}"] = report.facts.get(f"withdrawals {state}", 0) + 1
        hold_in_flight = lock.get("kind") == "withdraw-hold" and lock.get("token") == req["token"]
        refund_in_flight = lock.get("kind") == "withdraw-refund" and lock.get("token") == req.get(
            "refundToken"
        )
        if state in HOLDING:
            report.add(report.held, "held withdrawals", total)
        elif state == SENT:
            report.add(report.held, "withdrawal fees earned", req["fee"])
            report.add(report.came_in, "paid out", -req["amount"])
            if not req.get("txid"):
                report.breaches.append(f"{key} is sent without a txid")
        elif state in REFUNDED_STATES:
            if not req.get("refundToken"):
                report.breaches.append(f"{key} is {state} without a refund token")
        else:
            report.breaches.append(f"{key} has unknown state {state!r}")
        # Between a commit point and its settle the balance has not moved yet: count the money
        # where it still is, so a live audit balances mid-flight.
        if hold_in_flight:
            report.add(report.held, "held withdrawals", -total)
        if refund_in_flight:
            report.add(report.held, "held withdrawals", total)
        want_hold = 0 if hold_in_flight else 1
        if holds[key] != want_hold:
            report.breaches.append(f"{key}: hold applied {holds[key]} times, expected {want_hold}")
        elif want_hold and deltas[("withdraw-hold", key)] != -total:
            report.breaches.append(f"{key}: hold debited {deltas[('withdraw-hold', key)]}")
        ref = refund_ref(key)
        want_refund = 1 if state in REFUNDED_STATES and not refund_in_flight else 0
        if refunds[ref] != want_refund:
            report.breaches.append(
                f"{key}: refund applied {refunds[ref]} times, expected {want_refund}"
            )
        elif want_refund and deltas[("withdraw-refund", ref)] != total:
            report.breaches.append(f"{key}: refund credited {deltas[('withdraw-refund', ref)]}")
        seen_holds.add(key)
        seen_refunds.add(ref)
    for ref in set(holds) - seen_holds:
        report.breaches.append(f"ledger of {username}: withdraw hold {ref} has no request")
    for ref in set(refunds) - seen_refunds:
        report.breaches.append(f"ledger of {username}: withdraw refund {ref} has no request")


def ready_withdrawals() -> None:
    """Register finishers, the recovery pass and the audit (call from BitcoinkeysConfig.ready)."""
    from accounts import audit, recovery

    locks.register_finisher("withdraw-hold", finish_hold)
    locks.register_finisher("withdraw-refund", finish_refund)
    recovery.register_pass("withdrawals", recover_withdrawals)
    audit.register_audit(audit_withdrawals)
