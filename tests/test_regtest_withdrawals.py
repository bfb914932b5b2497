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
    report = w.process(store, clock, payout.chain)
    assert report.count("sent") == 1 and report.stopped is None
    req = state(store, "alice", 0)
    assert req["state"] == "sent"
    tx = payout.rpc("gettransaction", req["txid"], wallet=payout.payout_wallet)
    sent = [(d["address"], int(-d["amount"] * 100_000_000)) for d in tx["details"]]
    assert sent == [(address, MIN)]
    payout.mine(1)
    assert payout.received(receiver, address) == MIN
    assert w.process(store, clock, payout.chain).lines == []  # nothing left to do
    assert len(sends_with_comment(payout, withdraw_key("alice", 0))) == 1
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
    real_send = payout.chain.send

    def send_then_die(addr, sats, comment):
        real_send(addr, sats, comment)
        raise KilledAfterSend()

    payout.chain.send = send_then_die
    with pytest.raises(KilledAfterSend):
        w.process(store, clock, payout.chain)
    payout.chain.send = real_send
    assert state(store, "alice", 0)["state"] == "sending"  # the txid was never recorded
    # The dead processor's lease runs out; the next one looks before it sends.
    with pytest.raises(w.ProcessorBusy):
        w.process(store, clock, payout.chain)
    clock.advance(settings.WITHDRAW_PROCESSOR_LEASE_SECONDS + 1)
    report = w.process(store, clock, payout.chain)
    (line,) = report.lines
    assert line.result == "sent" and line.detail == "found in the payout wallet"
    (sent,) = sends_with_comment(payout, withdraw_key("alice", 0))
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
    real_send = payout.chain.send

    def slow_send(addr, sats, comment):
        inside_send.set()
        assert may_send.wait(30)
        return real_send(addr, sats, comment)

    payout.chain.send = slow_send
    results: dict = {}
    first = threading.Thread(target=lambda: results.update(a=w.process(store, clock, payout.chain)))
    first.start()
    assert inside_send.wait(30)
    from bitcoinkeys.chain import build_chain

    rival = build_chain()
    try:
        with pytest.raises(w.ProcessorBusy):
            w.process(store, clock, rival)
    finally:
        may_send.set()
        first.join(60)
        rival.close()
    assert results["a"].count("sent") == 2
    for i in (0, 1):
        assert len(sends_with_comment(payout, withdraw_key("alice", i))) == 1
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
    for key in (withdraw_key("alice", 0), withdraw_key("bob", 0)):
        (entry,) = sends_with_comment(payout, key)
        on_chain.add((key, f"{-entry['amount']:.8f}", entry["address"]))
    assert on_chain == calculated
    payout.mine(1)
    assert payout.received(receiver, to_alice) == MIN
    assert payout.received(receiver, to_bob) == 5_500_000
    assert_audit_clean(store)
