"""Password reset by email (Django's views and tokens): only to a confirmed address, the same
answer for every address, throttled, and every old session ends."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

URL = "/accounts/password-reset/"
NEW = "a-brand-new-password-42"
BROKEN = "This link is broken, expired or already used."


@pytest.fixture
def alice(make_user):
    user = make_user("alice")
    user.email, user.email_verified = "alice@example.com", True
    user.save()
    return user


def reset_link() -> str:
    assert len(mail.outbox) == 1
    return re.search(r"https?://[^/\s]+(/accounts/reset/\S+)", mail.outbox[0].body).group(1)


def test_a_user_resets_a_forgotten_password_from_the_emailed_link(client, alice):
    old_session = Client()
    old_session.force_login(alice)
    response = client.post(URL, {"email": "ALICE@example.com"})
    assert response.status_code == 302 and response.url == "/accounts/password-reset/sent/"
    form_page = client.get(reset_link(), follow=True)
    assert form_page.status_code == 200 and 'name="new_password1"' in form_page.content.decode()
    set_url = form_page.redirect_chain[-1][0]
    done = client.post(set_url, {"new_password1": NEW, "new_password2": NEW})
    assert done.status_code == 302 and done.url == "/accounts/reset/done/"
    assert User.objects.get(username="alice").check_password(NEW)
    # The link works once, and a session signed in with the old password is over.
    assert BROKEN in client.get(reset_link(), follow=True).content.decode()
    assert old_session.get("/account/").status_code == 302


@pytest.mark.parametrize("email", ["nobody@example.com", "unconfirmed@example.com"])
def test_unknown_and_unconfirmed_addresses_get_the_same_answer_and_no_mail(
    client, alice, make_user, email
):
    bob = make_user("bob")
    bob.email = "unconfirmed@example.com"  # typed by bob, never confirmed: maybe a typo
    bob.save()
    known = client.post(URL, {"email": "alice@example.com"})
    mail.outbox.clear()
    other = client.post(URL, {"email": email})
    assert (other.status_code, other.url) == (known.status_code, known.url)
    assert not mail.outbox


def test_the_reset_form_is_throttled_the_same_for_every_address(client, alice, settings):
    settings.PASSWORD_RESET_RATE_LIMIT = 2
    for _ in range(2):
        assert client.post(URL, {"email": "nobody@example.com"}).status_code == 302
    assert client.post(URL, {"email": "nobody@example.com"}).status_code == 429
    # Per client too: another address from the same client is refused, known or not.
    response = client.post(URL, {"email": "alice@example.com"})
    assert response.status_code == 429 and "Too many attempts" in response.content.decode()
    assert not mail.outbox


def test_a_tampered_link_is_refused(client, alice):
    client.post(URL, {"email": "alice@example.com"})
    link = reset_link()
    tampered = link[:-3] + ("aaa" if not link.endswith("aaa/") else "bbb") + "/"
    page = client.get(tampered, follow=True)
    assert BROKEN in page.content.decode()
    assert User.objects.get(username="alice").check_password(PASSWORD)
