"""The lock protocol: one intent journal per account (DESIGN.md 6.1).

`account.lock` is null or `{kind, ref, token, since, ...}` carrying everything needed to finish the
operation. A balance only changes through `settle`, the CAS that also clears a lock holding our
token and appends the ledger entry. Every step between `take_lock` and `settle` is idempotent, so
any process that reads the lock can finish it: the request that took it, the recovery worker, or
the next request touching the account after the lease. Recovery rolls forward, through the
finisher each app registers for its lock kinds.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from django.conf import settings

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from .gateway import LEDGER_PAGE_SIZE, account_key, ledger_page_key

log = logging.getLogger("accounts.money")

KINDS = ("buy", "deposit", "credit", "withdraw-hold", "withdraw-refund", "adjust", "reject")
MAX_ATTEMPTS = 50

Finisher = Callable[[Store, Clock, str, dict], None]
_finishers: dict[str, Finisher] = {}


class AccountError(Exception):
    message = "This account operation failed."

    def __str__(self) -> str:
        return self.args[0] if self.args else self.message


class AccountBusy(AccountError):
    message = "Another operation on your account is in progress; try again in a moment."


class InsufficientFunds(AccountError):
    message = "Your balance is too low for this."

    def __init__(self, balance: int, needed: int):
        super().__init__(self.message)
        self.balance, self.needed = balance, needed


class AccountMissing(AccountError):
    message = "There is no such account."


class AlreadyApplied(AccountError):
    message = "This request was already applied."


def register_finisher(kind: str, finisher: Finisher) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown lock kind {kind!r}")
    _finishers[kind] = finisher


def lease_seconds() -> int:
    return settings.LOCK_LEASE_SECONDS


def lease_expired(lock: dict, now: int) -> bool:
    return now - lock["since"] >= lease_seconds()


def new_token() -> str:
    return secrets.token_hex(16)


def _read(store: Store, username: str):
    try:
        return store.get(account_key(username))
    except NotFound:
        raise AccountMissing() from None


def take_lock(
    store: Store,
    clock: Clock,
    username: str,
    kind: str,
    ref: str,
    spend: int = 0,
    unique_ref: bool = False,
    **fields: Any,
) -> dict:
    """Take the account's lock for `kind`, only while it is free and the balance covers `spend`.

    A lock older than the lease is finished first (rolled forward), then we try again. Raises
    AccountBusy while another live lock holds the account, InsufficientFunds when short. With
    `unique_ref`, a ref already in the account's recent ledger or its live lock raises
    AlreadyApplied, checked on the same read the lock's CAS depends on, so a replayed request
    cannot slip in between.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown lock kind {kind!r}")
    for _ in range(MAX_ATTEMPTS):
        doc = _read(store, username)
        account = doc.value
        held = account.get("lock")
        if unique_ref and (
            (held and held["ref"] == ref) or any(e["ref"] == ref for e in account["ledger"])
        ):
            raise AlreadyApplied()
        if held:
            if lease_expired(held, clock.now()):
                finish(store, clock, username, held)
                continue
            raise AccountBusy()
        if spend > account["balance"]:
            raise InsufficientFunds(account["balance"], spend)
        # A fresh token for every attempt: a token must never name two different locks.
        lock = {"kind": kind, "ref": ref, "token": new_token(), "since": clock.now(), **fields}
        try:
            store.replace(account_key(username), {**account, "lock": lock}, doc.cas)
            return lock
        except CasMismatch:
            continue
        except Ambiguous:
            # Our lock may have landed, and may even have been finished by someone else since;
            # only the account can tell, and only while it still holds our token. Anything else
            # is an unknown outcome for the caller, never a reason to take a second lock.
            held = _read(store, username).value.get("lock")
            if held and held["token"] == lock["token"]:
                return held
            raise
    raise AccountBusy()


def _append_ledger(store: Store, username: str, account: dict, entry: dict) -> dict:
    """The account with `entry` appended, rolling a full in-doc ledger into its page first.

    The page insert is idempotent: page p always holds the same 100 entries (the account cannot
    change until our CAS lands), so an existing page written by a crashed attempt is the same page.
    """
    ledger = list(account.get("ledger", []))
    pages = account.get("ledgerPages", 0)
    if len(ledger) >= LEDGER_PAGE_SIZE:
        try:
            store.insert(ledger_page_key(username, pages), {"entries": ledger})
        except AlreadyExists:
            pass
        ledger, pages = [], pages + 1
    ledger.append(entry)
    return {**account, "ledger": ledger, "ledgerPages": pages}


def settle(
    store: Store, clock: Clock, username: str, token: str, delta: int, **entry_fields: Any
) -> bool:
    """Change the balance by `delta`, append the ledger entry and clear our lock, in one CAS.

    Returns False (and changes nothing) when the lock no longer holds our token: someone else
    already finished this operation.
    """
    for _ in range(MAX_ATTEMPTS):
        doc = _read(store, username)
        account = doc.value
        lock = account.get("lock")
        if not _holds(lock, token):
            return False
        balance = account["balance"] + delta
        if balance < 0:
            raise AssertionError(f"settle would take {username} below zero: {lock}")
        entry = {
            "at": clock.now(),
            "kind": lock["kind"],
            "ref": lock["ref"],
            "delta": delta,
            "balanceAfter": balance,
            **entry_fields,
        }
        updated = _append_ledger(store, username, account, entry)
        updated.update(balance=balance, lock=None)
        try:
            store.replace(account_key(username), updated, doc.cas)
        except (CasMismatch, Ambiguous):
            continue
        log.info(
            "money kind=%s user=%s delta=%d ref=%s token=%s balance=%d",
            lock["kind"], username, delta, lock["ref"], token, balance,
        )  # fmt: skip
        return True
    raise AccountBusy()


def release(store: Store, username: str, token: str) -> bool:
    """Clear our lock without touching the balance (the operation had no effect)."""
    for _ in range(MAX_ATTEMPTS):
        doc = _read(store, username)
        account = doc.value
        if not _holds(account.get("lock"), token):
            return False
        try:
            store.replace(account_key(username), {**account, "lock": None}, doc.cas)
            return True
        except (CasMismatch, Ambiguous):
            continue
    raise AccountBusy()


def _holds(lock: dict | None, token: str) -> bool:
    return bool(lock) and lock["token"] == token


def finish(store: Store, clock: Clock, username: str, lock: dict) -> None:
    """Roll `lock` forward to its end through the finisher registered for its kind."""
    finisher = _finishers.get(lock["kind"])
    if finisher is None:
        raise RuntimeError(f"no finisher registered for lock kind {lock['kind']!r}")
    log.warning(
        "recovering lock kind=%s user=%s ref=%s token=%s age=%ss",
        lock["kind"], username, lock["ref"], lock["token"], clock.now() - lock["since"],
    )  # fmt: skip
    finisher(store, clock, username, lock)


def resolve(store: Store, clock: Clock, username: str, force: bool = False) -> bool:
    """Finish the account's lock if it is past its lease (or at once with `force`)."""
    account = _read(store, username).value
    lock = account.get("lock")
    if not lock or not (force or lease_expired(lock, clock.now())):
        return False
    finish(store, clock, username, lock)
    return True
