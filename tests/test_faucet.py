"""The developer faucet on the add-funds page (bitcoinkeys/faucet.py), against a real regtest node.

Only a development run on the local chain has it: 404 otherwise, and production settings refuse
to start with DEV_FAUCET. Bad amounts and other people's addresses are refused with a 4xx and
nothing is sent (the node's mempool stays as it was). The deposit addresses come from a keys
wallet's tpub, as `make run` imports them (local_chain.ensure_deposit_keys).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import checks
from django.urls import reverse

from accounts.gateway import full_ledger, get_account
from bitcoinkeys import deposits, faucet, pool
from tests.conftest import PASSWORD
from tests.invariants import assert_audit_clean

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dan(make_user, client, store, clock, dev_chain):
    make_user("dan")
    client.login(username="dan", password=PASSWORD)
    return pool.get_deposit_address(store, clock, "dan")


def mempool_size(regtest) -> int:
    return regtest.rpc("getmempoolinfo")["size"]


def test_a_user_gets_test_coins_sees_them_pending_then_confirmed_and_credited(
    client, dan, dev_chain, store
):
    page = client.get(reverse("add_funds")).content.decode()
    assert 'data-role="faucet"' in page and "Send test coins to my address" in page
    response = client.post(
        reverse("faucet_coins"), {"address": dan, "amount": "0.5", "replaceable": "on"}
    )
    assert response.status_code == 302
    page = client.get(reverse("add_funds")).content.decode()
    assert "Sent 0.50000000 test BTC" in page
    assert 'data-status="pending"' in page
    assert get_account(store, "dan").value["balance"] == 0

    assert client.post(reverse("faucet_block")).status_code == 302
    assert "Mined block" in client.get(reverse("add_funds")).content.decode()
    client.post(reverse("check_deposits"))
    assert get_account(store, "dan").value["balance"] == 50_000_000
    assert [e["kind"] for e in full_ledger(store, "dan")] == ["deposit"]
    assert_audit_clean(store)


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        ("-1", "negative"),
        ("0", "positive"),
        ("0.123456789", "decimal"),
        ("1e3", ""),
        ("11", "at most 10.00000000 BTC"),
        ("abc", ""),
        ("", ""),
    ],
)
def test_a_bad_amount_is_refused_and_nothing_is_sent(client, dan, dev_chain, store, amount, why):
    before = mempool_size(dev_chain)
    response = client.post(reverse("faucet_coins"), {"address": dan, "amount": amount})
    assert response.status_code == 400
    assert why.lower() in response.content.decode().lower()
    assert mempool_size(dev_chain) == before


def test_more_than_the_faucet_wallet_holds_is_refused(client, dan, dev_chain, monkeypatch):
    monkeypatch.setattr(faucet, "MAX_SATS", 21_000_000 * 100_000_000)
    before = mempool_size(dev_chain)
    response = client.post(reverse("faucet_coins"), {"address": dan, "amount": "1000000"})
    assert response.status_code == 400
    assert "wallet holds" in response.content.decode()
    assert mempool_size(dev_chain) == before


def test_coins_for_someone_elses_address_are_refused(client, dan, make_user, store, clock):
    make_user("eve")
    eves = pool.get_deposit_address(store, clock, "eve")
    response = client.post(reverse("faucet_coins"), {"address": eves, "amount": "1"})
    assert response.status_code == 403
    assert faucet.NOT_YOURS in response.content.decode()
    assert not deposits.deposit_view(store, faucet_chain(), "eve").addresses[0].rows


def faucet_chain():
    from bitcoinkeys.chain import get_chain

    return get_chain()


def test_without_a_deposit_address_the_faucet_asks_for_one_first(
    client, make_user, dev_chain, store
):
    make_user("fay")
    client.login(username="fay", password=PASSWORD)
    response = client.post(reverse("faucet_coins"), {"address": "", "amount": "1"})
    assert response.status_code == 400
    assert faucet.NO_ADDRESS in response.content.decode()


def test_the_faucet_is_404_unless_debug_and_dev_faucet_are_on(client, dan, settings):
    settings.DEBUG = False
    for name in ("faucet_coins", "faucet_block"):
        assert client.post(reverse(name), {"address": dan, "amount": "1"}).status_code == 404
    settings.DEBUG = True
    settings.DEV_FAUCET = False
    for name in ("faucet_coins", "faucet_block"):
        assert client.post(reverse(name), {"address": dan, "amount": "1"}).status_code == 404
    assert 'data-role="faucet"' not in client.get(reverse("add_funds")).content.decode()


def test_the_faucet_is_404_without_a_chain(client, make_user, settings):
    settings.DEBUG = True
    settings.DEV_FAUCET = True
    settings.CHAIN_BACKEND = "none"
    make_user("gus")
    client.login(username="gus", password=PASSWORD)
    assert client.post(reverse("faucet_block")).status_code == 404
    page = client.get(reverse("add_funds")).content.decode()
    assert 'data-role="local-chain-hint"' in page and "make run" in page


def test_the_withdraw_page_offers_a_node_address_to_withdraw_to(client, dan, dev_chain):
    page = client.get(reverse("withdraw")).content.decode()
    assert 'data-role="faucet-address"' in page and "bcrt1" in page
    assert "process_withdrawals --execute --yes" in page


def test_dev_faucet_without_debug_fails_the_system_check(settings):
    settings.DEV_FAUCET = True
    settings.DEBUG = False
    errors = [e for e in checks.run_checks() if e.id == "bitcoinkeys.E001"]
    assert len(errors) == 1


def test_production_settings_refuse_to_start_with_the_faucet(tmp_path):
    # Every production secret is given: the refusal is the faucet's, whatever else is checked.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env = {
        **keep,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": "k" + "".join(chr(97 + i % 26) for i in range(63)),
        "ALLOWED_HOSTS": "ads.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DOCSTORE_PATH": str(tmp_path / "ds.sqlite3"),
    }
    refused = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**env, "DEV_FAUCET": "true"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "DEV_FAUCET is on" in refused.stderr
