"""Worker heartbeats: `worker::<name>` docs read by /healthz and the admin.

Apps may add a detail to /healthz (`register_health_detail`): a name and a function of the store
returning a small JSON-able dict, or None to say nothing. A detail never changes the status code:
/healthz answers 503 only for a stale worker or an unreachable store.
"""

from __future__ import annotations

from collections.abc import Callable

from docstore import NotFound, Store

_HEALTH_DETAILS: dict[str, Callable[[Store], dict | None]] = {}


def register_health_detail(name: str, fn: Callable[[Store], dict | None]) -> None:
    _HEALTH_DETAILS[name] = fn


def health_details(store: Store) -> dict[str, dict]:
    out = {}
    for name, fn in _HEALTH_DETAILS.items():
        detail = fn(store)
        if detail is not None:
            out[name] = detail
    return out


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
