"""Chain backends: what the bitcoin network says about our addresses (DESIGN.md 6.4).

A backend reports **payments** (one per transaction output paying one of our addresses: outpoint
"txid:vout", amount in sats, confirmations) and nothing else; crediting decides what to do with
them (bitcoinkeys/deposits.py). Two backends:

- `NoChain` (CHAIN_BACKEND=none): detects nothing, and says so (`available = False`), so the add
  funds page can tell people that staff credit balances by hand on this installation.
- `BitcoindChain` (CHAIN_BACKEND=bitcoind): Bitcoin Core's JSON-RPC through python-bitcoinlib's
  `bitcoin.rpc.Proxy`, every RPC through `proxy.call(...)`. Its helpers turn amounts into floats;
  we never use them. The Proxy parses JSON with `parse_float=decimal.Decimal`, so amounts arrive
  as Decimal and are converted to sats exactly; anything that is not a whole number of sats is a
  broken answer, not something to round. Amounts we send go out as exact 8-decimal strings.

Payments are listed per outpoint (listsinceblock, listreceivedbyaddress + gettransaction), never
from `getreceivedbyaddress` totals: after a fee bump Core counts such a payment twice, and after a
double spend it keeps counting money that went elsewhere until the replacement is mined.

`get_chain()` is one backend per process, built lazily from settings (and again after a fork: an
HTTP connection must not be shared between gunicorn workers); tests swap it with `set_chain()`.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal, Inexact, InvalidOperation, Rounded, localcontext
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from accounts.money import MAX_BTC, format_btc

log = logging.getLogger(__name__)

IMPORT_CHUNK = 1000
# listtransactions pages while looking for a payout by its comment.
LIST_PAGE = 1000
_TXID = re.compile(r"[0-9a-f]{64}")
# Every address format we deal out (base58, bech32, bech32m) is plain letters and digits; anything
# else could smuggle descriptor syntax ("addr(a),raw(...)") into importdescriptors.
_ADDRESS = re.compile(r"[A-Za-z0-9]{14,100}")

# Bitcoin Core RPC error codes we act on (src/rpc/protocol.h).
RPC_WALLET_ERROR = -4  # also "database already exists" from createwallet on older Cores
RPC_INVALID_ADDRESS_OR_KEY = -5  # e.g. listsinceblock's "Block not found"
RPC_WALLET_INSUFFICIENT_FUNDS = -6
RPC_WALLET_UNLOCK_NEEDED = -13
RPC_WALLET_NOT_FOUND = -18
RPC_WALLET_NOT_SPECIFIED = -19
RPC_IN_WARMUP = -28  # the node is still loading its block index or wallets
RPC_WALLET_ALREADY_LOADED = -35
RPC_WALLET_ALREADY_EXISTS = -36
# Answers that say the node or wallet is not ready, not that it refuses this payment: a send that
# got one did nothing, but the request must not be failed and refunded over it.
NOT_READY_CODES = frozenset(
    {RPC_IN_WARMUP, RPC_WALLET_NOT_FOUND, RPC_WALLET_NOT_SPECIFIED, RPC_WALLET_UNLOCK_NEEDED}
)
# python-bitcoinlib's own codes for answers that are not JSON-RPC at all.
_LIB_GARBAGE_CODES = (-342, -343, -344, -345)
# BITCOIN_NETWORK -> the "chain" getblockchaininfo reports.
NODE_CHAINS = {
    "mainnet": "main",
    "testnet": "test",
    "testnet4": "testnet4",
    "signet": "signet",
    "regtest": "regtest",
}


class ChainError(Exception):
    """The node answered, but not with what we need (an RPC error object, garbage, bad auth)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class ChainUnavailable(ChainError):
    """No answer: connection refused, timed out or dropped. For a send, the outcome is unknown."""


class ChainUnauthorized(ChainError):
    """The node refused our RPC credentials (HTTP 401): BITCOIND_URL has the wrong password."""


class WrongNetwork(ChainError):
    """The node runs another network than BITCOIN_NETWORK: its payments are not ours to credit."""


def fault_kind(exc: ChainError) -> str:
    """What is wrong with the node, in one word, for alerts: each kind is logged once."""
    if isinstance(exc, ChainUnavailable):
        return "unreachable"
    if isinstance(exc, ChainUnauthorized):
        return "credentials"
    if isinstance(exc, WrongNetwork):
        return "network"
    if exc.code == RPC_IN_WARMUP:
        return "warming-up"
    if exc.code in (RPC_WALLET_NOT_FOUND, RPC_WALLET_NOT_SPECIFIED):
        return "wallet"
    return "error"


@dataclass(frozen=True)
class Payment:
    address: str
    outpoint: str  # "txid:vout"
    sats: int
    # Negative: conflicted (double-spent or replaced by a mined transaction). Core lists such a
    # payment only in listsinceblock's "removed"; elsewhere it drops out of every listing.
    confirmations: int
    removed: bool = False  # listed in listsinceblock's "removed": its block was reorged away
    # Unconfirmed and displaced in the mempool by a transaction spending the same coins (a fee
    # bump's original, or a double spend): Core's "mempoolconflicts". Not a payment any more
    # unless that other transaction is evicted.
    replaced: bool = False

    @property
    def txid(self) -> str:
        return self.outpoint.rsplit(":", 1)[0]

    @property
    def vout(self) -> int:
        return int(self.outpoint.rsplit(":", 1)[1])


# --- amounts ---------------------------------------------------------------------------------


def btc_to_sats(value: Any) -> int:
    """An amount from an RPC answer (Decimal BTC, as parsed by the Proxy) -> sats, exactly.

    Refuses floats (a float has already lost the exact value), booleans, strings, NaN, amounts
    beyond 21 million BTC and anything that is not a whole number of sats.
    """
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ChainError(f"bitcoind sent an amount that is not a JSON number: {value!r}")
    amount = Decimal(value)
    if not amount.is_finite() or abs(amount) > MAX_BTC:
        raise ChainError(f"bitcoind sent an impossible amount: {value!r}")
    with localcontext() as ctx:
        ctx.prec = 40
        ctx.traps[Inexact] = ctx.traps[Rounded] = True
        try:
            sats = amount.scaleb(8)
        except (Inexact, Rounded):
            raise ChainError(f"bitcoind sent an amount with too many digits: {value!r}") from None
    if sats != sats.to_integral_value():
        raise ChainError(f"bitcoind sent an amount that is not a whole number of sats: {value!r}")
    return int(sats)


def sats_to_btc_string(sats: int) -> str:
    """Sats -> the exact 8-decimal string Bitcoin Core accepts as an amount ("0.00300000")."""
    if isinstance(sats, bool) or not isinstance(sats, int) or sats <= 0:
        raise ValueError(f"amounts sent are a positive whole number of sats, not {sats!r}")
    return format_btc(sats)


# --- descriptor checksums (BIP-380) ----------------------------------------------------------

_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = ((chk & 0x7FFFFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def descriptor_checksum(descriptor: str) -> str:
    """The 8-character BIP-380 checksum of `descriptor` (without its "#...")."""
    symbols: list[int] = []
    groups: list[int] = []
    for ch in descriptor:
        position = _INPUT_CHARSET.find(ch)
        if position < 0:
            raise ValueError(f"character {ch!r} cannot appear in a descriptor")
        symbols.append(position & 31)
        groups.append(position >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    checksum = _polymod(symbols + [0] * 8) ^ 1
    return "".join(_CHECKSUM_CHARSET[(checksum >> (5 * (7 - i))) & 31] for i in range(8))


def address_descriptor(address: str) -> str:
    """`addr(<address>)#<checksum>`: a watch-only descriptor for one address."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise ValueError(f"not a bitcoin address: {address!r}")
    body = f"addr({address})"
    return f"{body}#{descriptor_checksum(body)}"


# --- backends --------------------------------------------------------------------------------


class NoChain:
    """CHAIN_BACKEND=none: nothing is detected; staff credit balances by hand from the admin."""

    available = False
    name = "none"

    def payments_since(
        self, cursor: str | None, confirmations: int = 1
    ) -> tuple[list[Payment], str | None]:
        return [], cursor

    def payments_for(self, address: str) -> list[Payment]:
        return []

    def import_addresses(self, addresses: list[str]) -> int:
        return 0

    def check_node(self, wallets: tuple[str, ...] = ()) -> None:
        return None

    def send(self, address: str, sats: int, comment: str) -> str:
        raise ChainError("No bitcoin node is configured (CHAIN_BACKEND=none): nothing can be sent.")

    def send_many(self, outputs: list[tuple[str, int]], comment: str) -> str:
        raise ChainError("No bitcoin node is configured (CHAIN_BACKEND=none): nothing can be sent.")

    def find_sent(self, comment: str) -> str | None:
        return None

    def payout_balance(self) -> int:
        raise ChainError("No bitcoin node is configured (CHAIN_BACKEND=none).")


class _Unauthorized(Exception):
    pass


class _Connection(http.client.HTTPConnection):
    """The Proxy's HTTP connection, told apart a 401 (bitcoind answers it with an empty body,
    which the Proxy would only report as "non-JSON response")."""

    def getresponse(self):  # type: ignore[override]
        response = super().getresponse()
        if response.status == 401:
            response.read()
            raise _Unauthorized()
        return response


# Errors that mean "the connection we kept open has gone": worth one reconnect for a read.
_DROPPED = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    http.client.CannotSendRequest,
    http.client.ResponseNotReady,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class BitcoindChain:
    """Bitcoin Core over JSON-RPC: a watch-only deposit wallet and a payout wallet."""

    available = True
    name = "bitcoind"

    def __init__(
        self,
        url: str | None = None,
        wallet: str | None = None,
        payout_wallet: str | None = None,
        timeout: float | None = None,
    ):
        self.url = (settings.BITCOIND_URL if url is None else url).rstrip("/")
        self.wallet = settings.BITCOIND_WALLET if wallet is None else wallet
        self.payout_wallet = (
            settings.BITCOIND_PAYOUT_WALLET if payout_wallet is None else payout_wallet
        )
        self.timeout = settings.BITCOIND_TIMEOUT if timeout is None else timeout
        # One connection per endpoint (node, deposit wallet, payout wallet). http.client is not
        # thread-safe, so calls are serialised; a process makes few RPCs.
        self._proxies: dict[str | None, Any] = {}
        self._used: dict[str | None, int] = {}
        self._lock = threading.RLock()

    # -- transport --

    def _service_url(self, wallet: str | None) -> str:
        if not self.url:
            raise ChainError("BITCOIND_URL is not set, so the bitcoin node cannot be reached.")
        if wallet is None:
            return self.url
        return f"{self.url}/wallet/{urllib.parse.quote(wallet, safe='')}"

    def _proxy(self, wallet: str | None):
        proxy = self._proxies.get(wallet)
        if proxy is None:
            from bitcoin.rpc import Proxy

            service_url = self._service_url(wallet)
            parts = urllib.parse.urlparse(service_url)
            if parts.scheme != "http" or not parts.hostname:
                raise ChainError("BITCOIND_URL must look like http://user:password@host:port")
            connection = _Connection(parts.hostname, port=parts.port or 80, timeout=self.timeout)
            proxy = Proxy(service_url=service_url, timeout=self.timeout, connection=connection)
            self._proxies[wallet] = proxy
            self._used[wallet] = 0
        return proxy

    def _drop(self, wallet: str | None) -> None:
        proxy = self._proxies.pop(wallet, None)
        self._used.pop(wallet, None)
        if proxy is not None:
            try:
                proxy.close()
            except Exception:  # a half-dead socket may complain while closing; it is gone anyway
                log.debug("closing a dropped bitcoind connection failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            for wallet in list(self._proxies):
                self._drop(wallet)

    def _rpc(self, wallet: str | None, method: str, *args: Any, read: bool = True) -> Any:
        """One RPC. Reads that hit a dropped keep-alive connection reconnect and retry once;
        anything else (and above all a send) is never repeated here."""
        from bitcoin.rpc import JSONRPCError

        with self._lock:
            for attempt in (1, 2):
                reused = self._used.get(wallet, 0) > 0
                proxy = self._proxy(wallet)
                try:
                    result = proxy.call(method, *args)
                except _Unauthorized:
                    self._drop(wallet)
                    raise ChainUnauthorized(
                        "bitcoind rejected the RPC credentials (HTTP 401): check the user and "
                        "password in BITCOIND_URL."
                    ) from None
                except JSONRPCError as exc:
                    error = getattr(exc, "error", {}) or {}
                    code, message = error.get("code"), error.get("message", "")
                    if code in _LIB_GARBAGE_CODES:
                        self._drop(wallet)  # the connection may be out of step after garbage
                        raise ChainError(f"bitcoind sent a garbled answer to {method}: {message}")
                    self._used[wallet] = self._used.get(wallet, 0) + 1
                    raise ChainError(
                        f"bitcoind refused {method}: {message} (code {code})", code=code
                    ) from None
                except TimeoutError:
                    self._drop(wallet)
                    raise ChainUnavailable(
                        f"bitcoind did not answer {method} within {self.timeout} s."
                    ) from None
                except _DROPPED as exc:
                    self._drop(wallet)
                    if read and reused and attempt == 1:
                        log.info("bitcoind dropped an idle connection (%s); reconnecting", exc)
                        continue
                    raise ChainUnavailable(
                        f"bitcoind closed the connection during {method}: {exc!r}"
                    ) from None
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(wallet)
                    raise ChainUnavailable(f"cannot reach bitcoind for {method}: {exc}") from None
                except ValueError as exc:  # json.loads of a body that is not UTF-8, and the like
                    self._drop(wallet)
                    raise ChainError(f"bitcoind sent a garbled answer to {method}: {exc}") from None
                self._used[wallet] = self._used.get(wallet, 0) + 1
                return result
        raise AssertionError("unreachable")

    def _wallet_rpc(
        self, wallet: str, method: str, *args: Any, read: bool = True, create: bool = False
    ) -> Any:
        """A wallet RPC. A wallet the node has not loaded (it restarted) is loaded and the call
        made again; only `create` (an import, before any address is dealt) may create it. A
        watcher that created an empty deposit wallet would silently see no payment at all."""
        try:
            return self._rpc(wallet, method, *args, read=read)
        except ChainError as exc:
            # This answer means the call did nothing, so loading the wallet and trying again is
            # safe.
            if exc.code != RPC_WALLET_NOT_FOUND or isinstance(exc, ChainUnavailable):
                raise
        self._load_wallet(wallet, create=create)
        return self._rpc(wallet, method, *args, read=read)

    def check_node(self, wallets: tuple[str, ...] = ()) -> None:
        """Raise ChainError unless this node may be credited from and paid from: it answers, our
        credentials work, it has finished starting (else code -28), it runs BITCOIN_NETWORK
        (WrongNetwork), and each of `wallets` is loaded or can be (code -18 otherwise)."""
        info = self._rpc(None, "getblockchaininfo")
        chain = info.get("chain") if isinstance(info, dict) else None
        network = settings.BITCOIN_NETWORK
        if chain != NODE_CHAINS.get(network):
            raise WrongNetwork(
                f"bitcoind runs the {chain!r} chain but BITCOIN_NETWORK is {network!r}: "
                f"point BITCOIND_URL at a {network} node (or fix BITCOIN_NETWORK)."
            )
        for wallet in wallets:
            try:
                self._wallet_rpc(wallet, "getwalletinfo")
            except ChainError as exc:
                if exc.code != RPC_WALLET_NOT_FOUND:
                    raise
                raise ChainError(
                    f"bitcoind has no wallet {wallet!r} (create it, or fix the wallet setting).",
                    code=exc.code,
                ) from None

    def _load_wallet(self, wallet: str, create: bool) -> None:
        try:
            self._rpc(None, "loadwallet", wallet)
            log.info("loaded bitcoind wallet %s", wallet)
            return
        except ChainError as exc:
            if _already_loaded(exc):
                return
            if exc.code != RPC_WALLET_NOT_FOUND or not create:
                raise ChainError(
                    f"bitcoind wallet {wallet!r} cannot be loaded: {exc}", code=exc.code
                ) from None
        try:
            # createwallet name disable_private_keys blank passphrase avoid_reuse descriptors
            # load_on_startup: a blank watch-only descriptor wallet that comes back after a restart.
            self._rpc(None, "createwallet", wallet, True, True, "", False, True, True)
            log.warning("created the watch-only deposit wallet %s in bitcoind", wallet)
        except ChainError as exc:
            if _already_loaded(exc):
                return
            if exc.code not in (RPC_WALLET_ERROR, RPC_WALLET_ALREADY_EXISTS):
                raise
            # Another process created it between our loadwallet and createwallet.
            try:
                self._rpc(None, "loadwallet", wallet)
            except ChainError as again:
                if not _already_loaded(again):
                    raise

    # -- deposits --

    def import_addresses(self, addresses: list[str], timestamp: int | str = "now") -> int:
        """Watch `addresses` in the deposit wallet (importdescriptors, 1000 a call).

        Each address is labelled with itself. "now": our addresses are imported before anyone is
        given them, so there is nothing earlier to rescan for.
        """
        failures: list[str] = []
        imported = 0
        for start in range(0, len(addresses), IMPORT_CHUNK):
            chunk = addresses[start : start + IMPORT_CHUNK]
            requests = [
                {"desc": address_descriptor(a), "timestamp": timestamp, "label": a} for a in chunk
            ]
            results = self._wallet_rpc(self.wallet, "importdescriptors", requests, create=True)
            if not isinstance(results, list) or len(results) != len(chunk):
                raise ChainError("bitcoind answered importdescriptors with something unexpected")
            for address, result in zip(chunk, results, strict=True):
                if isinstance(result, dict) and result.get("success") is True:
                    imported += 1
                else:
                    error = result.get("error") if isinstance(result, dict) else result
                    failures.append(f"{address}: {error}")
        if failures:
            raise ChainError(
                f"bitcoind refused {len(failures)} of {len(addresses)} addresses, e.g. "
                + "; ".join(failures[:3])
            )
        return imported

    def payments_since(
        self, cursor: str | None, confirmations: int = 1
    ) -> tuple[list[Payment], str]:
        """Payments to our addresses in blocks after `cursor` (a block hash) and in the mempool.

        `confirmations` is listsinceblock's target: the returned cursor stays that many blocks
        back from the tip, so a payment keeps being reported until it has that many, whatever
        happens between passes. Payments in blocks a reorg removed come back with removed=True.
        """
        result = self._wallet_rpc(
            self.wallet, "listsinceblock", cursor or "", max(1, confirmations), True, True
        )
        if not isinstance(result, dict) or not isinstance(result.get("lastblock"), str):
            raise ChainError("bitcoind answered listsinceblock with something unexpected")
        payments = _payments(result.get("transactions"), "listsinceblock")
        payments += _payments(result.get("removed", []), "listsinceblock", removed=True)
        return payments, result["lastblock"]

    def payments_for(self, address: str) -> list[Payment]:
        """Every payment to `address` the wallet knows, unconfirmed ones included.

        listreceivedbyaddress names the transactions (its amount is a total and is ignored),
        gettransaction gives each one's outputs. Conflicted transactions are not listed: they
        are not payments any more.
        """
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise ValueError(f"not a bitcoin address: {address!r}")
        rows = self._wallet_rpc(self.wallet, "listreceivedbyaddress", 0, True, True, address)
        if not isinstance(rows, list):
            raise ChainError("bitcoind answered listreceivedbyaddress with something unexpected")
        txids: list[str] = []
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("txids", []), list):
                raise ChainError("bitcoind answered listreceivedbyaddress with a broken row")
            if row.get("address") == address:
                txids.extend(t for t in row.get("txids", []) if t not in txids)
        payments: list[Payment] = []
        for txid in txids:
            tx = self._wallet_rpc(self.wallet, "gettransaction", txid, True)
            if not isinstance(tx, dict) or not isinstance(tx.get("details"), list):
                raise ChainError("bitcoind answered gettransaction with something unexpected")
            confirmations = tx.get("confirmations")
            common = {
                "txid": txid,
                "confirmations": confirmations,
                "mempoolconflicts": tx.get("mempoolconflicts", []),
            }
            entries = [{**d, **common} for d in tx["details"]]
            payments += [p for p in _payments(entries, "gettransaction") if p.address == address]
        return payments

    # -- payouts (used by withdrawals) --

    def send(self, address: str, sats: int, comment: str) -> str:
        """Pay `sats` to `address` from the payout wallet; returns the txid.

        A fresh connection is used so that a keep-alive connection the node dropped while idle
        cannot make the outcome unknown. If the answer is lost anyway (ChainUnavailable), the
        payment may have gone out: look for it with `find_sent(comment)`, never send again blind.
        """
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise ValueError(f"not a bitcoin address: {address!r}")
        amount = sats_to_btc_string(sats)
        with self._lock:
            self._drop(self.payout_wallet)
            txid = self._wallet_rpc(
                self.payout_wallet, "sendtoaddress", address, amount, comment, read=False
            )
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            raise ChainError(f"bitcoind answered sendtoaddress with {txid!r}, not a txid")
        return txid

    def send_many(self, outputs: list[tuple[str, int]], comment: str) -> str:
        """Pay every (address, sats) of `outputs` in one transaction from the payout wallet, with
        `comment` on the wallet's record of it (every output carries it in listtransactions, so
        `find_sent(comment)` finds the batch). Returns the txid.

        Core's `sendmany` refuses a repeated address: the caller merges them. As with `send`, a
        lost answer (ChainUnavailable) may follow a transaction that went out: look it up.
        """
        if not outputs:
            raise ValueError("a payout batch needs at least one output")
        amounts: dict[str, str] = {}
        for address, sats in outputs:
            if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
                raise ValueError(f"not a bitcoin address: {address!r}")
            if address in amounts:
                raise ValueError(f"{address} appears twice in one batch")
            amounts[address] = sats_to_btc_string(sats)
        with self._lock:
            self._drop(self.payout_wallet)
            # ("" is Core's required dummy; minconf 1 is ignored by Core 0.15+ and kept for it.)
            txid = self._wallet_rpc(
                self.payout_wallet, "sendmany", "", amounts, 1, comment, read=False
            )
        if not isinstance(txid, str) or not _TXID.fullmatch(txid):
            raise ChainError(f"bitcoind answered sendmany with {txid!r}, not a txid")
        return txid

    def find_sent(self, comment: str) -> str | None:
        """The txid of the payout sent with `comment`, or None if the payout wallet has none.

        A replacement (fee bump) keeps the comment, so several may match: prefer one that is not
        conflicted; a conflicted match is still returned, because "found" must never turn into
        "send again" while any transaction carrying this payout might yet confirm.
        """
        found: list[tuple[int, str]] = []
        skip = 0
        while True:
            page = self._wallet_rpc(self.payout_wallet, "listtransactions", "*", LIST_PAGE, skip)
            if not isinstance(page, list):
                raise ChainError("bitcoind answered listtransactions with something unexpected")
            for entry in page:
                if not isinstance(entry, dict):
                    raise ChainError("bitcoind answered listtransactions with a broken entry")
                if entry.get("category") == "send" and entry.get("comment") == comment:
                    txid, confirmations = entry.get("txid"), entry.get("confirmations")
                    if isinstance(txid, str) and _TXID.fullmatch(txid):
                        good = isinstance(confirmations, int) and confirmations >= 0
                        found.append((0 if good and not entry.get("abandoned") else 1, txid))
            if len(page) < LIST_PAGE:
                break
            skip += LIST_PAGE
        return min(found)[1] if found else None

    def payout_balance(self) -> int:
        """The payout wallet's spendable ("trusted") balance in sats."""
        result = self._wallet_rpc(self.payout_wallet, "getbalances")
        try:
            trusted = result["mine"]["trusted"]
        except (TypeError, KeyError):
            raise ChainError("bitcoind answered getbalances with something unexpected") from None
        return btc_to_sats(trusted)


def _already_loaded(exc: ChainError) -> bool:
    # Core 22+ says -35; older ones said -4 "... is already loaded".
    return exc.code == RPC_WALLET_ALREADY_LOADED or (
        exc.code == RPC_WALLET_ERROR and "already loaded" in str(exc)
    )


def _payments(entries: Any, method: str, removed: bool = False) -> list[Payment]:
    """The "receive" entries of a wallet listing, as payments. Anything malformed is an error:
    a listing we cannot read completely must not be half-credited."""
    if not isinstance(entries, list):
        raise ChainError(f"bitcoind answered {method} with something unexpected")
    payments = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ChainError(f"bitcoind answered {method} with a broken entry")
        # "send" entries, coinbase ("generate"/"immature"/"orphan") and entries without an
        # address (a script no address describes) are not deposits.
        if entry.get("category") != "receive" or "address" not in entry:
            continue
        address, txid = entry.get("address"), entry.get("txid")
        vout, confirmations = entry.get("vout"), entry.get("confirmations")
        if (
            not isinstance(address, str)
            or not isinstance(txid, str)
            or not _TXID.fullmatch(txid)
            or isinstance(vout, bool)
            or not isinstance(vout, int)
            or vout < 0
            or isinstance(confirmations, bool)
            or not isinstance(confirmations, int)
        ):
            raise ChainError(f"bitcoind answered {method} with a broken entry: {entry!r}")
        try:
            sats = btc_to_sats(entry.get("amount"))
        except (InvalidOperation, ValueError):
            raise ChainError(f"bitcoind sent an unreadable amount: {entry.get('amount')!r}")
        if sats <= 0:
            raise ChainError(f"bitcoind listed a received amount that is not positive: {entry!r}")
        replaced = confirmations == 0 and bool(entry.get("mempoolconflicts"))
        payments.append(
            Payment(address, f"{txid}:{vout}", sats, confirmations, removed, replaced=replaced)
        )
    return payments


# --- the process's backend -------------------------------------------------------------------

_lock = threading.Lock()
_chain: Any = None
_chain_pid: int | None = None
_override: Any = None


def build_chain(backend: str | None = None) -> NoChain | BitcoindChain:
    backend = settings.CHAIN_BACKEND if backend is None else backend
    if backend == "none":
        return NoChain()
    if backend == "bitcoind":
        return BitcoindChain()
    raise ImproperlyConfigured(f"CHAIN_BACKEND must be none or bitcoind, not {backend!r}")


def get_chain() -> Any:
    """This process's chain backend, built on first use (never at import)."""
    global _chain, _chain_pid
    if _override is not None:
        return _override
    if _chain is None or _chain_pid != os.getpid():
        with _lock:
            if _chain is None or _chain_pid != os.getpid():
                _chain, _chain_pid = build_chain(), os.getpid()
    return _chain


def set_chain(chain: Any) -> None:
    """Use `chain` in this process (tests); None goes back to the one built from settings."""
    global _override
    _override = chain
