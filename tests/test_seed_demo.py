from __future__ import annotations

from django.core.management import call_command

from adspace import gateway
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once


def test_seed_demo_builds_a_living_marketplace_and_is_idempotent(db, store, clock):
    call_command("seed_demo", verbosity=0)
    first = store.dump()
    assert gateway.seller_count(store) == 4
    assert gateway.get_campaign(store, "alice", 1).value["last"]["slot"] == 2
    assert gateway.get_campaign(store, "dora", 0).value.get("last") is None
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    call_command("seed_demo", verbosity=0)
    assert store.dump() == first
