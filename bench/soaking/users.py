"""The simulated users: who they are, how they use the site, and what each one saw.

Money moves (buying, withdrawing, cancelling, and learning what became of an answer that never came)
are in money.py; this module holds the rest of a user's day and the state the users share.
"""

from __future__ import annotations

import io
import math
import random
import re
import threading
import time

from .chain import Chain
from .client import (
    ADDRESS_H3,
    CURRENT_ADDRESS,
    SELL_ROW,
    WITHDRAW_ROW,
    Client,
    Lost,
    Response,
    header_balance,
    messages,
)
from .common import (
    AD_SIZES,
    LOCK_LEASE_SECONDS,
    MIN_CAMPAIGN_SATS,
    MIN_DEPOSIT_SATS,
    MIN_WITHDRAWAL_SATS,
    Stats,
    btc,
    fee_up,
    parse_sats,
)
from .money import MoneyMoves, Unknown


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


# --- what a user saw -------------------------------------------------------------------------------


class Site:
    """Everything the simulation shares: campaigns seen, addresses seen, processes. `ports`: the
    web nodes' (one, or several for --cluster: each request goes to one of them)."""

    def __init__(self, args, ports: int | list[int], stats: Stats, chain: Chain):
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        self.args, self.stats, self.chain = args, stats, chain
        self.lock = threading.Lock()
        self.campaigns: dict[tuple[str, int], tuple[int, int]] = {}  # (owner, n) -> (w, h)
        self.address_owner: dict[str, str] = {}
        self.address_conflicts: list[str] = []
        self.stop = threading.Event()

    @property
    def port(self) -> int:
        return self.ports[0]

    def add_campaign(self, owner: str, n: int, w: int, h: int) -> None:
        with self.lock:
            self.campaigns[(owner, n)] = (w, h)

    def saw_address(self, user: str, address: str) -> None:
        with self.lock:
            other = self.address_owner.setdefault(address, user)
            if other != user:
                self.address_conflicts.append(f"address {address} shown to {other} and {user}")


class User(MoneyMoves):
    def __init__(self, site: Site, index: int, seed: int, payout_address: str):
        self.site, self.stats = site, site.stats
        self.name = f"user{index}"
        self.rng = random.Random(f"{seed}:user:{index}")
        self.password = f"Soak-{self.rng.getrandbits(64):016x}-pw"
        # Which web node serves each request: a stream of its own, so adding nodes leaves the
        # users' own choices (what to do, how much) as the seed made them.
        route = random.Random(f"{seed}:route:{index}")
        self.http = Client(site.ports, site.stats, self.name, rng=route)
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
        current = CURRENT_ADDRESS.search(text)
        known = set(self.addresses)
        for address in ADDRESS_H3.findall(text) + ([current.group(1)] if current else []):
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
            "title": f"{self.name}'s site, campaign {self.campaigns_made + 1}",
            "site_url": f"https://{self.name}.example.com/",
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
            if resp.status == 400 and "the most one account can have" not in resp.text:
                # The form asks for something the soak does not send: no campaign, no sales,
                # and the soak would pass without ever buying a slot.
                self.stats.problem(
                    f"{self.name} create campaign refused 400: the soak's form is stale"
                )
        page = self.page("/ads/sell-ad-space/")
        if page is None:
            return
        made = 0
        for owner, n, width, height in SELL_ROW.findall(page.text):
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

    def final_read(self) -> None:
        page = self.page("/account/", attempts=6)
        if page is not None and page.status == 200:
            m = re.search(
                r'<p class="balance"><span class="amount">(-?\d+\.\d{8})</span>', page.text
            )
            self.final_balance = parse_sats(m.group(1)) if m else None
        page = self.page("/account/withdraw/", attempts=6)
        if page is not None and page.status == 200:
            self.final_states = {int(i): s for i, s in WITHDRAW_ROW.findall(page.text)}
