"""Deposits against a real Bitcoin Core node in regtest (tests/regtest.py; skipped without bitcoind).

Every address comes in through `import_keys` and is dealt by the key pool; payments are real
transactions from the node's miner wallet; crediting runs through the deposit watcher and the
add-funds page, with CHAIN_BACKEND=bitcoind pointed at the node. Each test ends with the audit.
"""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from embit import bip32

from accounts.gateway import full_ledger, get_account
from bitcoinkeys import deposits, pool
from bitcoinkeys.addresses import derive_addresses
from bitcoinkeys.chain import address_descriptor
from tests.invariants import assert_audit_clean

PAGE, RANGES = 5, 4  # huge-list pages of 20 addresses


@pytest.fixture(autouse=True)
def small_pool(settings, store, clock):
    settings.KEYPOOL_SETS = 2
    settings.KEYPOOL_PAGE_SIZE = PAGE
    settings.KEYPOOL_RANGES_PER_LIST_PAGE = RANGES
    settings.MIN_DEPOSIT_SATS = 300_000
    settings.DEPOSIT_CONFIRMATIONS = 1
    deposits.ready_deposits()
    pool.init_key_sets(store, clock)


def import_file(regtest, tmp_path, n: int = PAGE * RANGES) -> list[str]:
    """`import_keys FILE` with `n` fresh addresses of a wallet on the node."""
    keys = regtest.new_wallet("keys")
    addresses = [regtest.node.new_address(keys) for _ in range(n)]
    path = tmp_path / "addresses.txt"
    path.write_text("# deposit addresses\n" + "\n".join(addresses) + "\n")
    out = StringIO()
    call_command("import_keys", str(path), stdout=out, stderr=StringIO())
    assert f"Imported {n} addresses" in out.getvalue()
    return addresses


def balance(store, username: str) -> int:
    return get_account(store, username).value["balance"]


def deposit_entries(store, username: str) -> list[dict]:
    return [e for e in full_ledger(store, username) if e["kind"] == "deposit"]


def rows(store, regtest, username: str, address: str) -> list[tuple[str, int, str]]:
    view = deposits.deposit_view(store, regtest.chain, username)
    (av,) = [a for a in view.addresses if a.address == address]
    return [(r.outpoint, r.sats, r.status) for r in av.rows]


def watch(store, clock, regtest) -> dict[str, int]:
    return deposits.watch_pass(store, clock, regtest.chain)


@pytest.fixture
def alice(regtest, tmp_path, store, clock, make_user):
    """A user with a deposit address dealt by the pool from a file import."""
    make_user("alice")
    import_file(regtest, tmp_path)
    return pool.get_deposit_address(store, clock, "alice")


def test_import_from_a_file_and_an_xpub_range_watches_every_address(regtest, tmp_path):
    started = int(time.time()) - 5
    from_file = import_file(regtest, tmp_path)
    root = bip32.HDKey.from_seed(b"regtest deposits seed 000000000001", version=bip32.NETWORKS[
        "regtest"]["xprv"])  # fmt: skip
    tpub = root.derive("m/84h/1h/0h").to_public().to_base58()
    out = StringIO()
    call_command("import_keys", "--xpub", tpub, "--from", "0", "--to", "20", stdout=out)
    assert "Imported 20 addresses" in out.getvalue()
    from_xpub = derive_addresses(tpub, 0, 20, network="regtest")

    info = regtest.rpc("getwalletinfo", wallet=regtest.deposit_wallet)
    assert info["private_keys_enabled"] is False and info["descriptors"] is True
    listed = regtest.rpc("listdescriptors", wallet=regtest.deposit_wallet)["descriptors"]
    assert {d["desc"] for d in listed} == {address_descriptor(a) for a in from_file + from_xpub}
    # Imported "now": the node rescans from the import time (less Core's 2-hour window), never
    # from the genesis block.
    assert all(d["timestamp"] >= started - 7200 for d in listed)
    assert all(d["timestamp"] > 0 for d in listed)
    # A second run of the same import changes nothing, and says so with a failing exit.
    with pytest.raises(CommandError, match="already in the pool"):
        call_command("import_keys", "--xpub", tpub, "--from", "0", "--to", "20")
    after = regtest.rpc("listdescriptors", wallet=regtest.deposit_wallet)["descriptors"]
    assert {d["desc"] for d in after} == {d["desc"] for d in listed}


def test_a_payment_is_pending_then_credited_once_at_the_required_confirmations(
    regtest, store, clock, client, alice, settings
):
    settings.DEPOSIT_CONFIRMATIONS = 2
    op = regtest.pay(alice, 500_000)
    counters = watch(store, clock, regtest)
    assert (counters["pending"], counters["credited"]) == (1, 0)
    assert rows(store, regtest, "alice", alice) == [(op, 500_000, "pending")]
    from accounts.models import User

    client.force_login(User.objects.get(username="alice"))
    page = client.get(reverse("add_funds")).content.decode()
    assert op.split(":")[0] in page and "pending" in page

    regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 0  # one confirmation of two
    assert balance(store, "alice") == 0
    regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 1
    assert balance(store, "alice") == 500_000
    regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 0
    assert [e["outpoints"] for e in deposit_entries(store, "alice")] == [[op]]
    assert rows(store, regtest, "alice", alice) == [(op, 500_000, "credited")]
    assert_audit_clean(store)


def test_small_payments_add_up_and_a_payment_to_an_older_address_is_credited(
    regtest, store, clock, alice
):
    first = regtest.pay(alice, 100_000)
    second = regtest.pay(alice, 150_000)
    regtest.mine(1)
    counters = watch(store, clock, regtest)
    assert (counters["waiting"], counters["credited"]) == (2, 0)
    assert balance(store, "alice") == 0
    newer = pool.new_deposit_address(store, clock, "alice", replacing=alice)
    assert newer != alice
    third = regtest.pay(alice, 100_000)  # to the older address, after a new one was dealt
    regtest.mine(1)
    counters = watch(store, clock, regtest)
    assert counters["credited"] == 3
    assert balance(store, "alice") == 350_000
    (entry,) = deposit_entries(store, "alice")
    assert sorted(entry["outpoints"]) == sorted([first, second, third])
    assert_audit_clean(store)


def test_a_fee_bumped_payment_is_credited_once_as_its_replacement(regtest, store, clock, alice):
    old = regtest.pay(alice, 400_000)
    assert watch(store, clock, regtest)["pending"] == 1
    new = regtest.bump(old)
    # The original is replaced in the mempool: one pending payment, not two.
    assert watch(store, clock, regtest)["pending"] == 1
    assert rows(store, regtest, "alice", alice) == [(new, 400_000, "pending")]
    regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 1
    assert watch(store, clock, regtest)["credited"] == 0
    assert balance(store, "alice") == 400_000
    assert [e["outpoints"] for e in deposit_entries(store, "alice")] == [[new]]
    assert_audit_clean(store)


def test_an_unconfirmed_payment_double_spent_away_is_never_credited(regtest, store, clock, alice):
    op = regtest.pay(alice, 400_000)
    assert watch(store, clock, regtest)["pending"] == 1
    regtest.double_spend(op)
    assert watch(store, clock, regtest)["pending"] == 0
    assert rows(store, regtest, "alice", alice) == []
    regtest.mine(2)
    for _ in range(2):
        assert watch(store, clock, regtest)["credited"] == 0
    assert balance(store, "alice") == 0
    assert deposits.check_deposits(store, clock, regtest.chain, "alice")["credited"] == 0
    assert_audit_clean(store)


def test_a_credited_payment_reorganised_out_raises_the_alert_and_debits_nobody(
    regtest, store, clock, alice
):
    op = regtest.pay(alice, 600_000)
    (block,) = regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 1
    regtest.rpc("invalidateblock", block)
    regtest.node.sync()
    # Back in the mempool, the payment is double-spent; a longer branch is mined without it.
    regtest.double_spend(op)
    regtest.mine(2)
    counters = watch(store, clock, regtest)
    assert counters["alerts"] == 1 and counters["credited"] == 0
    alert = store.get(deposits.alert_key(alice)).value
    assert alert["username"] == "alice"
    assert [e["what"] for e in alert["outpoints"][op]["events"]] == [
        "its block was removed by a reorg"
    ]
    assert watch(store, clock, regtest)["alerts"] == 0  # raised once
    assert balance(store, "alice") == 600_000  # never debited automatically
    assert rows(store, regtest, "alice", alice) == [(op, 600_000, "vanished")]
    assert_audit_clean(store)


def test_a_reorganised_payment_mined_again_is_not_credited_twice(regtest, store, clock, alice):
    op = regtest.pay(alice, 600_000)
    (block,) = regtest.mine(1)
    assert watch(store, clock, regtest)["credited"] == 1
    regtest.rpc("invalidateblock", block)
    regtest.node.sync()
    regtest.mine(2)  # the new branch takes the payment from the mempool again
    counters = watch(store, clock, regtest)
    assert counters["credited"] == 0 and counters["alerts"] == 1
    assert watch(store, clock, regtest)["credited"] == 0
    assert balance(store, "alice") == 600_000
    assert [e["outpoints"] for e in deposit_entries(store, "alice")] == [[op]]
    assert rows(store, regtest, "alice", alice) == [(op, 600_000, "credited")]
    assert_audit_clean(store)
