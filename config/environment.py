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
# Written by bin/serve while `make run`'s local regtest node runs (bitcoinkeys.local_chain), so
# development commands in another terminal (seed_demo, process_withdrawals, audit) use that node.
LOCAL_CHAIN_ENV_FILE = BASE_DIR / "var" / "local-chain.env"
DEV_SETTINGS = "config.settings.dev"


def read_env_file() -> None:
    """Put `.env`'s variables into the environment, never over ones already set."""
    if ENV_FILE.is_file():
        environ.Env.read_env(ENV_FILE, overwrite=False)


def choose_settings() -> str:
    read_env_file()
    module = os.environ.setdefault("DJANGO_SETTINGS_MODULE", DEFAULT_SETTINGS)
    local_chain = os.environ.get("LOCAL_CHAIN", "").lower() not in ("off", "0", "false")
    if module == DEV_SETTINGS and local_chain and _local_chain_running():
        environ.Env.read_env(LOCAL_CHAIN_ENV_FILE, overwrite=False)
    return module


def _local_chain_running() -> bool:
    """The file exists and its node is alive (a killed run can leave the file behind)."""
    try:
        text = LOCAL_CHAIN_ENV_FILE.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("LOCAL_CHAIN_PID="):
            try:
                os.kill(int(line.partition("=")[2]), 0)
            except (ValueError, OSError):
                return False
            return True
    return False
