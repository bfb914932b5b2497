"""Seed a realistic benchmark data set into the configured (fresh) store and database.

1 000 sellers x 2 campaigns, 20 000 sold slots, 5 000 buyers with ads and balances, and (when the
key pool is available) a full key pool. Writes bench sessions for 50 buyers to a JSON file so the
load generator can buy as logged-in users. Run through bench/run, not by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

import django

django.setup()

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402

from accounts.adjust import adjust_balance  # noqa: E402
from accounts.gateway import ensure_account  # noqa: E402
from accounts.models import User  # noqa: E402
from adspace import buy, gateway  # noqa: E402
from adspace.credit import credit_all  # noqa: E402
from adspace.images import validate_ad_image  # noqa: E402
from adspace.management.commands.seed_demo import demo_png  # noqa: E402
from docstore import FixedClock, SystemClock, get_store  # noqa: E402

HOT_SIZE = (300, 250)
OTHER_SIZES = [(728, 90), (160, 600)]
CSRF = "benchcsrf0123456789abcdefghijklm"  # exactly 32 chars: an unmasked secret Django accepts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sellers", type=int, default=1000)
    parser.add_argument("--buyers", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=20000)
    parser.add_argument("--hot", type=int, default=100, help="campaigns the buy benchmark hits")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    store, clock = get_store(), SystemClock()
    now = clock.now()
    started = time.time()
    password = make_password("bench-password-1")
    users = [User(username=f"s{i}", password=password) for i in range(args.sellers)]
    users += [User(username=f"b{i}", password=password) for i in range(args.buyers)]
    User.objects.bulk_create(users, batch_size=1000)

    image = validate_ad_image(demo_png(*HOT_SIZE, (40, 90, 160), "bench"), *HOT_SIZE)
    gateway.store_image(store, image.sha256, image.content_type, image.ext, image.data, *HOT_SIZE)
    campaigns = []
    for i in range(args.sellers):
        name = f"s{i}"
        ensure_account(store, clock, name)
        for j in range(2):
            w, h = HOT_SIZE if (i * 2 + j) % 4 != 3 else OTHER_SIZES[i % 2]
            # Half the campaigns name their site, as the browse row's "has a site" filter reads.
            site = f"https://{name}.example/" if j == 0 else ""
            n = gateway.create_campaign(store, clock, name, 300_000, 24, w, h, [], site_url=site)
            campaigns.append((name, n, (w, h)))
    for i in range(args.buyers):
        name = f"b{i}"
        ensure_account(store, clock, name)
        # The benchmark's buyers can pay for ~20 doublings of a price (the most one adjustment
        # may add: all bitcoin there will ever be).
        funds = 2 * 10**15 if i < args.sessions else 10**13
        adjust_balance(store, clock, name, funds, "bench funds", f"bench-{name}")
        gateway.create_filler(
            store, clock, name, "bench ad", f"Buyer {i}", f"https://example.com/{i}",
            *HOT_SIZE, image.sha256,
        )  # fmt: skip
    hot = [c for c in campaigns if c[2] == HOT_SIZE]
    # The buy benchmark's campaigns start unsold, at their minimum price: each sale doubles the
    # next price, so campaigns with a seeded history would cost more than any balance at once
    # and the row would measure "insufficient funds" answers instead of sales.
    history, for_sale = hot[: -args.hot], hot[-args.hot :]
    sold, buyer = 0, 0
    per_campaign = max(1, args.slots // len(history))
    for owner, n, _ in history:
        for k in range(per_campaign):
            if sold >= args.slots:
                break
            # Spread purchases over the past days so some slots are lapsed, one is live, some queue.
            at = now - (per_campaign - k) * 3 * 3600
            buy.buy_next_slot(store, FixedClock(at), f"b{buyer % args.buyers}", owner, n, 0, 10**15)
            sold, buyer = sold + 1, buyer + 1
    # Start in steady state: every seeded sale already credited, as a running worker would have
    # (its catch-up over 20 000 old sales is not what the HTTP rows should compete with).
    while credit_all(store, clock)["credited"]:
        pass
    sessions = []
    for user in User.objects.filter(username__in=[f"b{i}" for i in range(args.sessions)]):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "accounts.auth_backends.CaseInsensitiveModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        sessions.append(session.session_key)
    Path(args.out).write_text(
        json.dumps(
            {
                "sessions": sessions,
                "csrf": CSRF,
                "hot": [f"{o}/{n}" for o, n, _ in for_sale],
                "campaign": f"{hot[0][0]}/{hot[0][1]}",
                "image": f"/img/{image.sha256}.{image.ext}",
                "sold": sold,
                "seconds": round(time.time() - started, 1),
            }
        )
    )
    print(f"seeded {len(campaigns)} campaigns, {sold} slots, {args.buyers} buyers "
          f"in {time.time() - started:.0f}s")  # fmt: skip


if __name__ == "__main__":
    main()
