"""Test settings: fast hashing, locmem cache, quiet logs. The docstore is set per test by fixtures."""

import os

from .base import *  # noqa: F403
from .base import LOGGING, database_config, env

DEBUG = False
SECRET_KEY = "test-only-not-secret-" + "y" * 40
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# `make test-services` (tests/services.py) runs the cache, session and auth tests again on a real
# Redis and PostgreSQL: it sets these. Each pytest-xdist worker gets its own Redis database (the
# tests clear the cache; FLUSHDB clears one database) and pytest-django its own PostgreSQL one.
TEST_CACHE_URL = env.str("TEST_CACHE_URL", default="")
TEST_DATABASE_URL = env.str("TEST_DATABASE_URL", default="")
if TEST_CACHE_URL:
    _worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    CACHES = {
        "default": {
            "BACKEND": "config.cache.RedisCache",
            "LOCATION": f"{TEST_CACHE_URL.rstrip('/')}/{1 + int(_worker) % 15}",
        }
    }
if TEST_DATABASE_URL:
    DATABASES = {"default": database_config(TEST_DATABASE_URL)}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
LOGGING = {
    **LOGGING,
    "root": {"handlers": ["console"], "level": "WARNING"},
    # Recovery warnings fire thousands of times in the fault tests; they are asserted, not read.
    "loggers": {"accounts.money": {"level": "ERROR"}},
}
# Tests serve static files through the finders; there is no collected directory.
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True

# A small key pool: init_docstore stays fast; tests that need other shapes override these.
KEYPOOL_SETS = 10
KEYPOOL_PAGE_SIZE = 5
KEYPOOL_RANGES_PER_LIST_PAGE = 4

# Slow answers to failed logins are asserted through accounts.ratelimit._pause, never waited for.
LOGIN_FAILURE_DELAY_SECONDS = 0
SITE_URL = "http://testserver"

# No review window unless a test sets one: the money tests that predate review credit a sale at
# once, as REVIEW_HOURS=0 does in production; tests/test_review*.py set their own window.
REVIEW_HOURS = 0

# The webhook tests post to a receiver on 127.0.0.1.
WEBHOOK_ALLOW_LOOPBACK = True

# Delivery counts are flushed by the tests that read them (adspace.stats.flush), never by a
# thread writing into a store a later test has replaced.
STATS_FLUSH_SECONDS = 0
