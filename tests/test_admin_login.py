"""The admin's login goes through the same throttle as the site's: staff passwords guard money."""

from __future__ import annotations

import pyotp
import pytest

from accounts.models import User
from tests.conftest import PASSWORD, STAFF_TOTP_SECRET

pytestmark = pytest.mark.django_db

ADMIN_LOGIN = "/admin/login/"
SITE_LOGIN = "/accounts/login/"
TOO_MANY = "Too many attempts; try again in a few minutes."


def admin_log_in(client, username, password=PASSWORD, **extra):
    data = {"username": username, "password": password, "next": "/admin/"}
    return client.post(ADMIN_LOGIN, data, **extra)


def logged_in_as(client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id).username if user_id else None


def test_the_right_password_takes_staff_to_the_code_then_in(client, clock, staff):
    response = admin_log_in(client, "staffer")
    assert response.status_code == 302 and response.url == "/accounts/login/code/"
    assert logged_in_as(client) is None  # the password alone is not a login
    code = pyotp.TOTP(STAFF_TOTP_SECRET).at(clock.now())
    response = client.post("/accounts/login/code/", {"code": code})
    assert response.status_code == 302 and response.url == "/admin/"
    assert logged_in_as(client) == "staffer"
    assert client.get("/admin/").status_code == 200


def test_guessing_a_staff_password_is_cut_off_with_429(client, staff, settings):
    settings.LOGIN_RATE_LIMIT = 3
    for i in range(3):
        assert admin_log_in(client, "staffer", f"guess{i}").status_code == 200
    response = admin_log_in(client, "staffer")  # even the right password, once over the limit
    assert response.status_code == 429
    assert TOO_MANY in response.content.decode()
    assert 'name="password"' in response.content.decode()  # the form again, not an error page
    assert "no-cache" in response["Cache-Control"]
    assert logged_in_as(client) is None


def test_site_and_admin_logins_share_one_budget(client, staff, settings):
    settings.LOGIN_RATE_LIMIT = 3
    for i in range(2):
        client.post(SITE_LOGIN, {"username": "staffer", "password": f"guess{i}"})
    assert admin_log_in(client, "staffer", "guess2").status_code == 200
    assert admin_log_in(client, "staffer").status_code == 429
    response = client.post(SITE_LOGIN, {"username": "staffer", "password": PASSWORD})
    assert response.status_code == 429
    assert logged_in_as(client) is None


def test_the_admin_limit_resets_with_the_next_window(client, clock, staff, settings):
    settings.LOGIN_RATE_LIMIT = 1
    admin_log_in(client, "staffer", "nope")
    assert admin_log_in(client, "staffer").status_code == 429
    clock.advance(settings.RATE_LIMIT_WINDOW_SECONDS)
    response = admin_log_in(client, "staffer")
    assert response.status_code == 302 and response.url == "/accounts/login/code/"


def test_staff_signing_in_rightly_never_use_up_the_budget(client, staff, settings):
    settings.LOGIN_RATE_LIMIT = 2
    for _ in range(5):
        response = admin_log_in(client, "staffer")
        assert response.status_code == 302 and response.url == "/accounts/login/code/"
        client.post("/accounts/logout/")
    assert admin_log_in(client, "staffer", "wrong").status_code == 200
    assert admin_log_in(client, "staffer").status_code == 302


def test_wrong_admin_passwords_past_the_username_limit_are_answered_slowly(
    client, staff, settings, monkeypatch
):
    from accounts import ratelimit

    pauses = []
    monkeypatch.setattr(ratelimit, "_pause", pauses.append)
    settings.LOGIN_RATE_LIMIT = 2
    admin_log_in(client, "staffer", "wrong1", REMOTE_ADDR="10.0.0.1")
    admin_log_in(client, "staffer", "wrong2", REMOTE_ADDR="10.0.0.2")
    assert pauses == []
    admin_log_in(client, "staffer", "wrong3", REMOTE_ADDR="10.0.0.3")
    assert pauses == [settings.LOGIN_FAILURE_DELAY_SECONDS]
