"""Shards: how n worker nodes split the directory walks between them (`run_workers --shard i/n`).

A shard `i/n` owns an item when a stable hash of the item's key, modulo n, is i, so every key is
owned by exactly one of the n shards, whichever node asks and whenever: the hash is BLAKE2b of
the key's bytes (never Python's `hash()`, which is salted per process). A walker reads its
directory as before and acts only on the entries whose key its shard owns:

    for username, doc in iter_accounts(store):
        if shard.owns(account_key(username)):
            ...

The key is the item the entry names (the account, the seller), not the entry's number: a
directory may name one item twice (a crash between the entry and the item, then a retry), and
both entries then go to the same shard. Walkers key by the document their steps lock, so two
shards never contend for one lock (the creditor keys a campaign by its seller's account, whose
`credit` lock its steps take).

Overlap is never a safety question: every step is a CAS or an insert that accepts "already
done", so two nodes that run the same shard (or all of it) only do work twice. The split is
about load; `run_workers` refuses overlapping specs only to keep that load split.

Work that cannot be split by key (an outbox with one cursor, whole-store passes such as the key
pool's fills) runs on the lead shard, `0/n`, alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SPEC = re.compile(r"\A(\d{1,6})/(\d{1,6})\Z")
MAX_SHARDS = 1024


class ShardSpecError(ValueError):
    """A `--shard` value that names no shard; the message says what is wrong."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not (1 <= self.count <= MAX_SHARDS and 0 <= self.index < self.count):
            raise ShardSpecError(f"shard {self.index}/{self.count} does not exist")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def lead(self) -> bool:
        """True for the shard that also runs the work that cannot be split (shard 0)."""
        return self.index == 0

    def owns(self, key: str) -> bool:
        """True if this shard does the work of the item with this key."""
        return self.count == 1 or shard_of(key, self.count) == self.index


# The whole store: a lone worker (no --shard).
ALL = Shard(0, 1)


def shard_of(key: str, count: int) -> int:
    """Which of `count` shards owns `key`: the same answer in every process, on every machine."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse(spec: str) -> Shard:
    """`"i/n"` -> Shard(i, n), for 0 <= i < n <= MAX_SHARDS; anything else is a ShardSpecError."""
    match = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise ShardSpecError(
            f"--shard must be i/n with whole numbers 0 <= i < n (e.g. 0/2 and 1/2), not {spec!r}"
        )
    index, count = int(match[1]), int(match[2])
    if count == 0:
        raise ShardSpecError(f"--shard {spec}: n must be at least 1")
    if count > MAX_SHARDS:
        raise ShardSpecError(f"--shard {spec}: n may be at most {MAX_SHARDS}")
    if index >= count:
        raise ShardSpecError(
            f"--shard {spec}: i counts from 0, so shard {index} of {count} does not exist "
            f"(the shards of {count} are 0/{count} to {count - 1}/{count})"
        )
    return Shard(index, count)
