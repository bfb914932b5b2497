"""The bitcoind chain backend against a JSON-RPC server speaking bitcoind's protocol."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from embit.descriptor.checksum import add_checksum

from bitcoinkeys import chain as chainmod
from bitcoinkeys.chain import (
    BitcoindChain,
    ChainError,
    ChainUnavailable,
    NoChain,
    Payment,
    address_descriptor,
    btc_to_sats,
    descriptor_checksum,
    get_chain,
    set_chain,
)
from tests.rpcserver import FakeBitcoind, closed_port

# Valid regtest addresses: the stand-in refuses to send to anything else, as Core does.
A = "bcrt1qrfxsqh8pd3uennf7hm9aavtpt6ul37ttcexdqj"
B = "bcrt1qpd5fa65yx46ahm3vuln3n2x57kggvsfdk4upex"
MAX_SATS = 2_099_999_999_999_999


@pytest.fixture
def node():
    with FakeBitcoind() as n:
        n.create_wallet("deposits")
        n.watch("deposits", [A, B])
        n.create_wallet("payouts", watch_only=False, balance=10 * 100_000_000)
        yield n
    assert not n.errors, n.errors


def make_chain(node, **kw) -> BitcoindChain:
    kw = {"url": node.url, "wallet": "deposits", "payout_wallet": "payouts", "timeout": 5, **kw}
    return BitcoindChain(**kw)


@pytest.fixture
def chain(node):
    c = make_chain(node)
    yield c
    c.close()


def methods(node) -> list[str]:
    return [m for _, m, _ in node.calls]


# --- amounts and descriptors ---


def test_amounts_convert_to_sats_exactly():
    assert btc_to_sats(Decimal("0.00000001")) == 1
    assert btc_to_sats(Decimal("20999999.99999999")) == MAX_SATS
    assert btc_to_sats(Decimal("0.1")) == 10_000_000
    assert btc_to_sats(Decimal("1E-8")) == 1
    assert btc_to_sats(Decimal("-0.5")) == -50_000_000
    assert btc_to_sats(3) == 300_000_000


@pytest.mark.parametrize(
    "bad",
    [
        0.1,  # a float has lost the exact value already
        "0.1",
        True,
        None,
        Decimal("0.000000001"),
        Decimal("0.123456789"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("21000000.00000001"),
        Decimal("1E+30"),
        Decimal("0.00000001" + "0" * 60 + "1"),
    ],
)
def test_amounts_that_are_not_whole_sats_are_refused(bad):
    with pytest.raises(ChainError):
        btc_to_sats(bad)


def test_the_descriptor_checksum_matches_bip380_and_embit():
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"
    for address in (A, B, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "bc1p" + "q" * 58):
        body = f"addr({address})"
        assert address_descriptor(address) == add_checksum(body)


@pytest.mark.parametrize("bad", ["", "a),raw(00", "bc1q space in it 000000", "x" * 200, None])
def test_only_plain_addresses_become_descriptors(bad):
    with pytest.raises(ValueError):
        address_descriptor(bad)


# --- the deposit wallet ---


def test_importing_creates_the_watch_only_wallet_and_labels_each_address(node):
    node.wallets.pop("deposits")
    node.loaded.discard("deposits")
    chain = make_chain(node)
    assert chain.import_addresses([A]) == 1
    disable_private_keys, blank, _, _, descriptors = node.wallets["deposits"].options
    assert disable_private_keys is True and blank is True and descriptors is True
    assert methods(node) == ["importdescriptors", "loadwallet", "createwallet", "importdescriptors"]
    (request,) = node.wallets["deposits"].descriptors
    assert request == {"desc": add_checksum(f"addr({A})"), "timestamp": "now", "label": A}


def test_an_unloaded_wallet_is_loaded_again(node, chain):
    node.unload("deposits")
    assert chain.payments_since(None) == ([], node.main[-1])
    assert methods(node) == ["listsinceblock", "loadwallet", "listsinceblock"]


def test_a_wallet_created_by_someone_else_meanwhile_is_loaded(node):
    # Another process creates the wallet between our loadwallet and our createwallet.
    node.unload("deposits")
    node.fail("loadwallet", -18, "Wallet file verification failed. Path does not exist.")
    node.fail("createwallet", -4, "Wallet file verification failed. Database already exists.")
    make_chain(node).import_addresses([A])
    assert methods(node) == [
        "importdescriptors", "loadwallet", "createwallet", "loadwallet", "importdescriptors",
    ]  # fmt: skip


def test_addresses_are_imported_a_thousand_a_call(node, chain):
    many = [f"bcrt1qbatch{i:030d}" for i in range(2500)]
    assert chain.import_addresses(many) == 2500
    sizes = [len(p[0]) for _, m, p in node.calls if m == "importdescriptors"]
    assert sizes == [1000, 1000, 500]


def test_a_refused_import_is_an_error(node, chain):
    node.wallets["deposits"].watch_only = False
    with pytest.raises(ChainError, match="refused 1 of 1"):
        chain.import_addresses([A])


# --- payments ---


def test_payments_carry_outpoints_exact_amounts_and_confirmations(node, chain):
    tiny = node.pay(A, 1)
    huge = node.pay(B, MAX_SATS, vout=2)
    payments, cursor = chain.payments_since(None)
    assert sorted(payments, key=lambda p: p.sats) == [
        Payment(A, tiny, 1, 0),
        Payment(B, huge, MAX_SATS, 0),
    ]
    assert huge.endswith(":2")
    node.mine(2)
    payments, cursor = chain.payments_since(cursor)
    assert {(p.outpoint, p.confirmations) for p in payments} == {(tiny, 2), (huge, 2)}
    assert cursor == node.main[-1]
    assert chain.payments_since(cursor) == ([], cursor)


def test_the_cursor_stays_back_by_the_confirmations_asked_for(node, chain):
    op = node.pay(A, 5000)
    node.mine(1)
    payments, cursor = chain.payments_since(None, 3)
    assert cursor == node.main[-3 if len(node.main) >= 3 else 0]
    node.mine(1)
    payments, cursor = chain.payments_since(cursor, 3)
    assert [(p.outpoint, p.confirmations) for p in payments] == [(op, 2)]


def test_payments_for_lists_each_output_to_that_address(node, chain):
    ops = node.pay_many([(A, 1000), (B, 2000), (A, 3000)])
    node.pay(B, 4000)
    node.mine()
    found = chain.payments_for(A)
    assert sorted((p.outpoint, p.sats, p.confirmations) for p in found) == [
        (ops[0], 1000, 1),
        (ops[2], 3000, 1),
    ]
    assert chain.payments_for("bcrt1qnothingpaidhere0000000000") == []


def test_a_fee_bump_shows_the_original_replaced_then_only_the_replacement(node, chain):
    old = node.pay(A, 70_000)
    new = node.bump_fee(old)
    payments, cursor = chain.payments_since(None)
    seen = {(p.outpoint, p.confirmations, p.replaced) for p in payments}
    assert seen == {(old, 0, True), (new, 0, False)}
    assert {(p.outpoint, p.replaced) for p in chain.payments_for(A)} == {(old, True), (new, False)}
    node.mine()
    # Core lists a conflicted receive nowhere (only in "removed" after a reorg).
    payments, _ = chain.payments_since(cursor)
    assert {(p.outpoint, p.confirmations) for p in payments} == {(new, 1)}
    assert [p.outpoint for p in chain.payments_for(A)] == [new]


def test_a_double_spent_payment_drops_out_of_every_listing(node, chain):
    op = node.pay(A, 70_000)
    _, cursor = chain.payments_since(None)
    node.double_spend(op)
    (payment,) = chain.payments_for(A)
    assert (payment.outpoint, payment.confirmations, payment.replaced) == (op, 0, True)
    node.mine(2)
    assert chain.payments_since(cursor)[0] == []
    assert chain.payments_for(A) == []


def test_a_reorg_reports_the_removed_payment(node, chain):
    op = node.pay(A, 80_000)
    node.mine()
    _, cursor = chain.payments_since(None)
    node.reorg(1)
    payments, new_cursor = chain.payments_since(cursor)
    assert Payment(A, op, 80_000, 0, removed=True) in payments
    assert Payment(A, op, 80_000, 0) in payments
    assert new_cursor == node.main[-1] != cursor


# --- errors ---


def test_bad_credentials_are_a_clear_error(node):
    chain = make_chain(node, url=node.url.replace("rpc-pass-1", "wrong"))
    with pytest.raises(ChainError, match="rejected the RPC credentials") as info:
        chain.payments_since(None)
    assert not isinstance(info.value, ChainUnavailable)


def test_rpc_error_objects_keep_their_code_and_message(node, chain):
    node.fail("listsinceblock", -28, "Loading block index...")
    with pytest.raises(ChainError, match="Loading block index") as info:
        chain.payments_since(None)
    assert info.value.code == -28
    with pytest.raises(ChainError) as info:
        chain.payments_since("00" * 32)
    assert info.value.code == -5


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"result": "not a listing", "error": null, "id": 1}',
        b'{"result": {"transactions": [{"category": "receive", "address": "x"}], '
        b'"lastblock": "00"}, "error": null, "id": 1}',
        b'{"result": {"transactions": [{"category": "receive", "address": "x", "vout": 0, '
        b'"txid": "' + b"a" * 64 + b'", "confirmations": 1, "amount": 0.000000001}], '
        b'"lastblock": "00"}, "error": null, "id": 1}',
        b'{"error": null, "id": 1}',
        b"\xff\xfe",
    ],
)
def test_garbage_is_an_error_and_the_next_call_works(node, chain, body):
    node.garbage = body
    with pytest.raises(ChainError) as info:
        chain.payments_since(None)
    assert not isinstance(info.value, ChainUnavailable)
    node.garbage = None
    assert chain.payments_since(None) == ([], node.main[-1])


def test_a_node_that_does_not_answer_in_time_is_unavailable(node):
    chain = make_chain(node, timeout=0.3)
    node.delay = 2.0
    with pytest.raises(ChainUnavailable, match="did not answer"):
        chain.payments_since(None)
    node.delay = 0
    assert chain.payments_since(None)[0] == []


def test_a_node_that_is_not_listening_is_unavailable():
    chain = BitcoindChain(url=f"http://u:p@127.0.0.1:{closed_port()}", wallet="w", timeout=2)
    with pytest.raises(ChainUnavailable):
        chain.payments_since(None)


def test_an_unset_url_is_a_clear_error():
    with pytest.raises(ChainError, match="BITCOIND_URL"):
        BitcoindChain(url="", wallet="w").payments_since(None)


def test_a_dropped_idle_connection_is_reconnected_for_reads(node, chain):
    chain.payments_since(None)
    node.close_idle = True
    node.calls.clear()
    for _ in range(3):
        assert chain.payments_since(None)[0] == []
    # Each call found its kept-alive connection closed, reconnected and asked once.
    assert methods(node) == ["listsinceblock"] * 3


def test_a_read_dropped_on_a_fresh_connection_is_not_retried(node, chain):
    node.drop_after = {"listsinceblock"}
    with pytest.raises(ChainUnavailable):
        chain.payments_since(None)
    assert methods(node) == ["listsinceblock"]


# --- payouts ---


def test_send_pays_an_exact_string_amount_and_returns_the_txid(node, chain):
    txid = chain.send(B, 3_000_000, "withdraw::bob::0")
    ((wallet, method, params),) = node.calls
    assert (wallet, method) == ("payouts", "sendtoaddress")
    assert params == [B, "0.03000000", "withdraw::bob::0"]
    assert chain.find_sent("withdraw::bob::0") == txid
    assert chain.find_sent("withdraw::bob::1") is None
    assert chain.payout_balance() == 10 * 100_000_000 - 3_000_000 - 1410
    # The deposit wallet watches B: the payout shows there as a payment.
    assert [p.sats for p in chain.payments_for(B)] == [3_000_000]


def test_a_refused_send_keeps_the_wallet_error(node, chain):
    with pytest.raises(ChainError, match="Insufficient funds") as info:
        chain.send(B, 11 * 100_000_000, "withdraw::bob::0")
    assert info.value.code == -6


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_send_refuses_amounts_that_are_not_positive_whole_sats(chain, bad):
    with pytest.raises(ValueError):
        chain.send(B, bad, "x")


def test_a_send_whose_answer_is_lost_is_never_repeated_but_can_be_found(node, chain):
    chain.payout_balance()  # a kept-alive connection the send must not trust
    node.drop_after = {"sendtoaddress"}
    with pytest.raises(ChainUnavailable):
        chain.send(B, 5_000_000, "withdraw::carol::3")
    assert methods(node).count("sendtoaddress") == 1
    node.drop_after = set()
    found = chain.find_sent("withdraw::carol::3")
    assert found is not None and node.txs[found].comment == "withdraw::carol::3"


def test_find_sent_pages_through_the_payout_wallet(node, chain, monkeypatch):
    monkeypatch.setattr(chainmod, "LIST_PAGE", 2)
    first = chain.send(B, 100_000, "withdraw::a::0")
    for i in range(1, 6):
        chain.send(B, 100_000, f"withdraw::a::{i}")
    assert chain.find_sent("withdraw::a::0") == first
    pages = [p for _, m, p in node.calls if m == "listtransactions"]
    assert [p[2] for p in pages] == [0, 2, 4, 6]


# --- the process's backend ---


def test_get_chain_builds_the_configured_backend_once(settings):
    set_chain(None)
    monkey = chainmod._chain
    try:
        chainmod._chain = None
        settings.CHAIN_BACKEND = "none"
        first = get_chain()
        assert isinstance(first, NoChain) and first.available is False
        assert get_chain() is first
        chainmod._chain = None
        settings.CHAIN_BACKEND = "bitcoind"
        assert isinstance(get_chain(), BitcoindChain)
        chainmod._chain = None
        settings.CHAIN_BACKEND = "electrum"
        with pytest.raises(ImproperlyConfigured):
            get_chain()
        fake = object()
        set_chain(fake)
        assert get_chain() is fake
    finally:
        set_chain(None)
        chainmod._chain = monkey


def test_the_none_backend_detects_nothing_and_sends_nothing():
    none = NoChain()
    assert none.payments_since("x") == ([], "x")
    assert none.payments_for(A) == []
    with pytest.raises(ChainError):
        none.send(A, 1, "c")
