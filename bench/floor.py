"""The framework floor: the cheapest Django view, served by the same gunicorn in the same run."""

from django.http import HttpResponse


def floor(request):
    return HttpResponse(b"ok", content_type="text/plain")
