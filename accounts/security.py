"""A strict Content-Security-Policy on every response, without 'unsafe-inline' for scripts.

Pages carry no inline scripts, styles or event handlers: all JS and CSS are static files. A view
that needs another policy sets its own header (the image view sandboxes images; the embed page
may be framed by any site), and this middleware leaves such a header alone.
"""

from __future__ import annotations

import functools

from django.http import HttpResponseNotAllowed

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


class AllowedMethodsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # The JSON API answers wrong methods itself, with a JSON body.
        if request.method not in ALLOWED_METHODS and not request.path.startswith("/api/"):
            return HttpResponseNotAllowed(ALLOWED_METHODS)
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            admin = request.path.startswith("/admin/")
            response["Content-Security-Policy"] = ADMIN_POLICY if admin else POLICY
        return response


def frameable(view):
    """The page may be framed by any site (the ad embed), under an otherwise strict policy."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = FRAMEABLE_POLICY
        return response

    return wrapped
