"""The home page's live campaigns: cheapest right now, falling fastest, open for sale now, newest."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest

import docstore
from adspace import browse, gateway, pricing
from docstore import TemporaryFailure
from docstore.faults import Hook, HookedStore
from tests.test_browse import sell_one

pytestmark = pytest.mark.django_db

HOUR = 3600
ITEM = re.compile(r'<li><a href="/ads/buy-ad-space/([A-Za-z0-9]+)/([0-9]+)">')


def section(html: str, list_id: str) -> str:
    start = html.index(f'id="{list_id}"')
    return html[start : html.index("</div>", start)]


def refs(html: str, list_id: str) -> list[str]:
    return [f"{o}/{n}" for o, n in ITEM.findall(section(html, list_id))]


def make(store, clock, owner, price, hours=24, w=300, h=250, title="") -> str:
    n = gateway.create_campaign(store, clock, owner, price, hours, w, h, [], title=title)
    return f"{owner}/{n}"


@pytest.fixture
def market(store, clock, make_user):
    """Six campaigns, made a minute apart: two sold (one with 1 h slots, falling fast), one
    paused, three unsold."""
    make_user("buyer", balance=100_000_000)
    made = {}
    for name, price, hours in [
        ("slow", 300_000, 24),
        ("fast", 300_000, 1),
        ("cheap", 100_000, 24),
        ("paused", 50_000, 24),
        ("mid", 200_000, 24),
        ("newest", 400_000, 24),
    ]:
        made[name] = make(store, clock, name, price, hours)
        clock.advance(60)
    gateway.set_campaign_paused(store, "paused", 0, "paused", True)
    sell_one(store, clock, made["slow"])  # 0.006 falling to 0.003 over 24 h: ~3.5 sats a second
    sell_one(store, clock, made["fast"])  # 0.006 falling to 0.003 over 1 h: ~83 sats a second
    clock.advance(60)
    return made


def test_the_four_lists_show_live_campaigns_in_their_orders(client, market):
    html = client.get("/").content.decode()
    m = market
    assert refs(html, "cheapest") == [m["cheap"], m["mid"], m["newest"], m["fast"], m["slow"]]
    assert refs(html, "falling") == [m["fast"], m["slow"]]
    assert refs(html, "open-now") == [m["cheap"], m["mid"], m["newest"]]
    assert refs(html, "newest") == [m["newest"], m["mid"], m["cheap"], m["fast"], m["slow"]]
    assert "paused/0" not in html


def test_each_item_shows_its_size_slot_length_and_price_now(client, store, clock, market):
    html = client.get("/").content.decode()
    fast = section(html, "falling").split("</li>")[0]
    last = gateway.get_campaign(store, "fast", 0).value["last"]
    price = pricing.current_price(300_000, last, clock.now())
    assert price == 300_000 + (300_000 * (HOUR - 60) + HOUR // 2) // HOUR  # 595 000
    assert "300x250 px" in fast and "1 h slots" in fast
    assert f"{price / 1e8:.8f} BTC" in fast
    assert "falling 0.00300000 BTC an hour" in fast
    assert "starts at once" in section(html, "open-now")


def test_lists_follow_the_clock_a_fallen_price_is_open_again(client, clock, market):
    clock.advance(HOUR)  # the 1 h slot has ended: its price is back at the minimum
    html = client.get("/").content.decode()
    assert refs(html, "falling") == [market["slow"]]
    assert market["fast"] in refs(html, "open-now")


def test_with_nothing_sold_nothing_falls_and_every_list_says_so_when_empty(client, store, clock):
    html = client.get("/").content.decode()
    assert "No campaign is open for sale yet." in html and "No campaign yet." in html
    make(store, clock, "ann", 300_000)
    clock.advance(browse.SNAPSHOT_SECONDS)
    html = client.get("/").content.decode()
    assert refs(html, "cheapest") == ["ann/0"] and refs(html, "newest") == ["ann/0"]
    assert "No price is falling right now" in html


def test_a_sale_shows_on_the_home_page_within_the_cache_window(client, store, clock, market):
    html = client.get("/").content.decode()
    assert market["cheap"] in refs(html, "open-now")
    sell_one(store, clock, market["cheap"])
    clock.advance(browse.SNAPSHOT_SECONDS)
    html = client.get("/").content.decode()
    assert market["cheap"] not in refs(html, "open-now")
    # Sold at its 0.001 minimum, its fall (0.001 a day) is the slowest of the three.
    assert refs(html, "falling") == [market["fast"], market["slow"], market["cheap"]]


def test_titles_are_escaped(client, store, clock):
    make(store, clock, "ann", 300_000, title="<b>bold</b>")
    html = client.get("/").content.decode()
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


class Unreachable(Hook):
    def before(self, op, key):
        raise TemporaryFailure("down")


def test_the_home_page_still_says_what_this_is_while_the_store_is_down(client, store, clock):
    make(store, clock, "ann", 300_000)
    docstore.set_store(HookedStore(store, Unreachable()))
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "Ad space, sold one slot at a time" in html
    assert "Live campaigns cannot be shown right now" in html


def test_the_lists_agree_with_a_brute_force_over_many_campaigns(store, clock, make_user):
    rng = random.Random(7)
    make_user("buyer", balance=10**12)
    made = []
    for i in range(40):
        hours = rng.choice([1, 6, 24])
        made.append(make(store, clock, f"s{i}", rng.choice([100_000, 200_000, 300_000]), hours))
        clock.advance(rng.randrange(1, 100))
    for ref in rng.sample(made, 25):
        for _ in range(rng.randrange(1, 3)):
            sell_one(store, clock, ref)
        clock.advance(rng.randrange(1, 2000))
    for _ in range(5):
        clock.advance(rng.randrange(browse.SNAPSHOT_SECONDS, 4 * HOUR))
        now = clock.now()
        lists = browse.home_lists(store, now)
        docs = [gateway.get_campaign(store, f"s{i}", 0).value for i in range(40)]

        def price(d, now=now):
            return pricing.current_price(d["minPrice"], d.get("last"), now)

        def is_open(d, now=now):
            return d.get("last") is None or now >= d["last"]["endsAt"]

        def shown(rows):
            return [(r.price, r.head.owner) for r in rows]

        by_price = sorted((price(d), d["owner"]) for d in docs)
        assert shown(lists.cheapest) == by_price[:5]
        by_minimum = sorted((d["minPrice"], d["owner"]) for d in docs if is_open(d))
        assert [r.head.owner for r in lists.open_now] == [o for _, o in by_minimum][:5]
        falling = [d for d in docs if not is_open(d) and d["last"]["purchasedAt"] <= now]
        assert len(lists.falling) == min(5, len(falling))
        fastest = max(
            Fraction(
                2 * d["last"]["price"] - d["minPrice"],
                d["last"]["endsAt"] - d["last"]["purchasedAt"],
            )
            for d in falling
        )
        top = next(d for d in docs if d["owner"] == lists.falling[0].head.owner)["last"]
        assert (
            Fraction(
                2 * top["price"] - lists.falling[0].head.min_price,
                top["endsAt"] - top["purchasedAt"],
            )
            == fastest
        )
        rates = [r.head.fall_per_hour() for r in lists.falling]
        assert rates == sorted(rates, reverse=True)
