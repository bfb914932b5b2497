"""Dealing deposit addresses from the key pool (DESIGN.md 6.3): the happy path, page rollover,
refills, running out of keys and resuming, new addresses, and the lock rule."""

from __future__ import annotations

import logging
from functools import cache
from io import StringIO

import pytest
from django.core.management import call_command

from accounts import locks
from accounts.audit import run_audit
from accounts.gateway import ensure_account, get_account
from bitcoinkeys import gateway as g
from bitcoinkeys import importer, pool
from bitcoinkeys.addresses import derive_addresses
from docstore import FixedClock
from docstore.faults import HookedStore
from tests.harness import CountingHook

NETWORK = "regtest"
# BIP-84 test vector account key (m/84'/1'/0' of "abandon ... about"); regtest addresses.
VPUB = (
    "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbB"
    "rf8ZhDYe2jWAqvZVnsc"
)
SETS, PAGE, RANGES = 3, 3, 2
PER_LIST_PAGE = PAGE * RANGES


@cache
def addresses(start: int, end: int) -> tuple[str, ...]:
    return tuple(derive_addresses(VPUB, start, end, network=NETWORK))


def tiny_settings(settings) -> None:
    settings.KEYPOOL_SETS = SETS
    settings.KEYPOOL_PAGE_SIZE = PAGE
    settings.KEYPOOL_RANGES_PER_LIST_PAGE = RANGES
    settings.BITCOIN_NETWORK = NETWORK


def import_range(store, clock, start: int, end: int) -> importer.ImportResult:
    items = enumerate(addresses(start, end), start=1)
    return importer.import_addresses(store, clock, items, NETWORK)


class SameSet:
    """An rng that always picks set `s`, so tests control which set a request uses."""

    def __init__(self, s: int = 0):
        self.s = s

    def randrange(self, n: int) -> int:
        return self.s % n


def dealt(store) -> dict[str, str]:
    """address -> username, from every key page claim."""
    out = {}
    for s in range(SETS):
        y = 0
        while True:
            try:
                page = store.get(g.keypage_key(s, y)).value
            except Exception:
                break
            for entry in page["keys"]:
                if entry["claimUuid"] is not None:
                    assert entry["address"] not in out, f"{entry['address']} claimed twice"
                    out[entry["address"]] = entry["claimedBy"]
            y += 1
    return out


class Captured(logging.Handler):
    """Records of one logger (the suite runs with `-p no:logging`, so no caplog)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.logger, self.records = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def assert_pool_clean(store) -> None:
    report = run_audit(store)
    assert report.ok, "\n".join(report.lines())


@pytest.fixture
def tiny(settings, store, clock):
    tiny_settings(settings)
    pool.init_key_sets(store, clock)
    return store


@pytest.fixture
def users(store, clock):
    names = ["alice", "bob", "cat", "dan", "eve"]
    for name in names:
        ensure_account(store, clock, name)
    return names


# --- init -------------------------------------------------------------------------------------


def test_init_creates_every_set_and_the_list_pointer_once(settings, store, clock):
    tiny_settings(settings)
    created = pool.init_key_sets(store, clock)
    assert created == ["keyset::0", "keyset::1", "keyset::2", "keylist::current"]
    assert store.get("keyset::2").value == {"page": 0}
    assert store.get("keylist::current").value == {"page": 0}
    assert pool.init_key_sets(store, clock) == []
    with pytest.raises(Exception, match="keypage"):
        store.get(g.keypage_key(0, 0))  # page 0 is filled by the first request, not by init


def test_init_docstore_creates_the_key_sets(settings, store):
    tiny_settings(settings)
    out = StringIO()
    call_command("init_docstore", stdout=out, verbosity=2)
    assert "created keyset::2" in out.getvalue() and "created keylist::current" in out.getvalue()


# --- dealing ----------------------------------------------------------------------------------


def test_a_first_request_fills_page_zero_from_the_huge_list_and_deals_its_first_key(
    tiny, clock, users
):
    import_range(tiny, clock, 0, 2 * PER_LIST_PAGE)
    address = pool.get_deposit_address(tiny, clock, "alice", rng=SameSet(1))

    page = tiny.get(g.keypage_key(1, 0)).value
    assert [k["address"] for k in page["keys"]] == list(addresses(0, PAGE))
    assert address == addresses(0, 1)[0]
    assert page["keys"][0]["claimedBy"] == "alice"
    assert (page["list"], page["range"], page["fillUuid"]) == (0, 0, "1:0")
    assert tiny.get(g.keylist_key(0)).value["ranges"][0]["claimUuid"] == "1:0"
    assert tiny.get(g.keyset_key(1)).value == {"page": 0}

    btc = get_account(tiny, "alice").value["btc"]
    assert btc == {"state": "have", "address": address, "addresses": [address]}
    deposit = tiny.get(g.deposit_key(address)).value
    assert deposit["username"] == "alice"
    assert deposit["credited"] == {} and deposit["lastToken"] is None
    assert tiny.get(g.depositdir_key(0)).value == {"address": address}
    assert_pool_clean(tiny)


def test_asking_again_returns_the_same_address_without_writing(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    first = pool.get_deposit_address(tiny, clock, "alice")
    hook = CountingHook()
    assert pool.get_deposit_address(HookedStore(tiny, hook), clock, "alice") == first
    assert hook.writes == []


def test_a_full_page_rolls_over_to_a_new_page_from_the_next_range(tiny, clock, users):
    import_range(tiny, clock, 0, 2 * PER_LIST_PAGE)
    got = {name: pool.get_deposit_address(tiny, clock, name, SameSet(0)) for name in users}

    assert len(set(got.values())) == len(users)
    assert tiny.get(g.keyset_key(0)).value == {"page": 1}
    page1 = tiny.get(g.keypage_key(0, 1)).value
    assert [k["address"] for k in page1["keys"]] == list(addresses(PAGE, 2 * PAGE))
    assert [k["claimedBy"] for k in page1["keys"]] == ["dan", "eve", None]
    assert dealt(tiny) == {a: n for n, a in got.items()}
    assert_pool_clean(tiny)


def test_refills_move_the_huge_list_pointer_past_full_pages(tiny, clock, users):
    import_range(tiny, clock, 0, 2 * PER_LIST_PAGE)
    for s, name in enumerate(users[:3]):
        pool.get_deposit_address(tiny, clock, name, SameSet(s))
    # Sets 0 and 1 took both ranges of list page 0; set 2 had to go to page 1.
    assert tiny.get(g.keylist_key(1)).value["ranges"][0]["claimUuid"] == "2:0"
    assert tiny.get(g.KEYLIST_CURRENT).value == {"page": 1}
    levels = pool.pool_levels(tiny)
    assert levels["listPages"] == 2 and levels["currentListPage"] == 1
    assert levels["freeRangesOnCurrentPage"] == 1
    assert levels["freeAddressesOnList"] == PAGE
    assert levels["setsFilling"] == 0 and levels["alert"] is None


def test_running_out_of_keys_alerts_staff_and_the_same_request_resumes_after_an_import(
    tiny, clock, users
):
    import_range(tiny, clock, 0, PER_LIST_PAGE)  # one list page: two ranges, two sets' pages
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    pool.get_deposit_address(tiny, clock, "bob", SameSet(1))

    with Captured("bitcoinkeys.pool") as log, pytest.raises(pool.OutOfKeys) as exc:
        pool.get_deposit_address(tiny, clock, "cat", SameSet(2))
    assert "run out of deposit addresses" in str(exc.value)
    assert "staff have been alerted" in str(exc.value)
    errors = [r.getMessage() for r in log.records if r.levelno == logging.ERROR]
    assert any("out of keys" in m for m in errors), errors
    assert tiny.get(g.KEYPOOL_ALERT).value == {
        "at": clock.now(), "set": 2, "page": 0, "listPage": 1,
    }  # fmt: skip
    btc = get_account(tiny, "cat").value["btc"]
    assert btc["state"] == "getting" and btc["set"] == 2
    lock = tiny.get(g.keyset_key(2)).value
    assert lock["filling"] == 0 and lock["fillUuid"] == "2:0" and lock["fromList"] == 1
    assert pool.pool_levels(tiny)["alert"]["set"] == 2

    # Asking again while still out: same answer, nothing written (no alert storm either).
    hook = CountingHook()
    with pytest.raises(pool.OutOfKeys):
        pool.get_deposit_address(HookedStore(tiny, hook), clock, "cat", SameSet(0))
    assert hook.writes == []

    import_range(tiny, clock, PER_LIST_PAGE, 2 * PER_LIST_PAGE)
    address = pool.get_deposit_address(tiny, clock, "cat")
    assert address == addresses(PER_LIST_PAGE, PER_LIST_PAGE + 1)[0]
    assert tiny.get(g.keyset_key(2)).value == {"page": 0}
    assert pool.pool_levels(tiny)["alert"] is None
    assert_pool_clean(tiny)


def test_the_resume_pass_finishes_requests_stuck_out_of_keys_once_keys_arrive(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    pool.get_deposit_address(tiny, clock, "bob", SameSet(1))
    for name in ("cat", "dan"):
        with pytest.raises(pool.OutOfKeys):
            pool.get_deposit_address(tiny, clock, name, SameSet(2))

    clock.advance(locks.lease_seconds())
    hook = CountingHook()
    assert pool.resume_pending(HookedStore(tiny, hook), clock) == 0
    assert hook.writes == [], "a pass while still out of keys must write nothing"

    import_range(tiny, clock, PER_LIST_PAGE, 2 * PER_LIST_PAGE)
    assert pool.resume_pending(tiny, clock) == 3  # the set's fill, then cat and dan
    for name in ("cat", "dan"):
        assert get_account(tiny, name).value["btc"]["state"] == "have"
    assert_pool_clean(tiny)


def test_the_resume_pass_leaves_fresh_requests_to_their_owner(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool._start_getting(
        tiny, clock, "alice", get_account(tiny, "alice"), {"state": "none"}, SameSet(0)
    )
    assert pool.resume_pending(tiny, clock) == 0
    clock.advance(locks.lease_seconds())
    assert pool.resume_pending(tiny, clock) == 1
    assert get_account(tiny, "alice").value["btc"]["state"] == "have"


def test_the_resume_pass_is_cheap_when_nothing_is_pending(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice")
    clock.advance(3600)
    hook = CountingHook()
    assert pool.resume_pending(HookedStore(tiny, hook), clock) == 0
    assert hook.writes == []
    assert hook.calls <= 4  # sets in one batch; the account directory and accounts in batches


def test_a_new_address_keeps_the_old_one_on_the_account(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    old = pool.get_deposit_address(tiny, clock, "alice")
    new = pool.new_deposit_address(tiny, clock, "alice", replacing=old)
    assert new != old
    btc = get_account(tiny, "alice").value["btc"]
    assert btc == {"state": "have", "address": new, "addresses": [old, new]}
    for address in (old, new):
        assert tiny.get(g.deposit_key(address)).value["username"] == "alice"
    # A second click on "new address" (the page still showing `old`) deals nothing more.
    assert pool.new_deposit_address(tiny, clock, "alice", replacing=old) == new
    assert get_account(tiny, "alice").value["btc"]["addresses"] == [old, new]
    assert_pool_clean(tiny)


def test_a_locked_account_gets_no_address_until_the_lock_is_gone(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    lock = locks.take_lock(
        tiny, clock, "alice", "adjust", "adjust:x", delta=5, reason="test", staff=""
    )
    before = get_account(tiny, "alice").value
    with pytest.raises(locks.AccountBusy):
        pool.get_deposit_address(tiny, clock, "alice")
    assert get_account(tiny, "alice").value == before

    locks.settle(tiny, clock, "alice", lock["token"], 5, reason="test")
    address = pool.get_deposit_address(tiny, clock, "alice")
    account = get_account(tiny, "alice").value
    assert account["btc"]["address"] == address
    assert account["balance"] == 5 and len(account["ledger"]) == 1  # nothing else was lost


def test_a_request_in_progress_does_not_finish_while_a_lock_is_taken(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool._start_getting(
        tiny, clock, "alice", get_account(tiny, "alice"), {"state": "none"}, SameSet(0)
    )
    locks.take_lock(tiny, clock, "alice", "adjust", "adjust:y", delta=7, reason="r", staff="")
    with pytest.raises(locks.AccountBusy):
        pool.get_deposit_address(tiny, clock, "alice")
    assert get_account(tiny, "alice").value["btc"]["state"] == "getting"
    # Past the lease the request finishes the lock (rolls it forward), then its own work.
    clock.advance(locks.lease_seconds())
    pool.get_deposit_address(tiny, clock, "alice")
    account = get_account(tiny, "alice").value
    assert account["lock"] is None and account["balance"] == 7
    assert account["btc"]["state"] == "have"
    assert_pool_clean(tiny)


def test_a_hole_left_by_a_dead_import_is_skipped(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    tiny.counter(g.KEYLIST_COUNT)  # page 1 allocated, never written
    import_range(tiny, clock, PER_LIST_PAGE, 2 * PER_LIST_PAGE)  # page 2
    for s, name in enumerate(["alice", "bob", "cat"]):
        pool.get_deposit_address(tiny, clock, name, SameSet(s))
    assert tiny.get(g.keypage_key(2, 0)).value["list"] == 2
    assert_pool_clean(tiny)


def test_the_newest_page_missing_means_out_of_keys_not_a_hole(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    tiny.counter(g.KEYLIST_COUNT)  # an import writing page 1 right now
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    pool.get_deposit_address(tiny, clock, "bob", SameSet(1))
    with pytest.raises(pool.OutOfKeys):
        pool.get_deposit_address(tiny, clock, "cat", SameSet(2))
    assert tiny.get(g.keyset_key(2)).value["fromList"] == 1


def test_an_account_that_does_not_exist_is_refused(tiny, clock):
    with pytest.raises(locks.AccountMissing):
        pool.get_deposit_address(tiny, clock, "nobody")


# --- the audit notices breaches ---------------------------------------------------------------


def test_the_audit_notices_an_address_dealt_to_two_users(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    address = pool.get_deposit_address(tiny, clock, "alice")
    doc = get_account(tiny, "bob")
    btc = {"state": "have", "address": address, "addresses": [address]}
    tiny.replace("account::bob", {**doc.value, "btc": btc}, doc.cas)
    lines = "\n".join(run_audit(tiny).breaches)
    assert "held by alice and bob" in lines
    assert "no deposit doc names bob" in lines


def test_the_audit_notices_a_key_page_not_built_from_its_range(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    doc = tiny.get(g.keypage_key(0, 0))
    keys = [dict(k) for k in doc.value["keys"]]
    keys[2]["address"] = addresses(PER_LIST_PAGE - 1, PER_LIST_PAGE)[0]  # from the other range
    tiny.replace(g.keypage_key(0, 0), {**doc.value, "keys": keys}, doc.cas)
    breaches = run_audit(tiny).breaches
    assert any("not built from exactly one range" in b for b in breaches), breaches


def test_the_audit_notices_a_claimed_key_never_delivered(tiny, clock, users):
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    pool.get_deposit_address(tiny, clock, "alice", SameSet(0))
    doc = tiny.get(g.keypage_key(0, 0))
    keys = [dict(k) for k in doc.value["keys"]]
    keys[1].update(claimedBy="bob", claimUuid="lost")
    tiny.replace(g.keypage_key(0, 0), {**doc.value, "keys": keys}, doc.cas)
    breaches = run_audit(tiny).breaches
    assert any("claimed for bob but never delivered" in b for b in breaches), breaches


def test_pool_levels_on_an_empty_pool(tiny):
    levels = pool.pool_levels(tiny)
    assert levels["sets"] == SETS and levels["listPages"] == 0
    assert levels["freeAddressesOnList"] == 0 and levels["listPagesLeft"] == 0


def test_fixed_clock_is_used_for_issued_at(tiny, users):
    clock = FixedClock(1_800_000_000)
    import_range(tiny, clock, 0, PER_LIST_PAGE)
    address = pool.get_deposit_address(tiny, clock, "alice")
    assert tiny.get(g.deposit_key(address)).value["issuedAt"] == 1_800_000_000
