"""Settings shared by every environment. Values come from the environment (or `.env` when present)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import environ

from config.environment import read_env_file

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# manage.py and wsgi read it already; this covers anything else that loads settings (pytest).
read_env_file()


def env_bool(name: str, default: bool) -> bool:
    """Strict booleans: only true/false/1/0 are accepted, so `DEBUG=yes` fails loudly."""
    raw = env.str(name, default="")
    if raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise environ.ImproperlyConfigured(f"{name} must be true, false, 1 or 0, not {raw!r}")


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
SITE_NAME = env.str("SITE_NAME", default="Ad Space Market")
# The site's public address ("https://ads.example.com"): absolute links given to other sites
# (embed snippets, the embed's placeholder, the API's image and campaign links) are built from
# it, never from the request's Host header, whose port and name a client chooses.
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")
if not re.fullmatch(r"https?://[^/?#\s]+", SITE_URL):
    raise environ.ImproperlyConfigured(
        f"SITE_URL must be an absolute http(s) address without a path, not {SITE_URL!r}"
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "docstore",
    "accounts",
    "adspace",
    "bitcoinkeys",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "accounts.security.SiteSecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        # The site's pages (jinja2/): compiled to Python, several times cheaper to render than
        # DTL. Anything not found there (the admin, which extends Django's own) is DTL's.
        "BACKEND": "django.template.backends.jinja2.Jinja2",
        "DIRS": [BASE_DIR / "jinja2"],
        "APP_DIRS": False,
        "OPTIONS": {
            "environment": "accounts.templating.environment",
            "context_processors": [
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.site",
            ],
        },
    },
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.site",
            ],
            # `{% url %}` answered from a per-process cache (see the module).
            "builtins": ["accounts.templatetags.cached_url"],
        },
    },
]


def database_config(url: str) -> dict:
    """DATABASE_URL as Django's setting. PostgreSQL (psycopg 3) gets a connect timeout (libpq
    waits forever by default, and a request needing a user would hang instead of answering
    503) and keeps its connections between requests (a connect costs a few ms), checked before
    reuse so a restarted server costs one reconnect; the URL's own query overrides both."""
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.postgresql":
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
        if "conn_max_age" not in url.lower():
            config["CONN_MAX_AGE"] = 60
        config.setdefault("CONN_HEALTH_CHECKS", True)
    return config


DATABASES = {
    "default": database_config(
        env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    # A file cache is shared by every gunicorn worker on the machine, so rate limits hold across
    # them; several web nodes share one Redis (`CACHE_URL=redis://...`).
    "default": env.cache("CACHE_URL", default=f"filecache://{BASE_DIR / 'var' / 'cache'}"),
}
_CACHE_BACKENDS = {
    # Culled without evicting live entries (rate-limit counters among them): see config/cache.py.
    "django.core.cache.backends.filebased.FileBasedCache": "config.cache.FileCache",
    # Django's own Redis cache (redis-py), failing fast and counting atomically: config/cache.py.
    # Also when django-environ would pick django-redis because it happens to be installed.
    "django.core.cache.backends.redis.RedisCache": "config.cache.RedisCache",
    "django_redis.cache.RedisCache": "config.cache.RedisCache",
}
CACHES["default"]["BACKEND"] = _CACHE_BACKENDS.get(
    CACHES["default"]["BACKEND"], CACHES["default"]["BACKEND"]
)
if CACHES["default"]["BACKEND"] == "config.cache.FileCache":
    CACHES["default"].setdefault("OPTIONS", {}).setdefault(
        "MAX_ENTRIES", env.int("CACHE_MAX_ENTRIES", default=100_000)
    )
if CACHES["default"]["BACKEND"] == "config.cache.RedisCache":
    # django-environ upper-cases query options for django-redis; Django's client wants redis-py's.
    CACHES["default"]["OPTIONS"] = {
        k.lower(): v for k, v in CACHES["default"].get("OPTIONS", {}).items()
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Usernames log in in any case ("Bob" == "bob"); see accounts/auth_backends.py.
AUTHENTICATION_BACKENDS = ["accounts.auth_backends.CaseInsensitiveModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "account"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "config.storage.StaticStorage"},
}

# Every request body is capped from its declared length before anything reads it
# (accounts.security.SiteSecurityMiddleware); the ad upload's view allows its image (2 MB).
MAX_REQUEST_BODY_BYTES = env.int("MAX_REQUEST_BODY_BYTES", default=64 * 1024)
# Form fields (everything but files) are held in memory: no form here needs more.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
# Uploads are read into memory and checked before anything is stored; keep the ceiling explicit.
FILE_UPLOAD_MAX_MEMORY_SIZE = 3 * 1024 * 1024

# --- docstore (DESIGN.md section 3) ---
DOCSTORE = {
    "BACKEND": env.str("DOCSTORE_BACKEND", default="embedded"),
    "PATH": env.str("DOCSTORE_PATH", default=str(BASE_DIR / "var" / "docstore.sqlite3")),
    "PREFIX": env.str("DOCSTORE_PREFIX", default=""),
    "DURABILITY": env.str("DOCSTORE_DURABILITY", default="durable"),
    "COUCHBASE_CONNSTR": env.str("COUCHBASE_CONNSTR", default=""),
    "COUCHBASE_BUCKET": env.str("COUCHBASE_BUCKET", default="adspace"),
    "COUCHBASE_SCOPE": env.str("COUCHBASE_SCOPE", default="_default"),
    "COUCHBASE_COLLECTION": env.str("COUCHBASE_COLLECTION", default="_default"),
    "COUCHBASE_USERNAME": env.str("COUCHBASE_USERNAME", default=""),
    "COUCHBASE_PASSWORD": env.str("COUCHBASE_PASSWORD", default=""),
    "COUCHBASE_DURABILITY": env.str("COUCHBASE_DURABILITY", default="majority"),
    "COUCHBASE_CONNECT_TIMEOUT": env.float("COUCHBASE_CONNECT_TIMEOUT", default=10.0),
}

# --- money (DESIGN.md section 5), all in satoshis ---
LOCK_LEASE_SECONDS = env.int("LOCK_LEASE_SECONDS", default=30)
SALE_FEE_PERMILLE = env.int("SALE_FEE_PERMILLE", default=15)
# How long a seller may reject a sold ad (capped at the slot's end); sales are credited after it.
REVIEW_HOURS = env.int("REVIEW_HOURS", default=24)
if REVIEW_HOURS < 0:
    raise environ.ImproperlyConfigured(f"REVIEW_HOURS must be 0 or more, not {REVIEW_HOURS}")
WITHDRAW_FEE_PERMILLE = env.int("WITHDRAW_FEE_PERMILLE", default=15)
MIN_CAMPAIGN_PRICE_SATS = env.int("MIN_CAMPAIGN_PRICE_SATS", default=300_000)
MIN_DEPOSIT_SATS = env.int("MIN_DEPOSIT_SATS", default=300_000)
MIN_WITHDRAWAL_SATS = env.int("MIN_WITHDRAWAL_SATS", default=3_000_000)
WORKER_STALE_SECONDS = env.int("WORKER_STALE_SECONDS", default=60)
WORKER_INTERVAL_SECONDS = env.float("WORKER_INTERVAL_SECONDS", default=1.0)
# Recovery walks every account and campaign; it only has work after a crash (and requests finish
# expired locks they meet), so the worker runs it this often, and on its first pass.
RECOVERY_INTERVAL_SECONDS = env.float("RECOVERY_INTERVAL_SECONDS", default=10.0)
if not (RECOVERY_INTERVAL_SECONDS > 0 and RECOVERY_INTERVAL_SECONDS >= WORKER_INTERVAL_SECONDS):
    # Below the worker's pause it would silently mean "every pass"; 0 or negative is a typo.
    raise environ.ImproperlyConfigured(
        f"RECOVERY_INTERVAL_SECONDS ({RECOVERY_INTERVAL_SECONDS:g}) must be positive and at least "
        f"WORKER_INTERVAL_SECONDS ({WORKER_INTERVAL_SECONDS:g})"
    )
# Sellers the creditor credits at once: their durable writes share commits (1 = one at a time).
CREDITOR_THREADS = env.int("CREDITOR_THREADS", default=4)
if CREDITOR_THREADS < 1:
    raise environ.ImproperlyConfigured(
        f"CREDITOR_THREADS must be at least 1, not {CREDITOR_THREADS}"
    )

# How long an admin's adjust confirmation page may be submitted (its token is signed and dated).
ADJUST_CONFIRM_SECONDS = env.int("ADJUST_CONFIRM_SECONDS", default=600)

# Rate limits: attempts per window, per client (and per username for login).
LOGIN_RATE_LIMIT = env.int("LOGIN_RATE_LIMIT", default=10)
REGISTER_RATE_LIMIT = env.int("REGISTER_RATE_LIMIT", default=5)
RATE_LIMIT_WINDOW_SECONDS = env.int("RATE_LIMIT_WINDOW_SECONDS", default=300)
# Reverse proxies (addresses or networks) whose X-Forwarded-For names the client; the rate limits
# count that client instead of the proxy. Empty: the connection's address is the client.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise environ.ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network"
        ) from None
# A wrong password for a username past its failures is answered after this pause (never refused).
LOGIN_FAILURE_DELAY_SECONDS = env.float("LOGIN_FAILURE_DELAY_SECONDS", default=1.0)
# Two-factor and password-reset attempts per window (per user for codes; per client and per
# address for resets); confirmation emails a user may ask for per hour.
OTP_RATE_LIMIT = env.int("OTP_RATE_LIMIT", default=5)
PASSWORD_RESET_RATE_LIMIT = env.int("PASSWORD_RESET_RATE_LIMIT", default=5)
EMAIL_RATE_LIMIT = env.int("EMAIL_RATE_LIMIT", default=5)
# Seconds a right password waits for its two-factor code before the login starts over.
OTP_LOGIN_SECONDS = env.int("OTP_LOGIN_SECONDS", default=300)
# How long a password-reset link and an email-confirmation link work.
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)
EMAIL_VERIFY_SECONDS = env.int("EMAIL_VERIFY_SECONDS", default=3 * 24 * 3600)

# Email: the console backend (messages printed to the web process's stdout) unless EMAIL_URL
# names a server, e.g. smtp+tls://user:password@smtp.example.com:587.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="webmaster@localhost")
# Seconds an SMTP connection may take: the worker sends notices between its money tasks, so a
# dead mail server must not hold them up (Django's default is to wait forever).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
# "Your ad is about to start" goes out this many minutes before a queued slot starts.
SLOT_START_NOTICE_MINUTES = env.int("SLOT_START_NOTICE_MINUTES", default=10)
if SLOT_START_NOTICE_MINUTES < 1:
    raise environ.ImproperlyConfigured("SLOT_START_NOTICE_MINUTES must be at least 1")

# Seller webhooks (adspace/webhooks.py): only https URLs resolving to public addresses are
# delivered to. True lets http://127.0.0.1 (and ::1) through, for tests and local development.
WEBHOOK_ALLOW_LOOPBACK = env.bool("WEBHOOK_ALLOW_LOOPBACK", default=False)

# Per user and hour: deposit addresses dealt (each burns a key) and withdrawal requests.
ADDRESS_RATE_LIMIT = env.int("ADDRESS_RATE_LIMIT", default=10)
WITHDRAW_RATE_LIMIT = env.int("WITHDRAW_RATE_LIMIT", default=20)
# Ad uploads (valid or not) a user may send per hour: each is decoded, the costly part.
UPLOAD_RATE_LIMIT = env.int("UPLOAD_RATE_LIMIT", default=30)
# Per user: campaigns, ads, and the bytes of their ads' stored images.
MAX_CAMPAIGNS_PER_USER = env.int("MAX_CAMPAIGNS_PER_USER", default=100)
MAX_ADS_PER_USER = env.int("MAX_ADS_PER_USER", default=200)
MAX_IMAGE_BYTES_PER_USER = env.int("MAX_IMAGE_BYTES_PER_USER", default=50 * 1024 * 1024)
# Standing orders (adspace.orders): open orders per user, and how long the executor waits within
# a worker pass for the next order coming due (so it fills within ms of its second).
MAX_OPEN_ORDERS = env.int("MAX_OPEN_ORDERS", default=20)
ORDERS_WAIT_SECONDS = env.float("ORDERS_WAIT_SECONDS", default=1.0)
if MAX_OPEN_ORDERS < 1 or not 0 <= ORDERS_WAIT_SECONDS <= 10:
    raise environ.ImproperlyConfigured(
        "MAX_OPEN_ORDERS must be at least 1 and ORDERS_WAIT_SECONDS between 0 and 10"
    )
# Live-ad API answers per key, campaign and slot (the original allowed 50); 0 turns it off.
API_REQUESTS_PER_SLOT = env.int("API_REQUESTS_PER_SLOT", default=50)

# Delivery counts (adspace.stats): seconds between flushes of the in-process counts (a crash
# loses at most this much; 0, for tests only: written only when a test calls flush()), the
# counter calls a flush keeps in flight, and how many impressions and clicks of one slot one
# client (IP, or IPv6 /64) may add per hour in one server process before it is no longer counted.
STATS_FLUSH_SECONDS = env.float("STATS_FLUSH_SECONDS", default=5.0)
STATS_FLUSH_THREADS = env.int("STATS_FLUSH_THREADS", default=32)
STATS_IMPRESSIONS_PER_CLIENT = env.int("STATS_IMPRESSIONS_PER_CLIENT", default=120)
STATS_CLICKS_PER_CLIENT = env.int("STATS_CLICKS_PER_CLIENT", default=20)
for _name in ("STATS_FLUSH_THREADS", "STATS_IMPRESSIONS_PER_CLIENT", "STATS_CLICKS_PER_CLIENT"):
    if globals()[_name] < 1:
        raise environ.ImproperlyConfigured(f"{_name} must be 1 or more, not {globals()[_name]}")
if STATS_FLUSH_SECONDS < 0:
    raise environ.ImproperlyConfigured(
        f"STATS_FLUSH_SECONDS must be 0 or more, not {STATS_FLUSH_SECONDS}"
    )

# Sessions are read from the shared cache and written through to the database: a logged-in page
# skips one SQL query, and a cache that is lost or cleared only costs a database read.
# accounts/sessions.py: Django's cached_db that reads the database while the cache is down.
SESSION_ENGINE = "accounts.sessions"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# SiteSecurityMiddleware sets X-Frame-Options itself (one middleware layer fewer on every
# request); this check only looks for Django's XFrameOptionsMiddleware by name. The header on
# every answer is tested (tests/test_security_headers.py).
SILENCED_SYSTEM_CHECKS = ["security.W002"]
# Error reports and the debug page hide passwords inside URLs too (BITCOIND_URL, CACHE_URL...).
DEFAULT_EXCEPTION_REPORTER_FILTER = "accounts.error_reports.CredentialHidingFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_api_keys": {"()": "accounts.logfilters.RedactApiKeys"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_api_keys"],
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # runserver's request lines carry query strings (an API `?key=`): through the same filter.
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
AUTH_USER_MODEL = "accounts.User"

# --- bitcoin (DESIGN.md 6.3-6.5) ---
BITCOIN_NETWORK = env.str("BITCOIN_NETWORK", default="regtest")
CHAIN_BACKEND = env.str("CHAIN_BACKEND", default="none")
BITCOIND_URL = env.str("BITCOIND_URL", default="")
BITCOIND_WALLET = env.str("BITCOIND_WALLET", default="adspace-deposits")
BITCOIND_PAYOUT_WALLET = env.str("BITCOIND_PAYOUT_WALLET", default="adspace-payouts")
BITCOIND_TIMEOUT = env.int("BITCOIND_TIMEOUT", default=30)
# `make run`'s local regtest node (bitcoinkeys.local_chain): the developer faucet (only with DEBUG
# on a regtest bitcoind; production refuses to start with it) and the tpub deposit addresses are
# derived from.
DEV_FAUCET = env_bool("DEV_FAUCET", False)
LOCAL_CHAIN_XPUB = env.str("LOCAL_CHAIN_XPUB", default="")
DEPOSIT_CONFIRMATIONS = env.int("DEPOSIT_CONFIRMATIONS", default=1)
# The withdrawal processor's lease, renewed before each send: keep it well above BITCOIND_TIMEOUT.
WITHDRAW_PROCESSOR_LEASE_SECONDS = env.int("WITHDRAW_PROCESSOR_LEASE_SECONDS", default=120)
# A worker role's lease (run_workers: the deposit watcher's `lease::deposits`), renewed each pass and
# before any RPC with less than BITCOIND_TIMEOUT + 5 s left; a dead node's role moves after it.
WORKER_LEASE_SECONDS = env.int("WORKER_LEASE_SECONDS", default=90)
for _name in ("WORKER_LEASE_SECONDS", "WITHDRAW_PROCESSOR_LEASE_SECONDS"):
    if globals()[_name] < BITCOIND_TIMEOUT + 5:
        raise environ.ImproperlyConfigured(
            f"{_name} ({globals()[_name]}) must be at least BITCOIND_TIMEOUT + 5 "
            f"({BITCOIND_TIMEOUT + 5}): every RPC must fit in what is left of the lease"
        )
# Kept back from the payout wallet's balance for one batch's network fee: a pass pays only the
# queued requests that fit in balance - reserve, oldest first; the rest stay queued (an alert).
PAYOUT_FEE_RESERVE_SATS = env.int("PAYOUT_FEE_RESERVE_SATS", default=100_000)
# Key pool shape: production 1000 sets x 100 keys a page, huge-list pages of 100 ranges.
KEYPOOL_SETS = env.int("KEYPOOL_SETS", default=1000)
KEYPOOL_PAGE_SIZE = env.int("KEYPOOL_PAGE_SIZE", default=100)
KEYPOOL_RANGES_PER_LIST_PAGE = env.int("KEYPOOL_RANGES_PER_LIST_PAGE", default=100)

# Benchmarks only: serve the bare "floor" view at /bench/floor (make bench turns it on).
BENCH_FLOOR = env_bool("BENCH_FLOOR", False)
