"""Key-pool and watcher benchmarks, in-process on a fresh embedded store (durable writes).

- addresses dealt per second with 20 concurrent requesters over 1000 key sets (production shape:
  pages of 100 keys, huge-list pages of 100 ranges), each requester a different user;
- one watcher pass over 10 000 watched addresses with 100 new confirmed payments, against the
  test JSON-RPC bitcoind (tests/rpcserver.py) on the loopback.
Run: .venv/bin/python bench/keys_and_deposits.py [--deals N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="adspace-bench-btc-"))
os.environ.update(
    DJANGO_SETTINGS_MODULE="config.settings.dev",
    DOCSTORE_PATH=str(WORK / "docstore.sqlite3"),
    BITCOIN_NETWORK="regtest",
    KEYPOOL_SETS="1000",
    KEYPOOL_PAGE_SIZE="100",
    KEYPOOL_RANGES_PER_LIST_PAGE="100",
    LOG_LEVEL="ERROR",
)

import django  # noqa: E402

django.setup()

from embit import bech32  # noqa: E402

import docstore  # noqa: E402
from accounts.gateway import ensure_account  # noqa: E402
from bitcoinkeys import deposits, gateway, pool  # noqa: E402
from bitcoinkeys.chain import BitcoindChain  # noqa: E402
from bitcoinkeys.importer import import_addresses  # noqa: E402
from docstore import SystemClock  # noqa: E402
from tests.rpcserver import FakeBitcoind  # noqa: E402


def fake_addresses(n: int) -> list[str]:
    # Valid regtest P2WPKH addresses from random programs: the pool never needs their keys.
    return [bech32.encode("bcrt", 0, list(secrets.token_bytes(20))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deals", type=int, default=2000)
    parser.add_argument("--watched", type=int, default=10_000)
    parser.add_argument("--payments", type=int, default=100)
    args = parser.parse_args()
    clock = SystemClock()
    relaxed = docstore.build_store({"BACKEND": "embedded", "PATH": str(WORK / "docstore.sqlite3"),
                                    "DURABILITY": "relaxed"})  # fmt: skip
    store = docstore.build_store({"BACKEND": "embedded", "PATH": str(WORK / "docstore.sqlite3")})
    pool.init_key_sets(relaxed, clock)
    # Every requester may hit a fresh set, and a set's first page takes a whole range.
    supply = min(args.deals, 1000) * 100 + 10_000
    started = time.perf_counter()
    import_addresses(relaxed, clock, enumerate(fake_addresses(supply)), "regtest")
    print(f"imported {supply} addresses in {time.perf_counter() - started:.1f} s")
    users = [f"u{i}" for i in range(args.deals)]
    for name in users:
        ensure_account(relaxed, clock, name)

    queue = list(users)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def requester():
        while True:
            with lock:
                if not queue:
                    return
                name = queue.pop()
            try:
                pool.get_deposit_address(store, clock, name)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=requester) for _ in range(20)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    print(f"dealt {args.deals - len(errors)} addresses with 20 requesters in {elapsed:.1f} s: "
          f"{(args.deals - len(errors)) / elapsed:.0f} addresses/s ({len(errors)} errors)")  # fmt: skip

    watched = fake_addresses(args.watched)
    for i, address in enumerate(watched):
        g = relaxed.counter(gateway.DEPOSITDIR, 1, initial=0)
        relaxed.insert(gateway.depositdir_key(g), {"address": address})
        relaxed.insert(gateway.deposit_key(address), {"username": users[i % len(users)],
                       "issuedAt": clock.now(), "credited": {}, "lastToken": None})  # fmt: skip
    with FakeBitcoind() as node:
        chain = BitcoindChain(url=node.url, wallet="deposits", payout_wallet="payouts", timeout=30)
        chain.import_addresses(watched)
        deposits.watch_pass(store, clock, chain)  # the cursor starts at the tip
        for address in watched[: args.payments]:
            node.pay(address, 1_000_000)
        node.mine()
        started = time.perf_counter()
        counters = deposits.watch_pass(store, clock, chain)
        elapsed = time.perf_counter() - started
        chain.close()
    print(f"watcher pass over {args.watched} watched addresses, {args.payments} new payments: "
          f"{elapsed:.2f} s, credited {counters.get('credited', 0)}")  # fmt: skip


if __name__ == "__main__":
    main()
