"""Shared helpers of the delivery-count tests (clicks, impressions, pages, exports); loaded as a
plugin by conftest.py for its `sold` fixture. Counts and allowances are cleared around every
test by conftest's `_clear_cache`."""

from __future__ import annotations

import re

import pytest

from adspace import gateway

BROWSER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
EMBED = "/embed/sam/0"


def counted(store, kind: str, owner="sam", n=0, k=0, day="2023-11-14") -> int:
    """The flushed count of one kind for one slot and UTC day (0 when none was ever written)."""
    found = store.get_multi([gateway.stat_key(owner, n, k, day, kind)])
    return sum(int(d.value) for d in found.values())


def view(client, path: str, ip: str = "198.51.100.7", **headers):
    """A browser's GET from `ip`."""
    headers.setdefault("HTTP_USER_AGENT", BROWSER_AGENT)
    return client.get(path, REMOTE_ADDR=ip, **headers)


def links(page: str) -> tuple[str, str]:
    """(click path, beacon path) of an embed page showing an ad."""
    click = re.search(r'class="ad" href="(/c/[^"]+)"', page)
    beacon = re.search(r'class="beacon" src="(/i/[^"]+)"', page)
    assert click and beacon, page
    return click[1], beacon[1]


@pytest.fixture
def sold(store, clock):
    """bob's ad sold on sam's campaign 0 and showing for ten minutes (tests.test_ad_api's world)."""
    from tests.test_ad_api import make_world, sell

    make_world(store, clock)
    sale = sell(store, clock)
    clock.advance(600)
    return sale
