"""Sessions in the shared cache, written through to the database (Django's `cached_db`), that
keep the site up when the cache cannot be reached.

- Reading: from the cache, else the database (a signed-in user stays signed in while Redis is
  down; Django's own store would fail on the cache write after the database read).
- Writing: the database, then the cache. A cache that cannot be reached is logged: the session's
  earlier contents may come back once it is reachable again (never a sign-in or a sign-out:
  those change or delete the session key, below).
- Deleting (sign-out, a session ended by a password change, a new key at sign-in): the cached
  copy is dropped first, and if the cache cannot be reached the deletion is refused before the
  database row is touched (`SessionCacheUnavailable`, a 503 saying so). Deleting only the row
  would leave the cached copy to sign the cookie in again once the cache is back.
"""

from __future__ import annotations

import logging

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.backends.db import SessionStore as DBStore

from config.cache import CacheUnavailable

log = logging.getLogger(__name__)


class SessionCacheUnavailable(CacheUnavailable):
    """A session could not be ended: its cached copy could not be dropped (nothing changed)."""


class SessionStore(CachedDBStore):
    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except CacheUnavailable:
            return DBStore.load(self)
        if data is not None:
            return data
        found = self._get_session_from_db()
        if not found:
            return {}
        data = self.decode(found.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=found.expire_date))
        except CacheUnavailable:
            pass
        return data

    def exists(self, session_key):
        try:
            if session_key and (self.cache_key_prefix + session_key) in self._cache:
                return True
        except CacheUnavailable:
            pass
        return DBStore.exists(self, session_key)

    def save(self, must_create=False):
        DBStore.save(self, must_create)
        try:
            self._cache.set(self.cache_key, self._session, self.get_expiry_age())
        except CacheUnavailable:
            log.warning("session saved to the database only: cache unreachable")

    def delete(self, session_key=None):
        if session_key is None:
            session_key = self.session_key
        if session_key is not None:
            try:
                self._cache.delete(self.cache_key_prefix + session_key)
            except CacheUnavailable as exc:
                raise SessionCacheUnavailable(str(exc)) from exc
        DBStore.delete(self, session_key)
