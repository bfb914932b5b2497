"""Email notifications (issue 16): queued in the docstore outbox after a money step's commit
point, sent by the worker with Django's mail backend, once each, only to verified addresses that
did not turn the kind off."""

from __future__ import annotations

import itertools

import pytest
from django.core import mail
from django.urls import reverse

from accounts import locks, notify, recovery, workers
from accounts.gateway import get_account
from adspace import buy
from adspace import gateway as ads
from adspace import notices as slot_notices
from bitcoinkeys import deposits
from bitcoinkeys import withdrawals as w
from bitcoinkeys.chain import BitcoindChain, set_chain
from bitcoinkeys.gateway import withdraw_key
from bitcoinkeys.payouts import process as process_payouts
from docstore import FixedClock
from tests.conftest import PASSWORD
from tests.harness import Scenario, run_crash_points
from tests.invariants import assert_audit_clean
from tests.rpcserver import FakeBitcoind
from tests.test_deposits import WALLET, addr, give_address
from tests.test_withdrawals import (
    ADDR_A,
    MIN,
    FakeChain,
    _withdrawals_registered,  # noqa: F401  (autouse: registers finishers, recovery and audit)
    fund,
)


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
    set_chain(c)
    yield c
    c.close()


@pytest.fixture
def verified(make_user):
    """A user with a confirmed address (and an account document)."""

    def make(username: str, off: list[str] | None = None, confirmed: bool = True):
        user = make_user(username)
        user.email, user.email_verified = f"{username}@example.test", confirmed
        user.notify_off = off or []
        user.save()
        return user

    return make


def messages_to(address: str) -> list:
    return [m for m in mail.outbox if m.to == [address]]


def notice(store, kind: str, ref: str) -> dict:
    return store.get(notify.notice_key(kind, ref)).value


# --- deposit credited ------------------------------------------------------------------------


def test_a_credited_deposit_is_emailed_once_by_the_worker(store, clock, node, chain, verified):
    verified("alice")
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    op = node.pay(addr(1), 500_000)
    node.mine()
    workers.run_pass(store, clock)  # the watcher credits and queues (after the sender ran)
    assert get_account(store, "alice").value["balance"] == 500_000
    assert mail.outbox == []  # queued, not sent on the way
    workers.run_pass(store, clock)
    (msg,) = mail.outbox
    assert msg.to == ["alice@example.test"]
    assert "0.00500000 BTC credited to your balance" in msg.subject
    assert op in msg.body and addr(1) in msg.body
    assert notice(store, "deposit_credited", op)["state"] == "sent"
    node.mine(2)
    for _ in range(3):
        workers.run_pass(store, clock)
    assert len(mail.outbox) == 1
    assert_audit_clean(store)


def test_a_deposit_credited_by_check_now_is_not_mailed_on_the_request_but_by_the_worker(
    store, clock, node, chain, verified
):
    verified("alice")
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    op = node.pay(addr(1), 400_000)
    node.mine()
    deposits.check_deposits(store, clock, chain, "alice")  # the "check now" button's path
    assert get_account(store, "alice").value["balance"] == 400_000
    assert not store.get_multi([notify.notice_key("deposit_credited", op)])
    deposits.watch_pass(store, clock, chain)
    notify.send_pending(store, clock)
    assert [m.to for m in mail.outbox] == [["alice@example.test"]]


def test_a_deposit_rolled_forward_by_recovery_is_mailed_once(store, clock, node, chain, verified):
    verified("alice")
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    op = node.pay(addr(1), 600_000)
    node.mine()
    # A watcher died right after the commit point: outpoint recorded, balance not yet changed.
    lock = locks.take_lock(
        store, clock, "alice", "deposit", f"deposit:{addr(1)}:{op}", unique_ref=True,
        address=addr(1), outpoints={op: 600_000},
    )  # fmt: skip
    assert deposits._commit(store, "alice", lock)
    clock.advance(locks.lease_seconds() + 1)
    recovery.run_recovery(store, clock)
    assert get_account(store, "alice").value["balance"] == 600_000
    for _ in range(3):
        deposits.watch_pass(store, clock, chain)
        recovery.run_recovery(store, clock)
        notify.send_pending(store, clock)
    (msg,) = mail.outbox
    assert op in msg.body and "0.00600000 BTC" in msg.subject
    assert_audit_clean(store)


def test_payments_credited_together_make_one_notice(store, clock, node, chain, verified):
    verified("alice")
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    first = node.pay(addr(1), 200_000)  # below the minimum: waits
    node.mine()
    deposits.watch_pass(store, clock, chain)
    second = node.pay(addr(1), 150_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    notify.send_pending(store, clock)
    (msg,) = mail.outbox
    assert "0.00350000 BTC" in msg.subject and first in msg.body and second in msg.body


# --- withdrawal sent -------------------------------------------------------------------------


@pytest.fixture
def payouts(store):
    fake = FakeChain(store)
    set_chain(fake)
    yield fake
    set_chain(None)


def test_a_sent_withdrawal_is_mailed_with_its_txid(store, clock, payouts, verified):
    verified("alice")
    fund(store, clock, "alice", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)
    process_payouts(store, clock, payouts)
    req = store.get(withdraw_key("alice", 0)).value
    assert req["state"] == "sent"
    notify.send_pending(store, clock)
    (msg,) = mail.outbox
    assert msg.subject.startswith("Your withdrawal of 0.03000000 BTC was sent")
    assert req["txid"] in msg.body and ADDR_A in msg.body
    process_payouts(store, clock, payouts)
    notify.send_pending(store, clock)
    assert len(mail.outbox) == 1


def test_a_crash_right_after_sent_loses_no_withdrawal_notice(
    store, clock, payouts, verified, monkeypatch
):
    from bitcoinkeys import notices
    from docstore.faults import Crash

    verified("alice")
    fund(store, clock, "alice", 20_000_000)
    w.request_withdrawal(store, clock, "alice", MIN, ADDR_A)

    def die(*args, **kwargs):
        raise Crash("the processor died after recording `sent`")

    with monkeypatch.context() as m:
        m.setattr(notices, "queue_withdrawal_sent_quietly", die)
        with pytest.raises(Crash):
            process_payouts(store, clock, payouts)
    assert store.get(withdraw_key("alice", 0)).value["state"] == "sent"
    clock.advance(600)  # the dead processor's lease runs out
    process_payouts(store, clock, payouts)  # nothing to pay: the idle pass still queues the notice
    notify.send_pending(store, clock)
    assert len(messages_to("alice@example.test")) == 1


# --- ad review ---------------------------------------------------------------------------------


def test_a_rejected_ad_is_mailed_once_with_its_reason_even_when_recovery_finishes_it(
    store, clock, campaign, settings
):
    from adspace import review
    from docstore.faults import Crash

    settings.REVIEW_HOURS = 24
    buy_now(store, clock, "early", campaign)
    buy_now(store, clock, "late", campaign)
    review.approve_sale(store, clock, "sam", campaign, 0)
    # The rejection dies right after its commit point; recovery rolls it forward.
    real_settle = locks.settle

    def dies(*args, **kwargs):
        raise Crash("after the commit point")

    locks.settle = dies
    try:
        with pytest.raises(Crash):
            review.reject_sale(store, clock, "sam", "sam", campaign, 1, "not for this site")
    finally:
        locks.settle = real_settle
    clock.advance(locks.lease_seconds() + 1)
    recovery.run_recovery(store, clock)
    for _ in range(2):
        workers.run_pass(store, clock)
    (rejected,) = messages_to("late@example.test")
    assert "not for this site" in rejected.body
    (approved,) = messages_to("early@example.test")
    assert "approved" in (approved.subject + approved.body).lower()
    assert_audit_clean(store)


# --- slot about to start ---------------------------------------------------------------------


@pytest.fixture
def campaign(store, clock, make_user, verified):
    make_user("sam")
    n = ads.create_campaign(store, clock, "sam", 300_000, 1, 300, 250, [])
    for name in ("early", "late"):
        verified(name)
        fund(store, clock, name, 50_000_000)
        ads.create_filler(store, clock, name, "main", "h", "https://x.test/", 300, 250, "0")
    return n


def buy_now(store, clock, buyer: str, n: int) -> None:
    buy.buy_next_slot(store, clock, buyer, "sam", n, 0, 10**9)


def test_a_queued_slot_is_announced_once_shortly_before_it_starts(store, clock, campaign):
    t0 = clock.now()
    buy_now(store, clock, "early", campaign)  # live at once: no notice
    buy_now(store, clock, "late", campaign)  # queued: starts at t0 + 1 h
    workers.run_pass(store, clock)
    workers.run_pass(store, clock)
    assert mail.outbox == []  # an hour away
    clock.set(t0 + 3600 - 600)  # 10 minutes before (SLOT_START_NOTICE_MINUTES)
    for _ in range(3):
        workers.run_pass(store, clock)
        clock.advance(60)
    (msg,) = mail.outbox
    assert msg.to == ["late@example.test"]
    assert "Your ad on sam/0 starts at" in msg.subject and "slot 1 of sam/0" in msg.body
    clock.set(t0 + 3600 + 5)
    workers.run_pass(store, clock)
    assert len(mail.outbox) == 1


def test_a_rejected_slot_is_not_announced(store, clock, campaign, settings):
    from adspace import review

    settings.REVIEW_HOURS = 24
    t0 = clock.now()
    buy_now(store, clock, "early", campaign)
    buy_now(store, clock, "late", campaign)  # queued: starts at t0 + 1 h
    review.reject_sale(store, clock, "sam", "sam", campaign, 1, "wrong topic")
    clock.set(t0 + 3600 - 600)
    for _ in range(3):
        workers.run_pass(store, clock)
        clock.advance(60)
    subjects = [m.subject for m in messages_to("late@example.test")]
    assert len(subjects) == 1 and "starts at" not in subjects[0]  # only the rejection


def test_only_slots_inside_the_window_are_announced(store, clock, campaign, settings):
    settings.SLOT_START_NOTICE_MINUTES = 90
    t0 = clock.now()
    buy_now(store, clock, "early", campaign)
    for _ in range(4):  # slots 1..4 start at t0 + 1 h, 2 h, 3 h, 4 h
        buy_now(store, clock, "late", campaign)
    clock.set(t0 + 3600 + 1800)  # slot 2 in 30 min, slot 3 in 90 min, slot 4 in 150 min
    counters = slot_notices.queue_slot_notices(store, clock)
    assert counters["queued"] == 2
    refs = {ads.slot_key("sam", campaign, k) for k in (2, 3)}
    for k in range(5):
        key = notify.notice_key("slot_starting", ads.slot_key("sam", campaign, k))
        assert bool(store.get_multi([key])) == (ads.slot_key("sam", campaign, k) in refs)


def test_candidate_indexes_follow_the_back_to_back_queue():
    last = {"slot": 10, "startsAt": 10_000}
    # slots start at 10 000, 9 000, 8 000... (1 000 s each)
    assert list(slot_notices._candidates(last, 1000, 7_500, 400)) == []
    assert list(slot_notices._candidates(last, 1000, 7_500, 500)) == [8]
    assert list(slot_notices._candidates(last, 1000, 7_999, 2_001)) == [8, 9, 10]
    assert list(slot_notices._candidates(last, 1000, 10_000, 600)) == []


# --- who gets notices ------------------------------------------------------------------------


def test_a_kind_turned_off_is_not_sent_and_the_others_still_are(
    store, clock, node, chain, verified
):
    verified("alice", off=["deposit_credited"])
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    node.pay(addr(1), 500_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    notify.send_pending(store, clock)
    assert mail.outbox == []
    assert notify.queue(store, clock, "alice", "ad_approved", "x", {"campaign": "s/0", "slot": 0})
    notify.send_pending(store, clock)
    assert len(mail.outbox) == 1


def test_an_unverified_address_gets_nothing(store, clock, node, chain, verified):
    verified("alice", confirmed=False)
    give_address(store, clock, "alice", addr(1))
    chain.import_addresses([addr(1)])
    op = node.pay(addr(1), 500_000)
    node.mine()
    deposits.watch_pass(store, clock, chain)
    notify.send_pending(store, clock)
    assert mail.outbox == []
    assert notice(store, "deposit_credited", op)["state"] == "dropped"
    assert get_account(store, "alice").value["balance"] == 500_000


def test_a_notice_queued_before_the_user_opted_out_is_dropped(store, clock, verified):
    user = verified("alice")
    context = {"campaign": "sam/0", "slot": 3, "reason": "not a fit"}
    assert notify.queue(store, clock, "alice", "ad_rejected", "slot::sam::0::3", context)
    user.email_verified = False  # the address was changed since
    user.save()
    assert notify.send_pending(store, clock)["dropped"] == 1
    assert mail.outbox == []
    assert notice(store, "ad_rejected", "slot::sam::0::3")["state"] == "dropped"


def test_the_review_hook_is_idempotent_by_key(store, clock, verified):
    verified("bob")
    context = {"campaign": "sam/0", "slot": 3, "reason": "blurry"}
    assert notify.queue(store, clock, "bob", "ad_rejected", "slot::sam::0::3", context)
    assert not notify.queue(store, clock, "bob", "ad_rejected", "slot::sam::0::3", context)
    notify.send_pending(store, clock)
    notify.send_pending(store, clock)
    (msg,) = mail.outbox
    assert "rejected" in msg.subject and "blurry" in msg.body and "refunded" in msg.body
    with pytest.raises(ValueError):
        notify.queue(store, clock, "bob", "spam", "x", {})


def test_the_security_tab_turns_kinds_off_and_on(client, store, clock, verified):
    verified("alice")
    client.login(username="alice", password=PASSWORD)
    page = client.get(reverse("account_security")).content.decode()
    assert "We email alice@example.test when:" in page
    for kind in notify.KINDS:
        assert f'name="{kind}"' in page
    on = {k: "on" for k in notify.KINDS if k != "withdrawal_sent"}
    response = client.post(reverse("set_notifications"), on)
    assert response.status_code == 302
    from accounts.models import User

    assert User.objects.get(username="alice").notify_off == ["withdrawal_sent"]
    client.post(reverse("set_notifications"), {k: "on" for k in notify.KINDS})
    assert User.objects.get(username="alice").notify_off == []
    assert client.get(reverse("set_notifications")).status_code == 405


def test_the_security_tab_says_an_address_must_be_confirmed_first(client, verified):
    verified("alice", confirmed=False)
    client.login(username="alice", password=PASSWORD)
    page = client.get(reverse("account_security")).content.decode()
    assert "Confirm an email address above to receive these" in page


# --- sending: failures, retries, the cap -----------------------------------------------------


def test_a_failing_mail_server_is_retried_with_backoff_then_given_up(store, clock, verified):
    verified("alice")
    notify.queue(store, clock, "alice", "ad_approved", "r1", {"campaign": "s/0", "slot": 1})
    tries = []

    def refuse(subject, body, sender, to):
        tries.append(clock.now())
        raise ConnectionRefusedError("smtp down")

    for _ in range(60):  # 2 hours: past every backoff (1, 5, 15, 60 minutes)
        counters = notify.send_pending(store, clock, send=refuse)
        assert "sent" not in counters
        clock.advance(120)
    assert len(tries) == notify.MAX_ATTEMPTS
    n = notice(store, "ad_approved", "r1")
    assert n["state"] == "failed" and "smtp down" in n["error"]
    assert store.get(notify.CURSOR_KEY).value["next"] == 1


def test_a_slow_backlog_is_spread_over_passes(store, clock, verified, monkeypatch):
    verified("alice")
    monkeypatch.setattr(notify, "MAX_SENDS_PER_PASS", 3)
    for i in range(7):
        notify.queue(store, clock, "alice", "ad_approved", f"r{i}", {"campaign": "s/0", "slot": i})
    assert notify.send_pending(store, clock)["sent"] == 3
    assert notify.send_pending(store, clock)["sent"] == 3
    assert notify.send_pending(store, clock)["sent"] == 1
    assert len(mail.outbox) == 7
    assert store.get(notify.CURSOR_KEY).value["next"] == 7


# --- crash points ----------------------------------------------------------------------------

SENT_MESSAGES: list[tuple[str, str]] = []
_worlds = itertools.count()


def _record(subject, body, sender, to):
    SENT_MESSAGES.append((subject, to[0]))


def _setup(store, clock: FixedClock) -> dict:
    # Money in the world too: the sender must leave it exactly as it was.
    fund(store, clock, "alice", 5_000_000)
    campaign = f"w{next(_worlds)}/0"
    notify.queue(store, clock, "alice", "ad_approved", campaign, {"campaign": campaign, "slot": 0})
    return {"campaign": campaign}


def _recover_sender(store, clock: FixedClock) -> None:
    clock.advance(notify.SEND_LEASE_SECONDS + 1)  # any interrupted claim is past its lease
    notify.send_pending(store, clock, send=_record)


def _sent_in(world) -> int:
    return sum(1 for subject, _ in SENT_MESSAGES if f" {world.ctx['campaign']} " in subject)


def _check_sender(world) -> None:
    n = notice(world.store, "ad_approved", world.ctx["campaign"])
    count = _sent_in(world)
    assert n["state"] in ("sent", "abandoned"), n["state"]
    assert count <= 2, f"sent {count} times"
    if n["state"] == "sent":
        assert count >= 1
    assert get_account(world.store, "alice").value["balance"] == 5_000_000
    assert_audit_clean(world.store)


def test_crash_points_of_the_sender_send_each_notice_at_most_twice(
    make_world_store, make_user, verified
):
    verified("alice")
    SENT_MESSAGES.clear()
    scenario = Scenario(
        "notice sender",
        setup=_setup,
        flow=lambda store, clock, ctx: notify.send_pending(store, clock, send=_record),
        recover=_recover_sender,
        check=_check_sender,
    )
    assert run_crash_points(scenario, make_world_store) > 0


def test_a_crash_between_send_and_mark_repeats_the_message_once_and_no_more(store, clock, verified):
    from docstore.faults import Crash, Hook, HookedStore

    verified("alice")
    notify.queue(store, clock, "alice", "ad_approved", "q", {"campaign": "s/1", "slot": 0})
    sent = []

    def send(subject, body, sender, to):
        sent.append(subject)

    class DieAtMark(Hook):
        """The second CAS of the notice (claim, then mark): the process dies before it."""

        def __init__(self):
            self.replaces = 0

        def before(self, op, key):
            if op == "replace" and key == notify.notice_key("ad_approved", "q"):
                self.replaces += 1
                if self.replaces == 2:
                    raise Crash("died after sending, before marking it sent")

    with pytest.raises(Crash):
        notify.send_pending(HookedStore(store, DieAtMark()), clock, send=send)
    assert len(sent) == 1
    notify.send_pending(store, clock, send=send)  # within the lease: left to its sender
    assert len(sent) == 1
    clock.advance(notify.SEND_LEASE_SECONDS + 1)
    notify.send_pending(store, clock, send=send)
    assert len(sent) == 2 and notice(store, "ad_approved", "q")["state"] == "sent"
    clock.advance(notify.SEND_LEASE_SECONDS + 1)
    notify.send_pending(store, clock, send=send)
    assert len(sent) == 2


def test_crash_points_of_queueing_then_a_retried_pass_send_exactly_once(make_world_store, verified):
    verified("alice")
    SENT_MESSAGES.clear()

    def setup(store, clock):
        fund(store, clock, "alice", 1_000_000)
        return {"campaign": f"w{next(_worlds)}/0"}

    def flow(store, clock, ctx):
        c = ctx["campaign"]
        notify.queue(store, clock, "alice", "ad_approved", c, {"campaign": c, "slot": 0})

    def recover(store, clock):
        # The caller's pass runs again (it queues again: idempotent), then the sender.
        flow(store, clock, store.get("test::world").value)
        # Late enough that the cursor passes an entry whose queuer died before its notice.
        clock.advance(notify.DANGLING_GRACE_SECONDS)
        _recover_sender(store, clock)

    def tracked_setup(store, clock):
        ctx = setup(store, clock)
        store.insert("test::world", ctx)
        return ctx

    def check(world):
        assert _sent_in(world) == 1
        assert notice(world.store, "ad_approved", world.ctx["campaign"])["state"] == "sent"
        assert_audit_clean(world.store)

    scenario = Scenario("notice queue", tracked_setup, flow, recover, check)
    assert run_crash_points(scenario, make_world_store, levels=1) > 0
