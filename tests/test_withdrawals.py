"""Withdrawals: the hold, cancelling, the payout processor, its recovery and its audit.

`FakeChain` is the payout wallet the withdrawal tests share. Its state is a document in the
test's own docstore (written underneath any fault hooks), so it survives a "crashed" processor,
is cloned with a swarm world, and any process that reaches the store reaches the same wallet.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from django.conf import settings
from django.test import override_settings

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.audit import run_audit
from accounts.gateway import ensure_account, full_ledger, get_account
from accounts.money import fee_up
from accounts.recovery import run_recovery
from bitcoinkeys import node_alerts, payout_lease, withdraw_audit, withdraw_queue
from bitcoinkeys import payouts as p
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import ChainError, ChainUnavailable, NoChain
from bitcoinkeys.gateway import withdraw_key, withdrawcount_key, withdrawdir_key
from docstore import Ambiguous, NotFound
from docstore.faults import Crash, Hook, HookedStore
from tests.harness import CountingHook

# Regtest addresses (BITCOIN_NETWORK defaults to regtest), made with embit from fixed keys.
ADDR_A = "bcrt1qcwt06jpdw6lz27evpt668nhdj0h42h5hqvfkqv"
ADDR_B = "bcrt1qvp8k7xfm9ee7scwfeetard22v0ttnj2dca773k"
ADDR_TR = "bcrt1p737rw2cfdklfyvmcq7hjvv7dmuzjyffpafvkzcc2a060wmgcxt3qgz9j0x"
ADDR_P2PKH = "myM8wPQhtkmJpZufkQK8j3YD6nEovh52BX"
# Valid for regtest, but the fake wallet refuses to pay it (a wallet error, with an RPC code).
REFUSED = "bcrt1qzlpuc4dg6f7xvcx4jucvdntyjzd5krtc8kadzy"
MAINNET = "bc1qcwt06jpdw6lz27evpt668nhdj0h42h5hgrtgvk"

MIN = 3_000_000  # the default MIN_WITHDRAWAL_SATS
FEE_3M = 45_000


def unwrap(store):
    while hasattr(store, "inner"):
        store = store.inner
    return store


class FakeChain:
    """A payout wallet: records every transaction with its comment and outputs; can refuse, be
    unreachable, or time out after sending. Faults are queued per method and used once each, in
    order ("send" faults apply to `send` and `send_many` alike)."""

    KEY = "fakechain::wallet"
    available = True

    def __init__(self, store):
        self.store = unwrap(store)

    def _state(self) -> dict:
        try:
            return self.store.get(self.KEY).value
        except NotFound:
            return {"balance": 10**15, "txs": [], "refuse": [REFUSED], "faults": [], "calls": 0}

    def _save(self, state: dict) -> None:
        self.store.upsert(self.KEY, state)

    def configure(self, balance: int | None = None, refuse=None, faults=None) -> FakeChain:
        state = self._state()
        if balance is not None:
            state["balance"] = balance
        if refuse is not None:
            state["refuse"] = list(refuse)
        if faults is not None:
            state["faults"] = [list(f) for f in faults]
        self._save(state)
        return self

    def _fault(self, state: dict, method: str) -> str | None:
        for n, (m, kind) in enumerate(state["faults"]):
            if m == method:
                del state["faults"][n]
                return kind
        return None

    @property
    def txs(self) -> list[dict]:
        return self._state()["txs"]

    @property
    def sends(self) -> list[dict]:
        """One entry per output, as listtransactions shows them."""
        return [
            {"comment": t["comment"], "address": a, "sats": sats, "txid": t["txid"]}
            for t in self.txs
            for a, sats in t["outputs"]
        ]

    def sends_of(self, comment: str) -> list[dict]:
        return [s for s in self.sends if s["comment"] == comment]

    def send(self, address: str, sats: int, comment: str) -> str:
        return self.send_many([(address, sats)], comment)

    def send_many(self, outputs: list[tuple[str, int]], comment: str) -> str:
        state = self._state()
        fault = self._fault(state, "send")
        if fault == "unreachable":
            self._save(state)
            raise ChainUnavailable("connection refused")
        if any(address in state["refuse"] for address, _ in outputs):
            self._save(state)
            raise ChainError("Invalid address for this wallet", code=-5)
        total = sum(sats for _, sats in outputs)
        if total > state["balance"] or fault == "insufficient":
            self._save(state)
            raise ChainError("Insufficient funds", code=-6)
        txid = hashlib.sha256(f"{comment}#{len(state['txs'])}".encode()).hexdigest()
        state["txs"].append(
            {"comment": comment, "txid": txid, "outputs": [[a, sats] for a, sats in outputs]}
        )
        state["balance"] -= total
        self._save(state)
        if fault == "timeout-after-send":
            raise ChainUnavailable("timed out waiting for the answer")
        if fault == "garbled-after-send":
            raise ChainError("bitcoind sent a garbled answer to sendmany")
        if fault == "crash-after-send":
            raise Crash("the processor died right after the send")
        return txid

    def find_sent(self, comment: str) -> str | None:
        state = self._state()
        if self._fault(state, "find_sent") == "unreachable":
            self._save(state)
            raise ChainUnavailable("connection refused")
        found = [t["txid"] for t in state["txs"] if t["comment"] == comment]
        return found[0] if found else None

    def payout_balance(self) -> int:
        state = self._state()
        if self._fault(state, "payout_balance") == "unreachable":
            self._save(state)
            raise ChainUnavailable("connection refused")
        return state["balance"]


@pytest.fixture(autouse=True)
def _withdrawals_registered():
    # BitcoinkeysConfig.ready calls this once wired; registering twice is harmless.
    withdraw_audit.ready_withdrawals()


def fund(store, clock, username: str, sats: int) -> None:
    ensure_account(store, clock, username)
    if sats:
        adjust_balance(store, clock, username, sats, "test funding")


def balance(store, username: str) -> int:
    return get_account(store, username).value["balance"]


def request(store, username: str, i: int) -> dict:
    return store.get(withdraw_key(username, i)).value


def assert_books_clean(store) -> None:
    report = run_audit(store)
    assert report.ok, "\n".join(report.lines())


def payments(store) -> dict[str, list[str]]:
    """request key -> txids of the fake wallet's transactions that paid it. Checks on the way
    that no comment was used twice and that each transaction paid exactly its batch's requests."""
    chain = FakeChain(store)
    comments = Counter(t["comment"] for t in chain.txs)
    paid: dict[str, list[str]] = {}
    for tx in chain.txs:
        comment = tx["comment"]
        assert comments[comment] == 1, f"{comment} was sent {comments[comment]} times"
        if comment.startswith(p.BATCH_PREFIX):
            keys = store.get(comment).value["requests"]
        else:
            keys = [comment]  # the one-at-a-time processor's comment: the request's key
        reqs = [store.get(k).value for k in keys]
        want = [list(o) for o in p.batch_outputs(reqs)]
        assert tx["outputs"] == want, f"{comment} paid {tx['outputs']}, its requests {want}"
        for key in keys:
            paid.setdefault(key, []).append(tx["txid"])
    return paid


def assert_each_request_paid_at_most_once(store) -> None:
    """Never two payments of one request; a paid request says `sending` or `sent` (that txid)."""
    for key, txids in payments(store).items():
        assert len(txids) == 1, f"{key} was sent {len(txids)} times"
        req = store.get(key).value
        assert req["state"] in (w.SENDING, w.SENT), f"{key} was sent but is {req['state']}"
        if req["state"] == w.SENT:
            assert req["txid"] == txids[0], f"{key} records {req['txid']}, paid in {txids[0]}"


def refunds_of(store, username: str, key: str) -> list[dict]:
    return [
        e
        for e in full_ledger(store, username)
        if e["kind"] == "withdraw-refund" and e["ref"] == w.refund_ref(key)
    ]


# --- fees and the largest amount --------------------------------------------------------------


def test_the_fee_is_rounded_up_to_a_satoshi():
    assert w.withdrawal_fee(3_000_000) == 45_000
    assert w.withdrawal_fee(3_000_001) == 45_001
    assert w.withdrawal_fee(66) == 1  # 0.99 sat
    assert w.withdrawal_fee(0) == 0


@pytest.mark.parametrize("permille", [0, 1, 7, 15, 333, 999, 1000])
def test_max_withdrawal_is_exact_for_every_small_balance(permille):
    # Sweep: the cost a + fee(a) never decreases, so the best amount only moves forward with B.
    best, top = 0, 6000
    for b in range(top):
        while best + 1 + fee_up(best + 1, permille) <= b:
            best += 1
        assert w.max_withdrawal(b, permille) == best, (b, permille)


@pytest.mark.parametrize("b", [10**8, 21_000_000 * 10**8, 3_045_000, 3_044_999, 123_456_789_012])
def test_max_withdrawal_fits_and_one_more_satoshi_does_not(b):
    a = w.max_withdrawal(b)
    assert a + w.withdrawal_fee(a) <= b
    assert a + 1 + w.withdrawal_fee(a + 1) > b


def test_max_withdrawal_of_nothing_is_nothing():
    assert w.max_withdrawal(0) == 0
    assert w.max_withdrawal(-5) == 0


# --- the hold ---------------------------------------------------------------------------------


def test_a_request_holds_amount_and_fee_at_once(store, clock):
    fund(store, clock, "alice", 10_000_000)
    i = w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    assert i == 0
    assert balance(store, "alice") == 10_000_000 - MIN - FEE_3M
    req = request(store, "alice", 0)
    assert (req["amount"], req["fee"], req["address"], req["state"]) == (
        MIN,
        FEE_3M,
        ADDR_A,
        "queued",
    )
    assert req["history"] == [{"at": clock.now(), "state": "queued"}]
    assert req["createdAt"] == clock.now() and req["token"]
    holds = [e for e in full_ledger(store, "alice") if e["kind"] == "withdraw-hold"]
    assert [(e["ref"], e["delta"]) for e in holds] == [("withdraw::alice::0", -(MIN + FEE_3M))]
    assert store.get(withdrawdir_key(0)).value == {"username": "alice", "i": 0, "at": clock.now()}
    report = run_audit(store)
    assert report.ok, report.lines()
    assert report.held["held withdrawals"] == MIN + FEE_3M
    assert get_account(store, "alice").value["lock"] is None


def test_requests_are_numbered_per_user(store, clock):
    fund(store, clock, "alice", 20_000_000)
    fund(store, clock, "bob", 20_000_000)
    assert w.request_withdrawal(store, clock, "alice", MIN, ADDR_A) == 0
    assert w.request_withdrawal(store, clock, "bob", MIN, ADDR_B) == 0
    assert w.request_withdrawal(store, clock, "alice", MIN, ADDR_TR) == 1
    assert w.request_withdrawal(store, clock, "alice", MIN, ADDR_P2PKH) == 2
    assert [r["i"] for r in w.user_withdrawals(store, "alice")] == [2, 1, 0]


def test_two_tabs_cannot_overspend(store, clock):
    fund(store, clock, "alice", 5_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    with pytest.raises(locks.InsufficientFunds):
        w.request_withdrawal(store, clock, "alice", MIN, ADDR_B)
    assert balance(store, "alice") == 5_000_000 - MIN - FEE_3M
    assert len(w.user_withdrawals(store, "alice")) == 1
    assert_books_clean(store)


def test_a_request_must_cover_its_fee_too(store, clock):
    fund(store, clock, "alice", MIN + FEE_3M - 1)
    before = store.dump()
    with pytest.raises(locks.InsufficientFunds):
        w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    assert store.dump() == before  # refused before a number or a directory entry was used


def test_below_the_minimum_is_refused_and_nothing_is_written(store, clock):
    fund(store, clock, "alice", 10_000_000)
    before = store.dump()
    with pytest.raises(w.BelowMinimum, match=r"minimum withdrawal is 0\.03000000 BTC"):
        w.request_withdrawal(store, clock, "alice", MIN - 1, ADDR_A)
    assert store.dump() == before


@override_settings(MIN_WITHDRAWAL_SATS=100_000, WITHDRAW_FEE_PERMILLE=20)
def test_minimum_and_fee_come_from_settings(store, clock):
    fund(store, clock, "alice", 1_000_000)
    w.request_withdrawal(store, clock, "alice", 100_000, ADDR_A)
    assert request(store, "alice", 0)["fee"] == 2_000


@pytest.mark.parametrize(
    ("address", "words"),
    [
        (MAINNET, "mainnet"),
        (ADDR_A[:-1] + ("q" if ADDR_A[-1] != "q" else "p"), "checksum"),
        (ADDR_A[:20], "truncated|checksum|short"),
        ("bcrt1q cwt06jpdw6lz27evpt668nhdj0h42h5hqvfkqv", "spaces"),
        ("", "empty"),
    ],
)
def test_a_bad_address_is_refused_and_nothing_is_written(store, clock, address, words):
    fund(store, clock, "alice", 10_000_000)
    before = store.dump()
    with pytest.raises(w.BadAddress, match=words) as caught:
        w.request_withdrawal(store, clock, "alice", MIN, address)
    assert str(caught.value)[0].isupper()
    assert store.dump() == before


def test_the_address_is_stored_in_canonical_form(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A.upper())
    assert request(store, "alice", 0)["address"] == ADDR_A


def test_a_busy_account_is_refused_before_anything_is_written(store, clock):
    fund(store, clock, "alice", 10_000_000)
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=1, reason="r")
    before = store.dump()
    with pytest.raises(locks.AccountBusy):
        w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    assert store.dump() == before


def test_a_hold_interrupted_after_its_lock_is_finished_by_recovery(store, clock):
    fund(store, clock, "alice", 10_000_000)

    class CrashOnRequestInsert(Hook):
        def before(self, op, key):
            if op == "insert" and key.startswith("withdraw::"):
                raise Crash(key)

    with pytest.raises(Crash):
        w.request_withdrawal(
            HookedStore(store, CrashOnRequestInsert()), clock, "alice", MIN, ADDR_A
        )
    assert get_account(store, "alice").value["lock"]["kind"] == "withdraw-hold"
    clock.advance(31)
    run_recovery(store, clock)
    assert request(store, "alice", 0)["state"] == "queued"
    assert balance(store, "alice") == 10_000_000 - MIN - FEE_3M
    assert_books_clean(store)


def test_a_live_audit_balances_while_a_hold_is_between_commit_and_debit(store, clock):
    fund(store, clock, "alice", 10_000_000)
    # The request flow up to its commit point, stopped before the debit.
    i = store.counter(withdrawcount_key("alice"), 1, initial=0)
    g = store.counter("withdrawdir", 1, initial=0)
    store.insert(withdrawdir_key(g), {"username": "alice", "i": i, "at": clock.now()})
    lock = locks.take_lock(
        store, clock, "alice", "withdraw-hold", withdraw_key("alice", i), spend=MIN + FEE_3M,
        i=i, amount=MIN, fee=FEE_3M, address=ADDR_A, createdAt=clock.now(),
    )  # fmt: skip
    assert w._insert_request(store, "alice", lock)
    live = run_audit(store, check_locks=False)
    assert live.ok, live.lines()
    assert not run_audit(store).ok  # with locks checked, the unfinished hold is a breach
    w.finish_hold(store, clock, "alice", lock)
    assert_books_clean(store)


# --- cancelling -------------------------------------------------------------------------------


def test_cancel_refunds_amount_and_fee_once(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    clock.advance(60)
    req = w.cancel_withdrawal(store, clock, "alice", 0)
    assert req["state"] == "refunded"
    assert balance(store, "alice") == 10_000_000
    assert [h["state"] for h in req["history"]] == ["queued", "refunded"]
    refunds = refunds_of(store, "alice", "withdraw::alice::0")
    assert [e["delta"] for e in refunds] == [MIN + FEE_3M]
    assert_books_clean(store)
    before = store.dump()
    with pytest.raises(w.NotCancellable, match="already cancelled"):
        w.cancel_withdrawal(store, clock, "alice", 0)
    assert store.dump() == before


def test_cancelling_someone_elses_request_finds_nothing(store, clock):
    fund(store, clock, "alice", 10_000_000)
    fund(store, clock, "bob", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    before = store.dump()
    with pytest.raises(w.WithdrawalNotFound):
        w.cancel_withdrawal(store, clock, "bob", 0)
    assert store.dump() == before


def test_a_request_being_sent_cannot_be_cancelled(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    chain = FakeChain(store).configure(faults=[("send", "timeout-after-send")])
    report = p.process(store, clock, chain)
    assert report.stopped and request(store, "alice", 0)["state"] == "sending"
    before = store.dump()
    with pytest.raises(
        w.NotCancellable,
        match="already being sent and can no longer be cancelled",
    ):
        w.cancel_withdrawal(store, clock, "alice", 0)
    assert store.dump() == before


def test_a_cancel_that_loses_to_the_processor_releases_its_lock(store, clock, monkeypatch):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    real_commit = w._commit_refund

    def processor_first(store_, clock_, lock, doc=None):
        # The processor moves the request to `sending` between the cancel's read and its CAS.
        now = store.get(lock["request"])
        store.replace(lock["request"], {**now.value, "state": "sending"}, now.cas)
        return real_commit(store_, clock_, lock, doc)

    monkeypatch.setattr(w, "_commit_refund", processor_first)
    with pytest.raises(w.NotCancellable, match="already being sent"):
        w.cancel_withdrawal(store, clock, "alice", 0)
    assert get_account(store, "alice").value["lock"] is None
    assert balance(store, "alice") == 10_000_000 - MIN - FEE_3M
    assert refunds_of(store, "alice", "withdraw::alice::0") == []


# --- the processor ----------------------------------------------------------------------------


def queue_three(store, clock):
    fund(store, clock, "alice", 20_000_000)
    fund(store, clock, "bob", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    w.request_withdrawal(store, clock, "bob", 4_000_000, ADDR_B)
    w.request_withdrawal(store, clock, "alice", 5_000_000, ADDR_TR)


def test_one_pass_pays_the_whole_queue_in_one_transaction_in_order(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store)
    clock.advance(3600)
    report = p.process(store, clock, chain)
    assert report.stopped is None
    assert [(ln.key, ln.result) for ln in report.lines] == [
        ("withdraw::alice::0", "sent"),
        ("withdraw::bob::0", "sent"),
        ("withdraw::alice::1", "sent"),
    ]
    (tx,) = chain.txs
    assert tx["comment"].startswith("payoutbatch::")
    assert tx["outputs"] == [[ADDR_A, MIN], [ADDR_B, 4_000_000], [ADDR_TR, 5_000_000]]
    assert report.batches == [(tx["comment"], tx["txid"], 3)]
    batch = store.get(tx["comment"]).value
    assert batch["state"] == "sent" and batch["txid"] == tx["txid"]
    assert batch["requests"] == ["withdraw::alice::0", "withdraw::bob::0", "withdraw::alice::1"]
    for key in batch["requests"]:
        req = store.get(key).value
        assert req["state"] == "sent" and req["txid"] == tx["txid"]
        assert req["attempt"]["batch"] == tx["comment"]
    req = request(store, "alice", 0)
    assert req["sentAt"] == clock.now()
    assert [h["state"] for h in req["history"]] == ["queued", "sending", "sent"]
    assert req["history"][-1]["txid"] == req["txid"]
    report = run_audit(store)
    assert report.ok, report.lines()
    assert report.came_in["paid out"] == -12_000_000
    assert report.held["withdrawal fees earned"] == sum(
        w.withdrawal_fee(a) for a in (MIN, 4_000_000, 5_000_000)
    )
    assert report.held["held withdrawals"] == 0
    # The lease is given back, and a second pass has nothing to do and writes nothing.
    assert store.get(payout_lease.LEASE_KEY).value["owner"] is None
    hook = CountingHook()
    assert p.process(HookedStore(store, hook), clock, chain).lines == []
    assert hook.writes == []


def test_a_crash_after_the_send_is_recorded_from_the_wallet_without_sending_again(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store).configure(faults=[("send", "crash-after-send")])
    with pytest.raises(Crash):
        p.process(store, clock, chain)
    assert request(store, "alice", 0)["state"] == "sending"
    refused = pytest.raises(p.ProcessorBusy, match="Another withdrawal processor is running")
    with refused:
        p.process(store, clock, chain)  # the dead processor's lease still runs
    clock.advance(settings.WITHDRAW_PROCESSOR_LEASE_SECONDS)
    report = p.process(store, clock, chain)
    assert [(ln.result, ln.detail) for ln in report.lines] == [
        ("sent", "found in the payout wallet")
    ] * 3
    (tx,) = chain.txs  # the whole batch, sent once
    for key in ("withdraw::alice::0", "withdraw::bob::0", "withdraw::alice::1"):
        assert payments(store)[key] == [tx["txid"]]
        assert store.get(key).value["txid"] == tx["txid"]
    assert store.get(tx["comment"]).value["state"] == "sent"
    assert_each_request_paid_at_most_once(store)
    assert_books_clean(store)


def test_a_crash_before_the_send_sends_on_the_next_pass(store, clock):
    queue_three(store, clock)

    class CrashOnLeaseRenewal(Hook):
        # The renewal is the last docstore call before the send.
        def __init__(self):
            self.renewals = 0

        def before(self, op, key):
            if op == "replace" and key == payout_lease.LEASE_KEY:
                self.renewals += 1
                if self.renewals == 1:
                    raise Crash("before the send")

    chain = FakeChain(store)
    with pytest.raises(Crash):
        p.process(HookedStore(store, CrashOnLeaseRenewal()), clock, chain)
    assert request(store, "alice", 0)["state"] == "sending" and chain.sends == []
    clock.advance(settings.WITHDRAW_PROCESSOR_LEASE_SECONDS)
    p.process(store, clock, chain)
    req = request(store, "alice", 0)
    assert req["state"] == "sent" and req["attempt"]["n"] == 2
    assert "sent again" in req["history"][-2]["note"]
    assert_each_request_paid_at_most_once(store)


def test_an_unknown_outcome_leaves_the_request_sending_and_stops_the_pass(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store).configure(faults=[("send", "timeout-after-send")])
    report = p.process(store, clock, chain)
    assert "NOT sent again blindly" in report.stopped
    assert [ln.result for ln in report.lines] == ["sending"] * 3  # the whole batch
    assert request(store, "alice", 0)["state"] == "sending"
    assert request(store, "bob", 0)["state"] == "sending"
    assert store.get(payout_lease.LEASE_KEY).value["owner"] is None
    assert_books_clean(store)
    report = p.process(store, clock, chain)
    assert report.stopped is None
    assert [ln.result for ln in report.lines] == ["sent", "sent", "sent"]
    assert len(chain.txs) == 1 and len(chain.sends) == 3
    assert_each_request_paid_at_most_once(store)


def test_an_unreachable_wallet_sends_on_the_next_pass_after_looking(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store).configure(faults=[("send", "unreachable")])
    assert p.process(store, clock, chain).stopped
    assert chain.sends == [] and request(store, "alice", 0)["state"] == "sending"
    chain.configure(faults=[("find_sent", "unreachable")])
    report = p.process(store, clock, chain)
    assert "could not be asked" in report.stopped
    assert chain.sends == [] and request(store, "alice", 0)["state"] == "sending"
    p.process(store, clock, chain)
    assert request(store, "alice", 0)["state"] == "sent"
    assert_each_request_paid_at_most_once(store)


def test_an_answer_that_is_not_a_refusal_is_never_refunded(store, clock):
    # A ChainError without an RPC code may follow a send that went out: refunding it could pay
    # the user twice. It stays `sending` until the wallet is asked.
    queue_three(store, clock)
    chain = FakeChain(store).configure(faults=[("send", "garbled-after-send")])
    report = p.process(store, clock, chain)
    assert report.stopped and "answered oddly" in report.stopped
    assert request(store, "alice", 0)["state"] == "sending"
    p.process(store, clock, chain)
    assert request(store, "alice", 0)["state"] == "sent"
    assert refunds_of(store, "alice", "withdraw::alice::0") == []
    assert_each_request_paid_at_most_once(store)


def test_a_wallet_refusal_fails_the_request_and_refunds_it_once(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, REFUSED)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    chain = FakeChain(store)
    report = p.process(store, clock, chain)
    assert [ln.result for ln in report.lines] == ["failed", "sent"]
    assert "Invalid address" in report.lines[0].detail and "refunded" in report.lines[0].detail
    req = request(store, "alice", 0)
    assert req["state"] == "failed-refunded" and "Invalid address" in req["error"]
    # Tried in the batch, refused with it, then alone: only this one failed.
    assert [h["state"] for h in req["history"]] == [
        "queued",
        "sending",
        "sending",
        "failed",
        "failed-refunded",
    ]
    assert "sent alone" in req["history"][2]["note"]
    (tx,) = chain.txs
    assert tx["outputs"] == [[ADDR_A, MIN]] and request(store, "alice", 1)["txid"] == tx["txid"]
    assert balance(store, "alice") == 10_000_000 - MIN - FEE_3M
    assert len(refunds_of(store, "alice", "withdraw::alice::0")) == 1
    assert run_recovery(store, clock)["withdrawals"] == 0
    p.process(store, clock, chain)
    assert len(refunds_of(store, "alice", "withdraw::alice::0")) == 1
    assert_books_clean(store)


RESERVE = 100_000  # PAYOUT_FEE_RESERVE_SATS's default


def test_an_empty_payout_wallet_keeps_every_request_queued_and_raises_the_alert(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store).configure(balance=0)
    report = p.process(store, clock, chain)
    assert report.stopped is None
    assert [ln.result for ln in report.lines] == ["waiting"] * 3
    assert "short" in report.lines[0].detail
    assert chain.txs == []
    for key in ("withdraw::alice::0", "withdraw::bob::0", "withdraw::alice::1"):
        assert store.get(key).value["state"] == "queued"
    alert = node_alerts.payout_short(store)
    assert (alert["waiting"], alert["waitingSats"], alert["balance"]) == (3, 12_000_000, 0)
    assert alert["shortBy"] == 12_000_000 + RESERVE
    assert "Payout wallet short: 3 request(s)" in report.notes[-1]
    assert balance(store, "alice") == 20_000_000 - MIN - FEE_3M - 5_000_000 - 75_000
    assert refunds_of(store, "alice", "withdraw::alice::0") == []
    assert_books_clean(store)
    # Run again (a timer every minute): still queued, nothing failed, the alert stays as it was,
    # and a pass that can pay nothing takes no lease and writes nothing.
    clock.advance(60)
    hook = CountingHook()
    p.process(HookedStore(store, hook), clock, chain)
    assert hook.writes == []
    assert node_alerts.payout_short(store)["since"] == alert["since"]
    assert request(store, "alice", 0)["state"] == "queued"
    # Funded: the next pass pays them all in one transaction and the alert goes.
    chain.configure(balance=12_000_000 + RESERVE)
    report = p.process(store, clock, chain)
    assert [ln.result for ln in report.lines] == ["sent"] * 3 and len(report.batches) == 1
    assert len(chain.txs) == 1 and node_alerts.payout_short(store) is None
    assert p.process(store, clock, chain).lines == []
    assert_each_request_paid_at_most_once(store)
    assert_books_clean(store)


def test_a_short_wallet_pays_the_oldest_requests_that_fit_and_no_later_one(store, clock):
    queue_three(store, clock)  # 0.03, 0.04, 0.05 BTC
    w.request_withdrawal(store, clock, "bob", MIN, ADDR_A)  # small enough to fit, but later
    chain = FakeChain(store).configure(balance=MIN + 4_000_000 + RESERVE + 3_500_000)
    report = p.process(store, clock, chain)
    results = {ln.key: ln.result for ln in report.lines}
    assert results == {
        "withdraw::alice::0": "sent",
        "withdraw::bob::0": "sent",
        "withdraw::alice::1": "waiting",
        "withdraw::bob::1": "waiting",
    }
    (tx,) = chain.txs
    assert tx["outputs"] == [[ADDR_A, MIN], [ADDR_B, 4_000_000]]
    alert = node_alerts.payout_short(store)
    assert (alert["waiting"], alert["waitingSats"]) == (2, 8_000_000)
    assert alert["balance"] == chain.payout_balance() == 3_600_000  # after the batch
    assert alert["shortBy"] == 8_000_000 + RESERVE - 3_600_000
    assert_books_clean(store)


def test_a_wallet_answering_insufficient_funds_puts_the_batch_back_in_the_queue(store, clock):
    # The balance looked enough, but the wallet wants more (its fee was above the reserve).
    queue_three(store, clock)
    chain = FakeChain(store)

    def short_wallet(outputs, comment):
        raise ChainError("Insufficient funds", code=-6)

    chain.send_many = short_wallet
    report = p.process(store, clock, chain)
    assert report.stopped is None
    assert [ln.result for ln in report.lines] == ["waiting"] * 3
    req = request(store, "alice", 0)
    assert req["state"] == "queued" and req["attempt"] is None
    assert [h["state"] for h in req["history"]] == ["queued", "sending", "queued"]
    assert "Insufficient funds" in req["history"][-1]["note"]
    batch = store.get(req["history"][1]["batch"]).value
    assert batch["state"] == "refused" and "Insufficient funds" in batch["error"]
    assert node_alerts.payout_short(store)["waiting"] == 3
    assert refunds_of(store, "alice", "withdraw::alice::0") == []
    assert_books_clean(store)
    # A queued request can be cancelled while it waits for the wallet.
    w.cancel_withdrawal(store, clock, "alice", 0)
    report = p.process(store, clock, FakeChain(store))
    assert [ln.result for ln in report.lines] == ["sent", "sent"]
    assert_each_request_paid_at_most_once(store)
    assert_books_clean(store)


def test_requests_left_sending_that_the_wallet_never_saw_wait_queued_when_it_is_short(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store).configure(faults=[("send", "unreachable")])
    assert p.process(store, clock, chain).stopped  # all three left `sending`
    chain.configure(balance=0)
    report = p.process(store, clock, chain)
    assert [ln.result for ln in report.lines] == ["waiting"] * 3
    assert request(store, "bob", 0)["state"] == "queued"
    assert node_alerts.payout_short(store)["waiting"] == 3
    assert_books_clean(store)


def test_a_failed_request_whose_refund_was_interrupted_is_refunded_by_recovery(store, clock):
    fund(store, clock, "alice", 10_000_000)
    fund(store, clock, "bob", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, REFUSED)

    class CrashOnRefundLock(Hook):
        def before(self, op, key):
            if op == "replace" and key == "account::alice":
                raise Crash("before the refund lock")

    with pytest.raises(Crash):
        p.process(HookedStore(store, CrashOnRefundLock()), clock, FakeChain(store))
    assert request(store, "alice", 0)["state"] == "failed"
    assert_books_clean(store)  # a failed request still holds its money
    assert run_recovery(store, clock)["withdrawals"] == 1
    assert request(store, "alice", 0)["state"] == "failed-refunded"
    assert balance(store, "alice") == 10_000_000
    assert run_recovery(store, clock)["withdrawals"] == 0
    assert len(refunds_of(store, "alice", "withdraw::alice::0")) == 1
    assert_books_clean(store)


def test_a_busy_account_postpones_a_refund_to_the_recovery_pass(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, REFUSED)
    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:y", delta=5, reason="r")
    report = p.process(store, clock, FakeChain(store))
    assert "refund pending" in report.lines[0].detail
    assert request(store, "alice", 0)["state"] == "failed"
    locks.settle(store, clock, "alice", lock["token"], 5, reason="r")
    assert run_recovery(store, clock)["withdrawals"] == 1
    assert balance(store, "alice") == 10_000_005


def test_the_daily_cap_makes_later_requests_wait_for_the_next_day(store, clock):
    queue_three(store, clock)  # 0.03, 0.04, 0.05 BTC in that order
    chain = FakeChain(store)
    report = p.process(store, clock, chain, daily_cap=8_000_000)
    assert {ln.key: ln.result for ln in report.lines} == {
        "withdraw::alice::0": "sent",
        "withdraw::bob::0": "sent",
        "withdraw::alice::1": "waiting",
    }
    assert report.notes and "Daily cap of 0.08000000 BTC reached" in report.notes[0]
    assert request(store, "alice", 1)["state"] == "queued"
    calc = p.calculate(store, clock, daily_cap=8_000_000)
    assert [ln.result for ln in calc.lines] == ["wait"] and calc.needed == 0
    report = p.process(store, clock, chain, daily_cap=8_000_000)
    assert [ln.result for ln in report.lines] == ["waiting"]
    clock.advance(payout_lease.SECONDS_PER_DAY)
    report = p.process(store, clock, chain, daily_cap=8_000_000)
    assert [ln.result for ln in report.lines] == ["sent"]
    assert len(chain.sends) == 3 and len(chain.txs) == 2


def test_the_cap_counts_what_an_uncapped_run_sent_the_same_day(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store)
    fund(store, clock, "cat", 10_000_000)
    # Every request but the last goes out uncapped first.
    p.process(store, clock, chain)
    w.request_withdrawal(store, clock, "cat", MIN, ADDR_A)
    report = p.process(store, clock, chain, daily_cap=13_000_000)
    assert [ln.result for ln in report.lines] == ["waiting"]
    assert p.process(store, clock, chain, daily_cap=15_000_000).lines[0].result == "sent"


def test_a_request_larger_than_the_cap_waits_and_so_do_later_ones(store, clock):
    queue_three(store, clock)
    report = p.process(store, clock, FakeChain(store), daily_cap=2_000_000)
    assert [ln.result for ln in report.lines] == ["waiting"] * 3


def test_two_processors_cannot_run_at_once(store, clock):
    queue_three(store, clock)
    other = p.ProcessorLease(
        store, clock, settings.WITHDRAW_PROCESSOR_LEASE_SECONDS, owner="other-processor"
    )
    other.acquire()
    before = store.dump()
    with pytest.raises(p.ProcessorBusy, match="other-processor"):
        p.process(store, clock, FakeChain(store))
    assert store.dump() == before
    clock.advance(settings.WITHDRAW_PROCESSOR_LEASE_SECONDS + 1)
    assert len(p.process(store, clock, FakeChain(store)).lines) == 3
    with pytest.raises(p.LeaseLost):
        other.renew()


def test_a_processor_paused_past_its_lease_stops_before_sending(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store)
    lease = p.ProcessorLease(store, clock, 30, owner="slow")
    lease.acquire()
    clock.advance(31)
    p.process(store, clock, chain, lease_seconds=30)  # a rival takes the expired lease
    with pytest.raises(p.LeaseLost):
        lease.renew()
    assert len(chain.sends) == 3


def test_no_configured_node_sends_nothing(store, clock):
    queue_three(store, clock)
    before = store.dump()
    with pytest.raises(p.NoPayoutWallet):
        p.process(store, clock, NoChain())
    assert store.dump() == before


def test_calculate_lists_what_the_next_pass_would_do_and_writes_nothing(store, clock):
    queue_three(store, clock)
    doc = store.get(withdraw_key("alice", 0))  # as if its send's answer was lost
    store.replace(withdraw_key("alice", 0), {**doc.value, "state": "sending"}, doc.cas)
    fund(store, clock, "cat", 10_000_000)
    w.request_withdrawal(store, clock, "cat", MIN, REFUSED)
    doc = store.get(withdraw_key("cat", 0))
    store.replace(withdraw_key("cat", 0), {**doc.value, "state": "failed"}, doc.cas)
    before = store.dump()
    calc = p.calculate(store, clock)
    assert store.dump() == before
    assert [(ln.key, ln.result) for ln in calc.lines] == [
        ("withdraw::alice::0", "look up"),
        ("withdraw::bob::0", "send"),
        ("withdraw::alice::1", "send"),
        ("withdraw::cat::0", "refund"),
    ]
    assert calc.needed == 12_000_000
    assert calc.fees == sum(w.withdrawal_fee(a) for a in (MIN, 4_000_000, 5_000_000))


# --- the cursor, recovery and the audit ------------------------------------------------------


def test_the_cursor_passes_finished_requests_only(store, clock):
    queue_three(store, clock)
    chain = FakeChain(store)
    p.process(store, clock, chain)
    fund(store, clock, "cat", 10_000_000)
    w.request_withdrawal(store, clock, "cat", MIN, ADDR_A)
    p.process(store, clock, chain, daily_cap=0)  # nothing sent; the three sent are passed
    assert store.get(withdraw_queue.CURSOR_KEY).value == {"next": 3}
    hook = CountingHook()
    p.calculate(HookedStore(store, hook), clock)
    assert hook.calls <= 5  # cursor, counter, one directory batch, one request batch, cap


def test_a_dangling_directory_entry_holds_the_cursor_until_it_is_old(store, clock):
    fund(store, clock, "alice", 10_000_000)
    # A writer that died after its directory entry and before the hold lock.
    g = store.counter("withdrawdir", 1, initial=0)
    store.insert(withdrawdir_key(g), {"username": "alice", "i": 7, "at": clock.now()})
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    chain = FakeChain(store)
    p.process(store, clock, chain)
    assert withdraw_queue.read_cursor(store)[0] == 0
    clock.advance(withdraw_queue.DANGLING_GRACE_SECONDS)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_B)
    p.process(store, clock, chain)
    assert store.get(withdraw_queue.CURSOR_KEY).value == {"next": 3}


def test_recovery_reads_one_counter_when_nobody_ever_withdrew(store, clock):
    hook = CountingHook()
    assert withdraw_audit.recover_withdrawals(HookedStore(store, hook), clock) == 0
    assert hook.calls == 1 and hook.writes == []


def test_the_audit_catches_a_refund_applied_twice(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    w.cancel_withdrawal(store, clock, "alice", 0)
    key = withdraw_key("alice", 0)
    lock = locks.take_lock(store, clock, "alice", "withdraw-refund", w.refund_ref(key))
    locks.settle(store, clock, "alice", lock["token"], MIN + FEE_3M)
    report = run_audit(store)
    assert not report.ok
    assert f"{key}: refund applied 2 times, expected 1" in report.breaches, report.lines()


def test_the_audit_catches_a_payout_without_a_hold(store, clock):
    fund(store, clock, "alice", 10_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    doc = store.get(withdraw_key("alice", 0))
    store.insert(withdraw_key("alice", 5), {**doc.value, "i": 5, "token": "forged"})
    store.insert(withdrawdir_key(1), {"username": "alice", "i": 5, "at": clock.now()})
    store.counter("withdrawdir", 1, initial=0)
    report = run_audit(store)
    assert not report.ok
    assert any("withdraw::alice::5: hold applied 0 times" in b for b in report.breaches)


def test_an_ambiguous_request_insert_is_recognised_as_ours(store, clock):
    fund(store, clock, "alice", 10_000_000)

    class AmbiguousInsert(Hook):
        fired = False

        def after(self, op, key):
            if op == "insert" and key.startswith("withdraw::") and not self.fired:
                self.fired = True
                raise Ambiguous(key)

    i = w.request_withdrawal(HookedStore(store, AmbiguousInsert()), clock, "alice", MIN, ADDR_A)
    assert request(store, "alice", i)["state"] == "queued"
    assert balance(store, "alice") == 10_000_000 - MIN - FEE_3M
    assert_books_clean(store)
