"""Log in with a username in any case: "Bob", "bob" and "BOB" are one user (DESIGN.md 4).

Usernames are unique case-insensitively (a database constraint on LOWER(username)), so an
`iexact` lookup finds at most one user; the stored spelling is what keys `account::<u>`.

Every signed-in request loads its user. The ORM query is the largest cost of a buy after the
buy itself (~1 ms), so active users are kept in the shared cache for a few minutes; every save or
delete of a user drops the entry (`forget_user`, connected in AccountsConfig.ready), so a
deactivation or a password change is seen at the next request in every process, on every node
that shares the cache (Redis).

With the cache unreachable, users are read from the database, and a save or delete of a user is
refused before it writes anything (`UserCacheUnavailable`, a 503): it could not drop the cached
copy, which another node would then keep serving (an old password hash, a deactivated user)
once the cache is back.
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.http import HttpRequest

from config.cache import CacheUnavailable

log = logging.getLogger(__name__)
BACKEND_PATH = "accounts.auth_backends.CaseInsensitiveModelBackend"
# A bound on staleness should a user ever change without a save (QuerySet.update skips signals).
USER_CACHE_SECONDS = 300


def _user_cache_key(user_id) -> str:
    return f"accounts:user:{user_id}"


class UserCacheUnavailable(CacheUnavailable):
    """A user could not be changed: its cached copy could not be dropped (nothing was written)."""


def forget_user_before(sender, instance, **kwargs) -> None:
    """pre_save / pre_delete receiver: drop the cached copy, or refuse the change."""
    if instance.pk is None:
        return  # a new user: nothing cached
    try:
        cache.delete(_user_cache_key(instance.pk))
    except CacheUnavailable as exc:
        raise UserCacheUnavailable(str(exc)) from exc


def forget_user(sender, instance, **kwargs) -> None:
    """post_save / post_delete receiver: drop a copy a request cached during the write too; the
    next request reads the user from the database."""
    try:
        cache.delete(_user_cache_key(instance.pk))
    except CacheUnavailable:
        # Written already (the cache went away mid-request): the copy pre_save dropped could
        # only have been put back by a request reading the user during the write.
        log.error("user %s saved but the cache went away: its entry may be stale", instance.pk)


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

    def get_user(self, user_id):
        key = _user_cache_key(user_id)
        try:
            user = cache.get(key)
        except CacheUnavailable:
            return super().get_user(user_id)  # the database, while the cache is down
        if user is None:
            user = super().get_user(user_id)  # None for a missing or inactive user
            if user is not None:
                try:
                    cache.set(key, user, USER_CACHE_SECONDS)
                except CacheUnavailable:
                    pass
            return user
        return user if self.user_can_authenticate(user) else None

    async def aauthenticate(self, request, username=None, password=None, **kwargs):
        return await sync_to_async(self.authenticate)(request, username, password, **kwargs)
