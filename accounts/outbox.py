"""One pass over an outbox directory: the email notices (accounts/notify.py) and the seller
webhooks (adspace/webhooks.py) are the same machine with a different send.

An outbox is a directory (`<dir>` counter, entries `{key, at}`) of items each with a `state`, and
a forward-only cursor `{"next": g}`. A pass reads at most `window` entries past the cursor, hands
each unfinished item to `handle` once (two entries may name one item: racing queuers), stops
sending after `max_sends` sends or `budget_seconds`, then moves the cursor past the longest run of
entries that can never need work again: finished items, and entries whose item never appeared
(its queuer died) once an entry at or after them is older than `grace_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from docstore import Clock, Doc, NotFound, Store

from .gateway import advance_cursor, directory_size


def run_pass(
    store: Store,
    clock: Clock,
    *,
    directory: str,
    entry_key: Callable[[int], str],
    cursor_key: str,
    finished: frozenset[str],
    handle: Callable[[str, Doc], str],
    sending_outcomes: frozenset[str],
    finishing_outcomes: frozenset[str],
    window: int,
    max_sends: int,
    budget_seconds: float,
    grace_seconds: int,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """Returns how many items ended each way (`handle`'s outcomes, and `deferred`)."""
    counters: dict[str, int] = {}
    try:
        cursor_doc: Doc | None = store.get(cursor_key)
        cursor = int(cursor_doc.value["next"])
    except NotFound:
        cursor_doc, cursor = None, 0
    size = min(directory_size(store, directory), cursor + window)
    if size <= cursor:
        return counters
    gs = range(cursor, size)
    entries = store.get_multi([entry_key(g) for g in gs])
    keys = {g: entries[entry_key(g)].value["key"] for g in gs if entry_key(g) in entries}
    items = store.get_multi(list(set(keys.values())))
    now, started, sends = clock.now(), monotonic(), 0
    done: dict[str, bool] = {}  # item key -> finished (after this pass's work on it)
    for g in gs:
        key = keys.get(g)
        doc = items.get(key) if key else None
        if doc is None or key in done:
            continue
        done[key] = doc.value["state"] in finished
        if done[key]:
            continue
        if sends >= max_sends or monotonic() - started > budget_seconds:
            counters["deferred"] = counters.get("deferred", 0) + 1
            continue
        outcome = handle(key, doc)
        counters[outcome] = counters.get(outcome, 0) + 1
        sends += outcome in sending_outcomes
        done[key] = outcome in finishing_outcomes
    old = now - grace_seconds
    passable: dict[int, bool] = {}
    earliest_after = None  # the earliest `at` of the entries from g on
    for g in reversed(gs):
        entry = entries.get(entry_key(g))
        if entry is not None:
            at = entry.value["at"]
            earliest_after = at if earliest_after is None else min(earliest_after, at)
        key = keys.get(g)
        if key is not None and key in items:
            passable[g] = done.get(key, False)
        else:
            passable[g] = earliest_after is not None and earliest_after <= old
    frontier = cursor
    for g in gs:
        if not passable[g]:
            break
        frontier = g + 1
    if frontier > cursor:
        advance_cursor(store, cursor_key, cursor_doc, frontier)
    return counters
