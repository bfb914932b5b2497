"""Withdrawals paid by a real Bitcoin Core node in regtest (tests/regtest.py; skipped without it).

Requests are queued through the product (`request_withdrawal`), paid by the withdrawal processor
(`process` and `manage.py process_withdrawals`) from a funded payout wallet, and checked on chain:
the right address, the right amount, exactly once. Each test ends with the audit.
"""

from __future__ import annotations

import re
import threading
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command

from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.gateway import withdraw_key
from tests.invariants import assert_audit_clean
from tests.test_withdrawals import (
    MIN,
    _withdrawals_registered,  # noqa: F401  (autouse: registers finishers, recovery and audit)
    fund,
)

SENT_LINE = re.compile(r"^(send|look up)\s+(\S+)\s+([0-9.]+) BTC \(fee [0-9.]+\) -> (\S+)", re.M)


@pytest.fixture
def payout(regtest):
    regtest.fund_payout_wallet(100_000_000)
    return regtest


@pytest.fixture
def receiver(regtest):
    """A wallet of the people withdrawing: where the payouts must arrive."""
    return regtest.new_wallet("receiver")


def sends_with_comment(regtest, comment: str) -> list[dict]:
    entries = regtest.rpc("listtransactions", "*", 1000, 0, wallet=regtest.payout_wallet)
    return [e for e in entries if e["category"] == "send" and e.get("comment") == comment]


def state(store, username: str, i: int) -> dict:
    return store.get(withdraw_key(username, i)).value


def test_a_queued_withdrawal_is_sent_once_to_the_right_address_and_amount(
    payout, receiver, store, clock
):
    address = payout.node.new_address(receiver)
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, address)
    report = p.process(store, clock, payout.chain)
    assert report.count("sent") == 1 and report.stopped is None
    req = state(store, "alice", 0)
    assert req["state"] == "sent"
    tx = payout.rpc("gettransaction", req["txid"], wallet=payout.payout_wallet)
    sent = [(d["address"], int(-d["amount"] * 100_000_000)) for d in tx["details"]]
    assert sent == [(address, MIN)]
    payout.mine(1)
    assert payout.received(receiver, address) == MIN
    assert p.process(store, clock, payout.chain).lines == []  # nothing left to do
    assert len(sends_with_comment(payout, req["attempt"]["batch"])) == 1
    assert_audit_clean(store)


class KilledAfterSend(BaseException):
    """The processor dies (SIGKILL, power cut) right after the wallet sent: not an Exception,
    so nothing in the processor handles it, as nothing would run after a kill."""


def test_a_processor_killed_after_the_send_finds_it_by_comment_and_does_not_send_again(
    payout, receiver, store, clock
):
    address = payout.node.new_address(receiver)
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, address)
    real_send = payout.chain.send_many

    def send_then_die(outputs, comment):
        real_send(outputs, comment)
        raise KilledAfterSend()

    payout.chain.send_many = send_then_die
    with pytest.raises(KilledAfterSend):
        p.process(store, clock, payout.chain)
    payout.chain.send_many = real_send
    assert state(store, "alice", 0)["state"] == "sending"  # the txid was never recorded
    # The dead processor's lease runs out; the next one looks before it sends.
    with pytest.raises(p.ProcessorBusy):
        p.process(store, clock, payout.chain)
    clock.advance(settings.WITHDRAW_PROCESSOR_LEASE_SECONDS + 1)
    report = p.process(store, clock, payout.chain)
    (line,) = report.lines
    assert line.result == "sent" and line.detail == "found in the payout wallet"
    (sent,) = sends_with_comment(payout, state(store, "alice", 0)["attempt"]["batch"])
    assert state(store, "alice", 0)["txid"] == sent["txid"]
    payout.mine(1)
    assert payout.received(receiver, address) == MIN
    assert_audit_clean(store)


def test_two_processors_at_once_only_one_sends(payout, receiver, store, clock):
    address = payout.node.new_address(receiver)
    fund(store, clock, "alice", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, address)
    w.request_withdrawal(store, clock, "alice", 4_000_000, address)
    inside_send, may_send = threading.Event(), threading.Event()
    real_send = payout.chain.send_many

    def slow_send(outputs, comment):
        inside_send.set()
        assert may_send.wait(30)
        return real_send(outputs, comment)

    payout.chain.send_many = slow_send
    results: dict = {}
    first = threading.Thread(target=lambda: results.update(a=p.process(store, clock, payout.chain)))
    first.start()
    assert inside_send.wait(30)
    from bitcoinkeys.chain import build_chain

    rival = build_chain()
    try:
        with pytest.raises(p.ProcessorBusy):
            p.process(store, clock, rival)
    finally:
        may_send.set()
        first.join(60)
        rival.close()
    assert results["a"].count("sent") == 2
    # One address twice: one output of both amounts, in one transaction, sent once.
    (entry,) = sends_with_comment(payout, state(store, "alice", 0)["attempt"]["batch"])
    assert entry["txid"] == state(store, "alice", 1)["txid"]
    assert round(-entry["amount"] * 100_000_000) == MIN + 4_000_000
    payout.mine(1)
    assert payout.received(receiver, address) == MIN + 4_000_000
    assert_audit_clean(store)


def test_calculate_only_matches_what_is_then_sent(payout, receiver, store, clock):
    to_alice = payout.node.new_address(receiver)
    to_bob = payout.node.new_address(receiver)
    fund(store, clock, "alice", 20_000_000)
    fund(store, clock, "bob", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, to_alice)
    w.request_withdrawal(store, clock, "bob", 5_500_000, to_bob)
    out = StringIO()
    call_command("process_withdrawals", "--calculate-only", stdout=out, stderr=StringIO())
    calculated = {(k, a, addr) for _, k, a, addr in SENT_LINE.findall(out.getvalue())}
    assert len(calculated) == 2
    assert "Payout wallet balance: " in out.getvalue() and "short by" not in out.getvalue()

    out = StringIO()
    call_command("process_withdrawals", "--execute", "--yes", stdout=out, stderr=StringIO())
    assert "2 sent (0.08500000 BTC)" in out.getvalue()
    on_chain = set()
    batch = state(store, "alice", 0)["attempt"]["batch"]
    entries = {e["address"]: e for e in sends_with_comment(payout, batch)}
    assert len({e["txid"] for e in entries.values()}) == 1  # one transaction for both
    for username in ("alice", "bob"):
        req = state(store, username, 0)
        entry = entries[req["address"]]
        on_chain.add((withdraw_key(username, 0), f"{-entry['amount']:.8f}", entry["address"]))
    assert on_chain == calculated
    payout.mine(1)
    assert payout.received(receiver, to_alice) == MIN
    assert payout.received(receiver, to_bob) == 5_500_000
    assert_audit_clean(store)


def test_an_empty_payout_wallet_keeps_requests_queued_until_one_transaction_pays_them_all(
    regtest, receiver, store, clock, client, staff
):
    """The issue's end to end: the wallet empty -> the requests stay queued and staff are told
    (command, log, admin banner, /healthz) -> funded -> one pass pays them all in one
    transaction, exactly once -> the audit is clean."""
    regtest.node.create_wallet(regtest.payout_wallet)  # exists, holds nothing
    to_alice, to_bob = regtest.node.new_address(receiver), regtest.node.new_address(receiver)
    fund(store, clock, "alice", 20_000_000)
    fund(store, clock, "bob", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, to_alice)
    w.request_withdrawal(store, clock, "bob", 4_000_000, to_bob)
    w.request_withdrawal(store, clock, "alice", 5_000_000, to_alice)
    keys = [withdraw_key("alice", 0), withdraw_key("bob", 0), withdraw_key("alice", 1)]

    # A timer runs `--execute --yes` every minute: the run succeeds, sends nothing, says why.
    for _ in range(2):
        out = StringIO()
        call_command("process_withdrawals", "--execute", "--yes", stdout=out, stderr=StringIO())
        assert "Payout wallet short: 3 request(s), 0.12000000 BTC waiting" in out.getvalue()
        assert "0 sent" in out.getvalue() and "3 waiting" in out.getvalue()
        clock.advance(60)
    assert [state(store, *k.split("::")[1:])["state"] for k in keys] == ["queued"] * 3
    assert regtest.rpc("listtransactions", "*", 100, 0, wallet=regtest.payout_wallet) == []
    health = client.get("/healthz").json()["payouts"]
    assert health["short"] is True and health["waiting"] == 3
    assert health["short_by_sats"] == 12_000_000 + settings.PAYOUT_FEE_RESERVE_SATS
    client.force_login(staff)
    page = client.get("/admin/dashboard/").content.decode()
    assert "PAYOUT WALLET SHORT" in page and "3 request(s), 0.12000000 BTC waiting" in page
    assert_audit_clean(store)

    # Funded: the next run pays all three in one transaction.
    regtest.node.pay(regtest.node.new_address(regtest.payout_wallet), "1.0")
    regtest.mine()
    out = StringIO()
    call_command("process_withdrawals", "--execute", "--yes", stdout=out, stderr=StringIO())
    assert "3 sent (0.12000000 BTC), 0 failed and refunded, 0 waiting; 1 transaction(s)." in (
        out.getvalue()
    )
    reqs = [store.get(k).value for k in keys]
    (txid,) = {r["txid"] for r in reqs}
    (batch,) = {r["attempt"]["batch"] for r in reqs}
    tx = regtest.rpc("gettransaction", txid, wallet=regtest.payout_wallet)
    sent = sorted((d["address"], round(-d["amount"] * 100_000_000)) for d in tx["details"])
    assert sent == sorted([(to_alice, MIN + 5_000_000), (to_bob, 4_000_000)])
    assert {e["txid"] for e in sends_with_comment(regtest, batch)} == {txid}
    assert store.get(batch).value["state"] == "sent"
    # Exactly once: further runs find nothing to do and the wallet sent one transaction.
    out = StringIO()
    call_command("process_withdrawals", "--execute", "--yes", stdout=out, stderr=StringIO())
    assert "Nothing to send" in out.getvalue() or "No queued withdrawals" in out.getvalue()
    sends = regtest.rpc("listtransactions", "*", 100, 0, wallet=regtest.payout_wallet)
    assert {e["txid"] for e in sends if e["category"] == "send"} == {txid}
    assert client.get("/healthz").json()["payouts"] == {"short": False}
    client.post("/admin/dashboard/run-audit/")  # the dashboard is cached; this rebuilds it
    assert "PAYOUT WALLET SHORT" not in client.get("/admin/dashboard/").content.decode()
    regtest.mine(1)
    assert regtest.received(receiver, to_alice) == MIN + 5_000_000
    assert regtest.received(receiver, to_bob) == 4_000_000
    assert_audit_clean(store)
