"""A throwaway Bitcoin Core node in regtest, on loopback: for the test suite (and a dev server).

`RegtestNode` starts `bitcoind -regtest` with its own datadir (a fresh temporary folder unless
one is given), P2P off (`listen=0`, no seeds), RPC bound to 127.0.0.1 on a free port with a
random password, and deletes everything it created when stopped. A datadir that is given is
kept (`make run`'s node under var/, see bitcoinkeys.local_chain): its bitcoin.conf (mode 0600)
keeps the generated password, so a restart reuses it with the wallets. Nothing here is used by the
site itself: it only talks to the node the way an operator would (`bitcoin-cli`'s RPCs).

    node = RegtestNode(find_binary("bitcoind")).start()
    node.ensure_miner()                 # a "miner" wallet with mature coins
    url = node.url                      # BITCOIND_URL for the site
    node.rpc("getblockcount"); node.rpc("getbalance", wallet="miner")
    node.stop()

`find_binary` looks where the project's tools live: an env var (`BITCOIND`, `BITCOIN_CLI`), then
`../shared/tools/` beside the repository, then PATH.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VARS = {"bitcoind": "BITCOIND", "bitcoin-cli": "BITCOIN_CLI"}
RPC_USER = "adspace"
MINER = "miner"
# Coinbase outputs can be spent after 100 confirmations.
COINBASE_MATURITY = 100
RPC_IN_WARMUP = -28


class NodeError(Exception):
    """The node could not be started, or an RPC failed (`code` is Core's error code)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


def find_binary(name: str = "bitcoind") -> str | None:
    """The path of `name` (bitcoind or bitcoin-cli): env var, ../shared/tools, PATH; or None."""
    from_env = os.environ.get(ENV_VARS.get(name, name.upper().replace("-", "_")))
    if from_env:
        return from_env if os.access(from_env, os.X_OK) else None
    shared = REPO_ROOT.parent / "shared" / "tools" / name
    if shared.is_file() and os.access(shared, os.X_OK):
        return str(shared)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegtestNode:
    def __init__(self, bitcoind: str, datadir: str | Path | None = None, extra: tuple = ()):
        self.bitcoind = bitcoind
        self._own_datadir = datadir is None
        self.datadir = Path(datadir) if datadir else Path(tempfile.mkdtemp(prefix="regtest-"))
        self.extra = tuple(extra)
        self.password = self._kept_password() or secrets.token_hex(16)
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def conf_path(self) -> Path:
        return self.datadir / "bitcoin.conf"

    def _kept_password(self) -> str | None:
        """The password of a kept datadir's bitcoin.conf (None for a new one)."""
        if self._own_datadir or not self.conf_path.is_file():
            return None
        for line in self.conf_path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "rpcpassword" and value.strip():
                return value.strip()
        return None

    # -- lifecycle --

    @property
    def url(self) -> str:
        """BITCOIND_URL for this node."""
        return self.url_with(self.password)

    def url_with(self, password: str) -> str:
        return f"http://{RPC_USER}:{password}@127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            "regtest=1",
            "server=1",
            "listen=0",
            "dnsseed=0",
            "fixedseeds=0",
            "discover=0",
            "upnp=0",
            "natpmp=0",
            "printtoconsole=0",
            "[regtest]",
            "rpcbind=127.0.0.1",
            "rpcallowip=127.0.0.1",
            f"rpcport={self.port}",
            f"rpcuser={RPC_USER}",
            f"rpcpassword={self.password}",
            "fallbackfee=0.0002",
            # Tests sweep wallets in parallel threads; the default is 4 RPC threads.
            "rpcthreads=8",
            *self.extra,
        ]
        # 0600 from the first byte: the file holds the RPC password.
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.conf_path, 0o600)

    def start(self, timeout: float = 60, detach: bool = False) -> RegtestNode:
        """Start bitcoind and wait until its RPC answers (warm-up included).

        `detach`: the node outlives this Python process (its own session, stderr to
        `<datadir>/bitcoind.stderr`); whoever started it stops it (local_chain.stop_node)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.datadir, 0o700)
        last = ""
        for _ in range(3):  # the free port may be taken between our probe and bitcoind's bind
            self.port = free_port()
            self._write_conf()
            stderr = (
                open(self.datadir / "bitcoind.stderr", "w+b")  # noqa: SIM115 - closed by _terminate
                if detach
                else subprocess.PIPE
            )
            self.process = subprocess.Popen(
                [self.bitcoind, f"-datadir={self.datadir}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=detach,
            )
            if detach:
                self.process.stderr = stderr
            try:
                self._wait_ready(timeout)
                return self
            except NodeError as exc:
                last = str(exc)
                self._terminate()
        self.cleanup()
        raise NodeError(f"bitcoind did not start: {last}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self.process.stderr.seekable():  # detached: the log file
                    self.process.stderr.seek(0)
                err = self.process.stderr.read().decode(errors="replace").strip()
                raise NodeError(f"exited with {self.process.returncode}: {err[-500:]}")
            try:
                self.rpc("getblockchaininfo", timeout=2)
                return
            except NodeError as exc:
                if exc.code not in (None, RPC_IN_WARMUP):
                    raise
            except OSError:
                pass
            time.sleep(0.1)
        raise NodeError(f"no RPC answer within {timeout} s")

    def _terminate(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # bitcoind shuts down cleanly on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def stop(self) -> None:
        """Stop the node and delete the datadir if this object created it."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.rpc("stop", timeout=10)
                self.process.wait(30)
            except (NodeError, OSError, subprocess.TimeoutExpired):
                pass
        self._terminate()
        self.cleanup()

    def cleanup(self) -> None:
        if self._own_datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> RegtestNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- RPC --

    def rpc(self, method: str, *params: Any, wallet: str | None = None, timeout: float = 60) -> Any:
        """One JSON-RPC call; amounts come back as Decimal. Raises NodeError with Core's code."""
        return rpc_call(self.url, method, *params, wallet=wallet, timeout=timeout)

    def detach(self) -> None:
        """Forget the process without stopping it (it was started with detach=True)."""
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    # -- conveniences for tests and a developer faucet --

    def create_wallet(self, name: str, watch_only: bool = False) -> str:
        self.rpc("createwallet", name, watch_only, watch_only)
        return name

    def ensure_miner(self) -> str:
        """A `miner` wallet holding mature coins (101 blocks on a fresh chain)."""
        if MINER not in self.rpc("listwallets"):
            try:
                self.rpc("loadwallet", MINER)
            except NodeError:
                self.create_wallet(MINER)
        if self.rpc("getbalance", wallet=MINER) < 50:
            self.mine(COINBASE_MATURITY + 1)
        return MINER

    def new_address(self, wallet: str = MINER) -> str:
        return self.rpc("getnewaddress", wallet=wallet)

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        """Mine `n` blocks (to the miner wallet unless `address`); returns their hashes."""
        hashes = self.rpc("generatetoaddress", n, address or self.new_address())
        self.sync()
        return hashes

    def sync(self) -> None:
        """Wait until every wallet has seen what the node has (mempool and blocks)."""
        self.rpc("syncwithvalidationinterfacequeue")

    def pay(self, address: str, btc: Decimal | str, replaceable: bool = True) -> str:
        """The miner pays `btc` to `address`; returns the txid (in the mempool, wallets synced)."""
        txid = self.rpc(
            "sendtoaddress", address, str(btc), "", "", False, replaceable, wallet=MINER
        )
        self.sync()
        return txid


def rpc_call(
    url: str, method: str, *params: Any, wallet: str | None = None, timeout: float = 60
) -> Any:
    """One JSON-RPC call to the node at `url` (http://user:password@127.0.0.1:port); amounts
    come back as Decimal. Raises NodeError with Core's code, OSError when nothing answers."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise NodeError("the node URL must look like http://user:password@host:port")
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    path = "/" if wallet is None else f"/wallet/{urllib.parse.quote(wallet, safe='')}"
    body = json.dumps(
        {"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)},
        default=_json_default,
    )
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            path,
            body,
            {"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status == 401:
        raise NodeError("HTTP 401: bad RPC credentials")
    try:
        answer = json.loads(data, parse_float=Decimal)
    except ValueError:
        raise NodeError(f"HTTP {response.status}: {data[:200]!r}") from None
    error = answer.get("error")
    if error:
        raise NodeError(f"{method}: {error.get('message')}", error.get("code"))
    return answer["result"]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)
