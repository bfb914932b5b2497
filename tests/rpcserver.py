"""A small stand-in for bitcoind's JSON-RPC server, for the bitcoind chain backend's tests.

It speaks the protocol the real node speaks over HTTP on loopback: POST of {"method", "params",
"id"} with HTTP basic auth, `/wallet/<name>` paths for wallet RPCs, {"result", "error", "id"}
answers, Core's error objects with HTTP 500 (404 for an unknown method), HTTP 401 with an empty
body for bad credentials, HTTP/1.1 keep-alive. Amounts go out as JSON numbers with 8 decimals,
as Core writes them. Only the RPCs bitcoinkeys/chain.py uses are implemented.

The chain is scripted and deterministic (txids and block hashes are hashes of a counter):
`pay` (unconfirmed), `mine`, `bump_fee` (same output, new txid), `double_spend` (the payment is
displaced by one paying elsewhere), `reorg`. Faults: `unauthorized`, `garbage` (a body to answer
with), `delay` (sleep before answering), `close_idle` (close each connection after answering,
without saying so, as a node dropping idle keep-alive connections does), `drop_after` (apply a
method, then close without answering), `fail(method, code, message)`, `warming_up` (every RPC
answers Core's -28 "Loading block index..." as a node still starting does), `chain` (the network
getblockchaininfo reports).

Confirmations follow Core: mined -> depth; in the mempool -> 0; displaced by a transaction that
is not mined yet -> 0 (untrusted, with walletconflicts when the wallet knows the other one);
displaced by a mined one -> minus that one's depth. As in Core, a receive that is conflicted
(negative confirmations) drops out of every listing and of gettransaction's details; only
listsinceblock's "removed" still shows it. A transaction displaced in the mempool lists the other
one in "mempoolconflicts" (and in "walletconflicts" only when the wallet knows it).

tests/test_regtest_rpc_parity.py runs the same scenarios here and on a real node and compares what
the product reads; this stand-in stays for the faults a real node cannot be made to show.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from embit.descriptor.checksum import add_checksum

from bitcoinkeys.addresses import AddressError, validate_address

SATS = 100_000_000
EXTERNAL = "external-address"
FEE = 1410


class RPCError(Exception):
    def __init__(self, code: int, message: str, status: int = 500):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Amount:
    """A BTC amount in sats, written out as a JSON number with 8 decimals."""

    sats: int


@dataclass
class Tx:
    txid: str
    outputs: list[tuple[str, int]]
    time: int
    block: str | None = None
    displaced_by: str | None = None
    sender: str | None = None  # the wallet that sent it (sendtoaddress)
    comment: str = ""
    fee: int = 0


@dataclass
class Block:
    hash: str
    height: int
    parent: str | None
    txids: list[str]
    time: int


@dataclass
class Wallet:
    name: str
    watch_only: bool
    addresses: dict[str, str] = field(default_factory=dict)  # address -> label
    descriptors: list[dict] = field(default_factory=list)
    balance: int = 0
    options: tuple = ()


def _amount_sats(amount) -> int:
    """An RPC amount in BTC (a string or number, at most 8 decimals) as sats, as Core parses it."""
    if isinstance(amount, bool) or not isinstance(amount, str | int | Decimal):
        raise RPCError(-3, "Amount is not a number or string")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise RPCError(-3, "Invalid amount") from None
    if value.as_tuple().exponent < -8:
        raise RPCError(-3, "Invalid amount")
    return int(value * SATS)


class FakeBitcoind:
    def __init__(self, user: str = "rpcuser", password: str = "rpc-pass-1"):  # noqa: S107
        self.user, self.password = user, password
        self.lock = threading.RLock()
        self.counter = 0
        self.time = 1_700_000_000
        genesis = Block(self._hash("block"), 0, None, [], self.time)
        self.blocks: dict[str, Block] = {genesis.hash: genesis}
        self.main: list[str] = [genesis.hash]
        self.txs: dict[str, Tx] = {}
        self.wallets: dict[str, Wallet] = {}
        self.loaded: set[str] = set()
        # Faults and observations.
        self.unauthorized = False
        self.warming_up = False
        self.chain = "regtest"
        self.garbage: bytes | None = None
        self.delay = 0.0
        self.close_idle = False
        self.drop_after: set[str] = set()
        self.failures: dict[str, list[tuple[int, str]]] = {}
        self.calls: list[tuple[str | None, str, list]] = []
        self.errors: list[BaseException] = []  # exceptions inside the stand-in itself
        self.connections = 0
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.node = self  # type: ignore[attr-defined]
        # A short poll interval: shutdown() waits for it, and every test stops a server.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle --

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}"

    def start(self) -> FakeBitcoind:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server.server_close()

    def __enter__(self) -> FakeBitcoind:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- scripting the chain --

    def _hash(self, kind: str) -> str:
        self.counter += 1
        return hashlib.sha256(f"{kind}{self.counter}".encode()).hexdigest()

    def _tick(self) -> int:
        self.time += 1
        return self.time

    def create_wallet(self, name: str, watch_only: bool = True, balance: int = 0) -> Wallet:
        with self.lock:
            wallet = Wallet(name, watch_only, balance=balance)
            self.wallets[name] = wallet
            self.loaded.add(name)
            return wallet

    def unload(self, name: str) -> None:
        with self.lock:
            self.loaded.discard(name)

    def watch(self, wallet: str, addresses: list[str]) -> None:
        """Import addresses without an RPC (test set-up)."""
        with self.lock:
            for address in addresses:
                self.wallets[wallet].addresses[address] = address

    def pay(self, address: str, sats: int, vout: int = 0) -> str:
        """Someone pays `sats` to `address` (unconfirmed); returns "txid:vout"."""
        return self.pay_many([(address, sats)], first_vout=vout)[0]

    def pay_many(self, outputs: list[tuple[str, int]], first_vout: int = 0) -> list[str]:
        with self.lock:
            padded = [(EXTERNAL, 12345)] * first_vout + list(outputs)
            tx = Tx(self._hash("tx"), padded, self._tick())
            self.txs[tx.txid] = tx
            return [f"{tx.txid}:{first_vout + i}" for i in range(len(outputs))]

    def mine(self, n: int = 1) -> list[str]:
        """Mine `n` blocks; the first takes every transaction in the mempool."""
        with self.lock:
            hashes = []
            for _ in range(n):
                txids = [t.txid for t in self.txs.values() if self._in_mempool(t)]
                block = Block(self._hash("block"), len(self.main), self.main[-1], txids, 0)
                block.time = self._tick()
                self.blocks[block.hash] = block
                self.main.append(block.hash)
                for txid in txids:
                    self.txs[txid].block = block.hash
                hashes.append(block.hash)
            return hashes

    def bump_fee(self, outpoint: str) -> str:
        """The sender replaces the unconfirmed payment (BIP-125): same outputs, new txid."""
        with self.lock:
            old = self._unconfirmed(outpoint)
            new = Tx(self._hash("tx"), list(old.outputs), self._tick())
            self.txs[new.txid] = new
            old.displaced_by = new.txid
            return f"{new.txid}:{outpoint.split(':')[1]}"

    def double_spend(self, outpoint: str) -> str:
        """The sender spends the same coins to someone else; returns the other txid."""
        with self.lock:
            old = self._unconfirmed(outpoint)
            other = Tx(self._hash("tx"), [(EXTERNAL, sum(s for _, s in old.outputs))], self._tick())
            self.txs[other.txid] = other
            old.displaced_by = other.txid
            return other.txid

    def reorg(self, depth: int) -> list[str]:
        """Remove the top `depth` blocks: their transactions are unconfirmed again."""
        with self.lock:
            assert 0 < depth < len(self.main), "cannot reorg the genesis block away"
            removed = self.main[-depth:]
            del self.main[-depth:]
            for block_hash in removed:
                for txid in self.blocks[block_hash].txids:
                    self.txs[txid].block = None
            return removed

    def fail(self, method: str, code: int, message: str, times: int = 1) -> None:
        with self.lock:
            self.failures.setdefault(method, []).extend([(code, message)] * times)

    def _unconfirmed(self, outpoint: str) -> Tx:
        tx = self.txs[outpoint.split(":")[0]]
        assert tx.block is None and tx.displaced_by is None, "only a mempool tx can be replaced"
        return tx

    # -- chain state, as Core reports it --

    @property
    def tip(self) -> int:
        return len(self.main) - 1

    def _height(self, block_hash: str) -> int | None:
        block = self.blocks.get(block_hash)
        if block is None or block.height >= len(self.main) or self.main[block.height] != block_hash:
            return None
        return block.height

    def _in_mempool(self, tx: Tx) -> bool:
        return tx.block is None and tx.displaced_by is None

    def confirmations(self, tx: Tx) -> int:
        if tx.block is not None:
            height = self._height(tx.block)
            if height is not None:
                return self.tip - height + 1
        if tx.displaced_by is not None:
            other = self.confirmations(self.txs[tx.displaced_by])
            return -other if other > 0 else 0
        return 0

    def _wallet_txs(self, wallet: Wallet) -> list[Tx]:
        return [
            tx
            for tx in self.txs.values()
            if tx.sender == wallet.name or any(a in wallet.addresses for a, _ in tx.outputs)
        ]

    def _entries(self, wallet: Wallet, tx: Tx, min_depth: int | None = 0) -> list[dict]:
        """Core's ListTransactions: receives below `min_depth` confirmations (conflicted ones,
        for every listing but listsinceblock's "removed") are left out; sends never are."""
        confirmations = self.confirmations(tx)
        common: dict[str, Any] = {"confirmations": confirmations}
        if tx.block is not None and self._height(tx.block) is not None:
            block = self.blocks[tx.block]
            common.update(
                blockhash=block.hash,
                blockheight=block.height,
                blockindex=block.txids.index(tx.txid),
                blocktime=block.time,
            )
        elif confirmations == 0:
            common["trusted"] = False
        conflicts = [
            t.txid
            for t in self._wallet_txs(wallet)
            if t.txid != tx.txid and (t.displaced_by == tx.txid or tx.displaced_by == t.txid)
        ]
        displacer = self.txs.get(tx.displaced_by) if tx.displaced_by else None
        in_mempool = displacer is not None and confirmations == 0 and displacer.block is None
        common.update(
            txid=tx.txid,
            wtxid=tx.txid,
            walletconflicts=conflicts,
            mempoolconflicts=[displacer.txid] if in_mempool else [],
            time=tx.time,
            timereceived=tx.time,
            **{"bip125-replaceable": "yes" if confirmations == 0 else "no"},
        )
        entries = []
        for vout, (address, sats) in enumerate(tx.outputs):
            if tx.sender == wallet.name and address != f"change-{wallet.name}":
                entries.append(
                    {
                        "address": address,
                        "category": "send",
                        "amount": Amount(-sats),
                        "vout": vout,
                        "fee": Amount(-tx.fee),
                        "abandoned": False,
                        "comment": tx.comment,
                        **common,
                    }
                )
            elif address in wallet.addresses:
                if min_depth is not None and confirmations < min_depth:
                    continue
                entry = {
                    "address": address,
                    "category": "receive",
                    "amount": Amount(sats),
                    "label": wallet.addresses[address],
                    "vout": vout,
                    "abandoned": False,
                    **common,
                }
                if wallet.watch_only:
                    entry = {"involvesWatchonly": True, **entry}
                entries.append(entry)
        return entries

    # -- RPC dispatch --

    def handle(self, path: str, body: bytes) -> tuple[int, dict]:
        request_id = None
        try:
            try:
                request = json.loads(body, parse_float=Decimal)
            except ValueError:
                raise RPCError(-32700, "Parse error") from None
            if not isinstance(request, dict):
                raise RPCError(-32600, "Invalid Request object")
            request_id = request.get("id")
            method, params = request.get("method"), request.get("params") or []
            if not isinstance(method, str) or not isinstance(params, list):
                raise RPCError(-32600, "Invalid Request object")
            wallet_name = None
            if path.startswith("/wallet/"):
                wallet_name = urllib.parse.unquote(path[len("/wallet/") :])
            with self.lock:
                self.calls.append((wallet_name, method, params))
                if self.warming_up:
                    raise RPCError(-28, "Loading block index…")
                queued = self.failures.get(method)
                if queued:
                    code, message = queued.pop(0)
                    raise RPCError(code, message)
                result = self._dispatch(wallet_name, method, params)
            return 200, {"result": result, "error": None, "id": request_id}
        except RPCError as exc:
            error = {"code": exc.code, "message": exc.message}
            return exc.status, {"result": None, "error": error, "id": request_id}
        except Exception as exc:  # a bug in this stand-in: answer like Core, and let tests see it
            self.errors.append(exc)
            error = {"code": -32603, "message": f"Internal error: {exc!r}"}
            return 500, {"result": None, "error": error, "id": request_id}

    def _dispatch(self, wallet_name: str | None, method: str, params: list) -> Any:
        node_methods = {
            "createwallet": self.rpc_createwallet,
            "loadwallet": self.rpc_loadwallet,
            "getblockchaininfo": self.rpc_getblockchaininfo,
        }
        if method in node_methods:
            return node_methods[method](*params)
        wallet_methods = {
            "importdescriptors": self.rpc_importdescriptors,
            "listsinceblock": self.rpc_listsinceblock,
            "listreceivedbyaddress": self.rpc_listreceivedbyaddress,
            "gettransaction": self.rpc_gettransaction,
            "listtransactions": self.rpc_listtransactions,
            "sendtoaddress": self.rpc_sendtoaddress,
            "sendmany": self.rpc_sendmany,
            "getbalances": self.rpc_getbalances,
            "getwalletinfo": self.rpc_getwalletinfo,
        }
        if method not in wallet_methods:
            raise RPCError(-32601, "Method not found", status=404)
        if wallet_name is None:
            if len(self.loaded) != 1:
                raise RPCError(
                    -19,
                    "Wallet file not specified (must request wallet RPC through "
                    "/wallet/<filename> uri-path).",
                )
            wallet_name = next(iter(self.loaded))
        if wallet_name not in self.loaded:
            raise RPCError(-18, "Requested wallet does not exist or is not loaded")
        try:
            return wallet_methods[method](self.wallets[wallet_name], *params)
        except TypeError:
            raise RPCError(-1, f"wrong parameters for {method}") from None

    def rpc_createwallet(
        self, name, disable_private_keys=False, blank=False, passphrase="", avoid_reuse=False,
        descriptors=True, load_on_startup=None,
    ):  # fmt: skip
        if name in self.wallets:
            raise RPCError(
                -4,
                f"Wallet file verification failed. Failed to create database path "
                f"'/data/wallets/{name}'. Database already exists.",
            )
        wallet = self.create_wallet(name, watch_only=bool(disable_private_keys))
        wallet.options = (disable_private_keys, blank, passphrase, avoid_reuse, descriptors)
        return {"name": name}

    def rpc_loadwallet(self, name, load_on_startup=None):
        if name not in self.wallets:
            raise RPCError(
                -18,
                f"Wallet file verification failed. Failed to load database path "
                f"'/data/wallets/{name}'. Path does not exist.",
            )
        if name in self.loaded:
            raise RPCError(
                -35, f'Wallet file verification failed. Wallet "{name}" is already loaded.'
            )
        self.loaded.add(name)
        return {"name": name}

    def rpc_getblockchaininfo(self):
        return {
            "chain": self.chain,
            "blocks": self.tip,
            "headers": self.tip,
            "bestblockhash": self.main[-1],
            "initialblockdownload": False,
            "warnings": [],
        }

    def rpc_getwalletinfo(self, wallet: Wallet):
        return {
            "walletname": wallet.name,
            "format": "sqlite",
            "private_keys_enabled": not wallet.watch_only,
            "descriptors": True,
        }

    def rpc_importdescriptors(self, wallet: Wallet, requests):
        results = []
        for req in requests:
            desc = req.get("desc", "")
            match = re.fullmatch(r"addr\(([A-Za-z0-9]+)\)#([a-z0-9]{8})", desc)
            if "#" not in desc:
                results.append(_failure(-5, "Missing checksum"))
            elif not match or add_checksum(desc.split("#")[0]) != desc:
                results.append(_failure(-5, "Provided checksum does not match computed checksum"))
            elif "timestamp" not in req:
                results.append(_failure(-8, "Missing required timestamp field for key"))
            elif not wallet.watch_only:
                results.append(
                    _failure(
                        -4,
                        "Cannot import descriptor without private keys to a wallet with "
                        "private keys enabled",
                    )
                )
            else:
                address = match.group(1)
                wallet.addresses[address] = req.get("label", "")
                wallet.descriptors.append(dict(req))
                results.append({"success": True})
        return results

    def rpc_listsinceblock(
        self, wallet: Wallet, blockhash="", target_confirmations=1, include_watchonly=False,
        include_removed=True,
    ):  # fmt: skip
        if not isinstance(target_confirmations, int) or target_confirmations < 1:
            raise RPCError(-8, "Invalid parameter")
        removed_txids: list[str] = []
        depth = -1
        if blockhash:
            if blockhash not in self.blocks:
                raise RPCError(-5, "Block not found")
            point = blockhash
            while self._height(point) is None:  # walk a stale branch back to the main chain
                removed_txids += self.blocks[point].txids
                point = self.blocks[point].parent
            depth = self.tip - self._height(point) + 1
        transactions = []
        for tx in sorted(self._wallet_txs(wallet), key=lambda t: t.time):
            if depth == -1 or abs(self.confirmations(tx)) < depth:
                transactions += self._entries(wallet, tx)
        removed = []
        if include_removed:
            for txid in removed_txids:
                tx = self.txs[txid]
                if tx in self._wallet_txs(wallet):
                    # Core lists these whatever their confirmations, conflicted ones included.
                    removed += self._entries(wallet, tx, min_depth=None)
        last = self.main[max(0, self.tip + 1 - target_confirmations)]
        return {"transactions": transactions, "removed": removed, "lastblock": last}

    def rpc_listreceivedbyaddress(
        self, wallet: Wallet, minconf=1, include_empty=False, include_watchonly=False,
        address_filter=None,
    ):  # fmt: skip
        rows = []
        for address, label in wallet.addresses.items():
            if address_filter is not None and address != address_filter:
                continue
            txids, total, confs = [], 0, []
            for tx in self._wallet_txs(wallet):
                c = self.confirmations(tx)
                if c < minconf:
                    continue
                paid = sum(s for a, s in tx.outputs if a == address)
                if paid:
                    txids.append(tx.txid)
                    total += paid
                    confs.append(c)
            if txids or include_empty:
                row = {
                    "address": address,
                    "amount": Amount(total),
                    "confirmations": min(confs) if confs else 0,
                    "label": label,
                    "txids": txids,
                }
                if wallet.watch_only:
                    row = {"involvesWatchonly": True, **row}
                rows.append(row)
        return rows

    def rpc_gettransaction(self, wallet: Wallet, txid, include_watchonly=True, verbose=False):
        tx = self.txs.get(txid)
        if tx is None or tx not in self._wallet_txs(wallet):
            raise RPCError(-5, "Invalid or non-wallet transaction id")
        entries = self._entries(wallet, tx)
        per_output = {"involvesWatchonly", "address", "category", "amount", "label", "vout"}
        per_output |= {"fee", "abandoned"}
        top = {k: v for k, v in entries[0].items() if k not in per_output} if entries else {}
        return {
            "amount": Amount(sum(e["amount"].sats for e in entries)),
            **top,
            "details": [{k: v for k, v in e.items() if k in per_output} for e in entries],
            "hex": "00",
        }

    def rpc_listtransactions(
        self, wallet: Wallet, label="*", count=10, skip=0, include_watchonly=False
    ):
        if count < 0:
            raise RPCError(-8, "Negative count")
        if skip < 0:
            raise RPCError(-8, "Negative from")
        entries = []
        for tx in sorted(self._wallet_txs(wallet), key=lambda t: t.time):
            for entry in self._entries(wallet, tx):
                if label == "*" or entry.get("label") == label:
                    entries.append(entry)
        end = len(entries) - skip
        return entries[max(0, end - count) : max(0, end)]

    def rpc_sendtoaddress(self, wallet: Wallet, address, amount, comment="", *rest):
        sats = _amount_sats(amount)
        try:
            validate_address(address, "regtest")
        except AddressError:
            raise RPCError(-5, f"Invalid Bitcoin address: {address}") from None
        if sats <= 0:
            raise RPCError(-3, "Amount out of range")
        if wallet.watch_only:
            raise RPCError(-4, "Error: Private keys are disabled for this wallet")
        if sats + FEE > wallet.balance:
            raise RPCError(-6, "Insufficient funds")
        wallet.balance -= sats + FEE
        tx = Tx(self._hash("tx"), [(address, sats)], self._tick(), sender=wallet.name)
        tx.comment, tx.fee = comment, FEE
        self.txs[tx.txid] = tx
        return tx.txid

    def rpc_sendmany(self, wallet: Wallet, dummy, amounts, minconf=1, comment="", *rest):
        """Core's sendmany: one transaction paying every address of `amounts`, the wallet
        paying the fee; `comment` on every send entry of listtransactions."""
        if dummy != "":
            raise RPCError(-8, 'Dummy value must be set to ""')
        if not isinstance(amounts, dict):
            raise RPCError(-3, "Expected type object, got " + type(amounts).__name__)
        outputs = []
        for address, amount in amounts.items():
            try:
                validate_address(address, "regtest")
            except AddressError:
                raise RPCError(-5, f"Invalid Bitcoin address: {address}") from None
            sats = _amount_sats(amount)
            if sats <= 0:
                raise RPCError(-3, "Invalid amount for send")
            outputs.append((address, sats))
        if not outputs:
            raise RPCError(-6, "Transaction must have at least one recipient")
        if wallet.watch_only:
            raise RPCError(-4, "Error: Private keys are disabled for this wallet")
        total = sum(sats for _, sats in outputs)
        if total + FEE > wallet.balance:
            raise RPCError(-6, "Insufficient funds")
        wallet.balance -= total + FEE
        tx = Tx(self._hash("tx"), outputs, self._tick(), sender=wallet.name)
        tx.comment, tx.fee = comment, FEE
        self.txs[tx.txid] = tx
        return tx.txid

    def rpc_getbalances(self, wallet: Wallet):
        return {
            "mine": {
                "trusted": Amount(wallet.balance),
                "untrusted_pending": Amount(0),
                "immature": Amount(0),
            }
        }

    # -- HTTP helpers --

    def authorized(self, header: str | None) -> bool:
        if self.unauthorized or not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:]).decode()
        except ValueError:
            return False
        return given == f"{self.user}:{self.password}"


def _failure(code: int, message: str) -> dict:
    return {"success": False, "error": {"code": code, "message": message}}


def format_amount(sats: int) -> str:
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), SATS)
    return f"{sign}{whole}.{frac:08d}"


_AMOUNT = re.compile(r'"@amount:(-?\d+)@"')


def encode(payload: Any) -> bytes:
    """JSON with amounts as numbers with exactly 8 decimals (json cannot write Decimal)."""

    def default(value):
        if isinstance(value, Amount):
            return f"@amount:{value.sats}@"
        if isinstance(value, Decimal):
            return str(value)
        raise TypeError(type(value).__name__)

    text = json.dumps(payload, default=default)
    return _AMOUNT.sub(lambda m: format_amount(int(m.group(1))), text).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeBitcoind/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        node: FakeBitcoind = self.server.node  # type: ignore[attr-defined]
        with node.lock:
            node.connections += 1
            node._sockets.add(self.connection)

    def finish(self):
        node: FakeBitcoind = self.server.node  # type: ignore[attr-defined]
        with node.lock:
            node._sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the client gave up (a timeout test): nothing to tell it
            self.close_connection = True

    def do_POST(self):
        node: FakeBitcoind = self.server.node  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if not node.authorized(self.headers.get("Authorization")):
            self._send(401, b"", "text/plain")
            return
        if node.delay:
            node._stopping.wait(node.delay)
        if node.garbage is not None:
            self._send(200, node.garbage, "text/html")
            return
        status, payload = node.handle(self.path, body)
        method = None
        try:
            method = json.loads(body).get("method")
        except (ValueError, AttributeError):
            pass
        if method in node.drop_after:
            # Applied, but the answer is lost: the connection dies before anything is sent.
            self.close_connection = True
            return
        self._send(status, encode(payload))
        if node.close_idle:
            # No "Connection: close" header: the client believes it may reuse the connection.
            self.close_connection = True

    def do_GET(self):
        self._send(405, b"JSONRPC server handles only POST requests", "text/plain")


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
