"""A real browser through a seller's review: a titled campaign, a sale, a rejection with its reason,
the buyer refunded, the embed back to its placeholder, the seller's webhook receiver sent the signed
events in order, and the books clean."""

from __future__ import annotations

import pytest

import docstore
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from accounts.models import User
from adspace import webhooks
from docstore import SystemClock
from tests.invariants import assert_audit_clean
from tests.test_browser import browser, png_file, pytestmark  # noqa: F401 - the browser fixture
from tests.test_webhooks import receiver, verify  # noqa: F401 - the receiver fixture

PASSWORD = "a-long-review-password-7"
FUNDS = 5_000_000


@pytest.fixture
def people(live_server, store, settings):
    # Real time: the price the page shows at the click is the price the server computes.
    docstore.set_clock(SystemClock())
    settings.REVIEW_HOURS = 24
    clock = docstore.get_clock()
    for name in ("sally", "bert"):
        User.objects.create_user(username=name, password=PASSWORD)
        ensure_account(store, clock, name)
    adjust_balance(store, clock, "bert", FUNDS, "browser test funds")
    return clock


def log_in(page, url: str, username: str) -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{url}/account/")


def test_a_seller_rejects_a_sold_ad_and_the_buyer_is_refunded_with_the_reason(
    live_server,
    people,
    browser,  # noqa: F811 - the browser fixture
    store,
    tmp_path,
    receiver,  # noqa: F811 - the receiver fixture
):
    url = live_server.url
    seller = browser.new_context().new_page()
    log_in(seller, url, "sally")
    seller.goto(f"{url}/account/webhook/")
    seller.fill("input[name=url]", receiver.url)
    seller.click("form:has(input[value=url]) button[type=submit]")
    seller.wait_for_load_state()
    secret = seller.locator("code.secret").inner_text()
    assert len(secret) >= 32
    seller.goto(f"{url}/ads/sell-ad-space/")
    seller.fill("input[name=title]", "Sally's knitting weekly")
    seller.fill("input[name=site_url]", "https://knitting.test/")
    seller.fill("textarea[name=description]", "Patterns and yarn, every Friday.")
    seller.fill("input[name=min_price]", "0.003")
    seller.fill("input[name=slot_hours]", "24")
    seller.fill("input[name=width]", "300")
    seller.fill("input[name=height]", "250")
    seller.click("form.campaign-form button[type=submit]")
    seller.wait_for_load_state()
    assert "Sally's knitting weekly" in seller.content()

    buyer = browser.new_context().new_page()
    log_in(buyer, url, "bert")
    buyer.goto(f"{url}/account/ads/new/")
    buyer.fill("input[name=nickname]", "bert's shoes")
    buyer.fill("input[name=hover_text]", "Shoes")
    buyer.fill("input[name=url]", "https://bert.test/")
    buyer.fill("input[name=width]", "300")
    buyer.fill("input[name=height]", "250")
    buyer.set_input_files("input[name=image]", str(png_file(tmp_path, 300, 250)))
    buyer.click('form[enctype="multipart/form-data"] button[type=submit]')
    buyer.wait_for_load_state()
    buyer.goto(f"{url}/ads/buy-ad-space/sally/0")
    assert "Sally&#39;s knitting weekly" in buyer.content() or "Sally's knitting weekly" in (
        buyer.content()
    )
    buyer.click("[data-role=buy-button]")
    buyer.wait_for_load_state()
    assert "You bought slot #0" in buyer.content()
    paid = FUNDS - get_account(store, "bert").value["balance"]
    assert paid >= 300_000
    embed = browser.new_context().new_page()
    embed.goto(f"{url}/embed/sally/0")
    assert embed.locator("a.ad").count() == 1  # shown at once, while in review

    seller.goto(f"{url}/account/sales/")
    seller.fill("input[name=reason]", "Shoes are off-topic for a knitting site")
    seller.click("button.danger")
    seller.wait_for_load_state()
    assert "rejected" in seller.content().lower()

    buyer.goto(f"{url}/account/purchases/")
    html = buyer.content()
    assert "Shoes are off-topic for a knitting site" in html
    assert "the full price was refunded" in html
    buyer.goto(f"{url}/account/")
    assert "Shoes are off-topic for a knitting site" in buyer.content()
    assert get_account(store, "bert").value["balance"] == FUNDS

    embed.goto(f"{url}/embed/sally/0")
    assert embed.locator("a.ad").count() == 0  # the placeholder again
    assert "buy this space" in embed.content()
    assert get_account(store, "sally").value["balance"] == 0

    # The worker delivers the seller's events: signed, each with its id, in the order they happened.
    webhooks.deliver_pending(store, people)
    assert receiver.types() == ["sale", "slot.started", "review.rejected", "refund"]
    for r in receiver.received:
        assert verify(secret, r["headers"], r["body"])
    assert_audit_clean(store)
