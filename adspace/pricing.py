"""The price of a campaign's next slot, and a small SVG chart of it (DESIGN.md section 5).

Pure functions over plain integers: amounts in sats, times in unix seconds (UTC). The price is
computed exactly as a ratio of integers and rounded once, so the server, the buy form and the tests all
agree to the sat; no float ever touches an amount.

`last` is the campaign's last sale, `{"slot", "purchasedAt", "startsAt", "endsAt", "price"}`, or
None before the first sale.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from html import escape
from typing import Any

from accounts.money import format_btc

SECONDS_PER_HOUR = 3600

# With no sale there is no slot to draw, only the flat minimum; show a day of it.
NO_SALE_CHART_SPAN = 24 * SECONDS_PER_HOUR

LastSale = Mapping[str, Any]


def current_price(min_price: int, last: LastSale | None, now: int) -> int:
    """Price in sats of the next slot at `now`.

    A straight line from 2P at the last sale down to the minimum M at the end E of the last sold
    slot, then flat at M: `M + (2P - M) * (E - now) / (E - purchasedAt)`, rounded half up, never
    below M.
    """
    _require_ints(min_price=min_price, now=now)
    if last is None:
        return min_price
    price, purchased_at, ends_at = last["price"], last["purchasedAt"], last["endsAt"]
    _require_ints(price=price, purchasedAt=purchased_at, endsAt=ends_at)
    # A clock behind the sale's own stamp (skew between web workers) must not price above 2P.
    now = max(now, purchased_at)
    if now >= ends_at:
        return min_price
    fall = _div_round_half_up((2 * price - min_price) * (ends_at - now), ends_at - purchased_at)
    return max(min_price, min_price + fall)


def due_at(min_price: int, last: LastSale | None, limit: int) -> int | None:
    """The first second at which `current_price(min_price, last, t) <= limit`, or None if never
    (a limit below the minimum). Before the first sale the price is the minimum at any time (0).

    Closed form of the line above: for S <= t < E, with A = 2P - M and D = E - S, the price is
    M + floor((2A(E - t) + D) / 2D), which is <= L exactly when 2A(E - t) < 2D(L - M + 1) - D,
    i.e. t > E - R / 2A with R = 2D(L - M + 1) - D; the least such integer t is
    E - ceil(R / 2A) + 1. The price never rises with t, so every later second is due too.
    """
    _require_ints(min_price=min_price, limit=limit)
    if limit < min_price:
        return None
    if last is None:
        return 0
    price, purchased_at, ends_at = last["price"], last["purchasedAt"], last["endsAt"]
    _require_ints(price=price, purchasedAt=purchased_at, endsAt=ends_at)
    if ends_at <= purchased_at:  # no fall to speak of: the minimum from the end on
        return ends_at
    if limit >= current_price(min_price, last, purchased_at):
        return purchased_at
    a, d = 2 * price - min_price, ends_at - purchased_at
    r = 2 * d * (limit - min_price + 1) - d
    # E - ceil(R / 2A) + 1, with ceil(x / y) = -(-x // y)
    return min(ends_at, max(purchased_at, ends_at + (-r // (2 * a)) + 1))


def next_slot_times(slot_hours: int, last: LastSale | None, now: int) -> tuple[int, int]:
    """(startsAt, endsAt) of the slot bought at `now`: queued right behind the last sold slot."""
    _require_ints(slot_hours=slot_hours, now=now)
    if slot_hours < 1:
        raise ValueError(f"slot_hours must be at least 1, not {slot_hours}")
    starts_at = now if last is None else max(now, last["endsAt"])
    return starts_at, starts_at + slot_hours * SECONDS_PER_HOUR


def next_slot_index(last: LastSale | None) -> int:
    """Index of the next slot to sell: slots are numbered 0, 1, 2... without gaps."""
    return 0 if last is None else last["slot"] + 1


def price_curve(
    min_price: int, last: LastSale | None, now: int, points: int = 2
) -> list[tuple[int, int]]:
    """(t, price) points of the price line, for drawing.

    The fall is a straight line, so its two ends draw it exactly (to the sat's rounding, far below
    a pixel); more points only cost time on every page view.

    `points` evenly spaced samples from the last sale to the end of its slot (both included),
    then one point closing the flat tail at the minimum, which reaches past `now` when the slot
    has already ended. With no sale: a flat line at the minimum starting at `now`.
    """
    _require_ints(min_price=min_price, now=now, points=points)
    if points < 2:
        raise ValueError(f"points must be at least 2, not {points}")
    if last is None:
        return [(now, min_price), (now + NO_SALE_CHART_SPAN, min_price)]
    purchased_at, ends_at = last["purchasedAt"], last["endsAt"]
    span = max(ends_at - purchased_at, 1)
    times: list[int] = []
    for i in range(points):
        t = purchased_at + span * i // (points - 1)
        if not times or t != times[-1]:  # short slots would repeat a second
            times.append(t)
    curve = [(t, current_price(min_price, last, t)) for t in times]
    tail_end = max(now, times[-1]) + max(span // 10, 1)
    curve.append((tail_end, min_price))
    return curve


def chart_svg(
    min_price: int, last: LastSale | None, now: int, width: int = 600, height: int = 200
) -> str:
    """A self-contained, accessible SVG of the price line, with a dot at `now`.

    Static markup only (no script, no event handlers, no external references), so it can be
    inlined in a page and works without JavaScript. Colours follow `currentColor`.

    A pure function of its arguments, so the charts of the last few (campaign, second) pairs
    are kept: every view of a campaign within one second draws the same chart. Only exact ints
    are looked up (1, True and 1.0 hash alike; the others must still be refused).
    """
    values = (min_price, now, width, height, *(() if last is None else last.values()))
    if all(type(v) is int for v in values):
        frozen = None if last is None else tuple(sorted(last.items()))
        return _remembered_chart(min_price, frozen, now, width, height)
    return _draw_chart(min_price, last, now, width, height)


@functools.lru_cache(maxsize=256)
def _remembered_chart(min_price: int, last: tuple | None, now: int, width: int, height: int) -> str:
    return _draw_chart(min_price, None if last is None else dict(last), now, width, height)


def _draw_chart(min_price: int, last: LastSale | None, now: int, width: int, height: int) -> str:
    _require_ints(width=width, height=height)
    curve = price_curve(min_price, last, now)
    price_now = current_price(min_price, last, now)

    # Plot area inside the margins that hold the axis labels.
    left, right, top, bottom = 104, width - 12, 14, height - 26
    if right - left < 10 or bottom - top < 10:
        raise ValueError(f"a {width}x{height} chart has no room to draw")
    t_first, t_last = curve[0][0], curve[-1][0]
    p_low, p_high = min_price, max(p for _, p in curve)

    def x_of(t: int) -> int:
        t = min(max(t, t_first), t_last)
        return left + _div_round_half_up((right - left) * (t - t_first), t_last - t_first)

    def y_of(price: int) -> int:
        if p_high == p_low:  # flat: draw it across the middle
            return (top + bottom) // 2
        return bottom - _div_round_half_up((bottom - top) * (price - p_low), p_high - p_low)

    polyline = " ".join(f"{x_of(t)},{y_of(p)}" for t, p in curve)
    now_x, now_y = x_of(now), y_of(price_now)

    if last is None:
        title = f"Price of the next slot: {format_btc(min_price)} BTC, the minimum; no sale yet."
        description = "A flat line at the minimum price: nobody has bought a slot yet."
    else:
        ends_at = last["endsAt"]
        if now >= ends_at:
            title = (
                f"Price of the next slot: {format_btc(min_price)} BTC, the minimum, "
                f"since {_hhmm(ends_at)} UTC."
            )
        else:
            title = (
                f"Price of the next slot: {format_btc(price_now)} BTC now, falling to "
                f"the minimum of {format_btc(min_price)} BTC at {_hhmm(ends_at)} UTC."
            )
        description = (
            f"The price started at {format_btc(curve[0][1])} BTC when the last slot was bought "
            f"({_utc_stamp(last['purchasedAt'])}) and falls in a straight line to "
            f"{format_btc(min_price)} BTC at the end of that slot ({_utc_stamp(ends_at)}), "
            f"then stays there. Now is {_utc_stamp(now)}."
        )

    label_y = bottom + 17
    # Time labels at the sale and at the slot's end; the end label is left out when it would
    # overlap the first (a sale long ago squeezes the slope to the left edge).
    x_labels = [(left, "start", _hhmm(t_first))]
    if last is not None and x_of(last["endsAt"]) - left >= 80:
        x_labels.append((x_of(last["endsAt"]), "middle", _hhmm(last["endsAt"])))
    y_labels = [(y_of(p_low), f"{format_btc(p_low)} BTC")]
    if p_high != p_low:
        y_labels.insert(0, (y_of(p_high), f"{format_btc(p_high)} BTC"))
    now_label_anchor = "end" if now_x > (left + right) // 2 else "start"
    now_label_x = now_x - 7 if now_label_anchor == "end" else now_x + 7

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="price-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="11" fill="currentColor">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(description)}</desc>",
        f'<path class="axes" d="M{left},{top}V{bottom}H{right}" fill="none" '
        f'stroke="currentColor" stroke-opacity="0.4"/>',
    ]
    for y, text in y_labels:
        parts.append(
            f'<text class="y-label" x="{left - 6}" y="{y + 4}" text-anchor="end">'
            f"{escape(text)}</text>"
        )
    for x, anchor, text in x_labels:
        parts.append(
            f'<text class="x-label" x="{x}" y="{label_y}" text-anchor="{anchor}">'
            f"{escape(text)} UTC</text>"
        )
    parts += [
        f'<polyline class="price-line" points="{polyline}" fill="none" '
        f'stroke="currentColor" stroke-width="2" stroke-linejoin="round"/>',
        f'<circle class="now" cx="{now_x}" cy="{now_y}" r="4"/>',
        f'<text class="now-label" x="{now_label_x}" y="{max(now_y - 7, top)}" '
        f'text-anchor="{now_label_anchor}">now {escape(format_btc(price_now))} BTC</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def _div_round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator, exact, rounded half up: floor(n / d + 1/2), in integers alone
    (a Fraction gives the same, and costs its gcd on every page view)."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    elif denominator == 0:
        raise ZeroDivisionError(f"Fraction({numerator}, 0)")
    return (2 * numerator + denominator) // (2 * denominator)


def _require_ints(**values: object) -> None:
    # Amounts and times are integers by design; a float here is a bug upstream, not a price.
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")


def _utc(t: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC)


def _hhmm(t: int) -> str:
    return _utc(t).strftime("%H:%M")


def _utc_stamp(t: int) -> str:
    return _utc(t).strftime("%Y-%m-%d %H:%M UTC")
