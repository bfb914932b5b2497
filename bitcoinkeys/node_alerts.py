"""Alerts about the bitcoin node itself: one log line and one admin banner per fault.

The deposit watcher runs every second and the withdrawal processor on demand; when the node cannot
be used (wrong RPC password, still warming up, another network than BITCOIN_NETWORK, a wallet
missing, unreachable) they must neither credit nor send, and staff must hear of it once, not in a
log line per pass. `raise_alert` writes `chainalert::<role>` and logs at ERROR only when the kind
of fault changes; `clear_alert` removes it (and says so once) when the node answers correctly
again. The admin dashboard shows each alert as a red banner (admin_pages.node_panel).

The payout wallet running short is not a node fault but is told the same way: `raise_short`
writes `payoutalert::short` {waiting, waitingSats, balance, shortBy, since, at} (payouts.py keeps
the requests queued meanwhile), logs at ERROR once when it goes up, keeps its numbers current
without logging again, and `clear_short` drops it (logging once) when the queue can be paid. The
dashboard shows it as a banner and /healthz as `payouts` detail.
"""

from __future__ import annotations

import logging

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from .chain import ChainError, fault_kind
from .gateway import CHAIN_ALERT_ROLES, chainalert_key

log = logging.getLogger("bitcoinkeys.node")

WHAT = {
    "deposits": "nothing is credited",
    "withdrawals": "nothing is sent",
}


def raise_alert(store: Store, clock: Clock, role: str, exc: ChainError) -> bool:
    """Record that the node failed `role` with `exc`. True when this is a new kind of fault
    (then it was logged at ERROR); repeats of the same kind write and log nothing more."""
    kind = fault_kind(exc)
    key = chainalert_key(role)
    value = {"kind": kind, "message": str(exc), "since": clock.now()}
    for _ in range(5):
        try:
            doc = store.get(key)
        except NotFound:
            doc = None
        if doc is not None and doc.value.get("kind") == kind:
            log.debug("bitcoind still failing for %s: %s", role, exc)
            return False
        try:
            if doc is None:
                store.insert(key, value)
            else:
                store.replace(key, value, doc.cas)
        except (AlreadyExists, CasMismatch, Ambiguous):
            continue  # another process raised it meanwhile: read again
        log.error("bitcoind cannot be used for %s (%s): %s; %s until it is fixed",
                  role, kind, exc, WHAT.get(role, "nothing is done"))  # fmt: skip
        return True
    return False


def clear_alert(store: Store, role: str) -> bool:
    """The node answered correctly for `role`: drop its alert. True if there was one."""
    key = chainalert_key(role)
    try:
        doc = store.get(key)
    except NotFound:
        return False
    try:
        store.remove(key, doc.cas)
    except (NotFound, CasMismatch, Ambiguous):
        return False  # someone else cleared or replaced it; the next pass looks again
    log.warning("bitcoind answers correctly again for %s (was: %s)", role, doc.value.get("kind"))
    return True


def current_alerts(store: Store) -> dict[str, dict]:
    """role -> alert doc, for every role with an alert up."""
    found = store.get_multi([chainalert_key(r) for r in CHAIN_ALERT_ROLES])
    return {
        r: found[chainalert_key(r)].value for r in CHAIN_ALERT_ROLES if chainalert_key(r) in found
    }


PAYOUT_SHORT_KEY = "payoutalert::short"


def raise_short(store: Store, clock: Clock, alert: dict) -> bool:
    """Record that the payout wallet cannot pay the queue. True when the alert is new (then
    it was logged at ERROR); an alert already up is only brought up to date."""
    fields = ("waiting", "waitingSats", "balance", "shortBy")
    for _ in range(5):
        try:
            doc = store.get(PAYOUT_SHORT_KEY)
        except NotFound:
            doc = None
        if doc is not None and all(doc.value.get(f) == alert[f] for f in fields):
            return False
        since = doc.value.get("since", clock.now()) if doc is not None else clock.now()
        value = {**{f: alert[f] for f in fields}, "since": since, "at": clock.now()}
        try:
            if doc is None:
                store.insert(PAYOUT_SHORT_KEY, value)
            else:
                store.replace(PAYOUT_SHORT_KEY, value, doc.cas)
        except (AlreadyExists, CasMismatch, Ambiguous):
            continue
        if doc is None:
            log.error(
                "payout wallet short: %d request(s), %d sats waiting, the wallet has %d sats "
                "(short by %d sats with the fee reserve); they stay queued until it is funded",
                alert["waiting"], alert["waitingSats"], alert["balance"], alert["shortBy"],
            )  # fmt: skip
        return doc is None
    return False


def clear_short(store: Store) -> bool:
    """The payout wallet could pay everything waiting (or nothing waits): drop the alert."""
    try:
        doc = store.get(PAYOUT_SHORT_KEY)
    except NotFound:
        return False
    try:
        store.remove(PAYOUT_SHORT_KEY, doc.cas)
    except (NotFound, CasMismatch, Ambiguous):
        return False
    log.warning("payout wallet no longer short (was short by %s sats)", doc.value.get("shortBy"))
    return True


def payout_short(store: Store) -> dict | None:
    try:
        return store.get(PAYOUT_SHORT_KEY).value
    except NotFound:
        return None


def payouts_health(store: Store) -> dict:
    """/healthz `payouts`: {"short": false}, or the short-wallet numbers."""
    alert = payout_short(store)
    if alert is None:
        return {"short": False}
    return {
        "short": True,
        "waiting": alert["waiting"],
        "waiting_sats": alert["waitingSats"],
        "balance_sats": alert["balance"],
        "short_by_sats": alert["shortBy"],
        "since": alert["since"],
    }
