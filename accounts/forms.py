"""Registration and login forms. Every refusal is a sentence the person can act on."""

from __future__ import annotations

import re

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from .models import USERNAME_RE, User, username_validator

USERNAME_TAKEN = "That username is already taken."
MAX_PASSWORD_LENGTH = 4096


def validate_username_text(value: str) -> None:
    # fullmatch, not the model validator's search: `$` also matches before a trailing newline,
    # so "bob\n" would pass `^...$` with re.search.
    if not re.fullmatch(USERNAME_RE, value):
        raise ValidationError(username_validator.message, code="invalid")


class RegistrationForm(forms.Form):
    username = forms.CharField(
        max_length=32,
        # Not stripped: " bob" is refused with the rule rather than silently becoming "bob".
        strip=False,
        validators=[validate_username_text],
        help_text="1 to 32 letters (A-Z, a-z) and digits.",
        error_messages={
            "required": "Choose a username.",
            "max_length": "Usernames are at most 32 characters.",
        },
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        max_length=MAX_PASSWORD_LENGTH,
        help_text=password_validation.password_validators_help_text_html(),
        error_messages={
            "required": "Choose a password.",
            "max_length": f"Passwords are at most {MAX_PASSWORD_LENGTH} characters.",
        },
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        max_length=MAX_PASSWORD_LENGTH,
        error_messages={
            "required": "Type the password again.",
            "max_length": f"Passwords are at most {MAX_PASSWORD_LENGTH} characters.",
        },
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        # A friendly early answer; the database constraint is what really decides (see save()).
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError(USERNAME_TAKEN, code="taken")
        return username

    def clean(self) -> dict:
        cleaned = super().clean()
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords do not match.")
        elif password1:
            # A throwaway user so the similarity check can compare the password to the username.
            candidate = User(username=cleaned.get("username") or "")
            try:
                password_validation.validate_password(password1, candidate)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned

    def save(self) -> User | None:
        """Create the user; None (with the form error set) if another sign-up won the name.

        Two sign-ups of "Bob" and "bob" can both pass clean_username; the unique constraint on
        LOWER(username) lets one insert through and turns the other into an IntegrityError.
        """
        try:
            with transaction.atomic():
                return User.objects.create_user(
                    username=self.cleaned_data["username"],
                    password=self.cleaned_data["password1"],
                )
        except IntegrityError:
            self.add_error("username", ValidationError(USERNAME_TAKEN, code="taken"))
            return None


class LoginForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        # One message for an unknown user and a wrong password: no hint which it was.
        "invalid_login": "The username or password is incorrect.",
    }

    def __init__(self, request=None, *args, **kwargs):
        super().__init__(request, *args, **kwargs)
        self.fields["username"].widget.attrs["autocomplete"] = "username"
        self.fields["username"].error_messages["required"] = "Enter your username."
        self.fields["password"].error_messages["required"] = "Enter your password."
