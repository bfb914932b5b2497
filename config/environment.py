"""Which settings a process runs with, decided before Django loads any.

`.env` is read first (its variables never override the real environment), so a
`DJANGO_SETTINGS_MODULE` line in it takes effect. With none anywhere, the process gets the
production settings, which refuse to start without their secrets: forgetting to configure a
server must never give it DEBUG and a published secret key. Development runs name
`config.settings.dev` explicitly (`make run` does).
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = BASE_DIR / ".env"
DEFAULT_SETTINGS = "config.settings.production"


def read_env_file() -> None:
    """Put `.env`'s variables into the environment, never over ones already set."""
    if ENV_FILE.is_file():
        environ.Env.read_env(ENV_FILE, overwrite=False)


def choose_settings() -> str:
    read_env_file()
    return os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
