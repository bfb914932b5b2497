"""`make run`'s own Bitcoin Core node: regtest, on loopback, kept under var/ between runs.

    python -m bitcoinkeys.local_chain start   # prints `export ...` lines for the shell; exit 3: off
    python -m bitcoinkeys.local_chain stop

`start` finds bitcoind (BITCOIND, ../shared/tools/bitcoind, PATH) unless LOCAL_CHAIN=off, starts
it on var/regtest (RPC on a free loopback port, the password generated once and kept in the
datadir's bitcoin.conf, mode 0600; P2P off), makes sure its wallets exist (a `miner` with mature
coins for the developer faucet, a keys wallet whose tpub supplies the deposit addresses, the
watch-only deposit wallet and the payout wallet, funded), then writes the site's settings to
var/local-chain.env (read by development runs in other terminals, see config/environment.py) and
prints them. bin/serve evaluates them, so gunicorn and the worker both see the node, and stops
the node together with them. Nothing is downloaded and nothing listens beyond 127.0.0.1.

`ensure_deposit_keys` (run by `init_docstore` when LOCAL_CHAIN_XPUB is set) imports whole ranges
derived from the keys wallet's tpub until the pool has addresses to deal.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from .regtest_node import MINER, REPO_ROOT, NodeError, RegtestNode, find_binary

DATADIR = REPO_ROOT / "var" / "regtest"
ENV_FILE = REPO_ROOT / "var" / "local-chain.env"
KEYS_WALLET = "adspace-keys"
OFF = 3  # exit status of `start` when the local chain is off (not an error)
# The payout wallet is topped up to this at start, so process_withdrawals can pay.
PAYOUT_FLOAT_BTC = Decimal(10)
# Ranges of deposit addresses kept ready in the pool (each KEYPOOL_PAGE_SIZE addresses).
READY_RANGES = 5
MAX_RANGES = 10_000
NO_BITCOIND = (
    "bitcoind not found (set BITCOIND=/path/to/bitcoind, or put Bitcoin Core's bitcoind in "
    "../shared/tools/ or on PATH)"
)


class LocalChainOff(Exception):
    """The local chain does not run; the message says why."""


def why_off(environ: dict | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    if environ.get("LOCAL_CHAIN", "").lower() in ("off", "0", "false"):
        return "LOCAL_CHAIN=off"
    if find_binary("bitcoind") is None:
        return NO_BITCOIND
    return None


def _wallet(node: RegtestNode, name: str, watch_only: bool = False) -> None:
    """Load `name`, creating it the first time; either way it loads again after a restart."""
    if name in node.rpc("listwallets"):
        return
    try:
        node.rpc("loadwallet", name, True)
    except NodeError:
        # createwallet name disable_private_keys blank passphrase avoid_reuse descriptors
        # load_on_startup
        node.rpc("createwallet", name, watch_only, watch_only, "", False, True, True)


def keys_xpub(node: RegtestNode, wallet: str = KEYS_WALLET) -> str:
    """The account tpub of the keys wallet's receive descriptor: wpkh([fp/84h/1h/0h]tpub/0/*)."""
    for entry in node.rpc("listdescriptors", wallet=wallet)["descriptors"]:
        desc = entry["desc"]
        if desc.startswith("wpkh(") and not entry.get("internal") and "/0/*" in desc:
            return desc.split("]", 1)[1].split("/0/*", 1)[0]
    raise NodeError(f"wallet {wallet} has no wpkh receive descriptor")


def stop_leftover(datadir: Path) -> None:
    """Stop a node a killed run left on `datadir` (it holds the datadir's lock)."""
    pid = _node_pid(datadir)
    if pid is not None:
        _terminate(pid)


def _node_pid(datadir: Path) -> int | None:
    try:
        pid = int((datadir / "regtest" / "bitcoind.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # Only a bitcoind on this very datadir is ours to stop (pids are reused).
    return pid if f"-datadir={datadir}".encode() in cmdline else None


def _terminate(pid: int, timeout: float = 60) -> None:
    try:
        os.kill(pid, signal.SIGTERM)  # bitcoind flushes its wallets and exits
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our own child (a test started it), so it is not a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(datadir: Path = DATADIR, env_file: Path | None = ENV_FILE) -> tuple[RegtestNode, dict]:
    """Start (or restart on the kept datadir) the node; returns it and the site's settings."""
    reason = why_off()
    if reason:
        raise LocalChainOff(reason)
    datadir = Path(datadir).resolve()
    stop_leftover(datadir)
    node = RegtestNode(find_binary("bitcoind"), datadir=datadir)
    node.start(detach=True)
    try:
        _wallet(node, MINER)
        node.ensure_miner()
        _wallet(node, KEYS_WALLET)
        deposits = os.environ.get("BITCOIND_WALLET") or "adspace-deposits"
        payouts = os.environ.get("BITCOIND_PAYOUT_WALLET") or "adspace-payouts"
        _wallet(node, deposits, watch_only=True)
        _wallet(node, payouts)
        if node.rpc("getbalance", wallet=payouts) < PAYOUT_FLOAT_BTC / 2:
            node.rpc(
                "sendtoaddress", node.new_address(payouts), str(PAYOUT_FLOAT_BTC), wallet=MINER
            )
            node.mine(1)
        env = {
            "CHAIN_BACKEND": "bitcoind",
            "BITCOIN_NETWORK": "regtest",
            "BITCOIND_URL": node.url,
            "BITCOIND_WALLET": deposits,
            "BITCOIND_PAYOUT_WALLET": payouts,
            "DEV_FAUCET": "true",
            "LOCAL_CHAIN_XPUB": keys_xpub(node),
            "LOCAL_CHAIN_PID": str(node.process.pid),
        }
    except BaseException:
        node.stop()
        raise
    if env_file is not None:
        write_env_file(env_file, env)
    node.detach()
    return node, env


def write_env_file(path: Path, env: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w") as f:
        f.write(
            "# Written by bin/serve while its local regtest node runs; removed when it stops.\n"
        )
        f.writelines(f"{key}={value}\n" for key, value in env.items())


def stop(datadir: Path = DATADIR, env_file: Path | None = ENV_FILE) -> None:
    if env_file is not None:
        env_file.unlink(missing_ok=True)
    stop_leftover(Path(datadir).resolve())


def ensure_deposit_keys(store, clock, xpub: str, say: Callable[[str], None] = print) -> int:
    """Import whole ranges derived from `xpub` (m/0/i) until READY_RANGES are free on the huge
    list. Ranges already imported are skipped (their first address is marked imported)."""
    from django.conf import settings

    from . import gateway as g
    from . import importer
    from .addresses import iter_derived_addresses
    from .pool import pool_levels

    network, size = settings.BITCOIN_NETWORK, settings.KEYPOOL_PAGE_SIZE
    missing = READY_RANGES - pool_levels(store)["freeAddressesOnList"] // size
    imported = 0
    r = 0
    while missing > 0 and r < MAX_RANGES:
        (_, first), *_ = iter_derived_addresses(xpub, r * size, r * size + 1, None, network)
        if store.get_multi([g.imported_key(first)]):
            r += 1
            continue
        start = r * size
        end = start + missing * size
        result = importer.import_addresses(
            store,
            clock,
            iter_derived_addresses(xpub, start, end, None, network),
            network,
            unit="index",
            say=lambda message, level: None,
        )
        imported += result.imported
        say(f"local chain: imported {result.imported} deposit addresses (m/0/{start}-{end - 1})")
        missing -= result.imported // size
        r = end // size
        if not result.imported:
            break
    return imported


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    # LOCAL_CHAIN_DATADIR: another datadir (tests); its settings go to local-chain.env beside it,
    # which development runs read only for the default one (config/environment.py).
    datadir = Path(os.environ.get("LOCAL_CHAIN_DATADIR") or DATADIR).resolve()
    env_file = datadir.parent / ENV_FILE.name
    if command == "start":
        try:
            node, env = start(datadir, env_file)
        except LocalChainOff as exc:
            print(f"local chain off: {exc}; deposits cannot be detected.", file=sys.stderr)
            return OFF
        except (NodeError, OSError) as exc:
            print(f"local chain: bitcoind did not start: {exc}", file=sys.stderr)
            return 1
        print(
            f"local chain: regtest bitcoind (pid {env['LOCAL_CHAIN_PID']}) on "
            f"127.0.0.1:{node.port}, datadir {node.datadir}; developer faucet on",
            file=sys.stderr,
        )
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    if command == "stop":
        stop(datadir, env_file)
        return 0
    print("usage: python -m bitcoinkeys.local_chain start|stop", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
