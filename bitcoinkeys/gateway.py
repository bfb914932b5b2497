"""Key builders for the bitcoinkeys documents (DESIGN.md section 4, seeds 001 and 002).

Key pool:
  keyset::<s>          {page: y} or, while refilling, {filling: y, fillUuid: "<s>:<y>", fromList: z}
  keypage::<s>::<y>    {keys: [{address, claimedBy, claimUuid}, ...]}  (claimedBy/claimUuid null when free)
  keylist::current     {page: z}  (may point at a page that does not exist yet: "out of keys" is cheap)
  keylist::<z>         {ranges: [{addresses: [...], claimUuid}, ...]}
  keylistcount         counter: pages appended by import_keys
  imported::<address>  {page: z}  (an address is imported once; import_keys skips or refuses repeats)

Deposits:
  deposit::<address>   {username, issuedAt, credited: {"<txid>:<vout>": {"sats": n, "token": t}}, lastToken}
  depositdir::<g>      {address}, counter `depositdir`; written before deposit::<address>
  account.btc          {state: "none" | "getting" | "have", address?, set?, page?, uuid?, addresses: [...]}
  watchcursor::<name>  the chain backend's cursor (e.g. listsinceblock's lastblock)

Withdrawals:
  withdrawcount::<u> (counter), withdraw::<u>::<i>, withdrawdir::<g> {username, i} (counter `withdrawdir`)
"""

from __future__ import annotations

KEYLIST_CURRENT = "keylist::current"
KEYLIST_COUNT = "keylistcount"
DEPOSITDIR = "depositdir"
WITHDRAWDIR = "withdrawdir"


def keyset_key(s: int) -> str:
    return f"keyset::{s}"


def keypage_key(s: int, y: int) -> str:
    return f"keypage::{s}::{y}"


def keylist_key(z: int) -> str:
    return f"keylist::{z}"


def imported_key(address: str) -> str:
    return f"imported::{address}"


def deposit_key(address: str) -> str:
    return f"deposit::{address}"


def depositdir_key(g: int) -> str:
    return f"depositdir::{g}"


def watchcursor_key(name: str) -> str:
    return f"watchcursor::{name}"


def withdrawcount_key(username: str) -> str:
    return f"withdrawcount::{username}"


def withdraw_key(username: str, i: int) -> str:
    return f"withdraw::{username}::{i}"


def withdrawdir_key(g: int) -> str:
    return f"withdrawdir::{g}"
