"""The only ORM data: auth users. Money and everything else lives in the docstore."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower

USERNAME_RE = r"\A[A-Za-z0-9]{1,32}\Z"

username_validator = RegexValidator(
    USERNAME_RE, "Usernames are 1 to 32 letters (A-Z, a-z) and digits, nothing else."
)


class User(AbstractUser):
    username = models.CharField(
        max_length=32,
        unique=True,
        validators=[username_validator],
        help_text="1 to 32 letters and digits.",
        error_messages={"unique": "That username is already taken."},
    )
    # `email` (AbstractUser's) is optional; only a verified one receives password resets.
    email_verified = models.BooleanField(default=False)
    # Two-factor authentication (accounts/twofactor.py): the base32 TOTP secret once confirmed
    # (empty = off), the last time step accepted (a code is never accepted twice), and the
    # SHA-256 hashes of the unused recovery codes.
    totp_secret = models.CharField(max_length=64, blank=True, default="")
    totp_last_step = models.BigIntegerField(default=0)
    recovery_code_hashes = models.JSONField(default=list, blank=True)
    # Notice kinds (accounts/notify.py KINDS) this user turned off; every other kind is on.
    notify_off = models.JSONField(default=list, blank=True)

    @property
    def has_2fa(self) -> bool:
        return bool(self.totp_secret)

    class Meta:
        # Staff money actions, each its own permission (superusers have all); the ORM holds no
        # money, so they live on the user model. Checked in accounts/admin.py and the apps'
        # admin pages.
        permissions = [
            ("adjust_balance", "Can credit or debit an account's balance"),
            ("finish_lock", "Can finish an account's lock now"),
            ("refund_withdrawal", "Can refund a payout the wallet refused"),
        ]
        constraints = [
            # Case-insensitive uniqueness, enforced by the database so two racing sign-ups of
            # "Bob" and "bob" cannot both succeed.
            models.UniqueConstraint(Lower("username"), name="accounts_user_username_ci_unique"),
        ]
