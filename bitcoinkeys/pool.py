"""The deposit-address key pool: dealing addresses to users (DESIGN.md 6.3, seeds 001 and 002).

Shape (documents in gateway.py): KEYPOOL_SETS sets, each a chain of key pages of
KEYPOOL_PAGE_SIZE addresses; a user is dealt the first unclaimed key of a random set's current
page. When a set runs out of pages it refills its next page from one range of the huge list
(`keylist::<z>`, pages appended by import_keys), claimed by a deterministic per-fill uuid.

Every claim is a CAS that writes a uuid, and every step first looks for its own uuid, so any
process can resume any half-done step from what is stored: the account's `getting` state
(set, page, uuid) and the set's `filling` lock (page, fill uuid, huge-list page). Those
processes are the request itself, the same user in another tab, and the recovery pass
(`resume_fills` and `StuckGetting`, or `resume_pending` for both), which picks up what is older
than the lease.

Ordering facts the walk relies on (nothing is ever deleted or unclaimed):
- key pages of a set exist contiguously from 0; a set moves to `{page: y}` only once page y
  exists, and fills page y only after page y-1 was seen full (or y == 0);
- a page, once full, stays full, and a key is claimed only as the first unclaimed one, so a walk
  from the account's stored page meets its own uuid before any free key;
- the same holds for ranges on the huge list, walked from the fill lock's `fromList`.

Unlike the original's initializer (original-system.md 3.14), init creates no key page 0: keys
come only from import_keys, so init needs no key file, and the first request for a set fills
its page 0 from the huge list like any other page.
"""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any

from django.conf import settings

from accounts import locks, recovery
from accounts.gateway import account_key
from accounts.shards import ALL, Shard
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

from . import gateway as g

log = logging.getLogger("bitcoinkeys.pool")

# CAS retries per step before answering "busy"; each lost CAS means another process progressed.
MAX_ATTEMPTS = 200
CHUNK = 500


class KeyPoolError(Exception):
    message = "Deposit addresses are unavailable right now; try again later."

    def __str__(self) -> str:
        return self.args[0] if self.args else self.message


class OutOfKeys(KeyPoolError):
    message = (
        "We have run out of deposit addresses for the moment; staff have been alerted. "
        "Try again later."
    )

    def __init__(self, set_index: int | None = None):
        super().__init__(self.message)
        self.set = set_index


class PoolBusy(KeyPoolError):
    message = "Deposit addresses are in high demand right now; try again in a moment."


class PoolCorrupt(KeyPoolError):
    """A stored state the protocol cannot produce; dealing stops rather than guess."""

    message = "Deposit addresses are unavailable because of an internal error; staff must look."


def new_uuid() -> str:
    return secrets.token_hex(12)


# --- root documents ---------------------------------------------------------------------------


def init_key_sets(store: Store, clock: Clock) -> list[str]:
    """Create `keyset::<s>` = {page: 0} for every set and `keylist::current` = {page: 0}, if absent.

    Reads in batches and inserts only what is missing, so a re-run costs a few reads. Key pages
    are not created here (see the module docstring): the first request for a set fills page 0.
    """
    created: list[str] = []
    n = settings.KEYPOOL_SETS
    for start in range(0, n, CHUNK):
        keys = [g.keyset_key(s) for s in range(start, min(n, start + CHUNK))]
        found = store.get_multi(keys)
        for key in keys:
            if key not in found and _insert_if_absent(store, key, {"page": 0}):
                created.append(key)
    if _insert_if_absent(store, g.KEYLIST_CURRENT, {"page": 0}):
        created.append(g.KEYLIST_CURRENT)
    return created


def _insert_if_absent(store: Store, key: str, value: Any) -> bool:
    """Insert `value`; False if the key already exists. An ambiguous insert is re-read."""
    for _ in range(MAX_ATTEMPTS):
        try:
            store.insert(key, value)
            return True
        except AlreadyExists:
            return False
        except Ambiguous:
            try:
                store.get(key)
                return False
            except NotFound:
                continue
    raise PoolBusy()


# --- dealing ----------------------------------------------------------------------------------


def get_deposit_address(store: Store, clock: Clock, username: str, rng: Any = random) -> str:
    """The user's current deposit address, dealing one from the pool if they have none.

    Resumes a request left in `getting` (another tab, a crash). Raises AccountBusy while the
    account is locked by a money operation (DESIGN.md 6.1 rule 4), OutOfKeys when the huge list
    is exhausted (the account stays `getting` and resumes after import_keys).
    """
    return _deal(store, clock, username, rng, fresh=False, replacing=None)


def new_deposit_address(
    store: Store, clock: Clock, username: str, rng: Any = random, replacing: str | None = None
) -> str:
    """Deal the user a new address; the old one stays in `addresses` (and stays watched).

    With `replacing`, a request that finds the current address already differs (a second click,
    another tab) returns that address instead of dealing yet another one.
    """
    return _deal(store, clock, username, rng, fresh=True, replacing=replacing)


def _read_account(store: Store, username: str) -> Doc:
    try:
        return store.get(account_key(username))
    except NotFound:
        raise locks.AccountMissing() from None


def _wait_for_lock(store: Store, clock: Clock, username: str, account: dict) -> bool:
    """Rule 4: no bitcoin key step changes a locked account. True if we finished an expired lock
    (the caller re-reads); raises AccountBusy while a live lock holds the account."""
    lock = account.get("lock")
    if not lock:
        return False
    if locks.lease_expired(lock, clock.now()):
        locks.resolve(store, clock, username)
        return True
    raise locks.AccountBusy()


def _deal(
    store: Store, clock: Clock, username: str, rng: Any, fresh: bool, replacing: str | None
) -> str:
    # With `fresh`, the request ends once the account holds an address other than the one it
    # replaces (`replacing`, else the one first seen): whether our have -> getting landed, or an
    # ambiguous one landed and someone else finished it, or another tab got there first.
    for _ in range(MAX_ATTEMPTS):
        doc = _read_account(store, username)
        account = doc.value
        btc = account.get("btc") or {"state": "none"}
        state = btc.get("state", "none")
        if state == "have":
            if not fresh:
                return btc["address"]
            if replacing is None:
                replacing = btc["address"]
            elif btc["address"] != replacing:
                return btc["address"]
        if _wait_for_lock(store, clock, username, account):
            continue
        if state == "getting":
            return _finish_getting(store, clock, username, btc)
        _start_getting(store, clock, username, doc, btc, rng)
        if state == "none":
            fresh = False  # from none, whatever address the account ends up with is new
    raise PoolBusy()


def _start_getting(
    store: Store, clock: Clock, username: str, doc: Doc, btc: dict, rng: Any
) -> bool:
    """CAS the account none/have -> getting{set, page, uuid, since}; False if it may not have
    landed (the caller re-reads the account and decides from what it finds)."""
    s = rng.randrange(settings.KEYPOOL_SETS)
    state = {
        "state": "getting",
        "set": s,
        "page": _start_page(store, s),
        "uuid": new_uuid(),
        "since": clock.now(),
        "addresses": list(btc.get("addresses", [])),
    }
    try:
        store.replace(account_key(username), {**doc.value, "btc": state}, doc.cas)
        return True
    except (CasMismatch, Ambiguous):
        return False  # the re-read decides: ours landed, another tab's did, or try again


def _start_page(store: Store, s: int) -> int:
    """Where a new request starts walking set s: its current page, or the page being filled."""
    for _ in range(MAX_ATTEMPTS):
        try:
            value = store.get(g.keyset_key(s)).value
        except NotFound:
            _insert_if_absent(store, g.keyset_key(s), {"page": 0})  # init not run for this set
            continue
        return value["filling"] if "filling" in value else value["page"]
    raise PoolBusy()


def _finish_getting(store: Store, clock: Clock, username: str, btc: dict) -> str:
    address, y = _claim_key(store, clock, btc["set"], btc["page"], btc["uuid"], username)
    _record_deposit(store, clock, username, address, btc["set"], y)
    return _become_have(store, clock, username, btc["uuid"], address)


def _claim_key(
    store: Store, clock: Clock, s: int, page: int, uuid: str, username: str
) -> tuple[str, int]:
    """Our key in set s: the one holding our uuid, else the first free one, from `page` on."""
    y = page
    passed_full = False
    refills = 0
    for _ in range(MAX_ATTEMPTS):
        key = g.keypage_key(s, y)
        try:
            doc = store.get(key)
        except NotFound:
            refills += 1
            if refills > 2:
                raise _corrupt(f"{key} is still missing after its set was refilled") from None
            _ensure_page(store, clock, s, y)
            passed_full = False  # a fill leaves the set's pointer at y
            continue
        refills = 0
        if passed_full:
            _advance_set_pointer(store, s, y)
            passed_full = False
        keys = doc.value["keys"]
        for entry in keys:
            if entry["claimUuid"] == uuid:
                return entry["address"], y
        free = next((i for i, entry in enumerate(keys) if entry["claimUuid"] is None), None)
        if free is None:
            y += 1  # full pages stay full: nothing of ours can be behind us
            passed_full = True
            continue
        keys = list(keys)
        keys[free] = {**keys[free], "claimedBy": username, "claimUuid": uuid}
        try:
            store.replace(key, {**doc.value, "keys": keys}, doc.cas)
            return keys[free]["address"], y
        except (CasMismatch, Ambiguous):
            continue  # re-read: our claim may have landed, or someone took that key
    raise PoolBusy()


def _advance_set_pointer(store: Store, s: int, y: int) -> None:
    """Best effort: move `keyset::<s>` from an older page to y, which exists (others are full).

    Only an optimisation for new requests; walks never depend on it, so a lost race is fine.
    """
    try:
        doc = store.get(g.keyset_key(s))
    except NotFound:
        return
    if "filling" in doc.value or doc.value["page"] >= y:
        return
    try:
        store.replace(g.keyset_key(s), {"page": y}, doc.cas)
    except (CasMismatch, Ambiguous):
        pass


def _ensure_page(store: Store, clock: Clock, s: int, y: int) -> None:
    """Make `keypage::<s>::<y>` exist (the caller saw it missing): finish the set's fill in
    progress, or lock the set and fill page y. Raises OutOfKeys when the huge list is exhausted."""
    key = g.keyset_key(s)
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(key)
        except NotFound:
            _insert_if_absent(store, key, {"page": 0})
            continue
        value = doc.value
        if "filling" in value:
            _finish_fill(store, clock, s, doc)
            if value["filling"] >= y:
                return
            continue  # an earlier page was being filled; now fill ours
        if value["page"] > y:
            # Our caller saw page y missing before someone filled it (and moved on): pages below
            # a set's pointer always exist. The caller re-reads it.
            return
        lock = {
            "filling": y,
            "fillUuid": g.fill_uuid(s, y),
            "fromList": _list_current(store),
            "since": clock.now(),
        }
        try:
            cas = store.replace(key, lock, doc.cas)
        except (CasMismatch, Ambiguous):
            continue  # re-read: our lock may have landed, or someone else locked the set
        # From {page: q < y} page y cannot exist yet; from {page: y} it may have been filled
        # since our caller looked (or it is page 0 of a new set): _finish_fill checks first.
        _finish_fill(store, clock, s, Doc(lock, cas), fresh=value["page"] < y)
        return
    raise PoolBusy()


def _list_current(store: Store) -> int:
    try:
        return store.get(g.KEYLIST_CURRENT).value["page"]
    except NotFound:
        return 0


def _last_list_page(store: Store) -> int:
    """The highest huge-list page number import_keys has allocated (-1 if none)."""
    try:
        return int(store.get(g.KEYLIST_COUNT).value)
    except NotFound:
        return -1


def _finish_fill(store: Store, clock: Clock, s: int, locked: Doc, fresh: bool = False) -> None:
    """Drive the fill lock in `locked` (`keyset::<s>` with its cas) to the end: claim a range,
    build the page, unlock the set. Idempotent: any process may run it, any number of times.

    `fresh`: we have just taken this lock from `{page: q}` with q < y, so page y cannot exist
    yet (a fill that built it would have unlocked the set to `{page: y}`, and pointers never go
    back). Re-locking from `{page: y}` is not fresh: that fill may just have finished.
    """
    lock = locked.value
    y, fill = lock["filling"], lock["fillUuid"]
    page_key = g.keypage_key(s, y)
    built = False
    if not fresh:
        try:
            store.get(page_key)
            built = True
        except NotFound:
            pass
    if not built:
        addresses, z, r = _claim_range(store, clock, s, locked)
        # Every process builds the same page from the same range, so "exists" is success.
        _insert_if_absent(store, page_key, g.new_keypage(addresses, z, r, fill))
        _clear_alert(store)
    cas = locked.cas
    for _ in range(MAX_ATTEMPTS):
        try:
            store.replace(g.keyset_key(s), {"page": y}, cas)
            return
        except (CasMismatch, Ambiguous):
            try:
                current = store.get(g.keyset_key(s))
            except NotFound:
                return
            if current.value.get("fillUuid") != fill:
                return  # someone else unlocked it (or our ambiguous unlock landed)
            cas = current.cas  # still our lock, rewritten (fromList moved): unlock that
    raise PoolBusy()


def _claim_range(store: Store, clock: Clock, s: int, locked: Doc) -> tuple[list[str], int, int]:
    """The huge-list range of this fill: the one holding its fill uuid, else the first free one,
    walking pages from the lock's `fromList` (full pages stay full, so ours cannot be behind)."""
    lock = locked.value
    fill = lock["fillUuid"]
    z = lock["fromList"]
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(g.keylist_key(z))
        except NotFound:
            if z < _last_list_page(store):
                # A hole: its import died between allocating the number and writing the page
                # (one importer at a time writes pages in order, so a page below the last
                # allocated one that is still missing never comes). Skip it for good.
                _advance_list_current(store, z)
                z += 1
                continue
            _out_of_keys(store, clock, s, locked, z)
        ranges = doc.value["ranges"]
        for r, entry in enumerate(ranges):
            if entry["claimUuid"] == fill:
                return entry["addresses"], z, r
        free = next((r for r, entry in enumerate(ranges) if entry["claimUuid"] is None), None)
        if free is None:
            _advance_list_current(store, z)
            z += 1
            continue
        ranges = list(ranges)
        ranges[free] = {**ranges[free], "claimUuid": fill}
        try:
            store.replace(g.keylist_key(z), {**doc.value, "ranges": ranges}, doc.cas)
            return ranges[free]["addresses"], z, free
        except (CasMismatch, Ambiguous):
            continue  # re-read: our claim may have landed, or another set took that range
    raise PoolBusy()


def _advance_list_current(store: Store, z: int) -> None:
    """Best effort: `keylist::current` past page z, which we saw full (or a dead hole)."""
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(g.KEYLIST_CURRENT)
        except NotFound:
            _insert_if_absent(store, g.KEYLIST_CURRENT, {"page": 0})
            continue
        if doc.value["page"] > z:
            return
        try:
            store.replace(g.KEYLIST_CURRENT, {"page": z + 1}, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue


def _out_of_keys(store: Store, clock: Clock, s: int, locked: Doc, z: int) -> None:
    """Huge-list page z does not exist yet: leave the set locked (resumable), raise the alert."""
    lock = locked.value
    if lock["fromList"] != z:
        # Later attempts (and the resume pass) start at the end instead of re-reading full pages.
        try:
            store.replace(g.keyset_key(s), {**lock, "fromList": z}, locked.cas)
        except (CasMismatch, Ambiguous):
            pass
    alert = {"at": clock.now(), "set": s, "page": lock["filling"], "listPage": z}
    # insert, not upsert: the banner keeps the time it started, and repeats write nothing.
    if _insert_if_absent(store, g.KEYPOOL_ALERT, alert):
        log.error(
            "key pool out of keys: set %s cannot fill page %s, huge list ends before page %s; "
            "run import_keys (requests resume by themselves)",
            s, lock["filling"], z,
        )  # fmt: skip
    else:
        # The alert is already up (and was logged at ERROR): repeats every pass would be noise.
        log.info("key pool still out of keys (set %s, page %s)", s, lock["filling"])
    raise OutOfKeys(s)


def _clear_alert(store: Store) -> None:
    try:
        store.remove(g.KEYPOOL_ALERT)
    except NotFound:
        pass


def _corrupt(what: str) -> PoolCorrupt:
    log.critical("key pool invariant broken: %s", what)
    return PoolCorrupt(PoolCorrupt.message + f" ({what})")


def _record_deposit(store: Store, clock: Clock, username: str, address: str, s: int, y: int):
    """`depositdir` entry, then `deposit::<address>` (directory entries before what they name)."""
    key = g.deposit_key(address)
    for _ in range(MAX_ATTEMPTS):
        try:
            owner = store.get(key).value["username"]
        except NotFound:
            owner = None
        if owner == username:
            return
        if owner is not None:
            raise _corrupt(f"{address} was dealt to {username} but {key} names {owner}")
        index = _count(store, g.DEPOSITDIR)
        _insert_if_absent(store, g.depositdir_key(index), {"address": address})
        # A crash before this insert leaves a dangling entry (walkers skip it) and a resume
        # adds another for the same address (walkers de-duplicate).
        if _insert_if_absent(store, key, g.new_deposit(username, clock.now(), s, y)):
            return
    raise PoolBusy()


def _count(store: Store, key: str) -> int:
    for _ in range(MAX_ATTEMPTS):
        try:
            return store.counter(key, 1, initial=0)
        except Ambiguous:
            continue  # the number may be spent; a hole in a directory is skipped by walkers
    raise PoolBusy()


def _become_have(store: Store, clock: Clock, username: str, uuid: str, address: str) -> str:
    """CAS the account getting{uuid} -> have{address}, keeping every other field."""
    for _ in range(MAX_ATTEMPTS):
        doc = _read_account(store, username)
        account = doc.value
        btc = account.get("btc") or {}
        if btc.get("state") != "getting" or btc.get("uuid") != uuid:
            # This request was finished by someone else (same uuid, so the same key), and the
            # account may have moved on since (a newer address): answer the current one.
            return btc.get("address", address)
        if _wait_for_lock(store, clock, username, account):
            continue
        addresses = list(btc.get("addresses", []))
        if address not in addresses:
            addresses.append(address)
        have = {"state": "have", "address": address, "addresses": addresses}
        try:
            store.replace(account_key(username), {**account, "btc": have}, doc.cas)
            return address
        except (CasMismatch, Ambiguous):
            continue
    raise PoolBusy()


# --- recovery ---------------------------------------------------------------------------------


def resume_fills(store: Store, clock: Clock) -> tuple[int, set[int]]:
    """Finish every set stuck `filling` past the lease. Returns how many it finished and the
    sets it found out of keys (their users cannot finish either: `StuckGetting` skips them)."""
    now, lease = clock.now(), locks.lease_seconds()
    finished = 0
    dry: set[int] = set()
    n = settings.KEYPOOL_SETS
    for start in range(0, n, CHUNK):
        keys = [g.keyset_key(s) for s in range(start, min(n, start + CHUNK))]
        found = store.get_multi(keys)
        for s, key in zip(range(start, start + len(keys)), keys, strict=True):
            doc = found.get(key)
            if doc is None or "filling" not in doc.value:
                continue
            if now - doc.value.get("since", 0) < lease:
                continue
            try:
                _finish_fill(store, clock, s, doc)
                finished += 1
            except OutOfKeys:
                dry.add(s)  # alerted; the lock stays, resumable after import_keys
            except KeyPoolError:
                log.exception("resuming the fill of set %s failed; next pass", s)
    return finished, dry


class StuckGetting:
    """The recovery walk's check for an account stuck `getting` past the lease: finish dealing
    its address. Made once per pass (`start`), after that pass's `resume_fills`."""

    def __init__(self, store: Store, clock: Clock, dry: set[int], finished: int = 0) -> None:
        self.store, self.clock = store, clock
        self.now, self.lease = clock.now(), locks.lease_seconds()
        self.dry = dry  # sets out of keys in this pass: grows as requests run into more
        self.finished = finished

    @classmethod
    def start(cls, store: Store, clock: Clock, shard: Shard = ALL) -> StuckGetting:
        """The key pool's part of a recovery pass: the stuck fills now (on the lead shard: they
        are not accounts), then the account check (which counts those fills in its `finished`)."""
        fills, dry = resume_fills(store, clock) if shard.lead else (0, set())
        return cls(store, clock, dry, fills)

    def __call__(self, username: str, doc: Doc) -> None:
        account = doc.value
        btc = account.get("btc") or {}
        if btc.get("state") != "getting" or self.now - btc.get("since", 0) < self.lease:
            return
        if btc.get("set") in self.dry:
            return
        lock = account.get("lock")
        if lock and not locks.lease_expired(lock, self.now):
            return  # its own recovery comes first; the next pass finishes this
        try:
            get_deposit_address(self.store, self.clock, username)
            self.finished += 1
        except OutOfKeys as exc:
            self.dry.add(exc.set)
        except locks.AccountBusy:
            pass
        except KeyPoolError:
            log.exception("resuming the deposit address of %s failed; next pass", username)


def resume_pending(store: Store, clock: Clock) -> int:
    """Finish every set stuck `filling` and every account stuck `getting` past the lease, in a
    walk of its own. The worker's recovery runs the same two parts with the account part inside
    its single account walk (`StuckGetting`, registered in apps.py).

    Reads only (a few batched reads plus the account walk) when nothing is pending, and
    writes nothing while the pool stays out of keys. Returns how many it finished.
    """
    return recovery.walk_accounts(store, clock, {"keypool": StuckGetting.start})["keypool"]


# --- admin ------------------------------------------------------------------------------------


def pool_levels(store: Store) -> dict:
    """Figures for the admin's key pool page: sets filling, huge-list pages left, the alert."""
    n = settings.KEYPOOL_SETS
    page_size, ranges_per_page = settings.KEYPOOL_PAGE_SIZE, settings.KEYPOOL_RANGES_PER_LIST_PAGE
    filling: list[dict] = []
    for start in range(0, n, CHUNK):
        keys = [g.keyset_key(s) for s in range(start, min(n, start + CHUNK))]
        found = store.get_multi(keys)
        for s, key in zip(range(start, start + len(keys)), keys, strict=True):
            doc = found.get(key)
            if doc is not None and "filling" in doc.value:
                value = doc.value
                filling.append({"set": s, "page": value["filling"], "since": value.get("since")})
    last = _last_list_page(store)
    current = _list_current(store)
    try:
        ranges = store.get(g.keylist_key(current)).value["ranges"]
        free = [entry for entry in ranges if entry["claimUuid"] is None]
        # Counted, not multiplied: an import's last range may be short.
        free_here, free_addresses_here = len(free), sum(len(e["addresses"]) for e in free)
    except NotFound:
        free_here = free_addresses_here = 0
    untouched = max(0, last - current)  # pages after the current one: not yet dealt from
    try:
        alert = store.get(g.KEYPOOL_ALERT).value
    except NotFound:
        alert = None
    return {
        "sets": n,
        "pageSize": page_size,
        "rangesPerListPage": ranges_per_page,
        "setsFilling": len(filling),
        "filling": filling[:100],
        "listPages": last + 1,
        "currentListPage": current,
        "listPagesLeft": max(0, last + 1 - current),
        "freeRangesOnCurrentPage": free_here,
        # Later pages are estimated as full (only an import's last page is short).
        "freeAddressesOnList": free_addresses_here + untouched * ranges_per_page * page_size,
        "alert": alert,
    }
