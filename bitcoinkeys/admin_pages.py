"""Staff pages for withdrawals and deposit addresses, and the bitcoin panels of the dashboard.

`register_admin()` (called from `BitcoinkeysConfig.ready`) adds them through the registries in
`accounts.admin` and `accounts.dashboard`, so `accounts` never imports bitcoinkeys.

The only action here is the one the withdrawals module offers safely: refunding a payout the
wallet refused (`withdrawals.refund_failed`), behind a confirmation page, for staff with the
`accounts.refund_withdrawal` permission. Its commit point (the
request's CAS `failed -> failed-refunded`) makes a second submission, or a race with the
processor or the recovery pass that refund the same request, a no-op. Payouts themselves are
the `process_withdrawals` command's job; nothing here sends, retries or deletes anything.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from accounts import dashboard, locks
from accounts.admin import (
    REFUND_PERMISSION,
    admin_context,
    paginate,
    register_admin_urls,
    register_operation,
    require_permission,
)
from accounts.audit import Report
from accounts.gateway import directory_size, get_account, walk_directory
from accounts.models import USERNAME_RE
from accounts.money import format_btc
from docstore import Clock, DocstoreError, NotFound, Store, get_clock, get_store

from . import deposits, node_alerts, pool
from . import gateway as g
from . import withdrawals as w
from .payout_lease import LEASE_KEY
from .withdraw_queue import CURSOR_KEY

log = logging.getLogger("bitcoinkeys.withdrawals")

WITHDRAWALS_PER_PAGE = 50
ADDRESSES_PER_PAGE = 50
CHUNK = 500
# Deposit alerts shown as banners on the dashboard; the deposits page lists every one.
ALERT_BANNERS = 20


def _utc(t: int | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if isinstance(t, int) else None


def _inspect_url(username: str) -> str:
    return f"{reverse('admin:accounts_inspect')}?{urlencode({'username': username})}"


def _valid_username(username: str) -> bool:
    return bool(re.match(USERNAME_RE, username))


def _sats(side: dict[str, int], name: str, sign: int = 1) -> str:
    if name not in side:
        return "not audited"  # that audit is not registered (BitcoinkeysConfig.ready)
    return f"{format_btc(sign * side[name])} BTC ({sign * side[name]} sats)"


# --- dashboard panels ---------------------------------------------------------------------------


def keypool_panel(store: Store, clock: Clock) -> dashboard.Panel:
    levels = pool.pool_levels(store)
    free = levels["freeAddressesOnList"]
    rows = [
        ("Key sets", levels["sets"]),
        ("Keys per page", levels["pageSize"]),
        ("Sets refilling now", levels["setsFilling"]),
        ("Huge-list pages imported", levels["listPages"]),
        ("Huge-list pages left (from the current one)", levels["listPagesLeft"]),
        ("Free ranges on the current huge-list page", levels["freeRangesOnCurrentPage"]),
        dashboard.Row("Addresses left on the huge list", free, red=free == 0),
    ]
    alert = None
    if levels["alert"]:
        a = levels["alert"]
        since = _utc(a.get("at"))
        alert = (
            f"OUT OF DEPOSIT ADDRESSES since {since:%Y-%m-%d %H:%M:%S} UTC: set {a.get('set')} "
            f"cannot fill its page {a.get('page')} (the huge list ends before page "
            f"{a.get('listPage')}). Run import_keys; waiting requests resume by themselves."
            if since
            else "OUT OF DEPOSIT ADDRESSES: run import_keys."
        )
    return dashboard.Panel("Key pool", rows=rows, alert=alert)


def node_panel(store: Store, clock: Clock) -> dashboard.Panel:
    """The bitcoin node as the watcher and the processor last found it (chainalert docs)."""
    from django.conf import settings

    alerts = node_alerts.current_alerts(store)
    banners = []
    for role, alert in sorted(alerts.items()):
        since = _utc(alert.get("since"))
        when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
        what = node_alerts.WHAT.get(role, "nothing is done")
        banners.append(
            f"BITCOIN NODE UNUSABLE for {role}{when} ({alert.get('kind')}): "
            f"{alert.get('message')} Until it is fixed {what}."
        )
    rows = [
        ("Backend", settings.CHAIN_BACKEND),
        ("Network (BITCOIN_NETWORK)", settings.BITCOIN_NETWORK),
        dashboard.Row("Faults", len(alerts), red=bool(alerts)),
    ]
    return dashboard.Panel("Bitcoin node", rows=rows, alerts=banners)


def _alert_banner(alert: dict) -> list[str]:
    out = []
    for outpoint, entry in sorted((alert.get("outpoints") or {}).items()):
        events = "; ".join(
            f"{e.get('what')} (seen {_utc(e.get('at')):%Y-%m-%d %H:%M} UTC)"
            if _utc(e.get("at"))
            else str(e.get("what"))
            for e in entry.get("events", [])
        )
        out.append(
            f"{alert.get('username')}: {entry.get('sats')} sats to {alert.get('address')} "
            f"({outpoint}) were credited, then {events}. The balance was NOT debited; decide "
            f"and adjust it by hand if needed."
        )
    return out


def deposits_panel(store: Store, clock: Clock, report: Report) -> dashboard.Panel:
    # iter_alerts walks the deposit directory (O(addresses) in batches of 500); the dashboard
    # is cached, so this runs at most once per CACHE_SECONDS.
    banners: list[str] = []
    for alert in deposits.iter_alerts(store):
        banners += _alert_banner(alert)
    # The deposits audit names this figure only while a deposit is between commit and settle.
    in_flight = {"deposits in flight": report.held.get("deposits in flight", 0)}
    shown = banners[:ALERT_BANNERS]
    if len(banners) > len(shown):
        shown.append(f"... and {len(banners) - len(shown)} more on the deposits page.")
    rows = [
        ("Deposits credited", _sats(report.came_in, "deposits")),
        ("Deposits in flight (committed, not settled)", _sats(in_flight, "deposits in flight")),
        ("Deposit addresses dealt", report.facts.get("deposit addresses", "not audited")),
        dashboard.Row("Credited payments that vanished", len(banners), red=bool(banners)),
    ]
    return dashboard.Panel(
        "Deposits",
        rows=rows,
        alerts=shown,
        link=reverse("admin:bitcoinkeys_deposits"),
        link_text="Deposit addresses",
    )


def withdrawals_panel(store: Store, clock: Clock, report: Report) -> dashboard.Panel:
    rows: list = [
        ("Held (amount + fee of queued, sending, failed)", _sats(report.held, "held withdrawals")),
        ("Withdrawal fees earned", _sats(report.held, "withdrawal fees earned")),
        ("Paid out", _sats(report.came_in, "paid out", sign=-1)),
    ]
    audited = "held withdrawals" in report.held
    for state in w.STATES:
        count = report.facts.get(f"withdrawals {state}", 0)
        # `failed` holds money until its refund lands (the processor and recovery retry it).
        red = audited and state == w.FAILED and count > 0
        rows.append(dashboard.Row(w.STATE_LABELS[state], count if audited else "not audited", red))
    short = node_alerts.payout_short(store)
    banners = []
    if short is not None:
        since = _utc(short.get("since"))
        when = f" (since {since:%Y-%m-%d %H:%M:%S} UTC)" if since else ""
        banners.append(
            f"PAYOUT WALLET SHORT{when}: {short['waiting']} request(s), "
            f"{format_btc(short['waitingSats'])} BTC waiting, the wallet has "
            f"{format_btc(short['balance'])} BTC; short by {format_btc(short['shortBy'])} BTC "
            f"with the fee reserve. They stay queued and go out on the first pass after it is "
            f"funded."
        )
    rows.append(dashboard.Row("Payout wallet short", "yes" if short else "no", bool(short)))
    return dashboard.Panel(
        "Withdrawals",
        rows=rows,
        alerts=banners,
        link=reverse("admin:bitcoinkeys_withdrawals"),
        link_text="Withdrawal queue",
    )


# --- the withdrawal queue -----------------------------------------------------------------------


@dataclass
class Request:
    key: str
    username: str
    i: int
    amount: int
    fee: int
    address: str
    state: str
    txid: str | None
    error: str | None
    created: datetime | None
    history: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return w.STATE_LABELS.get(self.state, self.state)

    @property
    def user_url(self) -> str:
        return _inspect_url(self.username)

    @property
    def refund_url(self) -> str | None:
        if self.state != w.FAILED:
            return None
        return reverse("admin:bitcoinkeys_withdrawal_refund", args=[self.username, self.i])


def _request(key: str, req: dict) -> Request:
    history = [{**h, "when": _utc(h.get("at"))} for h in req.get("history") or []]
    return Request(
        key=key,
        username=req["username"],
        i=req["i"],
        amount=req["amount"],
        fee=req["fee"],
        address=req.get("address", ""),
        state=req["state"],
        txid=req.get("txid"),
        error=req.get("error"),
        created=_utc(req.get("createdAt")),
        history=history,
    )


def _all_requests(store: Store) -> list[Request]:
    """Every request, newest first: a walk of `withdrawdir`, two batched reads per 500."""
    keys = list(
        dict.fromkeys(
            g.withdraw_key(e["username"], e["i"])
            for e in walk_directory(store, g.WITHDRAWDIR, g.withdrawdir_key)
        )
    )
    out: list[Request] = []
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        found = store.get_multi(chunk)
        out += [_request(k, found[k].value) for k in chunk if k in found]
    out.reverse()
    return out


def _user_requests(store: Store, username: str) -> list[Request]:
    count = w.withdrawal_count(store, username)
    keys = [g.withdraw_key(username, i) for i in range(count - 1, -1, -1)]
    out: list[Request] = []
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        found = store.get_multi(chunk)
        out += [_request(k, found[k].value) for k in chunk if k in found]
    return out


def _processor_state(store: Store) -> dict:
    found = store.get_multi([LEASE_KEY, CURSOR_KEY])
    lease = found[LEASE_KEY].value if LEASE_KEY in found else None
    cursor = found[CURSOR_KEY].value if CURSOR_KEY in found else None
    # A released lease keeps {owner: None, last, day, sentToday}: only an owner means running.
    running = bool(lease and lease.get("owner"))
    return {
        "running": running,
        "owner": lease.get("owner") if running else None,
        "until": _utc(lease.get("until")) if running else None,
        "day": lease.get("day") if lease else None,
        "sent_today": lease.get("sentToday", 0) if lease else 0,
        "cursor": cursor.get("next", 0) if cursor else 0,
    }


def withdrawals_view(request: HttpRequest) -> HttpResponse:
    """Every request by state (`?state=`), or one user's (`?user=`), with totals per state.

    Totals need every request, so this walks the whole directory (two batched reads per 500
    requests); a user's requests are read directly by number instead.
    """
    store, now = get_store(), get_clock().now()
    state = request.GET.get("state", "")
    user = request.GET.get("user", "").strip()
    context = admin_context(
        request, "Withdrawal queue", state=state, user=user, states=w.STATES, page=None
    )
    if state and state not in w.STATES:
        messages.error(request, f"There is no state “{state[:30]}”; showing every state.")
        state = context["state"] = ""
    if user and not _valid_username(user):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return TemplateResponse(request, "admin/bitcoinkeys/withdrawals.html", context)
    try:
        requests = _user_requests(store, user) if user else _all_requests(store)
        processor = _processor_state(store)
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return TemplateResponse(request, "admin/bitcoinkeys/withdrawals.html", context)
    totals = {s: {"count": 0, "amount": 0, "fee": 0} for s in w.STATES}
    for r in requests:
        t = totals.setdefault(r.state, {"count": 0, "amount": 0, "fee": 0})
        t["count"] += 1
        t["amount"] += r.amount
        t["fee"] += r.fee
    shown = [r for r in requests if r.state == state] if state else requests
    page = paginate(request, shown, WITHDRAWALS_PER_PAGE)
    context.update(
        page=page,
        rows=list(page.object_list),
        totals=[{"state": s, "label": w.STATE_LABELS.get(s, s), **t} for s, t in totals.items()],
        processor=processor,
        now=now,
    )
    return TemplateResponse(request, "admin/bitcoinkeys/withdrawals.html", context)


class ConfirmRefundForm(forms.Form):
    confirm = forms.CharField(widget=forms.HiddenInput, initial="yes")


def refund_view(request: HttpRequest, username: str, i: int) -> HttpResponse:
    """Refund a `failed` request's hold now (the processor and recovery would, when the
    account is free). Idempotent: the request's CAS to `failed-refunded` happens once."""
    require_permission(request, REFUND_PERMISSION, "refund a payout")
    queue = reverse("admin:bitcoinkeys_withdrawals")
    if not _valid_username(username):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return HttpResponseRedirect(queue)
    back = HttpResponseRedirect(f"{queue}?{urlencode({'user': username})}")
    store, clock = get_store(), get_clock()
    key = g.withdraw_key(username, i)
    try:
        req = store.get(key).value
    except NotFound:
        messages.error(request, f"There is no withdrawal {key}.")
        return back
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return back
    if req["state"] != w.FAILED:
        if req["state"] == w.FAILED_REFUNDED:
            messages.info(request, f"{key} was already refunded; nothing to do.")
        else:
            label = w.STATE_LABELS.get(req["state"], req["state"])
            messages.info(request, f"{key} is “{label}”: only a failed payout can be refunded.")
        return back
    if request.method != "POST" or not ConfirmRefundForm(request.POST).is_valid():
        context = admin_context(
            request,
            "Refund a failed withdrawal",
            crumb=f"Refund {key}",
            parent_url=queue,
            parent_title="Withdrawal queue",
            req=_request(key, req),
            total=req["amount"] + req["fee"],
            form=ConfirmRefundForm(),
            back_url=back.url,
        )
        return TemplateResponse(request, "admin/bitcoinkeys/refund_confirm.html", context)
    try:
        refunded = w.refund_failed(store, clock, key)
        now_state = store.get(key).value["state"] if refunded is None else w.FAILED_REFUNDED
    except (locks.AccountError, DocstoreError) as exc:
        messages.error(request, f"Could not refund {key}: {exc}. Submitting again is safe.")
        return back
    log.info(
        "staff withdrawal refund by=%s key=%s refunded=%s",
        request.user.get_username(), key, refunded is not None,
    )  # fmt: skip
    total = format_btc(req["amount"] + req["fee"])
    if refunded is not None:
        messages.success(request, f"Refunded {total} BTC to {username} for {key}.")
    elif now_state == w.FAILED_REFUNDED:
        messages.info(request, f"{key} was already refunded; nothing changed this time.")
    else:
        messages.warning(
            request,
            f"{username}'s account is busy; {key} was not refunded yet. Try again in a moment "
            f"(the recovery pass also retries it).",
        )
    return back


# --- deposit addresses --------------------------------------------------------------------------


@dataclass
class AddressLine:
    address: str
    username: str
    issued: datetime | None
    source: str
    credited: list[tuple[str, int]]
    alerts: list[dict]

    @property
    def credited_sats(self) -> int:
        return sum(sats for _, sats in self.credited)

    @property
    def user_url(self) -> str:
        return _inspect_url(self.username)


def _address_lines(store: Store, addresses: list[str]) -> list[AddressLine]:
    docs = store.get_multi([g.deposit_key(a) for a in addresses])
    alerts = store.get_multi([deposits.alert_key(a) for a in addresses])
    lines = []
    for address in addresses:
        doc = docs.get(g.deposit_key(address))
        if doc is None:
            continue  # a dangling directory entry: the deposit doc is written after it
        value = doc.value
        credited = sorted(
            (op, entry["sats"]) for op, entry in (value.get("credited") or {}).items()
        )
        alert = alerts.get(deposits.alert_key(address))
        events = []
        if alert is not None:
            for op, entry in sorted(alert.value.get("outpoints", {}).items()):
                for e in entry.get("events", []):
                    events.append(
                        {"outpoint": op, "sats": entry.get("sats"), **e, "when": _utc(e.get("at"))}
                    )
        source = f"set {value['set']} page {value['page']}" if "set" in value else ""
        lines.append(
            AddressLine(
                address, value["username"], _utc(value.get("issuedAt")), source, credited, events
            )
        )
    return lines


def deposits_view(request: HttpRequest) -> HttpResponse:
    """Deposit addresses newest first (a page of `depositdir`), one user's (`?user=`), or
    only those with alerts (`?alerts=1`)."""
    store = get_store()
    user = request.GET.get("user", "").strip()
    only_alerts = request.GET.get("alerts") == "1"
    context = admin_context(
        request, "Deposit addresses", user=user, only_alerts=only_alerts, page=None
    )
    if user and not _valid_username(user):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return TemplateResponse(request, "admin/bitcoinkeys/deposits.html", context)
    try:
        if user:
            try:
                account = get_account(store, user).value
            except NotFound:
                messages.error(request, f"There is no account for “{user}”.")
                return TemplateResponse(request, "admin/bitcoinkeys/deposits.html", context)
            page = paginate(request, deposits.user_addresses(account), ADDRESSES_PER_PAGE)
            addresses = list(page.object_list)
        elif only_alerts:
            alerted = [a["address"] for a in deposits.iter_alerts(store)]
            page = paginate(request, alerted, ADDRESSES_PER_PAGE)
            addresses = list(page.object_list)
        else:
            size = directory_size(store, g.DEPOSITDIR)
            page = paginate(request, range(size - 1, -1, -1), ADDRESSES_PER_PAGE)
            entries = store.get_multi([g.depositdir_key(i) for i in page.object_list])
            addresses = list(
                dict.fromkeys(
                    entries[g.depositdir_key(i)].value["address"]
                    for i in page.object_list
                    if g.depositdir_key(i) in entries
                )
            )
        lines = _address_lines(store, addresses)
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        return TemplateResponse(request, "admin/bitcoinkeys/deposits.html", context)
    context.update(page=page, lines=lines)
    return TemplateResponse(request, "admin/bitcoinkeys/deposits.html", context)


# --- registration (from BitcoinkeysConfig.ready) ----------------------------------------------


def register_admin() -> None:
    """Add the withdrawal and deposit pages, their index links and the dashboard panels."""
    register_admin_urls(
        [
            ("bitcoinkeys/withdrawals/", withdrawals_view, "bitcoinkeys_withdrawals"),
            (
                "bitcoinkeys/withdrawals/<str:username>/<int:i>/refund/",
                refund_view,
                "bitcoinkeys_withdrawal_refund",
            ),
            ("bitcoinkeys/deposits/", deposits_view, "bitcoinkeys_deposits"),
        ]
    )
    register_operation(
        "Withdrawal queue",
        "bitcoinkeys_withdrawals",
        "Payout requests by state with totals and history; refund a payout the wallet refused.",
    )
    register_operation(
        "Deposit addresses",
        "bitcoinkeys_deposits",
        "Every dealt address with its owner, credited payments and vanished-payment alerts.",
    )
    dashboard.register_panel("Bitcoin node", node_panel)
    dashboard.register_panel("Key pool", keypool_panel)
    dashboard.register_panel("Deposits", deposits_panel, uses_report=True)
    dashboard.register_panel("Withdrawals", withdrawals_panel, uses_report=True)
    dashboard.register_heartbeat("watch_deposits", "manage.py watch_deposits, when run alone")
    dashboard.register_heartbeat("deposits", "the deposit watcher's own pass (either process)")
