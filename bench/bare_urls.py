"""The bare floor's only URL (config/handlers.py serves it with two middleware when BENCH_FLOOR)."""

from django.urls import path

from bench.floor import floor

urlpatterns = [path("bench/bare", floor)]
