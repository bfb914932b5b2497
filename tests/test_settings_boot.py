"""Settings fail closed: `.env` is read before the settings module is chosen, a process with no
settings named runs production's (which refuse to start without their secrets), DEBUG is on only
in an explicit dev run, and the debug page never shows a password written inside a URL.

The process tests run `manage.py` and the WSGI module from a copy of the project's entry points in
a temporary directory, so its `.env` is the test's and never the developer's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import RequestFactory
from django.views.debug import technical_500_response

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k" + "".join(chr(97 + i % 26) for i in range(63))
SHOW = "from django.conf import settings; print(settings.SETTINGS_MODULE, settings.DEBUG)"
SHELL = ["manage.py", "shell", "--no-imports", "-c", SHOW]


@pytest.fixture
def project(tmp_path):
    """manage.py and config/ copied (so BASE_DIR and .env are here), the apps from the repo."""
    shutil.copy(ROOT / "manage.py", tmp_path / "manage.py")
    shutil.copytree(
        ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("jinja2", "templates", "static"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run(project: Path, args: list[str], env_file: str | None = None, **env: str):
    if env_file is not None:
        (project / ".env").write_text(env_file)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    full_env = {
        **keep,
        "PYTHONPATH": str(ROOT),
        "DOCSTORE_PATH": str(project / "ds.sqlite3"),
        **env,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=project, env=full_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def production_env_file(project: Path, key: str = STRONG_KEY) -> str:
    return (
        "DJANGO_SETTINGS_MODULE=config.settings.production\n"
        f"SECRET_KEY={key}\n"
        "ALLOWED_HOSTS=ads.example.com\n"
        f"DATABASE_URL=sqlite:///{project / 'db.sqlite3'}\n"
        "SITE_URL=https://ads.example.com\n"
    )


def test_manage_py_with_no_settings_named_refuses_to_start(project):
    result = run(project, ["manage.py", "check"])
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    assert "DJANGO_SETTINGS_MODULE=config.settings.dev" in result.stderr  # the hint for developers


def test_the_wsgi_app_with_no_settings_named_refuses_to_start(project):
    result = run(project, ["-c", "import config.wsgi"])
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_the_env_file_chooses_the_settings_module(project):
    env_file = production_env_file(project)
    result = run(project, SHELL, env_file)
    assert result.stdout.split() == ["config.settings.production", "False"], result.stderr
    result = run(project, ["-c", f"import config.wsgi; {SHOW}"], env_file)
    assert result.stdout.split() == ["config.settings.production", "False"], result.stderr


def test_the_environment_wins_over_the_env_file(project):
    env_file = production_env_file(project)
    result = run(
        project, SHELL, env_file,
        DJANGO_SETTINGS_MODULE="config.settings.dev",
    )  # fmt: skip
    assert result.stdout.split() == ["config.settings.dev", "True"], result.stderr


def test_production_ignores_debug_and_refuses_a_weak_secret_key(project):
    env_file = production_env_file(project) + "DEBUG=true\n"
    result = run(project, SHELL, env_file)
    assert result.stdout.split() == ["config.settings.production", "False"], result.stderr
    result = run(project, ["manage.py", "check"], production_env_file(project, key="short"))
    assert result.returncode != 0 and "SECRET_KEY must be at least" in result.stderr


def error_page(request) -> str:
    """The debug page for an error raised here (nothing secret in this frame or its source)."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        return technical_500_response(request, *sys.exc_info()).content.decode()


def test_the_debug_page_never_shows_the_bitcoind_password(rf: RequestFactory, settings):
    # Built from parts, so the page's source excerpts of this test cannot contain them whole.
    rpc, cache, referer = "hunter2" + "secret", "cache" + "pass99", "referer" + "pw77"
    settings.DEBUG = True
    settings.BITCOIND_URL = f"http://rpcuser:{rpc}@127.0.0.1:8332"
    settings.CACHES = {
        **settings.CACHES,
        "other": {"BACKEND": "x", "LOCATION": f"redis://:{cache}@10.0.0.5:6379/0"},
    }
    page = error_page(rf.get("/boom", HTTP_REFERER=f"https://u:{referer}@example.com/"))
    assert "127.0.0.1:8332" in page and "rpcuser" in page  # the rest of the URL still helps
    for secret in (rpc, cache, referer):
        assert secret not in page


def test_production_without_its_public_address_refuses_to_start(project):
    env_file = production_env_file(project).replace("SITE_URL=https://ads.example.com\n", "")
    result = run(project, ["manage.py", "check"], env_file)
    assert result.returncode != 0 and "SITE_URL is not set" in result.stderr
    plain = production_env_file(project).replace("https://", "http://")
    result = run(project, ["manage.py", "check"], plain)
    assert result.returncode != 0 and "SITE_URL must be an https://" in result.stderr
