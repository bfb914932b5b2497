from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.forms import RegistrationForm
from accounts.gateway import get_account
from accounts.models import User
from docstore import NotFound

pytestmark = pytest.mark.django_db

URL = "/accounts/register/"
GOOD_PASSWORD = "correct-horse-battery-9"


def register(client, username, password=GOOD_PASSWORD, password2=None, **extra):
    data = {"username": username, "password1": password, "password2": password2 or password}
    return client.post(URL, data, **extra)


def snapshot(store):
    return (store.dump(), sorted(User.objects.values_list("username", flat=True)))


def test_url_names_point_at_the_pages():
    assert reverse("register") == URL
    assert reverse("login") == "/accounts/login/"
    assert reverse("logout") == "/accounts/logout/"
    assert reverse("account") == "/account/"


def test_the_form_is_shown(client):
    response = client.get(URL)
    assert response.status_code == 200
    assert b'name="username"' in response.content and b'name="password2"' in response.content


def test_registering_creates_the_user_and_the_account_doc_and_logs_in(client, store):
    response = register(client, "Alice7")
    assert response.status_code == 302 and response.url == "/account/"
    user = User.objects.get(username="Alice7")
    assert user.check_password(GOOD_PASSWORD)
    account = get_account(store, "Alice7").value
    assert account["balance"] == 0 and account["lock"] is None and account["ledger"] == []
    assert client.session["_auth_user_id"] == str(user.pk)
    page = client.get("/account/")
    assert page.status_code == 200 and b"0.00000000" in page.content


def test_a_logged_in_visitor_is_sent_to_the_account_page(client, make_user):
    client.force_login(make_user("carol"))
    assert client.get(URL).url == "/account/"


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("bob::x", "Usernames are 1 to 32 letters"),
        ("::", "Usernames are 1 to 32 letters"),
        ("bob smith", "Usernames are 1 to 32 letters"),
        (" bob", "Usernames are 1 to 32 letters"),
        ("bob\n", "Usernames are 1 to 32 letters"),
        ("b\u00f8b", "Usernames are 1 to 32 letters"),
        ("\u0432\u0430\u0441\u044f", "Usernames are 1 to 32 letters"),
        ("\uff42\uff4f\uff42", "Usernames are 1 to 32 letters"),  # full-width "bob"
        ("bob_1", "Usernames are 1 to 32 letters"),
        ("bob\x00", "Null characters are not allowed"),
        ("a" * 33, "Usernames are at most 32 characters."),
        ("a" * 10_000, "Usernames are at most 32 characters."),
        ("", "Choose a username."),
    ],
)
def test_a_bad_username_is_refused_and_creates_nothing(client, store, username, message):
    before = snapshot(store)
    response = register(client, username)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("password", "password2", "message"),
    [
        ("x7!", None, "This password is too short"),
        ("password123", None, "This password is too common"),
        ("83920174629", None, "This password is entirely numeric"),
        (GOOD_PASSWORD, "correct-horse-battery-8", "The two passwords do not match."),
        ("", "", "Choose a password."),
        (GOOD_PASSWORD, "", "Type the password again."),
        ("x" * 5000, None, "Passwords are at most 4096 characters."),
    ],
)
def test_a_bad_password_is_refused_and_creates_nothing(client, store, password, password2, message):
    before = snapshot(store)
    data = {"username": "dave", "password1": password, "password2": password2}
    if password2 is None:
        data["password2"] = password
    response = client.post(URL, data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert snapshot(store) == before
    with pytest.raises(NotFound):
        get_account(store, "dave")


def test_a_password_like_the_username_is_refused(client, store):
    before = snapshot(store)
    response = register(client, "margaretta", password="margaretta1")
    assert "too similar to the username" in response.content.decode()
    assert snapshot(store) == before


def test_a_username_taken_in_another_case_is_refused(client, store, make_user):
    make_user("bob")
    before = snapshot(store)
    response = register(client, "BOB")
    assert response.status_code == 200
    assert "That username is already taken." in response.content.decode()
    assert snapshot(store) == before


def test_losing_the_race_for_a_name_reads_as_taken(client, store, make_user, monkeypatch):
    # Both sign-ups passed the friendly check; the database constraint decides.
    make_user("bob")
    monkeypatch.setattr(
        RegistrationForm, "clean_username", lambda self: self.cleaned_data["username"]
    )
    before = snapshot(store)
    response = register(client, "Bob")
    assert response.status_code == 200
    assert "That username is already taken." in response.content.decode()
    assert snapshot(store) == before


def test_missing_fields_do_not_crash(client, store):
    before = snapshot(store)
    response = client.post(URL, {})
    assert response.status_code == 200
    assert "Choose a username." in response.content.decode()
    assert snapshot(store) == before


def test_too_many_sign_ups_from_one_address_get_429(client, store, settings):
    settings.REGISTER_RATE_LIMIT = 2
    register(client, "first")
    client.post("/accounts/logout/")
    register(client, "x y")
    before = snapshot(store)
    response = register(client, "third")
    assert response.status_code == 429
    assert "Too many attempts; try again in a few minutes." in response.content.decode()
    assert snapshot(store) == before
    # Another address has its own budget.
    assert register(client, "fourth", REMOTE_ADDR="10.9.9.9").status_code == 302


def test_the_sign_up_limit_resets_with_the_next_window(client, clock, settings):
    settings.REGISTER_RATE_LIMIT = 1
    register(client, "x y")
    assert register(client, "second").status_code == 429
    clock.advance(settings.RATE_LIMIT_WINDOW_SECONDS)
    assert register(client, "second").status_code == 302
