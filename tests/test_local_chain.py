"""`make run`'s local regtest node (bitcoinkeys/local_chain.py, bin/serve).

Without bitcoind, bin/serve serves the site as before and says in one line why the chain is off;
with it, the node runs on loopback with a generated password kept in a 0600 bitcoin.conf, and a
restart reuses the datadir, its password and its wallets. The real-node tests skip without
bitcoind (BITCOIND, ../shared/tools/ or PATH).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bitcoinkeys import local_chain
from bitcoinkeys.regtest_node import NodeError, find_binary, free_port, rpc_call

ROOT = Path(__file__).resolve().parent.parent
needs_bitcoind = pytest.mark.skipif(
    find_binary("bitcoind") is None,
    reason="bitcoind not found: set BITCOIND=/path/to/bitcoind, or put it in ../shared/tools/",
)


def serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    full_env = {
        **keep,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "BIND": f"127.0.0.1:{port}",
        "WEB_WORKERS": "1",
        "DOCSTORE_PATH": str(tmp_path / "ds.sqlite3"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CACHE_URL": "locmemcache://",
        "LOCAL_CHAIN_DATADIR": str(tmp_path / "regtest"),
        **env,
    }
    process = subprocess.Popen(
        ["bin/serve"], cwd=ROOT, env=full_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


def wait_for_line(process: subprocess.Popen, needle: str, limit: int = 200) -> str:
    seen = []
    for _ in range(limit):
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not in bin/serve's output:\n{''.join(seen)}")


def wait_for_site(url: str) -> int:
    for _ in range(150):
        try:
            with urllib.request.urlopen(f"{url}/", timeout=2) as response:
                return response.status
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the site did not answer")


def stop_serve(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    try:
        process.wait(60)
    finally:
        process.stderr.close()


def test_serve_without_bitcoind_serves_the_site_and_says_why_the_chain_is_off(tmp_path):
    process, url = serve(tmp_path, BITCOIND=str(tmp_path / "no-such-bitcoind"))
    try:
        line = wait_for_line(process, "local chain off")
        assert "bitcoind not found" in line and "BITCOIND=" in line
        assert wait_for_site(url) == 200
    finally:
        stop_serve(process)
    assert not (tmp_path / "regtest").exists()
    assert not (tmp_path / "local-chain.env").exists()


def test_local_chain_off_is_an_opt_out_even_with_bitcoind(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_CHAIN", "off")
    result = subprocess.run(
        [sys.executable, "-m", "bitcoinkeys.local_chain", "start"], cwd=ROOT,
        env={**os.environ, "LOCAL_CHAIN_DATADIR": str(tmp_path / "regtest")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == local_chain.OFF
    assert result.stdout == ""
    assert "local chain off: LOCAL_CHAIN=off" in result.stderr
    assert not (tmp_path / "regtest").exists()


@needs_bitcoind
def test_the_node_has_a_generated_password_and_a_restart_reuses_its_datadir(tmp_path):
    datadir, env_file = tmp_path / "regtest", tmp_path / "local-chain.env"
    node, env = local_chain.start(datadir, env_file)
    try:
        conf = datadir / "bitcoin.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert len(node.password) == 32 and f"rpcpassword={node.password}" in conf.read_text()
        assert env["BITCOIND_URL"] == f"http://adspace:{node.password}@127.0.0.1:{node.port}"
        assert f"BITCOIND_URL={env['BITCOIND_URL']}" in env_file.read_text()
        assert rpc_call(env["BITCOIND_URL"], "getblockchaininfo")["chain"] == "regtest"
        with pytest.raises(NodeError, match="401"):
            rpc_call(node.url_with("not-the-password"), "getblockcount")
        network = rpc_call(env["BITCOIND_URL"], "getnetworkinfo")
        assert network["connections"] == 0 and network["localaddresses"] == []  # P2P off
        payouts = rpc_call(env["BITCOIND_URL"], "getbalance", wallet=env["BITCOIND_PAYOUT_WALLET"])
        assert payouts >= local_chain.PAYOUT_FLOAT_BTC / 2
        height = rpc_call(env["BITCOIND_URL"], "getblockcount")
        pid = int(env["LOCAL_CHAIN_PID"])
    finally:
        local_chain.stop(datadir, env_file)
    assert not env_file.exists()
    with pytest.raises(OSError):
        os.kill(pid, 0)

    again, env2 = local_chain.start(datadir, env_file)
    try:
        assert again.password == node.password
        assert env2["LOCAL_CHAIN_XPUB"] == env["LOCAL_CHAIN_XPUB"]
        assert rpc_call(env2["BITCOIND_URL"], "getblockcount") == height
        wallets = set(rpc_call(env2["BITCOIND_URL"], "listwallets"))
        assert {"miner", local_chain.KEYS_WALLET, env["BITCOIND_WALLET"]} <= wallets
    finally:
        local_chain.stop(datadir, env_file)


@needs_bitcoind
def test_serve_with_bitcoind_starts_the_node_and_stops_it_with_the_site(tmp_path):
    process, url = serve(tmp_path, BITCOIND=find_binary("bitcoind"))
    try:
        line = wait_for_line(process, "local chain: regtest bitcoind")
        assert "developer faucet on" in line
        assert wait_for_site(url) == 200
        env = dict(
            row.split("=", 1)
            for row in (tmp_path / "local-chain.env").read_text().splitlines()
            if "=" in row and not row.startswith("#")
        )
        assert rpc_call(env["BITCOIND_URL"], "getblockchaininfo")["chain"] == "regtest"
        pid = int(env["LOCAL_CHAIN_PID"])
    finally:
        stop_serve(process)
    with pytest.raises(OSError):
        os.kill(pid, 0)  # stopped together with gunicorn and the worker
    assert not (tmp_path / "local-chain.env").exists()


def test_dev_commands_read_the_local_chain_settings_only_while_its_node_runs(tmp_path, monkeypatch):
    from config import environment

    env_file = tmp_path / "local-chain.env"
    monkeypatch.setattr(environment, "LOCAL_CHAIN_ENV_FILE", env_file)
    monkeypatch.setattr(environment, "read_env_file", lambda: None)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    monkeypatch.delenv("BITCOIND_URL", raising=False)
    monkeypatch.delenv("LOCAL_CHAIN", raising=False)
    monkeypatch.delenv("LOCAL_CHAIN_PID", raising=False)  # monkeypatch restores both at the end
    dead = subprocess.Popen(["true"])
    dead.wait()
    env_file.write_text(f"BITCOIND_URL=http://a:b@127.0.0.1:1\nLOCAL_CHAIN_PID={dead.pid}\n")
    environment.choose_settings()
    assert "BITCOIND_URL" not in os.environ  # a killed run's leftover file is ignored
    env_file.write_text(f"BITCOIND_URL=http://a:b@127.0.0.1:1\nLOCAL_CHAIN_PID={os.getpid()}\n")
    environment.choose_settings()
    assert os.environ["BITCOIND_URL"] == "http://a:b@127.0.0.1:1"
