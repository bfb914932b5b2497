"""Fixed-window rate limits in Django's cache, so every gunicorn worker counts against one total.

The client. `REMOTE_ADDR` is the connection's peer. Behind a reverse proxy that peer is the
proxy, so every client would share one budget; the real client is then read from
X-Forwarded-For, but only when the peer is one of `TRUSTED_PROXIES` (anyone else can write that
header). Each trusted proxy appends the address it saw, so the header is read from the right:
the first hop that is not a trusted proxy is the client. An IPv6 client is counted by its /64,
the block one subscriber gets (counting single addresses would give each of them 2**64 budgets).

Login (`login_allowed`, `login_succeeded`, `login_failed`; the site's login and the admin's use
the same three). Only failures count. An attempt is counted as a failure before the password is
checked and taken back when it was right, so racing guesses cannot slip past the count. A client
over its failures is refused before any password check (it is the one guessing). A username
over its failures is never refused, or anyone could keep its owner out: the right password still
logs in, and every further wrong one is answered only after `LOGIN_FAILURE_DELAY_SECONDS`.
Usernames are counted as Django authenticates them: NFKC-normalised and case-folded, so look-alike
spellings of one name (full-width letters, "BOB") share one count.

Counting is `config.cache.incr_window`: on Redis one atomic MULTI/EXEC (create the window's
counter with its expiry, increment it), so racing requests on any number of nodes are counted
exactly; the default file cache does a read-modify-write, so racing workers can undercount by a
few near the limit. That is fine for slowing down password guessing; it is not a quota.

A cache that cannot be reached (Redis down): the limits that guard a secret or create accounts
fail closed, raising `RateLimitUnavailable` (a 503 saying why, `accounts.unavailable`): login
(the site's and the admin's), two-factor codes, the password change's current password, password
resets and registration (`FAIL_CLOSED`). Every other limit lets the request through, logged: an
upload, a withdrawal request or a deposit address is the signed-in user's own, bounded by the
outage, and refusing them would take the site down with its cache.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import time
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest

from config.cache import CacheUnavailable, incr_window
from docstore import get_clock

log = logging.getLogger(__name__)

TOO_MANY_ATTEMPTS = "Too many attempts; try again in a few minutes."
# Scopes refused while the cache cannot count them: they guard a secret or create accounts.
FAIL_CLOSED = frozenset(
    {
        "login-ip",
        "login-user",
        "otp-user",
        "password-change",
        "reset-ip",
        "reset-email",
        "register-ip",
    }
)


class RateLimitUnavailable(CacheUnavailable):
    """A fail-closed limit could not be counted: the request is refused (503), nothing done."""

    message = (
        "Signing in, registering and changing passwords are paused for a moment: the site "
        "cannot count attempts right now. Nothing was changed; please try again shortly."
    )


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# What login_allowed counted for this request, for login_succeeded to take back.
_COUNTED = "_login_throttle_keys"


def _key(scope: str, ident: str, window: int) -> str:
    """The cache key of `ident`'s counter in `scope` for the current window of the clock."""
    bucket = get_clock().now() // window
    # Hashed so any text (10 000 characters, spaces, unicode) makes a key every backend accepts.
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"ratelimit:{scope}:{bucket}:{digest}"


def _incr(key: str, window: int) -> int:
    # The key outlives its window a little, so a counter never expires between add and incr.
    return incr_window(key, window + 5)


def _unreachable(scope: str, exc: CacheUnavailable) -> None:
    """Fail closed (raise) for the scopes that must; the others are let through, logged."""
    if scope in FAIL_CLOSED:
        raise RateLimitUnavailable(str(exc)) from exc
    log.warning("rate limit %s not counted, cache unreachable: %s", scope, exc)


def hit(scope: str, ident: str, limit: int, window: int) -> bool:
    """Count one attempt by `ident` in `scope`; True while it is within `limit` per `window` s.

    The window is fixed (it starts at a multiple of `window` seconds of the injected clock), so
    tests move time instead of sleeping. Every call counts, including refused ones. With the
    cache unreachable: RateLimitUnavailable for FAIL_CLOSED scopes, True for the others.
    """
    try:
        return _incr(_key(scope, ident, window), window) <= limit
    except CacheUnavailable as exc:
        _unreachable(scope, exc)
        return True


def count(scope: str, ident: str, window: int) -> int:
    """How many times `ident` was counted in `scope` in the current window (nothing is counted)."""
    try:
        return int(cache.get(_key(scope, ident, window)) or 0)
    except CacheUnavailable as exc:
        _unreachable(scope, exc)
        return 0


# --- the client's address ---------------------------------------------------------------------


@functools.cache
def _trusted_proxies() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in settings.TRUSTED_PROXIES)


@receiver(setting_changed)
def _forget_proxies(setting: str, **kwargs) -> None:
    if setting == "TRUSTED_PROXIES":  # only tests change settings while a process runs
        _trusted_proxies.cache_clear()


def _parse_ip(text: str) -> IPAddress | None:
    # Pure, and asked for the same few addresses over and over (every beacon and click): kept,
    # for texts no longer than an address with its port (so the cache stays small).
    return _parse_short_ip(text) if len(text) <= 64 else _parse_any_ip(text)


def _parse_any_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_parse_short_ip = functools.lru_cache(maxsize=4096)(_parse_any_ip)


def _is_trusted(address: IPAddress | None) -> bool:
    return address is not None and any(address in net for net in _trusted_proxies())


def _ident(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_ip(request: HttpRequest) -> str:
    """The client the limits count: the peer, or behind trusted proxies the hop before them."""
    peer_text = request.META.get("REMOTE_ADDR") or ""
    peer = _parse_ip(peer_text)
    if peer is None:
        return peer_text or "unknown"
    if _is_trusted(peer):
        # Django joins repeated X-Forwarded-For headers with ",", as RFC 9110 allows.
        hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if address is None:
                # Garbage where a trusted proxy writes what it saw: the proxy is misconfigured;
                # count everything behind it as one client rather than trust the client's text.
                return _ident(peer)
            if not _is_trusted(address):
                return _ident(address)
            peer = address
    return _ident(peer)


# --- login --------------------------------------------------------------------------------------


def normalized_username(username: str) -> str:
    """The name as the login form and the backend see it: stripped, NFKC, case-folded."""
    return unicodedata.normalize("NFKC", username.strip()).casefold()


def login_allowed(request: HttpRequest, username: str) -> bool:
    """Call before checking a password. False: this client has used up its failures (answer 429
    without checking). True: the attempt is counted as a failure until `login_succeeded`."""
    limit, window = settings.LOGIN_RATE_LIMIT, settings.RATE_LIMIT_WINDOW_SECONDS
    client = client_ip(request)
    if count("login-ip", client, window) >= limit:
        return False
    keys = [_key("login-ip", client, window), _key("login-user", _user_ident(username), window)]
    try:
        for key in keys:
            _incr(key, window)
    except CacheUnavailable as exc:
        _unreachable("login-ip", exc)
    setattr(request, _COUNTED, keys)
    return True


def login_succeeded(request: HttpRequest) -> None:
    """The password was right: take back the failure `login_allowed` counted."""
    for key in getattr(request, _COUNTED, ()):
        try:
            cache.decr(key)
        except ValueError:  # expired or evicted meanwhile: nothing to take back
            pass
        except CacheUnavailable:  # gone since it counted: the failure stays counted
            log.warning("login success not taken back: cache unreachable")
    setattr(request, _COUNTED, ())


def login_failed(request: HttpRequest, username: str) -> None:
    """The password was wrong (already counted): past the username's failures, answer slowly."""
    limit, window = settings.LOGIN_RATE_LIMIT, settings.RATE_LIMIT_WINDOW_SECONDS
    if count("login-user", _user_ident(username), window) > limit:
        _pause(settings.LOGIN_FAILURE_DELAY_SECONDS)


def _user_ident(username: str) -> str:
    return normalized_username(username)


def _pause(seconds: float) -> None:
    # The one real sleep: the delay is the point. Tests replace it and never wait.
    if seconds > 0:
        time.sleep(seconds)


def register_allowed(request: HttpRequest) -> bool:
    """One registration attempt (valid or not), counted per client address."""
    return hit(
        "register-ip",
        client_ip(request),
        settings.REGISTER_RATE_LIMIT,
        settings.RATE_LIMIT_WINDOW_SECONDS,
    )
