"""Address validation for every network and kind, and derivation from published BIP vectors."""

from __future__ import annotations

import re

import pytest
from embit import bip32, bip39, script
from embit.networks import NETWORKS as EMBIT_NETWORKS

from bitcoinkeys.addresses import AddressError, derive_addresses, validate_address

# "abandon abandon ... about", the mnemonic of the BIP-44/49/84/86 test vectors.
MNEMONIC = "abandon " * 11 + "about"
# BIP-84 account 0 (m/84'/0'/0') and its first receive addresses.
ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31m"
    "GDtKsAYz2oz2AGutZYs"
)
BIP84 = ["bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"]
# BIP-86 account 0 (m/86'/0'/0'): key-path-only taproot.
XPUB86 = (
    "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49y"
    "fdDEHGCtMMj92pReUsQ"
)
BIP86 = [
    "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",
    "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh",
]
# BIP-44 account 0 (m/44'/0'/0').
XPUB44 = (
    "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekku"
    "dhUd9yLb6qx39T9nMdj"
)
BIP44 = ["1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA", "1Ak8PffB2meyfYnbXZR9EGfLfFZVpzJvQP"]
# BIP-49 account 0 (m/49'/0'/0'): nested segwit.
YPUB = (
    "ypub6Ww3ibxVfGzLrAH1PNcjyAWenMTbbAosGNB6VvmSEgytSER9azLDWCxoJwW7Ke7icmizBMXrzBx9979FfaHxHcrA"
    "rf3zbeJJJUZPf663zsP"
)
BIP49 = "37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgf"
# BIP-84 testnet account 0 (m/84'/1'/0').
VPUB = (
    "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbB"
    "rf8ZhDYe2jWAqvZVnsc"
)
BIP84_TEST = "tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl"


# --- derivation -------------------------------------------------------------------------------


def test_bip84_zpub_gives_the_published_receive_addresses():
    assert derive_addresses(ZPUB, 0, 2, network="mainnet") == BIP84


def test_bip86_xpub_gives_the_published_taproot_addresses():
    assert derive_addresses(XPUB86, 0, 2, "p2tr", network="mainnet") == BIP86


def test_bip44_xpub_gives_the_published_legacy_addresses():
    assert derive_addresses(XPUB44, 0, 2, "p2pkh", network="mainnet") == BIP44


def test_bip49_ypub_gives_nested_segwit_by_itself():
    assert derive_addresses(YPUB, 0, 1, network="mainnet") == [BIP49]


def test_bip84_vpub_on_testnet_signet_and_regtest():
    assert derive_addresses(VPUB, 0, 1, network="testnet") == [BIP84_TEST]
    assert derive_addresses(VPUB, 0, 1, network="signet") == [BIP84_TEST]
    regtest = derive_addresses(VPUB, 0, 1, network="regtest")[0]
    assert regtest.startswith("bcrt1q") and regtest[6:-6] == BIP84_TEST[4:-6]


def test_derivation_agrees_with_deriving_the_full_path_from_the_seed():
    # The second way: from the seed, the whole hardened path, then the same receive branch.
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
    params = EMBIT_NETWORKS["main"]
    expected = [
        script.p2wpkh(root.derive(f"m/84h/0h/0h/0/{i}")).address(params) for i in range(5, 9)
    ]
    assert derive_addresses(ZPUB, 5, 9, network="mainnet") == expected
    expected = [
        script.p2tr(root.derive(f"m/86h/0h/0h/0/{i}").to_public()).address(params) for i in (7, 8)
    ]
    assert derive_addresses(XPUB86, 7, 9, "p2tr", network="mainnet") == expected


def test_an_empty_range_derives_nothing():
    assert derive_addresses(ZPUB, 3, 3, network="mainnet") == []


@pytest.mark.parametrize(
    "key, network, message",
    [
        (XPUB86, "regtest", "this is a mainnet key (xpub); this site uses regtest"),
        (ZPUB, "testnet", "this is a mainnet key (zpub); this site uses testnet"),
        (VPUB, "mainnet", "this is a testnet key (vpub); this site uses mainnet"),
        (ZPUB[:-1], "mainnet", "bad checksum"),
        ("hello", "mainnet", "not an extended public key"),
        (ZPUB[:40] + " " + ZPUB[40:], "mainnet", "contains spaces"),
        (BIP84[0], "mainnet", "not an extended public key"),
    ],
)
def test_unusable_extended_keys_are_refused_with_the_reason(key, network, message):
    with pytest.raises(AddressError, match=re.escape(message) if "|" not in message else message):
        derive_addresses(key, 0, 1, network=network)


def test_a_private_extended_key_is_refused_and_not_echoed():
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
    xprv = root.derive("m/84h/0h/0h").to_base58()
    with pytest.raises(AddressError, match="PRIVATE key") as exc:
        derive_addresses(xprv, 0, 1, network="mainnet")
    assert xprv not in str(exc.value)


def test_a_zpub_cannot_be_derived_as_another_kind():
    with pytest.raises(AddressError, match="zpub key is for p2wpkh addresses, not p2pkh"):
        derive_addresses(ZPUB, 0, 1, "p2pkh", network="mainnet")


def test_indexes_must_be_non_hardened_and_ordered():
    with pytest.raises(AddressError, match="indexes"):
        derive_addresses(ZPUB, 5, 4, network="mainnet")
    with pytest.raises(AddressError, match="indexes"):
        derive_addresses(ZPUB, 0, 2**31 + 1, network="mainnet")


# --- validation: accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, network",
    [
        (BIP44[0], "mainnet"),  # P2PKH
        (BIP49, "mainnet"),  # P2SH
        (BIP84[0], "mainnet"),  # P2WPKH
        ("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3", "mainnet"),  # P2WSH
        (BIP86[0], "mainnet"),  # P2TR
        ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "testnet"),  # P2PKH
        ("2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc", "testnet"),  # P2SH
        (BIP84_TEST, "testnet"),
        ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "signet"),
        ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "testnet4"),
        ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest"),
        ("bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk", "regtest"),
    ],
)
def test_valid_addresses_of_every_kind_are_accepted(address, network):
    assert validate_address(address, network) == address


def test_surrounding_whitespace_is_stripped_and_upper_case_bech32_is_lowered():
    assert validate_address(f"  {BIP84[0]}\n", "mainnet") == BIP84[0]
    assert validate_address(BIP84[0].upper(), "mainnet") == BIP84[0]


# --- validation: refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, network, message",
    [
        ("", "mainnet", "not a bitcoin address: it is empty"),
        ("   ", "mainnet", "not a bitcoin address: it is empty"),
        ("hello world", "mainnet", "contains spaces"),
        (BIP84[0][:20] + " " + BIP84[0][20:], "mainnet", "contains spaces"),
        (BIP84[0][:20] + "\t" + BIP84[0][20:], "mainnet", "contains spaces"),
        ("bc1q" + "q" * 100, "mainnet", "too long"),
        ("hello", "mainnet", "not a bitcoin address"),
        ("LVg2kJoFNg45Nbpy53h7Fe1wKyeXVRhMH9", "mainnet", "bad checksum|another coin"),
        ("ltc1qg82tflsvhnp6yagqhfp8qmhks2g6ypm6u0d0gs", "mainnet", "not a bitcoin address"),
        # mixed case bech32
        ("bc1qCR8te4kr609gcawutmrza0j4xv80jy8z306fyu", "mainnet", "mixes upper and lower case"),
        # truncated
        (BIP84[0][:-1], "mainnet", "bad checksum"),
        (BIP44[0][:-1], "mainnet", "bad checksum"),
        (BIP44[0][:20], "mainnet", "too short"),
        ("bc1qcr8te", "mainnet", "bad checksum|too short"),
        # bad checksum (one character changed)
        (BIP84[0][:-1] + "v", "mainnet", "bad checksum"),
        ("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabB", "mainnet", "bad checksum"),
        ("37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgg", "mainnet", "bad checksum"),
        # wrong network, named
        (BIP84_TEST, "mainnet", "this is a testnet address; this site uses mainnet"),
        (
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "mainnet",
            "testnet address; this site uses mainnet",
        ),
        (BIP84[0], "testnet", "this is a mainnet address; this site uses testnet"),
        (BIP44[0], "regtest", "this is a mainnet address; this site uses regtest"),
        (BIP84_TEST, "regtest", "this is a testnet address; this site uses regtest"),
        ("bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk", "signet", "regtest address"),
        # BIP-350 invalid vectors
        (
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
            "mainnet",
            "bad checksum: a witness version 1 address uses a bech32m checksum",
        ),
        (
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",
            "mainnet",
            "bad checksum: a witness version 0 address uses a bech32 checksum",
        ),
        ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "mainnet", "20 or 32 bytes"),
        ("bc1pw5dgrnzv", "mainnet", "malformed"),
        (
            "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",
            "mainnet",
            "cannot appear in a bech32 address",
        ),
        # valid but unsupported witness versions
        ("BC1SW50QGDZ25J", "mainnet", "witness version 16"),
        ("bc1zr4pq63lzkdcvjgmw9h8s07c3cfgf0q2ad", "mainnet", "bad checksum|witness version 2"),
        (
            "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
            "mainnet",
            "witness version 1 with a 40-byte program",
        ),
        # keys are not addresses
        (
            "5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ",
            "mainnet",
            "private key \\(WIF\\), not an address",
        ),
        (XPUB44, "mainnet", "too long|extended key"),
    ],
)
def test_invalid_addresses_are_refused_with_a_precise_reason(text, network, message):
    with pytest.raises(AddressError, match=message):
        validate_address(text, network)


def test_an_unknown_network_is_a_configuration_error_not_an_address_error():
    with pytest.raises(ValueError, match="unknown bitcoin network 'bitcoin'") as exc:
        validate_address(BIP84[0], "bitcoin")
    assert not isinstance(exc.value, AddressError)
