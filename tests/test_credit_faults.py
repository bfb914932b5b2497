"""Crediting sellers under every crash point (two levels), the lease matrix and a seeded swarm.

Recovery here is `run_recovery` (which finishes a stale `credit` lock through its finisher) followed
by the creditor's next pass: uncredited sales are the creditor's queue, not something a crash left
behind, so the creditor is a worker task of its own rather than a recovery pass. After that one
recovery every sale is credited exactly once and a second recovery writes nothing.
"""

from __future__ import annotations

import copy
from collections import Counter

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, full_ledger, iter_accounts
from accounts.recovery import run_recovery
from adspace import buy, credit, gateway
from docstore import FixedClock
from docstore.backends.memory import MemoryStore
from tests.harness import Scenario, World, run_crash_points, run_lease_matrix, run_swarm
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, M, make_market

EXPECTED = (buy.BuyError, locks.AccountBusy, locks.InsufficientFunds)


def build_market(store, clock, sales):
    n = make_market(store, clock, buyers=("bob", "cat", "dan"), funds=50_000_000)
    # sue sells too, so that sam can be busy buying while his own sales are credited.
    ensure_account(store, clock, "sue")
    m = gateway.create_campaign(store, clock, "sue", M, 24, 300, 250, [])
    adjust_balance(store, clock, "sam", 50_000_000, "funding")
    gateway.create_filler(store, clock, "sam", "main", "h", "https://x.test/", 300, 250, "0")
    for name in ("bob", "cat")[:sales]:
        buy.buy_next_slot(store, clock, name, "sam", n, 0, HUGE)
        clock.advance(1800)
    return {"n": n, "m": m}


_templates: dict[int, tuple] = {}


def market_with_sales(sales: int):
    """A world setup: the market of `build_market`, built once through the real code and copied
    into each world. Thousands of worlds are built per test; copying ~40 documents costs a
    fraction of replaying the registrations, fundings and sales, and yields the same documents."""

    def setup(store, clock):
        if sales not in _templates:
            source, start = MemoryStore(), FixedClock(clock.now())
            ctx = build_market(source, start, sales)
            _templates[sales] = (source.dump(), start.now() - clock.now(), ctx)
        docs, elapsed, ctx = _templates[sales]
        for key, value in docs.items():
            store.insert(key, value)
        clock.advance(elapsed)
        return copy.deepcopy(ctx)

    return setup


def creditor(store, clock, ctx):
    return credit.credit_all(store, clock)


def recover(store, clock):
    run_recovery(store, clock)
    return credit.credit_all(store, clock)


def buyer_of_the_next_slot(name):
    def act(store, clock, ctx):
        return buy.buy_next_slot(store, clock, name, "sam", ctx["n"], 0, HUGE)

    return act


def seller_buys(store, clock, ctx):
    return buy.buy_next_slot(store, clock, "sam", "sue", ctx["m"], 0, HUGE)


def assert_each_sale_credited_once(store) -> None:
    """Every sale's tx is credited, once, to its seller with amount - fee, and each cursor has
    reached the end of its campaign with exactly those amounts. (The audit has already checked
    that slots are contiguous up to each campaign's `last` and that none lags behind it.)"""
    refs = list(gateway.iter_campaign_refs(store))
    campaigns = store.get_multi([gateway.campaign_key(o, n) for o, n in refs])
    cursors = store.get_multi([gateway.creditcursor_key(o, n) for o, n in refs])
    sold = {}
    for owner, n in refs:
        last = campaigns[gateway.campaign_key(owner, n)].value.get("last")
        sold[(owner, n)] = [
            gateway.tx_key(owner, n, k) for k in range(last["slot"] + 1 if last else 0)
        ]
    txs = store.get_multi([key for keys in sold.values() for key in keys])
    expected: dict[str, dict[str, int]] = {}
    for (owner, n), keys in sold.items():
        nets = []
        for key in keys:
            tx = txs[key].value
            assert tx["state"] == "credited", f"{key} is not credited"
            nets.append(tx["amount"] - tx["fee"])
            expected.setdefault(owner, {})[key] = nets[-1]
        doc = cursors.get(gateway.creditcursor_key(owner, n))
        cursor = doc.value if doc else {"next": 0, "earned": 0, "sales": 0}
        assert cursor == {"next": len(nets), "earned": sum(nets), "sales": len(nets)}, cursor
    for name, doc in iter_accounts(store):
        entries = [e for e in full_ledger(store, name, doc.value) if e["kind"] == "credit"]
        refs_credited = Counter(e["ref"] for e in entries)
        assert all(c == 1 for c in refs_credited.values()), f"{name} credited twice: {entries}"
        got = {e["ref"]: e["delta"] for e in entries}
        assert got == expected.get(name, {}), f"{name} credited {got}"
        assert doc.value["lock"] is None, f"{name} still locked"


def check(world: World) -> None:
    store = world.store
    assert_audit_clean(store)
    assert_each_sale_charged_once(store)
    assert_each_sale_credited_once(store)  # and no lock left


# Two levels of crash points multiply the flow's calls by recovery's; each sale adds about six
# calls to both, so the two-level run credits one sale and the one-level run two (which also
# covers the cursor's replace after its insert). The lease matrix races each rival over one sale,
# and two creditors over two; the swarm starts from two sales and its buyers add more.
SCENARIO = Scenario("credit", market_with_sales(2), creditor, recover, check, expected=EXPECTED)
ONE_SALE = Scenario(
    "credit one sale", market_with_sales(1), creditor, recover, check, expected=EXPECTED
)


def market_with_two_sellers(store, clock):
    ctx = market_with_sales(2)(store, clock)
    buy.buy_next_slot(store, clock, "cat", "sue", ctx["m"], 0, HUGE)
    return ctx


def threaded_creditor(store, clock, ctx):
    return credit.credit_all(store, clock, threads=4)


# The worker's pass credits sellers in parallel threads: the crash lands wherever the threads
# happen to be at that call, and the other threads may go on (a crash of one thread is a harder
# case for the protocol than the whole process dying).
THREADED = Scenario(
    "credit, sellers in parallel", market_with_two_sellers, threaded_creditor, recover, check,
    expected=EXPECTED,
)  # fmt: skip


def test_a_pass_crediting_sellers_in_parallel_survives_every_crash_point(make_world_store):
    assert run_crash_points(THREADED, make_world_store, levels=1) > 50


def test_crediting_survives_every_crash_point_at_two_levels(make_world_store):
    assert run_crash_points(ONE_SALE, make_world_store, levels=2) > 500


def test_crediting_two_sales_survives_every_crash_point(make_world_store):
    assert run_crash_points(SCENARIO, make_world_store, levels=1) > 50


def test_crediting_survives_the_lease_matrix(make_world_store):
    rivals = {
        # Each rival does one thing: the lock recovery here, the creditor's pass on the next line.
        "lock recovery": lambda s, c, ctx: run_recovery(s, c),
        "a second creditor": creditor,
        "a buyer of the next slot": buyer_of_the_next_slot("dan"),
        "the seller buying elsewhere": seller_buys,
    }
    assert run_lease_matrix(ONE_SALE, make_world_store, rivals) > 200


def test_two_creditors_racing_over_two_sales_survive_the_lease_matrix(make_world_store):
    # The owner paused on sale 0 while the rival credits both and moves the cursor past them:
    # the owner must then skip what its stale batch still calls uncredited.
    rivals = {"a second creditor": creditor}
    assert run_lease_matrix(SCENARIO, make_world_store, rivals) > 100


def swarm_actors(world, rng):
    actors = [creditor, creditor]
    for _ in range(rng.randint(1, 3)):
        actors.append(buyer_of_the_next_slot(rng.choice(["bob", "cat", "dan"])))
    if rng.random() < 0.5:
        actors.append(seller_buys)
    if rng.random() < 0.5:
        actors.append(lambda store, clock, ctx: run_recovery(store, clock))
    return actors


def test_crediting_swarm_credits_each_sale_once(swarm_seeds):
    assert run_swarm(SCENARIO, MemoryStore, swarm_actors, swarm_seeds(2000)) > 0


def test_harness_catches_a_creditor_that_ignores_who_won_the_commit(make_world_store, monkeypatch):
    # A broken variant: credit the seller whether or not our CAS is the one that marked the tx.
    real_commit = credit._commit

    def blind_commit(store, clock, tx_key, token, doc=None):
        real_commit(store, clock, tx_key, token, doc)
        return token

    monkeypatch.setattr(credit, "_commit", blind_commit)
    try:
        run_lease_matrix(SCENARIO, make_world_store, {"a second creditor": creditor})
    except AssertionError:
        return
    raise AssertionError("the harness did not notice a sale credited twice")
