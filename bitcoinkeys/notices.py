"""Notices of bitcoin money moves (accounts/notify.py), derived from committed state.

Deposits: the watcher, after crediting a listing and before its cursor may pass it, queues one
notice per credited lock touching that listing. A credit's outpoints share the lock's token on
`deposit::<address>`, so the notice's ref is the smallest outpoint of that group (the same one
the ledger ref uses: committed groups are disjoint). Whoever credited it (the watcher, "check
now", recovery rolling a lock forward), the payment is listed again until a watcher pass ends
with it credited and its cursor moves, so no credit is missed, and the insert-if-absent key
queues none twice.

Withdrawals: the processor queues a notice where a request becomes `sent`, and again for every
`sent` request of its scan before the cursor passes it (a crash between the two loses none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from accounts import notify
from docstore import Clock, Store

from .gateway import deposit_key

log = logging.getLogger(__name__)


def queue_deposits(store: Store, clock: Clock, touched: dict[str, set[str]]) -> int:
    """Queue a notice for each credit (a group of outpoints under one token) on these addresses
    that includes an outpoint in `touched[address]`. Returns the number queued now."""
    if not touched:
        return 0
    docs = store.get_multi([deposit_key(a) for a in touched])
    queued = 0
    for address, outpoints in touched.items():
        doc = docs.get(deposit_key(address))
        if doc is None:
            continue
        credited = doc.value.get("credited") or {}
        groups: dict[str, dict[str, int]] = {}
        for op, entry in credited.items():
            groups.setdefault(entry["token"], {})[op] = entry["sats"]
        for group in groups.values():
            if outpoints.isdisjoint(group):
                continue
            context = {"address": address, "sats": sum(group.values()), "outpoints": sorted(group)}
            ref = min(group)
            queued += notify.queue(
                store, clock, doc.value["username"], "deposit_credited", ref, context
            )
    return queued


def queue_withdrawal_sent(store: Store, clock: Clock, key: str, request: dict) -> bool:
    """The notice of one `sent` request (key `withdraw::<u>::<i>`)."""
    if request.get("state") != "sent" or not request.get("txid"):
        return False
    context = {"amount": request["amount"], "address": request["address"], "txid": request["txid"]}
    return notify.queue(store, clock, request["username"], "withdrawal_sent", key, context)


def queue_withdrawal_sent_quietly(store: Store, clock: Clock, key: str, request: dict) -> None:
    """The hook where a request becomes `sent`: a failure here is logged, never raised into the
    payout (the sweep before the cursor moves queues it again)."""
    try:
        queue_withdrawal_sent(store, clock, key, request)
    except Exception:
        log.warning("could not queue the notice of %s; the next sweep does", key, exc_info=True)


def queue_withdrawals_sent(store: Store, clock: Clock, keys: Iterable[str]) -> None:
    """Queue the notice of every one of these `sent` requests that has none yet."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return
    have = store.get_multi([notify.notice_key("withdrawal_sent", k) for k in keys])
    missing = [k for k in keys if notify.notice_key("withdrawal_sent", k) not in have]
    requests = store.get_multi(missing) if missing else {}
    for key in missing:
        if key in requests:
            queue_withdrawal_sent(store, clock, key, requests[key].value)
