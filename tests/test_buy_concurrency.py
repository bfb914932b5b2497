"""Real threads and processes racing for the same slot on the embedded store."""

from __future__ import annotations

import multiprocessing
import threading

import docstore
from accounts import locks
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from adspace import buy, gateway
from docstore import FixedClock
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once

M = 100_000
ROUNDS = 200
T0 = 1_700_000_000
LOSING = (buy.SlotTaken, buy.PriceChanged, locks.AccountBusy)


def round_clock(r: int) -> FixedClock:
    # Two hours a round with one-hour slots: every round prices the next slot at the minimum.
    return FixedClock(T0 + r * 7200)


def market(store, clock, buyers):
    ensure_account(store, clock, "sam")
    n = gateway.create_campaign(store, clock, "sam", M, 1, 300, 250, [])
    for name in buyers:
        ensure_account(store, clock, name)
        adjust_balance(store, clock, name, 10**10, "funding")
        gateway.create_filler(store, clock, name, "ad", "h", "https://x.test/", 300, 250, "0")
    return n


def attempt(store, name: str, n: int, r: int) -> str:
    try:
        sale = buy.buy_next_slot(store, round_clock(r), name, "sam", n, 0, M)
    except LOSING as exc:
        return type(exc).__name__
    assert sale.slot == r
    return "won"


def assert_one_winner_per_round(store, results: dict[int, list[str]], buyers) -> None:
    for r, outcomes in results.items():
        assert outcomes.count("won") == 1, f"round {r}: {outcomes}"
    slots = gateway.get_slots(store, "sam", 0, 0, ROUNDS + 1)
    assert sorted(slots) == list(range(ROUNDS))
    spent = {name: 10**10 - get_account(store, name).value["balance"] for name in buyers}
    wins = {name: sum(1 for s in slots.values() if s["buyer"] == name) for name in buyers}
    assert spent == {name: wins[name] * M for name in buyers}, "a loser was charged"
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


def test_sixteen_threads_racing_for_each_slot_have_exactly_one_winner(store, clock):
    buyers = [f"t{i}" for i in range(16)]
    n = market(store, clock, buyers)
    barrier = threading.Barrier(len(buyers))
    results: dict[int, list[str]] = {r: [] for r in range(ROUNDS)}
    errors: list[BaseException] = []

    def run(name):
        try:
            for r in range(ROUNDS):
                barrier.wait()
                results[r].append(attempt(store, name, n, r))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(b,)) for b in buyers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_one_winner_per_round(store, results, buyers)


def _process_buyer(config, prefix, name, n, barrier, queue):
    store = docstore.build_store(config, prefix=prefix)
    out = []
    for r in range(ROUNDS):
        barrier.wait()
        out.append((r, attempt(store, name, n, r)))
    queue.put((name, out))


def test_four_processes_racing_for_each_slot_have_exactly_one_winner(store, clock):
    buyers = [f"p{i}" for i in range(4)]
    n = market(store, clock, buyers)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(buyers)), ctx.Queue()
    procs = [
        ctx.Process(target=_process_buyer, args=(store.config, store.prefix, b, n, barrier, queue))
        for b in buyers
    ]
    for p in procs:
        p.start()
    collected = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    results: dict[int, list[str]] = {r: [] for r in range(ROUNDS)}
    for _, out in collected:
        for r, outcome in out:
            results[r].append(outcome)
    assert_one_winner_per_round(store, results, buyers)


def test_one_buyer_racing_himself_from_two_tabs_buys_once(store, clock):
    n = market(store, clock, ["solo"])
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def tab():
        barrier.wait()
        outcomes.append(attempt(store, "solo", n, 0))

    threads = [threading.Thread(target=tab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1, outcomes
    assert get_account(store, "solo").value["balance"] == 10**10 - M
    assert_audit_clean(store)
