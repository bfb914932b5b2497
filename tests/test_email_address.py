"""An optional email address, confirmed by a signed link."""

from __future__ import annotations

import re

import pytest
from django.core import mail, signing

from accounts.models import User
from accounts.security_views import EMAIL_SALT

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(client, make_user):
    user = make_user("alice")
    client.force_login(user)
    return user


def link_in(message) -> str:
    return re.search(r"https?://[^/\s]+(/\S+)", message.body).group(1)


def test_an_address_is_confirmed_by_the_link_mailed_to_it(client, alice):
    response = client.post("/account/email/", {"email": "alice@example.com"})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.email == "alice@example.com" and not alice.email_verified
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.com"]

    page = client.get(link_in(mail.outbox[0]))
    assert page.status_code == 200 and "is confirmed" in page.content.decode()
    alice.refresh_from_db()
    assert alice.email_verified
    assert "confirmed</strong>" in client.get("/account/security/").content.decode()


def test_the_link_works_from_another_device_without_a_login(client, alice):
    client.post("/account/email/", {"email": "alice@example.com"})
    client.logout()
    assert client.get(link_in(mail.outbox[0])).status_code == 200
    assert User.objects.get(username="alice").email_verified


def test_a_link_for_an_address_since_replaced_confirms_nothing(client, alice):
    client.post("/account/email/", {"email": "old@example.com"})
    old_link = link_in(mail.outbox[0])
    client.post("/account/email/", {"email": "new@example.com"})
    assert client.get(old_link).status_code == 400
    assert not User.objects.get(username="alice").email_verified


def test_a_forged_or_expired_link_is_refused(client, alice, settings, clock):
    client.post("/account/email/", {"email": "alice@example.com"})
    forged = signing.dumps({"u": alice.pk, "e": "alice@example.com"}, salt="other-salt")
    assert client.get(f"/account/email/verify/{forged}/").status_code == 400
    assert client.get("/account/email/verify/garbage/").status_code == 400
    settings.EMAIL_VERIFY_SECONDS = -1  # every link is already too old
    token = signing.dumps({"u": alice.pk, "e": "alice@example.com"}, salt=EMAIL_SALT)
    assert client.get(f"/account/email/verify/{token}/").status_code == 400
    assert not User.objects.get(username="alice").email_verified


def test_changing_a_confirmed_address_needs_a_new_confirmation(client, alice):
    alice.email, alice.email_verified = "alice@example.com", True
    alice.save()
    client.post("/account/email/", {"email": "Other@example.com"})
    alice.refresh_from_db()
    assert alice.email == "Other@example.com" and not alice.email_verified


def test_an_invalid_address_is_refused_and_nothing_changes(client, alice):
    response = client.post("/account/email/", {"email": "not an address"})
    assert response.status_code == 400 and "valid email" in response.content.decode()
    alice.refresh_from_db()
    assert alice.email == "" and not mail.outbox


def test_removing_the_address(client, alice):
    alice.email, alice.email_verified = "alice@example.com", True
    alice.save()
    client.post("/account/email/", {"email": ""})
    alice.refresh_from_db()
    assert alice.email == "" and not alice.email_verified


def test_confirmation_emails_are_limited_per_hour(client, alice, settings):
    settings.EMAIL_RATE_LIMIT = 2
    for i in range(2):
        assert client.post("/account/email/", {"email": f"a{i}@example.com"}).status_code == 302
    assert client.post("/account/email/", {"email": "a9@example.com"}).status_code == 429
    assert len(mail.outbox) == 2
    assert User.objects.get(username="alice").email == "a1@example.com"
