"""The store cannot be reached: every page answers 503 with a clear message, never a traceback.

A view that can say something better catches `TemporaryFailure` itself (the buy, the API); this
is the net under all the others, including a cluster that is down when the process starts.

The same net holds an `Ambiguous` write that no view handles (a timeout on a network that lost the
packets: the write may have landed): 503 again, saying the change may or may not have been made.
Every protocol survives stopping at any point (DESIGN.md section 6), so ending the request here is
what a crash at that point would do, with an answer instead of a traceback.
"""

from __future__ import annotations

import logging

from django.http import JsonResponse
from django.shortcuts import render

from docstore import Ambiguous, TemporaryFailure

log = logging.getLogger(__name__)

MESSAGE = "The marketplace's data store cannot be reached right now. Nothing was changed; please try again in a moment."
AMBIGUOUS_MESSAGE = (
    "The marketplace's data store did not confirm a change in time, so it may or may not have "
    "been made. Reload the page to see where things stand before you try again."
)
RETRY_AFTER_SECONDS = "5"


class StoreUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, TemporaryFailure):
            message = MESSAGE
            log.warning("store unreachable on %s %s: %s", request.method, request.path, exception)
        elif isinstance(exception, Ambiguous):
            message = AMBIGUOUS_MESSAGE
            log.warning("outcome unknown on %s %s: %s", request.method, request.path, exception)
        else:
            return None
        if request.path_info.startswith("/api/"):
            response = JsonResponse({"error": "unavailable", "detail": message}, status=503)
        else:
            # own_balance=None: the header must not read the store that just failed.
            context = {"status": 503, "message": message, "own_balance": None}
            response = render(request, "adspace/error.html", context, status=503)
        response["Retry-After"] = RETRY_AFTER_SECONDS
        response["Cache-Control"] = "no-store"
        return response
