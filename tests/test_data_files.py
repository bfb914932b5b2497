"""Data files are the owner's alone, and the file cache keeps live entries (rate-limit counters)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

from docstore.backends.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    """The umask many systems start with: files world-readable unless made otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_embedded_store_and_its_companions_are_created_0600(tmp_path, loose_umask):
    path = tmp_path / "var" / "docstore.sqlite3"
    store = EmbeddedStore(path)
    try:
        store.insert("k", {"v": 1})
        store.counter("c", 1)
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
        for file in files:
            assert file.exists(), file
            assert mode(file) == 0o600, f"{file.name}: {oct(mode(file))}"
        assert mode(path.parent) == 0o700
    finally:
        store.close()


def test_a_store_left_world_readable_is_tightened_when_opened(tmp_path, loose_umask):
    path = tmp_path / "docstore.sqlite3"
    store = EmbeddedStore(path)
    store.insert("k", 1)  # the first write makes the .lock file
    store.close()
    for file in (path, Path(f"{path}.lock")):
        os.chmod(file, 0o644)
    EmbeddedStore(path).close()
    assert mode(path) == 0o600 and mode(Path(f"{path}.lock")) == 0o600


def test_migrate_creates_the_orm_database_0600(tmp_path):
    database = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DATABASE_URL": f"sqlite:///{database}",
        "DOCSTORE_PATH": str(tmp_path / "docstore.sqlite3"),
        "CACHE_URL": f"filecache://{tmp_path / 'cache'}",
    }
    subprocess.run(
        ["sh", "-c", f"umask 022 && {sys.executable} manage.py migrate --noinput -v 0"],
        cwd=ROOT, env=env, check=True, timeout=120,
    )  # fmt: skip
    assert mode(database) == 0o600


def test_bin_serve_runs_everything_under_a_private_umask():
    script = (ROOT / "bin" / "serve").read_text()
    assert "umask 077" in script
    assert script.index("umask 077") < script.index("manage.py run_workers")


def file_cache(tmp_path, **options):
    """The default cache exactly as the settings build it, in a temporary directory."""
    from config.settings import base

    config = {**base.CACHES["default"], "LOCATION": str(tmp_path / "cache")}
    config["OPTIONS"] = {**config.get("OPTIONS", {}), **options}
    return import_string(config["BACKEND"])(config["LOCATION"], config)


def test_rate_limit_counters_outlive_a_burst_of_other_cache_entries(tmp_path):
    cache = file_cache(tmp_path)
    cache.add("ratelimit:login-ip:1:abc", 7, timeout=300)
    for i in range(600):  # twice Django's default MAX_ENTRIES
        cache.set(f"session:{i}", "x" * 50, timeout=3600)
    assert cache.get("ratelimit:login-ip:1:abc") == 7
    assert all(cache.get(f"session:{i}") is not None for i in range(600))


def test_a_full_cache_culls_expired_entries_before_live_ones(tmp_path, monkeypatch):
    cache = file_cache(tmp_path, MAX_ENTRIES=100, CULL_EVERY_SECONDS=0)
    cache.set("counter", 3, timeout=300)
    for i in range(60):
        cache.set(f"old:{i}", i, timeout=1)
    cache._max_entries = 50  # now full: the next write culls
    import time as time_module

    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + 10)  # the old entries expired
    cache.set("new", 1, timeout=300)
    assert cache.get("counter") == 3 and cache.get("new") == 1
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 2
    assert all(mode(f) == 0o600 for f in files) and mode(tmp_path / "cache") == 0o700
