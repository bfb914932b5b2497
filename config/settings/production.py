"""Production: every secret comes from the environment and has no default, so a missing one fails."""

import environ

from .base import *  # noqa: F403
from .base import env, env_bool

DEBUG = False
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
DATABASES = {"default": env.db("DATABASE_URL")}
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True

# Public links handed to other sites are built from it: no default, like the secrets above.
SITE_URL = env.str("SITE_URL").rstrip("/")
if not SITE_URL.startswith("https://"):
    raise environ.ImproperlyConfigured(f"SITE_URL must be an https:// address, not {SITE_URL!r}")
