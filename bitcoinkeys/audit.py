"""Key pool invariants for `manage.py audit` (DESIGN.md 6.7), registered with accounts.audit.

- no address dealt to two users: every claimed key appears once over all key pages, each
  deposit doc names the user its key was claimed by, and no two accounts hold one address;
- no key page built from two ranges: each key page's addresses are exactly the one huge-list
  range claimed with its fill uuid "<s>:<y>", and no fill claimed two ranges;
- every address an account holds has a deposit doc naming that user, and every claimed key was
  delivered to its user (or its user is still `getting` with that claim's uuid).

Everything is reached by key: sets 0..KEYPOOL_SETS-1, their pages from 0 while they exist,
huge-list pages 0..keylistcount, the `depositdir` directory and the account directory.
"""

from __future__ import annotations

from django.conf import settings

from accounts.audit import Report
from accounts.gateway import directory_size, iter_accounts, walk_directory
from docstore import Store

from . import gateway as g

LIST_CHUNK = 20
CHUNK = 500


def _fact(report: Report, name: str, n: int = 1) -> None:
    report.facts[name] = report.facts.get(name, 0) + n


def _claimed_ranges(store: Store) -> dict[str, list[tuple[int, int, list[str]]]]:
    """fill uuid -> [(huge-list page, range, addresses)] for every claimed range."""
    claimed: dict[str, list[tuple[int, int, list[str]]]] = {}
    pages = directory_size(store, g.KEYLIST_COUNT)
    for start in range(0, pages, LIST_CHUNK):
        keys = [g.keylist_key(z) for z in range(start, min(pages, start + LIST_CHUNK))]
        found = store.get_multi(keys)
        for z, key in zip(range(start, start + len(keys)), keys, strict=True):
            if key not in found:
                continue
            for r, entry in enumerate(found[key].value["ranges"]):
                if entry["claimUuid"] is not None:
                    claimed.setdefault(entry["claimUuid"], []).append((z, r, entry["addresses"]))
    return claimed


def _key_pages(store: Store):
    """Yield (s, y, page) for every key page of every set, pages 0.. while they exist."""
    n = settings.KEYPOOL_SETS
    for start in range(0, n, CHUNK):
        sets = list(range(start, min(n, start + CHUNK)))
        found = store.get_multi([g.keyset_key(s) for s in sets])
        for s in sets:
            doc = found.get(g.keyset_key(s))
            if doc is None:
                continue
            top = doc.value.get("filling", doc.value.get("page", 0))
            y = 0
            while True:
                # Up to the set's pointer in one batch; past it (a pointer that lags) one by one.
                last = max(top, y)
                keys = [g.keypage_key(s, i) for i in range(y, last + 1)]
                pages = store.get_multi(keys)
                for i, key in zip(range(y, last + 1), keys, strict=True):
                    if key in pages:
                        yield s, i, pages[key].value
                if g.keypage_key(s, last) not in pages and last >= top:
                    break
                y = last + 1


def audit_keypool(store: Store, report: Report) -> None:
    claimed = _claimed_ranges(store)
    for fill, ranges in claimed.items():
        if len(ranges) > 1:
            where = ", ".join(f"keylist::{z} range {r}" for z, r, _ in ranges)
            report.breaches.append(f"fill {fill} claimed {len(ranges)} ranges: {where}")

    # address -> (username, uuid, "s:y") for every claimed key; every dealt address, once.
    keys: dict[str, tuple[str, str, str]] = {}
    dealt_pages: set[str] = set()
    for s, y, page in _key_pages(store):
        _fact(report, "keypool pages")
        fill = g.fill_uuid(s, y)
        dealt_pages.add(fill)
        addresses = [entry["address"] for entry in page["keys"]]
        sources = claimed.get(fill, [])
        if len(sources) != 1 or sources[0][2] != addresses:
            report.breaches.append(
                f"keypage::{s}::{y} is not built from exactly one range claimed by {fill}"
            )
        for entry in page["keys"]:
            if entry["claimUuid"] is None:
                _fact(report, "keypool free keys on pages")
                continue
            _fact(report, "keypool keys dealt")
            if entry["address"] in keys:
                report.breaches.append(f"address {entry['address']} claimed on two key pages")
            keys[entry["address"]] = (entry["claimedBy"], entry["claimUuid"], fill)

    # Every address must come from one range only, or a second page could deal it again.
    in_ranges: dict[str, str] = {}
    for fill, ranges in claimed.items():
        for _z, _r, addresses in ranges:
            for address in addresses:
                if address in in_ranges and in_ranges[address] != fill:
                    report.breaches.append(f"address {address} is in two claimed ranges")
                in_ranges[address] = fill

    deposits: dict[str, str] = {}
    seen: set[str] = set()
    entries = [e["address"] for e in walk_directory(store, g.DEPOSITDIR, g.depositdir_key)]
    unique = [a for a in entries if not (a in seen or seen.add(a))]
    for start in range(0, len(unique), CHUNK):
        chunk = unique[start : start + CHUNK]
        found = store.get_multi([g.deposit_key(a) for a in chunk])
        for address in chunk:
            doc = found.get(g.deposit_key(address))
            if doc is None:
                continue  # a dangling directory entry: a crash before the deposit insert
            _fact(report, "keypool deposit addresses")
            username = doc.value["username"]
            deposits[address] = username
            claim = keys.get(address)
            if claim is not None and claim[0] != username:
                report.breaches.append(
                    f"deposit::{address} names {username} but its key was claimed by {claim[0]}"
                )

    holders: dict[str, str] = {}
    getting: dict[str, str] = {}  # username -> uuid of the request in progress
    delivered: set[tuple[str, str]] = set()
    for username, doc in iter_accounts(store):
        btc = doc.value.get("btc") or {}
        if btc.get("state") == "getting":
            _fact(report, "keypool accounts getting an address")
            getting[username] = btc.get("uuid")
        current = [btc["address"]] if btc.get("state") == "have" else []
        for address in dict.fromkeys(current + list(btc.get("addresses", []))):
            delivered.add((username, address))
            other = holders.setdefault(address, username)
            if other != username:
                report.breaches.append(f"address {address} is held by {other} and {username}")
            if deposits.get(address) != username:
                report.breaches.append(
                    f"account::{username} holds {address} but no deposit doc names {username}"
                )
    for address, (username, uuid, fill) in keys.items():
        if (username, address) in delivered or getting.get(username) == uuid:
            continue
        report.breaches.append(
            f"key {address} on page {fill} was claimed for {username} but never delivered"
        )
