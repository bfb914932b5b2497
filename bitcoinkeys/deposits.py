"""Crediting bitcoin payments to balances, once each (DESIGN.md 6.4 and 6.1).

A payment (one transaction output to a deposit address) is credited when it has
DEPOSIT_CONFIRMATIONS, through a `deposit` lock on the address owner's account:

  1. take the lock {kind: deposit, ref, address, outpoints: {"txid:vout": sats}}
  2. CAS `deposit::<address>`, adding every outpoint to `credited` with our token: the COMMIT
     POINT. If any of them is already credited under another token, someone else credited it:
     release our lock with no effect.
  3. settle: balance += the outpoints' sum, ledger entry (with the outpoints), unlock.

Every step after the lock is idempotent, so the registered finisher rolls a lock forward from
any crash (recovery, or the next process that meets the lock after its lease). Payments below
MIN_DEPOSIT_SATS wait until the address's confirmed, uncredited payments add up to the minimum;
then they are credited together under one lock.

The watcher (`watch_pass`) polls the node with listsinceblock from a stored cursor
(`watchcursor::deposits`), advanced by CAS only once everything the pass saw as creditable was
credited, so a pass costs O(new activity) and nothing is skipped. Two watchers at once are safe:
the commit point makes crediting happen once. A credited payment that later vanishes (reorg,
double spend) is logged at ERROR and recorded in `depositalert::<address>` for staff; it is never
debited automatically.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from accounts import heartbeat, locks
from accounts.audit import Report
from accounts.gateway import DIR_CHUNK, full_ledger, get_account, walk_directory
from accounts.leases import LEASE_MARGIN_SECONDS, Lease, fenced
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from . import node_alerts, notices
from .chain import RPC_INVALID_ADDRESS_OR_KEY, ChainError, ChainUnavailable, Payment, get_chain
from .gateway import DEPOSITDIR, deposit_key, depositdir_key, watchcursor_key

log = logging.getLogger(__name__)

KIND = "deposit"
CURSOR = "deposits"
HEARTBEAT = "deposits"
# One lock carries at most this many outpoints (largest first), so a flood of tiny payments to
# one address cannot grow an account document without bound; the rest follow in later locks.
MAX_OUTPOINTS_PER_LOCK = 500
# The add-funds page and "check now" ask the node about this many of a user's newest addresses;
# older ones are still watched by the watcher, and their credited payments still show.
CHAIN_LOOKUPS = 10
MAX_ATTEMPTS = 50

CHAIN_DOWN = (
    "We cannot reach the bitcoin node right now; your payment is safe and will be credited "
    "when it is back."
)


ROLE = "deposits"


def alert_key(address: str) -> str:
    return f"depositalert::{address}"


def required_confirmations() -> int:
    # Never fewer than one: an unconfirmed payment can still be replaced or double-spent, so
    # DEPOSIT_CONFIRMATIONS=0 would credit money that may never arrive.
    return max(1, settings.DEPOSIT_CONFIRMATIONS)


# --- crediting -------------------------------------------------------------------------------


def _ref(address: str, outpoints: dict[str, int]) -> str:
    # Outpoint sets that were committed are disjoint (each outpoint is credited once), so their
    # smallest members differ and so do the refs: the ledger never shows a ref twice.
    first = min(outpoints)
    more = f"+{len(outpoints) - 1}" if len(outpoints) > 1 else ""
    return f"deposit:{address}:{first}{more}"


def _commit(store: Store, username: str, lock: dict) -> bool:
    """Step 2, the commit point. True if the outpoints are credited under our token."""
    key = deposit_key(lock["address"])
    token = lock["token"]
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(key)
        except NotFound:
            log.error("deposit lock of %s names %s, which has no deposit doc", username, key)
            return False
        deposit = doc.value
        if deposit.get("username") != username:
            log.error(
                "deposit lock of %s names %s, owned by %s", username, key, deposit.get("username")
            )
            return False
        credited = deposit.get("credited") or {}
        held = [credited[op]["token"] for op in lock["outpoints"] if op in credited]
        if any(t != token for t in held):
            return False
        if len(held) == len(lock["outpoints"]):
            return True
        added = {op: {"sats": sats, "token": token} for op, sats in lock["outpoints"].items()}
        updated = {**deposit, "credited": {**credited, **added}, "lastToken": token}
        try:
            store.replace(key, updated, doc.cas)
            return True
        except (CasMismatch, Ambiguous):
            continue  # the re-read tells whether ours landed or a rival's did
    raise locks.AccountBusy()


def _settle(store: Store, clock: Clock, username: str, lock: dict) -> bool:
    outpoints = lock["outpoints"]
    n = len(outpoints)
    what = "a bitcoin payment" if n == 1 else f"{n} bitcoin payments"
    return locks.settle(
        store, clock, username, lock["token"], sum(outpoints.values()),
        address=lock["address"], outpoints=sorted(outpoints), reason=f"{what} to {lock['address']}",
    )  # fmt: skip


def finish_deposit(store: Store, clock: Clock, username: str, lock: dict) -> None:
    """Roll a deposit lock forward: commit (if nobody else credited those outpoints), settle;
    else release with no effect."""
    if _commit(store, username, lock):
        _settle(store, clock, username, lock)
    else:
        locks.release(store, username, lock["token"])


def _credit(store: Store, clock: Clock, username: str, address: str, outpoints: dict) -> bool:
    """Steps 1-3 for one set of outpoints. False if someone else credited them first.

    `unique_ref`: when our lock's write is reported as failed but did land, and someone else
    finishes that lock before take_lock reads the account again, the lock is gone and our token
    is already on the deposit doc; taking the lock again with that token would commit "again"
    and credit twice. The ref in the ledger stops that (AlreadyApplied). Refs of committed
    outpoint sets never repeat (see `_ref`), so no genuine credit is refused.
    """
    lock = locks.take_lock(
        store, clock, username, KIND, _ref(address, outpoints), unique_ref=True,
        address=address, outpoints=outpoints,
    )  # fmt: skip
    if not _commit(store, username, lock):
        locks.release(store, username, lock["token"])
        return False
    # settle() returning False means recovery already finished our committed lock: credited.
    _settle(store, clock, username, lock)
    log.info(
        "deposit credited user=%s address=%s outpoints=%s sats=%d",
        username, address, sorted(outpoints), sum(outpoints.values()),
    )  # fmt: skip
    return True


def _new_counters() -> dict[str, int]:
    names = ("payments", "pending", "waiting", "credited", "sats", "lost", "busy", "unknown")
    return dict.fromkeys((*names, "alerts", "failed"), 0)


def credit_confirmed(
    store: Store, clock: Clock, chain_payments: list[Payment], chain: Any = None
) -> dict[str, int]:
    """Credit every payment in `chain_payments` that is confirmed enough and not yet credited.

    With `chain`, an address with something creditable has its whole history fetched
    (`payments_for`): earlier payments below the minimum may lie behind the watcher's cursor, and
    every confirmed, uncredited payment of an address is credited together. Returns counters;
    `busy` or `failed` mean something creditable was left for a later pass.
    """
    required = required_confirmations()
    counters = _new_counters()
    by_address: dict[str, dict[str, Payment]] = {}
    for p in chain_payments:
        slot = by_address.setdefault(p.address, {})
        if p.removed:
            continue  # an old state of the payment; only alerts look at it (below)
        counters["payments"] += 1
        slot.setdefault(p.outpoint, p)
    docs = store.get_multi([deposit_key(a) for a in by_address])
    _alert_vanished(store, clock, chain_payments, docs, counters)
    for address in sorted(by_address):
        payments = by_address[address]
        if not payments:
            continue
        doc = docs.get(deposit_key(address))
        if doc is None:
            # Our wallet watches every pool address, dealt or not: nobody was given this one.
            counters["unknown"] += 1
            log.error("payment to %s, which was dealt to nobody: %s", address, payments)
            continue
        username = doc.value["username"]
        credited = doc.value.get("credited") or {}
        counters["pending"] += sum(
            1
            for op, p in payments.items()
            if op not in credited and 0 <= p.confirmations < required and not p.replaced
        )
        creditable = _creditable(payments, credited, required)
        if creditable and chain is not None:
            history = {p.outpoint: p for p in chain.payments_for(address)}
            creditable = _creditable({**payments, **history}, credited, required)
        outcome = _credit_address(store, clock, username, address, creditable, counters)
        if outcome:
            counters[outcome] += 1
    return counters


def _credit_address(
    store: Store,
    clock: Clock,
    username: str,
    address: str,
    creditable: dict[str, int],
    counters: dict[str, int],
) -> str | None:
    """Credit `creditable` (outpoint -> sats) in locks of at most MAX_OUTPOINTS_PER_LOCK.

    Returns None when done, "busy" or "failed" when something creditable was left behind.
    """
    minimum = settings.MIN_DEPOSIT_SATS
    while creditable:
        # Largest first, so the fewest outpoints reach the minimum.
        ranked = sorted(creditable.items(), key=lambda kv: (-kv[1], kv[0]))
        batch = dict(ranked[:MAX_OUTPOINTS_PER_LOCK])
        if sum(batch.values()) < minimum:
            counters["waiting"] += len(creditable)
            return None
        applied = False
        try:
            won = _credit(store, clock, username, address, batch)
        except locks.AccountBusy:
            return "busy"
        except locks.AlreadyApplied:
            won, applied = False, True
        except locks.AccountMissing:
            log.error("deposit::%s belongs to %s, who has no account doc", address, username)
            return "failed"
        if won:
            counters["credited"] += len(batch)
            counters["sats"] += sum(batch.values())
            creditable = {op: s for op, s in creditable.items() if op not in batch}
            continue
        # Someone else credited part (or all) of the batch, perhaps seeing fewer payments than
        # we do: whatever they left is still ours to credit before the cursor may move on.
        counters["lost"] += 1
        try:
            now_credited = store.get(deposit_key(address)).value.get("credited") or {}
        except NotFound:
            return "failed"
        left = {op: s for op, s in creditable.items() if op not in now_credited}
        if len(left) == len(creditable):
            if applied:
                return "busy"  # a lock for these very payments is in flight; it finishes them
            log.error("deposit::%s refused a commit nobody else made; leaving it", address)
            return "failed"
        creditable = left
    return None


def _creditable(payments: dict[str, Payment], credited: dict, required: int) -> dict[str, int]:
    return {
        op: p.sats
        for op, p in payments.items()
        if op not in credited and p.confirmations >= required and not p.removed
    }


# --- payments that vanish after crediting ----------------------------------------------------


def _alert_vanished(
    store: Store, clock: Clock, chain_payments: list[Payment], docs: dict, counters: dict[str, int]
) -> None:
    for p in chain_payments:
        doc = docs.get(deposit_key(p.address))
        if doc is None or p.outpoint not in (doc.value.get("credited") or {}):
            if p.removed:
                log.warning(
                    "payment %s to %s was in a block a reorg removed", p.outpoint, p.address
                )
            continue
        if p.removed:
            what = "its block was removed by a reorg"
        elif p.confirmations < 0:
            what = "it was double-spent or replaced (conflicted)"
        else:
            continue
        if _record_alert(store, clock, p, doc.value, what):
            counters["alerts"] += 1


def _record_alert(store: Store, clock: Clock, p: Payment, deposit: dict, what: str) -> bool:
    """Add one event to `depositalert::<address>` (once per outpoint and kind of event)."""
    credit = deposit["credited"][p.outpoint]
    event = {"at": clock.now(), "what": what, "confirmations": p.confirmations}
    key = alert_key(p.address)
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(key)
            alert, cas = doc.value, doc.cas
        except NotFound:
            alert, cas = (
                {"address": p.address, "username": deposit["username"], "outpoints": {}},
                None,
            )
        entry = alert["outpoints"].get(p.outpoint) or {"sats": credit["sats"], "events": []}
        if any(e["what"] == what for e in entry["events"]):
            return False
        entry = {**entry, "events": [*entry["events"], event]}
        updated = {**alert, "outpoints": {**alert["outpoints"], p.outpoint: entry}}
        try:
            if cas is None:
                store.insert(key, updated)
            else:
                store.replace(key, updated, cas)
        except (AlreadyExists, CasMismatch, Ambiguous):
            continue
        log.error(
            "CREDITED DEPOSIT VANISHED: %s; user=%s address=%s outpoint=%s sats=%d "
            "confirmations=%d token=%s. The balance was NOT debited; staff must decide.",
            what, deposit["username"], p.address, p.outpoint, credit["sats"], p.confirmations,
            credit["token"],
        )  # fmt: skip
        return True
    return False


def iter_alerts(store: Store) -> Iterator[dict]:
    """Every `depositalert::<address>` doc, reached through the deposit directory."""
    addresses = list(_iter_deposit_addresses(store))
    for start in range(0, len(addresses), DIR_CHUNK):
        chunk = addresses[start : start + DIR_CHUNK]
        found = store.get_multi([alert_key(a) for a in chunk])
        for address in chunk:
            if alert_key(address) in found:
                yield found[alert_key(address)].value


# --- the watcher -----------------------------------------------------------------------------


def _read_cursor(store: Store) -> tuple[str | None, int | None]:
    try:
        doc = store.get(watchcursor_key(CURSOR))
    except NotFound:
        return None, None
    return doc.value.get("cursor"), doc.cas


def _advance_cursor(store: Store, clock: Clock, cas: int | None, cursor: str) -> bool:
    """Move the cursor only if nobody moved it since we read it: a watcher that listed from an
    older cursor must not move it back behind a faster one."""
    key = watchcursor_key(CURSOR)
    value = {"cursor": cursor, "at": clock.now()}
    try:
        if cas is None:
            store.insert(key, value)
        else:
            store.replace(key, value, cas)
        return True
    except (AlreadyExists, CasMismatch):
        return False
    except Ambiguous:
        return _read_cursor(store)[0] == cursor


def watch_pass(store: Store, clock: Clock, chain: Any) -> dict[str, int]:
    """One watcher pass: list new payments, credit what is confirmed, advance the cursor."""
    if not getattr(chain, "available", False):
        return {"skipped": 1}
    required = required_confirmations()
    cursor, cas = _read_cursor(store)
    try:
        # Before anything is credited: the right node, network and credentials, done warming up.
        _check_node(chain)
        try:
            payments, new_cursor = chain.payments_since(cursor, required)
        except ChainError as exc:
            if cursor is None or exc.code != RPC_INVALID_ADDRESS_OR_KEY:
                raise
            # The node does not know our cursor block (reindexed, or another chain): list every
            # wallet payment again. Crediting is idempotent; this only costs one big listing.
            log.error("bitcoind does not know the cursor block %s; listing from the start", cursor)
            payments, new_cursor = chain.payments_since(None, required)
        counters = credit_confirmed(store, clock, payments, chain=chain)
        # After crediting and before the cursor may pass these payments (bitcoinkeys/notices.py).
        counters["noticed"], counters["noticesheld"] = _queue_notices(store, clock, payments)
    except ChainError as exc:
        # One log line and one admin banner per kind of fault, not one per pass.
        node_alerts.raise_alert(store, clock, "deposits", exc)
        counters = {"unavailable" if isinstance(exc, ChainUnavailable) else "chainerror": 1}
    else:
        node_alerts.clear_alert(store, "deposits")
        if counters["busy"] or counters["failed"] or counters["noticesheld"]:
            # Something creditable is still uncredited: the next pass must list it again.
            counters["held"] = 1
        elif new_cursor != cursor:
            counters["advanced"] = int(_advance_cursor(store, clock, cas, new_cursor))
    heartbeat.beat(store, HEARTBEAT, clock.now(), **counters)
    return counters


def _queue_notices(store: Store, clock: Clock, payments: list[Payment]) -> tuple[int, int]:
    """(queued, 1 if queueing failed and the cursor must hold)."""
    listed: dict[str, set[str]] = {}
    for p in payments:
        if not p.removed:
            listed.setdefault(p.address, set()).add(p.outpoint)
    try:
        return notices.queue_deposits(store, clock, listed), 0
    except Exception:
        log.warning("could not queue deposit notices; the listing is kept for the next pass",
                    exc_info=True)  # fmt: skip
        return 0, 1


def _check_node(chain: Any) -> None:
    check = getattr(chain, "check_node", None)
    if check is not None:
        check()


def run_watch_task(store: Store, clock: Clock, lease: Lease | None = None) -> dict[str, int]:
    """The worker task (run_workers): one watcher pass with this process's chain backend.

    It runs on the one node holding `lease::deposits` (ROLE), and every RPC it makes first
    checks that lease (`fenced_chain`), so a node that lost it stops before its next call.
    Without a chain there is nothing to watch; the pass reports nothing rather than "skipped"
    every second in the worker's output."""
    chain = get_chain()
    if not getattr(chain, "available", False):
        return {}
    return watch_pass(store, clock, fenced_chain(chain, lease))


def fenced_chain(chain: Any, lease: Lease | None) -> Any:
    """`chain` whose every call first makes sure `lease` is still ours for the call's timeout."""
    if lease is None:
        return chain
    return fenced(chain, lease.ensure, settings.BITCOIND_TIMEOUT + LEASE_MARGIN_SECONDS)


# --- "check now" and the add-funds page ------------------------------------------------------


def user_addresses(account: dict) -> list[str]:
    """A user's deposit addresses, newest (the current one) first."""
    btc = account.get("btc") or {}
    addresses = [a for a in reversed(btc.get("addresses") or []) if isinstance(a, str)]
    current = btc.get("address") if btc.get("state") == "have" else None
    if current:
        addresses = [current, *(a for a in addresses if a != current)]
    return list(dict.fromkeys(addresses))


def check_deposits(store: Store, clock: Clock, chain: Any, username: str) -> dict[str, int]:
    """Ask the node about the user's newest addresses and credit what is confirmed."""
    addresses = user_addresses(get_account(store, username).value)[:CHAIN_LOOKUPS]
    _check_node(chain)
    payments: list[Payment] = []
    for address in addresses:
        payments += chain.payments_for(address)
    return credit_confirmed(store, clock, payments)


STATUS_LABELS = {
    "pending": "pending",
    "confirmed": "confirmed; being credited",
    "waiting": "waiting: below the minimum deposit",
    "credited": "credited",
    "vanished": "vanished after crediting; staff have been alerted",
}
_STATUS_ORDER = ("pending", "confirmed", "waiting", "vanished", "credited")


@dataclass
class PaymentRow:
    outpoint: str
    sats: int
    status: str
    confirmations: int | None  # None: the node was not asked (or could not be reached)

    @property
    def txid(self) -> str:
        return self.outpoint.rsplit(":", 1)[0]

    @property
    def vout(self) -> str:
        return self.outpoint.rsplit(":", 1)[1]

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


@dataclass
class AddressView:
    address: str
    current: bool
    issued_at: int | None
    rows: list[PaymentRow] = field(default_factory=list)

    def total(self, status: str) -> int:
        return sum(r.sats for r in self.rows if r.status == status)

    @property
    def credited_sats(self) -> int:
        return self.total("credited") + self.total("vanished")

    @property
    def pending_sats(self) -> int:
        return self.total("pending")

    @property
    def waiting_sats(self) -> int:
        return self.total("waiting")


@dataclass
class DepositView:
    state: str
    current: str | None
    addresses: list[AddressView]
    chain_available: bool
    chain_error: str | None
    required_confirmations: int
    minimum_sats: int


def deposit_view(store: Store, chain: Any, username: str) -> DepositView:
    """What the add-funds page shows: per address of the user, its payments and their state."""
    required = required_confirmations()
    minimum = settings.MIN_DEPOSIT_SATS
    try:
        account = get_account(store, username).value
    except NotFound:
        account = {}
    btc = account.get("btc") or {}
    addresses = user_addresses(account)
    docs = store.get_multi([deposit_key(a) for a in addresses])
    alerts = store.get_multi([alert_key(a) for a in addresses])
    available = bool(getattr(chain, "available", False))
    chain_error = None
    seen: dict[str, dict[str, Payment]] = {}
    if available:
        try:
            if addresses:
                _check_node(chain)
            for address in addresses[:CHAIN_LOOKUPS]:
                seen[address] = {p.outpoint: p for p in chain.payments_for(address)}
        except ChainError as exc:
            log.warning("add-funds page for %s: %s", username, exc)
            chain_error, seen = CHAIN_DOWN, {}
    views = []
    for address in addresses:
        doc = docs.get(deposit_key(address))
        if doc is None or doc.value.get("username") != username:
            continue
        credited = doc.value.get("credited") or {}
        alerted = (
            alerts[alert_key(address)].value["outpoints"] if alert_key(address) in alerts else {}
        )
        payments = seen.get(address, {})
        rows = []
        for op, entry in credited.items():
            p = payments.get(op)
            # Conflicted now, or alerted by the watcher and not (yet) confirmed again.
            confirmed_again = p is not None and p.confirmations >= required
            vanished = (p is not None and p.confirmations < 0) or (
                op in alerted and not confirmed_again
            )
            status = "vanished" if vanished else "credited"
            rows.append(PaymentRow(op, entry["sats"], status, p.confirmations if p else None))
        creditable = _creditable(payments, credited, required)
        below = sum(creditable.values()) < minimum
        for op, p in payments.items():
            if op in credited or p.confirmations < 0 or p.replaced:
                continue  # replaced or double-spent before it confirmed: not a payment any more
            if p.confirmations < required:
                status = "pending"
            else:
                status = "waiting" if below else "confirmed"
            rows.append(PaymentRow(op, p.sats, status, p.confirmations))
        rows.sort(key=lambda r: (_STATUS_ORDER.index(r.status), r.outpoint))
        current = address == btc.get("address") and btc.get("state") == "have"
        views.append(AddressView(address, current, doc.value.get("issuedAt"), rows))
    return DepositView(
        state=btc.get("state", "none"),
        current=btc.get("address") if btc.get("state") == "have" else None,
        addresses=views,
        chain_available=available,
        chain_error=chain_error,
        required_confirmations=required,
        minimum_sats=minimum,
    )


# --- the audit -------------------------------------------------------------------------------


def _iter_deposit_addresses(store: Store) -> Iterator[str]:
    seen: set[str] = set()
    for entry in walk_directory(store, DEPOSITDIR, depositdir_key):
        address = entry.get("address")
        if address and address not in seen:  # a retried deal may leave two entries
            seen.add(address)
            yield address


def audit_deposits(store: Store, report: Report) -> None:
    """Credited deposits are money that came in; each is in its owner's ledger exactly once.

    An outpoint credited under the token of its owner's live deposit lock is between the commit
    point and the balance CAS: it is held "in flight", and must not be in the ledger yet.
    """
    report.add(report.came_in, "deposits", 0)
    credits: dict[str, list[tuple[str, str, int, str]]] = {}
    addresses = list(_iter_deposit_addresses(store))
    for start in range(0, len(addresses), DIR_CHUNK):
        chunk = addresses[start : start + DIR_CHUNK]
        found = store.get_multi([deposit_key(a) for a in chunk])
        for address in chunk:
            doc = found.get(deposit_key(address))
            if doc is None:
                continue  # a dangling directory entry (the doc is written after it)
            report.facts["deposit addresses"] = report.facts.get("deposit addresses", 0) + 1
            username = doc.value["username"]
            for op, entry in (doc.value.get("credited") or {}).items():
                report.add(report.came_in, "deposits", entry["sats"])
                credits.setdefault(username, []).append(
                    (address, op, entry["sats"], entry["token"])
                )
    for username, items in credits.items():
        try:
            account = get_account(store, username).value
        except NotFound:
            report.breaches.append(f"deposits credited to {username}, who has no account")
            continue
        lock = account.get("lock")
        in_flight = lock["token"] if lock and lock.get("kind") == KIND else None
        entries = [e for e in full_ledger(store, username, account) if e["kind"] == KIND]
        in_ledger = Counter(op for e in entries for op in e.get("outpoints", []))
        for address, op, sats, token in items:
            if token == in_flight:
                report.add(report.held, "deposits in flight", sats)
                if in_ledger[op]:
                    report.breaches.append(f"deposit {op} in {username}'s ledger before settling")
            elif in_ledger[op] != 1:
                report.breaches.append(
                    f"deposit {op} to {address} is in {username}'s ledger {in_ledger[op]} times"
                )
        by_op = {op: sats for _, op, sats, _ in items}
        for e in entries:
            if "outpoints" in e and e["delta"] != sum(by_op.get(op, 0) for op in e["outpoints"]):
                report.breaches.append(f"ledger of {username}: {e['ref']} credits the wrong amount")


# --- registration (called from BitcoinkeysConfig.ready) --------------------------------------


def ready_deposits() -> None:
    from accounts import audit, workers

    locks.register_finisher(KIND, finish_deposit)
    # One chain cursor: one watcher at a time, on whichever node holds the role's lease.
    workers.register_task("deposits", run_watch_task, role=ROLE)
    audit.register_audit(audit_deposits)
