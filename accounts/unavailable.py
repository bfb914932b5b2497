"""The store cannot be reached: every page answers 503 with a clear message, never a traceback.

A view that can say something better catches `TemporaryFailure` itself (the buy, the API); this
is the net under all the others, including a cluster that is down when the process starts.
"""

from __future__ import annotations

import logging

from django.http import JsonResponse
from django.shortcuts import render

from docstore import TemporaryFailure

log = logging.getLogger(__name__)

MESSAGE = "The marketplace's data store cannot be reached right now. Nothing was changed; please try again in a moment."
RETRY_AFTER_SECONDS = "5"


class StoreUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, TemporaryFailure):
            return None
        log.warning("store unreachable on %s %s: %s", request.method, request.path, exception)
        if request.path_info.startswith("/api/"):
            response = JsonResponse({"error": "unavailable", "detail": MESSAGE}, status=503)
        else:
            # own_balance=None: the header must not read the store that just failed.
            context = {"status": 503, "message": MESSAGE, "own_balance": None}
            response = render(request, "adspace/error.html", context, status=503)
        response["Retry-After"] = RETRY_AFTER_SECONDS
        response["Cache-Control"] = "no-store"
        return response
