"""A real browser (Debian's chromium, driven by Playwright) through the whole buy flow."""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest
from django.core.management import call_command
from PIL import Image

import docstore
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from adspace import buy, gateway
from docstore import FixedClock, SystemClock

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]
PASSWORD = "a-long-browser-password-7"


@pytest.fixture
def browser():
    # The live server runs in a thread; Playwright's sync API must not share the test's loop.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


@pytest.fixture
def live_market(live_server, store):
    # Real time, so the price the page shows at the click is the price the server computes.
    clock = SystemClock()
    docstore.set_clock(clock)
    ensure_account(store, clock, "sam")
    n = gateway.create_campaign(store, clock, "sam", 300_000, 24, 300, 250, [])
    ensure_account(store, clock, "dan")
    adjust_balance(store, clock, "dan", 10_000_000, "funding")
    gateway.create_filler(store, clock, "dan", "dan ad", "h", "https://dan.test/", 300, 250, "0")
    buy.buy_next_slot(store, FixedClock(clock.now() - 600), "dan", "sam", n, 0, 10**12)
    return n


def png_file(tmp_path, width, height):
    path = tmp_path / "ad.png"
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


def price_shown(page) -> str:
    return page.locator("#price-box [data-role=price]").first.inner_text()


def test_a_new_user_registers_uploads_watches_the_price_fall_and_buys(
    live_server, live_market, browser, store, tmp_path
):
    page = browser.new_page()
    url = live_server.url
    page.goto(f"{url}/accounts/register/")
    page.fill("input[name=username]", "carol")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/account/")

    call_command("adjust_balance", "carol", "5000000", reason="browser test", verbosity=0)
    page.reload()
    assert page.locator(".balance .amount").inner_text() == "0.05000000"

    page.goto(f"{url}/account/ads/new/")
    page.fill("input[name=nickname]", "my first ad")
    page.fill("input[name=hover_text]", "Carol's <b>shop</b>")
    page.fill("input[name=url]", "https://carol.test/")
    page.fill("input[name=width]", "300")
    page.fill("input[name=height]", "250")
    page.set_input_files("input[name=image]", str(png_file(tmp_path, 300, 250)))
    page.click('form[enctype="multipart/form-data"] button[type=submit]')
    page.wait_for_load_state()
    assert "my first ad" in page.content()

    page.goto(f"{url}/ads/buy-ad-space/sam/{live_market}")
    first = price_shown(page)
    time.sleep(2.5)
    later = price_shown(page)
    assert float(later) < float(first), f"price did not fall: {first} -> {later}"

    page.click("[data-role=buy-button]")
    page.wait_for_load_state()
    html = page.content()
    assert "You bought slot #1" in html, html[:3000]
    assert page.locator(".queue tbody tr").count() >= 1
    paid = 5_000_000 - get_account(store, "carol").value["balance"]
    assert 300_000 <= paid <= 600_000
    page.goto(f"{url}/account/")
    assert page.locator(".balance .amount").inner_text() != "0.05000000"
