"""One account walk per recovery pass: every app's per-account check runs on each account the walk
reads (the lock check first, then the key pool's stuck `getting` check), so a pass reads each
account once, and still finishes everything the separate walks finished."""

from __future__ import annotations

from collections import Counter

import pytest

from accounts import locks, recovery
from accounts.gateway import account_key, ensure_account, get_account
from accounts.recovery import run_recovery
from bitcoinkeys import pool
from docstore.faults import Hook, HookedStore
from tests.harness import CountingHook
from tests.test_key_pool import (
    PER_LIST_PAGE,
    SameSet,
    assert_pool_clean,
    import_range,
    tiny_settings,
)

NAMES = ["alice", "bob", "cat", "dan", "eve"]


class ReadCounter(HookedStore):
    """Counts every key read, by `get` (or `get_fields`) and by `get_multi` separately."""

    def __init__(self, inner):
        super().__init__(inner, Hook())
        self.gets: Counter[str] = Counter()
        self.multi: Counter[str] = Counter()

    def get(self, key):
        self.gets[key] += 1
        return super().get(key)

    def get_fields(self, key, fields):
        self.gets[key] += 1
        return super().get_fields(key, fields)

    def get_multi(self, keys):
        keys = list(keys)
        self.multi.update(keys)
        return super().get_multi(keys)


@pytest.fixture
def tiny(settings, store, clock):
    """The key pool tests' tiny pool (3 sets of 3-key pages, 2 ranges a list page)."""
    tiny_settings(settings)
    pool.init_key_sets(store, clock)
    return store


@pytest.fixture
def users(store, clock):
    for name in NAMES:
        ensure_account(store, clock, name)
    return NAMES


def stuck_getting(store, clock, name: str, s: int = 0) -> None:
    """`name` asked for an address and died right after taking the `getting` state."""
    doc = get_account(store, name)
    assert pool._start_getting(store, clock, name, doc, {"state": "none"}, SameSet(s))


def adjust_lock(store, clock, name: str) -> None:
    locks.take_lock(store, clock, name, "adjust", f"adjust:{name}", delta=5, reason="r")


def test_one_walk_finds_an_expired_lock_and_a_stuck_getting_account_and_reads_each_account_once(
    tiny, clock, users
):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    adjust_lock(tiny, clock, "alice")
    stuck_getting(tiny, clock, "bob")
    clock.advance(locks.lease_seconds())

    counted = ReadCounter(tiny)
    finished = run_recovery(counted, clock)

    assert finished["locks"] == 1 and finished["keypool"] == 1
    assert get_account(tiny, "alice").value["lock"] is None
    assert get_account(tiny, "alice").value["balance"] == 5
    assert get_account(tiny, "bob").value["btc"]["state"] == "have"
    # The walk read every account once, in its batches; only the two it acted on were read again.
    assert {key: n for key, n in counted.multi.items() if key.startswith("account::")} == {
        account_key(name): 1 for name in NAMES
    }
    assert {key for key in counted.gets if key.startswith("account::")} == {
        account_key("alice"),
        account_key("bob"),
    }
    assert_pool_clean(tiny)


def test_a_quiet_pass_reads_each_account_once_and_writes_nothing(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice")
    clock.advance(3600)
    counted = ReadCounter(tiny)
    hook = CountingHook()
    assert set(run_recovery(HookedStore(counted, hook), clock).values()) == {0}
    assert hook.writes == []
    accounts = {key: n for key, n in (counted.multi + counted.gets).items() if "account::" in key}
    assert accounts == {account_key(name): 1 for name in NAMES}


def test_an_account_with_an_expired_lock_and_stuck_getting_is_finished_in_one_pass(
    tiny, clock, users
):
    # The lock check runs first; the key pool's check then sees the walk's (older) copy of the
    # account, still locked, and re-reads it when it deals, finding the lock gone.
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    stuck_getting(tiny, clock, "cat")
    adjust_lock(tiny, clock, "cat")
    clock.advance(locks.lease_seconds())
    assert run_recovery(tiny, clock) == {
        "locks": 1, "keypool": 1, "campaigns": 0, "orders": 0, "withdrawals": 0
    }  # fmt: skip
    account = get_account(tiny, "cat").value
    assert account["lock"] is None and account["btc"]["state"] == "have"
    assert account["balance"] == 5
    assert_pool_clean(tiny)


def test_a_stuck_getting_account_under_a_live_lock_waits_for_a_later_pass(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    stuck_getting(tiny, clock, "dan")
    clock.advance(locks.lease_seconds())
    adjust_lock(tiny, clock, "dan")  # a money operation in flight, inside its lease
    assert run_recovery(tiny, clock)["keypool"] == 0
    assert get_account(tiny, "dan").value["btc"]["state"] == "getting"
    clock.advance(locks.lease_seconds())
    finished = run_recovery(tiny, clock)
    assert finished["locks"] == 1 and finished["keypool"] == 1
    assert get_account(tiny, "dan").value["btc"]["state"] == "have"


def test_while_out_of_keys_a_recovery_pass_writes_nothing_then_finishes_all_once_keys_come(
    tiny, clock, users
):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    pool.get_deposit_address(tiny, clock, "bob", SameSet(1))
    for name in ("cat", "dan"):
        with pytest.raises(pool.OutOfKeys):
            pool.get_deposit_address(tiny, clock, name, SameSet(2))
    clock.advance(locks.lease_seconds())
    hook = CountingHook()
    assert run_recovery(HookedStore(tiny, hook), clock)["keypool"] == 0
    assert hook.writes == [], "a pass while still out of keys must write nothing"

    import_range(tiny, clock, PER_LIST_PAGE, 2 * PER_LIST_PAGE)
    assert run_recovery(tiny, clock)["keypool"] == 3  # the set's fill, then cat and dan
    for name in ("cat", "dan"):
        assert get_account(tiny, name).value["btc"]["state"] == "have"
    assert_pool_clean(tiny)


def test_checks_run_per_account_in_registration_order_and_whole_passes_after_the_walk(
    store, clock, users, monkeypatch
):
    events: list[tuple[str, ...]] = []

    def start(name):
        def make(store, clock):
            events.append(("start", name))

            class Check:
                finished = 0

                def __call__(self, username, doc):
                    events.append((name, username))
                    self.finished += 1

            return Check()

        return make

    def whole(store, clock):
        events.append(("pass",))
        return 7

    monkeypatch.setattr(recovery, "_account_checks", {"a": start("a"), "b": start("b")})
    monkeypatch.setattr(recovery, "_passes", {"p": whole})
    assert run_recovery(store, clock) == {"a": 5, "b": 5, "p": 7}
    walk = [(check, name) for name in NAMES for check in ("a", "b")]
    assert events == [("start", "a"), ("start", "b"), *walk, ("pass",)]


def test_the_lock_check_is_registered_first_and_the_campaign_and_withdrawal_passes_after():
    assert next(iter(recovery._account_checks)) == "locks"
    assert recovery._account_checks["locks"] is recovery.ExpiredLocks
    assert {"campaigns", "withdrawals"} <= set(recovery._passes)
    assert not {"locks", "keypool"} & set(recovery._passes)  # walked once, not walks of their own


def test_recover_locks_and_resume_pending_still_work_on_their_own(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    adjust_lock(tiny, clock, "alice")
    stuck_getting(tiny, clock, "bob")
    clock.advance(locks.lease_seconds())
    assert pool.resume_pending(tiny, clock) == 1  # bob; alice's lock is not the pool's business
    assert get_account(tiny, "alice").value["lock"] is not None
    assert recovery.recover_locks(tiny, clock) == 1
    assert get_account(tiny, "alice").value["lock"] is None
