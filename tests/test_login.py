from __future__ import annotations

import pytest

from accounts.gateway import get_account
from accounts.models import User
from docstore import NotFound
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

URL = "/accounts/login/"
WRONG = "The username or password is incorrect."


def log_in(client, username, password=PASSWORD, **extra):
    return client.post(URL, {"username": username, "password": password}, **extra)


def logged_in_as(client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id).username if user_id else None


def test_the_form_is_shown(client):
    response = client.get(URL)
    assert response.status_code == 200
    assert b'name="username"' in response.content and b'name="password"' in response.content


def test_the_right_password_logs_in_and_goes_to_the_account(client, seller):
    response = log_in(client, "seller")
    assert response.status_code == 302 and response.url == "/account/"
    assert logged_in_as(client) == "seller"


def test_login_follows_a_safe_next_but_not_an_offsite_one(client, seller):
    response = client.post(
        URL + "?next=/ads/sell-ad-space/", {"username": "seller", "password": PASSWORD}
    )
    assert response.url == "/ads/sell-ad-space/"
    client.post("/accounts/logout/")
    response = client.post(
        URL + "?next=https://evil.example/", {"username": "seller", "password": PASSWORD}
    )
    assert response.url == "/account/"


@pytest.mark.parametrize("typed", ["SELLER", "Seller", "sElLeR"])
def test_the_username_is_case_insensitive(client, seller, typed):
    assert log_in(client, typed).status_code == 302
    assert logged_in_as(client) == "seller"


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("seller", "wrong-password-1"),
        ("nobody", PASSWORD),
        ("sel ler", PASSWORD),
        ("seller::x", PASSWORD),
        ("s\u00e9ller", PASSWORD),
        ("seller%", PASSWORD),
        ("_eller", PASSWORD),
    ],
)
def test_a_wrong_login_gets_one_generic_message(client, seller, username, password):
    response = log_in(client, username, password)
    assert response.status_code == 200
    assert WRONG in response.content.decode()
    assert logged_in_as(client) is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"username": "seller"},
        {"password": PASSWORD},
        {"username": "a" * 10_000, "password": PASSWORD},
        {"username": "seller\x00", "password": PASSWORD},
        {"username": "seller", "password": "x" * 10_000},
    ],
)
def test_odd_login_input_is_refused_without_a_crash(client, seller, data):
    response = client.post(URL, data)
    assert response.status_code == 200
    assert logged_in_as(client) is None


def test_an_inactive_user_cannot_log_in(client, seller):
    seller.is_active = False
    seller.save()
    response = log_in(client, "seller")
    assert response.status_code == 200
    assert logged_in_as(client) is None


def test_the_session_key_changes_at_login(client, seller):
    session = client.session
    session["seen"] = True
    session.save()
    before = client.cookies["sessionid"].value
    log_in(client, "seller")
    assert client.cookies["sessionid"].value != before
    assert logged_in_as(client) == "seller"


def test_a_user_left_without_an_account_doc_gets_one_at_login(client, store):
    # A crash between the user row and ensure_account at registration.
    User.objects.create_user(username="ghost", password=PASSWORD)
    with pytest.raises(NotFound):
        get_account(store, "ghost")
    assert log_in(client, "GHOST").status_code == 302
    assert get_account(store, "ghost").value["balance"] == 0


def test_too_many_attempts_from_one_address_get_429(client, seller, settings):
    settings.LOGIN_RATE_LIMIT = 3
    for i in range(3):
        assert log_in(client, f"guess{i}", "nope").status_code == 200
    response = log_in(client, "seller")
    assert response.status_code == 429
    assert "Too many attempts; try again in a few minutes." in response.content.decode()
    assert logged_in_as(client) is None


def test_failures_on_one_username_never_lock_out_the_right_password(client, seller, settings):
    settings.LOGIN_RATE_LIMIT = 3
    for i in range(10):
        log_in(client, "Seller", "nope", REMOTE_ADDR=f"10.0.0.{i}")
    response = log_in(client, "seller", REMOTE_ADDR="10.0.0.99")
    assert response.status_code == 302
    assert logged_in_as(client) == "seller"


def test_wrong_passwords_past_a_usernames_failures_are_answered_slowly(
    client, seller, settings, monkeypatch
):
    settings.LOGIN_RATE_LIMIT = 3
    settings.LOGIN_FAILURE_DELAY_SECONDS = 2.5
    pauses = []
    monkeypatch.setattr("accounts.ratelimit._pause", pauses.append)
    for i in range(3):
        assert log_in(client, "seller", "nope", REMOTE_ADDR=f"10.0.1.{i}").status_code == 200
    assert pauses == []
    # Each from a fresh address, so only the username's count can slow them down.
    assert log_in(client, "seller", "nope", REMOTE_ADDR="10.0.1.50").status_code == 200
    assert pauses == [2.5]
    # Another username is not slowed down.
    assert log_in(client, "outsider", "nope", REMOTE_ADDR="10.0.1.51").status_code == 200
    assert pauses == [2.5]


@pytest.mark.parametrize("spelling", ["SELLER", "\uff53\uff45\uff4c\uff4c\uff45\uff52", " seller "])
def test_look_alike_spellings_of_a_username_share_its_failures(
    client, seller, settings, monkeypatch, spelling
):
    settings.LOGIN_RATE_LIMIT = 2
    pauses = []
    monkeypatch.setattr("accounts.ratelimit._pause", pauses.append)
    for i in range(2):
        log_in(client, "seller", "nope", REMOTE_ADDR=f"10.0.2.{i}")
    # Full-width letters are NFKC-equal to "seller": Django authenticates them as that user.
    log_in(client, spelling, "nope", REMOTE_ADDR="10.0.2.9")
    assert len(pauses) == 1


def test_successful_logins_do_not_use_up_the_clients_budget(client, seller, settings):
    settings.LOGIN_RATE_LIMIT = 2
    for _ in range(5):
        assert log_in(client, "seller").status_code == 302
        client.post("/accounts/logout/")
    assert log_in(client, "seller", "nope").status_code == 200
    assert log_in(client, "seller").status_code == 302


def test_a_client_over_its_failures_is_refused_before_the_password_check(client, seller, settings):
    settings.LOGIN_RATE_LIMIT = 2
    for i in range(2):
        log_in(client, f"user{i}", "nope")
    response = log_in(client, "seller")
    assert response.status_code == 429
    assert logged_in_as(client) is None


def test_a_forwarded_for_header_does_not_escape_the_limit(client, seller, settings):
    settings.LOGIN_RATE_LIMIT = 2
    for i in range(2):
        log_in(client, f"guess{i}", "nope", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    response = log_in(client, "guess9", "nope", HTTP_X_FORWARDED_FOR="192.0.2.77")
    assert response.status_code == 429


def test_the_login_limit_resets_with_the_next_window(client, clock, seller, settings):
    settings.LOGIN_RATE_LIMIT = 1
    log_in(client, "seller", "nope")
    assert log_in(client, "seller").status_code == 429
    clock.advance(settings.RATE_LIMIT_WINDOW_SECONDS)
    assert log_in(client, "seller").status_code == 302


def test_logout_is_post_only(client, seller):
    client.force_login(seller)
    assert client.get("/accounts/logout/").status_code == 405
    assert logged_in_as(client) == "seller"
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response.url == "/"
    assert logged_in_as(client) is None


def test_a_logged_in_visitor_is_sent_on_from_the_login_page(client, seller):
    client.force_login(seller)
    assert client.get(URL).url == "/account/"
