from __future__ import annotations

import pytest
from django import forms

from accounts.money import (
    MAX_SATS,
    BTCField,
    MoneyError,
    fee_up,
    format_btc,
    parse_btc,
    permille_as_percent,
)
from accounts.templatetags.money import btc, btc_change


@pytest.mark.parametrize(
    ("sats", "text"),
    [
        (0, "0.00000000"),
        (1, "0.00000001"),
        (300_000, "0.00300000"),
        (10_000_000, "0.10000000"),
        (100_000_000, "1.00000000"),
        (MAX_SATS, "21000000.00000000"),
        (-1, "-0.00000001"),
        (-150_000_000, "-1.50000000"),
    ],
)
def test_format_btc_shows_eight_decimals(sats, text):
    assert format_btc(sats) == text


@pytest.mark.parametrize("value", [1.5, "100", None, True])
def test_format_btc_refuses_anything_but_whole_sats(value):
    with pytest.raises(TypeError):
        format_btc(value)


@pytest.mark.parametrize(
    ("text", "sats"),
    [
        ("1", 100_000_000),
        ("0.5", 50_000_000),
        (".5", 50_000_000),
        ("1.", 100_000_000),
        ("0.00000001", 1),
        ("0.003", 300_000),
        ("  0.003\n", 300_000),
        ("0", 0),
        ("007", 700_000_000),
        ("21000000", MAX_SATS),
        ("20999999.99999999", MAX_SATS - 1),
    ],
)
def test_parse_btc_accepts_plain_decimals(text, sats):
    assert parse_btc(text) == sats


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Enter an amount"),
        ("   ", "Enter an amount"),
        ("0.000000001", "at most 8 decimal places"),
        ("0.100000000", "at most 8 decimal places"),
        ("-1", "cannot be negative"),
        ("-0.5", "cannot be negative"),
        ("NaN", "not NaN or infinity"),
        ("nan", "not NaN or infinity"),
        ("sNaN", "not NaN or infinity"),
        ("Infinity", "not NaN or infinity"),
        ("-inf", "not NaN or infinity"),
        ("1e5", "without an exponent"),
        ("1E-3", "without an exponent"),
        (".5e1", "without an exponent"),
        ("1,000", "no thousands separators"),
        ("1 000", "no thousands separators"),
        ("1_000", "no thousands separators"),
        ("1'000", "no thousands separators"),
        ("0,5", "no thousands separators"),
        ("abc", "using digits and at most one dot"),
        ("1.2.3", "using digits and at most one dot"),
        (".", "using digits and at most one dot"),
        ("+1", "using digits and at most one dot"),
        ("0x10", "using digits and at most one dot"),
        ("\u0661", "using digits and at most one dot"),  # Arabic-Indic one: Decimal accepts it
        ("\uff11", "using digits and at most one dot"),  # full-width one
        ("1 BTC", "using digits and at most one dot"),
        ("21000000.00000001", "more than all the bitcoin"),
        ("99999999999", "more than all the bitcoin"),
        ("1" * 41, "too long"),
        ("1" * 10_000, "too long"),
    ],
)
def test_parse_btc_refuses_with_a_clear_message(text, message):
    with pytest.raises(MoneyError, match=message) as exc:
        parse_btc(text)
    assert isinstance(exc.value, ValueError)
    assert exc.value.message == str(exc.value)


def test_parse_btc_refuses_non_text():
    with pytest.raises(MoneyError):
        parse_btc(None)
    with pytest.raises(MoneyError):
        parse_btc(1.5)


@pytest.mark.parametrize(
    ("amount", "permille", "fee"),
    [
        (1000, 15, 15),
        (1, 15, 1),
        (0, 15, 0),
        (100_000, 15, 1500),
        (100_001, 15, 1501),
        (66, 15, 1),
        (67, 15, 2),  # 1.005 sats rounds up
        (MAX_SATS, 15, MAX_SATS * 15 // 1000),
        (12345, 0, 0),
    ],
)
def test_fee_up_rounds_up_to_a_whole_sat(amount, permille, fee):
    assert fee_up(amount, permille) == fee


def test_fee_up_refuses_negative_amounts():
    with pytest.raises(ValueError):
        fee_up(-1, 15)


@pytest.mark.parametrize(("permille", "text"), [(15, "1.5"), (10, "1"), (0, "0"), (125, "12.5")])
def test_fee_rates_read_as_percentages(permille, text):
    assert permille_as_percent(permille) == text


class AmountForm(forms.Form):
    amount = BTCField(min_sats=300_000, max_sats=100_000_000)


class OptionalAmountForm(forms.Form):
    amount = BTCField(required=False)


def test_btc_field_cleans_to_sats():
    form = AmountForm({"amount": " 0.005 "})
    assert form.is_valid()
    assert form.cleaned_data["amount"] == 500_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0029", "The minimum is 0.00300000 BTC."),
        ("1.00000001", "The maximum is 1.00000000 BTC."),
        ("", "Enter an amount in BTC."),
        ("1e-2", "without an exponent"),
        ("-0.01", "cannot be negative"),
        ("x" * 10_000, "too long"),
    ],
)
def test_btc_field_refuses_with_the_reason(text, message):
    form = AmountForm({"amount": text})
    assert not form.is_valid()
    assert message in form.errors["amount"][0]


def test_optional_btc_field_cleans_empty_to_none():
    form = OptionalAmountForm({"amount": ""})
    assert form.is_valid()
    assert form.cleaned_data["amount"] is None


def test_btc_field_shows_initial_sats_as_btc():
    form = AmountForm(initial={"amount": 300_000})
    assert 'value="0.00300000"' in str(form["amount"])


def test_btc_filters_format_sats_and_ignore_other_values():
    assert btc(10_000_000) == "0.10000000"
    assert btc("oops") == "" and btc(None) == "" and btc(True) == ""
    assert btc_change(1000) == "+0.00001000"
    assert btc_change(-1000) == "-0.00001000"
    assert btc_change(0) == "0.00000000"
