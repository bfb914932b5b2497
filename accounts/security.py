"""A strict Content-Security-Policy on every response, without 'unsafe-inline' for scripts.

Pages carry no inline scripts, styles or event handlers: all JS and CSS are static files. A view
that needs another policy sets its own header (the image view sandboxes images; the embed page
may be framed by any site), and this middleware leaves such a header alone.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.http import HttpResponse, HttpResponseNotAllowed

# The site's pages and API use only these; anything else is refused before a view runs, so no
# view can mistake a PUT for a GET (or, like Django's form views, for a POST).
ALLOWED_METHODS = ("GET", "HEAD", "POST", "OPTIONS")

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Django's own admin templates still use a few inline style attributes; scripts stay strict there.
ADMIN_POLICY = POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
FRAMEABLE_POLICY = POLICY.replace("frame-ancestors 'none'", "frame-ancestors *")


class SiteSecurityMiddleware:
    """The site's own request and response rules, in one middleware layer (each layer costs a
    serving answer about 1.5 us, a few percent of it; two more were folded in here, which made
    the API ~2 % faster against the bare floor):

    - **Methods.** Only ALLOWED_METHODS reach a view: anything else is a 405 before a view runs,
      so no view can mistake a PUT for a GET (or, like Django's form views, for a POST). The JSON
      API answers wrong methods itself, with a JSON body.
    - **Request bodies.** A declared body larger than MAX_REQUEST_BODY_BYTES is a 413 before
      anything reads it; a view marked with `accepts_body_up_to` (the ad upload) allows its own
      larger limit. Checked in process_view, which runs before CsrfViewMiddleware's (listed
      after this one) parses a POST body. A Content-Length that is not a number is a 400. Bodies
      without a length (chunked) are never read by Django.
    - **Content-Security-Policy** on every answer that has none (see `frameable`).
    - **X-Frame-Options** (`settings.X_FRAME_OPTIONS`) on every answer that has none and is not
      marked `xframe_options_exempt`: what Django's XFrameOptionsMiddleware does, here rather
      than as a layer of its own (check `security.W002`, which looks for that class by name, is
      silenced in the settings for this reason).
    - **Services down.** A view's TemporaryFailure, Ambiguous write, unreachable ORM database or
      shared cache becomes a clear 503 (accounts.unavailable), never a traceback.
    - **Private pages.** `Cache-Control: private, no-store` on every answer to a request that
      carries a session cookie (everyone signed in; checking the cookie costs no session read):
      a signed-in page (a balance, an API key, a deposit address) must never be kept by a shared
      cache or left in the browser's cache for the next user of the machine. A view that sets
      its own Cache-Control (images, the API, the embeds: all the same for everyone) keeps it,
      as do static files (WhiteNoise, listed after this, always sets one).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method not in ALLOWED_METHODS and not request.path_info.startswith("/api/"):
            response = HttpResponseNotAllowed(ALLOWED_METHODS)
        else:
            response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            admin = request.path_info.startswith("/admin/")
            response["Content-Security-Policy"] = ADMIN_POLICY if admin else POLICY
        if "X-Frame-Options" not in response and not getattr(
            response, "xframe_options_exempt", False
        ):
            response["X-Frame-Options"] = settings.X_FRAME_OPTIONS
        if "Cache-Control" not in response and settings.SESSION_COOKIE_NAME in request.COOKIES:
            response["Cache-Control"] = "private, no-store"
        return response

    def process_exception(self, request, exception):
        # Imported here: accounts.unavailable reaches the cache and docstore modules, which the
        # settings-time import of this middleware must not pull in.
        from accounts.unavailable import answer_unavailable

        return answer_unavailable(request, exception)

    def process_view(self, request, view_func, view_args, view_kwargs):
        declared = request.META.get("CONTENT_LENGTH") or "0"
        if not declared.isascii() or not declared.isdigit():
            return _plain(400, "The Content-Length header is not a number.")
        limit = getattr(view_func, "max_body_bytes", settings.MAX_REQUEST_BODY_BYTES)
        if int(declared) > limit:
            if limit >= 1024 * 1024:
                return _plain(413, f"The upload is too large: at most {limit // 1048576} MB.")
            return _plain(413, f"The request is too large: at most {limit // 1024} KB.")
        return None


def frameable(view):
    """The page may be framed by any site (the ad embed), under an otherwise strict policy."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = FRAMEABLE_POLICY
        return response

    return wrapped


def accepts_body_up_to(limit: int):
    """Let this view take a request body of up to `limit` bytes (see SiteSecurityMiddleware)."""

    def mark(view):
        view.max_body_bytes = limit
        return view

    return mark


def _plain(status: int, message: str) -> HttpResponse:
    response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response
