"""The file cache the site uses by default: Django's, culled without evicting live entries.

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

import random
import threading
import time

from django.core.cache.backends.filebased import FileBasedCache


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
