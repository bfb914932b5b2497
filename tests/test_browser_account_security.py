"""A real browser (Debian's chromium, driven by Playwright) through the account's security:
a password change signs out another open session; a forgotten password is reset from the link
in the email; with 2FA turned on, a withdrawal asks for a code."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from django.core import mail

import docstore
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account
from accounts.models import User
from bitcoinkeys import withdrawals as w
from docstore import SystemClock
from tests.test_browser import CHROMIUM, browser, pytestmark  # noqa: F401 - the browser fixture
from tests.test_withdrawals import ADDR_A

PASSWORD = "a-long-browser-password-7"
NEW_PASSWORD = "another-long-password-8"


@pytest.fixture
def alice(live_server, store):
    # Real time: rate-limit windows and TOTP codes follow the wall clock the browser lives in.
    clock = SystemClock()
    docstore.set_clock(clock)
    User.objects.create_user(username="alice", password=PASSWORD)
    ensure_account(store, clock, "alice")
    return clock


def log_in(page, url, password=PASSWORD):
    page.goto(f"{url}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", password)
    page.click("form.stacked-form button[type=submit]")
    page.wait_for_load_state()


def test_changing_the_password_signs_out_another_open_session(live_server, alice, browser):  # noqa: F811 - the browser fixture
    url = live_server.url
    here, elsewhere = browser.new_context().new_page(), browser.new_context().new_page()
    for page in (here, elsewhere):
        log_in(page, url)
        page.wait_for_url(f"{url}/account/")

    here.goto(f"{url}/account/security/")
    here.click("text=Change your password")
    here.fill("input[name=old_password]", PASSWORD)
    here.fill("input[name=new_password1]", NEW_PASSWORD)
    here.fill("input[name=new_password2]", NEW_PASSWORD)
    here.click("form.stacked-form button[type=submit]")
    here.wait_for_url(f"{url}/account/security/")
    assert "Every other session was signed out" in here.content()

    here.goto(f"{url}/account/")
    assert here.url == f"{url}/account/"
    elsewhere.goto(f"{url}/account/")
    assert elsewhere.url.startswith(f"{url}/accounts/login/")


def test_a_forgotten_password_is_reset_from_the_emailed_link(live_server, alice, browser):  # noqa: F811 - the browser fixture
    url = live_server.url
    page = browser.new_context().new_page()
    log_in(page, url)
    page.goto(f"{url}/account/security/")
    page.fill("input[name=email]", "alice@example.com")
    page.click("text=Save address")
    page.wait_for_load_state()
    confirm = re.search(r"https?://\S+/account/email/verify/\S+", mail.outbox[-1].body).group(0)
    page.goto(confirm)
    assert "alice@example.com is confirmed" in page.content()
    page.click("button:has-text('Log out')")
    page.wait_for_load_state()

    page.goto(f"{url}/accounts/login/")
    page.click("text=Forgot your password?")
    page.fill("input[name=email]", "alice@example.com")
    page.click("form.stacked-form button[type=submit]")
    page.wait_for_url(f"{url}/accounts/password-reset/sent/")
    link = re.search(r"https?://\S+/accounts/reset/\S+", mail.outbox[-1].body).group(0)
    page.goto(link)
    page.fill("input[name=new_password1]", NEW_PASSWORD)
    page.fill("input[name=new_password2]", NEW_PASSWORD)
    page.click("form.stacked-form button[type=submit]")
    page.wait_for_url(f"{url}/accounts/reset/done/")

    log_in(page, url, NEW_PASSWORD)
    page.wait_for_url(f"{url}/account/")


def test_with_2fa_on_a_withdrawal_asks_for_a_code(live_server, alice, browser, store):  # noqa: F811 - the browser fixture
    url = live_server.url
    adjust_balance(store, alice, "alice", 10_000_000, "browser test")
    page = browser.new_context().new_page()
    log_in(page, url)
    page.goto(f"{url}/account/security/")
    page.click("text=Turn on two-factor authentication")
    page.wait_for_url(f"{url}/account/2fa/setup/")
    assert page.locator(".qr svg").count() == 1
    totp = pyotp.TOTP(page.locator("[data-role=totp-secret]").inner_text())
    page.fill("input[name=code]", totp.now())
    page.click("form.stacked-form button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("[data-role=recovery-codes] li").count() == 10

    page.goto(f"{url}/account/withdraw/")
    page.fill("input[name=amount]", "0.05")
    page.fill("input[name=address]", ADDR_A)
    page.click("button[value=withdraw]")
    page.wait_for_load_state()
    assert "Enter the current code from your authenticator app" in page.content()
    assert w.user_withdrawals(store, "alice") == []

    # The enrolment used this step's code up; the next step's is accepted (clock drift).
    page.fill("input[name=code]", totp.at(time.time() + 30))
    page.click("button[value=withdraw]")
    page.wait_for_load_state()
    assert "Withdrawal #0 of 0.05000000 BTC queued" in page.content()
    assert len(w.user_withdrawals(store, "alice")) == 1
