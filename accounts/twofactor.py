"""Two-factor authentication: TOTP codes (RFC 6238, by pyotp) and one-time recovery codes.

A code is checked against the injected clock's time step and one step either side (phone clocks
drift); the step it matched is stored with a conditional UPDATE, so each code is accepted once,
even by two requests racing on two web nodes. Recovery codes are random (59 bits), shown once and
stored as SHA-256 hashes; using one removes it in the same kind of conditional UPDATE. Every
attempt counts against `OTP_RATE_LIMIT` per user (ratelimit.hit), so six digits cannot be guessed.

The second login step: a password that is right for a user with 2FA does not log them in; the
session holds a pending login (user id, the password's session hash, when) for
`OTP_LOGIN_SECONDS` and the code page finishes it with Django's `login()`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets

import pyotp
import segno
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest

from docstore import get_clock

from . import ratelimit
from .auth_backends import forget_user

STEP_SECONDS = 30
RECOVERY_CODES = 10
PENDING_KEY = "accounts.2fa.pending"
ENROL_KEY = "accounts.2fa.enrol"
_NOT_CODE = re.compile(r"[\s-]")
# 31 letters and digits that cannot be misread for each other: 12 of them are ~59 bits.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=settings.SITE_NAME)


def qr_svg(uri: str) -> str:
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, xmldecl=False, svgns=True)
    return out.getvalue().decode()


def matching_step(secret: str, code: str, now: int) -> int | None:
    """The time step (now's or one either side) whose code is `code`, or None."""
    code = _NOT_CODE.sub("", code or "")
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    current = now // STEP_SECONDS
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None


def _hash_recovery(code: str) -> str:
    return hashlib.sha256(_NOT_CODE.sub("", code).lower().encode()).hexdigest()


def new_recovery_codes() -> tuple[list[str], list[str]]:
    """(codes to show once, their hashes to store)."""
    codes = []
    for _ in range(RECOVERY_CODES):
        text = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(12))
        codes.append(f"{text[:4]}-{text[4:8]}-{text[8:]}")
    return codes, [_hash_recovery(c) for c in codes]


def attempt_allowed(user) -> bool:
    """One code attempt by `user`, counted per user across every web node."""
    return ratelimit.hit(
        "otp-user", str(user.pk), settings.OTP_RATE_LIMIT, settings.RATE_LIMIT_WINDOW_SECONDS
    )


def verify(user, code: str, allow_recovery: bool = False) -> bool:
    """True if `code` is a current TOTP code never used before (or, if allowed, an unused
    recovery code), consuming it. The caller counts the attempt first (attempt_allowed)."""
    User = get_user_model()
    if not user.totp_secret:
        return False
    step = matching_step(user.totp_secret, code, get_clock().now())
    if step is not None:
        # Conditional: of two requests with the same code, one updates a row, the other none.
        won = User.objects.filter(pk=user.pk, totp_last_step__lt=step).update(totp_last_step=step)
        _forget(user)
        return won == 1
    if allow_recovery and code:
        return _use_recovery_code(user, _hash_recovery(code))
    return False


def _use_recovery_code(user, digest: str) -> bool:
    User = get_user_model()
    for _ in range(5):  # a concurrent use of another code changed the list: read it again
        hashes = list(
            User.objects.filter(pk=user.pk).values_list("recovery_code_hashes", flat=True)
        )
        if not hashes or not any(hmac.compare_digest(digest, h) for h in hashes[0]):
            return False
        remaining = [h for h in hashes[0] if h != digest]
        updated = User.objects.filter(pk=user.pk, recovery_code_hashes=hashes[0]).update(
            recovery_code_hashes=remaining
        )
        if updated:
            _forget(user)
            return True
    return False


def _forget(user) -> None:
    # QuerySet.update skips post_save: drop the cached user by hand (auth_backends).
    forget_user(None, user)


def enable(user, secret: str) -> list[str]:
    """Turn 2FA on with a confirmed secret; returns the recovery codes to show once."""
    codes, hashes = new_recovery_codes()
    user.totp_secret, user.recovery_code_hashes = secret, hashes
    user.totp_last_step = get_clock().now() // STEP_SECONDS  # the confirming code is used up
    user.save(update_fields=["totp_secret", "recovery_code_hashes", "totp_last_step"])
    return codes


def disable(user) -> None:
    user.totp_secret, user.recovery_code_hashes, user.totp_last_step = "", [], 0
    user.save(update_fields=["totp_secret", "recovery_code_hashes", "totp_last_step"])


# --- the pending second login step ---


def begin_login(request: HttpRequest, user, backend: str, next_url: str) -> None:
    request.session.cycle_key()
    request.session[PENDING_KEY] = {
        "user": user.pk,
        "hash": user.get_session_auth_hash(),
        "backend": backend,
        "since": get_clock().now(),
        "next": next_url,
    }


def pending_login(request: HttpRequest):
    """(user, pending dict) for a pending login that is still valid, else (None, None)."""
    pending = request.session.get(PENDING_KEY)
    if not isinstance(pending, dict):
        return None, None
    if get_clock().now() - pending.get("since", 0) > settings.OTP_LOGIN_SECONDS:
        request.session.pop(PENDING_KEY, None)
        return None, None
    user = get_user_model()._default_manager.filter(pk=pending.get("user"), is_active=True).first()
    # A password changed since the first step ends the pending login too.
    if user is None or not hmac.compare_digest(user.get_session_auth_hash(), pending["hash"]):
        request.session.pop(PENDING_KEY, None)
        return None, None
    return user, pending
