from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from accounts.gateway import full_ledger, get_account
from accounts.models import User
from adspace import gateway
from bitcoinkeys import deposits
from tests.conftest import PASSWORD
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once


@pytest.fixture
def dev_run(settings):
    settings.DEBUG = True
    settings.BITCOIN_NETWORK = "regtest"


def test_seed_demo_builds_a_living_marketplace_and_is_idempotent(db, store, clock, dev_run):
    call_command("seed_demo", verbosity=0)
    first = store.dump()
    assert gateway.seller_count(store) == 4
    assert gateway.get_campaign(store, "alice", 1).value["last"]["slot"] == 2
    assert gateway.get_campaign(store, "dora", 0).value.get("last") is None
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    call_command("seed_demo", verbosity=0)
    assert store.dump() == first


def test_seed_demo_refuses_outside_a_development_run(db, store, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="development run"):
        call_command("seed_demo", verbosity=0)
    assert not User.objects.exists()
    assert gateway.seller_count(store) == 0


def test_seed_demo_refuses_on_mainnet_even_with_debug(db, store, settings, dev_run):
    settings.BITCOIN_NETWORK = "mainnet"
    with pytest.raises(CommandError, match="mainnet"):
        call_command("seed_demo", verbosity=0)
    assert not User.objects.exists()


@pytest.mark.parametrize("name", ["alice", "Erin"])
def test_seed_demo_never_touches_an_existing_user(db, store, make_user, dev_run, name):
    make_user(name)  # registered before: a seller name and a buyer name, in any case
    call_command("seed_demo", verbosity=0)
    user = User.objects.get(username=name)
    assert user.check_password(PASSWORD)
    assert get_account(store, name).value["balance"] == 0
    assert full_ledger(store, name) == []
    assert gateway.campaign_count(store, name) == 0
    assert gateway.filler_count(store, name) == 0
    assert not User.objects.filter(username__iexact=name).exclude(pk=user.pk).exists()
    # Everyone else is seeded, and the books still balance.
    assert User.objects.filter(username="bob").exists()
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    call_command("seed_demo", verbosity=0)
    assert get_account(store, name).value["balance"] == 0


def test_on_the_local_chain_the_demo_buyers_are_paid_by_real_regtest_deposits(db, store, dev_chain):
    call_command("seed_demo", verbosity=0)
    for buyer in ("erin", "frank", "grace"):
        kinds = [e["kind"] for e in full_ledger(store, buyer)]
        assert "deposit" in kinds and "adjust" not in kinds, kinds
        (address,) = deposits.user_addresses(get_account(store, buyer).value)
        assert dev_chain.received(dev_chain.deposit_wallet, address) == 2_000_000_000
    assert gateway.get_campaign(store, "alice", 1).value["last"]["slot"] == 2
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    # Idempotent: no second payment, no second credit.
    call_command("seed_demo", verbosity=0)
    assert [e["kind"] for e in full_ledger(store, "erin")].count("deposit") == 1
