"""Django admin: the user model, plus staff pages for account documents (which are not ORM rows).

The pages are added to the default site by wrapping `admin.site.get_urls` and `admin.site.index`
(the project routes `admin.site.urls`; a custom AdminSite would need a settings change), each view
behind `admin.site.admin_view`, so only active staff get in. Each money action also needs its own
permission (`MONEY_PERMISSIONS`, on the User model; superusers have all), is logged with who did it,
and follows one pattern: a form, a confirmation page, then the call into the protocol module. An
adjustment's confirmation is a signed token (who, which account, amount, reason, request id, when)
made at review, so the step cannot be skipped or its fields altered; its request id is the commit
point, so the same confirmation submitted twice applies once. Nobody adjusts their own account.

The admin's own login goes through the site's login rate limit (`_login`).

Other apps add links to the index's "Operations" block with `register_operation`, their own
staff pages with `register_admin_urls` (each view is wrapped in `admin_view` here, so none can
forget the staff check), and dashboard panels through `accounts.dashboard`. They call these from
their `AppConfig.ready`, so `accounts` never imports them. `admin_context` and `paginate` are the
helpers those pages share: the admin's chrome, and page numbers that answer bad input with a
message instead of an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.core import signing
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db.models import Case, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme, urlencode

from docstore import DocstoreError, NotFound, get_clock, get_store

from . import dashboard, locks, money, ratelimit, twofactor
from .adjust import MAX_REASON, adjust_balance, new_request_id
from .gateway import account_key, ensure_account, full_ledger, get_account
from .models import USERNAME_RE, User, username_validator

log = logging.getLogger("accounts.money")

LEDGER_PER_PAGE = 100
ACCOUNTS_PER_PAGE = 50
CONFIRM_SALT = "accounts.admin.adjust-confirmation"

# Each staff money action and the permission it needs (Meta.permissions of accounts.User).
ADJUST_PERMISSION = "accounts.adjust_balance"
FINISH_LOCK_PERMISSION = "accounts.finish_lock"
REFUND_PERMISSION = "accounts.refund_withdrawal"
MONEY_PERMISSIONS = (ADJUST_PERMISSION, FINISH_LOCK_PERMISSION, REFUND_PERMISSION)

# Who may hand out powers: only superusers (else a staffer who may edit users could give
# themselves every money permission).
PRIVILEGE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


def require_permission(request: HttpRequest, permission: str, action: str) -> None:
    """Refuse (403) and log a staff user without `permission` for `action`."""
    if not request.user.has_perm(permission):
        log.warning(
            "staff %s refused by=%s: lacks %s", action, request.user.get_username(), permission
        )
        raise PermissionDenied(f"You do not have the permission to {action}.")


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    def get_readonly_fields(self, request, obj=None):
        # The account document is keyed by username: renaming a user would orphan its money.
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ("username",)
        if not request.user.is_superuser:
            fields += PRIVILEGE_FIELDS
        return fields

    def has_change_permission(self, request, obj=None) -> bool:
        # Another staff user's password or e-mail is theirs to change (or a superuser's): taking
        # over their login would take over their permissions.
        other_staff = (
            obj is not None and obj.pk != request.user.pk and (obj.is_staff or obj.is_superuser)
        )
        if other_staff and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        # A deleted username could be registered again and inherit the old account document and
        # its balance; deactivate users instead.
        return False

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            ensure_account(get_store(), get_clock(), obj.username)


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin):
    """Groups carry permissions: only superusers make or change them."""

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


# --- signed amounts ---


def parse_signed_btc(text: str) -> int:
    """A staff amount in whole sats: BTC read by `accounts.money.parse_btc`, "-" for a debit."""
    text = (text or "").strip()
    negative = text.startswith("-")
    body = text[1:] if negative else text
    if body.startswith(("-", "+")):
        raise ValidationError(money.MSG_NOT_NUMBER)
    try:
        sats = money.parse_btc(body)
    except money.MoneyError as exc:
        raise ValidationError(exc.message) from None
    if sats == 0:
        raise ValidationError("The amount must not be zero.")
    return -sats if negative else sats


# --- forms ---


class InspectForm(forms.Form):
    username = forms.CharField(
        max_length=32,
        validators=[username_validator],
        error_messages={"max_length": "Usernames are at most 32 letters and digits."},
    )


class AdjustForm(forms.Form):
    amount = forms.CharField(
        label="Amount (BTC)",
        max_length=money.MAX_INPUT_LENGTH,
        help_text="Negative for a debit. At most 8 decimals, e.g. 0.1 or -0.0005.",
    )
    reason = forms.CharField(
        max_length=MAX_REASON,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept in the account's ledger.",
    )

    def clean_amount(self) -> int:
        return parse_signed_btc(self.cleaned_data["amount"])


class ConfirmAdjustForm(forms.Form):
    """The confirmation page's one field: the signed token of exactly what will be applied."""

    confirmation = forms.CharField(max_length=4000, widget=forms.HiddenInput)


@dataclass(frozen=True)
class Confirmation:
    sats: int
    reason: str
    request_id: str


def sign_confirmation(request: HttpRequest, username: str, sats: int, reason: str) -> str:
    """A token only this server can make: this staff user may apply this adjustment, once
    (its request id is the commit point), for `ADJUST_CONFIRM_SECONDS`."""
    payload = {
        "by": request.user.pk,
        "user": username,
        "sats": sats,
        "reason": reason,
        "id": new_request_id(),
        "at": get_clock().now(),
    }
    return signing.dumps(payload, salt=CONFIRM_SALT, compress=True)


class ConfirmationRefused(Exception):
    pass


def read_confirmation(request: HttpRequest, username: str, token: str) -> Confirmation:
    try:
        data = signing.loads(token, salt=CONFIRM_SALT)
    except signing.BadSignature:
        raise ConfirmationRefused("The confirmation was incomplete or altered.") from None
    if data.get("by") != request.user.pk or data.get("user") != username:
        raise ConfirmationRefused("That confirmation was made for another user or account.")
    age = get_clock().now() - data["at"]
    if not 0 <= age <= settings.ADJUST_CONFIRM_SECONDS:
        raise ConfirmationRefused("The confirmation expired; review the adjustment again.")
    return Confirmation(data["sats"], data["reason"], data["id"])


class FinishLockForm(forms.Form):
    token = forms.CharField(max_length=64, widget=forms.HiddenInput)


class AccountSearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=32,
        validators=[username_validator],
        error_messages={"max_length": "Usernames are at most 32 letters and digits."},
    )


# --- helpers (shared with other apps' admin pages) ---


def admin_context(request: HttpRequest, title: str, **extra: Any) -> dict:
    """The context every staff page needs: the admin's chrome (`each_context`) and a title."""
    return {**admin.site.each_context(request), "title": title, **extra}


def paginate(request: HttpRequest, items: Sequence, per_page: int) -> Page:
    """Page `?page=` of `items`; a page number that is not one, or out of range, shows a
    message and the first (or last) page instead of an error."""
    paginator = Paginator(items, per_page)
    raw = request.GET.get("page", "1")
    try:
        return paginator.page(raw)
    except PageNotAnInteger:
        messages.warning(request, f"“{raw[:20]}” is not a page number; showing page 1.")
        return paginator.page(1)
    except EmptyPage:
        last = paginator.num_pages
        messages.warning(request, f"There is no page {raw[:20]}; showing page {last} of {last}.")
        return paginator.page(last)


def _inspect_url(username: str | None = None) -> str:
    url = reverse("admin:accounts_inspect")
    return f"{url}?{urlencode({'username': username})}" if username else url


def _valid_username(username: str) -> bool:
    return bool(re.match(USERNAME_RE, username))


def _account_or_redirect(request: HttpRequest, username: str) -> dict | HttpResponse:
    """The account document's value, or a redirect to the inspector with a message."""
    if not _valid_username(username):
        messages.error(request, "Usernames are 1 to 32 letters and digits.")
        return HttpResponseRedirect(_inspect_url())
    try:
        return get_account(get_store(), username).value
    except NotFound:
        messages.error(request, f"There is no account for {username!r}.")
        return HttpResponseRedirect(_inspect_url())


@dataclass
class LockView:
    kind: str
    ref: str
    token: str
    since: datetime
    age: int
    past_lease: bool
    fields: dict


def _lock_view(lock: dict | None, now: int) -> LockView | None:
    if not lock:
        return None
    shown = ("kind", "ref", "token", "since")
    return LockView(
        kind=lock["kind"],
        ref=lock["ref"],
        token=lock["token"],
        since=datetime.fromtimestamp(lock["since"], UTC),
        age=now - lock["since"],
        past_lease=locks.lease_expired(lock, now),
        fields={k: v for k, v in lock.items() if k not in shown},
    )


def _ledger_rows(entries: list[dict]) -> list[dict]:
    return [
        {
            **e,
            "when": datetime.fromtimestamp(e["at"], UTC),
            "delta_btc": money.format_btc(e["delta"]),
            "balance_btc": money.format_btc(e["balanceAfter"]),
        }
        for e in entries
    ]


# --- views ---


def inspect_view(request: HttpRequest) -> HttpResponse:
    context = admin_context(request, "Account inspector")
    if "username" not in request.GET:
        context["form"] = InspectForm()
        return TemplateResponse(request, "admin/accounts/inspect.html", context)
    form = InspectForm(request.GET)
    context["form"] = form
    if not form.is_valid():
        return TemplateResponse(request, "admin/accounts/inspect.html", context)
    username = form.cleaned_data["username"]
    store, now = get_store(), get_clock().now()
    try:
        account = get_account(store, username).value
    except NotFound:
        context["not_found"] = username
        return TemplateResponse(request, "admin/accounts/inspect.html", context)
    newest_first = list(reversed(full_ledger(store, username, account)))
    page = Paginator(newest_first, LEDGER_PER_PAGE).get_page(request.GET.get("page"))
    context.update(
        username=username,
        account=account,
        balance_btc=money.format_btc(account["balance"]),
        lock=_lock_view(account.get("lock"), now),
        lease_seconds=locks.lease_seconds(),
        btc=account.get("btc") or {},
        has_api_key=bool(account.get("apiKey")),
        ledger_page=page,
        ledger_rows=_ledger_rows(list(page.object_list)),
        ledger_total=len(newest_first),
        subtitle=username,
        inspect_url=_inspect_url(username),
        can_adjust=request.user.has_perm(ADJUST_PERMISSION) and not _own_account(request, username),
        can_finish_lock=request.user.has_perm(FINISH_LOCK_PERMISSION),
    )
    return TemplateResponse(request, "admin/accounts/inspect.html", context)


def finish_lock_view(request: HttpRequest, username: str) -> HttpResponse:
    require_permission(request, FINISH_LOCK_PERMISSION, "finish a lock")
    found = _account_or_redirect(request, username)
    if isinstance(found, HttpResponse):
        return found
    store, clock = get_store(), get_clock()
    lock = found.get("lock")
    back = HttpResponseRedirect(_inspect_url(username))
    if request.method != "POST":
        if not lock:
            messages.info(request, f"{username} holds no lock; there is nothing to finish.")
            return back
        context = admin_context(
            request,
            "Finish a lock now",
            username=username,
            lock=_lock_view(lock, clock.now()),
            form=FinishLockForm(initial={"token": lock["token"]}),
            inspect_url=_inspect_url(username),
        )
        return TemplateResponse(request, "admin/accounts/finish_lock_confirm.html", context)
    form = FinishLockForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The confirmation was incomplete; look at the lock again.")
        return back
    if not lock:
        # Idempotent: a second submission, or recovery got there first.
        messages.info(request, f"{username} holds no lock any more; it was already finished.")
        return back
    if lock["token"] != form.cleaned_data["token"]:
        messages.warning(
            request, "That lock is gone and another one holds the account now; look again."
        )
        return back
    try:
        finished = locks.resolve(store, clock, username, force=True)
    except (locks.AccountError, RuntimeError, DocstoreError) as exc:
        # RuntimeError: no finisher registered for this kind (its app is not installed).
        messages.error(request, f"Could not finish the {lock['kind']} lock: {exc}")
        return back
    log.info(
        "staff finish-lock by=%s user=%s kind=%s ref=%s token=%s finished=%s",
        request.user.get_username(), username, lock["kind"], lock["ref"], lock["token"], finished,
    )  # fmt: skip
    if finished:
        messages.success(request, f"Finished the {lock['kind']} lock {lock['ref']} of {username}.")
    else:
        messages.info(request, f"{username} holds no lock any more; it was already finished.")
    return back


def adjust_pick_view(request: HttpRequest) -> HttpResponse:
    """The index's "Adjust balance" entry: choose the account, then the adjust page proper."""
    require_permission(request, ADJUST_PERMISSION, "adjust a balance")
    form = InspectForm(request.GET) if "username" in request.GET else InspectForm()
    if form.is_bound and form.is_valid():
        username = form.cleaned_data["username"]
        return HttpResponseRedirect(reverse("admin:accounts_adjust", args=[username]))
    context = admin_context(request, "Adjust balance", form=form)
    return TemplateResponse(request, "admin/accounts/adjust_pick.html", context)


def _own_account(request: HttpRequest, username: str) -> bool:
    return username.lower() == request.user.get_username().lower()


def adjust_view(request: HttpRequest, username: str) -> HttpResponse:
    require_permission(request, ADJUST_PERMISSION, "adjust a balance")
    staff = request.user.get_username()
    if _own_account(request, username):
        log.warning("staff adjust refused by=%s user=%s: own account", staff, username)
        messages.error(request, "Nobody adjusts their own balance; ask another staff member.")
        return HttpResponseRedirect(_inspect_url(username))
    found = _account_or_redirect(request, username)
    if isinstance(found, HttpResponse):
        return found
    account = found

    def show_form(form: AdjustForm) -> HttpResponse:
        context = admin_context(
            request,
            "Adjust balance",
            subtitle=username,
            username=username,
            form=form,
            balance=account["balance"],
            balance_btc=money.format_btc(account["balance"]),
            inspect_url=_inspect_url(username),
        )
        return TemplateResponse(request, "admin/accounts/adjust.html", context)

    def show_confirm(sats: int, reason: str, token: str) -> HttpResponse:
        context = admin_context(
            request,
            "Confirm adjustment",
            subtitle=username,
            username=username,
            form=ConfirmAdjustForm(initial={"confirmation": token}),
            credit=sats > 0,
            sats=abs(sats),
            amount_btc=money.format_btc(abs(sats)),
            reason=reason,
            balance=account["balance"],
            balance_btc=money.format_btc(account["balance"]),
            after_btc=money.format_btc(account["balance"] + sats),
            confirm_minutes=settings.ADJUST_CONFIRM_SECONDS // 60,
            inspect_url=_inspect_url(username),
        )
        return TemplateResponse(request, "admin/accounts/adjust_confirm.html", context)

    if request.method != "POST":
        return show_form(AdjustForm())

    if request.POST.get("step") != "confirm":
        form = AdjustForm(request.POST)
        if not form.is_valid():
            return show_form(form)
        sats, reason = form.cleaned_data["amount"], form.cleaned_data["reason"]
        if -sats > account["balance"]:
            # Checked again, atomically, when applied; this only saves a pointless confirmation.
            form.add_error(
                "amount",
                f"A debit of {money.format_btc(-sats)} BTC would take the balance "
                f"({money.format_btc(account['balance'])} BTC) below zero.",
            )
            return show_form(form)
        return show_confirm(sats, reason, sign_confirmation(request, username, sats, reason))

    confirm = ConfirmAdjustForm(request.POST)
    try:
        if not confirm.is_valid():
            raise ConfirmationRefused("The confirmation was incomplete or altered.")
        token = confirm.cleaned_data["confirmation"]
        c = read_confirmation(request, username, token)
    except ConfirmationRefused as exc:
        log.warning("staff adjust refused by=%s user=%s: %s", staff, username, exc)
        messages.error(request, f"{exc} Nothing was changed.")
        return show_form(AdjustForm())
    try:
        applied = adjust_balance(
            get_store(), get_clock(), username, c.sats, c.reason, request_id=c.request_id,
            staff=staff,
        )  # fmt: skip
    except locks.AccountError as exc:
        # AdjustError (too low, bad amount or reason), AccountBusy, AccountMissing: no lock was
        # taken, so nothing changed.
        messages.error(request, f"{exc} Nothing was changed.")
        initial = {"amount": money.format_btc(c.sats), "reason": c.reason}
        return show_form(AdjustForm(initial=initial))
    except DocstoreError as exc:
        # The lock may be held; recovery finishes it, and this request id never applies twice.
        messages.error(
            request,
            f"The docstore failed ({exc}). Submit the same confirmation again: it applies once.",
        )
        return show_confirm(c.sats, c.reason, token)
    log.info(
        "staff adjust by=%s user=%s delta=%d request=%s applied=%s",
        staff, username, c.sats, c.request_id, applied,
    )  # fmt: skip
    if applied:
        verb = "Credited" if c.sats > 0 else "Debited"
        prep = "to" if c.sats > 0 else "from"
        messages.success(
            request,
            f"{verb} {money.format_btc(abs(c.sats))} BTC ({abs(c.sats)} sats) {prep} {username}.",
        )
    else:
        messages.warning(request, "This adjustment was already applied; nothing changed this time.")
    return HttpResponseRedirect(_inspect_url(username))


def dashboard_view(request: HttpRequest) -> HttpResponse:
    store, clock = get_store(), get_clock()
    now = clock.now()
    try:
        built = dashboard.cached_dashboard(store, clock)
        beats = dashboard.worker_beats(store, now)
        last = dashboard.last_audit(store)
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        built, beats, last = None, [], None
    last_at = datetime.fromtimestamp(last["at"], UTC) if last and "at" in last else None
    context = admin_context(
        request,
        "Dashboard",
        dashboard=built,
        built_at=datetime.fromtimestamp(built.at, UTC) if built else None,
        built_age=now - built.at if built else None,
        cache_seconds=dashboard.CACHE_SECONDS,
        beats=beats,
        stale_seconds=settings.WORKER_STALE_SECONDS,
        last_audit=last,
        last_audit_at=last_at,
        last_audit_age=now - last["at"] if last_at else None,
        now=datetime.fromtimestamp(now, UTC),
    )
    return TemplateResponse(request, "admin/dashboard.html", context)


def run_audit_view(request: HttpRequest) -> HttpResponse:
    """POST: run the audit on the live system, store it as `audit::last`, refresh the dashboard.

    Read-only on money, so running it twice is harmless; the POST (with CSRF) only keeps a
    crawler or a prefetch from starting a walk of every document.
    """
    back = HttpResponseRedirect(reverse("admin:dashboard"))
    if request.method != "POST":
        messages.info(request, "Use the “Run the audit now” button to run the audit.")
        return back
    store, clock = get_store(), get_clock()
    try:
        report = dashboard.live_report(store)
        dashboard.store_audit(store, clock, report, by=request.user.get_username())
        dashboard.rebuild(store, clock, report)
    except DocstoreError as exc:
        messages.error(request, f"The audit could not finish: the docstore failed ({exc}).")
        return back
    log.info("staff audit by=%s ok=%s", request.user.get_username(), report.ok)
    if report.ok:
        messages.success(request, "The audit passed: the books balance and nothing is broken.")
    else:
        problems = len(report.breaches) + (0 if report.balanced else 1)
        messages.error(request, f"The audit found {problems} problem(s); see the last audit.")
    return back


@dataclass
class AccountRow:
    username: str
    user: Any
    exists: bool
    balance: int | None
    lock: LockView | None
    btc_state: str
    btc_address: str


def _account_rows(usernames: list[str], users: dict[str, Any], now: int) -> list[AccountRow]:
    found = get_store().get_multi([account_key(u) for u in usernames])
    rows = []
    for username in usernames:
        doc = found.get(account_key(username))
        account = doc.value if doc else {}
        btc = account.get("btc") or {}
        rows.append(
            AccountRow(
                username=username,
                user=users.get(username),
                exists=doc is not None,
                balance=account.get("balance"),
                lock=_lock_view(account.get("lock"), now),
                btc_state=btc.get("state", "none") if doc else "",
                btc_address=btc.get("address", "") if btc.get("state") == "have" else "",
            )
        )
    return rows


def accounts_list_view(request: HttpRequest) -> HttpResponse:
    """Users by username prefix (or exact name first), or every locked account (`?locked=1`)."""
    form = AccountSearchForm(request.GET)
    locked_only = request.GET.get("locked") == "1"
    context = admin_context(request, "Accounts", form=form, locked_only=locked_only)
    if not form.is_valid():
        context.update(rows=[], page=None)
        return TemplateResponse(request, "admin/accounts/list.html", context)
    q = form.cleaned_data["q"]
    now = get_clock().now()
    try:
        if locked_only:
            # Locks live in the documents, not the ORM: walk the account directory.
            held = dashboard.held_locks(get_store(), now)
            names = [h.username for h in held if not q or h.username.lower().startswith(q.lower())]
            page = paginate(request, names, ACCOUNTS_PER_PAGE)
            usernames = list(page.object_list)
            users = {u.username: u for u in User.objects.filter(username__in=usernames)}
        else:
            users_qs = User.objects.all()
            if q:
                # The exact name (any case) first, then the other names with that prefix.
                exact = Case(When(username__iexact=q, then=Value(0)), default=Value(1))
                users_qs = users_qs.filter(username__istartswith=q).annotate(exact=exact)
                users_qs = users_qs.order_by("exact", "username")
            else:
                users_qs = users_qs.order_by("username")
            page = paginate(request, users_qs, ACCOUNTS_PER_PAGE)
            page_users = list(page.object_list)
            usernames = [u.username for u in page_users]
            users = {u.username: u for u in page_users}
        rows = _account_rows(usernames, users, now)
    except DocstoreError as exc:
        messages.error(request, f"The docstore failed ({exc}); try again in a moment.")
        rows, page = [], None
    context.update(rows=rows, page=page, q=q, lease_seconds=locks.lease_seconds())
    return TemplateResponse(request, "admin/accounts/list.html", context)


# --- wiring into the default admin site ---


@dataclass(frozen=True)
class Operation:
    title: str
    url_name: str
    description: str = ""
    permission: str = ""


_operations: list[Operation] = []


def register_operation(
    title: str, url_name: str, description: str = "", permission: str = ""
) -> None:
    """Link an admin page (by its `admin:` URL name) from the index's Operations block; with a
    `permission`, only for staff who hold it."""
    op = Operation(title, url_name, description, permission)
    if op not in _operations:
        _operations.append(op)


register_operation(
    "Dashboard",
    "dashboard",
    "Money held and came in, the last audit, workers, key pool, alerts and locks.",
)
register_operation(
    "Accounts",
    "accounts_list",
    "Search users by name; balance, lock and bitcoin state of each; every locked account.",
)
register_operation(
    "Account inspector",
    "accounts_inspect",
    "Balance, lock, bitcoin state and ledger of one account; adjust it or finish its lock.",
)
register_operation(
    "Adjust balance",
    "accounts_adjust_pick",
    "Credit or debit an account, with a written reason, after a confirmation page.",
    ADJUST_PERMISSION,
)


@dataclass(frozen=True)
class AdminUrl:
    route: str
    view: Callable[..., HttpResponse]
    name: str


_admin_urls: dict[str, AdminUrl] = {}


def register_admin_urls(patterns: Iterable[tuple[str, Callable[..., HttpResponse], str]]) -> None:
    """Add staff pages: (route under /admin/, view, URL name), reversed as `admin:<name>`.

    Each view is wrapped in `admin.site.admin_view` (active staff only, CSRF, never cached).
    Registering a name again replaces it. Call from `AppConfig.ready`: the admin's URLs are read
    once, when the URLconf is first loaded.
    """
    for route, view, name in patterns:
        _admin_urls[name] = AdminUrl(route, view, name)


_site_get_urls = admin.site.get_urls
_site_index = admin.site.index
_site_login = admin.site.login


_site_has_permission = admin.site.has_permission


def _has_permission(request: HttpRequest) -> bool:
    """Active staff with two-factor authentication on. A user with 2FA is only ever logged in
    through a code (the site's and the admin's login both ask for one), so 2FA on means this
    session passed it."""
    return _site_has_permission(request) and request.user.has_2fa


def _login(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin's login, counted by the site login's throttle (`ratelimit.login_allowed`):
    staff passwords guard money, so they get no more guesses than anyone's. A right password
    of a user with 2FA goes on to the code page; staff without 2FA are sent to turn it on."""
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff and not user.has_2fa:
        messages.warning(
            request, "Staff need two-factor authentication to reach the admin: turn it on here."
        )
        return HttpResponseRedirect(reverse("twofactor_setup"))
    if request.method == "POST":
        username = request.POST.get("username", "")
        if not ratelimit.login_allowed(request, username):
            # Refused before the password is checked, as on the site's login page.
            from django.contrib.admin.forms import AdminAuthenticationForm

            log.warning("admin login throttled user=%s", username[:32])
            messages.error(request, ratelimit.TOO_MANY_ATTEMPTS)
            context = {
                **admin.site.each_context(request),
                "title": "Log in",
                "subtitle": None,
                "app_path": request.get_full_path(),
                "username": request.user.get_username(),
                "form": AdminAuthenticationForm(request, initial={"username": username[:32]}),
                REDIRECT_FIELD_NAME: request.POST.get(REDIRECT_FIELD_NAME)
                or reverse("admin:index"),
            }
            response = TemplateResponse(request, "admin/login.html", context, status=429)
            add_never_cache_headers(response)
            return response
        from django.contrib.admin.forms import AdminAuthenticationForm

        form = AdminAuthenticationForm(request, data=request.POST)
        if not form.is_valid():
            # As on the site's login: only failures count (answered slowly past the username's).
            ratelimit.login_failed(request, username)
            return _site_login(request, extra_context)
        ratelimit.login_succeeded(request)
        staff_user = form.get_user()
        if staff_user.has_2fa:
            next_url = request.POST.get(REDIRECT_FIELD_NAME) or reverse("admin:index")
            if not url_has_allowed_host_and_scheme(
                next_url, {request.get_host()}, request.is_secure()
            ):
                next_url = reverse("admin:index")
            twofactor.begin_login(request, staff_user, staff_user.backend, next_url)
            return HttpResponseRedirect(reverse("login_code"))
    return _site_login(request, extra_context)


def _get_urls():
    site = admin.site
    # Before the site's own URLs: those end in a catch-all that would answer these paths first.
    return [
        path("dashboard/", site.admin_view(dashboard_view), name="dashboard"),
        path("dashboard/run-audit/", site.admin_view(run_audit_view), name="dashboard_run_audit"),
        path("accounts/list/", site.admin_view(accounts_list_view), name="accounts_list"),
        path("accounts/inspect/", site.admin_view(inspect_view), name="accounts_inspect"),
        path(
            "accounts/inspect/<str:username>/finish-lock/",
            site.admin_view(finish_lock_view),
            name="accounts_finish_lock",
        ),
        path("accounts/adjust/", site.admin_view(adjust_pick_view), name="accounts_adjust_pick"),
        path(
            "accounts/adjust/<str:username>/",
            site.admin_view(adjust_view),
            name="accounts_adjust",
        ),
        *(path(u.route, site.admin_view(u.view), name=u.name) for u in _admin_urls.values()),
        *_site_get_urls(),
    ]


def _index(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    operations = []
    for op in _operations:
        if op.permission and not request.user.has_perm(op.permission):
            continue
        try:
            url = reverse(f"admin:{op.url_name}")
        except NoReverseMatch:
            # Registered after the URLconf was loaded (a ready() that ran late): skip the link
            # rather than break the index.
            log.warning("admin operation %s has no URL %s", op.title, op.url_name)
            continue
        operations.append({"title": op.title, "url": url, "description": op.description})
    extra = {"operations": operations, "dashboard_url": reverse("admin:dashboard")}
    return _site_index(request, {**extra, **(extra_context or {})})


admin.site.get_urls = _get_urls
admin.site.index = _index
admin.site.login = _login
admin.site.has_permission = _has_permission
