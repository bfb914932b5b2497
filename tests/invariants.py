"""Domain assertions shared by the money tests: the audit, plus per-sale charging checks."""

from __future__ import annotations

from collections import Counter

from accounts.audit import run_audit
from accounts.gateway import full_ledger, iter_usernames
from adspace import gateway
from docstore import Store


def assert_audit_clean(store: Store) -> None:
    report = run_audit(store)
    assert report.ok, "\n".join(report.lines())


def sold_slots(store: Store) -> dict[str, dict]:
    """slot key -> slot doc, for every sold slot of every campaign."""
    out = {}
    for owner, n in gateway.iter_campaign_refs(store):
        count = 0
        while True:
            slots = gateway.get_slots(store, owner, n, count, count + 50)
            for k, slot in slots.items():
                out[gateway.slot_key(owner, n, k)] = slot
            if len(slots) < 51:
                break
            count += 51
    return out


def assert_each_sale_charged_once(store: Store) -> None:
    """Every buyer is debited exactly once for each slot they own, and never for another."""
    slots = sold_slots(store)
    for username in iter_usernames(store):
        buys = [e for e in full_ledger(store, username) if e["kind"] == "buy"]
        counts = Counter(e["ref"] for e in buys)
        assert all(c == 1 for c in counts.values()), f"{username} charged twice: {counts}"
        for entry in buys:
            slot = slots.get(entry["ref"])
            assert slot is not None, f"{username} charged for unsold {entry['ref']}"
            assert slot["buyer"] == username, f"{username} charged for {entry['ref']} of another"
            assert entry["delta"] == -slot["price"]
        owned = {k for k, s in slots.items() if s["buyer"] == username}
        assert owned == set(counts), f"{username} owns {owned} but paid for {set(counts)}"
