"""Shared fixtures: a fresh docstore and a fixed clock for every test, and named actors.

The embedded backend is the default; `TEST_DOCSTORE_BACKEND=couchbase` (with COUCHBASE_CONNSTR)
runs the whole suite on Couchbase, each test under its own DOCSTORE_PREFIX.
"""

from __future__ import annotations

import collections
import itertools
import os

import pytest
from django.core.cache import cache

import docstore
from accounts.gateway import ensure_account
from adspace import delivery, serving, stats
from docstore import FixedClock
from tests.teststore import BACKEND, ON_COUCHBASE, make_test_store, open_store, store_config

pytest_plugins = ["tests.regtest", "tests.delivery_helpers", "tests.services"]

T0 = 1_700_000_000
PASSWORD = "correct-horse-battery-9"
# The TOTP secret of staff users made by `make_user` (pyotp.TOTP(...).at(clock.now()) is a code).
STAFF_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture(autouse=True)
def store(tmp_path):
    s = make_test_store(tmp_path)
    docstore.set_store(s)
    yield s
    docstore.set_store(None)
    s.close()


@pytest.fixture(autouse=True)
def clock():
    c = FixedClock(T0)
    docstore.set_clock(c)
    yield c
    docstore.set_clock(None)


@pytest.fixture(autouse=True)
def _clear_cache():
    """Django's cache, each process's live-ad caches, and its delivery counts and per-client
    allowances not yet written start and end every test empty."""
    _forget_process_state()
    yield
    _forget_process_state()


def _forget_process_state():
    cache.clear()
    serving.clear_cache()
    stats.recorder.discard()
    delivery.budget.clear()


@pytest.fixture
def make_user(db, store, clock):
    """Create an ORM user and their account document."""
    from accounts.models import User

    def make(username: str, balance: int = 0, staff: bool = False):
        user = User.objects.create_user(username=username, password=PASSWORD)
        if staff:
            # Staff reach the admin only with two-factor authentication on (accounts/admin.py).
            user.is_staff = user.is_superuser = True
            user.totp_secret = STAFF_TOTP_SECRET
            user.save()
        ensure_account(store, clock, username)
        if balance:
            from accounts.adjust import adjust_balance

            adjust_balance(store, clock, username, balance, "test funding")
        return user

    return make


@pytest.fixture
def seller(make_user):
    return make_user("seller")


@pytest.fixture
def buyer(make_user):
    return make_user("buyer", balance=10_000_000)


@pytest.fixture
def outsider(make_user):
    return make_user("outsider")


@pytest.fixture
def staff(make_user):
    return make_user("staffer", staff=True)


def pytest_addoption(parser):
    parser.addoption(
        "--seeds",
        type=int,
        default=None,
        help="swarm seeds per swarm test (default: each test's own share of 20 000+ per run)",
    )


@pytest.fixture
def swarm_seeds(request):
    """range of seeds for a swarm test: `--seeds N` overrides the test's default share."""

    def seeds(default: int) -> range:
        n = request.config.getoption("--seeds") or default
        return range(n)

    return seeds


@pytest.fixture
def make_world_store(tmp_path):
    """Factory of fresh, isolated stores for fault scenarios, one prefix per world on the suite's
    backend (real SQLite by default). Durability is relaxed: their subject is what a crash leaves
    in the documents, not the disk."""
    config, base = store_config(tmp_path, "worlds.sqlite3")
    if BACKEND == "memory":
        yield lambda: open_store(config, "")
        return
    config = {**config, "DURABILITY": "relaxed"}
    numbers = itertools.count()
    # Thousands of worlds a test: a paused greenlet can keep an old one alive until the cycle
    # collector runs, with its SQLite connection open. Close all but the newest few (a closed
    # store reopens if it is used again), so no run can exhaust the process's file descriptors.
    recent: collections.deque = collections.deque()

    def make():
        world = open_store(config, f"{base}w{next(numbers)}::")
        recent.append(world)
        if len(recent) > OPEN_WORLDS:
            recent.popleft().close()
        return world

    make.full_matrix = FULL_FAULT_MATRIX  # see tests/harness.py
    yield make
    while recent:
        recent.popleft().close()


OPEN_WORLDS = 64
# The fault runners' full products on the embedded store; on Couchbase every point still crashes,
# with the recovery's fault modes and the rival's stops rotated (tests/harness.py).
_MATRIX = os.environ.get("TEST_FAULT_MATRIX") or ("rotated" if ON_COUCHBASE else "full")
if _MATRIX not in ("full", "rotated"):
    raise ValueError(f"TEST_FAULT_MATRIX must be full or rotated, not {_MATRIX!r}")
FULL_FAULT_MATRIX = _MATRIX == "full"


@pytest.fixture
def empty_url_cache():
    """Links are cached per process by name, arguments and script prefix: start and end empty."""
    from django.urls import set_script_prefix

    from accounts.templatetags import cached_url

    cached_url._paths.clear()
    yield
    cached_url._paths.clear()
    set_script_prefix("/")
