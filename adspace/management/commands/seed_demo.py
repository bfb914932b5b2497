"""Load a small living marketplace: sellers, campaigns of several sizes, buyers with ads, sales.

Idempotent: each step checks what already exists, so running it twice changes nothing.
"""

from __future__ import annotations

import io

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from PIL import Image, ImageDraw

from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account
from adspace import buy, gateway
from adspace.images import validate_ad_image
from docstore import FixedClock, get_clock, get_store

DEMO_PASSWORD = "demo-password-2024"  # noqa: S105 - public demo logins for a local site
HOUR = 3600
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


class Command(BaseCommand):
    help = "Load demo sellers, campaigns, buyers, ads and sales (idempotent)."

    def handle(self, *args, **options):
        store, clock = get_store(), get_clock()
        now = clock.now()
        for name in [*SELLERS, *BUYERS]:
            self._user(store, clock, name)
        for seller, campaigns in SELLERS.items():
            if gateway.campaign_count(store, seller) == 0:
                for min_price, hours, w, h, disallowed in campaigns:
                    gateway.create_campaign(
                        store, clock, seller, min_price, hours, w, h, disallowed
                    )
                self.stdout.write(f"campaigns for {seller}: {len(campaigns)}")
        for buyer, colour in BUYERS.items():
            adjust_balance(store, clock, buyer, 2_000_000_000, "demo funds", f"demo-{buyer}")
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

    def _user(self, store, clock, name: str) -> None:
        user_model = get_user_model()
        if not user_model.objects.filter(username=name).exists():
            user_model.objects.create_user(username=name, password=DEMO_PASSWORD)
            self.stdout.write(f"user {name}")
        ensure_account(store, clock, name)
