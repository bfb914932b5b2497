"""The admin dashboard: figures from every app, gathered without `accounts` importing them.

Apps register panels (`register_panel`) and worker heartbeat names (`register_heartbeat`) from
their `AppConfig.ready` (through their `admin_pages.register_admin()`), so the dependency rule
holds: `adspace -> accounts`, `bitcoinkeys -> accounts`, never the other way.

Money figures come from ONE walk: the audit's `Report` (`run_audit(check_locks=False)`, safe on
a live system), handed to every panel registered with `uses_report=True`. The whole build is
cached for `CACHE_SECONDS` in Django's cache, so reloading the dashboard does not walk every
document again; "Run the audit now" rebuilds it from the fresh report.

A panel that raises does not take the page down: it shows as a red banner with the error, and
the traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.urls import reverse
from django.utils.http import urlencode

from config.cache import CacheUnavailable
from docstore import Clock, NotFound, Store

from . import heartbeat, locks, money
from .audit import Report, run_audit
from .gateway import iter_accounts
from .management.commands.audit import LAST_KEY as AUDIT_LAST_KEY
from .models import User

log = logging.getLogger(__name__)

CACHE_SECONDS = 30
# Locks listed on the dashboard (the count and the oldest age cover every lock).
LOCKS_SHOWN = 20


# --- what a panel is --------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    value: Any
    red: bool = False
    link: str | None = None


@dataclass
class Panel:
    """A box on the dashboard: rows of (label, value), red banners, an optional link."""

    title: str
    rows: list[Row] = field(default_factory=list)
    alert: str | None = None
    alerts: list[str] = field(default_factory=list)
    link: str | None = None
    link_text: str = "Details"
    note: str = ""

    def __post_init__(self) -> None:
        # Panels may be written with plain (label, value) pairs.
        self.rows = [r if isinstance(r, Row) else Row(*r) for r in self.rows]

    @property
    def banners(self) -> list[str]:
        return ([self.alert] if self.alert else []) + list(self.alerts)

    @property
    def red(self) -> bool:
        return bool(self.banners) or any(r.red for r in self.rows)


PanelFn = Callable[..., Panel]


@dataclass(frozen=True)
class _Registered:
    name: str
    fn: PanelFn
    uses_report: bool


_panels: dict[str, _Registered] = {}
_heartbeats: dict[str, tuple[str, bool]] = {}


def register_panel(name: str, fn: PanelFn, *, uses_report: bool = False) -> None:
    """Show `fn(store, clock) -> Panel` on the dashboard (`fn(store, clock, report)` with
    `uses_report`, to read figures from the shared audit walk instead of walking again).

    Registering a name again replaces it (ready() may run more than once); panels show in the
    order their names were first registered.
    """
    _panels[name] = _Registered(name, fn, uses_report)


def registered_panels() -> list[str]:
    return list(_panels)


def register_heartbeat(name: str, description: str = "", required: bool = False) -> None:
    """A `worker::<name>` heartbeat to show; `required` ones are red when they never beat."""
    _heartbeats[name] = (description, required)


# The foundation's own workers: every run_workers node also beats `worker::run_workers` (the latest
# pass of any node); /healthz reads the nodes themselves (accounts.nodes).
register_heartbeat("run_workers", "the worker process: every registered task", required=True)
register_heartbeat("recover", "manage.py recover, when run on its own")


# --- building it ------------------------------------------------------------------------------


@dataclass
class Dashboard:
    at: int
    panels: list[Panel]
    held: dict[str, int]
    came_in: dict[str, int]
    report_ok: bool | None
    report_lines: list[str]


def _cache_key(store: Store) -> str:
    # One cache may serve several stores (test runs, deployments sharing a bucket by prefix).
    return f"admin-dashboard:{getattr(store, 'prefix', '')}"


def cached_dashboard(store: Store, clock: Clock) -> Dashboard:
    """The dashboard as built at most CACHE_SECONDS ago, or a fresh build."""
    key = _cache_key(store)
    try:
        found = cache.get(key)
    except CacheUnavailable:  # built afresh, as on a miss
        found = None
    if isinstance(found, Dashboard):
        return found
    return rebuild(store, clock)


def rebuild(store: Store, clock: Clock, report: Report | None = None) -> Dashboard:
    """Build (from `report` when one was just computed) and cache the dashboard."""
    built = build_dashboard(store, clock, report)
    try:
        cache.set(_cache_key(store), built, CACHE_SECONDS)
    except CacheUnavailable:
        pass  # the next view builds it again
    return built


def forget(store: Store) -> None:
    try:
        cache.delete(_cache_key(store))
    except CacheUnavailable:
        pass  # an entry the cache kept is at most CACHE_SECONDS old


def live_report(store: Store) -> Report:
    # check_locks=False: on a live system locks are normal, not breaches.
    return run_audit(store, check_locks=False)


def build_dashboard(store: Store, clock: Clock, report: Report | None = None) -> Dashboard:
    panels: list[Panel] = []
    if report is None:
        try:
            report = live_report(store)
        except Exception as exc:
            log.exception("dashboard: the audit walk failed")
            panels.append(Panel("Money", alert=f"The audit walk failed: {exc!r}"))
            report = None
    if report is not None:
        panels.append(money_panel(report))
    panels.append(_safe("Locks", locks_panel, store, clock))
    for entry in list(_panels.values()):
        if entry.uses_report:
            if report is None:
                panels.append(Panel(entry.name, alert="Not shown: the audit walk failed."))
                continue
            panels.append(_safe(entry.name, entry.fn, store, clock, report))
        else:
            panels.append(_safe(entry.name, entry.fn, store, clock))
    if report is None:
        return Dashboard(clock.now(), panels, {}, {}, None, [])
    return Dashboard(
        at=clock.now(),
        panels=panels,
        held=dict(report.held),
        came_in=dict(report.came_in),
        report_ok=report.ok,
        report_lines=report.lines(),
    )


def _safe(name: str, fn: PanelFn, *args: Any) -> Panel:
    try:
        panel = fn(*args)
    except Exception as exc:
        log.exception("dashboard panel %s failed", name)
        return Panel(name, alert=f"This panel failed: {exc!r}")
    if not isinstance(panel, Panel):
        return Panel(name, alert=f"This panel returned {type(panel).__name__}, not a Panel.")
    return panel


# --- the foundation's panels --------------------------------------------------------------------


def _btc(sats: int) -> str:
    return f"{money.format_btc(sats)} BTC ({sats} sats)"


def money_panel(report: Report) -> Panel:
    """Both sides of the books, as every registered audit named them (accounts cannot know the
    names other apps use, so it shows them all rather than picking some)."""
    rows: list[Row] = [Row("Users (ORM)", User.objects.count())]
    rows.append(Row("Account documents", report.facts.get("accounts", 0)))
    for name, amount in sorted(report.held.items()):
        rows.append(Row(f"Held: {name}", _btc(amount)))
    for name, amount in sorted(report.came_in.items()):
        rows.append(Row(f"Came in: {name}", _btc(amount)))
    held, came_in = sum(report.held.values()), sum(report.came_in.values())
    rows.append(Row("Total held", _btc(held)))
    rows.append(Row("Total came in", _btc(came_in)))
    rows.append(Row("Books balance", "yes" if report.balanced else "NO", red=not report.balanced))
    alert = None
    if report.breaches:
        alert = f"The live walk found {len(report.breaches)} breach(es): " + "; ".join(
            report.breaches[:5]
        )
    elif not report.balanced:
        alert = f"The books do not balance: held {held} sats, came in {came_in} sats."
    return Panel(
        "Money",
        rows=rows,
        alert=alert,
        note="From one live walk of every document (locks in flight are not breaches).",
    )


@dataclass
class HeldLock:
    username: str
    kind: str
    ref: str
    age: int
    past_lease: bool


def held_locks(store: Store, now: int) -> list[HeldLock]:
    """Every account lock held right now, oldest first (walks the account directory)."""
    found = []
    for username, doc in iter_accounts(store):
        lock = doc.value.get("lock")
        if lock:
            found.append(
                HeldLock(
                    username,
                    lock.get("kind", "?"),
                    lock.get("ref", ""),
                    now - lock.get("since", now),
                    locks.lease_expired(lock, now),
                )
            )
    found.sort(key=lambda h: -h.age)
    return found


def locks_panel(store: Store, clock: Clock) -> Panel:
    # A second walk of the account directory (the audit's does not hand out locks); it reads
    # only account docs, in batches of 500, and is cached with the rest of the dashboard.
    held = held_locks(store, clock.now())
    inspect = reverse("admin:accounts_inspect")
    rows = [
        Row("Locks held", len(held)),
        Row("Oldest", f"{held[0].age} s" if held else "-", red=bool(held) and held[0].past_lease),
    ]
    for h in held[:LOCKS_SHOWN]:
        lease = "; past its lease" if h.past_lease else ""
        rows.append(
            Row(
                h.username,
                f"{h.kind} {h.ref}, {h.age} s{lease}",
                red=h.past_lease,
                link=f"{inspect}?{urlencode({'username': h.username})}",
            )
        )
    stuck = [h for h in held if h.past_lease]
    alert = None
    if stuck:
        alert = (
            f"{len(stuck)} lock(s) past the lease of {locks.lease_seconds()} s: recovery should "
            f"have finished them; is the worker running?"
        )
    return Panel(
        "Locks",
        rows=rows,
        alert=alert,
        link=reverse("admin:accounts_list") + "?locked=1",
        link_text="All locked accounts",
    )


# --- read fresh on every view (one read each) ----------------------------------------------------


@dataclass
class Beat:
    name: str
    description: str
    at: int | None
    age: int | None
    stale: bool
    counters: str

    @property
    def when(self) -> datetime | None:
        return datetime.fromtimestamp(self.at, UTC) if self.at is not None else None


def worker_beats(store: Store, now: int) -> list[Beat]:
    stale_after = settings.WORKER_STALE_SECONDS
    beats = heartbeat.read_beats(store, list(_heartbeats))
    out = []
    for name, (description, required) in _heartbeats.items():
        beat = beats.get(name)
        if beat is None:
            out.append(Beat(name, description, None, None, required, ""))
            continue
        at = beat.get("at", 0)
        counters = ", ".join(
            f"{k}={v}" for k, v in sorted(beat.items()) if k not in ("name", "at") and v
        )
        age = now - at
        out.append(Beat(name, description, at, age, age > stale_after, counters))
    return out


def last_audit(store: Store) -> dict | None:
    """`audit::last` with its breaches picked out of its lines, or None if no audit ran yet."""
    try:
        value = store.get(AUDIT_LAST_KEY).value
    except NotFound:
        return None
    lines: Iterable[str] = value.get("lines") or []
    problems = [ln for ln in lines if ln.startswith("BREACH") or ln.endswith(": NO")]
    return {**value, "problems": problems}


def store_audit(store: Store, clock: Clock, report: Report, by: str = "") -> dict:
    # The last result is a cache for the admin and monitoring, not money: upsert is right.
    value = {
        "at": clock.now(),
        "ok": report.ok,
        "lines": report.lines(),
        "checkLocks": report.check_locks,
        "by": by,
    }
    store.upsert(AUDIT_LAST_KEY, value)
    return value
