from __future__ import annotations

from django.urls import path

from . import export_views, order_views, sales_views, views, webhook_views

urlpatterns = [
    path("ads/sell-ad-space/", views.sell, name="sell"),
    path("ads/buy-ad-space/", views.sellers, name="sellers"),
    # Names and indexes are matched loosely and checked in the view, so a malformed one gets
    # the same explanatory 404 page as a missing one.
    path("ads/buy-ad-space/<str:user>/", views.seller, name="seller"),
    path("ads/buy-ad-space/<str:user>/<str:n>", views.campaign, name="campaign"),
    path("ads/buy-ad-space/<str:user>/<str:n>/buy", views.buy_slot, name="buy"),
    path("ads/buy-ad-space/<str:user>/<str:n>/edit", views.edit_campaign, name="edit_campaign"),
    path("ads/buy-ad-space/<str:user>/<str:n>/pause", views.pause_campaign, name="pause_campaign"),
    path("ads/buy-ad-space/<str:user>/<str:n>/order", order_views.place, name="place_order"),
    path("account/purchases/", views.purchases, name="purchases"),
    path("account/orders/", order_views.order_list, name="orders"),
    path("account/orders/<str:index>/limit", order_views.edit, name="edit_order"),
    path("account/orders/<str:index>/cancel", order_views.cancel, name="cancel_order"),
    path("account/ads/<str:index>/archive", views.archive_ad, name="archive_ad"),
    path("account/ads/", views.my_ads, name="my_ads"),
    path("account/ads/new/", views.new_ad, name="new_ad"),
    path("account/sales/", sales_views.all_sales, name="sales"),
    path("account/webhook/", webhook_views.webhook, name="webhook"),
    path("account/export/ledger.csv", export_views.ledger_csv, name="export_ledger"),
    path("account/export/sales.csv", export_views.sales_csv, name="export_sales"),
    path("account/export/purchases.csv", export_views.purchases_csv, name="export_purchases"),
    path("account/export/statistics.csv", export_views.stats_csv, name="export_stats"),
    path("account/sales/<str:n>/", sales_views.campaign_sales, name="campaign_sales"),
    path("account/sales/<str:n>/review-mode", sales_views.review_mode, name="review_mode"),
    path("account/sales/<str:n>/<str:k>/<str:action>", sales_views.decide, name="decide_sale"),
]
