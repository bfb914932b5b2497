"""Issue 19's whole promise in a real browser (Debian's chromium, driven by Playwright): a buyer
places a standing order a few seconds below the current price and closes the page; the worker's
executor buys the slot at the limit's second; another open page sees the sale without a reload;
the home page lists the campaign at its new price; the orders tab shows the order bought."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from accounts.gateway import get_account
from accounts.money import format_btc
from adspace import gateway, order_exec, orders, pricing
from docstore import SystemClock
from tests.test_browser import CHROMIUM, browser  # noqa: F401 - the fixture
from tests.test_live_updates_browser import SEEN_WITHIN_MS, market, sats, signed_in_page  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]

AHEAD_SECONDS = 5


def run_worker_executor(store, stop: threading.Event) -> None:
    """The worker's order task as run_workers runs it: on the real clock, pass after pass."""
    clock = SystemClock()
    while not stop.is_set():
        order_exec.run_executor(store, clock)
        stop.wait(0.2)


def test_an_order_placed_in_a_browser_buys_at_its_limit_with_the_page_closed(
    live_server,
    market,  # noqa: F811 - the fixture
    browser,  # noqa: F811 - the fixture
    store,
):
    n = market
    campaign = gateway.get_campaign(store, "sam", n).value
    last, minimum = campaign["last"], campaign["minPrice"]
    limit = pricing.current_price(minimum, last, int(time.time()) + AHEAD_SECONDS)
    due = pricing.due_at(minimum, last, limit)

    watcher = signed_in_page(browser, live_server, "erin")
    watcher.goto(f"{live_server.url}/ads/buy-ad-space/sam/{n}")
    watcher.evaluate("window.__notReloaded = true")
    assert watcher.locator(".queue tbody tr").count() == 1

    buyer = signed_in_page(browser, live_server, "carol")
    buyer.goto(f"{live_server.url}/ads/buy-ad-space/sam/{n}")
    buyer.fill("[data-role=order-form] input[name=limit]", format_btc(limit))
    buyer.click("[data-role=order-form] button[type=submit]")
    buyer.wait_for_load_state()
    assert "1 order waiting" in buyer.locator("[data-role=order-counts]").inner_text()
    buyer.context.close()  # the buyer walks away
    assert time.time() < due, "the order came due before it was placed: the machine is too slow"

    stop = threading.Event()
    executor = threading.Thread(target=run_worker_executor, args=(store, stop), daemon=True)
    executor.start()
    try:
        # The watcher's page shows the sale (a second queued slot) without reloading.
        watcher.locator(".queue tbody tr").nth(1).wait_for(
            timeout=(due - time.time()) * 1000 + SEEN_WITHIN_MS
        )
    finally:
        stop.set()
        executor.join(30)
    assert watcher.evaluate("window.__notReloaded") is True
    assert watcher.locator("[data-live-text=slotsSold]").inner_text() == "2"

    sale = gateway.get_campaign(store, "sam", n).value["last"]
    assert sale["slot"] == 1 and sale["price"] <= limit
    # Bought at the limit's second: the price of that second (never a later, lower one).
    assert due <= sale["purchasedAt"] <= due + 2
    assert sale["price"] == pricing.current_price(minimum, last, sale["purchasedAt"])
    assert 100_000_000 - get_account(store, "carol").value["balance"] == sale["price"]
    (placed,) = [o for o in orders.user_orders(store, "carol", None, 10)[0]]
    assert placed["state"] == "bought" and placed["slot"] == 1

    # The home page lists the campaign at its new price (twice the sale's, falling) within seconds.
    home = signed_in_page(browser, live_server, "erin")
    deadline = time.monotonic() + 5
    while True:
        home.goto(f"{live_server.url}/")
        item = home.locator(f"#cheapest li:has(a[href='/ads/buy-ad-space/sam/{n}'])")
        shown = item.locator(".amount").inner_text() if item.count() else ""
        if shown and sats(re.sub(r"[^0-9.]", "", shown)) > limit:
            break
        assert time.monotonic() < deadline, f"home page still lists {shown!r}"
        time.sleep(0.5)

    # The orders tab, in a fresh browser session of the buyer's: bought, slot #1, at its price.
    tab = signed_in_page(browser, live_server, "carol")
    tab.goto(f"{live_server.url}/account/orders/")
    row = tab.locator("tr.order").first
    assert row.get_attribute("data-state") == "bought"
    state = row.locator("[data-role=state]").inner_text()
    assert "slot #1" in state and format_btc(sale["price"]) in state
