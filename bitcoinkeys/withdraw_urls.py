"""Mounted at `account/withdraw/` by config/urls.py."""

from __future__ import annotations

from django.urls import path

from . import withdraw_views

urlpatterns = [
    path("", withdraw_views.withdraw, name="withdraw"),
    path("<int:i>/cancel/", withdraw_views.cancel, name="withdraw_cancel"),
]
