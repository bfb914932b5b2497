"""Key builders for the bitcoinkeys documents (DESIGN.md section 4, seeds 001 and 002).

Key pool:
  keyset::<s>          {page: y} or, while refilling, {filling: y, fillUuid: "<s>:<y>", fromList: z}
  keypage::<s>::<y>    {keys: [{address, claimedBy, claimUuid}, ...]}  (claimedBy/claimUuid null when free)
                       (pool.py also stores {list: z, range: r, fillUuid}: where it was built from)
  keylist::current     {page: z}  (may point at a page that does not exist yet: "out of keys" is cheap)
  keylist::<z>         {ranges: [{addresses: [...], claimUuid}, ...]}
  keylistcount         counter: pages appended by import_keys
  imported::<address>  {page: z}  (an address is imported once; import_keys skips or refuses repeats)
                       (import_keys also stores {run, at}: the run that wrote the marker)
  keyimport::lease     {run, since}: one import_keys writer at a time (bitcoinkeys/importer.py)
  keypool::alert       {at, set, page, listPage}: out of keys; the admin shows a red banner

Deposits:
  deposit::<address>   {username, issuedAt, credited: {"<txid>:<vout>": {"sats": n, "token": t}}, lastToken}
                       (pool.py also stores {set, page}: the key page that dealt the address)
  depositdir::<g>      {address}, counter `depositdir`; written before deposit::<address>
  account.btc          {state: "none" | "getting" | "have", address?, set?, page?, uuid?, addresses: [...]}
                       (getting also has `since`: the resume pass waits a lease; the set's
                       `filling` lock carries `since` too)
  watchcursor::<name>  the chain backend's cursor (e.g. listsinceblock's lastblock)
  chainalert::<role>   {kind, message, since}: the node cannot be used for `role` (deposits,
                       withdrawals): wrong password, warming up, wrong network, wallet missing,
                       unreachable. Cleared when it answers correctly again (node_alerts.py)

Withdrawals:
  withdrawcount::<u> (counter), withdraw::<u>::<i>, withdrawdir::<g> {username, i, at} (counter `withdrawdir`)
"""

from __future__ import annotations

KEYLIST_CURRENT = "keylist::current"
KEYLIST_COUNT = "keylistcount"
DEPOSITDIR = "depositdir"
WITHDRAWDIR = "withdrawdir"
IMPORT_LEASE = "keyimport::lease"
KEYPOOL_ALERT = "keypool::alert"
CHAIN_ALERT_ROLES = ("deposits", "withdrawals")


def chainalert_key(role: str) -> str:
    return f"chainalert::{role}"


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


# --- key pool document shapes (additions for bitcoinkeys/pool.py and importer.py) ---


def fill_uuid(s: int, y: int) -> str:
    """The per-fill uuid of page y of set s: deterministic, so every process resuming the fill
    recognises the range it claimed (seeds 002; original-system.md 1.11)."""
    return f"{s}:{y}"


def new_keylist_page(addresses: list[str], page_size: int) -> dict:
    """`keylist::<z>`: the addresses cut into ranges of `page_size` (the last may be shorter),
    all unclaimed."""
    if not addresses:
        raise ValueError("a huge-list page holds at least one address")
    ranges = [
        {"addresses": addresses[i : i + page_size], "claimUuid": None}
        for i in range(0, len(addresses), page_size)
    ]
    return {"ranges": ranges}


def new_keypage(addresses: list[str], z: int, r: int, fill: str) -> dict:
    """`keypage::<s>::<y>` built from range r of huge-list page z (claimed with `fill`)."""
    return {
        "keys": [{"address": a, "claimedBy": None, "claimUuid": None} for a in addresses],
        "list": z,
        "range": r,
        "fillUuid": fill,
    }


def new_deposit(username: str, now: int, s: int, y: int) -> dict:
    """`deposit::<address>`; `set`/`page` say which key page dealt it (the audit checks the claim)."""
    return {
        "username": username,
        "issuedAt": now,
        "credited": {},
        "lastToken": None,
        "set": s,
        "page": y,
    }


def withdrawsubmit_key(username: str, submission: str) -> str:
    """A withdraw form's one-time token, claimed by insert: a form submitted twice queues once."""
    return f"withdrawsubmit::{username}::{submission}"
