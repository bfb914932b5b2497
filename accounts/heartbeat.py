"""Worker heartbeats: `worker::<name>` docs read by /healthz and the admin."""

from __future__ import annotations

from docstore import NotFound, Store

WORKERS_KEY = "workers"


def worker_key(name: str) -> str:
    return f"worker::{name}"


def beat(store: Store, name: str, now: int, **counters: int) -> None:
    # A heartbeat is a cache of liveness, not money: an unconditional write is right here.
    store.upsert(worker_key(name), {"name": name, "at": now, **counters})


def read_beats(store: Store, names: list[str]) -> dict[str, dict | None]:
    found = store.get_multi([worker_key(n) for n in names])
    return {n: (found[worker_key(n)].value if worker_key(n) in found else None) for n in names}


def last_beat(store: Store, name: str) -> dict | None:
    try:
        return store.get(worker_key(name)).value
    except NotFound:
        return None
