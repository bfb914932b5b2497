from django.conf import settings
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("adspace.serving_urls")),
    path("", include("adspace.urls")),
    path("", include("accounts.urls")),
    path("account/funds/", include("bitcoinkeys.urls")),
    path("account/withdraw/", include("bitcoinkeys.withdraw_urls")),
]

if settings.BENCH_FLOOR:
    from bench.floor import floor

    urlpatterns.append(path("bench/floor", floor))
