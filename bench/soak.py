"""make soak: the whole system under load and faults, then healed, audited and reconciled.

Starts the real thing on a fresh temporary directory (migrate, init_docstore, a key pool of regtest
addresses from a fixed seed, gunicorn with 2 workers of 8 threads and `manage.py run_workers` as
two processes, as bin/serve starts them) against the scriptable JSON-RPC bitcoind of
tests/rpcserver.py, which runs inside this process on a loopback port. Simulated users then drive it over HTTP for the
given time, doing everything a person can (register, log in, get deposit addresses, upload ads,
create campaigns, race each other for slots, withdraw and cancel), while this process plays the
rest of the world: it pays users' addresses and mines blocks (sometimes fee-bumping or
double-spending an unconfirmed payment, sometimes reorging a block away), runs the withdrawal
processor on a timer, and kills things with SIGKILL (a gunicorn worker, the worker process, the
processor in the middle of a payout).

Then a heal phase (no more faults or users) lets recovery, the creditor, the watcher and the
processor drain everything, `manage.py audit` must pass, no lock may remain, no HTTP answer may
have been a 500, and what every simulated user saw (deposits the chain confirmed to their
addresses, purchases, withdrawals, cancellations, sales) must agree with the server's ledgers to
the sat. Requests whose answer was lost to a kill are "unknown outcomes": the user re-reads their
account page as a person would, and whatever is left unknown is reconciled by ledger ref at the end.

Every random choice of the simulation comes from --seed (printed, to replay); the scheduling of
threads and processes does not. Loopback only. Exits non-zero on any failure.

    bench/soak [--minutes 5] [--users 30] [--seed S] [--heal-timeout 180] [--keep]
"""

from __future__ import annotations

import argparse
import html
import http.client
import io
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rpcserver import FakeBitcoind  # noqa: E402

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


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (sorted, so a seeded choice among them is stable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def proc_state(pid: int) -> str:
    """R running, D uninterruptible (an fsync: a docstore write under way), S sleeping..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def busy(pid: int) -> bool:
    return proc_state(pid) in ("R", "D")


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def derive_regtest_addresses(path: str, count: int, kind: str = "p2wpkh") -> list[str]:
    """`count` regtest addresses of the receive branch of a tpub derived from a fixed seed."""
    from embit import bip32

    from bitcoinkeys.addresses import derive_addresses

    root = bip32.HDKey.from_seed(b"adspace soak: a fixed seed, never a real wallet!!")
    tpub = root.derive(path).to_public().to_base58(version=bytes.fromhex("043587cf"))
    return derive_addresses(tpub, 0, count, kind, network="regtest")


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


# --- HTTP: one cookie jar per user -----------------------------------------------------------------


class Lost(Exception):
    """The answer never came: the connection was reset (a killed worker) or timed out."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Response:
    status: int
    location: str
    text: str

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.location).path if self.location else ""


class Client:
    def __init__(self, port: int, stats: Stats, who: str):
        self.port, self.stats, self.who = port, stats, who
        self.cookies: dict[str, str] = {}

    def _update_cookies(self, headers: list[str]) -> None:
        for header in headers:
            jar = SimpleCookie()
            try:
                jar.load(header)
            except CookieError:
                continue
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or morsel.value == "" or "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.coded_value

    def request(
        self,
        method: str,
        path: str,
        fields: dict | list | None = None,
        files: dict[str, tuple[str, str, bytes]] | None = None,
        money: bool = False,
    ) -> Response:
        headers = {"Host": f"127.0.0.1:{self.port}", "Connection": "close", "User-Agent": "soak"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if method == "POST":
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            headers["Referer"] = f"http://127.0.0.1:{self.port}/"
            if files:
                boundary = uuid.uuid4().hex
                body = multipart(boundary, fields or {}, files)
                headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            else:
                body = urllib.parse.urlencode(fields or {}).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)
        if money:
            self.stats.posting(1)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except TimeoutError as exc:
            self.stats.lost_answer(True)
            raise Lost(f"{method} {path}: timed out ({exc})", timed_out=True) from None
        except (OSError, http.client.HTTPException) as exc:
            self.stats.lost_answer(False)
            raise Lost(f"{method} {path}: {exc!r}") from None
        finally:
            conn.close()
            if money:
                self.stats.posting(-1)
        self._update_cookies(resp.headers.get_all("Set-Cookie") or [])
        self.stats.status(method, path, resp.status, self.who)
        return Response(resp.status, resp.headers.get("Location") or "", text)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, fields=None, files=None, money: bool = False) -> Response:
        """A form POST; `money`: it runs a money or key-pool protocol (kills aim at those)."""
        if "csrftoken" not in self.cookies:
            self.get("/accounts/login/")
        return self.request("POST", path, fields, files, money)


def multipart(boundary: str, fields: dict, files: dict[str, tuple[str, str, bytes]]) -> bytes:
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(f"{value}\r\n".encode())
    for name, (filename, content_type, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# --- reading pages -------------------------------------------------------------------------------

_MESSAGE = re.compile(r'<li class="message([^"]*)">(.*?)</li>', re.S)
_HEADER_BALANCE = re.compile(r'class="who"[^>]*>[^<]*<span class="amount">(-?\d+\.\d{8})[ A-Z]*<')
_ACCEPTED = re.compile(r'name="accepted_price" value="(\d+)"')
_FILLER = re.compile(r'<input type="radio" name="filler" value="(\d+)"( disabled)?')
_LEDGER_ROW = re.compile(
    r'<td class="nowrap">([^<]+)</td>\s*<td>[^<]*</td>\s*<td><code>([^<]*)</code></td>\s*'
    r'<td class="num amount (?:debit|credit)">([^<]*)</td>',
)
_ADDRESS_H3 = re.compile(r"<h3><code>([a-z0-9]+)</code>")
_CURRENT_ADDRESS = re.compile(r'data-role="deposit-address">([a-z0-9]+)<')
_WITHDRAW_ROW = re.compile(r'<tr id="withdrawal-(\d+)" data-state="([a-z-]+)">')
_CANCEL_FORM = re.compile(r'action="/account/withdraw/(\d+)/cancel/"')
_SELL_ROW = re.compile(
    r'<a href="/ads/buy-ad-space/([A-Za-z0-9]+)/(\d+)">#\d+</a></td>\s*'
    r'<td class="nowrap">(\d+)x(\d+) px</td>'
)


def messages(text: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for _, m in _MESSAGE.findall(text)]


def header_balance(text: str) -> int | None:
    m = _HEADER_BALANCE.search(text)
    return parse_sats(m.group(1)) if m else None


# --- the world outside the site: the chain ------------------------------------------------------


class SoakNode(FakeBitcoind):
    """The test bitcoind, plus hooks on sendmany for killing the processor mid-payout.

    `sent_event` is set when a send reaches the node. With `send_hold`, the answer is held back
    for that long after the send was applied (a processor killed meanwhile died after the money
    left); with `abort_next_send`, the next send is held and then NOT applied (a processor killed
    meanwhile died before the money left, as if the request had never gone out). `drop_sends`
    sends are applied and then answered by closing the connection (the answer is lost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.send_hold = 0.0
        self.abort_next_send = False
        self.drop_sends = 0
        self.sent_event = threading.Event()
        # A processor killed mid-call resets its connection; that is the point, not news.
        self.server.handle_error = lambda request, client_address: None

    def handle(self, path: str, body: bytes) -> tuple[int, dict]:
        try:
            method = json.loads(body).get("method")
        except (ValueError, AttributeError):
            method = None
        if method == "sendmany":
            with self.lock:
                abort, self.abort_next_send = self.abort_next_send, False
                if self.drop_sends > 0:
                    self.drop_sends -= 1
                    self.drop_after.add(method)  # do_POST checks this after handle() returns
                else:
                    self.drop_after.discard(method)
            if abort:
                self.sent_event.set()
                self._stopping.wait(max(self.send_hold, 0.5))
                error = {"code": -1, "message": "soak: the sender died before this arrived"}
                return 500, {"result": None, "error": error, "id": None}
        status, payload = super().handle(path, body)
        if method == "sendmany" and status == 200:
            self.sent_event.set()
            if self.send_hold:
                self._stopping.wait(self.send_hold)
        return status, payload


@dataclass
class Payment:
    outpoint: str
    address: str
    user: str
    sats: int
    state: str = "pending"  # pending | replaced | double-spent
    mined: bool = False


class Chain:
    """Payments to users' addresses, as the soak makes them; the node says what confirmed."""

    def __init__(self, node: SoakNode, stats: Stats):
        self.node, self.stats = node, stats
        self.lock = threading.Lock()
        self.payments: dict[str, Payment] = {}

    def pay(self, user: str, address: str, sats: int) -> str:
        outpoint = self.node.pay(address, sats)
        with self.lock:
            self.payments[outpoint] = Payment(outpoint, address, user, sats)
        self.stats.chain_event("payments")
        return outpoint

    def _mempool(self) -> list[Payment]:
        with self.lock, self.node.lock:
            return [
                p
                for p in self.payments.values()
                if p.state == "pending"
                and not p.mined
                and self.node._in_mempool(self.node.txs[p.outpoint.split(":")[0]])
            ]

    def bump(self, rng: random.Random) -> bool:
        pending = self._mempool()
        if not pending:
            return False
        old = rng.choice(sorted(pending, key=lambda p: p.outpoint))
        new = self.node.bump_fee(old.outpoint)
        with self.lock:
            old.state = "replaced"
            self.payments[new] = Payment(new, old.address, old.user, old.sats)
        self.stats.chain_event("fee bumps", detail=f"{old.outpoint} -> {new}")
        return True

    def double_spend(self, rng: random.Random) -> bool:
        pending = self._mempool()
        if not pending:
            return False
        victim = rng.choice(sorted(pending, key=lambda p: p.outpoint))
        self.node.double_spend(victim.outpoint)
        with self.lock:
            victim.state = "double-spent"
        self.stats.chain_event("double spends", detail=victim.outpoint)
        return True

    def mine(self, n: int = 1) -> None:
        with self.lock, self.node.lock:  # always this order: soak's lock, then the node's
            self.node.mine(n)
            for p in self.payments.values():
                if self.node.txs[p.outpoint.split(":")[0]].block is not None:
                    p.mined = True
        self.stats.chain_event("blocks", n)

    def confirmed(self) -> dict[str, Payment]:
        """Every payment the chain has confirmed now, by outpoint."""
        with self.lock, self.node.lock:
            return {
                op: p
                for op, p in self.payments.items()
                if self.node.confirmations(self.node.txs[op.split(":")[0]]) >= 1
            }

    def confirmed_to(self, addresses: set[str]) -> dict[str, int]:
        """Outpoints the node has confirmed to any of `addresses` (by anyone), with sats."""
        out = {}
        with self.node.lock:
            for tx in self.node.txs.values():
                if self.node.confirmations(tx) < 1:
                    continue
                for vout, (address, sats) in enumerate(tx.outputs):
                    if address in addresses:
                        out[f"{tx.txid}:{vout}"] = sats
        return out

    def payouts(self) -> dict[str, list[tuple[str, str, int]]]:
        """Payout wallet sends by comment (the batch key): [(txid, address, sats)]."""
        out: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        with self.node.lock:
            for tx in self.node.txs.values():
                if tx.sender == PAYOUT_WALLET:
                    for address, sats in tx.outputs:
                        out[tx.comment].append((tx.txid, address, sats))
        return out


# --- what a user saw -------------------------------------------------------------------------------


@dataclass
class Unknown:
    """An operation whose answer was lost: it may or may not have happened."""

    kind: str  # buy | withdraw | cancel
    at: float
    why: str
    owner: str = ""
    n: int = -1
    accepted: int = 0
    amount: int = 0
    fee: int = 0
    i: int = -1
    resolved: str = ""  # "" (still unknown) | happened | not
    how: str = ""  # how the user learned it: "account page" or "ledger at the end"
    ref: str = ""
    retry_after: float = 0.0


class Site:
    """Everything the simulation shares: campaigns seen, addresses seen, processes."""

    def __init__(self, args, port: int, stats: Stats, chain: Chain):
        self.args, self.port, self.stats, self.chain = args, port, stats, chain
        self.lock = threading.Lock()
        self.campaigns: dict[tuple[str, int], tuple[int, int]] = {}  # (owner, n) -> (w, h)
        self.address_owner: dict[str, str] = {}
        self.address_conflicts: list[str] = []
        self.stop = threading.Event()

    def add_campaign(self, owner: str, n: int, w: int, h: int) -> None:
        with self.lock:
            self.campaigns[(owner, n)] = (w, h)

    def saw_address(self, user: str, address: str) -> None:
        with self.lock:
            other = self.address_owner.setdefault(address, user)
            if other != user:
                self.address_conflicts.append(f"address {address} shown to {other} and {user}")


class User:
    def __init__(self, site: Site, index: int, seed: int, payout_address: str):
        self.site, self.stats = site, site.stats
        self.name = f"user{index}"
        self.rng = random.Random(f"{seed}:user:{index}")
        self.password = f"Soak-{self.rng.getrandbits(64):016x}-pw"
        self.http = Client(site.port, site.stats, self.name)
        self.lock = threading.Lock()
        self.seller = index % 3 == 0
        self.payout_address = payout_address
        self.registered = False
        self.maybe_registered = False
        self.addresses: list[str] = []
        self.balance: int | None = None
        self.deposits = 0
        self.last_deposit = 0.0
        self.ads = 0
        self.campaigns_made = 0
        self.buys: dict[str, int] = {}  # slot ref -> price, told "You bought slot #k for X"
        self.withdrawals: dict[int, tuple[int, int]] = {}  # i -> (amount, fee), told "queued"
        self.cancels: dict[int, int] = {}  # i -> amount + fee, told "cancelled"
        self.cancel_tried: set[int] = set()
        self.unknowns: list[Unknown] = []
        self.flush_messages = False
        self.final_balance: int | None = None
        self.final_states: dict[int, str] = {}

    # -- plumbing --

    def op(self, kind: str, outcome: str, detail: str = "") -> None:
        self.stats.op(kind, outcome, self.name, detail)

    def page(self, path: str, attempts: int = 4) -> Response | None:
        """GET a page as a person reloads it: a lost answer is retried a few times."""
        for attempt in range(attempts):
            try:
                resp = self.http.get(path)
            except Lost:
                time.sleep(0.3 + attempt * 0.5)
                continue
            self.seen(resp)
            if resp.status == 302 and resp.path == "/accounts/login/":
                self.registered = False  # logged out somehow: log in again next time
            return resp
        return None

    def seen(self, resp: Response) -> None:
        balance = header_balance(resp.text)
        if balance is not None:
            self.balance = balance

    def follow(self, resp: Response) -> tuple[Response | None, list[str]]:
        """After a POST answered with a redirect, load the page it names (retrying: the messages
        wait in their cookie until a page shows them)."""
        if resp.status != 302:
            return resp, messages(resp.text)
        page = self.page(resp.path or "/account/")
        if page is None:
            self.flush_messages = True
            return None, []
        return page, messages(page.text)

    def unknown(self, op: Unknown) -> None:
        if op.retry_after != math.inf:
            op.retry_after = time.monotonic() + LOCK_LEASE_SECONDS + 1.5
        self.unknowns.append(op)
        self.stats.unknown_outcome(op.kind)
        self.stats.note(f"{self.name} UNKNOWN {op}")

    # -- the loop --

    def run(self) -> None:
        time.sleep(self.rng.uniform(0, 3))
        while not self.site.stop.is_set():
            with self.lock:
                try:
                    self.step()
                except Lost:
                    pass  # a read that was lost; nothing to account for
                except Exception:
                    self.stats.crashed(self.name)
            self.site.stop.wait(self.rng.uniform(0.2, 1.5))

    def step(self) -> None:
        if not self.registered:
            self.log_in_or_register()
            return
        if self.flush_messages:
            self.flush_messages = False
            self.page("/account/")
        due = [u for u in self.unknowns if not u.resolved and u.retry_after <= time.monotonic()]
        if due:
            self.re_read_account(due)
            return
        if not self.addresses:
            self.get_address()
            return
        r = self.rng.random()
        balance = self.balance or 0
        # Money on its way counts as money: pay again only once the last payment had time to
        # confirm and show (blocks come every 1-3 s, the watcher passes every 0.5 s).
        short = balance < 2_000_000 and time.monotonic() - self.last_deposit > 8
        can_withdraw = balance >= MIN_WITHDRAWAL_SATS + fee_up(MIN_WITHDRAWAL_SATS, 15)
        if self.seller and self.campaigns_made < 3 and r < 0.1 * (3 - self.campaigns_made):
            self.create_campaign()
        elif short and r < 0.6:
            self.deposit()
        elif r < 0.55:
            self.buy()
        elif r < 0.63 and can_withdraw:
            self.withdraw()
        elif r < 0.68:
            self.cancel()
        elif r < 0.71:
            self.deposit()
        elif r < 0.74:
            self.new_address()
        elif r < 0.77:
            self.check_now()
        else:
            self.browse()

    # -- account --

    def log_in_or_register(self) -> None:
        if self.maybe_registered and self.log_in():
            return
        self.page("/accounts/register/")
        fields = {"username": self.name, "password1": self.password, "password2": self.password}
        try:
            resp = self.http.post("/accounts/register/", fields)
        except Lost:
            self.maybe_registered = True
            self.op("register", "unknown")
            return
        if resp.status == 302:
            self.registered = True
            self.op("register", "ok")
        elif "already taken" in resp.text:
            self.maybe_registered = True  # an earlier attempt did land
            self.op("register", "taken (earlier attempt landed)")
        else:
            self.op("register", f"refused {resp.status}")

    def log_in(self) -> bool:
        self.page("/accounts/login/")
        try:
            resp = self.http.post(
                "/accounts/login/", {"username": self.name, "password": self.password}
            )
        except Lost:
            self.op("login", "unknown")
            return False
        if resp.status == 302:
            self.registered = True
            self.op("login", "ok")
            return True
        self.op("login", f"refused {resp.status}")
        self.maybe_registered = resp.status == 429
        return False

    def learn_addresses(self, text: str) -> None:
        current = _CURRENT_ADDRESS.search(text)
        known = set(self.addresses)
        for address in _ADDRESS_H3.findall(text) + ([current.group(1)] if current else []):
            if address not in known:
                self.addresses.append(address)
                known.add(address)
            self.site.saw_address(self.name, address)
        if current and self.addresses[-1] != current.group(1):
            self.addresses.remove(current.group(1))
            self.addresses.append(current.group(1))

    def get_address(self) -> None:
        try:
            resp = self.http.post("/account/funds/address/", money=True)
        except Lost:
            self.op("address", "unknown")
            page = self.page("/account/funds/")
            if page is not None:
                self.learn_addresses(page.text)
            return
        page, msgs = self.follow(resp)
        if page is not None:
            self.learn_addresses(page.text)
        ok = any(m.startswith("Your deposit address is") for m in msgs)
        self.op("address", "ok" if ok else "refused" if msgs else "unknown")

    def new_address(self) -> None:
        current = self.addresses[-1]
        try:
            resp = self.http.post("/account/funds/address/new/", {"replacing": current}, money=True)
        except Lost:
            self.op("new address", "unknown")
            return
        page, msgs = self.follow(resp)
        if page is not None:
            self.learn_addresses(page.text)
        ok = any(m.startswith("Your deposit address is") for m in msgs)
        self.op("new address", "ok" if ok else "refused" if msgs else "unknown")

    def check_now(self) -> None:
        try:
            resp = self.http.post("/account/funds/check/", money=True)
        except Lost:
            self.op("check now", "unknown")
            return
        page, _ = self.follow(resp)
        if page is not None:
            self.learn_addresses(page.text)
        self.op("check now", f"{resp.status}")

    def deposit(self) -> None:
        """Someone pays one of my addresses (mostly the current one, sometimes an old one)."""
        if not self.addresses:
            return
        old = len(self.addresses) > 1 and self.rng.random() < 0.2
        address = self.rng.choice(self.addresses[:-1]) if old else self.addresses[-1]
        sats = self.rng.randint(MIN_DEPOSIT_SATS, 40_000_000)
        outpoint = self.site.chain.pay(self.name, address, sats)
        self.deposits += 1
        self.last_deposit = time.monotonic()
        where = "old address" if old else "current address"
        self.op("pay my address", where, f"{outpoint} {sats} to {address}")

    # -- selling --

    def create_campaign(self) -> None:
        w, h = self.rng.choice(AD_SIZES)
        minimum = self.rng.choice([MIN_CAMPAIGN_SATS, 400_000, 500_000, 1_000_000])
        fields = {
            "min_price": btc(minimum),
            "slot_hours": str(self.rng.randint(1, 3)),
            "width": str(w),
            "height": str(h),
        }
        try:
            resp = self.http.post("/ads/sell-ad-space/", fields)
        except Lost:
            self.op("create campaign", "unknown")
            resp = None
        if resp is not None:
            page, msgs = self.follow(resp)
            ok = any(m.startswith("Campaign #") for m in msgs)
            self.op("create campaign", "ok" if ok else f"refused {resp.status}")
        page = self.page("/ads/sell-ad-space/")
        if page is None:
            return
        made = 0
        for owner, n, width, height in _SELL_ROW.findall(page.text):
            self.site.add_campaign(owner, int(n), int(width), int(height))
            made += 1
        self.campaigns_made = made if made else self.campaigns_made + (resp is None)

    # -- ads --

    def upload_ad(self, w: int, h: int) -> None:
        self.ads += 1
        nickname = f"{self.name}-ad{self.ads}-{w}x{h}"
        color = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
        fields = {
            "nickname": nickname,
            "hover_text": f"Soak ad {self.ads} of {self.name}",
            "url": f"https://example.com/{self.name}/{self.ads}",
            "width": str(w),
            "height": str(h),
        }
        files = {"image": (f"{nickname}.png", "image/png", png(w, h, color))}
        try:
            resp = self.http.post("/account/ads/new/", fields, files)
        except Lost:
            self.op("upload ad", "unknown")
            return
        self.follow(resp)
        self.op("upload ad", "ok" if resp.status == 302 else f"refused {resp.status}")

    # -- buying --

    def pick_campaign(self) -> tuple[str, int, int, int] | None:
        with self.site.lock:
            choices = sorted(
                (o, n, w, h) for (o, n), (w, h) in self.site.campaigns.items() if o != self.name
            )
        return self.rng.choice(choices) if choices else None

    def prepare_buy(self, owner: str, n: int) -> tuple[int, str] | str | None:
        """Read the campaign page: (price shown, a fitting ad), or "no ad", or None."""
        page = self.page(f"/ads/buy-ad-space/{owner}/{n}")
        if page is None or page.status != 200:
            return None
        price = _ACCEPTED.search(page.text)
        fits = [v for v, disabled in _FILLER.findall(page.text) if not disabled]
        if not price or not fits:
            return "no ad"
        return int(price.group(1)), self.rng.choice(fits)

    def buy(self) -> None:
        picked = self.pick_campaign()
        if picked is None:
            self.browse()
            return
        owner, n, w, h = picked
        prepared = self.prepare_buy(owner, n)
        if prepared == "no ad":
            self.upload_ad(w, h)
            return
        if prepared is None:
            return
        price, filler = prepared
        if price > (self.balance or 0) and self.rng.random() < 0.85:
            if time.monotonic() - self.last_deposit > 8 and self.rng.random() < 0.5:
                self.deposit()
            return
        self.post_buy(owner, n, price, filler)

    def post_buy(self, owner: str, n: int, accepted: int, filler: str) -> None:
        path = f"/ads/buy-ad-space/{owner}/{n}/buy"
        op = Unknown("buy", time.monotonic(), "", owner=owner, n=n, accepted=accepted)
        try:
            resp = self.http.post(
                path, {"filler": filler, "accepted_price": str(accepted)}, money=True
            )
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf  # may still be running: only the end can tell
            self.unknown(op)
            self.op("buy", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("buy", "unknown (503)")
            return
        if resp.status != 302:
            self.op("buy", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            won = re.search(r"You bought slot #(\d+) for (\d+\.\d{8}) BTC", m)
            if won:
                price = parse_sats(won.group(2))
                self.buys[f"slot::{owner}::{n}::{won.group(1)}"] = price
                detail = f"slot::{owner}::{n}::{won.group(1)} for {price} (accepted {accepted})"
                if price > accepted:
                    self.stats.problem(f"{self.name} charged {price} > accepted {accepted}")
                self.op("buy", "won", detail)
                return
        text = " ".join(msgs)
        for needle, outcome in (
            ("Someone else just bought", "lost the race"),
            ("The price is now", "price went up"),
            ("Your balance is", "insufficient funds"),
            ("Another operation on your account", "account busy"),
        ):
            if needle in text:
                self.op("buy", outcome, f"{owner}/{n} at {accepted}")
                return
        op.why = "no message shown"
        self.unknown(op)
        self.op("buy", "unknown (no message)")

    # -- withdrawing --

    def withdraw(self) -> None:
        page = self.page("/account/withdraw/")
        if page is None or page.status != 200:
            return
        top = re.search(r'data-max-amount="(\d+)"', page.text)
        if not top or int(top.group(1)) < MIN_WITHDRAWAL_SATS:
            return
        top_amount = int(top.group(1))
        if self.rng.random() < 0.2:
            amount = top_amount  # "withdraw everything"
        else:
            amount = self.rng.randint(MIN_WITHDRAWAL_SATS, max(MIN_WITHDRAWAL_SATS, top_amount))
        fee = fee_up(amount, WITHDRAW_FEE_PERMILLE)
        fields = {"amount": btc(amount), "address": self.payout_address, "action": "withdraw"}
        op = Unknown("withdraw", time.monotonic(), "", amount=amount, fee=fee)
        try:
            resp = self.http.post("/account/withdraw/", fields, money=True)
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf
            self.unknown(op)
            self.op("withdraw", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("withdraw", "unknown (503)")
            return
        if resp.status != 302:
            self.seen(resp)
            self.op("withdraw", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            queued = re.search(
                r"Withdrawal #(\d+) of (\d+\.\d{8}) BTC queued \(fee (\d+\.\d{8})", m
            )
            if queued:
                got = (parse_sats(queued.group(2)), parse_sats(queued.group(3)))
                if got != (amount, fee):
                    self.stats.problem(f"{self.name} withdrawal {got} != asked {amount}")
                self.withdrawals[int(queued.group(1))] = got
                self.op("withdraw", "queued", f"#{queued.group(1)} {got}")
                return
        op.why = "no message shown"
        self.unknown(op)
        self.op("withdraw", "unknown (no message)")

    def cancel(self) -> None:
        page = self.page("/account/withdraw/")
        if page is None or page.status != 200:
            return
        cancellable = [int(i) for i in _CANCEL_FORM.findall(page.text)]
        if not cancellable:
            return
        i = self.rng.choice(cancellable)
        self.cancel_tried.add(i)
        op = Unknown("cancel", time.monotonic(), "", i=i)
        try:
            resp = self.http.post(f"/account/withdraw/{i}/cancel/", money=True)
        except Lost as exc:
            op.why = "timed out" if exc.timed_out else "connection lost"
            if exc.timed_out:
                op.retry_after = math.inf
            self.unknown(op)
            self.op("cancel", "unknown (answer lost)")
            return
        if resp.status == 503:
            op.why = "503 outcome unknown"
            self.unknown(op)
            self.op("cancel", "unknown (503)")
            return
        if resp.status != 302:
            self.op("cancel", f"refused {resp.status}")
            return
        _, msgs = self.follow(resp)
        for m in msgs:
            done = re.search(r"Withdrawal #(\d+) cancelled; (\d+\.\d{8}) BTC went back", m)
            if done:
                self.cancels[int(done.group(1))] = parse_sats(done.group(2))
                self.op("cancel", "cancelled", f"#{i}")
                return
        if msgs:
            self.op("cancel", "refused (too late or busy)")
            return
        op.why = "no message shown"
        self.unknown(op)
        self.op("cancel", "unknown (no message)")

    # -- looking around --

    def browse(self) -> None:
        r = self.rng.random()
        if r < 0.3:
            path = "/account/"
        elif r < 0.5:
            path = "/ads/buy-ad-space/"
        elif r < 0.6:
            path = "/"
        elif r < 0.7:
            path = "/account/ads/"
        elif r < 0.75:
            path = "/healthz"
        else:
            picked = self.pick_campaign()
            path = f"/ads/buy-ad-space/{picked[0]}/{picked[1]}" if picked else "/account/funds/"
        resp = self.page(path, attempts=1)
        self.op("view page", "ok" if resp is not None else "lost")

    # -- learning what happened to an unknown outcome, as a person would --

    def re_read_account(self, due: list[Unknown]) -> None:
        page = self.page("/account/")
        if page is None or page.status != 200:
            return
        if "An operation is in progress on your account" in page.text:
            for op in due:
                op.retry_after = time.monotonic() + 2
            return
        rows = [(at, ref, parse_sats(delta)) for at, ref, delta in _LEDGER_ROW.findall(page.text)]
        claimed = set(self.buys) | {f"withdraw::{self.name}::{i}" for i in self.withdrawals}
        claimed |= {f"refund:withdraw::{self.name}::{i}" for i in self.cancels}
        claimed |= {u.ref for u in self.unknowns if u.resolved == "happened"}
        # The page holds the newest 50 entries; an entry older than all of them is not on it.
        covers = len(rows) < LEDGER_ROWS_PER_PAGE
        for op in due:
            match = None
            for _, ref, delta in rows:
                if ref in claimed:
                    continue
                if op.kind == "buy" and ref.startswith(f"slot::{op.owner}::{op.n}::"):
                    if -delta <= op.accepted:
                        match = ref
                elif op.kind == "withdraw" and ref.startswith(f"withdraw::{self.name}::"):
                    if -delta == op.amount + op.fee:
                        match = ref
                elif op.kind == "cancel" and ref == f"refund:withdraw::{self.name}::{op.i}":
                    match = ref
                if match:
                    break
            if match:
                op.resolved, op.ref, op.how = "happened", match, "account page"
                claimed.add(match)
                self.op("re-read account", f"{op.kind} had happened", match)
            elif covers:
                op.resolved, op.how = "not", "account page"
                self.op("re-read account", f"{op.kind} had not happened")
            else:
                op.retry_after = math.inf  # too many newer entries: the end reconciles it
                self.op("re-read account", f"{op.kind} left to the end")

    def final_read(self) -> None:
        page = self.page("/account/", attempts=6)
        if page is not None and page.status == 200:
            m = re.search(
                r'<p class="balance"><span class="amount">(-?\d+\.\d{8})</span>', page.text
            )
            self.final_balance = parse_sats(m.group(1)) if m else None
        page = self.page("/account/withdraw/", attempts=6)
        if page is not None and page.status == 200:
            self.final_states = {int(i): s for i, s in _WITHDRAW_ROW.findall(page.text)}


# --- processes -------------------------------------------------------------------------------------

DUMP = r"""
import json
from django.conf import settings
from accounts.gateway import full_ledger, iter_accounts
from adspace import gateway as ag
from bitcoinkeys import deposits as dep
from bitcoinkeys import gateway as bg
from docstore import NotFound, get_store

s = get_store()
full = FULL
out = {"accounts": {}, "deposits": {}, "campaigns": {}, "withdrawals": {}, "lease": None}
for u, doc in iter_accounts(s):
    a = doc.value
    row = {"balance": a["balance"], "lock": a.get("lock"), "btc": (a.get("btc") or {}).get("state")}
    if full:
        row["ledger"] = full_ledger(s, u, a)
    out["accounts"][u] = row
addresses = list(dep._iter_deposit_addresses(s))
found = s.get_multi([bg.deposit_key(x) for x in addresses])
for x in addresses:
    d = found.get(bg.deposit_key(x))
    if d is not None:
        credited = d.value.get("credited") or {}
        out["deposits"][x] = {
            "username": d.value["username"],
            "credited": {op: e["sats"] for op, e in credited.items()},
        }
for o, n in ag.iter_campaign_refs(s):
    try:
        c = ag.get_campaign(s, o, n).value
    except NotFound:
        continue
    last = c.get("last")
    k = last["slot"] if last else -1
    keys = [ag.tx_key(o, n, i) for i in range(k + 1)]
    txs = s.get_multi(keys)
    lag = bool(s.get_multi([ag.slot_key(o, n, k + 1)]))
    uncredited = [x for x in keys if x not in txs or txs[x].value["state"] != "credited"]
    out["campaigns"][f"{o}/{n}"] = {"last": k, "lag": lag, "uncredited": uncredited}
try:
    from bitcoinkeys import withdrawals as w
    from bitcoinkeys.payout_lease import LEASE_KEY
except ImportError:
    w = None
if w is not None:
    for u in out["accounts"]:
        out["withdrawals"][u] = [
            {
                **{k: r.get(k) for k in ("i", "state", "amount", "fee", "address", "txid")},
                # Every batch the request was ever put in (payouts.py): the wallet comments
                # it may have been paid under.
                "batches": [h["batch"] for h in r["history"] if h.get("batch")],
            }
            for r in w.user_withdrawals(s, u, limit=10**6)
        ]
    try:
        out["lease"] = s.get(LEASE_KEY).value
    except NotFound:
        pass
sets = s.get_multi([bg.keyset_key(i) for i in range(settings.KEYPOOL_SETS)])
out["filling"] = sorted(k for k, d in sets.items() if "filling" in d.value)
out["alerts"] = sum(len(a.get("outpoints", {})) for a in dep.iter_alerts(s))
print("SOAKJSON " + json.dumps(out))
"""


class Processes:
    def __init__(self, work: Path, env: dict, port: int, stats: Stats):
        self.work, self.env, self.port, self.stats = work, env, port, stats
        self.gunicorn: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_lock = threading.Lock()
        self.processor: subprocess.Popen | None = None
        self.processor_lock = threading.Lock()
        self.logs: list = []

    def _log(self, name: str):
        f = open(self.work / name, "ab")  # noqa: SIM115 - closed in stop()
        self.logs.append(f)
        return f

    def manage(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def dump(self, full: bool = False) -> dict:
        out = self.manage("shell", "-v", "0", "-c", DUMP.replace("FULL", str(full)), timeout=120)
        for line in out.splitlines():
            if line.startswith("SOAKJSON "):
                return json.loads(line[len("SOAKJSON ") :])
        raise RuntimeError(f"the docstore dump printed no result:\n{out}")

    def start_gunicorn(self) -> None:
        # The arguments bin/serve uses (its defaults: 2 workers, 8 threads), on our loopback port.
        self.gunicorn = subprocess.Popen(
            [GUNICORN, "config.wsgi:application", "-c", "config/gunicorn.py",
             "--bind", f"127.0.0.1:{self.port}",
             "--workers", "2", "--threads", "8", "--access-logfile", "-",
             "--graceful-timeout", "10", "--reuse-port"],
            cwd=ROOT, env=self.env, stdout=self._log("access.log"), stderr=self._log("gunicorn.log"),
            start_new_session=True,
        )  # fmt: skip

    def start_worker(self) -> None:
        with self.worker_lock:
            if self.worker is not None and self.worker.poll() is None:
                return
            self.worker = subprocess.Popen(
                [PY, "manage.py", "run_workers"], cwd=ROOT, env=self.env,
                stdout=self._log("worker.log"), stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def web_workers(self) -> list[int]:
        return children(self.gunicorn.pid) if self.gunicorn else []

    def kill_web_worker(self, rng: random.Random, aim: float = 0.0) -> str:
        """SIGKILL a gunicorn worker; with `aim`, wait up to that long for one that is busy
        while a POST is in flight, so the kill lands inside a request."""
        pids = self.web_workers()
        if not pids:
            return ""
        victim, how = rng.choice(pids), "unaimed"
        deadline = time.monotonic() + aim
        while time.monotonic() < deadline:
            if self.stats.inflight:
                # Best: a worker inside a write (fsync) while a money POST is being served.
                writing = [p for p in pids if proc_state(p) == "D"]
                if writing:
                    victim, how = rng.choice(writing), "mid-write"
                    break
                working = [p for p in pids if proc_state(p) == "R"]
                if working:
                    victim, how = rng.choice(working), "busy"
            time.sleep(0.001)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return ""
        self.stats.note(f"FAULT SIGKILL gunicorn worker pid {victim} ({how})")
        return how

    def kill_worker(self, aim: float = 0.0) -> bool:
        """SIGKILL run_workers; with `aim`, wait up to that long for it to be mid-pass."""
        with self.worker_lock:
            if self.worker is None or self.worker.poll() is not None:
                return False
            deadline = time.monotonic() + aim
            while time.monotonic() < deadline and proc_state(self.worker.pid) != "D":
                time.sleep(0.001)
            self.worker.kill()
            self.worker.wait(timeout=10)
            return True

    def run_processor(
        self, lease: int, kill_on_send: SoakNode | None = None, timeout: float = 90
    ) -> str:
        """One `process_withdrawals --execute --yes`; with `kill_on_send`, SIGKILL it as soon as
        the node has applied a send (while the node holds the answer back)."""
        # The lease is a setting: short here, so a processor the soak killed mid-payout blocks
        # the next one for seconds rather than minutes.
        cmd = [PY, "manage.py", "process_withdrawals", "--execute", "--yes"]
        env = {**self.env, "WITHDRAW_PROCESSOR_LEASE_SECONDS": str(lease)} if lease else self.env
        log = self._log("processor.log")
        log.write(f"--- {time.strftime('%H:%M:%S')} processor run\n".encode())
        log.flush()
        with self.processor_lock:
            self.processor = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            proc = self.processor
        deadline = time.monotonic() + timeout
        killed = False
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_on_send is not None and kill_on_send.sent_event.wait(0.05):
                proc.kill()
                killed = True
                break
            if kill_on_send is None:
                time.sleep(0.05)
        if proc.poll() is None and not killed:
            proc.kill()
            proc.wait(timeout=10)
            return "timed out (killed)"
        proc.wait(timeout=10)
        if killed:
            return "killed mid-payout"
        return {0: "ok", 1: "stopped or busy"}.get(proc.returncode, f"exit {proc.returncode}")

    def stop(self) -> None:
        with self.processor_lock:
            if self.processor is not None and self.processor.poll() is None:
                self.processor.kill()
        with self.worker_lock:
            if self.worker is not None and self.worker.poll() is None:
                self.worker.terminate()
                try:
                    self.worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.worker.kill()
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            self.gunicorn.terminate()
            try:
                self.gunicorn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.gunicorn.pid, signal.SIGKILL)
                self.gunicorn.wait(timeout=10)
        for f in self.logs:
            f.close()


# --- the run -------------------------------------------------------------------------------------


def make_env(work: Path, port: int, rpc_url: str) -> tuple[dict, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DEBUG": "false",
            # Measure the site alone: no local regtest node (bin/serve, config/environment.py).
            "LOCAL_CHAIN": "off",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DOCSTORE_PATH": str(work / "docstore.sqlite3"),
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "CACHE_URL": f"filecache://{work / 'cache'}",
            "CHAIN_BACKEND": "bitcoind",
            "BITCOIND_URL": rpc_url,
            "BITCOIND_TIMEOUT": "10",
            "BITCOIN_NETWORK": "regtest",
            "LOCK_LEASE_SECONDS": str(LOCK_LEASE_SECONDS),
            # The soak's end check wants every sale credited; review windows would hold them 24 h.
            "REVIEW_HOURS": "0",
            "WORKER_INTERVAL_SECONDS": "0.5",
            # Time here runs ~6x faster than in production (lease 5 s, not 30): recovery keeps its
            # own cadence, scaled the same way (production: every 10 s, a third of the lease).
            "RECOVERY_INTERVAL_SECONDS": "2",
            "SALE_FEE_PERMILLE": str(SALE_FEE_PERMILLE),
            "WITHDRAW_FEE_PERMILLE": str(WITHDRAW_FEE_PERMILLE),
            "MIN_CAMPAIGN_PRICE_SATS": str(MIN_CAMPAIGN_SATS),
            "MIN_DEPOSIT_SATS": str(MIN_DEPOSIT_SATS),
            "MIN_WITHDRAWAL_SATS": str(MIN_WITHDRAWAL_SATS),
            "DEPOSIT_CONFIRMATIONS": "1",
            # Every simulated user comes from 127.0.0.1: one client, as the rate limits see it.
            "LOGIN_RATE_LIMIT": "100000",
            "REGISTER_RATE_LIMIT": "100000",
            "ADDRESS_RATE_LIMIT": "100000",
            "WITHDRAW_RATE_LIMIT": "100000",
            "LOG_LEVEL": "INFO",
            # The worker's pass lines must reach its log before a SIGKILL, not sit in a buffer.
            "PYTHONUNBUFFERED": "1",
            **KEYPOOL,
        }
    )
    backend = "embedded"
    if os.environ.get("COUCHBASE_CONNSTR"):
        backend = "couchbase"
        for k, v in os.environ.items():
            if k.startswith("COUCHBASE_"):
                env[k] = v
        env["DOCSTORE_BACKEND"] = "couchbase"
        env["DOCSTORE_PREFIX"] = f"soak-{uuid.uuid4().hex[:12]}::"
    return env, backend


def wait_healthy(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz", headers={"Host": f"127.0.0.1:{port}"})
            if conn.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.3)
    return False


def guarded(stats: Stats, name: str, fn, *args) -> None:
    """Run a background loop; an exception in the soak itself is reported, not swallowed."""
    try:
        fn(*args)
    except Exception:
        stats.crashed(name)


def chain_loop(site: Site, rng: random.Random) -> None:
    chain, stats = site.chain, site.stats
    while not site.stop.wait(rng.uniform(1.0, 3.0)):
        r = rng.random()
        if r < 0.15:
            chain.bump(rng)
        elif r < 0.22:
            chain.double_spend(rng)
        if rng.random() < 0.03 and chain.node.tip > 2:
            chain.node.reorg(1)  # its payments are unconfirmed until the next block
            stats.chain_event("reorgs")
            site.stop.wait(rng.uniform(0.3, 1.5))
        if rng.random() < 0.05:
            # The node hiccups: the next few calls of one read RPC fail (Core's "warming up"),
            # whoever makes them (the watcher, "check now", the add-funds page).
            method = rng.choice(["listsinceblock", "listreceivedbyaddress", "gettransaction"])
            chain.node.fail(method, -28, "Loading block index...", times=rng.randint(1, 3))
            stats.chain_event("node hiccups", detail=method)
        chain.mine(1)


def fault_loop(site: Site, procs: Processes, rng: random.Random) -> None:
    stats = site.stats
    while not site.stop.wait(rng.uniform(1.5, 5.0)):
        if rng.random() < 0.65:
            # Mostly aimed at a worker serving a POST, so kills land inside money protocols
            # rather than between requests; sometimes wherever it is.
            how = procs.kill_web_worker(rng, aim=3.0 if rng.random() < 0.8 else 0.0)
            if how:
                stats.fault(f"gunicorn worker SIGKILL ({how})")
        else:
            if procs.kill_worker(aim=2.0 if rng.random() < 0.8 else 0.0):
                stats.fault("run_workers SIGKILL")
                site.stop.wait(rng.uniform(0.5, 3.0))
                procs.start_worker()
                stats.fault("run_workers restarted")


def processor_loop(site: Site, procs: Processes, rng: random.Random, lease: int) -> None:
    node, stats = site.chain.node, site.stats
    while not site.stop.wait(rng.uniform(3.0, 6.0)):
        r = rng.random()
        kill = ""
        if r < 0.1:
            node.fail("sendmany", -6, "Insufficient funds")
            stats.chain_event("wallet refusals armed")
        elif r < 0.2:
            with node.lock:
                node.drop_sends = 1
            stats.chain_event("payout answers to lose armed")
        elif lease > 0 and r < 0.4:
            kill = "after the money left"
        elif lease > 0 and r < 0.5:
            kill = "before the money left"
        node.sent_event.clear()
        node.send_hold = 0.5 if kill else 0.0
        node.abort_next_send = kill == "before the money left"
        try:
            outcome = procs.run_processor(lease, kill_on_send=node if kill else None)
        finally:
            node.send_hold = 0.0
            node.abort_next_send = False
        if outcome == "killed mid-payout":
            outcome = f"killed mid-payout ({kill})"
            stats.fault(f"processor SIGKILL mid-payout ({kill})")
        stats.op("process_withdrawals", outcome)


def _race_buy(barrier, u: User, owner: str, n: int, price: int, filler: str) -> None:
    try:
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        pass
    try:
        u.post_buy(owner, n, price, filler)
    except Lost:
        pass
    except Exception:
        u.stats.crashed(f"race {u.name}")


def race_loop(site: Site, users: list[User], rng: random.Random) -> None:
    """Now and then several users load the same campaign and press "buy" at the same moment."""
    stats = site.stats
    while not site.stop.wait(rng.uniform(3.0, 8.0)):
        with site.lock:
            campaigns = sorted(site.campaigns.items())
        if not campaigns:
            continue
        (owner, n), _ = rng.choice(campaigns)
        racers = [u for u in users if u.name != owner and u.registered]
        racers = rng.sample(racers, min(len(racers), rng.randint(3, 8)))
        held: list[tuple[User, int, str]] = []
        try:
            for u in racers:
                if not u.lock.acquire(timeout=3):
                    continue
                prepared = None
                try:
                    prepared = u.prepare_buy(owner, n)
                except Lost:
                    pass
                if isinstance(prepared, tuple):
                    held.append((u, *prepared))
                else:
                    u.lock.release()
            if len(held) < 2:
                continue
            barrier = threading.Barrier(len(held))
            threads = [
                threading.Thread(target=_race_buy, args=(barrier, u, owner, n, price, filler))
                for u, price, filler in held
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=HTTP_TIMEOUT * 3)
            stats.op("race", f"{len(held)} buyers")
        finally:
            for u, *_ in held:
                u.lock.release()


# --- heal, audit, reconcile ------------------------------------------------------------------------


def drained(dump: dict, chain: Chain) -> list[str]:
    """What is still left to do; empty once everything has settled."""
    left = []
    for u, a in sorted(dump["accounts"].items()):
        if a["lock"]:
            left.append(f"account::{u} locked ({a['lock']['kind']} {a['lock']['ref']})")
        if a["btc"] == "getting":
            left.append(f"account::{u} still getting an address")
    for key in dump.get("filling", []):
        left.append(f"{key} still filling")
    for ref, c in sorted(dump["campaigns"].items()):
        if c["lag"]:
            left.append(f"campaign {ref} lags behind a sold slot")
        for tx in c["uncredited"]:
            left.append(f"{tx} not credited to the seller")
    credited = {op for d in dump["deposits"].values() for op in d["credited"]}
    for op, sats in sorted(chain.confirmed_to(set(dump["deposits"])).items()):
        if op not in credited:
            left.append(f"confirmed payment {op} ({sats} sats) not credited")
    for u, reqs in sorted(dump["withdrawals"].items()):
        for r in reqs:
            if r["state"] in ("queued", "sending", "failed"):
                left.append(f"withdraw::{u}::{r['i']} is {r['state']}")
    return left


@dataclass
class Reconciliation:
    disagreements: list[str] = field(default_factory=list)
    resolved: Counter = field(default_factory=Counter)
    checked: Counter = field(default_factory=Counter)


def reconcile(users: list[User], dump: dict, chain: Chain) -> Reconciliation:
    """Every server ledger entry must be explained by what the user saw, and everything the user
    is certain of must be on the server, to the sat."""
    rec = Reconciliation()
    bad = rec.disagreements
    by_name = {u.name: u for u in users}
    confirmed = chain.confirmed()
    # Sales the buyers know of (told, or learned from their own ledgers): slot ref -> price.
    sales: dict[str, int] = {}
    credit_entries: list[tuple[str, dict]] = []
    for name, account in sorted(dump["accounts"].items()):
        u = by_name.get(name)
        if u is None:
            bad.append(f"server has an account {name} nobody registered")
            continue
        ledger = account.get("ledger", [])
        expected_deposits = {
            op: p.sats for op, p in confirmed.items() if p.user == name and p.address in u.addresses
        }
        seen_outpoints: set[str] = set()
        seen_refs: set[str] = set()
        for e in ledger:
            kind, ref, delta = e["kind"], e["ref"], e["delta"]
            seen_refs.add(ref)
            if kind == "deposit":
                outpoints = e.get("outpoints") or []
                for op in outpoints:
                    if op not in expected_deposits:
                        bad.append(f"{name}: deposit {op} credited, but the chain never "
                                   f"confirmed such a payment to {name}'s addresses")  # fmt: skip
                    elif op in seen_outpoints:
                        bad.append(f"{name}: deposit {op} credited twice")
                    seen_outpoints.add(op)
                want = sum(expected_deposits.get(op, 0) for op in outpoints)
                if delta != want:
                    bad.append(f"{name}: {ref} credited {delta} sats, the payments were {want}")
                rec.checked["deposit entries"] += 1
            elif kind == "buy":
                owner, n = ref.split("::")[1], int(ref.split("::")[2])
                if ref in u.buys:
                    if -delta != u.buys[ref]:
                        bad.append(f"{name}: {ref} charged {-delta}, the page said {u.buys[ref]}")
                    rec.checked["buys (told)"] += 1
                else:
                    op = _claim(u, "buy", _buy_fits(owner, n, -delta), ref)
                    if op is None:
                        bad.append(f"{name}: {ref} ({delta} sats) is a purchase {name} never made")
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
                sales[ref] = -delta
            elif kind == "withdraw-hold":
                i = int(ref.rsplit("::", 1)[1])
                if i in u.withdrawals:
                    amount, fee = u.withdrawals[i]
                    if -delta != amount + fee:
                        bad.append(f"{name}: {ref} held {-delta}, told {amount} + {fee}")
                    rec.checked["withdrawals (told)"] += 1
                else:
                    op = _claim(u, "withdraw", _withdraw_fits(-delta), ref)
                    if op is None:
                        bad.append(f"{name}: {ref} ({delta} sats) is a withdrawal never asked for")
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
            elif kind == "withdraw-refund":
                i = int(ref.rsplit("::", 1)[1])
                hold = next((x for x in ledger if x["ref"] == f"withdraw::{name}::{i}"), None)
                held = -hold["delta"] if hold else None
                state = u.final_states.get(i)
                if delta != held:
                    bad.append(f"{name}: {ref} refunded {delta}, the hold was {held}")
                if i in u.cancels:
                    rec.checked["cancels (told)"] += 1
                elif state == "failed-refunded":
                    rec.checked["failed payouts refunded"] += 1
                elif state == "refunded" and i in u.cancel_tried:
                    op = _claim(u, "cancel", lambda o, i=i: o.i == i, ref)
                    if op is None:
                        bad.append(f"{name}: {ref} refunded though {name} was told it could "
                                   f"not be cancelled")  # fmt: skip
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
                else:
                    bad.append(f"{name}: {ref} (+{delta}) refunds a withdrawal {name} did not "
                               f"cancel and the page shows as {state!r}")  # fmt: skip
            elif kind == "credit":
                credit_entries.append((name, e))
            else:
                bad.append(f"{name}: unexpected ledger entry {kind} {ref} {delta}")
        for op, sats in sorted(expected_deposits.items()):
            if op not in seen_outpoints:
                bad.append(f"{name}: confirmed payment {op} of {sats} sats was never credited")
        for ref in u.buys:
            if ref not in seen_refs:
                bad.append(f"{name}: told 'You bought' {ref}, but it is not in the ledger")
        for op in u.unknowns:
            if op.resolved == "happened" and op.ref not in seen_refs:
                bad.append(f"{name}: saw {op.ref} on the account page; it is not in the ledger")
        for i in u.withdrawals:
            if f"withdraw::{name}::{i}" not in seen_refs:
                bad.append(f"{name}: told withdrawal #{i} was queued; it is not in the ledger")
        for i, total in u.cancels.items():
            ref = f"refund:withdraw::{name}::{i}"
            if ref not in seen_refs:
                bad.append(f"{name}: told withdrawal #{i} was cancelled; no refund in the ledger")
            elif next(x["delta"] for x in ledger if x["ref"] == ref) != total:
                bad.append(f"{name}: {ref} differs from the {total} sats the message said")
        expected_balance = sum(e["delta"] for e in ledger)
        if u.final_balance is not None and u.final_balance != expected_balance:
            bad.append(f"{name}: account page shows {u.final_balance}, ledger sums to "
                       f"{expected_balance}")  # fmt: skip
        if expected_balance != account["balance"]:
            bad.append(f"{name}: balance {account['balance']} != ledger sum {expected_balance}")
        rec.checked["accounts"] += 1
    for u in users:
        if u.name not in dump["accounts"] and (
            u.buys or u.withdrawals or any(p.user == u.name for p in confirmed.values())
        ):
            bad.append(f"{u.name} bought, withdrew or was paid, but has no account on the server")
    # Sellers: every sale credited once, at the price minus the fee.
    credited: set[str] = set()
    for name, e in credit_entries:
        _, owner, n, k = e["ref"].split("::")
        slot = f"slot::{owner}::{n}::{k}"
        if owner != name:
            bad.append(f"{name}: credited for {e['ref']}, a sale of {owner}'s campaign")
        if slot not in sales:
            bad.append(f"{name}: credited {e['delta']} for {e['ref']}, which no buyer paid for")
        else:
            net = sales[slot] - fee_up(sales[slot], SALE_FEE_PERMILLE)
            if e["delta"] != net:
                bad.append(f"{name}: {e['ref']} credited {e['delta']}, the sale nets {net}")
        if e["ref"] in credited:
            bad.append(f"{name}: {e['ref']} credited twice")
        credited.add(e["ref"])
        rec.checked["sales credited"] += 1
    for slot in sorted(sales):
        tx = "tx::" + slot.split("::", 1)[1]
        if tx not in credited:
            bad.append(f"sale {slot} was paid for but {tx} never credited the seller")
    for u in users:
        for op in u.unknowns:
            if not op.resolved:
                op.resolved, op.how = "not", "ledger at the end"
            rec.resolved[f"{op.kind} {'happened' if op.resolved == 'happened' else 'did not'} "
                         f"({op.how})"] += 1  # fmt: skip
    return rec


def _buy_fits(owner: str, n: int, price: int):
    return lambda op: op.owner == owner and op.n == n and price <= op.accepted


def _withdraw_fits(total: int):
    return lambda op: op.amount + op.fee == total


def _claim(u: User, kind: str, fits, ref: str) -> Unknown | None:
    """The unknown-outcome operation of `u` that explains entry `ref`, if any (and mark it)."""
    for op in u.unknowns:
        if op.kind == kind and op.resolved == "happened" and op.ref == ref:
            return op
    for op in u.unknowns:
        if op.kind == kind and not op.resolved and fits(op):
            op.resolved, op.ref, op.how = "happened", ref, "ledger at the end"
            return op
    for op in u.unknowns:
        if op.kind == kind and op.resolved == "not" and fits(op):
            return op
    return None


def check_payouts(dump: dict, chain: Chain) -> list[str]:
    """Every sent withdrawal left the payout wallet exactly once (one transaction, its batch's),
    to its address, for its amount; nothing else left it."""
    bad = []
    payouts = chain.payouts()  # batch key -> [(txid, address, sats)]
    paid_in: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u, reqs in dump["withdrawals"].items():
        for r in reqs:
            key = f"withdraw::{u}::{r['i']}"
            paid = [b for b in r.get("batches", []) if b in payouts]
            if r["state"] == "sent":
                if len(paid) != 1:
                    bad.append(f"{key} is sent, the payout wallet paid it {len(paid)} times")
                    continue
                txids = {txid for txid, _, _ in payouts[paid[0]]}
                if txids != {r["txid"]}:
                    bad.append(f"{key} records {r['txid']}, its batch went out as {txids}")
                paid_in[paid[0]][r["address"]] += r["amount"]
            elif paid:
                bad.append(f"{key} is {r['state']}, yet the payout wallet paid it in {paid}")
    for batch, sends in payouts.items():
        outputs: dict[str, int] = defaultdict(int)
        for _, address, sats in sends:
            outputs[address] += sats
        if dict(outputs) != dict(paid_in.get(batch, {})):
            bad.append(
                f"the payout wallet sent {sends} under {batch!r}, which pays {paid_in.get(batch)}"
            )
    return bad


def pass_counters(path: Path, prefix: str) -> Counter:
    """Sum of the worker's per-pass counters starting with `prefix` ("pass 7: a.b=1, ...")."""
    total: Counter = Counter()
    try:
        with open(path, "rb") as f:
            for line in f:
                m = re.match(rb"pass \d+: (.*)", line)
                if not m:
                    continue
                for item in m.group(1).decode("utf-8", "replace").split(", "):
                    key, _, value = item.partition("=")
                    if key.startswith(prefix) and value.strip().isdigit():
                        total[key[len(prefix) :]] += int(value)
    except OSError:
        pass
    return total


def count_lines(path: Path, needle: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if needle.encode() in line)
    except OSError:
        return 0


def grep(path: Path, needle: str, limit: int = 5) -> list[str]:
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if needle.encode() in line:
                    out.append(line.decode("utf-8", "replace").rstrip())
                    if len(out) >= limit:
                        break
    except OSError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load phase")
    parser.add_argument("--users", type=int, default=30, help="simulated users (20-50 is usual)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--heal-timeout", type=float, default=180.0, help="seconds to drain")
    parser.add_argument(
        "--processor-lease",
        type=int,
        default=15,
        help="seconds of the withdrawal processor's lease in the soak (0: run the command "
        "unchanged, with its default lease, and never kill it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    started = time.monotonic()
    stats = Stats()
    work = Path(tempfile.mkdtemp(prefix="adspace-soak-"))
    node = SoakNode()
    node.start()
    node.create_wallet(PAYOUT_WALLET, watch_only=False, balance=1_000_000 * SATS)
    port = free_port()
    env, backend = make_env(work, port, node.url)
    stats.journal = open(work / "soak.log", "a")  # noqa: SIM115 - closed at the end
    procs = Processes(work, env, port, stats)
    chain = Chain(node, stats)
    site = Site(args, port, stats, chain)
    print(f"soak: seed {seed}, {args.users} users, {args.minutes:g} min, {backend} docstore, "
          f"work dir {work}", flush=True)  # fmt: skip
    ok = False
    try:
        # 1. The real thing, fresh.
        procs.manage("migrate", "--noinput", "-v", "0")
        procs.manage("collectstatic", "--noinput", "-v", "0")
        procs.manage("init_docstore", "-v", "0")
        count = max(100, args.users * 8)
        count = -(-count // ADDRESSES_PER_LIST_PAGE) * ADDRESSES_PER_LIST_PAGE
        keys = work / "keys.txt"
        keys.write_text("\n".join(derive_regtest_addresses("m/84h/1h/0h", count)) + "\n")
        procs.manage("import_keys", str(keys), "-v", "0")
        payout_addresses = derive_regtest_addresses("m/84h/1h/1h", args.users)
        procs.start_worker()
        procs.start_gunicorn()
        if not wait_healthy(port, 60):
            raise RuntimeError(f"the site did not answer /healthz with 200; see {work}")
        setup_seconds = time.monotonic() - started
        print(f"soak: up in {setup_seconds:.1f} s ({count} pool addresses); load for "
              f"{args.minutes:g} min", flush=True)  # fmt: skip

        # 2 and 3. Users, the chain, the processor and the faults.
        users = [User(site, i, seed, payout_addresses[i]) for i in range(args.users)]
        threads = [threading.Thread(target=u.run, name=u.name, daemon=True) for u in users]
        rngs = {
            name: random.Random(f"{seed}:{name}") for name in ("chain", "faults", "proc", "race")
        }
        loops = [
            ("chain", chain_loop, (site, rngs["chain"])),
            ("faults", fault_loop, (site, procs, rngs["faults"])),
            ("processor", processor_loop, (site, procs, rngs["proc"], args.processor_lease)),
            ("races", race_loop, (site, users, rngs["race"])),
        ]
        threads += [
            threading.Thread(target=guarded, args=(stats, name, fn, *a), name=name, daemon=True)
            for name, fn, a in loops
        ]
        for t in threads:
            t.start()
        load_end = time.monotonic() + args.minutes * 60
        while time.monotonic() < load_end:
            time.sleep(min(5.0, max(0.0, load_end - time.monotonic())))
            if procs.gunicorn.poll() is not None:
                raise RuntimeError("the gunicorn master died")
        site.stop.set()
        for t in threads:
            t.join(timeout=HTTP_TIMEOUT * 4)
        stuck = [t.name for t in threads if t.is_alive()]

        # 4. Heal: no more faults; let the system drain.
        heal_start = time.monotonic()
        procs.start_worker()
        wait_healthy(port, 30)
        chain.mine(1)
        left: list[str] = ["not checked yet"]
        last_processor = 0.0
        dump: dict = {}
        while time.monotonic() - heal_start < args.heal_timeout:
            dump = procs.dump()
            left = drained(dump, chain)
            if not left:
                break
            pending = any(
                r["state"] in ("queued", "sending", "failed")
                for reqs in dump["withdrawals"].values()
                for r in reqs
            )
            if pending and time.monotonic() - last_processor > 2:
                outcome = procs.run_processor(args.processor_lease)
                stats.op("process_withdrawals (heal)", outcome)
                last_processor = time.monotonic()
            procs.start_worker()
            chain.mine(1)
            time.sleep(1.0)
        heal_seconds = time.monotonic() - heal_start

        # 5. Audit, read everything, reconcile.
        audit = subprocess.run(
            [PY, "manage.py", "audit"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        audit_lines = audit.stdout.splitlines()
        for u in users:
            u.final_read()
        dump = procs.dump(full=True)
        locks_left = [f"account::{n} ({a['lock']['kind']})" for n, a in dump["accounts"].items()
                      if a["lock"]]  # fmt: skip
        rec = reconcile(users, dump, chain)
        rec.disagreements += site.address_conflicts
        rec.disagreements += check_payouts(dump, chain)

        # 6. The summary.
        web_recoveries = count_lines(work / "gunicorn.log", "recovering lock")
        worker_recoveries = count_lines(work / "worker.log", "recovering lock")
        tracebacks = grep(work / "gunicorn.log", "Internal Server Error", 10)
        worker_errors = count_lines(work / "worker.log", "Traceback")
        recovered = pass_counters(work / "worker.log", "recovery.")
        money = next((line for line in audit_lines if line.startswith("money:")), "money: ?")
        statuses = ", ".join(f"{s} x{n}" for s, n in sorted(stats.http.items()))
        out = [
            "",
            "=== soak summary ===",
            f"seed {seed}; {args.users} users; load {args.minutes:g} min; {backend} docstore; "
            f"set-up {setup_seconds:.1f} s",
            "operations:",
        ]
        for kind in sorted(stats.ops):
            outcomes = ", ".join(f"{o} {n}" for o, n in sorted(stats.ops[kind].items()))
            out.append(f"  {kind:<28} {outcomes}")
        out += [
            f"HTTP answers: {statuses}; lost to kills/timeouts {stats.lost} "
            f"(timeouts {stats.timeouts}); 500s: {stats.http.get(500, 0)}; "
            f"unclear: {len(stats.bad)}",
            "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.faults.items())) or "none"),
            "chain: "
            + ", ".join(f"{k} {v}" for k, v in sorted(stats.chain.items()))
            + f"; deposit alerts recorded {dump.get('alerts', 0)}",
            f"recoveries: 'recovering lock' log lines: worker {worker_recoveries}, web requests "
            f"{web_recoveries}; worker recovery counters: "
            + (", ".join(f"{k} {v}" for k, v in sorted(recovered.items())) or "all zero")
            + f"; worker tracebacks {worker_errors}",
            f"unknown outcomes: {sum(stats.unknown.values())} ("
            + (", ".join(f"{k} {v}" for k, v in sorted(stats.unknown.items())) or "none")
            + "); resolved: "
            + (", ".join(f"{k} {v}" for k, v in sorted(rec.resolved.items())) or "nothing"),
            "reconciled: " + ", ".join(f"{k} {v}" for k, v in sorted(rec.checked.items())),
            f"heal: {'drained' if not left else 'NOT drained'} in {heal_seconds:.1f} s"
            + ("" if not left else f" ({len(left)} left: " + "; ".join(left[:8]) + ")"),
            f"locks left: {len(locks_left)}"
            + (f" ({', '.join(locks_left)})" if locks_left else ""),
            f"audit: {'passed' if audit.returncode == 0 else 'FAILED'} ({money})",
            f"disagreements: {len(rec.disagreements)}",
        ]
        out += [f"  {d}" for d in rec.disagreements[:40]]
        if stats.bad:
            out.append("unclear HTTP answers (first 20):")
            out += [f"  {b}" for b in stats.bad[:20]]
        if tracebacks:
            out.append("server errors in gunicorn.log:")
            out += [f"  {t}" for t in tracebacks]
        if audit.returncode != 0:
            out.append("audit output:")
            out += [f"  {line}" for line in audit_lines if "BREACH" in line or ": NO" in line][:40]
            out += [f"  {line}" for line in audit.stderr.splitlines()[-5:]]
        if stuck:
            out.append(f"threads still running at the end: {', '.join(stuck)}")
        if stats.internal:
            out.append(f"errors inside the soak itself ({len(stats.internal)}):")
            out += [f"  {e}" for e in stats.internal[:5]]
        failed = (
            audit.returncode != 0
            or locks_left
            or left
            or stats.http.get(500, 0)
            or stats.bad
            or rec.disagreements
            or stats.internal
        )
        ok = not failed
        out += [
            f"replay: bench/soak --seed {seed} --users {args.users} --minutes {args.minutes:g}",
            f"RESULT: {'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.0f} s",
        ]
        print("\n".join(out), flush=True)
    except Exception as exc:
        print(f"soak: ERROR {exc!r} (seed {seed}); logs in {work}", flush=True)
        args.keep = True
        raise
    finally:
        site.stop.set()
        procs.stop()
        node.stop()
        with stats.lock:
            stats.journal.close()
            stats.journal = None
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"soak: logs and store kept in {work}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
