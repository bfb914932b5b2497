"""Dealing deposit addresses under every crash point (two levels), the lease matrix and a seeded
swarm (DESIGN.md section 9), in a tiny pool: 3 sets, pages of 3 keys, huge-list pages of 2
ranges, so page rollovers, refills, list-page advances and exhaustion all happen."""

from __future__ import annotations

import random

import greenlet
import pytest
from django.conf import settings

from accounts import locks, recovery
from accounts.adjust import adjust_balance
from accounts.audit import Report, audit_accounts
from accounts.gateway import ensure_account, get_account, iter_accounts
from bitcoinkeys import gateway as g
from bitcoinkeys import importer, pool
from bitcoinkeys.audit import audit_keypool
from docstore import FixedClock, NotFound
from docstore.backends.memory import MemoryStore
from docstore.faults import HookedStore
from tests.harness import (
    CountingHook,
    PauseAt,
    Scenario,
    World,
    finish_and_check,
    new_world,
    run_crash_points,
    run_guarded,
    run_lease_matrix,
    run_swarm,
)
from tests.test_key_pool import PER_LIST_PAGE, SameSet, import_range, tiny_settings

USERS = ("alice", "bob", "cat")
EARLIER = ("e0", "e1", "e2")  # dealt before the flow: set 0's page 0 is full
EXPECTED = (pool.OutOfKeys, locks.AccountBusy)


@pytest.fixture(autouse=True)
def tiny(settings):
    tiny_settings(settings)


_snapshots: dict[tuple, dict] = {}


def make_world(store, clock, list_pages: int) -> dict:
    """Users, a huge list of `list_pages` pages, set 0's page 0 full and set 1's page 0 built
    (huge-list page 0 fully claimed but still current).

    Built once through the real protocol on an in-memory store, then copied document by
    document into each world: the fault runners build thousands of worlds.
    """
    shape = (list_pages, settings.KEYPOOL_SETS, settings.KEYPOOL_PAGE_SIZE)
    if shape not in _snapshots:
        template, t = MemoryStore(), FixedClock(clock.now())
        pool.init_key_sets(template, t)
        import_range(template, t, 0, list_pages * PER_LIST_PAGE)
        for name in USERS + EARLIER:
            ensure_account(template, t, name)
        for name in EARLIER:
            pool.get_deposit_address(template, t, name, SameSet(0))
        pool._ensure_page(template, t, 1, 0)  # takes the other range of huge-list page 0
        _snapshots[shape] = template.dump()
    for key, value in _snapshots[shape].items():
        store.insert(key, value)
    return {}


def setup(store, clock):
    return make_world(store, clock, list_pages=2)


def roomy_setup(store, clock):
    return make_world(store, clock, list_pages=3)


def alice_asks(store, clock, ctx):
    # Set 0's page 0 is full: this walks it, refills page 1 from the next list page, claims.
    return pool.get_deposit_address(store, clock, "alice", SameSet(0))


def bob_asks(store, clock, ctx):
    return pool.get_deposit_address(store, clock, "bob", SameSet(0))


def recover(store, clock):
    # The worker's recovery pass: one account walk, the lock check first, then the key pool's
    # (the swarm takes account locks), after the pass's stuck fills.
    return recovery.run_recovery(store, clock)


def resume(store, clock):
    # Nothing takes an account lock in the crash and lease runs: the key pool pass alone.
    return pool.resume_pending(store, clock)


def out_of_keys(store, s: int) -> bool:
    """Set s is locked filling and no huge-list page from its `fromList` has a range for it."""
    lock = store.get(g.keyset_key(s)).value
    if "filling" not in lock:
        return False
    try:
        last = store.get(g.KEYLIST_COUNT).value
    except NotFound:
        return True
    for z in range(lock["fromList"], last + 1):
        try:
            ranges = store.get(g.keylist_key(z)).value["ranges"]
        except NotFound:
            continue
        if any(r["claimUuid"] in (None, lock["fillUuid"]) for r in ranges):
            return False
    return True


def check(world: World) -> None:
    store = world.store
    report = Report()
    audit_keypool(store, report)  # distinct addresses, claims match holders, one range a page
    assert not report.breaches, "\n".join(report.breaches)
    for username, doc in iter_accounts(store):
        btc = doc.value["btc"]
        if btc["state"] == "getting":
            assert out_of_keys(store, btc["set"]), f"{username} left getting: {btc}"
    sets = store.get_multi([g.keyset_key(s) for s in range(3)])
    for s in range(3):
        value = sets[g.keyset_key(s)].value
        assert "filling" not in value or out_of_keys(store, s), f"set {s} left filling: {value}"
    if world.owner and world.owner[0] == "ok":
        address = world.owner[1]
        assert address in get_account(store, "alice").value["btc"]["addresses"]
        deposit = store.get(g.deposit_key(address)).value
        page = store.get(g.keypage_key(deposit["set"], deposit["page"])).value
        claims = {k["address"]: k["claimedBy"] for k in page["keys"]}
        assert claims[address] == "alice", "alice was told an address that is not hers"


def swarm_check(world: World) -> None:
    check(world)
    report = Report()
    audit_accounts(world.store, report)  # the key steps' CAS kept every balance and ledger
    assert not report.breaches, "\n".join(report.breaches)


SCENARIO = Scenario("deal", setup, alice_asks, resume, check, expected=EXPECTED)


# The two-level crash points (~3400 worlds) and the lease matrix (~1400) run on the in-memory
# store, which passes the same contract suite as the real backends, to fit the suite's time
# budget; the suite's own backend (SQLite, or Couchbase in its leg) runs every crash point once,
# and the threads in test_key_pool_concurrency.py race on it.


def test_dealing_survives_every_crash_point_at_two_levels():
    assert run_crash_points(SCENARIO, MemoryStore, levels=2) > 1000


def test_dealing_survives_every_crash_point_on_the_suites_store(make_world_store):
    assert run_crash_points(SCENARIO, make_world_store, levels=1) > 30


def test_dealing_survives_the_lease_matrix():
    rivals = {
        "recovery": lambda s, c, ctx: resume(s, c),
        "alice in another tab": alice_asks,
        "another user on the same set": bob_asks,
    }
    assert run_lease_matrix(SCENARIO, MemoryStore, rivals) > 1000


# --- out of keys, then an import, under crashes -----------------------------------------------


def scarce_setup(store, clock):
    return make_world(store, clock, list_pages=1)


def out_then_import_then_resume(store, clock, ctx):
    try:
        alice_asks(store, clock, ctx)
    except pool.OutOfKeys:
        pass
    import_range(store, clock, PER_LIST_PAGE, 2 * PER_LIST_PAGE)
    return pool.get_deposit_address(store, clock, "alice")


def scarce_check(world: World) -> None:
    check(world)
    btc = get_account(world.store, "alice").value["btc"]
    if btc["state"] == "getting":
        # Only an import that died before writing its page leaves alice waiting.
        assert get_account(world.store, "alice").value["btc"]["set"] == 0
        assert world.store.get(g.KEYPOOL_ALERT).value["set"] == 0


SCARCE = Scenario(
    "out of keys", scarce_setup, out_then_import_then_resume, resume, scarce_check,
    expected=(*EXPECTED, importer.KeyImportError),
)  # fmt: skip


def test_running_out_then_importing_survives_every_crash_point():
    assert run_crash_points(SCARCE, MemoryStore, levels=1) > 50


# --- seeded swarm -----------------------------------------------------------------------------


def swarm_actors(world, rng):
    actors = []
    for _ in range(rng.randint(2, 6)):
        name = rng.choice(USERS)
        choice = random.Random(rng.random())
        roll = rng.random()
        if roll < 0.15:

            def act(store, clock, ctx, name=name, choice=choice):
                return pool.new_deposit_address(store, clock, name, choice)

        elif roll < 0.25:
            request = f"r{rng.randint(0, 2)}"

            def act(store, clock, ctx, name=name, request=request):
                return adjust_balance(store, clock, name, 100, "bonus", request_id=request)

        else:

            def act(store, clock, ctx, name=name, choice=choice):
                return pool.get_deposit_address(store, clock, name, choice)

        actors.append(act)
    if rng.random() < 0.5:
        actors.append(lambda store, clock, ctx: recover(store, clock))
    return actors


SWARM = Scenario("deal swarm", roomy_setup, alice_asks, recover, swarm_check, EXPECTED)
SCARCE_SWARM = Scenario("scarce swarm", scarce_setup, alice_asks, recover, swarm_check, EXPECTED)


def test_swarm_never_deals_an_address_twice(swarm_seeds):
    assert run_swarm(SWARM, MemoryStore, swarm_actors, swarm_seeds(2000)) > 0


def test_swarm_running_out_of_keys_leaves_everything_resumable(swarm_seeds):
    assert run_swarm(SCARCE_SWARM, MemoryStore, swarm_actors, swarm_seeds(300)) > 0


# --- the harness notices broken variants ------------------------------------------------------


def test_harness_catches_a_claim_that_forgets_its_own_uuid(monkeypatch):
    real = pool._claim_key

    def forgetful(store, clock, s, page, uuid, username):
        # Broken: every attempt claims with a fresh uuid, so a resumed request takes a 2nd key.
        return real(store, clock, s, page, pool.new_uuid(), username)

    monkeypatch.setattr(pool, "_claim_key", forgetful)
    with pytest.raises(AssertionError, match="never delivered"):
        run_crash_points(SCENARIO, MemoryStore, levels=1)


def test_harness_catches_a_fill_that_claims_a_fresh_range_each_time(monkeypatch):
    real = pool._claim_range

    def greedy(store, clock, s, locked):
        fresh = {**locked.value, "fillUuid": pool.new_uuid()}
        return real(store, clock, s, type(locked)(fresh, locked.cas))

    monkeypatch.setattr(pool, "_claim_range", greedy)
    with pytest.raises(AssertionError, match="not built from exactly one range"):
        run_crash_points(SCENARIO, MemoryStore, levels=1)


def test_the_keypool_check_is_registered_with_the_recovery_walk_after_the_lock_check():
    assert list(recovery._account_checks)[:2] == ["locks", "keypool"]
    assert recovery._account_checks["keypool"] == pool.StuckGetting.start
    assert "keypool" not in recovery._passes


# --- the owner paused while a crowd drains the pool -------------------------------------------

CROWD = (("bob", 0), ("cat", 2), ("x0", 1), ("x1", 1), ("x2", 1), ("x3", 1))


def crowd_setup(store, clock):
    make_world(store, clock, list_pages=4)
    for name, _ in CROWD:
        ensure_account(store, clock, name)
    return {}


def crowd_asks(store, clock, ctx):
    # Fills 0:1 and 2:0 from huge-list page 1, then 1:1 from page 2 (moving the pointer past
    # page 1): a request that paused after seeing page 0:1 missing wakes up in that world.
    for name, s in CROWD:
        pool.get_deposit_address(store, clock, name, SameSet(s))


def test_dealing_survives_a_crowd_draining_pages_while_it_is_paused():
    scenario = Scenario("crowd", crowd_setup, alice_asks, resume, check, expected=EXPECTED)
    probe = MemoryStore()
    crowd_setup(probe, FixedClock(0))
    hook = CountingHook()
    alice_asks(HookedStore(probe, hook), FixedClock(0), None)
    for k in range(hook.calls):
        world = new_world(scenario, MemoryStore)
        pause = PauseAt(k, greenlet.getcurrent())
        hooked = HookedStore(world.store, pause)

        def owner(world=world, hooked=hooked):
            world.owner = run_guarded(scenario, lambda: alice_asks(hooked, world.clock, None))

        g_owner = greenlet.greenlet(owner)
        g_owner.switch()
        assert pause.paused
        crowd_asks(world.store, world.clock, None)
        g_owner.switch()
        assert g_owner.dead
        finish_and_check(scenario, world, f"owner paused at {k}, the crowd ran")
