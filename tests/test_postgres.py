"""PostgreSQL as the ORM database (DATABASE_URL=postgres://..., psycopg 3): the migrations, the
case-insensitive unique username enforced by the database itself, registration, sign-in,
sessions and password change on a live node, and a PostgreSQL that goes down: pages that need a
user answer 503 (never a 500) while the API and embeds keep serving, and the node recovers when
it is back. tests/services.py starts a real PostgreSQL on loopback.

The existing login, registration, password, two-factor and user-cache tests run on PostgreSQL
(and Redis) too: `make test-services`."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

import docstore
from accounts.gateway import get_account
from accounts.unavailable import DATABASE_MESSAGE
from docstore import FixedClock
from tests.conftest import PASSWORD
from tests.live_nodes import PYTHON, ROOT, Browser, migrate, node_env, start_node
from tests.teststore import backend_only

pytestmark = backend_only(
    "embedded", "PostgreSQL is the ORM database, not the docstore; the embedded leg runs it"
)

NEW_PASSWORD = "a-new-long-password-42"


@pytest.fixture(scope="module")
def database(postgres_server):
    """A fresh database on the session's PostgreSQL; its URL."""
    name = f"adspace_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.url(name)


@pytest.fixture(scope="module")
def pg_env(tmp_path_factory, database):
    """A node's environment on that database (migrated) and a file cache of its own."""
    tmp = tmp_path_factory.mktemp("pgnode")
    env = node_env(tmp, database, f"filecache://{tmp / 'cache'}")
    env["CACHE_DIR"] = str(tmp / "cache")
    migrate(env)
    return env


@pytest.fixture(scope="module")
def node(pg_env):
    live = start_node(pg_env)
    yield live
    live.stop()


def manage(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def register(browser, node, username, expect=302):
    answer = browser.post(f"{node.base}/accounts/register/",
                          {"username": username, "password1": PASSWORD, "password2": PASSWORD})  # fmt: skip
    if expect is not None:
        assert answer.status == expect, answer.text[:300]
    return answer


def sign_in(browser, node, username, password=PASSWORD):
    return browser.post(f"{node.base}/accounts/login/",
                        {"username": username, "password": password})  # fmt: skip


def test_migrations_apply_and_leave_nothing_to_make(pg_env, database):
    assert manage(pg_env, "migrate", "--check").returncode == 0  # all applied
    made = manage(pg_env, "makemigrations", "--check", "--dry-run")
    assert made.returncode == 0, made.stdout + made.stderr
    with psycopg.connect(database) as conn:
        (definition,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'accounts_user_username_ci_unique'"
        ).fetchone()
    assert "UNIQUE" in definition and "lower((username)::text)" in definition


def test_the_database_refuses_a_username_differing_only_in_case(node, database):
    register(Browser(), node, "Bob")
    with psycopg.connect(database) as conn:
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'accounts_user' AND column_name NOT IN ('id', 'username')"
            )
        ]
        copy = ", ".join(columns)
        # Straight past the form and the ORM: the constraint itself must refuse it.
        with pytest.raises(psycopg.errors.UniqueViolation, match="username_ci_unique"):
            conn.execute(
                f"INSERT INTO accounts_user (username, {copy}) "  # noqa: S608 (names from the catalog)
                f"SELECT 'BOB', {copy} FROM accounts_user WHERE username = 'Bob'"
            )


def test_racing_sign_ups_of_one_name_in_two_cases_make_one_user(node, database):
    answers = []
    start = threading.Barrier(4)

    def sign_up(name):
        browser = Browser()
        browser.get(f"{node.base}/accounts/register/")
        start.wait()
        answers.append(register(browser, node, name, expect=None).status)

    # register(expect=None) asserts nothing itself: the answers are checked below.
    threads = [
        threading.Thread(target=sign_up, args=(n,)) for n in ("Race", "race", "RACE", "rAce")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(answers) == [200, 200, 200, 302]  # one account; the others told it is taken
    with psycopg.connect(database) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM accounts_user WHERE lower(username) = 'race'"
        ).fetchone()
    assert n == 1


def test_sign_up_sign_in_and_password_change_on_postgresql(node):
    laptop, phone = Browser(), Browser()
    register(laptop, node, "Alice")
    assert sign_in(phone, node, "alice", "wrong-password").status == 200  # the form again
    assert sign_in(phone, node, "ALICE").status == 302  # any case signs in
    page = phone.get(f"{node.base}/account/")
    assert page.status == 200 and "Alice" in page.text
    changed = laptop.post(
        f"{node.base}/account/password/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert changed.status == 302
    assert phone.get(f"{node.base}/account/").status == 302  # the other session ended
    assert laptop.get(f"{node.base}/account/").status == 200
    assert sign_in(Browser(), node, "alice", PASSWORD).status == 200  # the old one: refused
    assert sign_in(Browser(), node, "alice", NEW_PASSWORD).status == 302


def test_postgresql_down_pages_answer_503_while_the_api_and_embeds_serve(
    node, pg_env, postgres_server
):
    from tests.test_ad_api import make_world, sell

    # A live sale in the node's docstore, at the node's (real) time.
    store = docstore.build_store({"BACKEND": "embedded", "PATH": pg_env["DOCSTORE_PATH"]})
    clock = FixedClock(int(time.time()))
    make_world(store, clock)
    sell(store, clock)
    key = get_account(store, "sam").value["apiKey"]
    store.close()

    signed_in = Browser()
    register(signed_in, node, "Carol")
    postgres_server.stop()
    try:
        # What the cache held is gone too (a restart, an eviction): the session needs the database.
        shutil.rmtree(pg_env["CACHE_DIR"], ignore_errors=True)
        for answer in (
            signed_in.get(f"{node.base}/account/"),
            sign_in(Browser(), node, "Carol"),
            Browser().post(f"{node.base}/accounts/register/",
                           {"username": "dave", "password1": PASSWORD, "password2": PASSWORD}),
        ):  # fmt: skip
            assert answer.status == 503 and DATABASE_MESSAGE in answer.text
            assert answer.headers["Retry-After"] == "5"
        api = Browser().get(f"{node.base}/api/v1/ads/sam/0/current", Authorization=f"Bearer {key}")
        assert api.status == 200 and '"url":"https://bob.test/landing' in api.text
        embed = Browser().get(f"{node.base}/embed/sam/0")
        assert embed.status == 200 and "/c/" in embed.text  # the ad, with its click link
        assert Browser().get(f"{node.base}/").status == 200  # signed-out pages need no user
        health = Browser().get(f"{node.base}/healthz")
        assert '"database": "down"' in health.text
    finally:
        postgres_server.start()
    # Back: the node reconnects by itself.
    assert signed_in.get(f"{node.base}/account/").status == 200
    assert sign_in(Browser(), node, "Carol").status == 302
