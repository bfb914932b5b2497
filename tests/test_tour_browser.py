"""README's Quick tour, step by step, in a real browser against a real regtest node.

The site runs in-process (live_server) pointed at the session's regtest node as `make run` points
it at its local one (tests/regtest.py `dev_chain`: DEBUG, the developer faucet, deposit addresses
from a keys wallet's tpub, a funded payout wallet). Where the tour waits for the worker (the
deposit watcher, the seller creditor) the test runs the same pass itself; the commands of the
second terminal run through call_command. Skips without chromium or bitcoind, saying which.
"""

from __future__ import annotations

import io
import os
import shutil
from io import StringIO

import pytest
from django.core.management import call_command
from PIL import Image

import docstore
from accounts.gateway import get_account
from accounts.money import fee_up, format_btc
from adspace.management.commands.seed_demo import DEMO_PASSWORD
from docstore import SystemClock
from tests.invariants import assert_audit_clean
from tests.test_browser import browser  # noqa: F401 - the fixture

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"),
]
PASSWORD = "a-long-tour-password-7"
BTC = 100_000_000


@pytest.fixture
def make_run(dev_chain, settings):
    """Step 1: what `make run` sets up (real time, so prices on the page are the server's)."""
    docstore.set_clock(SystemClock())
    settings.SALE_FEE_PERMILLE = 15
    dev_chain.fund_payout_wallet(2 * BTC)  # local_chain.start tops the payout wallet up
    return dev_chain


def click(page, button: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()
    page.wait_for_load_state()


def balance_shown(page, url: str) -> str:
    page.goto(f"{url}/account/")
    return page.locator(".balance .amount").inner_text()


def test_the_quick_tour_funds_buys_credits_the_seller_and_withdraws(
    live_server,
    make_run,
    browser,  # noqa: F811 - the browser fixture
    store,
    tmp_path,
):
    url = live_server.url
    # 2. seed_demo in a second terminal.
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert DEMO_PASSWORD in out.getvalue()

    # 3. Register.
    page = browser.new_page()
    page.goto(f"{url}/accounts/register/")
    page.fill("input[name=username]", "tourist")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/account/")

    # 4. Add funds: an address, test coins from the faucet, listed as pending.
    page.goto(f"{url}/account/funds/")
    click(page, "Get a deposit address")
    page.fill("[data-role=faucet] input[name=amount]", "1")
    click(page, "Send test coins to my address")
    page.wait_for_load_state()
    assert page.locator("tr[data-status=pending]").count() == 1
    assert balance_shown(page, url) == "0.00000000"

    # 5. Mine a block; the payment is credited ("Check now" does what the watcher does).
    page.goto(f"{url}/account/funds/")
    click(page, "Mine a block")
    page.wait_for_load_state()
    click(page, "Check now")
    page.wait_for_load_state()
    assert page.locator("tr[data-status=credited]").count() == 1
    assert balance_shown(page, url) == "1.00000000"

    # 6. Upload a 300x250 ad.
    image = tmp_path / "ad.png"
    buf = io.BytesIO()
    Image.new("RGB", (300, 250), (200, 80, 10)).save(buf, format="PNG")
    image.write_bytes(buf.getvalue())
    page.goto(f"{url}/account/ads/new/")
    page.fill("input[name=nickname]", "tour ad")
    page.fill("input[name=hover_text]", "The tour")
    page.fill("input[name=url]", "https://tour.test/")
    page.fill("input[name=width]", "300")
    page.fill("input[name=height]", "250")
    page.set_input_files("input[name=image]", str(image))
    page.click('form[enctype="multipart/form-data"] button[type=submit]')
    page.wait_for_load_state()
    assert "tour ad" in page.content()

    # 7. Buy ad space -> bob -> his 300x250 campaign -> Buy.
    call_command("credit_sellers", "--once", verbosity=0)  # the seed sales, as the worker would
    bob_before = get_account(store, "bob").value["balance"]
    page.goto(f"{url}/ads/buy-ad-space/bob/")
    page.click("a[href='/ads/buy-ad-space/bob/0']")
    page.wait_for_load_state()
    page.click("[data-role=buy-button]")
    page.wait_for_load_state()
    assert "You bought slot" in page.content()
    paid = BTC - get_account(store, "tourist").value["balance"]
    assert paid > 0

    # 8. bob, in a private window, sees the sale credited (after the worker's creditor).
    call_command("credit_sellers", "--once", verbosity=0)
    bob = browser.new_context().new_page()
    bob.goto(f"{url}/accounts/login/")
    bob.fill("input[name=username]", "bob")
    bob.fill("input[name=password]", DEMO_PASSWORD)
    bob.click("button[type=submit]")
    bob.wait_for_load_state()
    credited = paid - fee_up(paid, 15)
    assert balance_shown(bob, url) == format_btc(bob_before + credited)

    # 9. Withdraw 0.5 BTC to the node address the page shows.
    page.goto(f"{url}/account/withdraw/")
    to = page.locator("[data-role=faucet-address]").inner_text()
    page.fill("input[name=amount]", "0.5")
    page.fill("input[name=address]", to)
    page.click("button[name=action][value=withdraw]")
    page.wait_for_load_state()
    assert page.locator("tr[data-state=queued]").count() == 1

    # 10. process_withdrawals --execute --yes in the second terminal; the page shows it sent.
    call_command("process_withdrawals", "--execute", "--yes", stdout=StringIO())
    page.goto(f"{url}/account/withdraw/")
    assert page.locator("tr[data-state=sent]").count() == 1
    make_run.mine()
    assert make_run.received("miner", to) == BTC // 2

    # 11. The audit is clean.
    call_command("audit", stdout=StringIO())
    assert_audit_clean(store)
