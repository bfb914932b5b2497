"""Payout batches: `payoutbatch::<id>`, one per `sendmany` (DESIGN.md 6.5).

{state, requests, outputs, total, by, createdAt, txid, error}. Written BEFORE the send, after
every request of it carries the batch key (attempt.batch); the batch key is the wallet comment,
so a batch is found in the payout wallet after a crash (`find_sent`). The record follows what the
wallet said: `sending` -> `sent{txid}` | `refused` (the wallet said no; nothing left) |
`abandoned` (a crashed batch the wallet has never seen; its requests are paid in a new batch).
The wallet is the truth, so `sent` replaces any state. The record is never the commit point: the
wallet accepting the transaction is; the audit checks each sent request's txid against it.
"""

from __future__ import annotations

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from .withdrawals import MAX_ATTEMPTS

BATCH_PREFIX = "payoutbatch::"
BATCH_SENDING, BATCH_SENT = "sending", "sent"
BATCH_REFUSED, BATCH_ABANDONED = "refused", "abandoned"


def batch_of(key: str, req: dict) -> str:
    """The wallet comment a `sending` request was sent under: its batch, or (a request the
    one-at-a-time processor left) its own key."""
    return (req.get("attempt") or {}).get("batch") or key


def batch_outputs(requests: list[dict]) -> list[tuple[str, int]]:
    """One output per address (the wallet refuses a repeated one), in the order first seen."""
    outputs: dict[str, int] = {}
    for req in requests:
        outputs[req["address"]] = outputs.get(req["address"], 0) + req["amount"]
    return list(outputs.items())


def write_batch(
    store: Store, clock: Clock, owner: str, batch: str, keys: list[str], outputs: list, total: int
) -> None:
    """The batch record, written before the send: which requests, which outputs."""
    value = {
        "state": BATCH_SENDING,
        "requests": keys,
        "outputs": [list(o) for o in outputs],
        "total": total,
        "by": owner,
        "createdAt": clock.now(),
        "txid": None,
        "error": None,
    }
    for _ in range(MAX_ATTEMPTS):
        try:
            store.insert(batch, value)
            return
        except (AlreadyExists, Ambiguous):
            try:
                store.get(batch)
                return  # ours landed: the id is a fresh uuid
            except NotFound:
                continue


def mark_batch(
    store: Store,
    clock: Clock,
    batch: str,
    state: str,
    txid: str | None = None,
    error: str | None = None,
) -> None:
    """The batch record follows what the wallet said. `sent` always wins (the wallet is the
    truth); other states only replace `sending`."""
    if not batch.startswith(BATCH_PREFIX):
        return  # a request of the one-at-a-time processor: no batch record
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(batch)
        except NotFound:
            return  # a crash before the record: the requests alone say what happened
        current = doc.value
        if current["state"] == state and current.get("txid") == txid:
            return
        if state != BATCH_SENT and current["state"] != BATCH_SENDING:
            return
        new = {**current, "state": state, "txid": txid, "error": error,
               "at": clock.now()}  # fmt: skip
        try:
            store.replace(batch, new, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue
