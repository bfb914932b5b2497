"""Worker nodes: who runs which shard and which leases, for `run_workers` and `/healthz`.

`workernodes` lists the nodes `{nodes: {name: {host, pid, machine, shard, startedAt}}}`; it
changes only when a node starts (CAS: check for overlap, then add ourselves, so two nodes
starting at once cannot both pass the check) or stops cleanly (CAS: remove ourselves). Each node
beats `workernode::<name>` `{name, at, shard, leases, counters...}` after every pass.

A node is live while its heartbeat (or, before its first beat, its start) is at most
WORKER_STALE_SECONDS old, and known dead at once when it ran on this very machine (same boot,
same pid namespace) and its pid is gone: a node killed and restarted here need not wait for its
old heartbeat to go stale. Entries silent for NODE_FORGET_SECONDS are dropped when a node starts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from . import shards

NODES_KEY = "workernodes"
NODE_FORGET_SECONDS = 86400
ATTEMPTS = 20
MAX_NAME = 100


class ShardOverlap(Exception):
    """Another live node runs this shard, or splits the store into a different number of shards."""


def node_key(name: str) -> str:
    return f"workernode::{name}"


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(
            f"--node must be 1-{MAX_NAME} letters, digits, '-', '_' or '.', not {name!r}"
        )
    return name


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """Names this machine's process table: the boot and the pid namespace (Linux), else ''."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}|{boot}|{namespace}" if boot else ""


def known_dead(entry: dict) -> bool:
    """True only when the process is certainly gone: it ran here, and its pid no longer exists."""
    mine = machine_id()
    pid = entry.get("pid")
    if not mine or entry.get("machine") != mine or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists under another user
    return False


@dataclass
class NodeState:
    name: str
    shard: str
    at: int  # the last heartbeat, or the start before the first
    leases: list[str]
    live: bool
    entry: dict
    beat: dict | None


def read_nodes(store: Store, now: int, stale_after: int) -> dict[str, NodeState]:
    """Every registered node with its last heartbeat, live or not."""
    try:
        entries = store.get(NODES_KEY).value.get("nodes", {})
    except NotFound:
        return {}
    beats = store.get_multi([node_key(n) for n in entries])
    out = {}
    for name, entry in sorted(entries.items()):
        beat = beats.get(node_key(name))
        beat_value = beat.value if beat is not None else None
        at = max(int(entry.get("startedAt", 0)), int(beat_value["at"]) if beat_value else 0)
        live = now - at <= stale_after and not known_dead(entry)
        leases = list(beat_value.get("leases", [])) if beat_value else []
        out[name] = NodeState(name, entry["shard"], at, leases, live, entry, beat_value)
    return out


def _overlap(name: str, shard: shards.Shard, others: dict[str, NodeState], now: int) -> str:
    for other in others.values():
        if other.name == name or not other.live:
            continue
        theirs = shards.parse(other.shard)
        age = now - other.at
        if theirs == shard:
            return (
                f"shard {shard} is already run by live node {other.name} (last heartbeat {age} s "
                f"ago). Give this node another shard, or stop that node first (a killed node "
                f"counts as live until its heartbeat is WORKER_STALE_SECONDS old)."
            )
        if theirs.count != shard.count:
            return (
                f"live node {other.name} splits the store into {theirs.count} shard(s) "
                f"({theirs}), this node into {shard.count} ({shard}): the two would not split "
                f"the work evenly. Start every node with the same n, or stop the others first."
            )
    return ""


def register(store: Store, clock: Clock, name: str, shard: shards.Shard, stale_after: int) -> None:
    """Add this node to `workernodes`, or raise ShardOverlap (nothing written) if another live
    node runs the same shard or a different n."""
    for _ in range(ATTEMPTS):
        now = clock.now()
        try:
            doc = store.get(NODES_KEY)
            entries, cas = dict(doc.value.get("nodes", {})), doc.cas
        except NotFound:
            entries, cas = {}, None
        states = read_nodes(store, now, stale_after) if entries else {}
        if problem := _overlap(name, shard, states, now):
            raise ShardOverlap(problem)
        kept = {
            n: e
            for n, e in entries.items()
            if n in states and now - states[n].at <= NODE_FORGET_SECONDS and not known_dead(e)
        }
        kept[name] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "machine": machine_id(),
            "shard": str(shard),
            "startedAt": now,
        }
        try:
            if cas is None:
                store.insert(NODES_KEY, {"nodes": kept})
            else:
                store.replace(NODES_KEY, {"nodes": kept}, cas)
            return
        except (AlreadyExists, CasMismatch, Ambiguous):
            continue  # re-read and check again: another node may have just registered
    raise ShardOverlap("could not register this node (workernodes kept changing); try again")


def deregister(store: Store, name: str) -> None:
    """Remove this node from `workernodes` (a clean stop): /healthz no longer waits for it."""
    for _ in range(ATTEMPTS):
        try:
            doc = store.get(NODES_KEY)
        except NotFound:
            return
        entries = dict(doc.value.get("nodes", {}))
        if name not in entries:
            return
        del entries[name]
        try:
            store.replace(NODES_KEY, {"nodes": entries}, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue


def beat(
    store: Store, name: str, now: int, shard: shards.Shard, leases: list[str], **counters: int
) -> None:
    # A heartbeat is a cache of liveness, not money: an unconditional write is right here.
    value = {"name": name, "at": now, "shard": str(shard), "leases": sorted(leases), **counters}
    store.upsert(node_key(name), value)


def uncovered(nodes: dict[str, NodeState]) -> list[str]:
    """The nodes whose absence leaves work undone: stale nodes whose shard no live node runs.

    A stale node replaced by a live one of the same shard (a restart under a new name), or left
    from an older split (every live node uses another n), leaves nothing undone.
    """
    live = [shards.parse(n.shard) for n in nodes.values() if n.live]
    counts = {s.count for s in live}
    out = []
    for node in nodes.values():
        if node.live:
            continue
        shard = shards.parse(node.shard)
        if counts and shard.count not in counts:
            continue
        if shard not in live:
            out.append(node.name)
    return out
