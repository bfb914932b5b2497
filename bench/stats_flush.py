"""Delivery-count flush benchmark: one flush of 10 000 slots' counts (adspace.stats).

Each slot gets impressions, clicks and API fetches counted in memory, then one flush writes them
(one counter call per slot and kind: 30 000 calls) to a fresh embedded store with durable
writes, twice: the first flush creates every counter, the second adds to existing ones. The
target is under 1 s for 10 000 slots' counts.
Run: .venv/bin/python bench/stats_flush.py [--slots N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="adspace-bench-stats-"))
os.environ.update(
    DJANGO_SETTINGS_MODULE="config.settings.dev",
    DOCSTORE_PATH=str(WORK / "docstore.sqlite3"),
    STATS_FLUSH_SECONDS="0",
    LOG_LEVEL="ERROR",
)

import django  # noqa: E402

django.setup()

import docstore  # noqa: E402
from adspace import stats  # noqa: E402

NOW = 1_700_000_000


def one_flush(store, slots: int) -> tuple[float, int]:
    for k in range(slots):
        for kind, views in ((stats.IMPRESSIONS, 40), (stats.CLICKS, 2), (stats.API_FETCHES, 1)):
            for _ in range(views):
                stats.record(store, "bench", 0, k, NOW, kind)
    start = time.perf_counter()
    calls = stats.flush()
    return time.perf_counter() - start, calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=10_000)
    args = parser.parse_args()
    store = docstore.get_store()
    for label in ("new counters", "existing counters"):
        seconds, calls = one_flush(store, args.slots)
        verdict = "ok" if seconds < 1 else "OVER the 1 s target"
        print(
            f"stats flush ({label}): {args.slots} slots, {calls} counter calls in "
            f"{seconds:.3f} s ({calls / seconds:,.0f} calls/s): {verdict}"
        )
    check = store.get(f"stat::bench::0::{args.slots - 1}::{stats.day_of(NOW)}::i").value
    assert check == 80, check  # two flushes of 40 each: nothing lost or doubled


if __name__ == "__main__":
    main()
