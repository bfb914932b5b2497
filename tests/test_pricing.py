"""The falling price of a campaign's next slot (DESIGN.md section 5) and its chart."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adspace.pricing import (
    _div_round_half_up,
    chart_svg,
    current_price,
    next_slot_index,
    next_slot_times,
    price_curve,
)

# The check values of DESIGN.md section 5: they are normative.
MIN_PRICE = 100_000
T0 = 1_390_319_630
DAY = 86_400
FIRST_SALE = {
    "slot": 0,
    "purchasedAt": T0,
    "startsAt": T0,
    "endsAt": T0 + DAY,
    "price": 100_000,
}
SECOND_SALE = {
    "slot": 1,
    "purchasedAt": T0 + 1800,
    "startsAt": T0 + DAY,
    "endsAt": T0 + 2 * DAY,
    "price": 197_917,
}
SVG = "{http://www.w3.org/2000/svg}"

# No example database: it would litter the working tree with .hypothesis/.
properties = settings(max_examples=200, deadline=None, database=None)


def sale(price: int, purchased_at: int, starts_at: int, slot_hours: int, slot: int = 0) -> dict:
    return {
        "slot": slot,
        "purchasedAt": purchased_at,
        "startsAt": starts_at,
        "endsAt": starts_at + slot_hours * 3600,
        "price": price,
    }


@st.composite
def sales(draw: st.DrawFn) -> tuple[int, dict]:
    """(minimum price, last sale): a realistic sale pays at least the minimum."""
    min_price = draw(st.integers(min_value=1, max_value=10**10))
    price = draw(st.integers(min_value=min_price, max_value=10**12))
    purchased_at = draw(st.integers(min_value=1_000_000_000, max_value=5_000_000_000))
    queued_for = draw(st.integers(min_value=0, max_value=400 * DAY))
    slot_hours = draw(st.integers(min_value=1, max_value=24 * 365))
    return min_price, sale(price, purchased_at, purchased_at + queued_for, slot_hours)


def offsets() -> st.SearchStrategy[int]:
    return st.integers(min_value=-2 * DAY, max_value=800 * DAY)


# --- the check values -------------------------------------------------------------------


def test_the_first_slot_costs_the_minimum() -> None:
    assert current_price(MIN_PRICE, None, T0) == 100_000


def test_a_buy_half_an_hour_after_the_first_sale_costs_197917() -> None:
    assert current_price(MIN_PRICE, FIRST_SALE, T0 + 1800) == 197_917


def test_that_buy_is_queued_behind_the_first_slot() -> None:
    assert next_slot_index(FIRST_SALE) == 1
    assert next_slot_times(24, FIRST_SALE, T0 + 1800) == (T0 + DAY, T0 + 2 * DAY)


def test_the_next_buy_costs_356908() -> None:
    assert current_price(MIN_PRICE, SECOND_SALE, 1_390_343_930) == 356_908


def test_one_second_before_the_slot_ends_it_costs_100002() -> None:
    assert current_price(MIN_PRICE, SECOND_SALE, T0 + 2 * DAY - 1) == 100_002


def test_at_the_slot_end_it_costs_the_minimum() -> None:
    assert current_price(MIN_PRICE, SECOND_SALE, T0 + 2 * DAY) == 100_000
    assert current_price(MIN_PRICE, SECOND_SALE, T0 + 30 * DAY) == 100_000


def test_a_half_sat_rounds_up() -> None:
    # M + (2P - M) * (E - now) / (E - tp) with M = 99, P = 50: 99 + (E - now) / (E - tp).
    half_way = {"slot": 0, "purchasedAt": 0, "startsAt": 0, "endsAt": 2, "price": 50}
    assert current_price(99, half_way, 1) == 100  # 99 + 1/2
    third_way = {**half_way, "endsAt": 3}
    assert current_price(99, third_way, 1) == 100  # 99 + 2/3
    assert current_price(99, third_way, 2) == 99  # 99 + 1/3


def test_a_clock_behind_the_sale_never_prices_above_twice_the_sale() -> None:
    assert current_price(MIN_PRICE, FIRST_SALE, T0 - 3600) == 200_000


def test_a_float_is_refused_rather_than_priced() -> None:
    with pytest.raises(TypeError):
        current_price(100_000.0, FIRST_SALE, T0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        current_price(MIN_PRICE, {**FIRST_SALE, "price": 1e5}, T0)


def test_slots_are_numbered_from_zero_without_gaps() -> None:
    assert next_slot_index(None) == 0
    assert next_slot_index(SECOND_SALE) == 2


def test_the_first_slot_starts_now() -> None:
    assert next_slot_times(24, None, T0) == (T0, T0 + DAY)


def test_a_slot_bought_after_the_queue_ran_out_starts_now() -> None:
    assert next_slot_times(2, FIRST_SALE, T0 + 3 * DAY) == (T0 + 3 * DAY, T0 + 3 * DAY + 7200)


def test_a_slot_must_last_at_least_an_hour() -> None:
    with pytest.raises(ValueError):
        next_slot_times(0, None, T0)


# --- properties -----------------------------------------------------------------------


@properties
@given(sales(), offsets())
def test_the_price_is_never_below_the_minimum(sale_: tuple[int, dict], offset: int) -> None:
    min_price, last = sale_
    assert current_price(min_price, last, last["purchasedAt"] + offset) >= min_price


@properties
@given(
    st.integers(min_value=1, max_value=10**10),
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=10**10),
    offsets(),
)
def test_the_price_is_never_below_the_minimum_even_after_a_cheap_sale(
    min_price: int, price: int, purchased_at: int, offset: int
) -> None:
    # A sale below half the minimum (the seller raised the minimum later) starts below M.
    last = sale(price, purchased_at, purchased_at, 24)
    assert current_price(min_price, last, purchased_at + offset) >= min_price


@properties
@given(sales())
def test_the_price_is_twice_the_sale_at_the_sale_instant(sale_: tuple[int, dict]) -> None:
    min_price, last = sale_
    assert current_price(min_price, last, last["purchasedAt"]) == 2 * last["price"]


@properties
@given(sales(), offsets(), offsets())
def test_the_price_never_rises_between_sales(
    sale_: tuple[int, dict], offset_a: int, offset_b: int
) -> None:
    min_price, last = sale_
    earlier, later = sorted((offset_a, offset_b))
    at = last["purchasedAt"]
    assert current_price(min_price, last, at + earlier) >= current_price(
        min_price, last, at + later
    )


@properties
@given(sales(), st.integers(min_value=0, max_value=10**9))
def test_the_price_is_the_minimum_from_the_slot_end_on(
    sale_: tuple[int, dict], after_end: int
) -> None:
    min_price, last = sale_
    assert current_price(min_price, last, last["endsAt"] + after_end) == min_price


@properties
@given(sales(), offsets())
def test_the_price_is_the_exact_line_rounded_to_the_nearest_sat(
    sale_: tuple[int, dict], offset: int
) -> None:
    min_price, last = sale_
    now = last["purchasedAt"] + offset
    price = current_price(min_price, last, now)
    if last["purchasedAt"] <= now < last["endsAt"]:
        exact = min_price + Fraction(
            (2 * last["price"] - min_price) * (last["endsAt"] - now),
            last["endsAt"] - last["purchasedAt"],
        )
        assert -Fraction(1, 2) < price - exact <= Fraction(1, 2)


@properties
@given(
    st.integers(min_value=1, max_value=24 * 365),
    st.one_of(st.none(), sales().map(lambda pair: pair[1])),
    st.integers(min_value=1_000_000_000, max_value=6_000_000_000),
)
def test_a_slot_starts_behind_the_last_one_and_lasts_its_hours(
    slot_hours: int, last: dict | None, now: int
) -> None:
    starts_at, ends_at = next_slot_times(slot_hours, last, now)
    assert starts_at == (now if last is None else max(now, last["endsAt"]))
    assert ends_at - starts_at == slot_hours * 3600


# --- the curve and the chart ----------------------------------------------------------


def test_the_curve_runs_from_twice_the_sale_down_to_the_minimum_then_flat() -> None:
    curve = price_curve(MIN_PRICE, SECOND_SALE, 1_390_343_930, points=60)
    assert curve[0] == (T0 + 1800, 2 * 197_917)
    assert (T0 + 2 * DAY, MIN_PRICE) in curve
    assert curve[-1][0] > T0 + 2 * DAY and curve[-1][1] == MIN_PRICE
    assert len(curve) == 61
    times = [t for t, _ in curve]
    prices = [p for _, p in curve]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert prices == sorted(prices, reverse=True)
    assert all(p == current_price(MIN_PRICE, SECOND_SALE, t) for t, p in curve)


def test_the_curve_reaches_past_now_long_after_the_slot_ended() -> None:
    now = T0 + 10 * DAY
    last_time, last_price = price_curve(MIN_PRICE, FIRST_SALE, now)[-1]
    assert last_time > now and last_price == MIN_PRICE


def test_the_curve_of_a_campaign_without_sales_is_flat_at_the_minimum() -> None:
    curve = price_curve(MIN_PRICE, None, T0)
    assert curve[0] == (T0, MIN_PRICE)
    assert {p for _, p in curve} == {MIN_PRICE}


def parse_svg(svg: str) -> ET.Element:
    # Our own output, not untrusted input.
    return ET.fromstring(svg)  # noqa: S314


def assert_static_and_accessible(svg: str) -> ET.Element:
    root = parse_svg(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root[0].tag == f"{SVG}title" and root[0].text
    for element in root.iter():
        assert element.tag != f"{SVG}script"
        assert element.tag != f"{SVG}foreignObject"
        assert not [name for name in element.attrib if name.lower().startswith("on")]
        assert "href" not in "".join(element.attrib)
    assert "<script" not in svg.lower() and "javascript:" not in svg.lower()
    return root


def test_the_chart_draws_the_falling_line_with_btc_and_utc_labels() -> None:
    now = 1_390_343_930
    svg = chart_svg(MIN_PRICE, SECOND_SALE, now)
    root = assert_static_and_accessible(svg)

    title = root.find(f"{SVG}title").text
    assert "0.00356908 BTC" in title
    labels = [text.text for text in root.iter(f"{SVG}text")]
    assert "0.00395834 BTC" in labels  # 2P at the sale
    assert "0.00100000 BTC" in labels  # the minimum
    assert "16:23 UTC" in labels  # the sale, T0 + 1800 = 2014-01-21 16:23:50 UTC
    assert "15:53 UTC" in labels  # the slot's end

    (line,) = root.iter(f"{SVG}polyline")
    points = [tuple(map(int, pair.split(","))) for pair in line.get("points").split()]
    assert len(points) == len(price_curve(MIN_PRICE, SECOND_SALE, now))
    assert [y for _, y in points] == sorted(y for _, y in points)  # SVG y grows downwards
    (dot,) = root.iter(f"{SVG}circle")
    assert points[0][0] < int(dot.get("cx")) < points[-1][0]


def test_the_chart_without_a_sale_is_a_flat_line_at_the_minimum() -> None:
    root = assert_static_and_accessible(chart_svg(MIN_PRICE, None, T0))
    (line,) = root.iter(f"{SVG}polyline")
    ys = {pair.split(",")[1] for pair in line.get("points").split()}
    assert len(ys) == 1
    assert "0.00100000 BTC" in root.find(f"{SVG}title").text
    (dot,) = root.iter(f"{SVG}circle")
    assert dot.get("cy") in ys


def test_the_chart_after_the_slot_ended_shows_the_minimum_now() -> None:
    svg = chart_svg(MIN_PRICE, FIRST_SALE, T0 + 40 * DAY, width=320, height=120)
    root = assert_static_and_accessible(svg)
    assert root.get("viewBox") == "0 0 320 120"
    assert "0.00100000 BTC, the minimum" in root.find(f"{SVG}title").text


def test_the_chart_coordinates_stay_inside_the_picture() -> None:
    for now in (T0 - 60, T0, T0 + 1800, T0 + DAY - 1, T0 + DAY, T0 + 365 * DAY):
        root = parse_svg(chart_svg(MIN_PRICE, FIRST_SALE, now))
        numbers = [int(n) for n in re.findall(r"-?\d+", root.find(f"{SVG}polyline").get("points"))]
        xs, ys = numbers[0::2], numbers[1::2]
        assert all(0 <= x <= 600 for x in xs) and all(0 <= y <= 200 for y in ys)


@given(st.integers(-(10**30), 10**30), st.integers(-(10**15), 10**15).filter(bool))
def test_integer_rounding_is_the_exact_fraction_rounded_half_up(numerator, denominator) -> None:
    exact = Fraction(numerator, denominator)
    expected = (2 * exact.numerator + exact.denominator) // (2 * exact.denominator)
    assert _div_round_half_up(numerator, denominator) == expected


def test_integer_rounding_rounds_halves_up_on_both_sides_of_zero() -> None:
    assert [_div_round_half_up(n, 2) for n in (-3, -1, 1, 3)] == [-1, 0, 1, 2]
    assert _div_round_half_up(5, -2) == -2  # -2.5 rounds up to -2
    with pytest.raises(ZeroDivisionError):
        _div_round_half_up(1, 0)


def test_a_remembered_chart_is_the_one_drawn_and_still_refuses_what_is_not_an_int() -> None:
    from adspace.pricing import _draw_chart

    now = T0 + 3600
    first = chart_svg(MIN_PRICE, FIRST_SALE, now)
    assert chart_svg(MIN_PRICE, dict(FIRST_SALE), now) == first
    assert first == _draw_chart(MIN_PRICE, FIRST_SALE, now, 600, 200)
    assert chart_svg(MIN_PRICE, FIRST_SALE, now + 1) != first  # the dot moved
    with pytest.raises(TypeError):
        chart_svg(MIN_PRICE, {**FIRST_SALE, "price": float(FIRST_SALE["price"])}, now)
    with pytest.raises(TypeError):
        chart_svg(float(MIN_PRICE), FIRST_SALE, now)
    with pytest.raises(TypeError):
        chart_svg(MIN_PRICE, None, True)
