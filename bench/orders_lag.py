"""Standing-order lag benchmark: how long after its due second an order buys.

Seeds a fresh embedded store (durable writes) with 200 campaigns (1-hour slots, each with one
sale made so that its price falls through the orders' limits during the run) and 1 000 open
orders over them, 5 a campaign from 100 buyers. The top order of each campaign is due at a
second spread over the run's first `--spread` seconds; the other 800 wait behind it (after the
sale the price doubles), so they are load the executor reads on every pass. The executor runs
as the worker runs it (adspace.order_exec.run_executor on the real clock, then the worker's
pause of WORKER_INTERVAL_SECONDS), and each sale's lag is the wall time at which its order was
resolved `bought` minus its due second (the first second whose price is within its limit).
Run: .venv/bin/python bench/orders_lag.py [--spread 40] [--wait 1.0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="adspace-bench-orders-"))
os.environ.update(
    DJANGO_SETTINGS_MODULE="config.settings.dev",
    DOCSTORE_PATH=str(WORK / "docstore.sqlite3"),
    STATS_FLUSH_SECONDS="0",
    LOG_LEVEL="ERROR",
    REVIEW_HOURS="0",
)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

import docstore  # noqa: E402
from accounts.adjust import adjust_balance  # noqa: E402
from accounts.gateway import ensure_account  # noqa: E402
from adspace import buy, gateway, order_exec, orders, pricing  # noqa: E402
from docstore import FixedClock, SystemClock  # noqa: E402

CAMPAIGNS, PER_CAMPAIGN, BUYERS = 200, 5, 100
M = 300_000
SLOT = 3600


def seed(store, start: int, spread: int, rng: random.Random) -> dict[str, int]:
    """Returns order key -> due second for each campaign's top order."""
    clock = FixedClock(start - SLOT)
    buyers = [f"b{i}" for i in range(BUYERS)]
    for name in [*buyers, "seller", "first"]:
        ensure_account(store, clock, name)
        adjust_balance(store, clock, name, 10**10, "bench funding")
        gateway.create_filler(store, clock, name, "ad", "h", "https://b.test/", 300, 250, "0")
    due: dict[str, int] = {}
    placed = 0
    for _ in range(CAMPAIGNS):
        n = gateway.create_campaign(store, clock, "seller", M, 1, 300, 250, [])
        # The first sale lands so that the price is still falling, 10 minutes from the minimum,
        # during the run.
        clock.set(start - SLOT + spread + 600)
        buy.buy_next_slot(store, clock, "first", "seller", n, 0, M)
        last = gateway.get_campaign(store, "seller", n).value["last"]
        target = start + 5 + rng.randrange(spread)
        top = pricing.current_price(M, last, target)
        clock.set(start - 30)  # placed before the run, while the price is above every limit
        for j in range(PER_CAMPAIGN):
            buyer = buyers[placed % BUYERS]
            limit = top - j * 2_000
            i = orders.place_order(store, clock, buyer, "seller", n, 0, limit, None)
            if j == 0:
                due[orders.order_key(buyer, i)] = pricing.due_at(M, last, limit)
            placed += 1
    return due


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spread", type=int, default=40, help="seconds the due moments span")
    parser.add_argument("--wait", type=float, default=None, help="ORDERS_WAIT_SECONDS")
    args = parser.parse_args()
    if args.wait is not None:
        settings.ORDERS_WAIT_SECONDS = args.wait
    store = docstore.get_store()
    rng = random.Random(7)
    t_seed = time.time()
    start = int(time.time()) + 120  # seeding takes a while: the run starts 2 minutes from now
    due = seed(store, start, args.spread, rng)
    if time.time() > start:
        sys.exit("seeding took longer than 2 minutes: the first orders were due before the run")
    print(
        f"seeded {CAMPAIGNS} campaigns and {CAMPAIGNS * PER_CAMPAIGN} open orders in "
        f"{time.time() - t_seed:.1f} s"
    )
    bought_at: dict[str, float] = {}
    real_resolve = order_exec.resolve_executing

    def timed_resolve(store, clock, key):
        state = real_resolve(store, clock, key)
        if state == "bought" and key not in bought_at:
            bought_at[key] = time.time()
        return state

    order_exec.resolve_executing = timed_resolve
    clock = SystemClock()
    time.sleep(max(0.0, start - time.time()))
    end = start + args.spread + 10
    passes = 0
    pass_seconds = []
    while time.time() < end and len(bought_at) < len(due):
        t = time.perf_counter()
        order_exec.run_executor(store, clock)
        pass_seconds.append(time.perf_counter() - t)
        passes += 1
        time.sleep(settings.WORKER_INTERVAL_SECONDS)  # the worker's pause between passes
    lags = sorted(bought_at[k] - due[k] for k in bought_at)
    missing = len(due) - len(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(
        f"orders lag (ORDERS_WAIT_SECONDS={settings.ORDERS_WAIT_SECONDS:g}, "
        f"WORKER_INTERVAL_SECONDS={settings.WORKER_INTERVAL_SECONDS:g}): {len(lags)} sales, "
        f"median {statistics.median(lags):.3f} s, p99 {p99:.3f} s, max {lags[-1]:.3f} s"
        f"{f', {missing} NOT BOUGHT' if missing else ''}; {passes} worker passes "
        f"(median {statistics.median(pass_seconds):.3f} s each, waits included)"
    )


if __name__ == "__main__":
    main()
