"""Which client the rate limits count: the peer, or behind a trusted proxy the hop before it."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from accounts.ratelimit import client_ip
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

factory = RequestFactory()


def address(remote: str, forwarded: str | None = None) -> str:
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(factory.get("/", **extra))


def test_without_trusted_proxies_the_peer_is_the_client(settings):
    settings.TRUSTED_PROXIES = []
    assert address("198.51.100.7", "203.0.113.9") == "198.51.100.7"


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert address("127.0.0.1", "203.0.113.9") == "203.0.113.9"


def test_the_rightmost_untrusted_hop_is_the_client_not_what_it_claims(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    # The client wrote "1.2.3.4" itself; nginx appended what it saw, an inner proxy appended nginx.
    assert address("127.0.0.1", "1.2.3.4, 203.0.113.9, 10.1.2.3") == "203.0.113.9"


def test_an_untrusted_peer_cannot_choose_its_address(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert address("198.51.100.7", "203.0.113.9") == "198.51.100.7"


def test_garbage_from_a_proxy_counts_as_the_proxy(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert address("127.0.0.1", "not-an-address") == "127.0.0.1"
    assert address("127.0.0.1", "") == "127.0.0.1"


def test_ipv6_clients_are_counted_by_their_64(settings):
    settings.TRUSTED_PROXIES = ["::1"]
    assert address("::1", "2001:db8:1:2::5") == address("::1", "2001:db8:1:2:ffff::9")
    assert address("2001:db8:1:2::5") == "2001:db8:1:2::/64"


def log_in(client, username, password, forwarded):
    return client.post(
        "/accounts/login/",
        {"username": username, "password": password},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR=forwarded,
    )


def test_clients_behind_the_proxy_have_budgets_of_their_own(client, seller, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    settings.LOGIN_RATE_LIMIT = 2
    for i in range(2):
        log_in(client, f"guess{i}", "nope", "203.0.113.66")
    assert log_in(client, "guess9", "nope", "203.0.113.66").status_code == 429
    # Another visitor through the same nginx is not refused for the first one's guesses.
    response = log_in(client, "seller", PASSWORD, "198.51.100.20")
    assert response.status_code == 302
