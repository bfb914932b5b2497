"""One WSGI application, several Django handlers: each request goes through only the middleware
its view needs.

Pages need sessions, authentication, CSRF and messages; the live-ad API, the embeds, the images
(and the click redirect and impression beacon, at `/c/` and `/i/`) need none of them, and they are
most of the traffic: a seller's site asks for its ad on every page view. So `application` looks at
the path first and hands a serving request to a slim handler:

- the **full** handler: `settings.MIDDLEWARE` and `ROOT_URLCONF`, for everything else. The test
  client uses this one (Django builds its own from the same settings), and its URLconf still
  routes every serving URL, so both handlers answer a serving URL with the same view.
- the **serving** handler: `settings.MIDDLEWARE` minus `PAGE_ONLY_MIDDLEWARE` (same order), and
  only the patterns of `adspace.serving_urls`. Everything else stays, so every security and
  caching header a serving answer carries (HSTS, nosniff, Referrer-Policy, COOP, CSP,
  X-Frame-Options, Cache-Control on signed-in requests, Content-Length) is the full stack's by
  construction; a middleware added to the settings later applies here too unless it is listed
  as page-only.
- the **bare** handler (`BENCH_FLOOR=true` only): SecurityMiddleware and CommonMiddleware and
  one trivial view at `/bench/bare`, the framework floor `make bench` measures against.

A path is given to a slim handler only when it starts with one of the handler's prefixes *and*
the handler's own patterns match it; anything else (a malformed embed path, a page) goes to the
full handler, so its 404 page and APPEND_SLASH redirect are exactly what they were. Views served
here must not use `request.session`, `request.user` or messages, nor rely on CSRF checks.

Dispatch reads PATH_INFO, which the server has already stripped of SCRIPT_NAME, the same path
Django routes on; links are still reversed against `ROOT_URLCONF` under the request's script
prefix, since the slim handlers only resolve against their own patterns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler, get_path_info, get_script_name
from django.urls import Resolver404, ResolverMatch, URLResolver, get_resolver, set_script_prefix
from django.urls.resolvers import RegexPattern

SERVING_PREFIXES = ("/api/", "/embed/", "/embed.js", "/img/", "/c/", "/i/")
SERVING_URLCONF = "adspace.serving_urls"
# What only pages use: sessions (and the signed-in user), CSRF tokens, flash messages, and the
# static files (`/static/` is never a serving path).
PAGE_ONLY_MIDDLEWARE = frozenset(
    {
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    }
)

BARE_PREFIXES = ("/bench/bare",)
BARE_URLCONF = "bench.bare_urls"
BARE_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
)

# Where PathDispatch leaves the match it found for the slim handler it chose, so that handler
# does not resolve the same path again (a WSGI environ key, like a server's own extensions).
MATCH_KEY = "adspace.resolver_match"

# Django reads the middleware list from settings inside load_middleware; it is swapped for the
# slim handler's own list only while one is built (at start-up), one build at a time.
_building = threading.Lock()


def serving_middleware() -> list[str]:
    return [m for m in settings.MIDDLEWARE if m not in PAGE_ONLY_MIDDLEWARE]


_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def _literal_start(pattern) -> str:
    """The text every path a URL pattern matches starts with (as far as is easy to tell)."""
    text = str(pattern.pattern)
    if isinstance(pattern.pattern, RegexPattern):
        text = text.removeprefix("^")
        end = next((i for i, c in enumerate(text) if c in _REGEX_SPECIAL), len(text))
    else:  # a route: literal up to its first <converter>
        end = text.find("<") if "<" in text else len(text)
    return text[:end]


def _resolvers_by_prefix(resolver: URLResolver, prefixes: Sequence[str]):
    """(prefix, resolver of only the patterns that can match a path starting with it), so a
    path is tried against its own few patterns rather than all of them. Each keeps the order of
    the whole list, so the first pattern that matches is the same one."""
    found = []
    for prefix in prefixes:
        head = prefix.removeprefix("/")
        patterns = [
            p
            for p in resolver.url_patterns
            if (start := _literal_start(p)).startswith(head) or head.startswith(start)
        ]
        found.append((prefix, URLResolver(RegexPattern(r"^/"), patterns)))
    return tuple(found)


MATCH_CACHE_SIZE = 4096
_NO_MATCH = object()


class SlimHandler(WSGIHandler):
    """A WSGI handler with its own middleware list that resolves only its own URL patterns
    (with `prefixes`, only those a path's prefix can match)."""

    def __init__(
        self,
        middleware: Iterable[str],
        urlconf: str,
        prefixes: Sequence[str] = (),
        request_signals: bool = True,
        remember_matches: bool = False,
    ):
        self.middleware = list(middleware)
        self.urlconf = urlconf
        self.resolver = get_resolver(urlconf)
        self._by_prefix = _resolvers_by_prefix(self.resolver, prefixes)
        self.request_signals = request_signals
        # path -> its ResolverMatch, or _NO_MATCH. Resolving builds two ResolverMatch objects (~15
        # us, as much as the view's store read); a seller's site asks for the same few paths
        # again and again. Bounded: emptied when full, so a flood of distinct paths costs only
        # the resolving it would have cost anyway. A match is only read after it is made.
        self._matches: dict[str, object] | None = {} if remember_matches else None
        super().__init__()

    def __call__(self, environ, start_response):
        """WSGIHandler's, without `request_started`/`request_finished` when `request_signals` is
        off. Their receivers close the ORM's connections and the caches' clients after each
        request (~30 us a request here, a fifth of a serving answer): serving views never open an
        ORM connection, and the cache clients they use (rate limits) are simply kept, as a pool
        keeps them. A streaming or file answer takes Django's own path (and its signal)."""
        if self.request_signals:
            return super().__call__(environ, start_response)
        set_script_prefix(get_script_name(environ))
        response = self.get_response(self.request_class(environ))
        response._handler_class = self.__class__
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [
                *response.items(),
                *(("Set-Cookie", c.output(header="")) for c in response.cookies.values()),
            ],
        )
        if response.streaming:
            return response  # the server closes it: Django's close, signal and all
        content = response.content
        # What HttpResponse.close does, but the signal: get_response registers request.close
        # (it closes uploaded files) and a response may hold resources of its own.
        for closer in response._resource_closers:
            closer()
        response._resource_closers.clear()
        return [content]

    def _resolver_for(self, path: str) -> URLResolver:
        for prefix, resolver in self._by_prefix:
            if path.startswith(prefix):
                return resolver
        return self.resolver

    def load_middleware(self, is_async: bool = False) -> None:
        with _building:
            full = settings.MIDDLEWARE
            settings.MIDDLEWARE = self.middleware
            try:
                super().load_middleware(is_async)
            finally:
                settings.MIDDLEWARE = full

    def match(self, path: str) -> ResolverMatch | None:
        matches = self._matches
        found = None if matches is None else matches.get(path)
        if found is None:
            try:
                found = self._resolver_for(path).resolve(path)
            except Resolver404:
                found = _NO_MATCH
            if matches is not None:
                if len(matches) >= MATCH_CACHE_SIZE:
                    matches.clear()
                matches[path] = found
        return None if found is _NO_MATCH else found

    def resolve_request(self, request):
        # Not request.urlconf: that would also make reverse() and the error pages use these
        # few patterns, and the views link to pages (the campaign a placeholder advertises).
        found = request.META.pop(MATCH_KEY, None)
        if found is not None and found[0] is self:
            match = found[1]
        else:  # called without PathDispatch (or it chose another handler)
            match = self._resolver_for(request.path_info).resolve(request.path_info)
        request.resolver_match = match
        return match


class PathDispatch:
    """The WSGI application: the first route whose prefix and patterns match, else `full`."""

    def __init__(self, full: WSGIHandler, routes: Sequence[tuple[tuple[str, ...], SlimHandler]]):
        self.full = full
        self.routes = list(routes)

    def handler_for(self, environ: dict) -> Callable:
        path = get_path_info(environ) or "/"
        for prefixes, handler in self.routes:
            if path.startswith(prefixes):
                match = handler.match(path)
                if match is not None:
                    # The path the handler routes on is this one (WSGIRequest.path_info).
                    environ[MATCH_KEY] = (handler, match)
                    return handler
        return self.full

    def __call__(self, environ, start_response):
        return self.handler_for(environ)(environ, start_response)


def build_application(serving_urlconf: str = SERVING_URLCONF) -> PathDispatch:
    """The site's WSGI application (Django must be set up). Reads the settings once, now."""
    serving = SlimHandler(
        serving_middleware(),
        serving_urlconf,
        SERVING_PREFIXES,
        request_signals=False,
        remember_matches=True,
    )
    routes = [(SERVING_PREFIXES, serving)]
    if settings.BENCH_FLOOR:
        routes.append((BARE_PREFIXES, SlimHandler(BARE_MIDDLEWARE, BARE_URLCONF, BARE_PREFIXES)))
    return PathDispatch(WSGIHandler(), routes)
