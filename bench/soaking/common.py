"""What every part of the soak shares: its settings for the site, money helpers and the counters."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")

SATS = 100_000_000
SALE_FEE_PERMILLE = 15
WITHDRAW_FEE_PERMILLE = 15
MIN_CAMPAIGN_SATS = 300_000
MIN_DEPOSIT_SATS = 300_000
MIN_WITHDRAWAL_SATS = 3_000_000
LOCK_LEASE_SECONDS = 5
PAYOUT_WALLET = "adspace-payouts"
KEYPOOL = {"KEYPOOL_SETS": "4", "KEYPOOL_PAGE_SIZE": "5", "KEYPOOL_RANGES_PER_LIST_PAGE": "4"}
ADDRESSES_PER_LIST_PAGE = 20  # KEYPOOL_PAGE_SIZE x KEYPOOL_RANGES_PER_LIST_PAGE
HTTP_TIMEOUT = 30.0
AD_SIZES = [(120, 60), (300, 50), (64, 64)]
# HTTP answers a person can act on; anything else (500 above all) is a failure of the soak. The
# soak never sends a bad CSRF token or a wrong method, so 403 and 405 would be failures too.
CLEAR_STATUSES = {200, 301, 302, 303, 304, 400, 404, 409, 413, 429, 503}
LEDGER_ROWS_PER_PAGE = 50


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fee_up(sats: int, permille: int) -> int:
    return -(-sats * permille // 1000)


def btc(sats: int) -> str:
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), SATS)
    return f"{sign}{whole}.{frac:08d}"


def parse_sats(text: str) -> int:
    text = text.strip().replace("+", "")
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    return sign * (int(whole) * SATS + int((frac + "00000000")[:8]))


# --- statistics ----------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http: Counter = Counter()
        self.lost = 0
        self.timeouts = 0
        self.ops: dict[str, Counter] = defaultdict(Counter)
        self.bad: list[str] = []  # answers that are not clear (500s above all)
        self.faults: Counter = Counter()
        self.chain: Counter = Counter()
        self.unknown: Counter = Counter()
        self.internal: list[str] = []  # exceptions inside the soak itself
        self.inflight = 0  # money POSTs sent and not yet answered: a kill now may hit one
        self.journal = None  # soak.log in the work directory: one line per event

    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
        with self.lock:
            if self.journal is not None:
                self.journal.write(f"{stamp} {text}\n")
                self.journal.flush()

    def posting(self, delta: int) -> None:
        with self.lock:
            self.inflight += delta

    def problem(self, text: str) -> None:
        with self.lock:
            self.bad.append(f"{time.strftime('%H:%M:%S')} {text}")

    def unknown_outcome(self, kind: str) -> None:
        with self.lock:
            self.unknown[kind] += 1

    def crashed(self, where: str) -> None:
        import traceback

        with self.lock:
            self.internal.append(f"{where}: {traceback.format_exc(limit=4)}")

    def status(self, method: str, path: str, status: int, who: str) -> None:
        with self.lock:
            self.http[status] += 1
            if status not in CLEAR_STATUSES:
                self.bad.append(f"{time.strftime('%H:%M:%S')} {who} {method} {path} -> {status}")

    def lost_answer(self, timed_out: bool) -> None:
        with self.lock:
            self.lost += 1
            if timed_out:
                self.timeouts += 1

    def op(self, kind: str, outcome: str, who: str = "", detail: str = "") -> None:
        with self.lock:
            self.ops[kind][outcome] += 1
        self.note(f"{who or '-'} {kind}: {outcome} {detail}".rstrip())

    def fault(self, name: str, n: int = 1, detail: str = "") -> None:
        with self.lock:
            self.faults[name] += n
        self.note(f"FAULT {name} {detail}".rstrip())

    def chain_event(self, name: str, n: int = 1, detail: str = "") -> None:
        with self.lock:
            self.chain[name] += n
        self.note(f"CHAIN {name} {detail}".rstrip())
