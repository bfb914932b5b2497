"""Bitcoin amounts: integers in satoshis everywhere, BTC strings only at the edges (DESIGN.md 5).

`parse_btc` turns what a person typed into satoshis with `Decimal` (never float) and refuses,
with a message meant for that person, anything that is not a plain decimal number of BTC.
`format_btc` is the one way an amount is shown: 8 decimals, so 0.003 BTC reads "0.00300000".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from django import forms
from django.core.exceptions import ValidationError

SATS_PER_BTC = 100_000_000
MAX_BTC = 21_000_000
MAX_SATS = MAX_BTC * SATS_PER_BTC
DECIMALS = 8

# Longer than any valid amount ("21000000.00000000" is 17), so a pasted novel is refused before
# anything else looks at it.
MAX_INPUT_LENGTH = 40

# ASCII digits only: `Decimal` would happily accept Arabic-Indic or full-width digits.
_PLAIN = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_EXPONENT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+")
_SEPARATORS = re.compile(r"[,_'\s\u00a0\u202f\u2009]")
_NOT_A_NUMBER = {"nan", "snan", "inf", "infinity"}

MSG_EMPTY = "Enter an amount in BTC."
MSG_TOO_LONG = "That is too long to be an amount in BTC."
MSG_NAN = "Enter a number of BTC, not NaN or infinity."
MSG_NEGATIVE = "The amount cannot be negative."
MSG_EXPONENT = "Write the amount without an exponent (for example 0.001, not 1e-3)."
MSG_SEPARATORS = (
    "Write the amount with a dot for decimals and no thousands separators (for example 1234.5)."
)
MSG_NOT_NUMBER = "Enter the amount in BTC using digits and at most one dot (for example 0.005)."
MSG_DECIMALS = "Bitcoin amounts have at most 8 decimal places."
MSG_TOO_MUCH = "That is more than all the bitcoin there will ever be (21,000,000 BTC)."


class MoneyError(ValueError):
    """An amount a person typed that we refuse; `message` says why, in words for them."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def format_btc(sats: int) -> str:
    """Satoshis as BTC with exactly 8 decimals: 300000 -> "0.00300000", -1 -> "-0.00000001"."""
    if isinstance(sats, bool) or not isinstance(sats, int):
        raise TypeError(f"amounts are whole satoshis (int), not {type(sats).__name__}")
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), SATS_PER_BTC)
    return f"{sign}{whole}.{frac:08d}"


def parse_btc(text: str) -> int:
    """What a person typed as BTC ("0.5", ".5", "1") -> satoshis. Raises MoneyError."""
    if not isinstance(text, str):
        raise MoneyError(MSG_EMPTY if text is None else MSG_NOT_NUMBER)
    s = text.strip()
    if not s:
        raise MoneyError(MSG_EMPTY)
    if len(s) > MAX_INPUT_LENGTH:
        raise MoneyError(MSG_TOO_LONG)
    if s.lstrip("+-").lower() in _NOT_A_NUMBER:
        raise MoneyError(MSG_NAN)
    if s.startswith("-"):
        raise MoneyError(MSG_NEGATIVE)
    if _EXPONENT.fullmatch(s):
        raise MoneyError(MSG_EXPONENT)
    if _SEPARATORS.search(s) and _PLAIN.fullmatch(_SEPARATORS.sub("", s)):
        raise MoneyError(MSG_SEPARATORS)  # "1,000", "1 000", "0,5": a number, grouped or localised
    if not _PLAIN.fullmatch(s):
        raise MoneyError(MSG_NOT_NUMBER)
    try:
        amount = Decimal(s)
    except InvalidOperation:  # unreachable after the pattern check; kept so no input can crash
        raise MoneyError(MSG_NOT_NUMBER) from None
    if amount.as_tuple().exponent < -DECIMALS:
        raise MoneyError(MSG_DECIMALS)
    # Compared before scaling: a bounded amount with <= 8 decimals has <= 16 significant digits,
    # well inside Decimal's default 28-digit precision, so the scaling below is exact.
    if amount > MAX_BTC:
        raise MoneyError(MSG_TOO_MUCH)
    return int(amount.scaleb(DECIMALS))


def fee_up(amount_sats: int, permille: int) -> int:
    """`amount * permille / 1000` rounded up to a whole satoshi: a fee never rounds to our loss."""
    if amount_sats < 0 or permille < 0:
        raise ValueError("fees are computed on non-negative amounts and rates")
    return -(-amount_sats * permille // 1000)


def permille_as_percent(permille: int) -> str:
    """15 -> "1.5", 10 -> "1": a fee rate for people to read."""
    whole, tenth = divmod(permille, 10)
    return f"{whole}.{tenth}" if tenth else f"{whole}"


class BTCField(forms.CharField):
    """A form field where people type BTC; `clean()` returns satoshis (int), or None if empty."""

    default_error_messages = {"required": MSG_EMPTY}

    def __init__(self, *, min_sats: int | None = None, max_sats: int | None = None, **kwargs):
        self.min_sats, self.max_sats = min_sats, max_sats
        kwargs.setdefault("max_length", MAX_INPUT_LENGTH)
        kwargs["error_messages"] = {"max_length": MSG_TOO_LONG, **kwargs.get("error_messages", {})}
        kwargs.setdefault(
            "widget",
            forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
        )
        super().__init__(**kwargs)

    def prepare_value(self, value):
        # Initial values are satoshis; submitted data comes back as the text that was typed.
        if isinstance(value, int) and not isinstance(value, bool):
            return format_btc(value)
        return value

    def clean(self, value) -> int | None:
        text = super().clean(value)
        if text in self.empty_values:
            return None
        try:
            sats = parse_btc(text)
        except MoneyError as exc:
            raise ValidationError(exc.message, code="invalid") from None
        if self.min_sats is not None and sats < self.min_sats:
            raise ValidationError(f"The minimum is {format_btc(self.min_sats)} BTC.", code="min")
        if self.max_sats is not None and sats > self.max_sats:
            raise ValidationError(f"The maximum is {format_btc(self.max_sats)} BTC.", code="max")
        return sats
