from django.contrib.auth.views import LogoutView
from django.urls import path

from . import apikey_views, views
from . import security_views as sv

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/register/", views.register, name="register"),
    path("accounts/login/", views.RateLimitedLoginView.as_view(), name="login"),
    # Django's LogoutView accepts POST only, so a link or an <img> elsewhere cannot log anyone out.
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("account/", views.account, name="account"),
    path("account/api-key/", apikey_views.api_key, name="api_key"),
    path("accounts/login/code/", sv.login_code, name="login_code"),
    path("account/security/", sv.security, name="account_security"),
    path("account/password/", sv.PasswordChangeView.as_view(), name="password_change"),
    path("account/email/", sv.set_email, name="set_email"),
    path("account/notifications/", sv.set_notifications, name="set_notifications"),
    path("account/email/verify/<str:token>/", sv.verify_email, name="verify_email"),
    path("account/2fa/setup/", sv.twofactor_setup, name="twofactor_setup"),
    path("account/2fa/disable/", sv.twofactor_disable, name="twofactor_disable"),
    path("accounts/password-reset/", sv.PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/password-reset/sent/",
        sv.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        sv.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        sv.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
]
