"""The world outside the site: the test bitcoind, the payments the soak makes, the payout wallet."""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from dataclasses import dataclass

from tests.rpcserver import FakeBitcoind

from .common import PAYOUT_WALLET, Stats


def derive_regtest_addresses(path: str, count: int, kind: str = "p2wpkh") -> list[str]:
    """`count` regtest addresses of the receive branch of a tpub derived from a fixed seed."""
    from embit import bip32

    from bitcoinkeys.addresses import derive_addresses

    root = bip32.HDKey.from_seed(b"adspace soak: a fixed seed, never a real wallet!!")
    tpub = root.derive(path).to_public().to_base58(version=bytes.fromhex("043587cf"))
    return derive_addresses(tpub, 0, count, kind, network="regtest")


class SoakNode(FakeBitcoind):
    """The test bitcoind, plus hooks on sendmany for killing the processor mid-payout.

    `sent_event` is set when a send reaches the node. With `send_hold`, the answer is held back
    for that long after the send was applied (a processor killed meanwhile died after the money
    left); with `abort_next_send`, the next send is held and then NOT applied (a processor killed
    meanwhile died before the money left, as if the request had never gone out). `drop_sends`
    sends are applied and then answered by closing the connection (the answer is lost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.send_hold = 0.0
        self.abort_next_send = False
        self.drop_sends = 0
        self.sent_event = threading.Event()
        # A processor killed mid-call resets its connection; that is the point, not news.
        self.server.handle_error = lambda request, client_address: None

    def handle(self, path: str, body: bytes) -> tuple[int, dict]:
        try:
            method = json.loads(body).get("method")
        except (ValueError, AttributeError):
            method = None
        if method == "sendmany":
            with self.lock:
                abort, self.abort_next_send = self.abort_next_send, False
                if self.drop_sends > 0:
                    self.drop_sends -= 1
                    self.drop_after.add(method)  # do_POST checks this after handle() returns
                else:
                    self.drop_after.discard(method)
            if abort:
                self.sent_event.set()
                self._stopping.wait(max(self.send_hold, 0.5))
                error = {"code": -1, "message": "soak: the sender died before this arrived"}
                return 500, {"result": None, "error": error, "id": None}
        status, payload = super().handle(path, body)
        if method == "sendmany" and status == 200:
            self.sent_event.set()
            if self.send_hold:
                self._stopping.wait(self.send_hold)
        return status, payload


@dataclass
class Payment:
    outpoint: str
    address: str
    user: str
    sats: int
    state: str = "pending"  # pending | replaced | double-spent
    mined: bool = False


class Chain:
    """Payments to users' addresses, as the soak makes them; the node says what confirmed."""

    def __init__(self, node: SoakNode, stats: Stats):
        self.node, self.stats = node, stats
        self.lock = threading.Lock()
        self.payments: dict[str, Payment] = {}

    def pay(self, user: str, address: str, sats: int) -> str:
        outpoint = self.node.pay(address, sats)
        with self.lock:
            self.payments[outpoint] = Payment(outpoint, address, user, sats)
        self.stats.chain_event("payments")
        return outpoint

    def _mempool(self) -> list[Payment]:
        with self.lock, self.node.lock:
            return [
                p
                for p in self.payments.values()
                if p.state == "pending"
                and not p.mined
                and self.node._in_mempool(self.node.txs[p.outpoint.split(":")[0]])
            ]

    def bump(self, rng: random.Random) -> bool:
        pending = self._mempool()
        if not pending:
            return False
        old = rng.choice(sorted(pending, key=lambda p: p.outpoint))
        new = self.node.bump_fee(old.outpoint)
        with self.lock:
            old.state = "replaced"
            self.payments[new] = Payment(new, old.address, old.user, old.sats)
        self.stats.chain_event("fee bumps", detail=f"{old.outpoint} -> {new}")
        return True

    def double_spend(self, rng: random.Random) -> bool:
        pending = self._mempool()
        if not pending:
            return False
        victim = rng.choice(sorted(pending, key=lambda p: p.outpoint))
        self.node.double_spend(victim.outpoint)
        with self.lock:
            victim.state = "double-spent"
        self.stats.chain_event("double spends", detail=victim.outpoint)
        return True

    def mine(self, n: int = 1) -> None:
        with self.lock, self.node.lock:  # always this order: soak's lock, then the node's
            self.node.mine(n)
            for p in self.payments.values():
                if self.node.txs[p.outpoint.split(":")[0]].block is not None:
                    p.mined = True
        self.stats.chain_event("blocks", n)

    def confirmed(self) -> dict[str, Payment]:
        """Every payment the chain has confirmed now, by outpoint."""
        with self.lock, self.node.lock:
            return {
                op: p
                for op, p in self.payments.items()
                if self.node.confirmations(self.node.txs[op.split(":")[0]]) >= 1
            }

    def confirmed_to(self, addresses: set[str]) -> dict[str, int]:
        """Outpoints the node has confirmed to any of `addresses` (by anyone), with sats."""
        out = {}
        with self.node.lock:
            for tx in self.node.txs.values():
                if self.node.confirmations(tx) < 1:
                    continue
                for vout, (address, sats) in enumerate(tx.outputs):
                    if address in addresses:
                        out[f"{tx.txid}:{vout}"] = sats
        return out

    def payouts(self) -> dict[str, list[tuple[str, str, int]]]:
        """Payout wallet sends by comment (the batch key): [(txid, address, sats)]."""
        out: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        with self.node.lock:
            for tx in self.node.txs.values():
                if tx.sender == PAYOUT_WALLET:
                    for address, sats in tx.outputs:
                        out[tx.comment].append((tx.txid, address, sats))
        return out
