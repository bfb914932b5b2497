"""CSV exports of the signed-in user's own ledger, sales, purchases and delivery statistics.

Each export is a generator of rows, streamed (StreamingHttpResponse) as it is read, a batch of
documents at a time, so a long history never sits in memory. Conventions, the same in every file:
- times are UTC, ISO 8601 with a `Z` (`2026-12-04T10:00:00Z`);
- amounts appear twice: BTC with 8 decimals (`0.00300000`) and whole satoshis;
- a text cell beginning with `=`, `+`, `-`, `@`, a tab or a carriage return gets a `'` in front,
  so a spreadsheet shows it as text instead of running it as a formula (OWASP "CSV injection").
  Numbers we write (counts, amounts, a negative ledger delta) are not text and stay numbers;
- a date range (`from`, `to`, YYYY-MM-DD, inclusive) bounds every export, at most
  stats_report.MAX_RANGE_DAYS days (a year by default).
Rows come newest first, as on the pages.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.http import StreamingHttpResponse

from accounts.gateway import get_account
from accounts.money import format_btc
from docstore import NotFound, Store

from . import gateway, services, stats_report

BATCH = 100
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Amount(str):
    """A BTC amount we formatted: a number, never made inert (a negative one starts with "-")."""


def inert(value: Any) -> Any:
    """A text cell a spreadsheet will not run as a formula; numbers as they are."""
    if type(value) is str and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def iso(t: int | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def btc(sats: int) -> Amount:
    """Satoshis as BTC with exactly 8 decimals: -300000 -> "-0.00300000"."""
    return Amount(format_btc(sats))


def day_bounds(first: date, last: date) -> tuple[int, int]:
    """[start, end) unix seconds of the UTC days first..last."""
    start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    return start, start + ((last - first).days + 1) * 86400


class _Echo:
    def write(self, value: str) -> str:
        return value


def streamed_csv(filename: str, header: list[str], rows: Iterable[list]) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([inert(v) for v in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


# --- ledger and purchases: the ledger walked back from its newest entry --------------------------


def _ledger_newest_first(store: Store, username: str, start: int, end: int) -> Iterator[dict]:
    """The user's ledger entries with `at` in [start, end), newest first, a page at a time."""
    try:
        account = get_account(store, username).value
    except NotFound:
        return
    hi = account.get("ledgerPages", 0) * services.LEDGER_PAGE_SIZE + len(account.get("ledger", []))
    while hi > 0:
        lo = max(0, hi - BATCH)
        for entry in reversed(services.ledger_entries(store, username, account, lo, hi)):
            if entry["at"] < start:
                return  # entries are in time order
            if entry["at"] < end:
                yield entry
        hi = lo


LEDGER_HEADER = [
    "time_utc", "kind", "reference", "change_btc", "change_sats", "balance_after_btc",
    "balance_after_sats", "details",
]  # fmt: skip
_LEDGER_FIELDS = {"at", "kind", "ref", "delta", "balanceAfter"}


def ledger_rows(store: Store, username: str, first: date, last: date) -> Iterator[list]:
    start, end = day_bounds(first, last)
    for e in _ledger_newest_first(store, username, start, end):
        details = "; ".join(f"{k}: {e[k]}" for k in sorted(e) if k not in _LEDGER_FIELDS)
        yield [
            iso(e["at"]), str(e["kind"]), str(e["ref"]), btc(e["delta"]), e["delta"],
            btc(e["balanceAfter"]), e["balanceAfter"], details,
        ]  # fmt: skip


PURCHASES_HEADER = [
    "bought_utc", "seller", "campaign", "campaign_title", "slot", "starts_utc", "ends_utc",
    "price_btc", "price_sats", "review", "review_reason", "ad", "ad_url",
]  # fmt: skip


def purchases_rows(store: Store, username: str, first: date, last: date) -> Iterator[list]:
    start, end = day_bounds(first, last)
    buys = (
        e
        for e in _ledger_newest_first(store, username, start, end)
        if e["kind"] == "buy" and services.parse_slot_key(str(e["ref"]))
    )
    while batch := [e for _, e in zip(range(BATCH), buys, strict=False)]:
        refs = [services.parse_slot_key(e["ref"]) for e in batch]
        docs = gateway.get_many(
            store,
            [e["ref"] for e in batch]
            + [gateway.tx_key(o, n, k) for o, n, k in refs]
            + sorted({gateway.campaign_key(o, n) for o, n, _ in refs}),
        )
        fillers = gateway.get_many(
            store, sorted({docs[e["ref"]]["filler"] for e in batch if e["ref"] in docs})
        )
        for entry, (owner, n, k) in zip(batch, refs, strict=True):
            slot = docs.get(entry["ref"]) or {}
            tx = docs.get(gateway.tx_key(owner, n, k))
            campaign = docs.get(gateway.campaign_key(owner, n))
            filler = fillers.get(slot.get("filler", "")) or {}
            review = services.purchase_review(tx, entry["at"]) if tx else {}
            if tx and review.get("state") == "in_review":
                review = {"state": "in review"}
            yield [
                iso(entry["at"]), owner, n, gateway.campaign_title(campaign) if campaign else "",
                k, iso(slot.get("startsAt")), iso(slot.get("endsAt")), btc(-entry["delta"]),
                -entry["delta"], review.get("state", ""), review.get("reason", ""),
                filler.get("nickname", ""), filler.get("url", ""),
            ]  # fmt: skip


# --- sales: each campaign's slots walked back from its last sale ---------------------------------

SALES_HEADER = [
    "bought_utc", "campaign", "campaign_title", "slot", "starts_utc", "ends_utc", "buyer",
    "price_btc", "price_sats", "fee_btc", "fee_sats", "credit_btc", "credit_sats", "state",
    "ad_url", "ad_hover_text",
]  # fmt: skip


def sales_rows(store: Store, owner: str, first: date, last: date) -> Iterator[list]:
    start, end = day_bounds(first, last)
    for campaign in reversed(gateway.owner_campaigns(store, owner)):
        if not campaign.get("last"):
            continue
        n, title = campaign["n"], gateway.campaign_title(campaign)
        hi = campaign["last"]["slot"]
        while hi >= 0:
            lo = max(0, hi - BATCH + 1)
            keys = [gateway.slot_key(owner, n, k) for k in range(hi, lo - 1, -1)]
            docs = gateway.get_many(
                store, keys + [gateway.tx_key(owner, n, k) for k in range(lo, hi + 1)]
            )
            fillers = gateway.get_many(
                store, sorted({docs[key]["filler"] for key in keys if key in docs})
            )
            for k in range(hi, lo - 1, -1):
                slot, tx = (
                    docs.get(gateway.slot_key(owner, n, k)),
                    docs.get(gateway.tx_key(owner, n, k)),
                )
                if slot is None or tx is None:
                    continue
                if slot["purchasedAt"] < start:
                    hi = -1  # slots are sold in index order: everything older is out of range
                    break
                if slot["purchasedAt"] >= end:
                    continue
                filler = fillers.get(slot["filler"]) or {}
                credit = 0 if tx["state"] == "rejected" else tx["amount"] - tx["fee"]
                yield [
                    iso(slot["purchasedAt"]), n, title, k, iso(slot["startsAt"]),
                    iso(slot["endsAt"]), tx["buyer"], btc(tx["amount"]), tx["amount"],
                    btc(tx["fee"]), tx["fee"], btc(credit), credit, tx["state"],
                    filler.get("url", ""), filler.get("hoverText", ""),
                ]  # fmt: skip
            else:
                hi = lo - 1


# --- delivery statistics -------------------------------------------------------------------------

STATS_HEADER = [
    "day_utc", "campaign", "slot", "slot_starts_utc", "slot_ends_utc", "impressions", "clicks",
    "ctr_percent", "api_fetches",
]  # fmt: skip


def stats_rows(
    store: Store, owner: str, campaigns: list[dict], first: date, last: date
) -> Iterator[list]:
    for campaign in campaigns:
        report = stats_report.campaign_report(store, owner, campaign["n"], campaign, first, last)
        for s in reversed(report.slots):
            for day, c in reversed(s.days):
                ctr = c.ctr
                yield [
                    day.isoformat(), campaign["n"], s.k, iso(s.slot["startsAt"]),
                    iso(s.slot["endsAt"]), c.impressions, c.clicks,
                    "" if ctr is None else Amount(ctr), c.api_fetches,
                ]  # fmt: skip


def default_first(last: date) -> date:
    return last - timedelta(days=stats_report.MAX_RANGE_DAYS - 1)
