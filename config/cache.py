"""The site's caches: the file cache (the default, one machine) and Redis (several web nodes).

The file cache is Django's, culled without evicting live entries.

Django's FileBasedCache lists its whole directory on every write and, past MAX_ENTRIES (300 by
default), deletes a random third of the entries, live or not. Rate-limit counters live in this
cache, so a burst of anything (sessions, cached users, other clients' counters) would evict them
and hand every client a fresh budget. Here a cull first deletes entries that have expired and
deletes live ones only when more than MAX_ENTRIES are still live (a random third, as Django does);
MAX_ENTRIES is 100 000 by default (CACHE_MAX_ENTRIES). Listing a directory that large on every
write would cost milliseconds, so a process culls at most once every CULL_EVERY_SECONDS (10 s).

Entries are written 0600 in a 0700 directory (Django's mkstemp and makedirs already do).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time

import redis
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

log = logging.getLogger(__name__)


class FileCache(FileBasedCache):
    def __init__(self, dir, params):
        super().__init__(dir, params)
        options = params.get("OPTIONS", {})
        self._cull_every = float(options.get("CULL_EVERY_SECONDS", 10))
        self._next_cull = 0.0
        self._cull_lock = threading.Lock()

    def _cull(self) -> None:
        now = time.monotonic()
        with self._cull_lock:
            if now < self._next_cull:
                return
            self._next_cull = now + self._cull_every
        filelist = self._list_cache_files()
        if len(filelist) < self._max_entries:
            return
        live = []
        for name in filelist:
            try:
                with open(name, "rb") as f:
                    if not self._is_expired(f):  # deletes the file when it has expired
                        live.append(name)
            except FileNotFoundError:
                pass
        if len(live) < self._max_entries:
            return
        if self._cull_frequency == 0:
            self.clear()
            return
        for name in random.sample(live, int(len(live) / self._cull_frequency)):
            self._delete(name)


# --- Redis: the cache several web nodes share ----------------------------------------------------


class CacheUnavailable(Exception):
    """The shared cache cannot be reached (Redis down, cut off, refusing our password)."""


# What redis-py raises when the server is down, slow, cut off or refusing us: connection and
# timeout errors, and the server's own refusals (LOADING, OOM, READONLY, NOAUTH).
_REDIS_FAILURES = (redis.exceptions.RedisError,)
# After a failure the cache is not dialled again for this long: requests meanwhile fail at once
# instead of each waiting out a connect timeout (as the docstore does with a cluster that is down).
RETRY_SECONDS = 2.0


class RedisCache(DjangoRedisCache):
    """Django's Redis cache (redis-py) that fails fast and says so, and counts atomically.

    - Every call that cannot reach the server raises `CacheUnavailable` (callers decide: the rate
      limits of login and registration refuse, the others let the request through; sessions and
      users are read from the database; a change that must drop a cached entry is refused).
    - Connect and read timeouts default to 1 s (`socket_connect_timeout`, `socket_timeout` in
      CACHE_URL's query override them); redis-py waits forever by default.
    - `incr_window` is one MULTI/EXEC round trip: SET NX EX then INCR, so a counter is created
      with its expiry and incremented atomically (Django's incr checks EXISTS first, two round
      trips, and a key expiring between them would be recreated without an expiry).
    """

    def __init__(self, server, params):
        params = {**params, "OPTIONS": dict(params.get("OPTIONS") or {})}
        options = params["OPTIONS"]
        options.setdefault("socket_connect_timeout", 1.0)
        options.setdefault("socket_timeout", 1.0)
        super().__init__(server, params)
        self._down_until = 0.0

    def _guard(self, call, *args, **kwargs):
        if time.monotonic() < self._down_until:
            raise CacheUnavailable("the cache was unreachable moments ago")
        try:
            return call(*args, **kwargs)
        except _REDIS_FAILURES as exc:
            self._down_until = time.monotonic() + RETRY_SECONDS
            log.warning("cache unreachable: %s", exc)
            raise CacheUnavailable(str(exc)) from exc

    def incr_window(self, key: str, timeout: int) -> int:
        """Count one in `key`, created with `timeout` seconds to live if missing; the new count."""
        key = self.make_and_validate_key(key)

        def count() -> int:
            with self._cache.get_client(key, write=True).pipeline(transaction=True) as pipe:
                pipe.set(key, 0, ex=max(1, int(timeout)), nx=True)
                pipe.incr(key)
                return int(pipe.execute()[1])

        return self._guard(count)

    def ping(self) -> None:
        """Raise CacheUnavailable unless the server answers now (for /healthz; no back-off)."""
        self._down_until = 0.0
        self._guard(lambda: self._cache.get_client(None, write=True).ping())


def _guarded(name: str):
    inner = getattr(DjangoRedisCache, name)

    @functools.wraps(inner)
    def method(self, *args, **kwargs):
        return self._guard(inner, self, *args, **kwargs)

    return method


for _name in (
    "add",
    "get",
    "set",
    "touch",
    "delete",
    "get_many",
    "has_key",
    "incr",
    "set_many",
    "delete_many",
    "clear",
):
    setattr(RedisCache, _name, _guarded(_name))


def incr_window(key: str, timeout: int, cache=None) -> int:
    """Count one in the counter `key` (created with `timeout` s to live); the new count.

    Atomic on Redis (`RedisCache.incr_window`); elsewhere `add` then `incr`, which the file cache
    does as a read-modify-write (racing workers can undercount by a few)."""
    if cache is None:
        from django.core.cache import caches

        cache = caches["default"]
    if isinstance(cache, RedisCache):
        return cache.incr_window(key, timeout)
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # evicted between add and incr: start the window's count again
        cache.add(key, 1, timeout=timeout)
        return 1
