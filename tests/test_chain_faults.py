"""A node that cannot be used: one clear log line, one admin banner, nothing credited or sent.

Wrong RPC password, a missing wallet and a node on another network are shown on the real regtest
node (tests/regtest.py); a node still warming up (RPC error -28) on the scripted server, since a
real node cannot be held in its warm-up.
"""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from bitcoinkeys import deposits, node_alerts, pool
from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import BitcoindChain, build_chain, set_chain
from bitcoinkeys.gateway import chainalert_key, withdraw_key
from docstore import NotFound
from tests.invariants import assert_audit_clean
from tests.rpcserver import FakeBitcoind
from tests.test_admin_dashboard import DASHBOARD, banners, register_everything
from tests.test_regtest_deposits import import_file
from tests.test_withdrawals import ADDR_A, MIN, fund


@pytest.fixture(autouse=True)
def registered(settings, store, clock):
    settings.KEYPOOL_SETS = 2
    settings.KEYPOOL_PAGE_SIZE = 5
    settings.KEYPOOL_RANGES_PER_LIST_PAGE = 4
    register_everything()
    pool.init_key_sets(store, clock)
    yield
    set_chain(None)


@pytest.fixture
def node_log():
    """Records of the node-alert logger at ERROR (pytest's log capture may be switched off)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("bitcoinkeys.node")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def paid_alice(regtest, tmp_path, store, clock, make_user):
    """alice has a confirmed payment of 500 000 sats waiting to be credited, and a queued
    withdrawal; the payout wallet is funded."""
    make_user("alice")
    import_file(regtest, tmp_path)
    address = pool.get_deposit_address(store, clock, "alice")
    regtest.pay(address, 500_000)
    regtest.mine(1)
    regtest.fund_payout_wallet(50_000_000)
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    return address


def use_chain(settings, **changes) -> BitcoindChain:
    for name, value in changes.items():
        setattr(settings, name, value)
    chain = build_chain()
    set_chain(chain)
    return chain


def alert(store, role: str) -> dict | None:
    try:
        return store.get(chainalert_key(role)).value
    except NotFound:
        return None


def assert_nothing_credited_or_sent(store, clock, chain, regtest) -> None:
    for _ in range(3):
        counters = deposits.watch_pass(store, clock, chain)
        assert counters.get("credited", 0) == 0 and "chainerror" in counters
    with pytest.raises(p.NodeNotReady):
        p.process(store, clock, chain)
    assert store.get(withdraw_key("alice", 0)).value["state"] == "queued"
    assert (
        regtest.rpc("listtransactions", "*", 10, 0, wallet=regtest.payout_wallet)[-1]["category"]
        == "receive"
    )  # the funding only: nothing was paid out
    from accounts.gateway import get_account

    assert get_account(store, "alice").value["balance"] == 10_000_000 - MIN - 45_000


def dashboard_banners(client, staff) -> list[str]:
    client.force_login(staff)
    return [b for b in banners(client.get(DASHBOARD)) if b.startswith("Bitcoin node")]


def test_a_wrong_rpc_password_is_one_log_line_and_a_banner_and_nothing_moves(
    regtest, paid_alice, store, clock, settings, node_log, client, staff
):
    chain = use_chain(settings, BITCOIND_URL=regtest.node.url_with("not-the-password"))
    assert_nothing_credited_or_sent(store, clock, chain, regtest)
    deposits_lines = [r for r in node_log if "for deposits" in r.getMessage()]
    assert len(deposits_lines) == 1 and "credentials" in deposits_lines[0].getMessage()
    assert alert(store, "deposits")["kind"] == "credentials"
    assert alert(store, "withdrawals")["kind"] == "credentials"
    (banner,) = [b for b in dashboard_banners(client, staff) if "for deposits" in b]
    assert "BITCOIN NODE UNUSABLE" in banner and "BITCOIND_URL" in banner
    assert "nothing is credited" in banner

    # Fixed: the next pass credits, and the alert goes away.
    chain = use_chain(settings, BITCOIND_URL=regtest.node.url)
    assert deposits.watch_pass(store, clock, chain)["credited"] == 1
    assert alert(store, "deposits") is None
    assert p.process(store, clock, chain).count("sent") == 1
    assert alert(store, "withdrawals") is None
    assert_audit_clean(store)


def test_a_node_on_another_network_is_refused(
    regtest, paid_alice, store, clock, settings, node_log, client, staff
):
    chain = use_chain(settings, BITCOIN_NETWORK="mainnet")
    assert_nothing_credited_or_sent(store, clock, chain, regtest)
    assert len([r for r in node_log if "for deposits" in r.getMessage()]) == 1
    assert alert(store, "deposits")["kind"] == "network"
    assert "'regtest' chain but BITCOIN_NETWORK is 'mainnet'" in alert(store, "deposits")["message"]
    assert any("BITCOIN_NETWORK" in b for b in dashboard_banners(client, staff))
    assert_audit_clean(store)


def test_a_missing_wallet_is_reported_and_never_created_by_the_watcher(
    regtest, paid_alice, store, clock, settings, node_log
):
    chain = use_chain(
        settings, BITCOIND_WALLET="no-such-deposits", BITCOIND_PAYOUT_WALLET="no-such-payouts"
    )
    for _ in range(3):
        assert "chainerror" in deposits.watch_pass(store, clock, chain)
    with pytest.raises(p.NodeNotReady, match="no-such-payouts"):
        p.process(store, clock, chain)
    assert alert(store, "deposits")["kind"] == "wallet"
    assert alert(store, "withdrawals")["kind"] == "wallet"
    assert len([r for r in node_log if "for deposits" in r.getMessage()]) == 1
    # An empty deposit wallet created here would silently see no payment at all.
    assert "no-such-deposits" not in regtest.rpc("listwalletdir")["wallets"]
    assert store.get(withdraw_key("alice", 0)).value["state"] == "queued"
    assert_audit_clean(store)


# --- warm-up, on the scripted server ---------------------------------------------------------


@pytest.fixture
def warming(store, clock, settings):
    with FakeBitcoind() as node:
        node.create_wallet("deposits")
        node.create_wallet("payouts", watch_only=False, balance=100_000_000)
        chain = use_chain(
            settings,
            CHAIN_BACKEND="bitcoind",
            BITCOIND_URL=node.url,
            BITCOIND_WALLET="deposits",
            BITCOIND_PAYOUT_WALLET="payouts",
            BITCOIN_NETWORK="regtest",
        )
        yield node, chain
        chain.close()
    assert not node.errors, node.errors


def test_a_node_warming_up_is_one_alert_and_nothing_moves(warming, store, clock, node_log):
    node, chain = warming
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    node.warming_up = True
    for _ in range(3):
        assert deposits.watch_pass(store, clock, chain) == {"chainerror": 1}
    with pytest.raises(p.NodeNotReady, match="Loading block index"):
        p.process(store, clock, chain)
    assert alert(store, "deposits")["kind"] == "warming-up"
    assert len([r for r in node_log if "for deposits" in r.getMessage()]) == 1
    assert [m for _, m, _ in node.calls if m == "sendmany"] == []
    node.warming_up = False
    deposits.watch_pass(store, clock, chain)
    assert alert(store, "deposits") is None
    assert p.process(store, clock, chain).count("sent") == 1
    assert_audit_clean(store)


def test_a_send_answered_with_warming_up_is_not_failed_or_refunded(warming, store, clock):
    node, chain = warming
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    node.fail("sendmany", -28, "Loading wallet…")
    report = p.process(store, clock, chain)
    assert "nothing was sent" in report.stopped
    req = store.get(withdraw_key("alice", 0)).value
    assert req["state"] == "sending"  # not failed-refunded: the node only was not ready
    assert node_alerts.current_alerts(store)["withdrawals"]["kind"] == "warming-up"
    report = p.process(store, clock, chain)
    assert report.count("sent") == 1
    sends = [p for _, m, p in node.calls if m == "sendmany"]
    assert len(sends) == 2  # the refused one, then the one that went out
    assert len({tx.txid for tx in node.txs.values() if tx.sender == "payouts"}) == 1
    assert_audit_clean(store)


def test_the_add_funds_page_says_the_node_is_down_when_it_is_on_another_network(
    regtest, paid_alice, client, settings, store
):
    use_chain(settings, BITCOIN_NETWORK="testnet")
    from accounts.models import User

    client.force_login(User.objects.get(username="alice"))
    page = client.get(reverse("add_funds")).content.decode()
    assert deposits.CHAIN_DOWN.split(";")[0] in page
