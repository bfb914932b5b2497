"""Crediting bitcoin payments: once each, when confirmed, through the watcher or "check now".

These run the real bitcoind backend against tests/rpcserver.py, so every chain event (mining, a
fee bump, a double spend, a reorg) reaches crediting the way Core would report it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
from django.core.management import call_command

from accounts import locks
from accounts.gateway import account_key, ensure_account, full_ledger, get_account
from accounts.heartbeat import last_beat
from bitcoinkeys import deposits
from bitcoinkeys.chain import BitcoindChain, NoChain, set_chain
from bitcoinkeys.gateway import DEPOSITDIR, deposit_key, depositdir_key, watchcursor_key
from docstore import CasMismatch, NotFound
from tests.invariants import assert_audit_clean
from tests.rpcserver import FakeBitcoind

MIN = 300_000
WALLET = "deposits"


def addr(n: int) -> str:
    """A deposit address for tests (letters and digits, like every real address)."""
    return f"bcrt1qtestdeposit{n:026d}"


def give_address(store, clock, username: str, address: str) -> None:
    """What the key pool does once it has dealt `address`: directory entry, deposit doc, account."""
    ensure_account(store, clock, username)
    index = store.counter(DEPOSITDIR, 1, initial=0)
    store.insert(depositdir_key(index), {"address": address})
    doc = {"username": username, "issuedAt": clock.now(), "credited": {}, "lastToken": None}
    store.insert(deposit_key(address), doc)
    while True:
        acct = store.get(account_key(username))
        btc = acct.value.get("btc") or {}
        addresses = [*btc.get("addresses", []), address]
        have = {"state": "have", "address": address, "addresses": addresses}
        try:
            store.replace(account_key(username), {**acct.value, "btc": have}, acct.cas)
            return
        except CasMismatch:
            continue


def balance(store, username: str) -> int:
    return get_account(store, username).value["balance"]


def credited_outpoints(store, address: str) -> dict:
    return store.get(deposit_key(address)).value["credited"]


def deposit_entries(store, username: str) -> list[dict]:
    return [e for e in full_ledger(store, username) if e["kind"] == "deposit"]


def assert_each_outpoint_credited_once(store, usernames) -> None:
    counts = Counter(
        op for name in usernames for e in deposit_entries(store, name) for op in e["outpoints"]
    )
    assert all(n == 1 for n in counts.values()), counts


@pytest.fixture(autouse=True)
def _deposits_registered():
    deposits.ready_deposits()
    yield
    set_chain(None)


@pytest.fixture
def node():
    with FakeBitcoind() as n:
        yield n
    assert not n.errors, n.errors


@pytest.fixture
def chain(node):
    c = BitcoindChain(url=node.url, wallet=WALLET, payout_wallet="payouts", timeout=5)
    yield c
    c.close()


@pytest.fixture
def errors():
    """ERROR records of the deposits logger (pytest's log capture may be switched off)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("bitcoinkeys.deposits")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def alice(store, clock, chain):
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    return addr(1)


def rows(store, chain, username: str, address: str) -> list[tuple[str, int, str]]:
    view = deposits.deposit_view(store, chain, username)
    (av,) = [a for a in view.addresses if a.address == address]
    return [(r.outpoint, r.sats, r.status) for r in av.rows]


def test_a_payment_is_pending_then_credited_exactly_once_when_mined(
    store, clock, node, chain, alice
):
    op = node.pay(alice, 500_000)
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["pending"] == 1 and counters["credited"] == 0
    assert rows(store, chain, "alice", alice) == [(op, 500_000, "pending")]
    assert balance(store, "alice") == 0

    node.mine()
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["credited"] == 1 and counters["sats"] == 500_000
    assert balance(store, "alice") == 500_000
    assert rows(store, chain, "alice", alice) == [(op, 500_000, "credited")]
    (entry,) = deposit_entries(store, "alice")
    assert entry["outpoints"] == [op] and entry["delta"] == 500_000
    assert entry["ref"] == f"deposit:{alice}:{op}"

    node.mine(3)
    again = deposits.watch_pass(store, clock, chain)
    assert again["credited"] == 0
    assert balance(store, "alice") == 500_000
    assert get_account(store, "alice").value["lock"] is None
    assert_audit_clean(store)
    assert last_beat(store, "deposits")["credited"] == 0


def test_the_cursor_keeps_a_pass_to_new_activity(store, clock, node, chain, alice):
    node.pay(alice, 400_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    cursor = store.get(watchcursor_key("deposits")).value["cursor"]
    assert cursor == node.main[-1]
    node.calls.clear()
    deposits.watch_pass(store, clock, chain)
    listing = [c for c in node.calls if c[1] == "listsinceblock"]
    assert listing == [(WALLET, "listsinceblock", [cursor, 1, True, True])]
    # Nothing new: no history lookups, no writes beyond the heartbeat.
    assert {c[1] for c in node.calls} == {"getblockchaininfo", "listsinceblock"}


def test_a_second_pass_and_a_second_watcher_credit_nothing_more(store, clock, node, chain, alice):
    node.pay(alice, 700_000)
    node.mine()
    other = BitcoindChain(url=node.url, wallet=WALLET, payout_wallet="payouts", timeout=5)
    deposits.watch_pass(store, clock, chain)
    deposits.watch_pass(store, clock, other)
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 700_000
    assert len(deposit_entries(store, "alice")) == 1


def test_two_watchers_at_once_credit_each_payment_once(store, clock, node, chain):
    users = [f"u{i}" for i in range(6)]
    for i, name in enumerate(users):
        give_address(store, clock, name, addr(10 + i))
    chain.import_addresses([addr(10 + i) for i in range(len(users))])
    for i in range(len(users)):
        node.pay(addr(10 + i), 400_000 + i)
        node.pay(addr(10 + i), 300_000)
    node.mine()
    chains = [BitcoindChain(url=node.url, wallet=WALLET, timeout=5) for _ in range(2)]
    barrier = threading.Barrier(2)
    failures = []

    def watcher(c):
        try:
            for _ in range(4):
                barrier.wait()
                deposits.watch_pass(store, clock, c)
        except Exception as exc:  # reported below; a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=watcher, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures
    for i, name in enumerate(users):
        assert balance(store, name) == 700_000 + i
    assert_each_outpoint_credited_once(store, users)
    assert_audit_clean(store)


def test_a_fee_bumped_payment_is_credited_once_as_its_replacement(store, clock, node, chain, alice):
    first = node.pay(alice, 450_000)
    deposits.watch_pass(store, clock, chain)
    replacement = node.bump_fee(first)
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["credited"] == 0
    node.mine()
    deposits.watch_pass(store, clock, chain)
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 450_000
    assert set(credited_outpoints(store, alice)) == {replacement}
    assert rows(store, chain, "alice", alice) == [(replacement, 450_000, "credited")]
    assert_audit_clean(store)


def test_a_double_spent_unconfirmed_payment_is_never_credited(store, clock, node, chain, alice):
    op = node.pay(alice, 900_000)
    deposits.watch_pass(store, clock, chain)
    assert rows(store, chain, "alice", alice) == [(op, 900_000, "pending")]
    node.double_spend(op)
    node.mine(2)
    deposits.watch_pass(store, clock, chain)
    deposits.check_deposits(store, clock, chain, "alice")
    assert balance(store, "alice") == 0
    assert credited_outpoints(store, alice) == {}
    assert rows(store, chain, "alice", alice) == []


def test_a_reorged_credited_payment_raises_an_alert_and_is_not_debited(
    store, clock, node, chain, alice, errors
):
    op = node.pay(alice, 600_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 600_000

    node.reorg(1)
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["alerts"] == 1
    alert = store.get(deposits.alert_key(alice)).value
    assert alert["username"] == "alice"
    assert [e["what"] for e in alert["outpoints"][op]["events"]] == [
        "its block was removed by a reorg"
    ]
    assert any(op in r.getMessage() and "VANISHED" in r.getMessage() for r in errors)
    assert rows(store, chain, "alice", alice) == [(op, 600_000, "vanished")]

    # The payment is then double-spent for good: it drops out of every listing (as in Core),
    # the alert stands, the page still says vanished, and nobody is debited.
    node.double_spend(op)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    deposits.watch_pass(store, clock, chain)
    events = store.get(deposits.alert_key(alice)).value["outpoints"][op]["events"]
    assert [e["what"] for e in events] == ["its block was removed by a reorg"]
    assert rows(store, chain, "alice", alice) == [(op, 600_000, "vanished")]
    assert balance(store, "alice") == 600_000
    assert [a["address"] for a in deposits.iter_alerts(store)] == [alice]
    assert_audit_clean(store)


def test_a_reorged_payment_mined_again_is_not_credited_twice(store, clock, node, chain, alice):
    op = node.pay(alice, 600_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    node.reorg(1)
    node.mine(2)
    deposits.watch_pass(store, clock, chain)
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 600_000
    assert rows(store, chain, "alice", alice) == [(op, 600_000, "credited")]


def test_a_late_payment_to_an_old_address_is_credited(store, clock, node, chain):
    give_address(store, clock, "bob", addr(2))
    give_address(store, clock, "bob", addr(3))  # a new address; addr(2) stays watched
    chain.import_addresses([addr(2), addr(3)])
    deposits.watch_pass(store, clock, chain)
    node.mine(5)
    deposits.watch_pass(store, clock, chain)
    op = node.pay(addr(2), 350_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "bob") == 350_000
    assert set(credited_outpoints(store, addr(2))) == {op}
    view = deposits.deposit_view(store, chain, "bob")
    assert [a.address for a in view.addresses] == [addr(3), addr(2)]
    assert view.addresses[0].current and not view.addresses[1].current


def test_small_payments_wait_until_they_reach_the_minimum_then_are_credited_together(
    store, clock, node, chain, alice
):
    small = [node.pay(alice, 100_000)]
    node.mine()
    assert deposits.watch_pass(store, clock, chain)["waiting"] == 1
    small.append(node.pay(alice, 150_000))
    node.mine()
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 0
    assert [s for _, _, s in rows(store, chain, "alice", alice)] == ["waiting", "waiting"]
    # The cursor has moved past both; the third payment brings their history back.
    small.append(node.pay(alice, 60_000))
    node.mine()
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["credited"] == 3
    assert balance(store, "alice") == 310_000
    (entry,) = deposit_entries(store, "alice")
    assert sorted(entry["outpoints"]) == sorted(small)
    assert entry["reason"] == f"3 bitcoin payments to {alice}"
    assert_audit_clean(store)


def test_a_big_payment_takes_waiting_small_ones_along(store, clock, node, chain, alice):
    node.pay(alice, 1_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    node.pay(alice, 2_000_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 2_001_000
    assert len(deposit_entries(store, "alice")) == 1


def test_check_now_credits_confirmed_payments_without_the_watcher(store, clock, node, chain, alice):
    node.pay(alice, 320_000)
    assert deposits.check_deposits(store, clock, chain, "alice")["pending"] == 1
    node.mine()
    result = deposits.check_deposits(store, clock, chain, "alice")
    assert result["sats"] == 320_000
    assert deposits.check_deposits(store, clock, chain, "alice")["sats"] == 0
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 320_000


def test_a_busy_account_holds_the_cursor_until_the_payment_is_credited(
    store, clock, node, chain, alice
):
    node.pay(alice, 500_000)
    node.mine()
    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=1, reason="r")
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["busy"] == 1 and counters.get("held") == 1
    with pytest.raises(NotFound):
        store.get(watchcursor_key("deposits"))
    node.mine(3)  # the payment is now below the cursor the pass would have stored
    locks.settle(store, clock, "alice", lock["token"], 1, reason="r")
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 500_001


def test_more_confirmations_keep_a_payment_listed_until_it_has_them(
    store, clock, node, chain, alice, settings
):
    settings.DEPOSIT_CONFIRMATIONS = 3
    node.pay(alice, 500_000)
    for _ in range(2):
        node.mine()
        assert deposits.watch_pass(store, clock, chain)["pending"] == 1
    assert balance(store, "alice") == 0
    node.mine()
    assert deposits.watch_pass(store, clock, chain)["credited"] == 1
    assert balance(store, "alice") == 500_000


def test_a_payment_to_an_address_dealt_to_nobody_is_logged_not_credited(
    store, clock, node, chain, errors
):
    chain.import_addresses([addr(99)])
    node.pay(addr(99), 500_000)
    node.mine()
    counters = deposits.watch_pass(store, clock, chain)
    assert counters["unknown"] == 1 and counters["advanced"] == 1
    assert any(addr(99) in r.getMessage() for r in errors)


def test_an_unknown_cursor_block_lists_everything_again(store, clock, node, chain, alice):
    node.pay(alice, 500_000)
    node.mine()
    store.insert(watchcursor_key("deposits"), {"cursor": "ab" * 32, "at": 0})
    deposits.watch_pass(store, clock, chain)
    assert balance(store, "alice") == 500_000
    assert store.get(watchcursor_key("deposits")).value["cursor"] == node.main[-1]


def test_a_node_that_is_down_leaves_everything_as_it_was(store, clock, node, chain, alice):
    node.pay(alice, 500_000)
    node.mine()
    node.stop()
    counters = deposits.watch_pass(store, clock, chain)
    assert counters == {"unavailable": 1}
    assert last_beat(store, "deposits")["unavailable"] == 1
    with pytest.raises(NotFound):
        store.get(watchcursor_key("deposits"))


def test_the_none_backend_watches_nothing(store, clock):
    assert deposits.watch_pass(store, clock, NoChain()) == {"skipped": 1}


def test_the_watcher_is_a_worker_task_and_the_finisher_and_audit_are_registered():
    from accounts import audit, workers

    assert workers.registered_tasks()["deposits"] is deposits.run_watch_task
    assert locks._finishers["deposit"] is deposits.finish_deposit
    assert deposits.audit_deposits in audit._audits


def test_the_audit_catches_a_deposit_credited_twice(store, clock, node, chain, alice):
    op = node.pay(alice, 500_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    lock = locks.take_lock(store, clock, "alice", "deposit", "deposit:again", address=alice)
    locks.settle(store, clock, "alice", lock["token"], 500_000, outpoints=[op], address=alice)
    from accounts.audit import run_audit

    report = run_audit(store)
    assert any(f"deposit {op}" in b and "2 times" in b for b in report.breaches)
    assert not report.balanced


def test_watch_deposits_command_runs_one_pass(store, clock, node, chain, alice, capsys):
    node.pay(alice, 500_000)
    node.mine()
    set_chain(chain)
    call_command("watch_deposits", "--once")
    assert "credited=1" in capsys.readouterr().out
    assert balance(store, "alice") == 500_000


def test_watch_deposits_command_says_there_is_nothing_to_watch_without_a_chain(capsys):
    set_chain(NoChain())
    call_command("watch_deposits", "--once")
    assert "CHAIN_BACKEND is none" in capsys.readouterr().err
