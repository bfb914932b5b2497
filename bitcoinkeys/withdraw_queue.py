"""The withdrawal directory walk and the processor's cursor (DESIGN.md 6.5).

`withdrawdir::<g>` {username, i, at} lists every request in the order received. The processor
reads from `withdrawprocessor::cursor` {next} on: entries below it are finished for good, so a
pass reads O(unfinished + new), not every request ever made. Nothing here changes a request;
the cursor only ever passes entries that can never change again, so it has no commit point of
its own and needs no lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from accounts.gateway import account_key, directory_size
from accounts.gateway import advance_cursor as advance_directory_cursor
from docstore import Clock, Doc, NotFound, Store

from .gateway import WITHDRAWDIR, withdraw_key, withdrawdir_key
from .withdrawals import CHUNK, TERMINAL

CURSOR_KEY = "withdrawprocessor::cursor"
# A directory entry whose request never appeared is passed by the cursor only after this long
# (its writer died before taking the hold lock; see scan).
DANGLING_GRACE_SECONDS = 24 * 3600


@dataclass
class Row:
    g: int
    key: str | None
    entry: dict | None
    doc: Doc | None


def read_cursor(store: Store) -> tuple[int, Doc | None]:
    try:
        doc = store.get(CURSOR_KEY)
    except NotFound:
        return 0, None
    return int(doc.value["next"]), doc


def walk(store: Store, start: int, size: int) -> Iterator[Row]:
    """Directory entries g >= start with their requests, read in batches (two get_multi each)."""
    for first in range(start, size, CHUNK):
        gs = range(first, min(size, first + CHUNK))
        entries = store.get_multi([withdrawdir_key(g) for g in gs])
        keys = {}
        for g in gs:
            doc = entries.get(withdrawdir_key(g))
            if doc is not None:
                keys[g] = withdraw_key(doc.value["username"], doc.value["i"])
        requests = store.get_multi(list(keys.values())) if keys else {}
        for g in gs:
            entry = entries.get(withdrawdir_key(g))
            key = keys.get(g)
            yield Row(g, key, entry.value if entry else None, requests.get(key) if key else None)


@dataclass
class Scan:
    rows: list[Row]
    cursor: int
    cursor_doc: Doc | None
    passable: dict[int, bool]

    def in_state(self, *states: str) -> list[Row]:
        return [r for r in self.rows if r.doc is not None and r.doc.value["state"] in states]

    def frontier(self, finished: set[str] = frozenset()) -> int:
        """First entry the cursor may not pass; `finished` are keys this pass made terminal."""
        frontier = self.cursor
        for row in self.rows:
            if not (self.passable[row.g] or row.key in finished):
                break
            frontier = row.g + 1
        return frontier


def scan(store: Store, clock: Clock, size: int | None = None) -> Scan:
    """Read every request from the cursor on, and how far the cursor may move.

    The cursor passes a contiguous run of entries that can never need work again: terminal
    requests, and entries whose request never appeared. An entry is dangling when its writer died
    before (or lost the race for) the hold lock; it is passed only after DANGLING_GRACE_SECONDS and
    while the owner holds no lock for it, because a live hold lock still inserts the request. A
    missing entry (the writer died between the counter and the entry) is passed once a later
    entry is older than the grace: numbers are handed out in order, so its writer is that old.
    """
    cursor, cursor_doc = read_cursor(store)
    if size is None:
        size = directory_size(store, WITHDRAWDIR)
    rows = list(walk(store, cursor, size))
    old = clock.now() - DANGLING_GRACE_SECONDS
    dangling = [r for r in rows if r.entry is not None and r.doc is None and r.entry["at"] <= old]
    owners = {r.entry["username"] for r in dangling}
    accounts = store.get_multi([account_key(u) for u in owners]) if owners else {}
    oldest_later = None
    passable: dict[int, bool] = {}
    for row in reversed(rows):
        if row.entry is None:
            passable[row.g] = oldest_later is not None and oldest_later <= old
            continue
        oldest_later = (
            row.entry["at"] if oldest_later is None else min(oldest_later, row.entry["at"])
        )
        if row.doc is not None:
            passable[row.g] = row.doc.value["state"] in TERMINAL
        elif row.entry["at"] <= old:
            account = accounts.get(account_key(row.entry["username"]))
            lock = account.value.get("lock") if account else None
            passable[row.g] = not (lock and lock["ref"] == row.key)
        else:
            passable[row.g] = False
    return Scan(rows, cursor, cursor_doc, passable)


def advance_cursor(store: Store, read: Scan, frontier: int) -> None:
    """Move the processor's cursor forward (never back); see accounts.gateway.advance_cursor."""
    if frontier > read.cursor:
        advance_directory_cursor(store, CURSOR_KEY, read.cursor_doc, frontier)
