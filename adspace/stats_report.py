"""Delivery counts read back: per slot and UTC day, summed one way for every screen and export.

`report` reads the counters of some slots over some days in one batched read and builds every
figure from the same cells: a day's row is the sum of its slots' cells on that day, a slot's row
the sum of its cells over the days, and the headline total the sum of the slot rows. The seller's
campaign page, the buyer's purchases page, the CSV and the JSON endpoint all call it, so their
numbers always agree. Counts appear once flushed (adspace.stats: every STATS_FLUSH_SECONDS).

A slot's counts can only fall on the days from its early switch (serving) to the end of its click
grace (adspace.delivery), so the counters to read are known by key: no scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from docstore import Store

from . import delivery, gateway, serving, stats

# The longest range one page, export or API call may ask for.
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 14
# Slots read per batch while walking a campaign back in time.
WALK_BATCH = 50
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class RangeError(Exception):
    """A date range that cannot be served: `message` says why (answered with 400)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class Counts:
    impressions: int = 0
    clicks: int = 0
    api_fetches: int = 0

    def add(self, other: Counts) -> None:
        self.impressions += other.impressions
        self.clicks += other.clicks
        self.api_fetches += other.api_fetches

    @property
    def ctr(self) -> Decimal | None:
        """Clicks per impression in percent, to 2 places; None without impressions."""
        if not self.impressions:
            return None
        return (Decimal(self.clicks) * 100 / Decimal(self.impressions)).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )

    @property
    def ctr_text(self) -> str:
        ctr = self.ctr
        return "-" if ctr is None else f"{ctr} %"

    def as_dict(self) -> dict:
        ctr = self.ctr
        return {
            "impressions": self.impressions,
            "clicks": self.clicks,
            "apiFetches": self.api_fetches,
            "ctrPercent": None if ctr is None else str(ctr),
        }


@dataclass
class SlotStats:
    owner: str
    n: int
    k: int
    slot: dict
    total: Counts = field(default_factory=Counts)
    days: list[tuple[date, Counts]] = field(default_factory=list)


@dataclass
class Report:
    first_day: date | None
    last_day: date | None
    days: list[tuple[date, Counts]]
    slots: list[SlotStats]
    total: Counts


def utc_day(t: int) -> date:
    return datetime.fromtimestamp(t, tz=UTC).date()


def counting_days(slot: dict) -> tuple[date, date]:
    """The first and last UTC day a slot's impressions or clicks can be counted on."""
    first = utc_day(slot["startsAt"] - serving.EARLY_SWITCH_SECONDS)
    last = utc_day(slot["endsAt"] + delivery.CLICK_GRACE_SECONDS)
    return first, last


def _each_day(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def report(
    store: Store,
    slots: list[tuple[str, int, int, dict]],
    first_day: date | None = None,
    last_day: date | None = None,
) -> Report:
    """Counts of these slots (owner, n, k, slot doc) on the days in [first_day, last_day] (each
    slot's whole counting window where a bound is None), in one batched read."""
    wanted: list[tuple[SlotStats, list[date]]] = []
    keys: list[str] = []
    for owner, n, k, slot in slots:
        first, last = counting_days(slot)
        days = _each_day(max(first, first_day or first), min(last, last_day or last))
        wanted.append((SlotStats(owner, n, k, slot), days))
        for day in days:
            keys += [gateway.stat_key(owner, n, k, day.isoformat(), kind) for kind in stats.KINDS]
    found = store.get_multi(keys) if keys else {}

    by_day: dict[date, Counts] = {}
    if first_day is not None and last_day is not None:
        by_day = {day: Counts() for day in _each_day(first_day, last_day)}
    total = Counts()
    for row, days in wanted:
        for day in days:
            values = [
                found.get(gateway.stat_key(row.owner, row.n, row.k, day.isoformat(), kind))
                for kind in stats.KINDS
            ]
            cell = Counts(*(int(v.value) if v is not None else 0 for v in values))
            row.days.append((day, cell))
            row.total.add(cell)
            by_day.setdefault(day, Counts()).add(cell)
        total.add(row.total)
    return Report(
        first_day,
        last_day,
        sorted(by_day.items()),
        [row for row, _ in wanted],
        total,
    )


def campaign_slots(
    store: Store, owner: str, n: int, campaign: dict, first_day: date, last_day: date
) -> list[tuple[str, int, int, dict]]:
    """The campaign's slots whose counting window meets [first_day, last_day], by index.

    Slots are back to back, so the walk goes back from the last sale and stops at the first slot
    whose window ended before `first_day`.
    """
    last = campaign.get("last")
    if last is None:
        return []
    out: list[tuple[str, int, int, dict]] = []
    hi = last["slot"]
    while hi >= 0:
        lo = max(0, hi - WALK_BATCH + 1)
        found = gateway.get_slots(store, owner, n, lo, hi)
        for k in range(hi, lo - 1, -1):
            slot = found.get(k)
            if slot is None:
                continue
            first, end = counting_days(slot)
            if end < first_day:
                return out[::-1]
            if first <= last_day:
                out.append((owner, n, k, slot))
        hi = lo - 1
    return out[::-1]


def campaign_report(
    store: Store, owner: str, n: int, campaign: dict, first_day: date, last_day: date
) -> Report:
    return report(
        store, campaign_slots(store, owner, n, campaign, first_day, last_day), first_day, last_day
    )


def parse_range(
    first_text: str | None,
    last_text: str | None,
    today: date,
    default_days: int = DEFAULT_RANGE_DAYS,
) -> tuple[date, date]:
    """The [from, to] days asked for (YYYY-MM-DD); by default the `default_days` to today.

    RangeError for a malformed day, a range that runs backwards, or one longer than
    MAX_RANGE_DAYS.
    """

    def day(text: str, what: str) -> date:
        if not _DAY.fullmatch(text):
            raise RangeError(f"The {what} day must be written YYYY-MM-DD.")
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise RangeError(f"The {what} day is not a day of the calendar.") from None

    last = today if not last_text else day(last_text, "last")
    first = last - timedelta(days=default_days - 1) if not first_text else day(first_text, "first")
    if first > last:
        raise RangeError("The first day comes after the last day.")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise RangeError(
            f"A range may span at most {MAX_RANGE_DAYS} days; ask for several shorter ones."
        )
    return first, last
