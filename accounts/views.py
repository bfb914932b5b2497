from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render

from docstore import get_clock, get_store

from .heartbeat import read_beats

WORKER_NAMES = ["run_workers"]


def home(request):
    return render(request, "home.html")


def healthz(request):
    now = get_clock().now()
    beats = read_beats(get_store(), WORKER_NAMES)
    stale = [
        name
        for name, beat in beats.items()
        if beat is None or now - beat["at"] > settings.WORKER_STALE_SECONDS
    ]
    body = {
        "status": "stale" if stale else "ok",
        "now": now,
        "workers": {n: (b["at"] if b else None) for n, b in beats.items()},
        "stale": stale,
    }
    return JsonResponse(body, status=503 if stale else 200)
