"""The delivery chart: impressions and clicks per UTC day as a server-rendered SVG.

Static markup only, like the price chart (adspace.pricing.chart_svg): no script, no event
handlers, no external references, so it is inlined in the page and works without JavaScript.
Impressions are a bar per day on the left axis, clicks a bar beside it on their own scale (the
right axis), since clicks are usually a hundredth of impressions or less.
"""

from __future__ import annotations

from datetime import date
from html import escape

from .stats_report import Counts


def _scale_top(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at or above `value`: the axis' top label."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def chart_svg(days: list[tuple[date, Counts]], width: int = 600, height: int = 200) -> str:
    left, right, top, bottom = 56, width - 56, 14, height - 34
    imp_top = _scale_top(max((c.impressions for _, c in days), default=0))
    click_top = _scale_top(max((c.clicks for _, c in days), default=0))
    total = Counts()
    for _, c in days:
        total.add(c)
    first = days[0][0].isoformat() if days else ""
    last = days[-1][0].isoformat() if days else ""
    title = (
        f"Impressions and clicks per day, {first} to {last} (UTC): {total.impressions} "
        f"impressions, {total.clicks} clicks."
    )
    rows = "; ".join(
        f"{d.isoformat()}: {c.impressions} impressions, {c.clicks} clicks" for d, c in days
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stats-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="11" fill="currentColor">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(rows or 'No days in range.')}</desc>",
        f'<path class="axes" d="M{left},{top}V{bottom}H{right}V{top}" fill="none" '
        f'stroke="currentColor" stroke-opacity="0.4"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{imp_top}</text>',
        f'<text x="{left - 6}" y="{bottom + 4}" text-anchor="end">0</text>',
        f'<text x="{right + 6}" y="{top + 4}">{click_top}</text>',
        f'<text x="{right + 6}" y="{bottom + 4}">0</text>',
        f'<text class="legend-impressions" x="{left}" y="{height - 4}">▮ impressions (left)</text>',
        f'<text class="legend-clicks" x="{right}" y="{height - 4}" text-anchor="end">'
        f"▮ clicks (right)</text>",
    ]
    if days:
        slot_width = (right - left) / len(days)
        bar = max(1.0, slot_width * 0.4)
        for i, (day, c) in enumerate(days):
            x = left + i * slot_width + slot_width * 0.1
            h_imp = (bottom - top) * c.impressions / imp_top
            h_click = (bottom - top) * c.clicks / click_top
            label = f"{day.isoformat()}: {c.impressions} impressions, {c.clicks} clicks"
            parts.append(
                f'<g class="day"><title>{escape(label)}</title>'
                f'<rect class="impressions" x="{x:.1f}" y="{bottom - h_imp:.1f}" '
                f'width="{bar:.1f}" height="{h_imp:.1f}" fill-opacity="0.45"/>'
                f'<rect class="clicks" x="{x + bar:.1f}" y="{bottom - h_click:.1f}" '
                f'width="{bar:.1f}" height="{h_click:.1f}" fill-opacity="0.9"/></g>'
            )
        parts.append(f'<text x="{left}" y="{bottom + 14}">{escape(first)}</text>')
        if len(days) > 1:
            parts.append(
                f'<text x="{right}" y="{bottom + 14}" text-anchor="end">{escape(last)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
