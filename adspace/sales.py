"""The seller's sales page: every sold slot of one or all of their campaigns, with its review.

A page is a run of (campaign, slot) references, newest sale first within each campaign, and its
rows come from batched reads of the slots, txs and ads of that page only.
"""

from __future__ import annotations

from datetime import UTC, datetime

from docstore import Store

from . import gateway, review, services

SALES_PER_PAGE = 20
STAMP = "%Y-%m-%d %H:%M"


class SoldSlots:
    """The sales of some campaigns as a sequence the Paginator can slice: (n, k) pairs,
    campaigns in the order given, each campaign's newest sale first."""

    def __init__(self, campaigns: list[dict]):
        self.tops = [(c["n"], c["last"]["slot"]) for c in campaigns if c.get("last")]

    def __len__(self) -> int:
        return sum(top + 1 for _, top in self.tops)

    def __getitem__(self, item: slice) -> list[tuple[int, int]]:
        start, stop, _ = item.indices(len(self))
        out: list[tuple[int, int]] = []
        before = 0
        for n, top in self.tops:
            count = top + 1
            lo, hi = max(start - before, 0), min(stop - before, count)
            out += [(n, top - i) for i in range(lo, hi)]
            before += count
            if before >= stop:
                break
        return out


def _text(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime(STAMP)


def _review(tx: dict, now: int) -> tuple[str, str]:
    """(short state, what the seller reads) of a sale's review."""
    if tx["state"] == "rejected":
        who = "staff" if tx["rejection"].get("staff") else "you"
        return "rejected", f"Rejected by {who}: {tx['rejection']['reason']} (buyer refunded)"
    if tx.get("takenDown"):
        return "taken down", f"Taken down by staff: {tx['takenDown']['reason']} (no money moved)"
    if review.in_review(tx, now):
        return "in review", f"In review until {_text(tx['reviewUntil'])} UTC"
    if tx.get("approvedAt"):
        return "approved", "Approved"
    return "accepted", "Review window closed"


def rows(store: Store, owner: str, refs: list[tuple[int, int]], now: int) -> list[dict]:
    slot_keys = [gateway.slot_key(owner, n, k) for n, k in refs]
    tx_keys = [gateway.tx_key(owner, n, k) for n, k in refs]
    found = gateway.get_many(store, slot_keys + tx_keys)
    filler_keys = list({found[key]["filler"] for key in slot_keys if key in found})
    fillers = gateway.get_many(store, filler_keys)
    urls = services.image_urls(store, [f["image"] for f in fillers.values()])
    out = []
    for (n, k), slot_key, tx_key in zip(refs, slot_keys, tx_keys, strict=True):
        slot, tx = found.get(slot_key), found.get(tx_key)
        if slot is None or tx is None:
            continue  # below `last` both exist; the audit reports one that does not
        filler = fillers.get(slot["filler"])
        ad = {**filler, "image_url": urls.get(filler["image"])} if filler else None
        if now < slot["startsAt"]:
            status = "queued"
        elif now < slot["endsAt"]:
            status = "running"
        else:
            status = "ended"
        state, review_text = _review(tx, now)
        out.append(
            {
                "n": n,
                "k": k,
                "status": status,
                "starts": _text(slot["startsAt"]),
                "ends": _text(slot["endsAt"]),
                "ad": ad,
                "buyer": tx["buyer"],
                "price": tx["amount"],
                "fee": tx["fee"],
                "credited": tx["state"] == "credited",
                "review": state,
                "review_text": review_text,
                "can_decide": review.in_review(tx, now),
            }
        )
    return out
