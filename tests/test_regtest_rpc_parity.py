"""The scripted JSON-RPC server (tests/rpcserver.py) against a real Bitcoin Core node.

The same scenarios run on both: a payment, a fee bump, a double spend, a reorg, payouts and the
errors the product acts on. What the product reads (its `Payment`s, the fields and types of the
raw answers it relies on, error codes) must be the same, with txids replaced by labels in order of
appearance. When Core changes, this test says where the stand-in drifted.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from bitcoinkeys.chain import BitcoindChain, ChainError
from tests.rpcserver import FakeBitcoind

SATS = 100_000_000
# Fields of a "receive" entry the product reads (chain._payments, deposit_view).
RECEIVE_FIELDS = {
    "address": str,
    "category": str,
    "amount": Decimal,
    "vout": int,
    "confirmations": int,
    "txid": str,
    "walletconflicts": list,
    "mempoolconflicts": list,
}


class Labels:
    def __init__(self):
        self.names: dict[str, str] = {}

    def __call__(self, txid: str) -> str:
        return self.names.setdefault(txid, f"tx{len(self.names)}")


class FakeDriver:
    def __init__(self, node: FakeBitcoind, address: str):
        self.node, self.address = node, address

    def pay(self, sats: int) -> str:
        return self.node.pay(self.address, sats).split(":")[0]

    def mine(self, n: int = 1) -> None:
        self.node.mine(n)

    def bump(self, txid: str) -> str:
        return self.node.bump_fee(f"{txid}:0").split(":")[0]

    def double_spend(self, txid: str) -> None:
        self.node.double_spend(f"{txid}:0")

    def drop_tip(self) -> None:
        self.node.reorg(1)

    def rpc(self, chain, wallet, method, *args):
        return chain._rpc(wallet, method, *args)


class RealDriver:
    def __init__(self, regtest, address: str):
        self.regtest, self.address = regtest, address

    def pay(self, sats: int) -> str:
        return self.regtest.pay(self.address, sats).split(":")[0]

    def mine(self, n: int = 1) -> None:
        self.regtest.mine(n)

    def bump(self, txid: str) -> str:
        vout = self.regtest.vout(txid, self.address)
        return self.regtest.bump(f"{txid}:{vout}").split(":")[0]

    def double_spend(self, txid: str) -> None:
        self.regtest.double_spend(f"{txid}:{self.regtest.vout(txid, self.address)}")

    def drop_tip(self) -> None:
        self.regtest.rpc("invalidateblock", self.regtest.rpc("getbestblockhash"))
        self.regtest.node.sync()


def scenario(driver, chain: BitcoindChain, address: str) -> list:
    """Observations of the product's view through one story; txids as labels."""
    label = Labels()
    seen: list = []

    def payments(step: str, cursor):
        found, new_cursor = chain.payments_since(cursor)
        view = sorted(
            (label(p.txid), p.sats, p.confirmations, p.removed, p.replaced) for p in found
        )
        seen.append((step, view))
        return new_cursor

    def history(step: str):
        view = sorted(
            (label(p.txid), p.sats, p.confirmations, p.replaced)
            for p in chain.payments_for(address)
        )
        seen.append((step, view))

    cursor = payments("start", None)
    first = driver.pay(400_000)
    label(first)
    payments("paid", cursor)
    bumped = driver.bump(first)
    label(bumped)
    payments("bumped", cursor)
    history("bumped history")
    driver.mine(1)
    cursor = payments("mined", cursor)
    history("mined history")

    doomed = driver.pay(500_000)
    label(doomed)
    driver.double_spend(doomed)
    payments("double-spent", cursor)
    history("double-spent history")
    driver.mine(1)
    cursor = payments("double spend mined", cursor)
    history("double spend mined history")

    again = driver.pay(600_000)
    label(again)
    driver.mine(1)
    cursor = payments("third mined", cursor)
    driver.drop_tip()
    driver.mine(2)
    payments("reorged and mined again", cursor)
    history("reorged history")

    # Raw shapes the product relies on.
    raw = chain._wallet_rpc(chain.wallet, "listsinceblock", "", 1, True, True)
    for entry in raw["transactions"]:
        for name, kind in RECEIVE_FIELDS.items():
            assert isinstance(entry[name], kind), (name, entry)
    seen.append(("lastblock is a block hash", len(raw["lastblock"])))
    return seen


def errors_and_payouts(chain: BitcoindChain, payee: str, second: str, empty_wallet: str) -> list:
    seen: list = []

    def code_of(fn, *args):
        with pytest.raises(ChainError) as caught:
            fn(*args)
        return caught.value.code

    seen.append(("bad address", code_of(chain._rpc, chain.payout_wallet, "sendtoaddress",
                                         "bcrt1qnotanaddress", "0.1")))  # fmt: skip
    empty = BitcoindChain(url=chain.url, wallet=chain.wallet, payout_wallet=empty_wallet)
    seen.append(("empty wallet", code_of(empty.send, payee, 100_000, "withdraw::x::9")))
    seen.append(("unknown block", code_of(chain.payments_since, "00" * 32)))
    seen.append(("no such wallet", code_of(chain._rpc, "no-such-wallet", "getwalletinfo")))
    seen.append(("load missing", code_of(chain._rpc, None, "loadwallet", "no-such-wallet")))
    seen.append(("load loaded", code_of(chain._rpc, None, "loadwallet", chain.wallet)))
    seen.append(("create existing", code_of(chain._rpc, None, "createwallet", chain.wallet)))
    balance = chain._wallet_rpc(chain.payout_wallet, "getbalances")["mine"]["trusted"]
    seen.append(("balance is Decimal", type(balance)))
    txid = chain.send(payee, 3_000_000, "withdraw::alice::0")
    seen.append(("found by comment", chain.find_sent("withdraw::alice::0") == txid))
    seen.append(("other comment", chain.find_sent("withdraw::alice::1")))
    # sendmany, as the batched processor uses it.
    seen.append(("batch with a bad address", code_of(chain._rpc, chain.payout_wallet, "sendmany",
                 "", {payee: "0.01", "bcrt1qnotanaddress": "0.01"}, 1, "payoutbatch::bad")))  # fmt: skip
    seen.append(("batch from an empty wallet",
                 code_of(empty.send_many, [(payee, 100_000)], "payoutbatch::empty")))  # fmt: skip
    seen.append(("empty batch's comment unused", chain.find_sent("payoutbatch::empty")))
    batch = chain.send_many([(payee, 1_000_000), (second, 2_000_000)], "payoutbatch::one")
    seen.append(("batch found by comment", chain.find_sent("payoutbatch::one") == batch))
    entries = chain._wallet_rpc(chain.payout_wallet, "listtransactions", "*", 100, 0)
    mine = [
        e for e in entries if e.get("comment") == "payoutbatch::one" and e["category"] == "send"
    ]
    seen.append(
        ("batch entries", sorted((e["txid"] == batch, int(-e["amount"] * 10**8)) for e in mine))
    )
    return seen


def test_the_scripted_server_answers_like_bitcoin_core(regtest, tmp_path):
    # The real node: a watched address of a scratch wallet, a funded payout wallet.
    keys = regtest.new_wallet("keys")
    address = regtest.node.new_address(keys)
    payee = regtest.node.new_address(keys)
    second = regtest.node.new_address(keys)
    regtest.chain.import_addresses([address])
    regtest.fund_payout_wallet(SATS)
    empty = regtest.new_wallet("empty")
    real = scenario(RealDriver(regtest, address), regtest.chain, address)
    real_errors = errors_and_payouts(regtest.chain, payee, second, empty)

    with FakeBitcoind() as node:
        node.create_wallet("deposits")
        node.watch("deposits", [address])
        node.create_wallet("payouts", watch_only=False, balance=SATS)
        node.create_wallet("empty", watch_only=False, balance=0)
        chain = BitcoindChain(url=node.url, wallet="deposits", payout_wallet="payouts", timeout=5)
        try:
            fake = scenario(FakeDriver(node, address), chain, address)
            fake_errors = errors_and_payouts(chain, payee, second, "empty")
        finally:
            chain.close()
        assert not node.errors, node.errors

    assert fake == real
    assert fake_errors == real_errors
