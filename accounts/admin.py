"""Django admin: the user model, plus staff pages for account documents (which are not ORM rows).

The pages are added to the default site by wrapping `admin.site.get_urls` and `admin.site.index`
(the project routes `admin.site.urls`; a custom AdminSite would need a settings change), each view
behind `admin.site.admin_view`, so only active staff get in. Money actions follow one pattern: a
form, a confirmation page carrying everything that will be applied (and a request id, so the same
confirmation submitted twice applies once), then the call into the protocol module.

Other apps add links to the index's "Operations" block with `register_operation`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from docstore import DocstoreError, NotFound, get_clock, get_store

from . import locks, money
from .adjust import MAX_REASON, adjust_balance, new_request_id
from .gateway import ensure_account, full_ledger, get_account
from .models import USERNAME_RE, User, username_validator

log = logging.getLogger("accounts.money")

LEDGER_PER_PAGE = 100
REQUEST_ID_RE = r"^[A-Za-z0-9_-]{1,64}$"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    def get_readonly_fields(self, request, obj=None):
        # The account document is keyed by username: renaming a user would orphan its money.
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "username") if obj is not None else fields

    def has_delete_permission(self, request, obj=None) -> bool:
        # A deleted username could be registered again and inherit the old account document and
        # its balance; deactivate users instead.
        return False

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            ensure_account(get_store(), get_clock(), obj.username)


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
    """The hidden fields of the confirmation page: exactly what will be applied."""

    request_id = forms.RegexField(REQUEST_ID_RE, widget=forms.HiddenInput)
    sats = forms.IntegerField(widget=forms.HiddenInput)
    reason = forms.CharField(max_length=MAX_REASON, widget=forms.HiddenInput)


class FinishLockForm(forms.Form):
    token = forms.CharField(max_length=64, widget=forms.HiddenInput)


# --- helpers ---


def _context(request: HttpRequest, title: str, **extra) -> dict:
    return {**admin.site.each_context(request), "title": title, **extra}


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
    context = _context(request, "Account inspector")
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
    )
    return TemplateResponse(request, "admin/accounts/inspect.html", context)


def finish_lock_view(request: HttpRequest, username: str) -> HttpResponse:
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
        context = _context(
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
    form = InspectForm(request.GET) if "username" in request.GET else InspectForm()
    if form.is_bound and form.is_valid():
        username = form.cleaned_data["username"]
        return HttpResponseRedirect(reverse("admin:accounts_adjust", args=[username]))
    context = _context(request, "Adjust balance", form=form)
    return TemplateResponse(request, "admin/accounts/adjust_pick.html", context)


def adjust_view(request: HttpRequest, username: str) -> HttpResponse:
    found = _account_or_redirect(request, username)
    if isinstance(found, HttpResponse):
        return found
    account = found

    def show_form(form: AdjustForm) -> HttpResponse:
        context = _context(
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

    def show_confirm(sats: int, reason: str, request_id: str) -> HttpResponse:
        form = ConfirmAdjustForm(initial={"request_id": request_id, "sats": sats, "reason": reason})
        context = _context(
            request,
            "Confirm adjustment",
            subtitle=username,
            username=username,
            form=form,
            credit=sats > 0,
            sats=abs(sats),
            amount_btc=money.format_btc(abs(sats)),
            reason=reason,
            balance=account["balance"],
            balance_btc=money.format_btc(account["balance"]),
            after_btc=money.format_btc(account["balance"] + sats),
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
        return show_confirm(sats, reason, new_request_id())

    confirm = ConfirmAdjustForm(request.POST)
    if not confirm.is_valid():
        messages.error(request, "The confirmation was incomplete; nothing was changed.")
        return show_form(AdjustForm())
    sats = confirm.cleaned_data["sats"]
    reason = confirm.cleaned_data["reason"]
    request_id = confirm.cleaned_data["request_id"]
    staff = request.user.get_username()
    try:
        applied = adjust_balance(
            get_store(), get_clock(), username, sats, reason, request_id=request_id, staff=staff
        )
    except locks.AccountError as exc:
        # AdjustError (too low, bad amount or reason), AccountBusy, AccountMissing: no lock was
        # taken, so nothing changed.
        messages.error(request, f"{exc} Nothing was changed.")
        initial = {"amount": money.format_btc(sats), "reason": reason}
        return show_form(AdjustForm(initial=initial))
    except DocstoreError as exc:
        # The lock may be held; recovery finishes it, and this request id never applies twice.
        messages.error(
            request,
            f"The docstore failed ({exc}). Submit the same confirmation again: it applies once.",
        )
        return show_confirm(sats, reason, request_id)
    log.info(
        "staff adjust by=%s user=%s delta=%d request=%s applied=%s",
        staff, username, sats, request_id, applied,
    )  # fmt: skip
    if applied:
        verb = "Credited" if sats > 0 else "Debited"
        prep = "to" if sats > 0 else "from"
        messages.success(
            request,
            f"{verb} {money.format_btc(abs(sats))} BTC ({abs(sats)} sats) {prep} {username}.",
        )
    else:
        messages.warning(request, "This adjustment was already applied; nothing changed this time.")
    return HttpResponseRedirect(_inspect_url(username))


# --- wiring into the default admin site ---


@dataclass(frozen=True)
class Operation:
    title: str
    url_name: str
    description: str = ""


_operations: list[Operation] = []


def register_operation(title: str, url_name: str, description: str = "") -> None:
    """Link an admin page (by its `admin:` URL name) from the index's Operations block."""
    op = Operation(title, url_name, description)
    if op not in _operations:
        _operations.append(op)


register_operation(
    "Account inspector",
    "accounts_inspect",
    "Balance, lock, bitcoin state and ledger of one account; adjust it or finish its lock.",
)
register_operation(
    "Adjust balance",
    "accounts_adjust_pick",
    "Credit or debit an account, with a written reason, after a confirmation page.",
)

_site_get_urls = admin.site.get_urls
_site_index = admin.site.index


def _get_urls():
    site = admin.site
    # Before the site's own URLs: those end in a catch-all that would answer these paths first.
    return [
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
        *_site_get_urls(),
    ]


def _index(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    operations = [
        {"title": op.title, "url": reverse(f"admin:{op.url_name}"), "description": op.description}
        for op in _operations
    ]
    return _site_index(request, {"operations": operations, **(extra_context or {})})


admin.site.get_urls = _get_urls
admin.site.index = _index
