"""The soak's summary: what happened, what the logs say, and whether the run passed."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .common import Stats
from .reconcile import Reconciliation


def pass_counters(path: Path, prefix: str) -> Counter:
    """Sum of the worker's per-pass counters starting with `prefix` ("pass 7: a.b=1, ...")."""
    total: Counter = Counter()
    try:
        with open(path, "rb") as f:
            for line in f:
                m = re.match(rb"pass \d+: (.*)", line)
                if not m:
                    continue
                for item in m.group(1).decode("utf-8", "replace").split(", "):
                    key, _, value = item.partition("=")
                    if key.startswith(prefix) and value.strip().isdigit():
                        total[key[len(prefix) :]] += int(value)
    except OSError:
        pass
    return total


def count_lines(path: Path, needle: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if needle.encode() in line)
    except OSError:
        return 0


def grep(path: Path, needle: str, limit: int = 5) -> list[str]:
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if needle.encode() in line:
                    out.append(line.decode("utf-8", "replace").rstrip())
                    if len(out) >= limit:
                        break
    except OSError:
        pass
    return out


@dataclass
class Finish:
    """Everything the summary reports, gathered by the run."""

    seed: int
    users: int
    minutes: float
    backend: str
    setup_seconds: float
    started: float
    stats: Stats
    dump: dict
    rec: Reconciliation
    left: list[str]
    heal_seconds: float
    locks_left: list[str]
    audit: subprocess.CompletedProcess
    web_logs: list[Path]
    worker_logs: list[Path]
    stuck: list[str] = field(default_factory=list)
    replay: str = ""  # extra options to replay the run (the backend, the network faults)
    extra: list[str] = field(default_factory=list)  # lines of --cluster (kills, password check)
    extra_problems: list[str] = field(default_factory=list)  # ... and why it failed


def summary(f: Finish) -> tuple[list[str], bool]:
    """The summary's lines and whether the run passed."""
    stats, rec, left, locks_left, audit = f.stats, f.rec, f.left, f.locks_left, f.audit
    audit_lines = audit.stdout.splitlines()
    web_recoveries = sum(count_lines(p, "recovering lock") for p in f.web_logs)
    worker_recoveries = sum(count_lines(p, "recovering lock") for p in f.worker_logs)
    tracebacks = [t for p in f.web_logs for t in grep(p, "Internal Server Error", 10)][:10]
    worker_errors = sum(count_lines(p, "Traceback") for p in f.worker_logs)
    recovered = sum((pass_counters(p, "recovery.") for p in f.worker_logs), Counter())
    ambiguous_web = sum(count_lines(p, "Ambiguous") for p in f.web_logs)
    ambiguous_workers = sum(count_lines(p, "Ambiguous") for p in f.worker_logs)
    money = next((line for line in audit_lines if line.startswith("money:")), "money: ?")
    statuses = ", ".join(f"{s} x{n}" for s, n in sorted(stats.http.items()))
    out = [
        "",
        "=== soak summary ===",
        f"seed {f.seed}; {f.users} users; load {f.minutes:g} min; {f.backend} docstore; "
        f"set-up {f.setup_seconds:.1f} s",
        "operations:",
    ]
    for kind in sorted(stats.ops):
        outcomes = ", ".join(f"{o} {n}" for o, n in sorted(stats.ops[kind].items()))
        out.append(f"  {kind:<28} {outcomes}")
    out += [
        f"HTTP answers: {statuses}; lost to kills/timeouts {stats.lost} "
        f"(timeouts {stats.timeouts}); 500s: {stats.http.get(500, 0)}; "
        f"unclear: {len(stats.bad)}",
        "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.faults.items())) or "none"),
        "chain: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.chain.items()))
        + f"; deposit alerts recorded {f.dump.get('alerts', 0)}",
        f"recoveries: 'recovering lock' log lines: worker {worker_recoveries}, web requests "
        f"{web_recoveries}; worker recovery counters: "
        + (", ".join(f"{k} {v}" for k, v in sorted(recovered.items())) or "all zero")
        + f"; worker tracebacks {worker_errors}",
        *(
            [
                "couchbase: log lines naming an ambiguous write (Ambiguous or an SDK "
                f"AmbiguousTimeout): web {ambiguous_web}, workers {ambiguous_workers}"
            ]
            if f.backend.startswith("couchbase")
            else []
        ),
        f"unknown outcomes: {sum(stats.unknown.values())} ("
        + (", ".join(f"{k} {v}" for k, v in sorted(stats.unknown.items())) or "none")
        + "); resolved: "
        + (", ".join(f"{k} {v}" for k, v in sorted(rec.resolved.items())) or "nothing"),
        "reconciled: " + ", ".join(f"{k} {v}" for k, v in sorted(rec.checked.items())),
        f"heal: {'drained' if not left else 'NOT drained'} in {f.heal_seconds:.1f} s"
        + ("" if not left else f" ({len(left)} left: " + "; ".join(left[:8]) + ")"),
        f"locks left: {len(locks_left)}" + (f" ({', '.join(locks_left)})" if locks_left else ""),
        f"audit: {'passed' if audit.returncode == 0 else 'FAILED'} ({money})",
        f"disagreements: {len(rec.disagreements)}",
    ]
    out += [f"  {d}" for d in rec.disagreements[:40]]
    out += f.extra
    if stats.bad:
        out.append("unclear HTTP answers (first 20):")
        out += [f"  {b}" for b in stats.bad[:20]]
    if tracebacks:
        out.append("server errors in the gunicorn logs:")
        out += [f"  {t}" for t in tracebacks]
    if audit.returncode != 0:
        out.append("audit output:")
        out += [f"  {line}" for line in audit_lines if "BREACH" in line or ": NO" in line][:40]
        out += [f"  {line}" for line in audit.stderr.splitlines()[-5:]]
    if f.stuck:
        out.append(f"threads still running at the end: {', '.join(f.stuck)}")
    if stats.internal:
        out.append(f"errors inside the soak itself ({len(stats.internal)}):")
        out += [f"  {e}" for e in stats.internal[:5]]
    failed = (
        audit.returncode != 0
        or locks_left
        or left
        or stats.http.get(500, 0)
        or stats.bad
        or rec.disagreements
        or stats.internal
        or f.extra_problems
    )
    ok = not failed
    out += [
        f"replay: bench/soak --seed {f.seed} --users {f.users} --minutes {f.minutes:g}{f.replay}",
        f"RESULT: {'PASS' if ok else 'FAIL'} in {time.monotonic() - f.started:.0f} s",
    ]
    return out, ok
