"""Key builders and typed access for the documents the accounts app owns (DESIGN.md section 4).

`account::<u>` holds the balance, the one lock, the bitcoin deposit state, the API key and the
latest ledger entries; older entries roll over into `ledger::<u>::<p>`. `adjust::<request id>` is a
staff adjustment's commit point (accounts/adjust.py). `accountdir::<g>` entries
(numbered by the `accountdir` counter) let the audit and recovery reach every account by key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

LEDGER_PAGE_SIZE = 100
DIR_CHUNK = 500


def account_key(username: str) -> str:
    return f"account::{username}"


def ledger_page_key(username: str, page: int) -> str:
    return f"ledger::{username}::{page}"


def adjust_key(request_id: str) -> str:
    """A staff adjustment's request document: its existence means the request id is used."""
    return f"adjust::{request_id}"


def accountdir_key(index: int) -> str:
    return f"accountdir::{index}"


ACCOUNTDIR_COUNTER = "accountdir"


def new_api_key() -> str:
    return secrets.token_urlsafe(24)


def new_account(username: str, now: int) -> dict[str, Any]:
    return {
        "username": username,
        "balance": 0,
        "lock": None,
        "btc": {"state": "none"},
        "apiKey": new_api_key(),
        "ledger": [],
        "ledgerPages": 0,
        "createdAt": now,
    }


def get_account(store: Store, username: str) -> Doc:
    return store.get(account_key(username))


def get_balance(store: Store, username: str) -> int:
    """The balance alone (for the page header): no need to decode the ledger it is stored with."""
    return store.get_fields(account_key(username), ("balance",)).value["balance"]


def ensure_account(store: Store, clock: Clock, username: str) -> Doc:
    """Create `account::<u>` if missing (registration, or first login after a crash).

    The directory entry is written first so nothing exists that the audit cannot reach; a crash
    between the two leaves a dangling entry, which walkers skip, and a retry adds another entry for
    the same user, which walkers de-duplicate.
    """
    try:
        return get_account(store, username)
    except NotFound:
        pass
    index = store.counter(ACCOUNTDIR_COUNTER, 1, initial=0)
    store.insert(accountdir_key(index), {"username": username})
    try:
        store.insert(account_key(username), new_account(username, clock.now()))
    except AlreadyExists:
        pass
    return get_account(store, username)


def directory_size(store: Store, counter_key: str) -> int:
    try:
        return int(store.get(counter_key).value) + 1
    except NotFound:
        return 0


def advance_cursor(store: Store, key: str, doc: Doc | None, frontier: int) -> None:
    """Move a directory cursor `{"next": g}` forward to `frontier`, never back. Safe from any
    process without a lease: a cursor only passes entries that can never need work again, so
    whoever writes it, the value is right."""
    for _ in range(CURSOR_ATTEMPTS):
        try:
            if doc is None:
                store.insert(key, {"next": frontier})
            elif int(doc.value["next"]) >= frontier:
                return
            else:
                store.replace(key, {"next": frontier}, doc.cas)
            return
        except (AlreadyExists, CasMismatch, Ambiguous):
            try:
                doc = store.get(key)
            except NotFound:
                doc = None


CURSOR_ATTEMPTS = 50


def walk_directory(store: Store, counter_key: str, entry_key) -> Iterator[Any]:
    """Yield the values of every directory entry `entry_key(0..n-1)`, skipping dangling ones."""
    size = directory_size(store, counter_key)
    for start in range(0, size, DIR_CHUNK):
        keys = [entry_key(i) for i in range(start, min(size, start + DIR_CHUNK))]
        found = store.get_multi(keys)
        for key in keys:
            if key in found:
                yield found[key].value


def iter_usernames(store: Store) -> Iterator[str]:
    seen: set[str] = set()
    for entry in walk_directory(store, ACCOUNTDIR_COUNTER, accountdir_key):
        name = entry["username"]
        if name not in seen:
            seen.add(name)
            yield name


def iter_accounts(store: Store) -> Iterator[tuple[str, Doc]]:
    names = list(iter_usernames(store))
    for start in range(0, len(names), DIR_CHUNK):
        chunk = names[start : start + DIR_CHUNK]
        found = store.get_multi([account_key(n) for n in chunk])
        for name in chunk:
            doc = found.get(account_key(name))
            if doc is not None:
                yield name, doc


def full_ledger(store: Store, username: str, account: dict | None = None) -> list[dict]:
    """Every ledger entry of an account, oldest first."""
    if account is None:
        account = get_account(store, username).value
    pages = account.get("ledgerPages", 0)
    entries: list[dict] = []
    if pages:
        found = store.get_multi([ledger_page_key(username, p) for p in range(pages)])
        for p in range(pages):
            doc = found.get(ledger_page_key(username, p))
            if doc is not None:
                entries.extend(doc.value["entries"])
    entries.extend(account.get("ledger", []))
    return entries
