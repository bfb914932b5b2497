from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import DatabaseError, connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters

from config.cache import CacheUnavailable
from docstore import DocstoreError, Store, get_clock, get_store

from . import leases, nodes, ratelimit, shards, twofactor, workers
from .auth_backends import BACKEND_PATH
from .forms import LoginForm, RegistrationForm
from .gateway import LEDGER_PAGE_SIZE, ensure_account, ledger_page_key
from .heartbeat import health_details
from .money import format_btc
from .templatetags.cached_url import cached_reverse

log = logging.getLogger(__name__)

# What /healthz names when no worker node has ever registered.
HEARTBEAT_NAME = "run_workers"
LEDGER_PER_PAGE = 50

KIND_LABELS = {
    "buy": "Bought ad slot",
    "deposit": "Deposit",
    "credit": "Sale credited",
    "withdraw-hold": "Withdrawal",
    "withdraw-refund": "Withdrawal refunded",
    "adjust": "Adjustment by staff",
    "reject": "Refund: ad rejected",
}
_ESCAPED_LABELS = {kind: escape(label) for kind, label in KIND_LABELS.items()}

# What an account lock means to its owner, while it is held.
LOCK_LABELS = {
    "buy": "a purchase of an ad slot",
    "deposit": "a deposit being credited",
    "credit": "a sale being credited",
    "withdraw-hold": "a withdrawal request",
    "withdraw-refund": "a withdrawal refund",
    "adjust": "an adjustment by staff",
    "reject": "a refund for a rejected ad",
}


# What the home page shows of other apps (the adspace app's live campaign lists), registered in
# their AppConfig.ready: accounts must not import them.
_home_sections: list[Callable[[HttpRequest], dict]] = []


def register_home_section(section: Callable[[HttpRequest], dict]) -> None:
    if section not in _home_sections:
        _home_sections.append(section)


def home(request: HttpRequest) -> HttpResponse:
    context = {
        "sale_fee_permille": settings.SALE_FEE_PERMILLE,
        "withdraw_fee_permille": settings.WITHDRAW_FEE_PERMILLE,
        "min_price_sats": settings.MIN_CAMPAIGN_PRICE_SATS,
    }
    for section in _home_sections:
        try:
            context.update(section(request))
        except DocstoreError:
            # The page says what this is even while the store is down; the lists say they wait.
            log.warning("home: a section could not be read", exc_info=True)
            context["sections_unavailable"] = True
    return render(request, "home.html", context)


def healthz(request: HttpRequest) -> JsonResponse:
    """Every worker node with its heartbeat, shard and leases, and who holds each role's lease.

    503 when no node is live, when a stale node's shard has no live node instead (`stale`), or
    when a shard of the live nodes' split has no live node at all (`missing`)."""
    now = get_clock().now()
    stale_after = settings.WORKER_STALE_SECONDS
    try:
        store = get_store()
        found = nodes.read_nodes(store, now, stale_after)
        held = leases.read_leases(store, workers.roles())
        held.update(leases.external_leases(store))
        details = health_details(store)
    except DocstoreError:
        # Public: say what is wrong, not where the store is (the log has the details).
        log.warning("healthz: docstore unreachable", exc_info=True)
        return JsonResponse({"status": "store unreachable", "now": now}, status=503)
    live = [shards.parse(n.shard) for n in found.values() if n.live]
    stale = nodes.uncovered(found) if live else (sorted(found) or [HEARTBEAT_NAME])
    missing = []
    if live:
        count = max(s.count for s in live)
        missing = [f"{i}/{count}" for i in range(count) if shards.Shard(i, count) not in live]
    services = {"cache": cache_status(), "database": database_status()}
    degraded = any(state != "ok" for state in services.values())
    body = {
        "status": "stale" if stale or missing else "degraded" if degraded else "ok",
        "now": now,
        "workers": {n.name: n.at for n in found.values()},
        "stale": stale,
        # 200 while only these are down: the node still serves the API, embeds and signed-out
        # pages, which a load balancer taking it out would stop too (README, Operations).
        **services,
        "missing": missing,
        "nodes": {
            n.name: {"at": n.at, "live": n.live, "shard": n.shard, "leases": n.leases}
            for n in found.values()
        },
        "leases": {
            role: (
                {"holder": value["holder"], "until": value["until"]}
                if leases.held_by(value, now)
                else None
            )
            for role, value in sorted(held.items())
        },
        **details,
    }
    return JsonResponse(body, status=503 if stale or missing else 200)


def cache_status() -> str:
    """ "ok", or "down" when the shared cache cannot be reached (asked now, not remembered)."""
    try:
        ping = getattr(caches["default"], "ping", None)
        if ping is not None:
            ping()
        else:
            caches["default"].get("healthz:probe")
    except CacheUnavailable:
        return "down"
    return "ok"


def database_status() -> str:
    """ "ok", or "down" when the ORM database does not answer a query."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        log.warning("healthz: database unreachable", exc_info=True)
        connection.close_if_unusable_or_obsolete()
        return "down"
    return "ok"


@sensitive_post_parameters("password1", "password2")
@never_cache
def register(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("account")
    if request.method != "POST":
        return render(request, "accounts/register.html", {"form": RegistrationForm()})
    if not ratelimit.register_allowed(request):
        form = RegistrationForm(initial={"username": request.POST.get("username", "")[:32]})
        context = {"form": form, "limited": ratelimit.TOO_MANY_ATTEMPTS}
        return render(request, "accounts/register.html", context, status=429)
    form = RegistrationForm(request.POST)
    if form.is_valid() and (user := form.save()) is not None:
        # A crash between the user row and this leaves a user without account::<u>; their
        # next login creates it (LoginView.form_valid below).
        ensure_account(get_store(), get_clock(), user.username)
        login(request, user, backend=BACKEND_PATH)
        messages.success(request, f"Welcome, {user.username}. Your account is ready.")
        return redirect("account")
    return render(request, "accounts/register.html", {"form": form})


class RateLimitedLoginView(LoginView):
    """Django's LoginView (CSRF, never-cache, sensitive POST, safe `next`) plus the login
    throttle of accounts.ratelimit: failures count, the right password is never refused for
    its username's failures."""

    template_name = "accounts/login.html"
    form_class = LoginForm
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        username = request.POST.get("username", "")
        if not ratelimit.login_allowed(request, username):
            # Refused before the password is checked: an attacker over the limit learns nothing.
            form = self.form_class(request, initial={"username": username[:32]})
            context = self.get_context_data(form=form, limited=ratelimit.TOO_MANY_ATTEMPTS)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: LoginForm) -> HttpResponse:
        # Before login(): a user left without an account doc by a crash at registration gets
        # one, and a docstore failure here leaves them logged out rather than half in.
        user = form.get_user()
        ensure_account(get_store(), get_clock(), user.username)
        ratelimit.login_succeeded(self.request)
        if user.has_2fa:
            # The password was right; the code page (twofactor) finishes the login.
            twofactor.begin_login(self.request, user, user.backend, self.get_success_url())
            return redirect("login_code")
        return super().form_valid(form)

    def form_invalid(self, form: LoginForm) -> HttpResponse:
        ratelimit.login_failed(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)


class NewestFirstLedger:
    """An account's ledger, newest entry first, as a sequence the Paginator can slice.

    Only the ledger pages a slice touches are read (at most two for 50 rows), so the account
    page costs the same for an account with ten entries or a million.
    """

    def __init__(self, store: Store, username: str, account: dict):
        self.store, self.username = store, username
        self.pages = account.get("ledgerPages", 0)
        self.recent = account.get("ledger", [])
        self.total = self.pages * LEDGER_PAGE_SIZE + len(self.recent)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, item: slice) -> list[dict]:
        start, stop, _ = item.indices(self.total)
        if start >= stop:
            return []
        # Newest-first [start, stop) is oldest-first [total - stop, total - start).
        lo, hi = self.total - stop, self.total - start
        paged_end = self.pages * LEDGER_PAGE_SIZE
        found = {}
        if lo < paged_end:
            first, last = lo // LEDGER_PAGE_SIZE, (min(hi, paged_end) - 1) // LEDGER_PAGE_SIZE
            keys = [ledger_page_key(self.username, p) for p in range(first, last + 1)]
            found = self.store.get_multi(keys)
        rows = []
        for i in range(lo, hi):
            if i >= paged_end:
                rows.append(self.recent[i - paged_end])
                continue
            doc = found.get(ledger_page_key(self.username, i // LEDGER_PAGE_SIZE))
            entries = doc.value["entries"] if doc is not None else []
            if i % LEDGER_PAGE_SIZE < len(entries):
                rows.append(entries[i % LEDGER_PAGE_SIZE])
        rows.reverse()
        return rows


_SALE_REF = re.compile(r"(slot|tx)::([A-Za-z0-9]{1,32})::([0-9]{1,10})::([0-9]{1,10})")


def _ref_cell(entry: dict, position: int) -> str:
    """A sale's ref as links to its campaign and slot; any other ref as the key it is.

    A buy links its slot to the buyer's purchases page, at the page that lists it (the one
    whose cursor is just past this ledger position); other sale refs to the campaign page."""
    ref = str(entry["ref"])
    match = _SALE_REF.fullmatch(ref)
    if match is None:
        return f"<code>{escape(ref)}</code>"
    _, owner, n, k = match.groups()
    campaign = cached_reverse("campaign", (owner, int(n)))
    if entry["kind"] == "buy":
        slot = f"{cached_reverse('purchases', ())}?before={position + 1}#p-{owner}-{n}-{k}"
    else:
        slot = campaign
    return (
        f'<a href="{escape(campaign)}">{escape(owner)}\'s campaign #{n}</a>, '
        f'<a href="{escape(slot)}">slot #{k}</a>'
    )


def _ledger_rows(entries: list[dict], newest_position: int = 0) -> str:
    """The history table's rows, built here with the standard library's escape: as template
    tags (a date and two amount filters a row) they were most of the page's cost.

    `newest_position` is the oldest-first ledger position of the first (newest) entry."""
    rows = []
    for offset, entry in enumerate(entries):
        delta = entry["delta"]
        change = f"+{format_btc(delta)}" if delta > 0 else format_btc(delta)
        kind = entry["kind"]
        label = _ESCAPED_LABELS.get(kind) or escape(str(kind))
        rows.append(
            f'<tr><td class="nowrap">{_STAMP % time.gmtime(entry["at"])[:6]}</td>'
            f"<td>{label}</td>"
            f"<td>{_ref_cell(entry, newest_position - offset)}</td>"
            f'<td class="num amount {"debit" if delta < 0 else "credit"}">{change}</td>'
            f'<td class="num amount">{format_btc(entry["balanceAfter"])}</td>'
            f"<td>{escape(str(entry.get('reason', '')))}</td></tr>"
        )
    return mark_safe("\n".join(rows))  # noqa: S308 - the text fields are escaped, the rest are numbers


# A ledger time in UTC as "Y-m-d H:i:s" from time.gmtime: a third of datetime's strftime.
_STAMP = "%04d-%02d-%02d %02d:%02d:%02d"


def _page_or_404(paginator: Paginator, number: str | None) -> Page:
    try:
        return paginator.page(number or 1)
    except PageNotAnInteger:
        return paginator.page(1)
    except EmptyPage:
        raise Http404("No such page of the ledger.")


@login_required
def account(request: HttpRequest) -> HttpResponse:
    store = get_store()
    username = request.user.username
    # ensure_account rather than get_account: users made outside registration (createsuperuser,
    # a crash before the account doc) get their document on first sight instead of an error.
    doc = ensure_account(store, get_clock(), username)
    acct = doc.value
    paginator = Paginator(NewestFirstLedger(store, username, acct), LEDGER_PER_PAGE)
    page = _page_or_404(paginator, request.GET.get("page"))
    lock = acct.get("lock")
    lock_info = None
    if lock:
        lock_info = {
            "what": LOCK_LABELS.get(lock["kind"], "an operation"),
            "since": datetime.fromtimestamp(lock["since"], tz=UTC),
        }
    context = {
        "balance": acct["balance"],
        "own_balance": acct["balance"],  # for the header, which would read the doc again
        "lock": lock_info,
        "page": page,
        "rows": bool(page.object_list),
        "ledger_rows": _ledger_rows(
            page.object_list, paginator.count - page.start_index() if page.object_list else 0
        ),
        "active_tab": "balance",
    }
    return render(request, "accounts/account.html", context)
