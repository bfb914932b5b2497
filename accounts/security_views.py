"""The Security tab: password change, email (verified by a signed link), password reset by email,
two-factor authentication (enrol, recovery codes, the login's second step).

Password change and reset go through Django's views and tokens. Changing the password changes the
user's session auth hash, so every other session of the user fails Django's check at its next
request, on every web node (sessions and users are read from the shared cache, and a saved user's
cache entry is dropped); the session that changed it is kept by `update_session_auth_hash`.
"""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordResetForm
from django.core import signing
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from docstore import get_clock

from . import notify, ratelimit, twofactor
from .models import User

log = logging.getLogger(__name__)

EMAIL_SALT = "accounts.email-verification"
BAD_CODE = "That code is not right (or was already used); enter the current one."


# --- password change ---


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's view (current password required, update_session_auth_hash), throttled."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("account_security")

    def post(self, request, *args, **kwargs):
        if not ratelimit.hit(
            "password-change",
            request.user.username.lower(),
            settings.LOGIN_RATE_LIMIT,
            settings.RATE_LIMIT_WINDOW_SECONDS,
        ):
            context = self.get_context_data(limited=ratelimit.TOO_MANY_ATTEMPTS)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(
            self.request, "Your password was changed. Every other session was signed out."
        )
        return response

    def get_context_data(self, **kwargs):
        return super().get_context_data(active_tab="security", **kwargs)


# --- password reset (Django's views; only verified addresses; no enumeration) ---


class VerifiedEmailResetForm(PasswordResetForm):
    def get_users(self, email):
        # An unverified address may be a typo of someone else's: it never receives a reset.
        return (u for u in super().get_users(email) if u.email_verified)


class PasswordResetView(auth_views.PasswordResetView):
    """Same answer for any address (known, unknown or unverified): "if it is ours, a link is on
    its way". Throttled per client and per address, again the same for any address."""

    template_name = "accounts/password_reset.html"
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    form_class = VerifiedEmailResetForm
    success_url = reverse_lazy("password_reset_done")

    def post(self, request, *args, **kwargs):
        limit, window = settings.PASSWORD_RESET_RATE_LIMIT, settings.RATE_LIMIT_WINDOW_SECONDS
        email = request.POST.get("email", "")[:254].strip().lower()
        by_ip = ratelimit.hit("reset-ip", ratelimit.client_ip(request), limit, window)
        by_email = ratelimit.hit("reset-email", email, limit, window)
        if not (by_ip and by_email):
            context = self.get_context_data(limited=ratelimit.TOO_MANY_ATTEMPTS)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


# --- the Security tab and the email address ---


class EmailForm(forms.Form):
    email = forms.EmailField(
        label="Email address",
        required=False,
        max_length=254,
        help_text="Optional. Used for password resets and the notices you choose below.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )


class NotifyForm(forms.Form):
    """One checkbox per notice kind; an unticked kind is turned off (stored in `notify_off`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for kind, label in notify.KINDS.items():
            self.fields[kind] = forms.BooleanField(label=label, required=False)

    @classmethod
    def for_user(cls, user: User) -> NotifyForm:
        off = set(user.notify_off or [])
        return cls(initial={kind: kind not in off for kind in notify.KINDS})

    def turned_off(self) -> list[str]:
        return [kind for kind in notify.KINDS if not self.cleaned_data.get(kind)]


def _security_page(request, email_form=None, status=200) -> HttpResponse:
    user = request.user
    context = {
        "email_form": email_form or EmailForm(initial={"email": user.email}),
        "notify_form": NotifyForm.for_user(user),
        "recovery_left": len(user.recovery_code_hashes),
        "active_tab": "security",
    }
    return render(request, "accounts/security.html", context, status=status)


@never_cache
@login_required
def security(request: HttpRequest) -> HttpResponse:
    return _security_page(request)


def email_token(user: User) -> str:
    return signing.dumps({"u": user.pk, "e": user.email}, salt=EMAIL_SALT)


def send_verification(request: HttpRequest, user: User) -> None:
    link = request.build_absolute_uri(reverse("verify_email", args=[email_token(user)]))
    hours = settings.EMAIL_VERIFY_SECONDS // 3600
    body = (
        f"Hello {user.username},\n\nTo confirm this address for your account at "
        f"{settings.SITE_NAME}, open:\n\n{link}\n\nThe link works for {hours} hours. "
        f"If you did not ask for this, ignore this message.\n"
    )
    send_mail(f"Confirm your email for {settings.SITE_NAME}", body, None, [user.email])


@require_POST
@login_required
def set_email(request: HttpRequest) -> HttpResponse:
    form = EmailForm(request.POST)
    if not form.is_valid():
        return _security_page(request, form, 400)
    user = request.user
    email = form.cleaned_data["email"]
    if email and not ratelimit.hit("email-verify", str(user.pk), settings.EMAIL_RATE_LIMIT, 3600):
        form.add_error("email", "Too many confirmation emails in the last hour; try later.")
        return _security_page(request, form, 429)
    changed = email.lower() != user.email.lower()
    if changed or not email:
        user.email, user.email_verified = email, False
        user.save(update_fields=["email", "email_verified"])
    if not email:
        messages.success(request, "Your email address was removed.")
    elif changed or not user.email_verified:
        send_verification(request, user)
        messages.success(request, f"We sent a confirmation link to {email}; open it to finish.")
    else:
        messages.info(request, "That address is already confirmed.")
    return redirect("account_security")


@require_POST
@login_required
def set_notifications(request: HttpRequest) -> HttpResponse:
    form = NotifyForm(request.POST)
    form.is_valid()  # checkboxes: anything not "on" is off, so every POST is valid
    user = request.user
    user.notify_off = form.turned_off()
    user.save(update_fields=["notify_off"])
    messages.success(request, "Your email notification choices were saved.")
    return redirect("account_security")


@never_cache
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    """The link from the confirmation email; works without being signed in (another device)."""
    try:
        data = signing.loads(token, salt=EMAIL_SALT, max_age=settings.EMAIL_VERIFY_SECONDS)
    except signing.BadSignature:  # includes SignatureExpired
        return _verify_result(request, "This confirmation link is broken or expired.", 400)
    user = User.objects.filter(pk=data.get("u"), is_active=True).first()
    # The address must still be the one the link was made for (it may have changed since).
    if user is None or not user.email or user.email.lower() != str(data.get("e", "")).lower():
        return _verify_result(request, "This link is for an address no longer on the account.", 400)
    if not user.email_verified:
        user.email_verified = True
        user.save(update_fields=["email_verified"])
    return _verify_result(request, f"{user.email} is confirmed. Thank you.", 200)


def _verify_result(request, message: str, status: int) -> HttpResponse:
    context = {"message": message, "ok": status == 200}
    return render(request, "accounts/email_verified.html", context, status=status)


# --- two-factor authentication ---


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code",
        max_length=20,
        strip=True,
        error_messages={"required": "Enter the code."},
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


@sensitive_post_parameters("code")
@never_cache
@login_required
def twofactor_setup(request: HttpRequest) -> HttpResponse:
    user = request.user
    if user.has_2fa:
        messages.info(request, "Two-factor authentication is already on.")
        return redirect("account_security")
    # The secret waits in the session until a code from the app proves it was scanned.
    secret = request.session.get(twofactor.ENROL_KEY)
    if not secret:
        secret = request.session[twofactor.ENROL_KEY] = twofactor.new_secret()
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not twofactor.attempt_allowed(user):
            form.add_error(None, ratelimit.TOO_MANY_ATTEMPTS)
            status = 429
        elif form.is_valid() and twofactor.matching_step(
            secret, form.cleaned_data["code"], get_clock().now()
        ):
            codes = twofactor.enable(user, secret)
            del request.session[twofactor.ENROL_KEY]
            log.info("2fa enabled user=%s", user.username)
            # Shown in this response only: not stored anywhere but as hashes.
            context = {"codes": codes, "active_tab": "security"}
            return render(request, "accounts/recovery_codes.html", context)
        else:
            form.errors.pop("code", None)
            form.add_error("code", BAD_CODE)
            status = 400
    uri = twofactor.provisioning_uri(secret, user.username)
    context = {
        "form": form,
        "secret": secret,
        "qr_svg": twofactor.qr_svg(uri),
        "next": request.GET.get("next", ""),
        "active_tab": "security",
    }
    return render(request, "accounts/twofactor_setup.html", context, status=status)


class DisableForm(forms.Form):
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    code = forms.CharField(label="Code from your app, or a recovery code", max_length=20)


@sensitive_post_parameters("password", "code")
@never_cache
@login_required
def twofactor_disable(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.has_2fa:
        return redirect("account_security")
    form = DisableForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if user.is_staff:
            form.add_error(None, "Staff accounts must keep two-factor authentication on.")
            status = 403
        elif not twofactor.attempt_allowed(user):
            form.add_error(None, ratelimit.TOO_MANY_ATTEMPTS)
            status = 429
        elif not form.is_valid():
            status = 400
        elif not user.check_password(form.cleaned_data["password"]):
            form.add_error("password", "That is not your password.")
            status = 400
        elif not twofactor.verify(user, form.cleaned_data["code"], allow_recovery=True):
            form.add_error("code", BAD_CODE)
            status = 400
        else:
            twofactor.disable(user)
            log.info("2fa disabled user=%s", user.username)
            messages.success(request, "Two-factor authentication is off.")
            return redirect("account_security")
    context = {"form": form, "active_tab": "security"}
    return render(request, "accounts/twofactor_disable.html", context, status=status)


@sensitive_post_parameters("code")
@never_cache
def login_code(request: HttpRequest) -> HttpResponse:
    """The login's second step for a user with 2FA: a current code or a recovery code."""
    user, pending = twofactor.pending_login(request)
    if user is None:
        messages.info(request, "Log in again: the first step expired or was never done.")
        return redirect("login")
    form = CodeForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not twofactor.attempt_allowed(user):
            form.add_error(None, ratelimit.TOO_MANY_ATTEMPTS)
            status = 429
        elif form.is_valid() and twofactor.verify(
            user, form.cleaned_data["code"], allow_recovery=True
        ):
            del request.session[twofactor.PENDING_KEY]
            login(request, user, backend=pending["backend"])
            return redirect(pending["next"])
        else:
            form.errors.pop("code", None)
            form.add_error("code", BAD_CODE)
            status = 400
    return render(request, "accounts/login_code.html", {"form": form}, status=status)
