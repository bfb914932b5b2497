"""Log in with a username in any case: "Bob", "bob" and "BOB" are one user (DESIGN.md 4).

Usernames are unique case-insensitively (a database constraint on LOWER(username)), so an
`iexact` lookup finds at most one user; the stored spelling is what keys `account::<u>`.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

BACKEND_PATH = "accounts.auth_backends.CaseInsensitiveModelBackend"


class CaseInsensitiveModelBackend(ModelBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs,
    ):
        User = get_user_model()
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if username is None or password is None:
            return None
        try:
            user = User._default_manager.get(username__iexact=username)
        except (User.DoesNotExist, User.MultipleObjectsReturned):
            # Hash anyway so a missing user takes as long as a wrong password (no user probing
            # by timing), as Django's own ModelBackend does.
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None

    async def aauthenticate(self, request, username=None, password=None, **kwargs):
        return await sync_to_async(self.authenticate)(request, username, password, **kwargs)
