"""`{% load money %}` (the admin's DTL templates): `{{ sats|btc }}`, `{{ delta|btc_change }}`,
`{{ permille|percent }}`; the same filters and `account_balance_of` serve the Jinja2 pages."""

from __future__ import annotations

import logging

from django import template

from accounts.gateway import get_balance
from accounts.money import format_btc, permille_as_percent
from docstore import DocstoreError, NotFound, get_store

register = template.Library()
log = logging.getLogger(__name__)


def _is_sats(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register.filter
def btc(sats) -> str:
    """Satoshis as BTC with 8 decimals; anything that is not a whole number of sats shows empty."""
    return format_btc(sats) if _is_sats(sats) else ""


@register.filter
def btc_change(sats) -> str:
    """A balance change with its sign: "+0.00100000", "-0.00100000"."""
    if not _is_sats(sats):
        return ""
    return f"+{format_btc(sats)}" if sats > 0 else format_btc(sats)


@register.filter
def percent(permille) -> str:
    """A rate in permille as a percentage number: 15 -> "1.5"."""
    return permille_as_percent(permille) if _is_sats(permille) else ""


def account_balance_of(request) -> int | None:
    """The balance of the request's signed-in user in sats, or None (signed out, or unknown)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    try:
        return get_balance(get_store(), user.username)
    except NotFound:
        return None  # created at the next login or visit to the account page
    except DocstoreError:
        # The header is decoration: a docstore hiccup must not turn every page into a 500.
        log.warning("header balance unavailable for %s", user.username, exc_info=True)
        return None
