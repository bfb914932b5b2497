"""Web nodes as production runs them, for the shared-services tests: gunicorn with config/gunicorn.py
on a free 127.0.0.1 port, the test's docstore, and the ORM database and cache a test names (the
real WSGI application, so serving URLs go through the slim handler). `Browser` is a cookie jar
that fills in CSRF tokens, one per signed-in person."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def node_env(tmp_path: Path, database_url: str, cache_url: str) -> dict[str, str]:
    """A node's environment: its own embedded docstore file under `tmp_path` (shared by the
    nodes started with it), the given ORM database and cache."""
    return {
        **os.environ,
        "DOCSTORE_BACKEND": "embedded",
        "DOCSTORE_PATH": str(tmp_path / "docstore.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        # DEBUG: static links need no collected manifest; both nodes share the dev SECRET_KEY.
        "DEBUG": "true",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOCAL_CHAIN": "off",
        "DATABASE_URL": database_url,
        "CACHE_URL": cache_url,
        "LOG_LEVEL": "ERROR",
        # Every browser here is 127.0.0.1: the throttles have their own tests.
        "REGISTER_RATE_LIMIT": "1000",
        "LOGIN_RATE_LIMIT": "1000",
    }


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@dataclass
class Node:
    base: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # gunicorn's quick shutdown
            self.process.wait(timeout=30)


def start_node(env: dict[str, str]) -> Node:
    port = free_port()
    gunicorn = str(Path(PYTHON).parent / "gunicorn")
    process = subprocess.Popen(
        [gunicorn, "config.wsgi:application", "-c", "config/gunicorn.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    node = Node(f"http://127.0.0.1:{port}", process)
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{node.base}/embed.js", timeout=5).close()
            return node
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    node.stop()
    pytest.fail("gunicorn did not answer within 15 s")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


class Browser:
    """One person's browser: cookies kept across nodes (one site behind a load balancer)."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def get(self, url: str, **headers) -> Answer:
        return self._open(urllib.request.Request(url, headers=headers))

    def post(self, url: str, data: dict[str, str], form_page: str | None = None) -> Answer:
        """Submit the form at `url` as a browser would: GET the page holding it (`url`, or
        `form_page`), then POST with its CSRF token."""
        page = self.get(form_page or url)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token, f"no CSRF token on {form_page or url}: {page.status}"
        body = urllib.parse.urlencode({"csrfmiddlewaretoken": token[1], **data}).encode()
        request = urllib.request.Request(url, data=body, headers={"Referer": url})
        return self._open(request)

    def _open(self, request) -> Answer:
        try:
            with self.opener.open(request, timeout=15) as response:
                return Answer(response.status, dict(response.headers), response.read().decode())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read().decode())

    def session_cookie(self) -> str | None:
        return next((c.value for c in self.jar if c.name == "sessionid"), None)
