"""The framework floors: the cheapest Django view, served by the same gunicorn in the same run.

`/bench/floor` goes through every middleware the pages use (config/urls.py); `/bench/bare` through
SecurityMiddleware and CommonMiddleware only (bench/bare_urls.py, config/handlers.py).
"""

from django.http import HttpResponse


def floor(request):
    return HttpResponse(b"ok", content_type="text/plain")
