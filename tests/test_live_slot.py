"""serving.live_slot: the slot showing at a moment, its boundaries, and its per-process cache."""

from __future__ import annotations

from adspace import buy, gateway, serving
from tests.conftest import T0
from tests.test_buy import make_market

HUGE = 10**12
DAY = 24 * 3600


class CountingStore:
    """The test store, counting reads, to show that a cached answer costs one campaign get."""

    def __init__(self, inner):
        self.inner, self.gets, self.multi = inner, 0, 0
        self.prefix = inner.prefix

    def get(self, key):
        self.gets += 1
        return self.inner.get(key)

    def get_fields(self, key, fields):
        self.gets += 1
        return self.inner.get_fields(key, fields)

    def get_multi(self, keys):
        self.multi += 1
        return self.inner.get_multi(keys)


def sell(store, clock, n, buyer="bob"):
    return buy.buy_next_slot(store, clock, buyer, "sam", n, 0, HUGE)


def live(store, n, t):
    found = serving.live_slot(store, "sam", n, t)
    return None if found is None else found[0]


def test_a_campaign_with_no_sale_shows_nothing(store, clock):
    n = make_market(store, clock)
    assert serving.live_slot(store, "sam", n, T0) is None


def test_an_unknown_campaign_shows_nothing(store, clock):
    assert serving.live_slot(store, "nobody", 0, T0) is None


def test_the_slot_shows_until_one_second_before_its_end(store, clock):
    n = make_market(store, clock)
    sale = sell(store, clock, n)
    index, slot = serving.live_slot(store, "sam", n, T0)
    assert index == 0 and slot["startsAt"] == T0 and slot["filler"] == "filler::bob::0"
    assert live(store, n, sale.ends_at - 1) == 0
    assert live(store, n, sale.ends_at) is None
    assert live(store, n, sale.ends_at + 1) is None


def test_a_slot_is_served_30_seconds_before_it_starts(store, clock):
    n = make_market(store, clock)
    first, second = sell(store, clock, n), sell(store, clock, n, "cat")
    assert second.starts_at == first.ends_at
    assert live(store, n, second.starts_at - 31) == 0
    assert live(store, n, second.starts_at - 30) == 1
    assert live(store, n, second.starts_at) == 1
    assert live(store, n, second.ends_at - 1) == 1
    assert live(store, n, second.ends_at) is None


def test_the_first_slot_early_switch_applies_too(store, clock):
    n = make_market(store, clock)
    sell(store, clock, n)
    assert live(store, n, T0 - 31) is None
    assert live(store, n, T0 - 30) == 0


def test_a_queue_of_several_slots_shows_each_in_turn(store, clock):
    n = make_market(store, clock)
    sales = [sell(store, clock, n, ("bob", "cat")[i % 2]) for i in range(4)]
    for sale in sales:
        assert live(store, n, sale.starts_at - 30) == sale.slot
        assert live(store, n, sale.ends_at - 31) == sale.slot
    assert live(store, n, sales[-1].ends_at - 1) == 3
    assert live(store, n, sales[-1].ends_at) is None


def test_a_deep_queue_is_walked_back_past_the_read_window(store, clock, monkeypatch):
    monkeypatch.setattr(serving, "SLOT_WINDOW", 2)
    n = make_market(store, clock, funds=10**11)
    sales = [sell(store, clock, n) for _ in range(9)]
    assert live(store, n, T0) == 0
    assert live(store, n, sales[5].starts_at) == 5


def test_a_lapsed_queue_shows_nothing_until_the_next_sale(store, clock):
    n = make_market(store, clock)
    first = sell(store, clock, n)
    clock.set(first.ends_at + 6 * 3600)
    assert live(store, n, clock.now()) is None
    second = sell(store, clock, n, "cat")
    assert second.starts_at == clock.now()
    # The cached "nothing" is dropped because the campaign's last sale changed.
    assert live(store, n, clock.now()) == 1
    # Between the two slots nothing showed.
    assert live(store, n, first.ends_at + 60) is None


def test_a_cached_answer_follows_a_new_sale(store, clock):
    n = make_market(store, clock)
    first = sell(store, clock, n)
    assert live(store, n, first.ends_at - 31) == 0  # cached until the end of slot 0
    sell(store, clock, n, "cat")
    # Without invalidation the cache would say slot 0 until its end; slot 1 switches early.
    assert live(store, n, first.ends_at - 30) == 1


def test_a_cached_answer_costs_one_campaign_read(store, clock):
    n = make_market(store, clock)
    sell(store, clock, n)
    sell(store, clock, n, "cat")
    counting = CountingStore(store)
    assert serving.live_slot(counting, "sam", n, T0)[0] == 0
    assert counting.multi >= 1
    counting.gets = counting.multi = 0
    for t in range(T0, T0 + 1000, 10):
        assert serving.live_slot(counting, "sam", n, t)[0] == 0
    assert (counting.gets, counting.multi) == (100, 0)


def test_a_clock_behind_the_cached_answer_recomputes(store, clock):
    n = make_market(store, clock)
    first, second = sell(store, clock, n), sell(store, clock, n, "cat")
    assert live(store, n, second.starts_at) == 1
    assert live(store, n, first.starts_at) == 0


def test_the_cache_is_bounded(store, clock, monkeypatch):
    monkeypatch.setattr(serving, "CACHE_SIZE", 3)
    make_market(store, clock)
    campaigns = [
        gateway.create_campaign(store, clock, "sam", 1000, 1, 100, 100, []) for _ in range(5)
    ]
    for n in campaigns:
        buy.buy_next_slot(store, clock, "bob", "sam", n, 1, HUGE)
    for n in campaigns:
        assert live(store, n, T0) == 0
    assert serving.cache_size() == 3
    # The oldest entries were dropped, not wrong: asking again recomputes them.
    assert live(store, campaigns[0], T0) == 0


def test_a_sale_the_campaign_has_not_caught_up_with_is_served(store, clock):
    n = make_market(store, clock)
    first = sell(store, clock, n)
    # A crash after the slot insert, before the campaign's `last` moved (step 5 of the buy).
    lagging = {
        "buyer": "cat", "filler": "filler::cat::0", "price": 2 * 100_000,
        "purchasedAt": T0, "startsAt": first.ends_at, "endsAt": first.ends_at + DAY,
        "token": "t",
    }  # fmt: skip
    store.insert(gateway.slot_key("sam", n, 1), lagging)
    assert gateway.get_campaign(store, "sam", n).value["last"]["slot"] == 0
    assert live(store, n, first.ends_at + 10) == 1


def test_the_answer_says_until_when_it_holds(store, clock):
    n = make_market(store, clock)
    first = sell(store, clock, n)
    assert serving.showing(store, "sam", n, T0).until == first.ends_at
    second = sell(store, clock, n, "cat")
    assert serving.showing(store, "sam", n, T0).until == second.starts_at - 30
    assert serving.showing(store, "sam", n, second.starts_at).until == second.ends_at
    assert serving.showing(store, "sam", n, second.ends_at).until is None
