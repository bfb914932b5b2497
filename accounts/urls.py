from django.contrib.auth.views import LogoutView
from django.urls import path

from . import apikey_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/register/", views.register, name="register"),
    path("accounts/login/", views.RateLimitedLoginView.as_view(), name="login"),
    # Django's LogoutView accepts POST only, so a link or an <img> elsewhere cannot log anyone out.
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("account/", views.account, name="account"),
    path("account/api-key/", apikey_views.api_key, name="api_key"),
]
