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

    class Meta:
        constraints = [
            # Case-insensitive uniqueness, enforced by the database so two racing sign-ups of
            # "Bob" and "bob" cannot both succeed.
            models.UniqueConstraint(Lower("username"), name="accounts_user_username_ci_unique"),
        ]
