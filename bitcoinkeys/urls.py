"""The Add funds tab. Mounted at `account/funds/` by config/urls.py."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.add_funds, name="add_funds"),
    path("address/", views.get_address, name="get_deposit_address"),
    path("address/new/", views.new_address, name="new_deposit_address"),
    path("check/", views.check_now, name="check_deposits"),
    path("faucet/coins/", views.faucet_coins, name="faucet_coins"),
    path("faucet/block/", views.faucet_block, name="faucet_block"),
]
