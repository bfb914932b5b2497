"""Redis as the shared cache (CACHE_URL=redis://...): rate limits counted atomically by racing
threads on two cache clients, sessions and the user cache shared by two web nodes (a password
changed on one ends the user's other sessions on the other at once), and what the site does
while Redis is down. The servers are real: tests/services.py starts redis-server on loopback.

The existing login, registration, password, two-factor and user-cache tests run on Redis (and
PostgreSQL) too: `make test-services`."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.core.cache import cache, caches

from accounts import ratelimit
from accounts.auth_backends import UserCacheUnavailable, _user_cache_key
from accounts.models import User
from accounts.unavailable import CACHE_MESSAGE
from config.cache import CacheUnavailable, RedisCache, incr_window
from tests.conftest import PASSWORD
from tests.live_nodes import Browser, migrate, node_env, start_node
from tests.services import free_port
from tests.teststore import backend_only

pytestmark = backend_only(
    "embedded", "Redis is the cache, not the docstore; the embedded leg and make test-services"
)

NEW_PASSWORD = "a-new-long-password-42"


@pytest.fixture
def on_redis(settings, redis_server):
    """The site's cache is the session's Redis (database 0, emptied)."""
    settings.CACHES = {"default": {"BACKEND": "config.cache.RedisCache",
                                   "LOCATION": redis_server.url(0)}}  # fmt: skip
    cache.clear()
    yield caches["default"]


@pytest.fixture
def redis_down(settings):
    """The site's cache is a Redis that is not there (a closed loopback port)."""
    settings.CACHES = {"default": {"BACKEND": "config.cache.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}  # fmt: skip
    yield


# --- rate limits ---------------------------------------------------------------------------------


def test_racing_attempts_on_two_nodes_are_each_counted_once(on_redis, redis_server):
    # Two cache clients (two web nodes' connection pools) on one Redis, eight threads each.
    nodes = [on_redis, RedisCache(redis_server.url(0), {})]
    allowed = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def attempt(node):
        start.wait()
        for _ in range(25):
            within = incr_window("ratelimit:race", 300, cache=node) <= 100
            with lock:
                allowed.append(within)

    threads = [threading.Thread(target=attempt, args=(nodes[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(allowed) == 400
    assert allowed.count(True) == 100  # exactly the limit, never one more
    assert on_redis.get("ratelimit:race") == 400


def test_a_counter_is_created_with_its_expiry(on_redis):
    assert ratelimit.hit("login-ip", "198.51.100.9", 10, 300)
    key = on_redis.make_key(ratelimit._key("login-ip", "198.51.100.9", 300))
    raw = on_redis._cache.get_client(key)
    assert 300 < raw.ttl(key) <= 305


def test_the_login_throttle_holds_on_redis(client, on_redis, make_user):
    make_user("alice")
    for _ in range(settings.LOGIN_RATE_LIMIT):
        answer = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert answer.status_code == 200
    answer = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert answer.status_code == 429  # refused before the password is checked


# --- two nodes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes_env(tmp_path_factory, redis_server):
    """Nodes' environment: Redis database 0, one migrated SQLite ORM file, one docstore file."""
    tmp = tmp_path_factory.mktemp("nodes")
    env = node_env(tmp, f"sqlite:///{tmp / 'users.sqlite3'}", redis_server.url(0))
    migrate(env)
    return env


@pytest.fixture(scope="module")
def module_nodes(nodes_env):
    """Two gunicorn nodes sharing Redis, the ORM database and the docstore."""
    nodes = [start_node(nodes_env), start_node(nodes_env)]
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def two_nodes(module_nodes, on_redis):
    return module_nodes


def register(browser, node, username):
    answer = browser.post(f"{node.base}/accounts/register/",
                          {"username": username, "password1": PASSWORD, "password2": PASSWORD})  # fmt: skip
    assert answer.status == 302 and answer.location.endswith("/account/"), answer.text[:300]


def sign_in(browser, node, username, password=PASSWORD):
    answer = browser.post(f"{node.base}/accounts/login/",
                          {"username": username, "password": password})  # fmt: skip
    assert answer.status == 302, answer.text[:300]


def test_a_session_made_on_one_node_is_signed_in_on_the_other(two_nodes):
    a, b = two_nodes
    alice = Browser()
    register(alice, a, "dora")
    page = alice.get(f"{b.base}/account/")
    assert page.status == 200 and "dora" in page.text
    alice.post(f"{b.base}/accounts/logout/", {}, form_page=f"{b.base}/account/")
    assert alice.get(f"{a.base}/account/").status == 302  # signed out everywhere


def test_a_password_changed_on_one_node_ends_other_sessions_on_the_other_at_once(two_nodes):
    a, b = two_nodes
    laptop, phone = Browser(), Browser()
    register(laptop, a, "alice")
    sign_in(phone, b, "ALICE")
    # Node B has read alice (now in the shared cache) for the phone's session.
    assert phone.get(f"{b.base}/account/").status == 200
    cached = caches["default"]._cache.get_client(None).keys("*" + _user_cache_key("*"))
    assert len(cached) == 1

    changed = laptop.post(
        f"{a.base}/account/password/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert changed.status == 302
    # The very next request of the phone, on node B, is signed out.
    ended = phone.get(f"{b.base}/account/")
    assert ended.status == 302 and "/accounts/login/" in ended.location
    assert laptop.get(f"{b.base}/account/").status == 200  # the changing session is kept
    sign_in(Browser(), b, "alice", NEW_PASSWORD)


# --- Redis down ----------------------------------------------------------------------------------


@pytest.fixture
def signed_in(client, make_user):
    """alice, signed in while the cache worked (her session is in the database too)."""
    user = make_user("alice")
    client.force_login(user)
    return user


def test_signed_in_pages_keep_working_without_redis(client, signed_in, redis_down):
    page = client.get("/account/")
    assert page.status_code == 200 and "alice" in page.content.decode()


def test_login_and_registration_fail_closed_without_redis(client, make_user, redis_down):
    make_user("bob")
    for answer in (
        client.post("/accounts/login/", {"username": "bob", "password": PASSWORD}),
        client.post("/accounts/register/",
                    {"username": "carol", "password1": PASSWORD, "password2": PASSWORD}),
    ):  # fmt: skip
        assert answer.status_code == 503
        assert "cannot count attempts right now" in answer.content.decode()
        assert answer["Retry-After"] == "5"
    assert not User.objects.filter(username="carol").exists()
    assert User.objects.get(username="bob").last_login is None
    assert "_auth_user_id" not in client.session


def test_guarded_limits_fail_closed_and_the_others_open(redis_down):
    for scope in ratelimit.FAIL_CLOSED:
        with pytest.raises(ratelimit.RateLimitUnavailable):
            ratelimit.hit(scope, "x", 5, 300)
    for scope in ("upload", "withdraw", "address", "email-verify"):
        assert ratelimit.hit(scope, "x", 5, 300) is True


def test_a_password_change_is_refused_and_changes_nothing_without_redis(
    client, signed_in, redis_down
):
    answer = client.post(
        "/account/password/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert answer.status_code == 503
    signed_in.refresh_from_db()
    assert signed_in.check_password(PASSWORD)


def test_a_user_change_that_cannot_drop_its_cached_copy_is_refused(signed_in, redis_down):
    signed_in.is_active = False
    with pytest.raises(UserCacheUnavailable):
        signed_in.save()
    assert User.objects.get(pk=signed_in.pk).is_active


def test_sign_out_is_refused_rather_than_left_in_the_cache(client, signed_in, redis_down):
    answer = client.post("/accounts/logout/")
    assert answer.status_code == 503 and CACHE_MESSAGE in answer.content.decode()
    assert client.get("/account/").status_code == 200  # nothing changed: still signed in


def test_the_api_keeps_serving_without_redis(client, sold, store, settings, redis_down):
    from tests.test_ad_api import ask

    settings.API_REQUESTS_PER_SLOT = 1  # not counted while Redis is down: open
    key = store.get("account::sam").value["apiKey"]
    for _ in range(3):
        assert ask(client, key).status_code == 200
    assert client.get("/embed/sam/0").status_code == 200


@pytest.mark.django_db
def test_healthz_shows_the_cache_down_without_failing(client, store, clock, redis_down):
    from tests.test_healthz import node_beats

    node_beats(store, clock)
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["status"], body["cache"], body["database"]) == ("degraded", "down", "ok")


def test_a_cache_that_failed_is_not_dialled_again_for_a_moment(redis_down):
    with pytest.raises(CacheUnavailable):
        cache.get("x")
    node = caches["default"]
    node._cache.get_client = None  # dialling again would now fail differently
    with pytest.raises(CacheUnavailable, match="moments ago"):
        cache.get("x")


def test_a_node_rides_out_a_redis_outage(nodes_env):
    """A real outage on a live node: its own redis-server stopped, then started again."""
    from tests.services import start_redis

    own = start_redis()
    node = start_node({**nodes_env, "CACHE_URL": own.url(0)})
    try:
        alice = Browser()
        register(alice, node, "erin")
        own.stop()
        assert alice.get(f"{node.base}/account/").status == 200
        health = alice.get(f"{node.base}/healthz")
        assert health.status in (200, 503) and '"cache": "down"' in health.text
        refused = Browser().post(f"{node.base}/accounts/login/",
                                 {"username": "erin", "password": PASSWORD})  # fmt: skip
        assert refused.status == 503 and "cannot count attempts" in refused.text
        own.start()  # same port and password, empty
        # /healthz asks the cache at once (the node otherwise waits 2 s before dialling again).
        assert '"cache": "ok"' in alice.get(f"{node.base}/healthz").text
        sign_in(Browser(), node, "erin")
    finally:
        node.stop()
        own.close()
