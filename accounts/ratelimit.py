"""Fixed-window rate limits in Django's cache, so every gunicorn worker counts against one total.

The client is `REMOTE_ADDR` and nothing else: X-Forwarded-For is whatever the client wants it to
be, so trusting it would let anyone pick a fresh "address" per request. Behind a reverse proxy,
the proxy must set REMOTE_ADDR to the real client (e.g. gunicorn `--forwarded-allow-ips` with a
proxy that overwrites the header, or a WSGI middleware owned by the deployment), or every client
shares the proxy's address and one budget.

Counting uses `cache.add` (create the window's counter) then `cache.incr`. On memcached and
Redis both are atomic; the default file cache does a read-modify-write, so racing workers can
undercount by a few near the limit. That is fine for slowing down password guessing; it is not
a quota.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from docstore import get_clock

TOO_MANY_ATTEMPTS = "Too many attempts; try again in a few minutes."


def hit(scope: str, ident: str, limit: int, window: int) -> bool:
    """Count one attempt by `ident` in `scope`; True while it is within `limit` per `window` s.

    The window is fixed (it starts at a multiple of `window` seconds of the injected clock), so
    tests move time instead of sleeping. Every call counts, including refused ones.
    """
    bucket = get_clock().now() // window
    # Hashed so any text (10 000 characters, spaces, unicode) makes a key every backend accepts.
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    key = f"ratelimit:{scope}:{bucket}:{digest}"
    # The key outlives its window a little, so a counter never expires between add and incr.
    cache.add(key, 0, timeout=window + 5)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between add and incr: start the window's count again
        cache.add(key, 1, timeout=window + 5)
        count = 1
    return count <= limit


def client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def login_allowed(request: HttpRequest, username: str) -> bool:
    """One login attempt, counted per client address and per (case-folded) username."""
    limit, window = settings.LOGIN_RATE_LIMIT, settings.RATE_LIMIT_WINDOW_SECONDS
    # Both counters advance on every attempt; short-circuiting would let one hide the other.
    by_ip = hit("login-ip", client_ip(request), limit, window)
    by_user = hit("login-user", username.strip().lower(), limit, window)
    return by_ip and by_user


def register_allowed(request: HttpRequest) -> bool:
    """One registration attempt (valid or not), counted per client address."""
    return hit(
        "register-ip",
        client_ip(request),
        settings.REGISTER_RATE_LIMIT,
        settings.RATE_LIMIT_WINDOW_SECONDS,
    )
