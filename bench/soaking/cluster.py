"""--cluster: the soak on the production topology (README, "Production topology").

One Couchbase cluster (gocaves), one Redis (the cache: sessions, the user cache, rate limits), one
PostgreSQL (users and sessions), the test bitcoind; two web nodes (separate gunicorn masters on two
loopback ports, every simulated request to one picked at random) and two worker nodes
(`run_workers --shard 0/2 --node w0` and `--shard 1/2 --node w1`). Redis and PostgreSQL are the
throwaway servers of tests/services.py (loopback, a random password, nothing kept on disk),
stopped whatever happens.

Here too: what a cluster run must have shown (`shortfalls`: node kills and network faults), and the
cross-node password check (`password_check`: a password changed through node A ends the user's
session on node B at its very next request).
"""

from __future__ import annotations

import math
from collections import Counter

from tests.services import (
    POSTGRES_MISSING,
    REDIS_MISSING,
    PostgresServer,
    RedisServer,
    find_postgres_bindir,
    find_redis,
    start_postgres,
    start_redis,
)

from .client import Client, Lost, messages
from .common import Stats
from .gocaves import find_gocaves

WORKER_NODES = 2
WEB_NODES = 2
# What a cluster run of FULL_MINUTES or more must have injected (issue 20): SIGKILLs of whole nodes
# (a web node's master and workers at once, or a worker node), and network faults on the KV ports
# (with --net-faults). Shorter runs (CI's one minute) must reach these scaled to their length and
# halved: they show the schedule works, not the full dose.
FULL_MINUTES = 5.0
MIN_NODE_KILLS = 20
MIN_NET_FAULTS = 50
NODE_KILL_FAULTS = ("web node SIGKILL", "worker node SIGKILL")
# The soak's PostgreSQL serves 2 nodes x 2 workers x 8 threads (each thread keeps its connection
# for a minute), 2 worker nodes, the processor and the soak's own commands: 50 is too tight.
POSTGRES_MAX_CONNECTIONS = 120


def worker_args() -> list[list[str]]:
    """The worker nodes' arguments: `--shard i/n --node wi`."""
    return [["--shard", f"{i}/{WORKER_NODES}", "--node", f"w{i}"] for i in range(WORKER_NODES)]


def missing() -> list[str]:
    """What a cluster soak needs and this machine lacks (empty: it can run)."""
    out = []
    if find_gocaves() is None:
        out.append("gocaves not found: set GOCAVES, put it in ../shared/tools/ or on PATH")
    if find_redis() is None:
        out.append(REDIS_MISSING)
    if find_postgres_bindir() is None:
        out.append(POSTGRES_MISSING)
    return out


class Services:
    """Redis and PostgreSQL for the run, with the site's database created; stop() ends both."""

    def __init__(self) -> None:
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None

    def start(self) -> None:
        try:
            self.redis = start_redis()
            self.postgres = start_postgres(max_connections=POSTGRES_MAX_CONNECTIONS)
            if self.redis is None or self.postgres is None:
                raise RuntimeError("--cluster: " + "; ".join(missing()))
            import psycopg

            with psycopg.connect(self.postgres.url("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE adspace")
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        assert self.redis is not None and self.postgres is not None
        return {"CACHE_URL": self.redis.url(0), "DATABASE_URL": self.postgres.url("adspace")}

    def describe(self) -> str:
        assert self.redis is not None and self.postgres is not None
        return f"Redis on 127.0.0.1:{self.redis.port}, PostgreSQL on 127.0.0.1:{self.postgres.port}"

    def stop(self) -> None:
        postgres, redis = self.postgres, self.redis
        self.postgres = self.redis = None
        try:
            if postgres is not None:
                postgres.close()
        finally:
            if redis is not None:
                redis.close()


# --- what a cluster run must show -------------------------------------------------------------


def node_kills(faults: Counter) -> int:
    return sum(n for name, n in faults.items() if name.startswith(NODE_KILL_FAULTS))


def net_faults(faults: Counter) -> int:
    return sum(n for name, n in faults.items() if name.startswith("net "))


def thresholds(minutes: float) -> tuple[int, int, str]:
    """(node kills, network faults) a run of `minutes` must reach, and how they were set."""
    if minutes >= FULL_MINUTES:
        return MIN_NODE_KILLS, MIN_NET_FAULTS, f"a run of {FULL_MINUTES:g} minutes or more"
    scale = minutes / FULL_MINUTES / 2
    return (
        max(1, math.floor(MIN_NODE_KILLS * scale)),
        max(1, math.floor(MIN_NET_FAULTS * scale)),
        f"scaled to {minutes:g} min and halved; the full counts hold from {FULL_MINUTES:g} min",
    )


def shortfalls(minutes: float, faults: Counter, with_net: bool) -> tuple[list[str], str]:
    """Why the run injected too little (empty: enough), and the line that says what was asked."""
    kills_wanted, net_wanted, how = thresholds(minutes)
    kills, net = node_kills(faults), net_faults(faults)
    out = []
    if kills < kills_wanted:
        out.append(f"only {kills} node kills, fewer than the {kills_wanted} asked of {how}")
    if with_net and net < net_wanted:
        out.append(f"only {net} network faults, fewer than the {net_wanted} asked of {how}")
    asked = f"asked: >= {kills_wanted} node kills" + (
        f", >= {net_wanted} network faults" if with_net else " (network faults not asked for)"
    )
    return out, f"{asked} ({how})"


# --- a password changed on node A ends the sessions on node B -----------------------------------

NEW_PASSWORD_SUFFIX = "-changed-on-A"


def password_check(users: list, ports: list[int], stats: Stats) -> tuple[str, list[str]]:
    """A user signed in on both nodes (its own session through node A, a second one, another
    browser, through node B) changes its password through node A; the very next request of the
    node B session must find it signed out. Returns a line for the summary and the problems.
    The user keeps its node A session (Django updates its hash) and its new password."""
    a_port, b_port = ports[0], ports[1]
    for u in users:
        if not u.registered:
            continue
        a = u.http
        a.pin = a_port
        try:
            if a.get("/account/").status != 200:
                continue  # not signed in after all: another user
            b = Client(ports, stats, f"{u.name} on node B", pin=b_port)
            b.get("/accounts/login/")
            signed_in = b.post("/accounts/login/", {"username": u.name, "password": u.password})
            if signed_in.status != 302 or b.get("/account/").status != 200:
                return "", [f"password check: {u.name} could not sign in through node B"]
            new = u.password + NEW_PASSWORD_SUFFIX
            a.get("/account/password/")
            changed = a.post(
                "/account/password/",
                {"old_password": u.password, "new_password1": new, "new_password2": new},
            )
            page = a.get(changed.path) if changed.status == 302 else changed
            if changed.status != 302 or not any(
                m.startswith("Your password was changed") for m in messages(page.text)
            ):
                return "", [f"password check: changing {u.name}'s password through node A "
                            f"answered {changed.status}"]  # fmt: skip
            u.password = new
            after = b.get("/account/")
            still_a = a.get("/account/").status
        except Lost as exc:
            return "", [f"password check: an answer was lost with no fault running: {exc}"]
        finally:
            a.pin = None
        problems = []
        if not (after.status == 302 and after.path == "/accounts/login/"):
            problems.append(
                f"password check: {u.name} changed its password through node A (port {a_port}) "
                f"and its session on node B (port {b_port}) still answered {after.status} "
                f"{after.location or ''} instead of signing it out"
            )
        if still_a != 200:
            problems.append(
                f"password check: {u.name}'s own session on node A was signed out ({still_a}) "
                "by its own password change"
            )
        verdict = "ok" if not problems else "FAILED"
        return (
            f"password check: {verdict} ({u.name} changed its password on node A port {a_port}; "
            f"its next request on node B port {b_port} -> {after.status} {after.path or ''}; "
            f"node A session kept: {'yes' if still_a == 200 else 'no'})"
        ), problems
    return "", ["password check: no simulated user was signed in to run it with"]
