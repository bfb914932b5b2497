"""Real threads asking for deposit addresses at once on the suite's store: 50 users, 3 sets,
pages of 3 keys and a huge list of 2 pages (12 addresses). Nobody gets an address twice, the
users beyond the supply are told cleanly, and after an import their requests finish."""

from __future__ import annotations

import random
import sys
import threading
import time

import pytest

from accounts.audit import Report, audit_accounts
from accounts.gateway import ensure_account, get_account
from bitcoinkeys import pool
from bitcoinkeys.audit import audit_keypool
from docstore.faults import Hook, HookedStore
from tests.test_key_pool import PER_LIST_PAGE, import_range, tiny_settings
from tests.teststore import open_store, store_config

USERS = [f"u{i}" for i in range(50)]


@pytest.fixture
def shared(settings, tmp_path, clock):
    tiny_settings(settings)
    config, prefix = store_config(tmp_path, "race.sqlite3")
    store = open_store({**config, "DURABILITY": "relaxed"}, prefix)
    pool.init_key_sets(store, clock)
    for name in USERS:
        ensure_account(store, clock, name)
    yield store
    store.close()


class Yield(Hook):
    """Give up the GIL before every docstore call. Without it each request (about 1 ms of
    work) tends to run start to finish in one time slice, and the threads barely overlap."""

    def before(self, op: str, key: str) -> None:
        time.sleep(0)


def race(store, clock, names, ask) -> dict[str, object]:
    """Every name asks at once (a barrier lines the threads up); name -> address or exception."""
    store = HookedStore(store, Yield())
    barrier = threading.Barrier(len(names))
    results: dict[str, object] = {}

    def run(name):
        # Open this thread's connection first: opening it is slow and would stagger the start.
        store.get_multi([f"account::{name}"])
        barrier.wait()
        try:
            results[name] = ask(store, clock, name)
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    # Switch threads every few microseconds instead of every 5 ms, so they interleave inside
    # the protocol's read-then-CAS steps instead of mostly running one after another.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    return results


def assert_clean(store) -> None:
    report = Report()
    audit_accounts(store, report)
    audit_keypool(store, report)
    assert not report.breaches, "\n".join(report.breaches)


def test_fifty_users_at_once_then_an_import_serves_the_rest(shared, clock):
    import_range(shared, clock, 0, 2 * PER_LIST_PAGE)

    def ask(store, clock, name):
        return pool.get_deposit_address(store, clock, name, random.Random(name))

    first = race(shared, clock, USERS, ask)
    served = {n: a for n, a in first.items() if isinstance(a, str)}
    refused = {n: e for n, e in first.items() if not isinstance(e, str)}
    assert all(isinstance(e, pool.OutOfKeys) for e in refused.values()), refused
    assert len(set(served.values())) == len(served) <= 2 * PER_LIST_PAGE
    assert len(served) >= PER_LIST_PAGE  # at least every set's first page went out
    for name in refused:
        assert get_account(shared, name).value["btc"]["state"] == "getting"
    assert pool.pool_levels(shared)["alert"] is not None
    assert_clean(shared)

    import_range(shared, clock, 2 * PER_LIST_PAGE, 12 * PER_LIST_PAGE)
    second = race(shared, clock, sorted(refused), ask)
    assert all(isinstance(a, str) for a in second.values()), second
    everyone = {**served, **second}
    assert len(everyone) == len(USERS)
    assert len(set(everyone.values())) == len(USERS), "an address was dealt twice"
    for name, address in everyone.items():
        btc = get_account(shared, name).value["btc"]
        assert btc["state"] == "have" and btc["address"] == address
    assert pool.pool_levels(shared)["alert"] is None
    assert_clean(shared)
