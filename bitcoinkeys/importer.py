"""Importing deposit addresses into the huge list (DESIGN.md 6.3-6.4; `manage.py import_keys`).

Two passes over a stream, never the whole input in memory: the first validates every address for
the site's network and refuses the whole import if any line is bad; the second skips what is
already imported (or repeated in the input), cuts the new addresses into huge-list pages of
KEYPOOL_RANGES_PER_LIST_PAGE ranges of KEYPOOL_PAGE_SIZE and appends them as `keylist::<z>`, z
from the `keylistcount` counter. Any number is imported: the last page may hold fewer ranges and
its last range fewer addresses (dealt like any other: a key page built from it is simply short).

Crash safety, in write order for each page:
1. z = counter(keylistcount);
2. `imported::<address>` = {page: z, run} for each address of the page;
3. the chain backend watches the addresses (bitcoind: importdescriptors);
4. insert `keylist::<z>`: from here the addresses can be dealt.
A crash before 4 leaves markers naming a page that does not exist: a re-run treats those
addresses as not imported and imports them again (replacing the markers by CAS), and page z
stays a hole that the dealer skips (pool._claim_range). Markers come first because the other
order could put an address in two pages, i.e. deal it to two users.

That re-run rule is only safe with one importer at a time, so the first write of an import takes
a lease (`keyimport::lease`), renewed before every page and checked just before the page insert;
an import that finds a live lease refuses to start. An import with nothing new writes nothing.
"""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from django.conf import settings

from docstore import AlreadyExists, CasMismatch, Clock, Doc, NotFound, Store

from . import gateway as g
from .addresses import AddressError, validate_address

# Lines longer than this are not addresses; they are reported, never read whole into memory.
MAX_LINE = 200
CHUNK = 1000
# A live import renews its lease at least this often (before every page and every chunk).
IMPORT_LEASE_SECONDS = 300
ERROR_CAP = 20
NOTE_CAP = 20
PLURAL = {"line": "lines", "index": "indexes"}

Say = Callable[[str, int], None]


class KeyImportError(Exception):
    """The import cannot go on; the message says why and what to do."""


class ImportBusy(KeyImportError):
    pass


@dataclass
class Validation:
    count: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (where, text, reason)
    error_count: int = 0


@dataclass
class ImportResult:
    read: int = 0
    imported: int = 0
    pages: list[int] = field(default_factory=list)
    would_pages: int = 0  # dry run: pages it would write
    duplicates: int = 0
    already: int = 0
    stopped: bool = False
    dry_run: bool = False


# --- sources ----------------------------------------------------------------------------------


def read_address_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line that is not blank or a #comment, streaming.

    A line longer than MAX_LINE is yielded cut to MAX_LINE + 1 characters (so it is reported
    as too long) and the rest of it is skipped in bounded reads.
    """
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        number = 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE and not line.endswith("\n"):
                while True:
                    rest = f.readline(65536)
                    if not rest or rest.endswith("\n"):
                        break
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            yield number, text


def validate_source(items: Iterable[tuple[int, str]], network: str) -> Validation:
    """Check every address; keep the first ERROR_CAP problems and count the rest."""
    result = Validation()
    for where, text in items:
        result.count += 1
        try:
            validate_address(text, network)
        except AddressError as exc:
            result.error_count += 1
            if len(result.errors) < ERROR_CAP:
                result.errors.append((where, text[:100], str(exc)))
    return result


# --- the chain backend ------------------------------------------------------------------------


def _watch(addresses: list[str]) -> None:
    """Integration point with bitcoinkeys.chain: bitcoind must watch an address before it can
    be dealt, or payments to it go unseen. A no-op for the "none" backend (and without chain)."""
    try:
        chain = importlib.import_module("bitcoinkeys.chain")
    except ModuleNotFoundError as exc:
        if exc.name != "bitcoinkeys.chain":
            raise
        return
    get_chain = getattr(chain, "get_chain", None)
    if get_chain is None:
        return
    backend = get_chain()
    importer = getattr(backend, "import_addresses", None)
    if importer is not None:
        importer(list(addresses))


# --- the lease --------------------------------------------------------------------------------


class _Lease:
    """One importer at a time: a lease document taken by insert/CAS and renewed by CAS."""

    def __init__(self, store: Store, clock: Clock, run: str):
        self.store, self.clock, self.run = store, clock, run
        self.cas: int | None = None

    def take(self) -> None:
        value = {"run": self.run, "since": self.clock.now()}
        try:
            self.cas = self.store.insert(g.IMPORT_LEASE, value)
            return
        except AlreadyExists:
            pass
        doc = self.store.get(g.IMPORT_LEASE)
        age = self.clock.now() - doc.value["since"]
        if age < IMPORT_LEASE_SECONDS:
            raise ImportBusy(
                f"Another import_keys is running (last progress {age}s ago). Wait for it; if it "
                f"died, run again after {IMPORT_LEASE_SECONDS - age}s: re-running is safe."
            )
        try:
            self.cas = self.store.replace(g.IMPORT_LEASE, value, doc.cas)
        except CasMismatch:
            raise ImportBusy("Another import_keys started just now; wait for it.") from None

    def renew(self) -> None:
        """Extend the lease, or stop if another import took it over (we were too slow)."""
        if self.cas is None:
            self.take()
            return
        try:
            self.cas = self.store.replace(
                g.IMPORT_LEASE, {"run": self.run, "since": self.clock.now()}, self.cas
            )
        except (CasMismatch, NotFound):
            raise ImportBusy(
                "This import lost its lease to another import_keys and stopped before writing "
                "its next page. Run it again once the other one is done."
            ) from None

    def release(self) -> None:
        if self.cas is None:
            return
        try:
            self.store.remove(g.IMPORT_LEASE, self.cas)
        except (CasMismatch, NotFound):
            pass


# --- the import -------------------------------------------------------------------------------


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def import_addresses(
    store: Store,
    clock: Clock,
    items: Iterable[tuple[int, str]],
    network: str,
    *,
    unit: str = "line",
    say: Say | None = None,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> ImportResult:
    """Append the new addresses of `items` ((where, text) pairs, already validated) as pages.

    `say(message, level)` reports progress (level 1: pages and the first skips, level 2: every
    skip). `should_stop()` is checked between pages; stopping leaves nothing half-done.
    """
    page_size = settings.KEYPOOL_PAGE_SIZE
    per_page = page_size * settings.KEYPOOL_RANGES_PER_LIST_PAGE
    say = say or (lambda message, level: None)
    result = ImportResult(dry_run=dry_run)
    run = secrets.token_hex(8)
    lease = _Lease(store, clock, run)
    exists: dict[int, bool] = {}
    # The page being gathered: address -> (where, cas of a dead import's marker or None).
    buffer: dict[str, tuple[int, int | None]] = {}
    seen: set[str] = set()  # dry run only: it writes no markers to find repeats by
    notes = {"duplicates": 0, "already": 0}

    def note(kind: str, message: str) -> None:
        notes[kind] += 1
        say(message, 1 if notes[kind] <= NOTE_CAP else 2)

    def page_exists(z: int) -> bool:
        if z not in exists:
            try:
                store.get(g.keylist_key(z))
                exists[z] = True
            except NotFound:
                exists[z] = False
        return exists[z]

    def flush(entries: list[tuple[str, tuple[int, int | None]]]) -> None:
        lease.renew()
        z = store.counter(g.KEYLIST_COUNT, 1, initial=0)
        marker = {"page": z, "run": run, "at": clock.now()}
        for address, (_, cas) in entries:
            key = g.imported_key(address)
            try:
                if cas is None:
                    store.insert(key, marker)
                else:
                    store.replace(key, marker, cas)
            except (AlreadyExists, CasMismatch, NotFound):
                raise KeyImportError(
                    f"{address} was imported by another process during this import; "
                    "stopped before writing its page. Run the import again."
                ) from None
        addresses = [address for address, _ in entries]
        _watch(addresses)
        lease.renew()  # never write a page after losing the lease (see the module docstring)
        store.insert(g.keylist_key(z), g.new_keylist_page(addresses, page_size))
        exists[z] = True
        result.pages.append(z)
        result.imported += len(addresses)
        first, last = entries[0][1][0], entries[-1][1][0]
        say(
            f"huge-list page {z}: {len(addresses)} addresses in {-(-len(addresses) // page_size)} "
            f"ranges ({PLURAL.get(unit, unit)} {first}-{last})",
            1,
        )

    try:
        for chunk in _chunks(items, CHUNK):
            pairs = [(where, validate_address(text, network)) for where, text in chunk]
            docs: dict[str, Doc] = store.get_multi([g.imported_key(a) for _, a in pairs])
            taken_here: set[str] = set()  # gathered since `docs` was read (flushes may follow)
            for where, address in pairs:
                result.read += 1
                if address in buffer or address in taken_here or address in seen:
                    note(
                        "duplicates",
                        f"{unit} {where}: {address} repeats an earlier {unit}; skipped",
                    )
                    continue
                doc = docs.get(g.imported_key(address))
                cas = None
                if doc is not None:
                    if doc.value.get("run") == run:
                        note(
                            "duplicates",
                            f"{unit} {where}: {address} repeats an earlier {unit}; skipped",
                        )
                        continue
                    if page_exists(doc.value["page"]):
                        note(
                            "already",
                            f"{unit} {where}: {address} was already imported "
                            f"(huge-list page {doc.value['page']}); skipped",
                        )
                        continue
                    cas = doc.cas  # its import died before writing the page: not imported
                if dry_run:
                    seen.add(address)
                    buffer[address] = (where, cas)
                    if len(buffer) == per_page:
                        result.would_pages += 1
                        result.imported += per_page
                        buffer = {}
                    continue
                buffer[address] = (where, cas)
                taken_here.add(address)
                if len(buffer) == per_page:
                    flush(list(buffer.items()))
                    buffer = {}
                    if should_stop and should_stop():
                        result.stopped = True
                        break
            if result.stopped:
                break
            if not dry_run and lease.cas is not None and buffer:
                lease.renew()
        if not result.stopped and buffer:
            # The last, short page: whatever is left, its last range as short as it comes.
            if dry_run:
                result.would_pages += 1
                result.imported += len(buffer)
            else:
                flush(list(buffer.items()))
    except Exception:
        lease.release()
        raise
    lease.release()
    result.duplicates, result.already = notes["duplicates"], notes["already"]
    return result
