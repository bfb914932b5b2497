"""Production: every secret comes from the environment (or .env) and has no default, so a
process started without one refuses to start. This is also what runs when
DJANGO_SETTINGS_MODULE is not set anywhere (config/environment.py)."""

import environ
from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import database_config, env, env_bool

MIN_SECRET_KEY_LENGTH = 50


def required(name: str) -> str:
    value = env.str(name, default="").strip()
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set. The production settings (used when DJANGO_SETTINGS_MODULE is "
            f"not set) have no default for it: set it in the environment or in .env (see "
            f"README, Configuration). For a development run, set "
            f"DJANGO_SETTINGS_MODULE=config.settings.dev."
        )
    return value


DEBUG = False
if env_bool("DEV_FAUCET", False):
    raise ImproperlyConfigured(
        "DEV_FAUCET is on: the developer faucet (test coins from a local regtest node) exists only "
        "in development runs. Unset DEV_FAUCET for production."
    )
DEV_FAUCET = False
SECRET_KEY = required("SECRET_KEY")
if len(SECRET_KEY) < MIN_SECRET_KEY_LENGTH or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured(
        f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} random characters, e.g. "
        f'python -c "import secrets; print(secrets.token_urlsafe(50))"'
    )
ALLOWED_HOSTS = [h.strip() for h in required("ALLOWED_HOSTS").split(",") if h.strip()]
DATABASES = {"default": database_config(required("DATABASE_URL"))}
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True

# Public links handed to other sites are built from it: no default, like the secrets above.
SITE_URL = required("SITE_URL").rstrip("/")
if not SITE_URL.startswith("https://"):
    raise environ.ImproperlyConfigured(f"SITE_URL must be an https:// address, not {SITE_URL!r}")
