"""`manage.py process_withdrawals`: calculate, confirm, execute; and one run end to end against a
JSON-RPC bitcoind stand-in (tests/rpcserver.py) through the real bitcoind backend."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import BitcoindChain, NoChain, set_chain
from bitcoinkeys.gateway import withdraw_key
from tests.rpcserver import FakeBitcoind
from tests.test_withdrawals import (
    ADDR_A,
    ADDR_B,
    MIN,
    REFUSED,
    FakeChain,
    _withdrawals_registered,  # noqa: F401  (autouse: registers finishers, recovery and audit)
    assert_books_clean,
    assert_each_request_paid_at_most_once,
    fund,
)


@pytest.fixture
def chain(store):
    fake = FakeChain(store)
    set_chain(fake)
    yield fake
    set_chain(None)


@pytest.fixture
def queued(store, clock):
    fund(store, clock, "alice", 20_000_000)
    fund(store, clock, "bob", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    w.request_withdrawal(store, clock, "bob", 4_000_000, ADDR_B)


def run(*args, stdin: str | None = None, verbosity: int = 1) -> str:
    out = StringIO()
    kwargs = {"stdin": StringIO(stdin)} if stdin is not None else {}
    call_command(
        "process_withdrawals", *args, stdout=out, stderr=StringIO(), verbosity=verbosity, **kwargs
    )
    return out.getvalue()


def run_failing(*args, stdin: str | None = None) -> tuple[str, str]:
    out = StringIO()
    kwargs = {"stdin": StringIO(stdin)} if stdin is not None else {}
    with pytest.raises(CommandError) as caught:
        call_command("process_withdrawals", *args, stdout=out, stderr=StringIO(), **kwargs)
    return out.getvalue(), str(caught.value)


@pytest.mark.parametrize("args", [(), ("--calculate-only", "--execute")])
def test_exactly_one_mode_is_required(args, chain):
    with pytest.raises(CommandError, match=r"--calculate-only|--execute"):
        call_command("process_withdrawals", *args, stdout=StringIO(), stderr=StringIO())


def test_calculate_only_lists_each_request_and_what_the_wallet_needs(store, chain, queued):
    before = store.dump()
    out = run("--calculate-only")
    assert store.dump() == before
    assert f"send     withdraw::alice::0  0.03000000 BTC (fee 0.00045000) -> {ADDR_A}" in out
    assert f"send     withdraw::bob::0  0.04000000 BTC (fee 0.00060000) -> {ADDR_B}" in out
    assert "Total: 2 withdrawal(s), 0.07000000 BTC to send" in out
    assert "Payout wallet balance: 10000000.00000000 BTC" in out
    assert chain.sends == []


def test_calculate_only_says_how_short_the_payout_wallet_is(chain, queued):
    chain.configure(balance=5_000_000)
    out = run("--calculate-only")
    # 0.07 BTC to send and the 0.001 BTC network fee reserve.
    assert "Payout wallet balance: 0.05000000 BTC; short by 0.02100000 BTC" in out


def test_calculate_only_still_calculates_when_the_node_is_down(chain, queued):
    chain.configure(faults=[("payout_balance", "unreachable")])
    out = run("--calculate-only")
    assert "Total: 2 withdrawal(s)" in out
    assert "Payout wallet balance unavailable: connection refused" in out


def test_calculate_only_with_nothing_queued(chain):
    assert "No queued withdrawals." in run("--calculate-only")


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "maybe\n"])
def test_execute_asks_and_anything_but_yes_sends_nothing(store, chain, queued, answer):
    before = store.dump()
    out, error = run_failing("--execute", stdin=answer)
    assert "Send 2 withdrawals totalling 0.07000000 BTC? [y/N]" in out
    assert error == "Aborted: nothing was sent."
    assert chain.sends == []
    assert {k: v for k, v in store.dump().items() if k != FakeChain.KEY} == {
        k: v for k, v in before.items() if k != FakeChain.KEY
    }


def test_execute_sends_after_yes_one_line_per_request(store, chain, queued):
    out = run("--execute", stdin="y\n")
    assert "[y/N]" in out
    txids = [s["txid"] for s in chain.sends]
    assert f"sent     withdraw::alice::0  0.03000000 BTC -> {ADDR_A}  txid {txids[0]}" in out
    assert f"sent     withdraw::bob::0  0.04000000 BTC -> {ADDR_B}  txid {txids[1]}" in out
    assert txids[0] == txids[1]  # one transaction
    assert "2 sent (0.07000000 BTC), 0 failed and refunded, 0 waiting; 1 transaction(s)." in out
    assert "Withdrawal pass complete." in out
    assert_books_clean(store)


def test_yes_skips_the_question_and_quiet_means_quiet(chain, queued):
    assert run("--execute", "--yes", verbosity=0) == ""
    assert len(chain.sends) == 2


def test_a_short_wallet_is_not_an_error_for_a_timer_and_pays_once_funded(store, chain, queued):
    chain.configure(balance=0)
    out = run("--execute", "--yes")  # a timer's run: exits 0, says why nothing went out
    assert "Payout wallet short: 2 request(s), 0.07000000 BTC waiting" in out
    assert "0 sent (0.00000000 BTC), 0 failed and refunded, 2 waiting; 0 transaction(s)." in out
    assert chain.txs == [] and store.get(withdraw_key("alice", 0)).value["state"] == "queued"
    assert out.count("waiting  withdraw::alice::0") == 1  # one line per request, once
    chain.configure(balance=10**12)
    out = run("--execute", "--yes")
    assert "2 sent (0.07000000 BTC), 0 failed and refunded, 0 waiting; 1 transaction(s)." in out
    assert len(chain.txs) == 1
    assert_each_request_paid_at_most_once(store)


def test_a_refused_payout_is_reported_and_refunded(store, clock, chain):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, REFUSED)
    out = run("--execute", "--yes")
    assert "failed   withdraw::alice::0" in out and "Invalid address for this wallet" in out
    assert "0 sent (0.00000000 BTC), 1 failed and refunded" in out
    assert store.get(withdraw_key("alice", 0)).value["state"] == "failed-refunded"


def test_an_unknown_outcome_exits_non_zero_and_leaves_the_request_sending(store, chain, queued):
    chain.configure(faults=[("send", "timeout-after-send")])
    out, error = run_failing("--execute", "--yes")
    assert "sending  withdraw::alice::0" in out and "outcome unknown" in out
    assert "NOT sent again blindly" in error
    assert store.get(withdraw_key("alice", 0)).value["state"] == "sending"
    out = run("--execute", "--yes")
    assert "look up  withdraw::alice::0" in out  # the calculation says what comes first
    assert "found in the payout wallet" in out
    assert len(chain.sends) == 2
    assert_each_request_paid_at_most_once(store)


def test_the_daily_cap_leaves_later_requests_waiting(store, chain, queued):
    out = run("--execute", "--yes", "--daily-cap-btc", "0.05")
    assert "waiting  withdraw::bob::0" in out
    assert "Daily cap of 0.05000000 BTC reached: 1 request(s) wait" in out
    assert store.get(withdraw_key("bob", 0)).value["state"] == "queued"
    out = run("--calculate-only", "--daily-cap-btc", "0.05")
    assert "wait     withdraw::bob::0" in out


@pytest.mark.parametrize("cap", ["abc", "-1", "0.000000001"])
def test_a_bad_cap_is_refused(chain, cap):
    with pytest.raises(CommandError, match="--daily-cap-btc"):
        run("--calculate-only", "--daily-cap-btc", cap)


def test_a_second_processor_is_refused(store, clock, chain, queued):
    p.ProcessorLease(
        store, clock, settings.WITHDRAW_PROCESSOR_LEASE_SECONDS, owner="the-other-one"
    ).acquire()
    _, error = run_failing("--execute", "--yes")
    assert "Another withdrawal processor is running (lease the-other-one" in error
    assert chain.sends == []


def test_without_a_node_nothing_is_sent(store, queued):
    set_chain(NoChain())
    try:
        out = run("--calculate-only")
        assert "no bitcoin node configured" in out
        _, error = run_failing("--execute", "--yes")
        assert "No bitcoin node is configured" in error
    finally:
        set_chain(None)


def test_end_to_end_against_bitcoind_a_lost_answer_is_looked_up_not_resent(store, clock):
    fund(store, clock, "alice", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    w.request_withdrawal(store, clock, "alice", 4_000_000, ADDR_B)
    with FakeBitcoind() as node:
        node.create_wallet("payouts", watch_only=False, balance=100_000_000)
        set_chain(
            BitcoindChain(url=node.url, wallet="deposits", payout_wallet="payouts", timeout=5)
        )
        try:
            assert "Payout wallet balance: 1.00000000 BTC" in run("--calculate-only")
            # The node applies the first payout, then the connection dies before the answer.
            node.drop_after.add("sendmany")
            out, error = run_failing("--execute", "--yes")
            assert "outcome unknown" in out and "NOT sent again blindly" in error
            assert store.get(withdraw_key("alice", 0)).value["state"] == "sending"
            node.drop_after.clear()
            out = run("--execute", "--yes")
        finally:
            set_chain(None)
        # One sendmany for both, never repeated: the second run found it by the batch's comment.
        sends = [params for _, method, params in node.calls if method == "sendmany"]
        first = store.get(withdraw_key("alice", 0)).value
        batch = first["attempt"]["batch"]
        amounts = {ADDR_A: "0.03000000", ADDR_B: "0.04000000"}
        assert [(p[0], p[1], p[3]) for p in sends] == [("", amounts, batch)]
        paid = {tx.comment: tx.txid for tx in node.txs.values() if tx.sender == "payouts"}
        assert first["state"] == "sent" and first["txid"] == paid[batch]
        assert "found in the payout wallet" in out
        assert store.get(withdraw_key("alice", 1)).value["txid"] == paid[batch]
        assert node.wallets["payouts"].balance == 100_000_000 - 7_000_000 - 1410
    assert_books_clean(store)
