"""The campaign page's slot sections are kept per process; they must never show a stale answer."""

from __future__ import annotations

import pytest

from adspace import buy, fragments, gateway

pytestmark = pytest.mark.django_db

M = 300_000
HOUR = 3600
PAGE = "/ads/buy-ad-space/sam/0"


@pytest.fixture
def buyers(store, clock, make_user):
    gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    for name in ("bob", "cat"):
        make_user(name, balance=10_000_000)
        gateway.create_filler(store, clock, name, "ad", "h", f"https://{name}.test/", 300, 250, "0")


def sections(client) -> tuple[str, str]:
    html = client.get(PAGE).content.decode()
    showing = html.split("Showing now", 1)[1].split("</section>", 1)[0]
    queue = html.split("Sold slots still to run", 1)[1].split("</section>", 1)[0]
    return showing, queue


def test_a_new_sale_shows_on_the_next_view(client, store, clock, buyers):
    assert "Nothing is showing yet" in sections(client)[0]
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    showing, queue = sections(client)
    assert "https://bob.test/" in showing and "#0" in queue
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, 2 * M)
    assert "#1" in sections(client)[1]


def test_the_live_slot_switches_at_the_exact_second_it_ends(client, store, clock, buyers):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, 2 * M)
    ends = gateway.get_slots(store, "sam", 0, 0, 0)[0]["endsAt"]
    clock.set(ends - 1)
    showing, queue = sections(client)
    assert "https://bob.test/" in showing and "#0" in queue
    clock.set(ends)
    showing, queue = sections(client)
    assert "https://cat.test/" in showing and "#0" not in queue


def test_a_queued_slot_goes_live_at_its_start_after_a_lapse(client, store, clock, buyers):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    clock.advance(30 * HOUR)  # slot 0 is over; nothing shows
    assert "Nothing is showing yet" in sections(client)[0]
    buy.buy_next_slot(store, clock, "cat", "sam", 0, 0, M)
    assert "https://cat.test/" in sections(client)[0]


def test_a_clock_that_steps_back_gets_the_earlier_answer(client, store, clock, buyers):
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, M)
    start = clock.now()
    clock.advance(30 * HOUR)
    assert "Nothing is showing yet" in sections(client)[0]
    clock.set(start + 60)  # another process's clock, a little behind
    assert "https://bob.test/" in sections(client)[0]


def test_the_kept_sections_are_bounded(store, clock, monkeypatch):
    monkeypatch.setattr(fragments, "CACHE_SIZE", 3)
    for i in range(5):
        gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
        campaign = gateway.get_campaign(store, "sam", i).value
        fragments.slots_part(store, "sam", i, campaign, clock.now())
    assert len(fragments._parts) == 3
