"""Signed-in users come from the shared cache; any change to a user is seen at the next request."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from accounts.auth_backends import _user_cache_key
from accounts.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in(client, make_user):
    make_user("alice", balance=0)
    user = User.objects.get(username="alice")
    client.force_login(user)
    return user


def test_a_signed_in_page_reads_the_user_once_then_from_the_cache(
    client, signed_in, django_assert_num_queries
):
    assert client.get("/account/").status_code == 200
    assert cache.get(_user_cache_key(signed_in.pk)) is not None
    with django_assert_num_queries(0):
        assert client.get("/account/").status_code == 200


def test_a_deactivated_user_is_signed_out_at_the_next_request(client, signed_in):
    assert client.get("/account/").status_code == 200
    signed_in.is_active = False
    signed_in.save()
    assert client.get("/account/").status_code == 302  # to the login page


def test_a_password_change_ends_other_sessions_at_the_next_request(client, signed_in):
    assert client.get("/account/").status_code == 200
    signed_in.set_password("a-new-long-password-42")
    signed_in.save()
    assert client.get("/account/").status_code == 302


def test_a_deleted_user_is_signed_out(client, signed_in):
    assert client.get("/account/").status_code == 200
    signed_in.delete()
    assert client.get("/account/").status_code == 302
