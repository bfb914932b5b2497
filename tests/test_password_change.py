"""Changing the password: the current one is required, and every other session of the user
ends at once, while the one that changed it stays signed in."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from accounts.auth_backends import _user_cache_key
from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

URL = "/account/password/"
NEW = "a-brand-new-password-42"


def logged_in_client(username: str, password: str = PASSWORD) -> Client:
    c = Client()
    response = c.post("/accounts/login/", {"username": username, "password": password})
    assert response.status_code == 302, response.content[:500]
    return c


def change(c: Client, old: str = PASSWORD, new: str = NEW):
    return c.post(URL, {"old_password": old, "new_password1": new, "new_password2": new})


def test_changing_the_password_signs_out_every_other_session_and_keeps_this_one(make_user):
    make_user("alice")
    here, elsewhere = logged_in_client("alice"), logged_in_client("alice")
    # Both sessions are warm: the user object sits in the shared cache.
    assert elsewhere.get("/account/").status_code == 200
    assert cache.get(_user_cache_key(User.objects.get(username="alice").pk)) is not None

    response = change(here)
    assert response.status_code == 302 and response.url == "/account/security/"

    assert here.get("/account/").status_code == 200
    gone = elsewhere.get("/account/")
    assert gone.status_code == 302 and gone.url.startswith("/accounts/login/")
    # And it stays signed out: the old session was flushed, not just refused once.
    assert "_auth_user_id" not in elsewhere.session
    assert logged_in_client("alice", NEW).get("/account/").status_code == 200


def test_a_wrong_current_password_changes_nothing(make_user):
    make_user("alice")
    here, elsewhere = logged_in_client("alice"), logged_in_client("alice")
    response = change(here, old="not-my-password")
    assert response.status_code == 200
    assert "Your old password was entered incorrectly" in response.content.decode()
    assert User.objects.get(username="alice").check_password(PASSWORD)
    assert elsewhere.get("/account/").status_code == 200


def test_a_weak_or_mismatched_new_password_is_refused(make_user):
    make_user("alice")
    here = logged_in_client("alice")
    assert change(here, new="123").status_code == 200
    response = here.post(
        URL, {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW + "x"}
    )
    assert "didn" in response.content.decode()  # "The two password fields didn't match."
    assert User.objects.get(username="alice").check_password(PASSWORD)


def test_guessing_the_current_password_is_throttled(make_user, settings):
    settings.LOGIN_RATE_LIMIT = 3
    make_user("alice")
    here = logged_in_client("alice")
    for i in range(3):
        assert change(here, old=f"guess{i}").status_code == 200
    response = change(here)  # even the right one, once over the limit
    assert response.status_code == 429
    assert User.objects.get(username="alice").check_password(PASSWORD)


def test_the_page_needs_a_login(client):
    response = client.get(URL)
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
