"""The cluster soak's pieces (bench/soaking/cluster.py and what --cluster changes elsewhere), cheaply:
its arguments, how a simulated user's requests are spread over the web nodes, what a run must
have injected, and the skip of `make soak-cluster` without the tools. The run itself is
`make soak-cluster` (CI runs one minute of it); nothing here starts a server.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from bench.soaking import cluster
from bench.soaking import main as soak_main
from bench.soaking.client import Client, Lost
from bench.soaking.common import Stats
from bench.soaking.reconcile import Reconciliation
from bench.soaking.report import Finish, summary

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tools_present(monkeypatch):
    monkeypatch.setattr(cluster, "missing", lambda: [])


# --- arguments ------------------------------------------------------------------------------------


def test_cluster_implies_couchbase(tools_present):
    args = soak_main.parse_args(["--cluster", "--minutes", "1"])
    assert args.cluster and args.couchbase and not args.net_faults
    assert soak_main.replay_options(args) == " --cluster"


def test_net_faults_go_with_cluster(tools_present, monkeypatch):
    monkeypatch.setattr(soak_main.netfaults, "unavailable", lambda: None)
    args = soak_main.parse_args(["--cluster", "--net-faults"])
    assert args.cluster and args.couchbase and args.net_faults
    assert soak_main.replay_options(args) == " --cluster --net-faults"


def test_net_faults_without_couchbase_or_cluster_are_refused(capsys):
    with pytest.raises(SystemExit):
        soak_main.parse_args(["--net-faults"])
    assert "add --couchbase or --cluster" in capsys.readouterr().err


def test_cluster_without_the_tools_is_refused_naming_them(monkeypatch, capsys):
    monkeypatch.setattr(cluster, "missing", lambda: ["redis-server not found"])
    with pytest.raises(SystemExit):
        soak_main.parse_args(["--cluster"])
    assert "--cluster needs: redis-server not found" in capsys.readouterr().err


def test_the_worker_nodes_split_the_store_in_two_named_shards():
    assert cluster.worker_args() == [
        ["--shard", "0/2", "--node", "w0"],
        ["--shard", "1/2", "--node", "w1"],
    ]


# --- which node serves a request --------------------------------------------------------------------


class _Server:
    """A loopback HTTP server answering 200 to anything, counting the requests it got."""

    def __init__(self):
        import http.server
        import threading

        hits = self.hits = Counter()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits[self.headers["Host"]] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_each_request_goes_to_a_node_picked_at_random_from_its_own_stream():
    a, b = _Server(), _Server()
    try:
        client = Client([a.port, b.port], Stats(), "user0", rng=random.Random("seed:route:0"))
        for _ in range(40):
            assert client.get("/").status == 200
        assert a.hits[f"127.0.0.1:{a.port}"] > 5 and b.hits[f"127.0.0.1:{b.port}"] > 5
        # The same stream, the same nodes: a seed replays the spread too.
        again = random.Random("seed:route:0")
        picks = [again.choice([a.port, b.port]) for _ in range(40)]
        assert Counter(picks)[a.port] == a.hits[f"127.0.0.1:{a.port}"]
    finally:
        a.close()
        b.close()


def test_a_node_that_refuses_the_connection_is_skipped_for_the_other():
    up, down = _Server(), _closed_port()
    stats = Stats()
    try:
        client = Client([down, up.port], stats, "user1", rng=random.Random(1))
        for _ in range(20):
            assert client.get("/").status == 200
        assert up.hits[f"127.0.0.1:{up.port}"] == 20
        assert stats.lost == 0  # never reached a server: not a lost answer
    finally:
        up.close()


def test_every_node_down_is_a_lost_answer_and_a_pinned_client_never_moves():
    stats = Stats()
    with pytest.raises(Lost):
        Client([_closed_port(), _closed_port()], stats, "user2").get("/")
    up = _Server()
    try:
        pinned = Client([up.port, _closed_port()], stats, "user3", pin=_closed_port())
        with pytest.raises(Lost):
            pinned.get("/")
        assert up.hits == Counter()
    finally:
        up.close()
    assert stats.lost == 2


# --- what a run must have injected --------------------------------------------------------------


def _faults(kills: int, nets: int) -> Counter:
    web = kills // 2
    return Counter(
        {
            "web node SIGKILL": web,
            "web node restarted": web,
            "worker node SIGKILL": kills - web,
            "worker node restarted": kills - web,
            "gunicorn worker SIGKILL (busy)": 30,  # a worker of a node, not a node
            "net DROP (silent loss)": nets - nets // 2,
            "net REJECT tcp-reset (cut)": nets // 2,
        }
    )


def test_node_kills_and_net_faults_are_counted_apart_from_worker_kills_and_restarts():
    faults = _faults(21, 51)
    assert cluster.node_kills(faults) == 21
    assert cluster.net_faults(faults) == 51


@pytest.mark.parametrize("minutes", [5, 7.5])
def test_a_run_of_five_minutes_needs_20_node_kills_and_50_net_faults(minutes):
    assert cluster.shortfalls(minutes, _faults(20, 50), with_net=True)[0] == []
    short, _ = cluster.shortfalls(minutes, _faults(19, 49), with_net=True)
    assert len(short) == 2
    assert "only 19 node kills, fewer than the 20" in short[0]
    assert "only 49 network faults, fewer than the 50" in short[1]


def test_without_net_faults_only_the_kills_count():
    short, asked = cluster.shortfalls(5, _faults(20, 0), with_net=False)
    assert short == [] and "network faults not asked for" in asked


def test_a_shorter_run_needs_its_share_halved():
    assert cluster.thresholds(1)[:2] == (2, 5)
    assert cluster.shortfalls(1, _faults(2, 5), with_net=True)[0] == []
    assert len(cluster.shortfalls(1, _faults(1, 4), with_net=True)[0]) == 2
    assert cluster.thresholds(0.1)[:2] == (1, 1)


def test_the_summary_fails_on_a_cluster_problem():
    class Audit:
        returncode, stdout, stderr = 0, "money: ok\n", ""

    finish = Finish(
        seed=1, users=1, minutes=5, backend="couchbase", setup_seconds=1, started=0,
        stats=Stats(), dump={}, rec=Reconciliation(),
        left=[], heal_seconds=1, locks_left=[], audit=Audit(), web_logs=[], worker_logs=[],
    )  # fmt: skip
    lines, ok = summary(finish)
    assert ok and "RESULT: PASS" in lines[-1]
    finish.extra, finish.extra_problems = ["cluster: node kills 3"], ["only 3 node kills"]
    lines, ok = summary(finish)
    assert not ok and "cluster: node kills 3" in lines and "RESULT: FAIL" in lines[-1]


# --- make soak-cluster on a machine without the tools -------------------------------------------


def test_soak_cluster_without_the_tools_says_skipped_and_passes(tmp_path):
    # A copy of the script in a clone of its own, beside no ../shared/tools; no tool on PATH.
    (tmp_path / "clone" / "bench").mkdir(parents=True)
    script = tmp_path / "clone" / "bench" / "soak-cluster"
    script.write_text((ROOT / "bench" / "soak-cluster").read_text())
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_SERVER": str(tmp_path / "no-redis-server"),
        "POSTGRES_BIN": str(tmp_path),
        "HOME": os.environ.get("HOME", "/root"),
    }
    done = subprocess.run(
        ["/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("soak-cluster: skipped, missing:"), done.stdout
    for what in ("gocaves", "redis-server", "PostgreSQL"):
        assert what in done.stdout
