"""The Withdraw tab: request a payout, preview its fee, see and cancel my requests.

Views only parse input and call bitcoinkeys.withdrawals; every refusal is a sentence on the page.
Three buttons share one form so nothing typed is lost: "Withdraw" (Enter), "Preview" (fee and
total computed here, for browsers without JS) and "Withdraw everything" (fills in the largest
amount the balance covers with its fee; static/js/withdraw.js does the same without a round trip).
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import UTC, datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import locks, ratelimit, twofactor
from accounts.gateway import ensure_account
from accounts.money import (
    MAX_SATS,
    BTCField,
    MoneyError,
    format_btc,
    parse_btc,
    permille_as_percent,
)
from docstore import Ambiguous, TemporaryFailure, get_clock, get_store

from . import withdrawals as w
from .addresses import AddressError, validate_address

log = logging.getLogger(__name__)

MAX_ADDRESS_LENGTH = 100  # bech32 addresses are at most 90 characters
MAX_REQUEST_INDEX = 10**9

OUTCOME_UNKNOWN = (
    "We could not confirm that your request went through. It will complete or be undone "
    "automatically within a minute; you will never be charged twice. Your withdrawals page "
    "shows the result."
)
CODE_NEEDED = (
    "Enter the current code from your authenticator app (each code works once) to confirm."
)
_SPACE = re.compile(r"\s")


def most_you_can_withdraw(balance: int) -> str:
    top = w.max_withdrawal(balance)
    return (
        f"You can withdraw at most {format_btc(top)} BTC including the fee "
        f"({format_btc(top)} BTC + {format_btc(w.withdrawal_fee(top))} BTC fee out of your "
        f"balance of {format_btc(balance)} BTC)."
    )


class WithdrawForm(forms.Form):
    amount = BTCField(
        label="Amount to withdraw (BTC)",
        max_sats=MAX_SATS,
        help_text="What arrives at your address; the fee comes on top.",
    )
    address = forms.CharField(
        label="Payout address",
        max_length=MAX_ADDRESS_LENGTH,
        error_messages={
            "required": "Enter the bitcoin address to send the money to.",
            "max_length": "That is too long to be a bitcoin address.",
        },
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "off"}
        ),
    )

    # A one-time token per form shown: the same form submitted twice queues one withdrawal.
    submission = forms.RegexField(
        regex=r"\A[0-9a-f]{32}\Z", required=False, widget=forms.HiddenInput
    )

    def __init__(self, *args, balance: int, needs_code: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.balance = balance
        if needs_code:
            # Two-factor users confirm each withdrawal with a current code (accounts.twofactor).
            self.fields["code"] = forms.CharField(
                label="Code from your authenticator app",
                max_length=20,
                required=False,
                widget=forms.TextInput(
                    attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}
                ),
            )
        if not self.is_bound and not self.initial.get("submission"):
            self.initial["submission"] = secrets.token_hex(16)
        # Read per form, not at import, so a changed setting applies without a restart of tests.
        self.fields["amount"].min_sats = settings.MIN_WITHDRAWAL_SATS

    def clean_address(self) -> str:
        # Surrounding whitespace from a paste is already stripped; inside, it is never part of
        # an address, and saying so beats "bad checksum".
        text = self.cleaned_data["address"]
        if _SPACE.search(text):
            raise forms.ValidationError(
                "The address contains spaces; paste it again without spaces or line breaks."
            )
        try:
            return validate_address(text, settings.BITCOIN_NETWORK)
        except AddressError as exc:
            raise forms.ValidationError(w.sentence(str(exc))) from None

    def clean(self):
        data = super().clean()
        amount = data.get("amount")
        if amount is not None and amount + w.withdrawal_fee(amount) > self.balance:
            self.add_error("amount", most_you_can_withdraw(self.balance))
        return data


def _typed_amount(form: WithdrawForm) -> int | None:
    """The amount as typed, if it is a number of BTC at all (even above the balance or with a
    bad address), so the preview can show its fee and total next to the error."""
    if not form.is_bound:
        initial = form.initial.get("amount")
        return initial if isinstance(initial, int) else None
    try:
        return parse_btc(form.data.get("amount", ""))
    except MoneyError:
        return None


def _history_row(entry: dict) -> dict:
    return {
        "at": datetime.fromtimestamp(entry["at"], tz=UTC),
        "state": w.STATE_LABELS.get(entry["state"], entry["state"]),
        "txid": entry.get("txid"),
        "error": entry.get("error"),
        "note": entry.get("note"),
    }


def _request_row(req: dict) -> dict:
    return {
        "i": req["i"],
        "state": req["state"],
        "label": w.STATE_LABELS.get(req["state"], req["state"]),
        "amount": req["amount"],
        "fee": req["fee"],
        "address": req["address"],
        "txid": req.get("txid"),
        "error": req.get("error"),
        "created": datetime.fromtimestamp(req["createdAt"], tz=UTC),
        "history": [_history_row(e) for e in req.get("history", [])],
        "cancellable": req["state"] == w.QUEUED,
    }


def _page(request: HttpRequest, form: WithdrawForm, balance: int, status: int = 200):
    amount = _typed_amount(form)
    fee = w.withdrawal_fee(amount) if amount is not None else None
    top = w.max_withdrawal(balance)
    context = {
        "form": form,
        "balance": balance,
        "fee": fee,
        "total": amount + fee if fee is not None else None,
        "max_amount": top,
        "max_fee": w.withdrawal_fee(top),
        "can_withdraw": top >= settings.MIN_WITHDRAWAL_SATS,
        "min_amount": settings.MIN_WITHDRAWAL_SATS,
        "fee_permille": settings.WITHDRAW_FEE_PERMILLE,
        "fee_percent": permille_as_percent(settings.WITHDRAW_FEE_PERMILLE),
        "requests": [
            _request_row(r) for r in w.user_withdrawals(get_store(), request.user.username)
        ],
        "active_tab": "withdraw",
        "faucet_address": _faucet_address(),
    }
    return render(request, "bitcoinkeys/withdraw.html", context, status=status)


def _faucet_address() -> str | None:
    """Development runs on the local chain: an address of the node's own wallet to withdraw to."""
    from . import faucet

    if not faucet.enabled():
        return None
    try:
        return faucet.withdrawal_test_address()
    except faucet.FaucetError:
        return None


def _unknown_outcome(request: HttpRequest, what: str) -> HttpResponse:
    log.warning("withdraw %s outcome unknown user=%s", what, request.user.username, exc_info=True)
    context = {"status": 503, "message": OUTCOME_UNKNOWN}
    return render(request, "bitcoinkeys/withdraw_error.html", context, status=503)


@never_cache
@login_required
def withdraw(request: HttpRequest) -> HttpResponse:
    store, clock = get_store(), get_clock()
    username = request.user.username
    balance = ensure_account(store, clock, username).value["balance"]
    needs_code = request.user.has_2fa
    if request.method != "POST":
        return _page(request, WithdrawForm(balance=balance, needs_code=needs_code), balance)
    action = request.POST.get("action", "withdraw")
    if action == "max":
        # Fill in, do not send: the person sees the amount, fee and total and confirms.
        initial = {
            "amount": w.max_withdrawal(balance),
            "address": request.POST.get("address", ""),
            "submission": request.POST.get("submission", ""),
        }
        form = WithdrawForm(initial=initial, balance=balance, needs_code=needs_code)
        return _page(request, form, balance)
    form = WithdrawForm(request.POST, balance=balance, needs_code=needs_code)
    valid = form.is_valid()
    if action == "preview":
        return _page(request, form, balance, 200 if valid else 400)
    if not valid:
        return _page(request, form, balance, 400)
    if not ratelimit.hit("withdraw", username, settings.WITHDRAW_RATE_LIMIT, 3600):
        form.add_error(None, "You have requested many withdrawals in the last hour; try later.")
        return _page(request, form, balance, 429)
    if needs_code:
        # Checked last, so a code is used up only by a request that is otherwise ready to go.
        if not twofactor.attempt_allowed(request.user):
            form.add_error("code", ratelimit.TOO_MANY_ATTEMPTS)
            return _page(request, form, balance, 429)
        if not twofactor.verify(request.user, form.cleaned_data.get("code", "")):
            form.add_error("code", CODE_NEEDED)
            return _page(request, form, balance, 400)
    amount, address = form.cleaned_data["amount"], form.cleaned_data["address"]
    submission = form.cleaned_data.get("submission") or None
    try:
        i = w.request_withdrawal(store, clock, username, amount, address, submission)
    except w.AlreadySubmitted as exc:
        messages.info(request, str(exc))
        return redirect("withdraw")
    except locks.InsufficientFunds as exc:
        form.add_error("amount", most_you_can_withdraw(exc.balance))
        return _page(request, form, exc.balance, 400)
    except (w.BelowMinimum, w.BadAddress, w.WithdrawError) as exc:
        form.add_error(None, str(exc))
        return _page(request, form, balance, 400)
    except locks.AccountBusy:
        form.add_error(None, locks.AccountBusy.message)
        return _page(request, form, balance, 409)
    except (Ambiguous, TemporaryFailure):
        return _unknown_outcome(request, "request")
    fee = w.withdrawal_fee(amount)
    messages.success(
        request,
        f"Withdrawal #{i} of {format_btc(amount)} BTC queued (fee {format_btc(fee)} BTC, "
        f"{format_btc(amount + fee)} BTC taken from your balance).",
    )
    return redirect("withdraw")


@require_POST
@login_required
def cancel(request: HttpRequest, i: int) -> HttpResponse:
    if i > MAX_REQUEST_INDEX:
        return _not_found(request)
    try:
        req = w.cancel_withdrawal(get_store(), get_clock(), request.user.username, i)
    except w.WithdrawalNotFound:
        # Someone else's request is simply not reachable under this user's name.
        return _not_found(request)
    except w.NotCancellable as exc:
        messages.error(request, str(exc))
    except locks.AccountBusy:
        messages.warning(request, locks.AccountBusy.message)
    except (Ambiguous, TemporaryFailure):
        return _unknown_outcome(request, "cancel")
    else:
        total = req["amount"] + req["fee"]
        messages.success(
            request,
            f"Withdrawal #{i} cancelled; {format_btc(total)} BTC went back to your balance.",
        )
    return redirect("withdraw")


def _not_found(request: HttpRequest) -> HttpResponse:
    context = {"status": 404, "message": w.WithdrawalNotFound.message}
    return render(request, "bitcoinkeys/withdraw_error.html", context, status=404)
