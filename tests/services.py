"""Real Redis and PostgreSQL servers on loopback, started by the tests themselves.

Loaded as a plugin by conftest.py: the session fixtures `redis_server` and `postgres_server` start
one throwaway server each (a temporary directory, 127.0.0.1 and a free port, a random password,
no persistence or fsync: their subject is behaviour, not the disk) and stop it at the end; without
the binaries the tests that need them skip and say how to get them. The binaries: `REDIS_SERVER`,
else `redis-server` on PATH (Debian's `redis-server`); `POSTGRES_BIN` (a directory holding
`initdb` and `pg_ctl`), else the newest `/usr/lib/postgresql/*/bin`, else PATH (Debian's
`postgresql`). PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user
(`runuser`).

`python -m tests.services -- COMMAND...` (bin/test-services, `make test-services`) starts both,
runs COMMAND with `TEST_CACHE_URL` and `TEST_DATABASE_URL` pointing at them (the test settings
then use Redis and PostgreSQL instead of locmem and SQLite) and stops them whatever happens.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

START_SECONDS = 30


class ServiceError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_redis() -> str | None:
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    return binary if binary and os.access(binary, os.X_OK) else None


def find_postgres_bindir() -> Path | None:
    candidates = []
    if os.environ.get("POSTGRES_BIN"):
        candidates.append(Path(os.environ["POSTGRES_BIN"]))
    else:
        versions = glob.glob("/usr/lib/postgresql/*/bin")
        candidates += [Path(p) for p in sorted(versions, key=_version, reverse=True)]
        if shutil.which("initdb"):
            candidates.append(Path(shutil.which("initdb")).parent)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _version(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(p) for p in name.split(".") if p.isdigit())


class RedisServer:
    """redis-server on 127.0.0.1 with a password, nothing saved to disk."""

    def __init__(self, binary: str):
        self.binary = binary
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="test-redis-")
        self.process: subprocess.Popen | None = None

    def url(self, db: int | None = None) -> str:
        base = f"redis://:{self.password}@127.0.0.1:{self.port}"
        return base if db is None else f"{base}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
             "--requirepass", self.password, "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")
                raise ServiceError(f"redis-server exited: {err.strip()[-500:]}")
            try:
                client.ping()
                return
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise ServiceError(f"redis-server did not answer within {START_SECONDS} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (no Unix socket), password login only."""

    USER = "adspace"

    def __init__(self, bindir: Path, max_connections: int = 50):
        self.bindir = bindir
        self.max_connections = max_connections
        self.password = secrets.token_hex(16)
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="test-postgres-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.base, "postgres", "postgres")

    def url(self, name: str = "adspace") -> str:
        return f"postgres://{self.USER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise ServiceError(f"{args[0]} failed: {done.stderr.strip()[-800:]}\n{log}")

    def init(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", self.USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    def start(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections={self.max_connections}"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(START_SECONDS), "start",
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def start_redis() -> RedisServer | None:
    binary = find_redis()
    if binary is None:
        return None
    server = RedisServer(binary)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def start_postgres(max_connections: int = 50) -> PostgresServer | None:
    bindir = find_postgres_bindir()
    if bindir is None:
        return None
    server = PostgresServer(bindir, max_connections)
    try:
        server.init()
        server.start()
    except BaseException:
        server.close()
        raise
    return server


REDIS_MISSING = (
    "redis-server not found: `apt-get install redis-server` (Debian), or set "
    "REDIS_SERVER=/path/to/redis-server"
)
POSTGRES_MISSING = (
    "PostgreSQL not found: `apt-get install postgresql` (Debian), or set POSTGRES_BIN to the "
    "directory holding initdb, pg_ctl and postgres"
)


@pytest.fixture(scope="session")
def redis_server():
    try:
        server = start_redis()
    except ServiceError as exc:
        pytest.fail(f"redis-server was found but did not start: {exc}")
    if server is None:
        pytest.skip(REDIS_MISSING)
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = start_postgres()
    except ServiceError as exc:
        pytest.fail(f"PostgreSQL was found but did not start: {exc}")
    if server is None:
        pytest.skip(POSTGRES_MISSING)
    yield server
    server.close()


def main(argv: list[str]) -> int:
    command = argv[1:] if argv and argv[0] == "--" else argv
    if not command:
        print("usage: python -m tests.services -- COMMAND...", file=sys.stderr)
        return 2
    missing = [m for m, found in ((REDIS_MISSING, find_redis()),
                                  (POSTGRES_MISSING, find_postgres_bindir())) if not found]  # fmt: skip
    if missing:
        print("test-services: SKIPPED, " + "; ".join(missing))
        return 0
    redis_server = postgres_server = None
    try:
        redis_server = start_redis()
        postgres_server = start_postgres()
        env = {
            **os.environ,
            "TEST_CACHE_URL": redis_server.url(),
            "TEST_DATABASE_URL": postgres_server.url(),
        }
        print(f"test-services: Redis on 127.0.0.1:{redis_server.port}, PostgreSQL on "
              f"127.0.0.1:{postgres_server.port}", flush=True)  # fmt: skip
        return subprocess.call(command, env=env)
    except ServiceError as exc:
        print(f"test-services: a service did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        if postgres_server is not None:
            postgres_server.close()
        if redis_server is not None:
            redis_server.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
