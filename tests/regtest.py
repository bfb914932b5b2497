"""A real Bitcoin Core node for the suite: one regtest node per test session, fresh wallets per test.

Loaded as a plugin by conftest.py. `regtest_node` starts bitcoind (bitcoinkeys.regtest_node: the
binary from $BITCOIND, ../shared/tools/ or PATH; skipped with the reason when absent) with mature
coins in its `miner` wallet, and stops it and deletes its datadir at the end of the session.
`regtest` points the site at it for one test (CHAIN_BACKEND=bitcoind, BITCOIND_URL, a deposit
and a payout wallet named for this test only) and builds the chain backend from those settings,
so tests go through the same code paths as production.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest

from bitcoinkeys import deposits, local_chain, pool
from bitcoinkeys.chain import BitcoindChain, build_chain, set_chain
from bitcoinkeys.regtest_node import MINER, NodeError, RegtestNode, find_binary

SATS = Decimal(100_000_000)


@pytest.fixture(scope="session")
def regtest_node():
    binary = find_binary("bitcoind")
    if binary is None:
        pytest.skip(
            "bitcoind not found: set BITCOIND=/path/to/bitcoind, or put it in ../shared/tools/ "
            "beside the repository or on PATH"
        )
    node = RegtestNode(binary)
    try:
        node.start()
        node.ensure_miner()
    except NodeError as exc:
        node.stop()
        if "error while loading shared libraries" in str(exc):
            # The binary is here but this machine lacks what it links against (.ci/run installs
            # them): like a missing binary, a reason to skip, not a failure of the site.
            pytest.skip(
                f"bitcoind at {binary} cannot run here: {exc} (Debian: apt-get install "
                "libevent-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7 libsqlite3-0)"
            )
        pytest.fail(f"bitcoind was found at {binary} but did not start: {exc}")
    yield node
    node.stop()


def btc(sats: int) -> str:
    return str(Decimal(sats) / SATS)


@dataclass
class Regtest:
    """One test's view of the session node."""

    node: RegtestNode
    chain: BitcoindChain
    deposit_wallet: str
    payout_wallet: str

    def rpc(self, method: str, *params, wallet: str | None = None):
        return self.node.rpc(method, *params, wallet=wallet)

    def pay(self, address: str, sats: int, replaceable: bool = True) -> str:
        """The miner pays `sats` to `address`; returns "txid:vout" (wallets synced)."""
        txid = self.node.pay(address, btc(sats), replaceable=replaceable)
        return f"{txid}:{self.vout(txid, address)}"

    def vout(self, txid: str, address: str) -> int:
        decoded = self.rpc("gettransaction", txid, False, True, wallet=MINER)["decoded"]
        (n,) = [o["n"] for o in decoded["vout"] if o["scriptPubKey"].get("address") == address]
        return n

    def mine(self, n: int = 1) -> list[str]:
        return self.node.mine(n)

    def bump(self, outpoint: str) -> str:
        """The miner fee-bumps its payment: same outputs, new txid. Returns the new outpoint."""
        txid, _ = outpoint.split(":")
        address = self.address_of(outpoint)
        new = self.rpc("bumpfee", txid, wallet=MINER)["txid"]
        self.node.sync()
        return f"{new}:{self.vout(new, address)}"

    def address_of(self, outpoint: str) -> str:
        txid, vout = outpoint.split(":")
        decoded = self.rpc("gettransaction", txid, False, True, wallet=MINER)["decoded"]
        return decoded["vout"][int(vout)]["scriptPubKey"]["address"]

    def double_spend(self, outpoint: str) -> str:
        """The miner spends the coins of its unconfirmed payment back to itself, with a higher
        fee (replacing it in the mempool). Returns the conflicting txid."""
        txid, _ = outpoint.split(":")
        decoded = self.rpc("gettransaction", txid, False, True, wallet=MINER)["decoded"]
        inputs = [{"txid": i["txid"], "vout": i["vout"]} for i in decoded["vin"]]
        value = sum(
            self.rpc("gettransaction", i["txid"], False, True, wallet=MINER)["decoded"]["vout"][
                i["vout"]
            ]["value"]
            for i in inputs
        )
        raw = self.rpc(
            "createrawtransaction",
            inputs,
            [{self.node.new_address(): str(value - Decimal("0.001"))}],
        )
        signed = self.rpc("signrawtransactionwithwallet", raw, wallet=MINER)["hex"]
        other = self.rpc("sendrawtransaction", signed)
        self.node.sync()
        return other

    def new_wallet(self, label: str, watch_only: bool = False) -> str:
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        self.node.create_wallet(name, watch_only=watch_only)
        return name

    def fund_payout_wallet(self, sats: int) -> None:
        self.node.create_wallet(self.payout_wallet)
        address = self.node.new_address(self.payout_wallet)
        self.node.pay(address, btc(sats))
        self.mine()

    def received(self, wallet: str, address: str) -> int:
        """Sats `wallet` received at `address` with at least one confirmation."""
        total = self.rpc("getreceivedbyaddress", address, 1, wallet=wallet)
        return int(total * SATS)


@pytest.fixture
def regtest(regtest_node, settings):
    tag = uuid.uuid4().hex[:8]
    settings.BITCOIN_NETWORK = "regtest"
    settings.CHAIN_BACKEND = "bitcoind"
    settings.BITCOIND_URL = regtest_node.url
    settings.BITCOIND_WALLET = f"deposits-{tag}"
    settings.BITCOIND_PAYOUT_WALLET = f"payouts-{tag}"
    settings.BITCOIND_TIMEOUT = 30
    chain = build_chain()
    set_chain(chain)
    yield Regtest(regtest_node, chain, settings.BITCOIND_WALLET, settings.BITCOIND_PAYOUT_WALLET)
    set_chain(None)
    chain.close()
    # Keep the session node light: this test's wallets are never used again.
    for wallet in regtest_node.rpc("listwallets"):
        if wallet != MINER:
            try:
                regtest_node.rpc("unloadwallet", wallet)
            except NodeError:
                pass


@pytest.fixture
def dev_chain(regtest, settings, store, clock):
    """The site as `make run` sets it up on its local node: DEBUG and the developer faucet on,
    deposit addresses imported from a keys wallet's tpub (local_chain.ensure_deposit_keys), a
    small pool (pages of 5)."""
    settings.DEBUG = True
    settings.DEV_FAUCET = True
    settings.KEYPOOL_SETS = 2
    settings.KEYPOOL_PAGE_SIZE = 5
    settings.KEYPOOL_RANGES_PER_LIST_PAGE = 4
    settings.DEPOSIT_CONFIRMATIONS = 1
    deposits.ready_deposits()
    pool.init_key_sets(store, clock)
    keys = regtest.new_wallet("keys")
    xpub = local_chain.keys_xpub(regtest.node, keys)
    imported = local_chain.ensure_deposit_keys(store, clock, xpub, say=lambda message: None)
    assert imported == local_chain.READY_RANGES * 5
    return regtest
