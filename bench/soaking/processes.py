"""The site's processes as the soak runs and kills them.

A web node is one gunicorn master on its own loopback port (its workers are what the fault schedule
SIGKILLs, and with --cluster the whole node); a worker node is one `manage.py run_workers` process
with its own arguments. The soak runs one of each; `Processes(..., web_ports=[p0, p1],
worker_args=[["--shard", "0/2", "--node", "w0"], ...])` runs several (--cluster: two and two), each
logging to its own files (gunicorn.log, gunicorn-1.log, ...; worker.log, worker-1.log).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .chain import SoakNode
from .common import (
    GUNICORN,
    KEYPOOL,
    LOCK_LEASE_SECONDS,
    MIN_CAMPAIGN_SATS,
    MIN_DEPOSIT_SATS,
    MIN_WITHDRAWAL_SATS,
    PY,
    ROOT,
    SALE_FEE_PERMILLE,
    WITHDRAW_FEE_PERMILLE,
    Stats,
)
from .dump import DUMP, parse_dump


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (sorted, so a seeded choice among them is stable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def proc_state(pid: int) -> str:
    """R running, D uninterruptible (an fsync: a docstore write under way), S sleeping..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def log_name(stem: str, index: int) -> str:
    return f"{stem}.log" if index == 0 else f"{stem}-{index}.log"


class WebNode:
    """One gunicorn master on its own port, started as bin/serve starts it. `kill()` SIGKILLs
    the whole node (master and workers: its own process group); `start()` starts it again."""

    def __init__(self, procs: Processes, index: int, port: int):
        self.procs, self.index, self.port = procs, index, port
        self.gunicorn: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.down = False  # killed on purpose and not started again yet

    def start(self) -> None:
        """Start it unless it is running."""
        with self.lock:
            if self.gunicorn is not None and self.gunicorn.poll() is None:
                return
            # The arguments bin/serve uses (its defaults: 2 workers, 8 threads), on our port.
            self.gunicorn = subprocess.Popen(
                [GUNICORN, "config.wsgi:application", "-c", "config/gunicorn.py",
                 "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "2", "--threads", "8", "--access-logfile", "-",
                 "--graceful-timeout", "10", "--reuse-port"],
                cwd=ROOT, env=self.procs.env,
                stdout=self.procs.log(log_name("access", self.index)),
                stderr=self.procs.log(log_name("gunicorn", self.index)),
                start_new_session=True,
            )  # fmt: skip
            self.down = False

    def kill(self) -> bool:
        """SIGKILL the master and its workers at once (a machine lost, not a shutdown)."""
        with self.lock:
            if self.gunicorn is None or self.gunicorn.poll() is not None:
                return False
            self.down = True
            try:
                os.killpg(self.gunicorn.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.gunicorn.wait(timeout=10)
            return True

    def died(self) -> bool:
        """It exited without being killed on purpose."""
        with self.lock:
            return not self.down and self.gunicorn is not None and self.gunicorn.poll() is not None

    def workers(self) -> list[int]:
        return children(self.gunicorn.pid) if self.gunicorn else []

    def stop(self) -> None:
        with self.lock:
            if self.gunicorn is not None and self.gunicorn.poll() is None:
                self.gunicorn.terminate()
                try:
                    self.gunicorn.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.gunicorn.pid, signal.SIGKILL)
                    self.gunicorn.wait(timeout=10)


class WorkerNode:
    """One `manage.py run_workers` process with its own extra arguments (a shard, say)."""

    def __init__(self, procs: Processes, index: int, args: list[str]):
        self.procs, self.index, self.args = procs, index, args
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        """Start it unless it is running."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.proc = subprocess.Popen(
                [PY, "manage.py", "run_workers", *self.args], cwd=ROOT, env=self.procs.env,
                stdout=self.procs.log(log_name("worker", self.index)), stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self, aim: float = 0.0) -> bool:
        """SIGKILL it; with `aim`, wait up to that long for it to be mid-pass."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                return False
            deadline = time.monotonic() + aim
            while time.monotonic() < deadline and proc_state(self.proc.pid) != "D":
                time.sleep(0.001)
            self.proc.kill()
            self.proc.wait(timeout=10)
            return True

    def stop(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()


class Processes:
    def __init__(
        self,
        work: Path,
        env: dict,
        stats: Stats,
        web_ports: list[int],
        worker_args: list[list[str]] | None = None,
    ):
        self.work, self.env, self.stats = work, env, stats
        self.web = [WebNode(self, i, port) for i, port in enumerate(web_ports)]
        self.workers = [WorkerNode(self, i, a) for i, a in enumerate(worker_args or [[]])]
        self.processor: subprocess.Popen | None = None
        self.processor_lock = threading.Lock()
        self.logs: list = []

    def log(self, name: str):
        f = open(self.work / name, "ab")  # noqa: SIM115 - closed in stop()
        self.logs.append(f)
        return f

    def log_paths(self, stem: str) -> list[Path]:
        """gunicorn.log, gunicorn-1.log, ... (or worker.log, ...) of every node."""
        count = len(self.web) if stem in ("gunicorn", "access") else len(self.workers)
        return [self.work / log_name(stem, i) for i in range(count)]

    def manage(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def dump(self, full: bool = False) -> dict:
        return parse_dump(
            self.manage("shell", "-v", "0", "-c", DUMP.replace("FULL", str(full)), timeout=120)
        )

    def start_web(self) -> None:
        """Start every web node that is not running."""
        for node in self.web:
            node.start()

    def kill_web_node(self, rng: random.Random, aim: float = 0.0) -> WebNode | None:
        """SIGKILL one web node at random, master and workers; with `aim`, wait up to that long
        for a money POST in flight first, so requests die with it. The caller starts it again."""
        deadline = time.monotonic() + aim
        node = rng.choice(self.web)
        while time.monotonic() < deadline and not self.stats.inflight:
            time.sleep(0.002)
        if not node.kill():
            return None
        self.stats.note(f"FAULT SIGKILL web node {node.index} (port {node.port})")
        return node

    def start_workers(self) -> None:
        """Start every worker node that is not running."""
        for node in self.workers:
            node.start()

    def web_died(self) -> bool:
        return any(node.died() for node in self.web)

    def web_workers(self) -> list[int]:
        return [pid for node in self.web for pid in node.workers()]

    def kill_web_worker(self, rng: random.Random, aim: float = 0.0) -> str:
        """SIGKILL a gunicorn worker (of any web node); with `aim`, wait up to that long for one
        that is busy while a POST is in flight, so the kill lands inside a request."""
        pids = self.web_workers()
        if not pids:
            return ""
        victim, how = rng.choice(pids), "unaimed"
        deadline = time.monotonic() + aim
        while time.monotonic() < deadline:
            if self.stats.inflight:
                # Best: a worker inside a write (fsync) while a money POST is being served.
                writing = [p for p in pids if proc_state(p) == "D"]
                if writing:
                    victim, how = rng.choice(writing), "mid-write"
                    break
                working = [p for p in pids if proc_state(p) == "R"]
                if working:
                    victim, how = rng.choice(working), "busy"
            time.sleep(0.001)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return ""
        self.stats.note(f"FAULT SIGKILL gunicorn worker pid {victim} ({how})")
        return how

    def kill_worker(self, rng: random.Random, aim: float = 0.0) -> bool:
        """SIGKILL a worker node (the only one, or one at random); see WorkerNode.kill."""
        node = self.workers[0] if len(self.workers) == 1 else rng.choice(self.workers)
        if node.kill(aim):
            self.stats.note(f"FAULT SIGKILL worker node {node.index} ({' '.join(node.args)})")
            return True
        return False

    def run_processor(
        self, lease: int, kill_on_send: SoakNode | None = None, timeout: float = 90
    ) -> str:
        """One `process_withdrawals --execute --yes`; with `kill_on_send`, SIGKILL it as soon as
        the node has applied a send (while the node holds the answer back)."""
        # The lease is a setting: short here, so a processor the soak killed mid-payout blocks
        # the next one for seconds rather than minutes.
        cmd = [PY, "manage.py", "process_withdrawals", "--execute", "--yes"]
        env = {**self.env, "WITHDRAW_PROCESSOR_LEASE_SECONDS": str(lease)} if lease else self.env
        log = self.log("processor.log")
        log.write(f"--- {time.strftime('%H:%M:%S')} processor run\n".encode())
        log.flush()
        with self.processor_lock:
            self.processor = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            proc = self.processor
        deadline = time.monotonic() + timeout
        killed = False
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_on_send is not None and kill_on_send.sent_event.wait(0.05):
                proc.kill()
                killed = True
                break
            if kill_on_send is None:
                time.sleep(0.05)
        if proc.poll() is None and not killed:
            proc.kill()
            proc.wait(timeout=10)
            return "timed out (killed)"
        proc.wait(timeout=10)
        if killed:
            return "killed mid-payout"
        return {0: "ok", 1: "stopped or busy"}.get(proc.returncode, f"exit {proc.returncode}")

    def stop(self) -> None:
        with self.processor_lock:
            if self.processor is not None and self.processor.poll() is None:
                self.processor.kill()
        for worker in self.workers:
            worker.stop()
        for node in self.web:
            node.stop()
        for f in self.logs:
            f.close()


def make_env(work: Path, rpc_url: str, couchbase: dict | None = None) -> tuple[dict, str]:
    """The site's settings for every process of the soak, and the docstore backend's name.
    `couchbase`: settings of a cluster the soak started (gocaves.Gocaves.env); otherwise a
    COUCHBASE_CONNSTR in the environment names a cluster to use, else the embedded store."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.dev",
            "DEBUG": "false",
            # Measure the site alone: no local regtest node (bin/serve, config/environment.py).
            "LOCAL_CHAIN": "off",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DOCSTORE_PATH": str(work / "docstore.sqlite3"),
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "CACHE_URL": f"filecache://{work / 'cache'}",
            "CHAIN_BACKEND": "bitcoind",
            "BITCOIND_URL": rpc_url,
            "BITCOIND_TIMEOUT": "10",
            "BITCOIN_NETWORK": "regtest",
            "LOCK_LEASE_SECONDS": str(LOCK_LEASE_SECONDS),
            # The soak's end check wants every sale credited; review windows would hold them 24 h.
            "REVIEW_HOURS": "0",
            "WORKER_INTERVAL_SECONDS": "0.5",
            # Time here runs ~6x faster than in production (lease 5 s, not 30): recovery keeps its
            # own cadence, scaled the same way (production: every 10 s, a third of the lease).
            "RECOVERY_INTERVAL_SECONDS": "2",
            "SALE_FEE_PERMILLE": str(SALE_FEE_PERMILLE),
            "WITHDRAW_FEE_PERMILLE": str(WITHDRAW_FEE_PERMILLE),
            "MIN_CAMPAIGN_PRICE_SATS": str(MIN_CAMPAIGN_SATS),
            "MIN_DEPOSIT_SATS": str(MIN_DEPOSIT_SATS),
            "MIN_WITHDRAWAL_SATS": str(MIN_WITHDRAWAL_SATS),
            "DEPOSIT_CONFIRMATIONS": "1",
            # Every simulated user comes from 127.0.0.1: one client, as the rate limits see it.
            "LOGIN_RATE_LIMIT": "100000",
            "REGISTER_RATE_LIMIT": "100000",
            "ADDRESS_RATE_LIMIT": "100000",
            "WITHDRAW_RATE_LIMIT": "100000",
            "LOG_LEVEL": "INFO",
            # The worker's pass lines must reach its log before a SIGKILL, not sit in a buffer.
            "PYTHONUNBUFFERED": "1",
            **KEYPOOL,
        }
    )
    backend = "embedded"
    if couchbase:
        env.update(couchbase)
        return env, "couchbase (gocaves)"
    if os.environ.get("COUCHBASE_CONNSTR"):
        backend = "couchbase"
        for k, v in os.environ.items():
            if k.startswith("COUCHBASE_"):
                env[k] = v
        env["DOCSTORE_BACKEND"] = "couchbase"
        env["DOCSTORE_PREFIX"] = f"soak-{uuid.uuid4().hex[:12]}::"
    return env, backend


def wait_healthy(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz", headers={"Host": f"127.0.0.1:{port}"})
            if conn.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.3)
    return False
