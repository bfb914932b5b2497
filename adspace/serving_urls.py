"""URLs of the live-ad API, the embeds and the ad images: what sellers' sites ask for on every view.

Included at the site root by config/urls.py, and also the whole URLconf of the slim serving
handler (config/handlers.py), which runs without sessions, authentication, CSRF or messages: a
view here must not use any of them, and its path must start with one of
config.handlers.SERVING_PREFIXES (`/api/`, `/embed/`, `/embed.js`, `/img/`, `/c/`, `/i/`).
"""

from __future__ import annotations

from django.urls import path, re_path

from . import api, delivery_views, live, views

urlpatterns = [
    # Path parts are matched loosely and checked in the view, so every malformed one gets the
    # API's JSON 404 rather than Django's HTML page.
    path("api/v1/ads/<str:user>/<str:n>/current", api.current_ad, name="ad_api_current"),
    path("api/v1/stats/<str:user>/<str:n>", api.campaign_stats, name="stats_api"),
    path("api/v1/campaigns/<str:user>/<str:n>/live", live.campaign_live, name="campaign_live"),
    re_path(r"^api/(?P<rest>.*)$", api.api_not_found, name="api_not_found"),
    # The size before the page: "<n>.json" would otherwise be read as the index "0.json".
    re_path(r"^embed/(?P<user>[^/]+)/(?P<n>[^/]+)\.json$", api.embed_size, name="embed_size"),
    re_path(r"^embed/(?P<user>[^/]+)/(?P<n>[^/]+)$", api.embed, name="embed"),
    path("embed.js", api.embed_js, name="embed_js"),
    re_path(r"^img/(?P<sha256>[0-9a-f]{64})\.(?P<ext>png|jpg|gif)$", views.image, name="image"),
    # Any text after the prefix reaches the view, so every malformed token gets its 404.
    re_path(r"^c/(?P<token>.*)$", delivery_views.click, name="click"),
    re_path(r"^i/(?P<token>.*)$", delivery_views.impression, name="impression"),
]
