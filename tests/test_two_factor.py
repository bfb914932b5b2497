"""Two-factor authentication (TOTP): enrolment with a QR code and a confirming code, recovery
codes shown once, the login's second step, codes that work once, throttled attempts, withdrawals
that need a code, and staff who need 2FA to reach the admin."""

from __future__ import annotations

import re

import pyotp
import pytest
from django.test import Client

from accounts import twofactor
from accounts.gateway import get_account
from accounts.models import User
from bitcoinkeys import withdrawals as w
from tests.conftest import PASSWORD
from tests.test_withdrawals import (
    ADDR_A,
    _withdrawals_registered,  # noqa: F401  (autouse: registers finishers, recovery and audit)
)

pytestmark = pytest.mark.django_db

SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
CODE_PAGE = "/accounts/login/code/"


def code_at(clock, offset_steps: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(clock.now() + offset_steps * 30)


@pytest.fixture
def alice(make_user):
    return make_user("alice", balance=10_000_000)


@pytest.fixture
def alice_2fa(alice, clock):
    alice.totp_secret = SECRET
    codes, alice.recovery_code_hashes = twofactor.new_recovery_codes()
    alice.save()
    alice.recovery_codes = codes
    return alice


def password_step(c: Client, username="alice", next_url=""):
    data = {"username": username, "password": PASSWORD}
    url = "/accounts/login/" + (f"?next={next_url}" if next_url else "")
    return c.post(url, data)


def signed_in(c: Client) -> bool:
    return "_auth_user_id" in c.session


# --- enrolment ---


def test_enrolment_shows_a_qr_code_and_turns_on_only_with_a_right_code(client, alice, clock):
    client.force_login(alice)
    page = client.get("/account/2fa/setup/").content.decode()
    assert "<svg" in page
    assert " style=" not in page and "<script>" not in page  # the strict CSP holds here too
    secret = re.search(r'data-role="totp-secret">([A-Z2-7]+)<', page).group(1)
    wrong = client.post("/account/2fa/setup/", {"code": "000000"})
    assert wrong.status_code == 400 and "not right" in wrong.content.decode()
    assert not User.objects.get(username="alice").has_2fa

    right = client.post("/account/2fa/setup/", {"code": pyotp.TOTP(secret).at(clock.now())})
    assert right.status_code == 200
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", right.content.decode())
    assert len(codes) == 10 and len(set(codes)) == 10
    user = User.objects.get(username="alice")
    assert user.totp_secret == secret
    # Stored hashed only, and never shown again.
    assert not any(code in str(user.recovery_code_hashes) for code in codes)
    again = client.get("/account/2fa/setup/", follow=True).content.decode()
    assert not any(code in again for code in codes)
    assert "recovery codes left" in client.get("/account/security/").content.decode()


# --- the login's second step ---


def test_a_right_password_alone_does_not_log_a_2fa_user_in(client, alice_2fa, clock):
    response = password_step(client, next_url="/account/withdraw/")
    assert response.status_code == 302 and response.url == CODE_PAGE
    assert not signed_in(client)
    assert client.get("/account/").status_code == 302

    assert client.post(CODE_PAGE, {"code": "123456"}).status_code == 400
    assert not signed_in(client)
    done = client.post(CODE_PAGE, {"code": code_at(clock)})
    assert done.status_code == 302 and done.url == "/account/withdraw/"
    assert signed_in(client)


def test_a_code_works_once_even_within_its_window(alice_2fa, clock):
    first, second = Client(), Client()
    password_step(first)
    password_step(second)
    code = code_at(clock)
    assert first.post(CODE_PAGE, {"code": code}).status_code == 302
    assert second.post(CODE_PAGE, {"code": code}).status_code == 400
    # An older step's code is refused once a newer one was used.
    assert second.post(CODE_PAGE, {"code": code_at(clock, -1)}).status_code == 400
    clock.advance(30)
    assert second.post(CODE_PAGE, {"code": code_at(clock)}).status_code == 302


def test_a_code_one_step_off_is_accepted_for_clock_drift_but_not_two(client, alice_2fa, clock):
    password_step(client)
    assert client.post(CODE_PAGE, {"code": code_at(clock, 2)}).status_code == 400
    assert client.post(CODE_PAGE, {"code": code_at(clock, 1)}).status_code == 302


def test_a_recovery_code_logs_in_once(alice_2fa, clock):
    code = alice_2fa.recovery_codes[0]
    c = Client()
    password_step(c)
    assert c.post(CODE_PAGE, {"code": code.upper()}).status_code == 302
    again = Client()
    password_step(again)
    assert again.post(CODE_PAGE, {"code": code}).status_code == 400
    assert len(User.objects.get(username="alice").recovery_code_hashes) == 9


def test_code_guessing_is_throttled(client, alice_2fa, clock, settings):
    settings.OTP_RATE_LIMIT = 3
    password_step(client)
    for guess in ("111111", "222222", "333333"):
        assert client.post(CODE_PAGE, {"code": guess}).status_code == 400
    response = client.post(CODE_PAGE, {"code": code_at(clock)})
    assert response.status_code == 429 and not signed_in(client)


def test_the_second_step_expires(client, alice_2fa, clock, settings):
    password_step(client)
    clock.advance(settings.OTP_LOGIN_SECONDS + 1)
    response = client.post(CODE_PAGE, {"code": code_at(clock)})
    assert response.status_code == 302 and response.url == "/accounts/login/"
    assert not signed_in(client)


def test_the_code_page_without_a_password_step_goes_back_to_login(client, alice_2fa, clock):
    response = client.post(CODE_PAGE, {"code": code_at(clock)})
    assert response.status_code == 302 and response.url == "/accounts/login/"
    assert not signed_in(client)


# --- withdrawals ---


def withdraw(c: Client, code: str | None):
    data = {"action": "withdraw", "amount": "0.05", "address": ADDR_A}
    if code is not None:
        data["code"] = code
    return c.post("/account/withdraw/", data)


def test_a_2fa_user_withdraws_only_with_a_current_code(client, alice_2fa, store, clock):
    client.force_login(alice_2fa)
    assert 'name="code"' in client.get("/account/withdraw/").content.decode()
    for code in (None, "", "000000"):
        response = withdraw(client, code)
        assert response.status_code == 400 and "authenticator" in response.content.decode()
    assert w.user_withdrawals(store, "alice") == []
    assert get_account(store, "alice").value["balance"] == 10_000_000

    code = code_at(clock)
    assert withdraw(client, code).status_code == 302
    assert len(w.user_withdrawals(store, "alice")) == 1
    assert withdraw(client, code).status_code == 400  # the same code again
    assert len(w.user_withdrawals(store, "alice")) == 1


def test_a_user_without_2fa_withdraws_without_a_code(client, alice, store):
    client.force_login(alice)
    assert 'name="code"' not in client.get("/account/withdraw/").content.decode()
    assert withdraw(client, None).status_code == 302


# --- turning it off ---


def test_turning_2fa_off_needs_the_password_and_a_code(client, alice_2fa, clock):
    client.force_login(alice_2fa)
    url = "/account/2fa/disable/"
    bad = client.post(url, {"password": "wrong", "code": code_at(clock)})
    assert bad.status_code == 400
    assert client.post(url, {"password": PASSWORD, "code": "000000"}).status_code == 400
    assert User.objects.get(username="alice").has_2fa
    assert client.post(url, {"password": PASSWORD, "code": code_at(clock)}).status_code == 302
    user = User.objects.get(username="alice")
    assert not user.has_2fa and user.recovery_code_hashes == []


# --- staff ---


def test_staff_without_2fa_are_sent_to_turn_it_on_before_the_admin(client, make_user):
    boss = make_user("boss", staff=True)
    boss.totp_secret = ""
    boss.save()
    client.force_login(boss)
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0] == "/account/2fa/setup/"
    assert client.get("/admin/accounts/list/").status_code == 302


def test_staff_cannot_turn_2fa_off(client, staff, clock):
    from tests.conftest import STAFF_TOTP_SECRET

    client.force_login(staff)
    code = pyotp.TOTP(STAFF_TOTP_SECRET).at(clock.now())
    response = client.post("/account/2fa/disable/", {"password": PASSWORD, "code": code})
    assert response.status_code == 403
    assert User.objects.get(username="staffer").has_2fa


def test_a_staff_admin_login_asks_for_the_code(client, staff, clock):
    from tests.conftest import STAFF_TOTP_SECRET

    data = {"username": "staffer", "password": PASSWORD, "next": "/admin/accounts/list/"}
    response = client.post("/admin/login/", data)
    assert response.status_code == 302 and response.url == CODE_PAGE
    assert client.get("/admin/").status_code == 302
    code = pyotp.TOTP(STAFF_TOTP_SECRET).at(clock.now())
    response = client.post(CODE_PAGE, {"code": code})
    assert response.url == "/admin/accounts/list/"
    assert client.get("/admin/accounts/list/").status_code == 200
