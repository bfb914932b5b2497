"""Bitcoin address validation and derivation from extended public keys (DESIGN.md 6.4, 6.5).

python-bitcoinlib cannot parse bech32m or SLIP-132 keys, so this module uses embit (pure Python)
for checksums, network prefixes and BIP-32 derivation. Every refusal is an `AddressError` whose
message tells a person what is wrong ("bad checksum", "this is a testnet address; this site uses
mainnet", "contains spaces"...): the withdrawal form and `import_keys` show it as is.

Networks are the names `settings.BITCOIN_NETWORK` takes: mainnet, testnet (and testnet4), signet,
regtest. testnet, testnet4 and signet share every prefix; regtest shares their base58 prefixes but
has its own bech32 prefix (bcrt).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from embit import base58, bech32, hashes, script
from embit.bip32 import HDKey
from embit.networks import NETWORKS as EMBIT_NETWORKS

# Our network names -> embit's parameter sets.
NETWORKS = {
    "mainnet": "main",
    "testnet": "test",
    "testnet4": "test",
    "signet": "signet",
    "regtest": "regtest",
}
KINDS = ("p2wpkh", "p2pkh", "p2tr", "p2sh-p2wpkh")
# Bech32 strings are at most 90 characters (BIP-173); base58 addresses are at most 35.
MAX_LENGTH = 90
# BIP-32: indexes from 2**31 up are hardened, which an extended public key cannot derive.
MAX_INDEX = 2**31

_SPACE = re.compile(r"\s")
_HRP_FAMILY = {"bc": "mainnet", "tb": "testnet", "bcrt": "regtest"}
_BASE58_FAMILY = {0x00: "mainnet", 0x05: "mainnet", 0x6F: "testnet", 0xC4: "testnet"}


class AddressError(ValueError):
    """An address or extended key that this site cannot accept; the message is for people."""


def network_params(network: str) -> dict:
    try:
        return EMBIT_NETWORKS[NETWORKS[network]]
    except KeyError:
        raise ValueError(
            f"unknown bitcoin network {network!r}; use one of {', '.join(NETWORKS)}"
        ) from None


def validate_address(text: str, network: str) -> str:
    """The address in `text` if it is valid for `network`, in canonical form; else AddressError.

    Only surrounding whitespace is stripped. Bech32 addresses come back lower case (an all upper
    case one, as in QR codes, is valid and means the same address); base58 ones as given.
    """
    if not isinstance(text, str):
        raise AddressError("not a bitcoin address")
    return _validate(text.strip(), network)


# Pure function of its arguments; the bech32 checksum is pure Python (~0.1 ms), and the same
# addresses come back often (an import's second pass re-checks each line, forms re-submit).
@lru_cache(maxsize=4096)
def _validate(candidate: str, network: str) -> str:
    params = network_params(network)
    if not candidate:
        raise AddressError("not a bitcoin address: it is empty")
    if _SPACE.search(candidate):
        raise AddressError("contains spaces; a bitcoin address has none (was it split or padded?)")
    if len(candidate) > MAX_LENGTH:
        raise AddressError(
            f"too long for a bitcoin address ({len(candidate)} characters; at most {MAX_LENGTH})"
        )
    if not candidate.isascii() or not candidate.isprintable():
        raise AddressError("not a bitcoin address: it contains characters no address has")
    lowered = candidate.lower()
    for hrp in _HRP_FAMILY:
        if lowered.startswith(hrp + "1"):
            return _validate_segwit(candidate, hrp, params, network)
    return _validate_base58(candidate, params, network)


def _wrong_network(family: str, network: str) -> AddressError:
    return AddressError(f"this is a {family} address; this site uses {network}")


def _validate_segwit(candidate: str, hrp: str, params: dict, network: str) -> str:
    if candidate != candidate.lower() and candidate != candidate.upper():
        raise AddressError(
            "mixes upper and lower case; a bech32 address is written in one case only"
        )
    address = candidate.lower()
    data_part = address[len(hrp) + 1 :]
    bad = [ch for ch in data_part if ch not in bech32.CHARSET]
    if bad:
        raise AddressError(
            f"not a bitcoin address: {bad[0]!r} cannot appear in a bech32 address "
            "(it never uses 1, b, i or o after the prefix)"
        )
    if len(data_part) < 8:
        raise AddressError("not a bitcoin address: too short (truncated?)")
    data = [bech32.CHARSET.find(ch) for ch in data_part]
    encoding = bech32.bech32_verify_checksum(hrp, data)
    if encoding is None:
        raise AddressError("bad checksum: a character is mistyped, missing or extra")
    if hrp != params["bech32"]:
        raise _wrong_network(_HRP_FAMILY[hrp], network)
    values = data[:-6]
    version = values[0]
    program = bech32.convertbits(values[1:], 5, 8, False)
    if version > 16 or program is None or not 2 <= len(program) <= 40:
        raise AddressError("not a bitcoin address: its witness program is malformed")
    if version == 0:
        if encoding != bech32.Encoding.BECH32:
            raise AddressError(
                "bad checksum: a witness version 0 address uses a bech32 checksum, "
                "but this one has a bech32m checksum"
            )
        if len(program) not in (20, 32):
            raise AddressError(
                f"not a bitcoin address: a witness version 0 program is 20 or 32 bytes, "
                f"not {len(program)}"
            )
        return address
    if encoding != bech32.Encoding.BECH32M:
        raise AddressError(
            f"bad checksum: a witness version {version} address uses a bech32m checksum "
            "(BIP-350), but this one has a bech32 checksum"
        )
    if version == 1 and len(program) == 32:
        return address
    raise AddressError(
        f"uses witness version {version} with a {len(program)}-byte program, which this site "
        "does not support (it accepts segwit v0 and taproot v1 addresses)"
    )


def _validate_base58(candidate: str, params: dict, network: str) -> str:
    bad = [ch for ch in candidate if ch not in base58.B58_DIGITS]
    if bad:
        raise AddressError(f"not a bitcoin address: {bad[0]!r} cannot appear in one")
    if len(candidate) < 26:
        raise AddressError("not a bitcoin address: too short (truncated?)")
    raw = base58.decode(candidate)
    payload, check = raw[:-4], raw[-4:]
    if len(payload) < 1 or hashes.double_sha256(payload)[:4] != check:
        raise AddressError("bad checksum: a character is mistyped, missing or extra")
    if len(payload) == 78:
        raise AddressError("this is an extended key (xpub), not an address")
    if payload[0] in (0x80, 0xEF) and len(payload) in (33, 34):
        raise AddressError("this is a private key (WIF), not an address; keep it secret")
    if len(payload) != 21 or payload[0] not in _BASE58_FAMILY:
        raise AddressError("not a bitcoin address (an address of another coin?)")
    if payload[:1] not in (params["p2pkh"], params["p2sh"]):
        raise _wrong_network(_BASE58_FAMILY[payload[0]], network)
    return candidate


# --- extended public keys -------------------------------------------------------------------

# SLIP-132 version prefixes: (family, kind the prefix implies or None for "any", private?).
_EXTENDED: dict[bytes, tuple[str, str, str | None, bool]] = {}
for _name, _family in (("main", "mainnet"), ("test", "testnet")):
    for _prefix, _kind in (("xpub", None), ("ypub", "p2sh-p2wpkh"), ("zpub", "p2wpkh")):
        _EXTENDED[EMBIT_NETWORKS[_name][_prefix]] = (_family, _prefix, _kind, False)
    for _prefix in ("xprv", "yprv", "zprv", "Yprv", "Zprv"):
        _EXTENDED[EMBIT_NETWORKS[_name][_prefix]] = (_family, _prefix, None, True)
    for _prefix in ("Ypub", "Zpub"):
        _EXTENDED[EMBIT_NETWORKS[_name][_prefix]] = (_family, _prefix, "multisig", False)
# What people call the testnet prefixes.
_TEST_NAMES = {"xpub": "tpub", "ypub": "upub", "zpub": "vpub"}


def parse_extended_key(text: str, network: str, kind: str | None = None) -> tuple[HDKey, str]:
    """The extended public key in `text` and the address kind to derive; AddressError if unusable.

    `kind` None means the key's own kind (zpub/vpub: p2wpkh, ypub/upub: p2sh-p2wpkh), else p2wpkh.
    """
    params = network_params(network)
    candidate = text.strip() if isinstance(text, str) else ""
    if not candidate:
        raise AddressError("not an extended public key: it is empty")
    if _SPACE.search(candidate):
        raise AddressError("contains spaces; an extended public key has none")
    if kind is not None and kind not in KINDS:
        raise AddressError(f"unknown address kind {kind!r}; use one of {', '.join(KINDS)}")
    if any(ch not in base58.B58_DIGITS for ch in candidate) or len(candidate) < 100:
        # Extended keys are 111 base58 characters; addresses and other text are not.
        raise AddressError("not an extended public key (xpub, zpub, tpub, vpub...)")
    try:
        payload = base58.decode_check(candidate)
    except ValueError:
        raise AddressError("bad checksum: this extended public key is mistyped or truncated")
    if len(payload) != 78 or payload[:4] not in _EXTENDED:
        raise AddressError("not an extended public key (xpub, zpub, tpub, vpub...)")
    family, prefix, implied, private = _EXTENDED[payload[:4]]
    shown = _TEST_NAMES.get(prefix, prefix) if family == "testnet" else prefix
    if private:
        raise AddressError(
            f"this is an extended PRIVATE key ({shown}); give the extended public key "
            "and keep this one secret"
        )
    if implied == "multisig":
        raise AddressError(f"a {shown} key is for multisig wallets, which this site does not use")
    if payload[:4] != params[prefix]:
        raise AddressError(f"this is a {family} key ({shown}); this site uses {network}")
    if kind is None:
        kind = implied or "p2wpkh"
    elif implied is not None and kind != implied:
        raise AddressError(
            f"a {shown} key is for {implied} addresses, not {kind}; "
            "leave out the kind or export an xpub"
        )
    try:
        key = HDKey.parse(payload)
    except Exception as exc:  # embit raises several types for a malformed key
        raise AddressError(f"not a valid extended public key: {exc}") from None
    return key, kind


def _address_of(child: HDKey, kind: str, params: dict) -> str:
    pub = child.get_public_key()
    if kind == "p2wpkh":
        out = script.p2wpkh(pub)
    elif kind == "p2pkh":
        out = script.p2pkh(pub)
    elif kind == "p2tr":
        out = script.p2tr(pub)  # BIP-86: key-path only, no script tree
    else:
        out = script.p2sh(script.p2wpkh(pub))
    return out.address(params)


def iter_derived_addresses(
    xpub: str, start: int, end: int, kind: str | None = None, network: str | None = None
) -> Iterator[tuple[int, str]]:
    """(index, address) for the receive branch m/0/i of `xpub`, i from `start` up to `end`
    excluded; a generator, so a long range is never held in memory."""
    if network is None:
        from django.conf import settings

        network = settings.BITCOIN_NETWORK
    key, kind = parse_extended_key(xpub, network, kind)
    if not (0 <= start <= end <= MAX_INDEX):
        raise AddressError(f"indexes must satisfy 0 <= from <= to <= {MAX_INDEX}")
    params = network_params(network)
    receive = key.child(0)
    for i in range(start, end):
        yield i, _address_of(receive.child(i), kind, params)


def derive_addresses(
    xpub: str, start: int, end: int, kind: str | None = None, network: str | None = None
) -> list[str]:
    """Receive addresses m/0/start .. m/0/(end-1) of `xpub` (see iter_derived_addresses)."""
    return [address for _, address in iter_derived_addresses(xpub, start, end, kind, network)]
