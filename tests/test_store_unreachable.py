"""A Couchbase cluster that is down: pages and the API answer 503, /healthz says so, commands give
one clear line. Nothing is mocked: the real SDK dials a loopback port where nothing listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

import docstore
from docstore import Ambiguous, TemporaryFailure
from docstore.faults import Hook, HookedStore
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def down_config():
    return {
        **settings.DOCSTORE,
        "BACKEND": "couchbase",
        "COUCHBASE_CONNSTR": f"couchbase://127.0.0.1:{closed_port()}",
        "COUCHBASE_USERNAME": "Administrator",
        "COUCHBASE_PASSWORD": "password",
        "COUCHBASE_CONNECT_TIMEOUT": 1,
    }


@pytest.fixture
def down_store(down_config, store):
    """The process's store is a cluster that does not answer (the suite's own store stays open)."""
    dead = docstore.build_store(down_config, prefix="down::")
    docstore.set_store(dead)
    yield dead
    docstore.set_store(store)


def test_a_store_that_cannot_be_reached_fails_temporarily(down_store):
    with pytest.raises(
        TemporaryFailure, match=r"cannot reach Couchbase at couchbase://127\.0\.0\.1"
    ):
        down_store.get_multi(["anything"])


def test_healthz_answers_503_saying_the_store_is_unreachable(client, down_store):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "store unreachable"
    assert "127.0.0.1" not in response.content.decode()  # where the store lives stays private


@pytest.mark.parametrize(
    "path", ["/ads/buy-ad-space/", "/ads/buy-ad-space/nobody/", "/ads/buy-ad-space/nobody/0"]
)
def test_pages_answer_503_with_a_clear_message_not_a_traceback(client, down_store, path):
    response = client.get(path)
    assert response.status_code == 503, path
    assert response["Retry-After"]
    body = response.content.decode()
    assert "cannot be reached right now" in body and "Nothing was changed" in body
    assert "Traceback" not in body


def test_a_signed_in_page_answers_503_too(client, make_user, down_store, store):
    docstore.set_store(store)
    user = make_user("dana")
    docstore.set_store(down_store)
    client.force_login(user)
    response = client.get("/account/")
    assert response.status_code == 503
    assert "cannot be reached right now" in response.content.decode()


def test_the_api_and_the_embed_answer_503(client, down_store):
    response = client.get("/api/v1/ads/nobody/0/current", HTTP_AUTHORIZATION="Bearer x")
    assert response.status_code == 503
    assert "unavailable" in response.json()["error"]
    assert client.get("/embed/nobody/0").status_code == 503


@pytest.mark.parametrize(
    "command, args",
    [
        ("audit", []),
        ("recover", ["--once"]),
        ("credit_sellers", ["--once"]),
    ],
)
def test_commands_refuse_with_one_clear_error(down_store, command, args):
    with pytest.raises(CommandError, match="The docstore is not reachable"):
        call_command(command, *args, verbosity=0)


def test_importing_keys_refuses_with_one_clear_error(down_store, tmp_path):
    from tests.test_withdrawals import ADDR_A

    keys = tmp_path / "keys.txt"
    keys.write_text(ADDR_A + "\n")
    with pytest.raises(CommandError, match=r"cannot reach Couchbase.*Nothing is half-imported"):
        call_command("import_keys", str(keys), verbosity=0)


def test_manage_py_prints_one_line_and_no_traceback_when_the_cluster_is_down(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DOCSTORE_BACKEND": "couchbase",
        "COUCHBASE_CONNSTR": f"couchbase://127.0.0.1:{closed_port()}",
        "COUCHBASE_CONNECT_TIMEOUT": "1",
    }
    for command in (["init_docstore"], ["audit"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0, command
        assert "Traceback" not in done.stderr, done.stderr
        assert "not reachable" in done.stderr, done.stderr


class LoseCounterAnswers(Hook):
    """The store applies a counter step and its answer is lost (a timeout: Ambiguous)."""

    def after(self, op: str, key: str) -> None:
        if op == "counter":
            raise Ambiguous(key)


def test_a_write_whose_answer_was_lost_answers_503_saying_it_may_have_been_made(client, db, store):
    fields = {"username": "erin", "password1": PASSWORD, "password2": PASSWORD}
    docstore.set_store(HookedStore(store, LoseCounterAnswers()))
    try:
        response = client.post("/accounts/register/", fields)
    finally:
        docstore.set_store(store)
    assert response.status_code == 503
    assert response["Retry-After"]
    body = response.content.decode()
    assert "may or may not have been made" in body and "Traceback" not in body
    # The person goes on: logging in finishes the account the lost answer left unmade.
    login = client.post("/accounts/login/", {"username": "erin", "password": PASSWORD})
    assert login.status_code == 302
    assert client.get("/account/").status_code == 200
    assert store.get("account::erin").value["balance"] == 0
