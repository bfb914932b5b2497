"""A service cannot be reached: every page answers 503 with a clear message, never a traceback.

- The docstore (`TemporaryFailure`): a view that can say something better catches it itself (the
  buy, the API); this is the net under all the others, including a cluster that is down when the
  process starts.
- The ORM database (PostgreSQL down: `OperationalError`, `InterfaceError`): the pages that need
  a user (or a sign-in, a registration) answer 503; pages that need none, and the API and embeds
  (on the slim handler, without sessions), keep serving.
- The shared cache (Redis down: `CacheUnavailable`, config/cache.py) where the change asked for
  cannot be done safely without it: a fail-closed rate limit (sign-in, registration, password
  and code checks), a user change that could not drop its cached copy, a sign-out that could not
  drop the session's. Everything else reads around the cache.
- An `Ambiguous` docstore write that no view handles (a timeout on a network that lost the
  packets: the write may have landed): 503 again, saying the change may or may not have been
  made. Every protocol survives stopping at any point (DESIGN.md section 6), so ending the request
  here is what a crash at that point would do, with an answer instead of a traceback.

The page is rendered without the request: its context processors would load the session and
the user again, from the service that just failed.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string

from accounts.ratelimit import RateLimitUnavailable
from config.cache import CacheUnavailable
from docstore import Ambiguous, TemporaryFailure

log = logging.getLogger(__name__)

MESSAGE = "The marketplace's data store cannot be reached right now. Nothing was changed; please try again in a moment."
DATABASE_MESSAGE = "Accounts cannot be reached right now, so signed-in pages are paused. Nothing was changed; please try again in a moment. Ads on other sites keep showing."
CACHE_MESSAGE = "This cannot be done safely right now: the shared cache cannot be reached. Nothing was changed; please try again in a moment."
AMBIGUOUS_MESSAGE = (
    "The marketplace's data store did not confirm a change in time, so it may or may not have "
    "been made. Reload the page to see where things stand before you try again."
)
RETRY_AFTER_SECONDS = "5"


def _message(exception: Exception) -> str | None:
    if isinstance(exception, TemporaryFailure):
        return MESSAGE
    if isinstance(exception, Ambiguous):
        return AMBIGUOUS_MESSAGE
    if isinstance(exception, RateLimitUnavailable):
        return RateLimitUnavailable.message
    if isinstance(exception, CacheUnavailable):
        return CACHE_MESSAGE
    if isinstance(exception, (OperationalError, InterfaceError)):
        return DATABASE_MESSAGE
    return None


def unavailable_response(request, message: str) -> HttpResponse:
    if request.path_info.startswith("/api/"):
        response = JsonResponse({"error": "unavailable", "detail": message}, status=503)
    else:
        # own_balance=None: the header must not read the store that just failed.
        context = {
            "status": 503,
            "message": message,
            "own_balance": None,
            "SITE_NAME": settings.SITE_NAME,
        }
        response = HttpResponse(render_to_string("adspace/error.html", context), status=503)
    response["Retry-After"] = RETRY_AFTER_SECONDS
    response["Cache-Control"] = "no-store"
    return response


def answer_unavailable(request, exception: Exception) -> HttpResponse | None:
    """The 503 for an exception a view raised because a service is down; None for any other
    (SiteSecurityMiddleware.process_exception: the net under every view)."""
    message = _message(exception)
    if message is None:
        return None
    log.warning(
        "%s unreachable on %s %s: %s",
        type(exception).__name__,
        request.method,
        request.path,
        exception,
    )
    return unavailable_response(request, message)
