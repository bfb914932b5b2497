"""The developer faucet: test coins from the local regtest node's `miner` wallet, and blocks.

Only in a development run on the local chain (`enabled()`: DEV_FAUCET and DEBUG on, a regtest
bitcoind backend); production settings refuse to start with DEV_FAUCET, and the system check
refuses it without DEBUG. A user gets coins only at one of their own deposit addresses, so a
session cannot be used to pay someone else (the coins are worthless, but the rule is the site's).
"""

from __future__ import annotations

import math
from decimal import Decimal

from django.conf import settings
from django.core import checks

from accounts.gateway import get_account
from accounts.money import format_btc
from docstore import NotFound, Store

from .deposits import user_addresses
from .regtest_node import MINER, NodeError, rpc_call

SATS = Decimal(100_000_000)
# More than any test needs, small enough that the miner's wallet lasts.
MAX_SATS = 10 * 100_000_000
NOT_YOURS = "Test coins go only to one of your own deposit addresses."
NO_ADDRESS = "Get a deposit address first; test coins are sent to it."


class FaucetError(Exception):
    """The faucet refused; `status` is the HTTP status to answer with. Nothing was sent."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def enabled() -> bool:
    return bool(
        settings.DEV_FAUCET
        and settings.DEBUG
        and settings.CHAIN_BACKEND == "bitcoind"
        and settings.BITCOIN_NETWORK == "regtest"
    )


def _rpc(method: str, *params, wallet: str | None = MINER):
    try:
        return rpc_call(
            settings.BITCOIND_URL, method, *params, wallet=wallet, timeout=settings.BITCOIND_TIMEOUT
        )
    except (NodeError, OSError) as exc:
        raise FaucetError(f"The local bitcoin node did not answer: {exc}", status=503) from exc


def balance_sats() -> int:
    return int(_rpc("getbalance") * SATS)


def send_test_coins(
    store: Store, username: str, address: str, sats: int, replaceable: bool = False
) -> str:
    """Pay `sats` from the miner wallet to `address`, one of `username`'s deposit addresses;
    returns the txid (in the mempool, the node's wallets synced). Raises FaucetError."""
    try:
        mine = user_addresses(get_account(store, username).value)
    except NotFound:
        mine = []
    if not mine:
        raise FaucetError(NO_ADDRESS, status=400)
    if address not in mine:
        raise FaucetError(NOT_YOURS, status=403)
    if isinstance(sats, bool) or not isinstance(sats, int) or sats <= 0:
        raise FaucetError("Send a positive amount of test coins.")
    if sats > MAX_SATS:
        raise FaucetError(f"The faucet sends at most {format_btc(MAX_SATS)} BTC at a time.")
    available = balance_sats()
    if sats > available:
        raise FaucetError(
            f"The faucet's wallet holds {format_btc(available)} BTC; mine a block or ask for less."
        )
    amount = str(Decimal(sats) / SATS)
    # sendtoaddress address amount comment comment_to subtractfeefromamount replaceable
    txid = _rpc("sendtoaddress", address, amount, "", "", False, bool(replaceable))
    _rpc("syncwithvalidationinterfacequeue", wallet=None)
    return txid


def mine_blocks(n: int = 1) -> int:
    """Mine `n` blocks to the miner wallet; returns the new height."""
    address = _rpc("getnewaddress")
    _rpc("generatetoaddress", n, address, wallet=None)
    _rpc("syncwithvalidationinterfacequeue", wallet=None)
    return _rpc("getblockcount", wallet=None)


def ensure_balance(sats: int) -> None:
    """Mine until the miner wallet can pay `sats` (each block matures an older coinbase)."""
    for _ in range(10):
        short = sats - balance_sats()
        if short <= 0:
            return
        mine_blocks(max(1, math.ceil(short / (12 * 100_000_000))))
    raise FaucetError("The faucet's wallet cannot be refilled by mining.", status=503)


def pay_to(address: str, sats: int) -> str:
    """Internal use (seed_demo, the tour test): pay any address, mining coins as needed."""
    ensure_balance(sats + 100_000)
    txid = _rpc("sendtoaddress", address, str(Decimal(sats) / SATS))
    _rpc("syncwithvalidationinterfacequeue", wallet=None)
    return txid


def withdrawal_test_address() -> str:
    """An address of the node's miner wallet: somewhere to withdraw test coins to."""
    return _rpc("getnewaddress")


@checks.register(checks.Tags.security, deploy=False)
def faucet_needs_debug(app_configs, **kwargs):
    if settings.DEV_FAUCET and not settings.DEBUG:
        return [
            checks.Error(
                "DEV_FAUCET is on without DEBUG: the developer faucet hands out coins from a "
                "local regtest node and exists only in development runs.",
                hint="Unset DEV_FAUCET (make run sets it only with its own regtest node).",
                id="bitcoinkeys.E001",
            )
        ]
    return []
