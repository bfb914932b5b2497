"""Load a small living marketplace: sellers, campaigns of several sizes, buyers with ads, sales.

Development only: the users get a published password and balances no bitcoin backs, so it refuses
to run unless DEBUG is on and the network is not mainnet. It never touches a user it did not
create: each demo user it creates is recorded in `demo::<username>` (with the user's id), and a
name that exists without that record (someone registered it, in any case) is left alone, with
everything that would involve it. A crash between creating a user and recording it leaves that
user alone too (the safe side).

On `make run`'s local regtest node (the developer faucet is on) the buyers are paid through real
regtest transactions to their deposit addresses, confirmed and credited as any deposit is, so the
audit's "came in" is real deposits; elsewhere staff adjustments stand in for them.

Idempotent: each step checks what already exists, so running it twice changes nothing.
"""

from __future__ import annotations

import io

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from PIL import Image, ImageDraw

from accounts.adjust import adjust_balance
from accounts.commands import StoreCommand
from accounts.gateway import ensure_account, get_account
from accounts.money import format_btc
from adspace import buy, gateway
from adspace.images import validate_ad_image
from bitcoinkeys import faucet, pool
from bitcoinkeys.chain import get_chain
from bitcoinkeys.deposits import check_deposits, user_addresses
from docstore import AlreadyExists, FixedClock, NotFound, Store, get_clock, get_store

DEMO_PASSWORD = "demo-password-2024"  # noqa: S105 - public demo logins for a local site
HOUR = 3600
DEMO_FUNDS = 2_000_000_000  # each buyer's 20 BTC
SELLERS = {
    # seller: [(min price sats, slot hours, width, height, disallowed)]
    "alice": [(300_000, 24, 728, 90, ["Gambling"]), (500_000, 6, 300, 250, [])],
    "bob": [(300_000, 24, 300, 250, ["Porn", "Tobacco"])],
    "carol": [(1_000_000, 168, 160, 600, []), (300_000, 1, 728, 90, [])],
    "dora": [(400_000, 12, 300, 250, [])],
}
BUYERS = {"erin": (200, 40, 90), "frank": (20, 120, 200), "grace": (230, 160, 20)}
SIZES = [(728, 90), (300, 250), (160, 600)]
# (seller, campaign, buyer, hours before now of each purchase): live, queued and lapsed slots.
SALES = [
    ("alice", 0, "erin", [30, 2]),
    ("alice", 1, "frank", [5, 4, 1]),
    ("bob", 0, "grace", [10]),
    ("carol", 0, "erin", [200, 20]),
    ("carol", 1, "frank", [3]),
]


def demo_png(width: int, height: int, colour: tuple[int, int, int], label: str) -> bytes:
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle([1, 1, width - 2, height - 2], outline=(255, 255, 255), width=2)
    draw.text((8, 8), label, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def demo_key(username: str) -> str:
    return f"demo::{username}"


class Command(StoreCommand):
    help = "Development only: load demo sellers, campaigns, buyers, ads and sales (idempotent)."

    def handle(self, *args, **options):
        if not settings.DEBUG or settings.BITCOIN_NETWORK == "mainnet":
            raise CommandError(
                "seed_demo only runs in a development run (DEBUG on, BITCOIN_NETWORK not "
                "mainnet): it makes users with a published password and balances no bitcoin backs."
            )
        store, clock = get_store(), get_clock()
        now = clock.now()
        ours = {name for name in [*SELLERS, *BUYERS] if self._demo_user(store, clock, name)}
        for seller, campaigns in SELLERS.items():
            if seller in ours and gateway.campaign_count(store, seller) == 0:
                for min_price, hours, w, h, disallowed in campaigns:
                    gateway.create_campaign(
                        store, clock, seller, min_price, hours, w, h, disallowed
                    )
                self.stdout.write(f"campaigns for {seller}: {len(campaigns)}")
        if faucet.enabled():
            self._pay_buyers_on_chain(store, clock, [b for b in BUYERS if b in ours])
        for buyer, colour in BUYERS.items():
            if buyer not in ours:
                continue
            if not faucet.enabled():
                adjust_balance(store, clock, buyer, DEMO_FUNDS, "demo funds", f"demo-{buyer}")
            if gateway.filler_count(store, buyer) == 0:
                for w, h in SIZES:
                    image = validate_ad_image(demo_png(w, h, colour, f"{buyer} {w}x{h}"), w, h)
                    gateway.store_image(
                        store, image.sha256, image.content_type, image.ext, image.data, w, h
                    )
                    gateway.create_filler(
                        store, clock, buyer, f"{buyer} {w}x{h}", f"{buyer.title()}'s ad",
                        f"https://example.com/{buyer}", w, h, image.sha256,
                    )  # fmt: skip
                self.stdout.write(f"ads for {buyer}: {len(SIZES)}")
        for seller, n, buyer, hours_ago in SALES:
            if seller not in ours or buyer not in ours:
                continue
            campaign = gateway.get_campaign(store, seller, n).value
            if campaign.get("last"):
                continue
            filler = SIZES.index((campaign["width"], campaign["height"]))
            for h in hours_ago:
                sale = buy.buy_next_slot(
                    store, FixedClock(now - h * HOUR), buyer, seller, n, filler, 10**15
                )
                self.stdout.write(f"sale {seller}/{n} slot {sale.slot} to {buyer}", ending="\n")
        self.stdout.write(
            self.style.SUCCESS(
                f"demo marketplace ready; every demo user's password: {DEMO_PASSWORD}"
            )
        )

    def _pay_buyers_on_chain(self, store: Store, clock, buyers: list[str]) -> None:
        """Each buyer gets DEMO_FUNDS at their deposit address once (an address that already
        received a payment is not paid again), then one block confirms and credits them."""
        chain = get_chain()
        for buyer in buyers:
            address = pool.get_deposit_address(store, clock, buyer)
            addresses = user_addresses(get_account(store, buyer).value)
            if any(chain.payments_for(a) for a in addresses):
                continue
            txid = faucet.pay_to(address, DEMO_FUNDS)
            self.stdout.write(f"paid {buyer} {format_btc(DEMO_FUNDS)} BTC on regtest: {txid}")
        faucet.mine_blocks(1)
        for buyer in buyers:
            check_deposits(store, clock, chain, buyer)

    def _demo_user(self, store: Store, clock, name: str) -> bool:
        """Create the demo user `name` unless the name is taken; True if it is ours."""
        user_model = get_user_model()
        user = user_model.objects.filter(username__iexact=name).first()
        if user is None:
            try:
                with transaction.atomic():
                    user = user_model.objects.create_user(username=name, password=DEMO_PASSWORD)
            except IntegrityError:
                user = None  # registered by someone else a moment ago
            if user is not None:
                try:
                    store.insert(demo_key(name), {"userId": user.pk})
                except AlreadyExists:
                    pass
                self.stdout.write(f"user {name}")
        try:
            ours = user is not None and store.get(demo_key(name)).value["userId"] == user.pk
        except NotFound:
            ours = False
        if not ours:
            self.stdout.write(
                self.style.WARNING(
                    f"{name} exists and is not a demo user: left alone, with every demo step involving it"
                )
            )
            return False
        ensure_account(store, clock, name)
        return True
