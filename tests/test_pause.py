"""Pausing a campaign: new sales stop, sold slots run, and a buy racing the pause is whole."""

from __future__ import annotations

import threading

import pytest

from accounts import locks
from accounts.gateway import get_account
from accounts.recovery import run_recovery
from adspace import buy, gateway, pricing, serving
from docstore.backends.memory import MemoryStore
from tests.harness import Scenario, World, run_crash_points, run_lease_matrix, run_swarm
from tests.invariants import assert_audit_clean, assert_each_sale_charged_once
from tests.test_buy import HUGE, M, balance, make_market

EXPECTED = (buy.BuyError, locks.AccountBusy, locks.InsufficientFunds)


@pytest.fixture
def market(store, clock):
    return make_market(store, clock)


def pause(store, n, paused=True):
    return gateway.set_campaign_paused(store, "sam", n, "sam", paused)


def test_a_paused_campaign_refuses_a_buy_and_charges_nothing(store, clock, market):
    pause(store, market)
    before = store.dump()
    with pytest.raises(buy.CampaignPaused):
        buy.buy_next_slot(store, clock, "bob", "sam", market, 0, HUGE)
    assert store.dump() == before
    assert balance(store, "bob") == 1_000_000


def test_sold_slots_keep_running_and_serving_while_paused(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    pause(store, market)
    campaign = gateway.get_campaign(store, "sam", market).value
    assert campaign["paused"] is True and campaign["last"]["slot"] == 0
    found = serving.live_slot(store, "sam", market, clock.now() + 60)
    assert found is not None and found[1]["buyer"] == "bob"


def test_resume_keeps_the_price_a_function_of_time_and_the_last_sale(store, clock, market):
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    last = gateway.get_campaign(store, "sam", market).value["last"]
    pause(store, market)
    clock.advance(3600)
    pause(store, market, paused=False)
    expected = pricing.current_price(M, last, clock.now())
    sale = buy.buy_next_slot(store, clock, "cat", "sam", market, 0, HUGE)
    assert sale.price == expected < 2 * M


def test_pausing_twice_changes_nothing_the_second_time(store, market):
    assert pause(store, market) is True
    before = store.dump()
    assert pause(store, market) is False
    assert store.dump() == before


def test_only_the_owner_can_pause(store, market):
    before = store.dump()
    with pytest.raises(gateway.NotCampaignOwner):
        gateway.set_campaign_paused(store, "sam", market, "bob", True)
    assert store.dump() == before


def test_a_pause_never_undoes_a_sale_it_races(store, clock, market):
    """The pause's CAS keeps the `last` a sale wrote between its read and its write."""
    buy.buy_next_slot(store, clock, "bob", "sam", market, 0, M)
    pause(store, market)
    assert gateway.get_campaign(store, "sam", market).value["last"]["slot"] == 0


# --- the race, under the fault harness --------------------------------------------------------


def setup(store, clock):
    n = make_market(store, clock, buyers=("bob", "cat"), funds=50_000_000)
    return {"n": n}


def bob_buys(store, clock, ctx):
    return buy.buy_next_slot(store, clock, "bob", "sam", ctx["n"], 0, HUGE)


def seller_pauses(store, clock, ctx):
    return gateway.set_campaign_paused(store, "sam", ctx["n"], "sam", True)


def check(world: World) -> None:
    """Whole or refused: a sale that exists is paid once; a refusal charged nothing."""
    assert_audit_clean(world.store)
    assert_each_sale_charged_once(world.store)
    for name in ("bob", "cat"):
        assert get_account(world.store, name).value["lock"] is None
    bob = get_account(world.store, "bob").value["balance"]
    slots = gateway.get_slots(world.store, "sam", world.ctx["n"], 0, 5)
    spent = sum(s["price"] for s in slots.values() if s["buyer"] == "bob")
    assert bob == 50_000_000 - spent
    if world.owner and world.owner[0] == "ok":
        sale = world.owner[1]
        assert slots[sale.slot]["buyer"] == "bob"


SCENARIO = Scenario("buy racing a pause", setup, bob_buys, run_recovery, check, EXPECTED)


def test_a_buy_racing_a_pause_is_whole_or_refused_under_the_lease_matrix(make_world_store):
    rivals = {
        "the seller pauses": seller_pauses,
        "the seller pauses, then recovery": lambda s, c, ctx: (
            seller_pauses(s, c, ctx),
            run_recovery(s, c),
        ),
    }
    assert run_lease_matrix(SCENARIO, make_world_store, rivals) > 10


def test_a_buy_on_a_paused_campaign_survives_every_crash_point(make_world_store):
    paused = Scenario(
        "buy on a paused campaign",
        lambda s, c: {**setup(s, c), "paused": seller_pauses(s, c, {"n": 0})},
        bob_buys,
        run_recovery,
        check,
        EXPECTED,
    )
    assert run_crash_points(paused, make_world_store) >= 1


def swarm_actors(world, rng):
    actors = [seller_pauses]
    for _ in range(rng.randint(2, 5)):
        name = rng.choice(["bob", "cat"])
        actors.append(
            lambda store, clock, ctx, name=name: buy.buy_next_slot(
                store, clock, name, "sam", ctx["n"], 0, HUGE
            )
        )
    if rng.random() < 0.5:
        actors.append(lambda store, clock, ctx: run_recovery(store, clock))
    return actors


def test_buys_and_a_pause_in_a_seeded_swarm_never_leave_a_half_sale(swarm_seeds):
    assert run_swarm(SCENARIO, MemoryStore, swarm_actors, swarm_seeds(400)) > 0


def test_threads_buying_while_the_seller_pauses_are_whole_or_refused(store, clock):
    buyers = [f"t{i}" for i in range(6)]
    n = make_market(store, clock, buyers=buyers, funds=10**10)
    results: list[str] = []
    barrier = threading.Barrier(len(buyers) + 1)

    def run(name):
        barrier.wait()
        for _ in range(5):
            try:
                buy.buy_next_slot(store, clock, name, "sam", n, 0, HUGE)
                results.append("won")
            except (buy.SlotTaken, buy.CampaignPaused, locks.AccountBusy) as exc:
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=run, args=(b,)) for b in buyers]
    for t in threads:
        t.start()
    barrier.wait()
    pause(store, n)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    slots = gateway.get_slots(store, "sam", n, 0, 100)
    assert results.count("won") == len(slots)
    spent = {b: 10**10 - balance(store, b) for b in buyers}
    assert spent == {b: sum(s["price"] for s in slots.values() if s["buyer"] == b) for b in buyers}
    # Once the pause is in, no buy can start a new sale.
    with pytest.raises(buy.CampaignPaused):
        buy.buy_next_slot(store, clock, "t0", "sam", n, 0, HUGE)
    assert_each_sale_charged_once(store)
    assert_audit_clean(store)


@pytest.mark.django_db
@pytest.mark.parametrize("who", [None, "buyer", "seller"])
def test_the_campaign_page_says_it_is_paused_and_shows_no_buy_form(
    client, store, clock, seller, buyer, who
):
    users = {"buyer": buyer, "seller": seller}
    gateway.create_campaign(store, clock, "seller", M, 24, 300, 250, [], title="Blog")
    gateway.create_filler(store, clock, "buyer", "ad", "h", "https://b.test/", 300, 250, "0")
    if who:
        client.force_login(users[who])
    if who == "buyer":
        assert 'data-role="buy-form"' in client.get("/ads/buy-ad-space/seller/0").content.decode()
    gateway.set_campaign_paused(store, "seller", 0, "seller", True)
    html = client.get("/ads/buy-ad-space/seller/0").content.decode()
    assert "This campaign is paused" in html
    assert "No slot can be bought while the campaign is paused." in html
    # The form stays in the page, hidden (shown again by the live updates on a resume).
    assert '<div data-live-when="selling" hidden>' in html
    assert 'data-live-when="paused" hidden' not in html
    assert html.count('data-role="buy-form"') == (who == "buyer")
    if who == "buyer":
        selling = html.index('<div data-live-when="selling" hidden>')
        assert selling < html.index('data-role="buy-form"') < html.index("</div>", selling + 1)
    assert ("Resume sales" in html) == (who == "seller")


@pytest.mark.django_db
def test_the_owner_pauses_and_resumes_from_the_campaign_page(client, store, clock, seller, buyer):
    gateway.create_campaign(store, clock, "seller", M, 24, 300, 250, [], title="Blog")
    client.force_login(seller)
    url = "/ads/buy-ad-space/seller/0/pause"
    assert client.post(url, {"action": "pause"}).status_code == 302
    assert gateway.get_campaign(store, "seller", 0).value["paused"] is True
    assert client.post(url, {"action": "resume"}).status_code == 302
    assert gateway.get_campaign(store, "seller", 0).value["paused"] is False


@pytest.mark.django_db
def test_a_buy_posted_to_a_paused_campaign_says_why_and_charges_nothing(
    client, store, clock, seller, buyer
):
    gateway.create_campaign(store, clock, "seller", M, 24, 300, 250, [], title="Blog")
    gateway.create_filler(store, clock, "buyer", "ad", "h", "https://b.test/", 300, 250, "0")
    gateway.set_campaign_paused(store, "seller", 0, "seller", True)
    client.force_login(buyer)
    before = store.dump()
    response = client.post(
        "/ads/buy-ad-space/seller/0/buy", {"filler": "0", "accepted_price": str(M)}, follow=True
    )
    assert "The seller has paused this campaign" in response.content.decode()
    assert store.dump() == before
