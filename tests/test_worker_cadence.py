"""Per-task cadence in the worker: recovery runs on its first pass and then every
RECOVERY_INTERVAL_SECONDS, while the creditor and the deposit watcher run on every pass.

Time is a fake monotonic clock handed to the `Schedule`; nothing here sleeps.
"""

from __future__ import annotations

import runpy
from io import StringIO
from pathlib import Path

import environ
import pytest
from django.core.management import call_command

from accounts import locks, workers
from accounts.gateway import get_account
from accounts.heartbeat import last_beat
from accounts.management.commands import recover as recover_command
from accounts.management.commands import run_workers as run_workers_command
from accounts.workers import Schedule, StopFlag, register_task, run_pass, serve

BASE_SETTINGS = Path(__file__).resolve().parent.parent / "config" / "settings" / "base.py"


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def tasks(monkeypatch):
    """Empty task registries for this test; the real ones come back afterwards."""
    monkeypatch.setattr(workers, "_tasks", {})
    # Registering replaces a name's kind too: the real kinds must come back with the tasks.
    monkeypatch.setattr(workers, "_every", {})
    monkeypatch.setattr(workers, "_sharded", set())
    monkeypatch.setattr(workers, "_roles", {})
    return workers._tasks


def counting(runs: list[str], name: str):
    def task(store, clock):
        runs.append(name)
        return {"ran": 1}

    return task


def test_recovery_runs_every_recovery_interval_not_every_pass(store, clock, tasks):
    runs: list[str] = []
    register_task("recovery", counting(runs, "recovery"), every=10)
    register_task("creditor", counting(runs, "creditor"))
    fake = FakeTime()
    schedule = Schedule(monotonic=fake)
    ran_recovery = []
    for _ in range(25):  # passes one second apart, as WORKER_INTERVAL_SECONDS=1 makes them
        counters = run_pass(store, clock, schedule)
        ran_recovery.append("recovery.ran" in counters)
        assert counters["creditor.ran"] == 1
        fake.advance(1)
    assert [i for i, ran in enumerate(ran_recovery) if ran] == [0, 10, 20]
    assert runs.count("creditor") == 25 and runs.count("recovery") == 3


def test_the_interval_counts_from_when_the_task_last_started_however_passes_drift(
    store, clock, tasks
):
    runs: list[str] = []
    register_task("recovery", counting(runs, "recovery"), every=10)
    fake = FakeTime()
    schedule = Schedule(monotonic=fake)
    started = []
    for step in (0, 4, 5.5, 0.75, 9.75, 0.25):
        fake.advance(step)
        if "recovery.ran" in run_pass(store, clock, schedule):
            started.append(fake.now - 100)
    # Not on a fixed grid (0, 10, 20): 20.0 is only 9.75 s after the start at 10.25.
    assert started == [0, 10.25, 20.25]


def test_a_new_worker_recovers_on_its_first_pass(store, clock, tasks):
    runs: list[str] = []
    register_task("recovery", counting(runs, "recovery"), every=3600)
    fake = FakeTime()
    assert "recovery.ran" in run_pass(store, clock, Schedule(monotonic=fake))
    # A restart is a new process and so a new schedule: it recovers at once, whatever the time.
    fake.advance(1)
    assert "recovery.ran" in run_pass(store, clock, Schedule(monotonic=fake))
    assert runs == ["recovery", "recovery"]


def test_without_a_schedule_a_pass_runs_every_task(store, clock, tasks):
    runs: list[str] = []
    register_task("recovery", counting(runs, "recovery"), every=3600)
    run_pass(store, clock)
    run_pass(store, clock)
    assert runs == ["recovery", "recovery"]


def test_a_failing_task_with_a_cadence_waits_for_its_next_turn(store, clock, tasks):
    calls = []

    def broken(store, clock):
        calls.append(1)
        raise RuntimeError("docstore hiccup")

    register_task("recovery", broken, every=10)
    register_task("creditor", lambda store, clock: {"ran": 1})
    fake = FakeTime()
    schedule = Schedule(monotonic=fake)
    first = run_pass(store, clock, schedule)
    assert first["failed"] == 1 and first["recovery.failed"] == 1 and first["creditor.ran"] == 1
    fake.advance(1)
    assert run_pass(store, clock, schedule) == {"failed": 0, "creditor.ran": 1}
    fake.advance(9)
    assert run_pass(store, clock, schedule)["recovery.failed"] == 1
    assert len(calls) == 2


def test_the_cadence_is_read_each_pass_from_a_function(store, clock, tasks):
    every = {"seconds": 10.0}
    runs: list[str] = []
    register_task("recovery", counting(runs, "recovery"), every=lambda: every["seconds"])
    fake = FakeTime()
    schedule = Schedule(monotonic=fake)
    run_pass(store, clock, schedule)
    fake.advance(2)
    assert "recovery.ran" not in run_pass(store, clock, schedule)
    every["seconds"] = 2.0
    assert "recovery.ran" in run_pass(store, clock, schedule)


def test_registering_again_without_every_runs_the_task_on_every_pass(tasks):
    register_task("recovery", lambda s, c: {}, every=10)
    assert workers.task_every("recovery") == 10
    register_task("recovery", lambda s, c: {})
    assert workers.task_every("recovery") is None


def test_recovery_is_registered_with_the_recovery_interval_and_the_others_every_pass(settings):
    settings.RECOVERY_INTERVAL_SECONDS = 42
    assert workers.task_every("recovery") == 42
    assert workers.task_every("creditor") is None
    assert workers.task_every("deposits") is None


def test_a_pass_that_skips_recovery_still_beats_without_its_counters(store, clock, tasks):
    register_task("recovery", lambda s, c: {"locks": 0}, every=10)
    register_task("creditor", lambda s, c: {"credited": 0})
    fake = FakeTime()
    schedule = Schedule(monotonic=fake)
    stop = StopFlag()

    def report(passes, counters):
        clock.advance(1)
        fake.advance(1)
        if passes == 2:
            stop.request()

    def work(store, clock):
        return run_pass(store, clock, schedule)

    assert serve("w", work, interval=0, stop=stop, report=report) == 2
    beat = last_beat(store, "w")
    assert beat["passes"] == 2 and beat["at"] == clock.now() - 1
    assert "creditor.credited" in beat and "recovery.locks" not in beat


class StopAfter(StopFlag):
    """The command's stop flag, asking to stop after `passes` passes instead of sleeping."""

    passes = 3

    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps >= self.passes:
            self.request()


def test_run_workers_recovers_on_its_first_pass_only_within_the_interval(
    make_user, store, clock, settings, monkeypatch
):
    make_user("alice", balance=1000)
    settings.WORKER_INTERVAL_SECONDS = 0
    settings.RECOVERY_INTERVAL_SECONDS = 3600
    runs: list[int] = []
    real = workers._tasks["recovery"]

    def recovery(store, clock, **shard):
        runs.append(1)
        return real(store, clock, **shard)

    monkeypatch.setitem(workers._tasks, "recovery", recovery)
    monkeypatch.setattr(run_workers_command, "StopFlag", StopAfter)
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS)
    out = StringIO()
    call_command("run_workers", stdout=out, verbosity=2)
    text = out.getvalue()
    assert (
        "tasks recovery (every 3600 s), notices, creditor, webhooks, orders, slotnotices (every 30 s)"
        in text
    )
    assert "pass 1: recovery.locks=1" in text and "run_workers stopped after 3 pass(es)" in text
    assert runs == [1]
    assert get_account(store, "alice").value["lock"] is None
    assert last_beat(store, "run_workers")["passes"] == 3


def test_the_recover_command_loops_on_the_recovery_interval(settings, monkeypatch):
    settings.RECOVERY_INTERVAL_SECONDS = 17
    seen = {}

    def fake_serve(name, work, **kwargs):
        seen.update(kwargs)
        return 1

    monkeypatch.setattr(recover_command, "serve", fake_serve)
    call_command("recover", stdout=StringIO())
    assert seen["interval"] == 17 and seen["once"] is False


@pytest.mark.parametrize(
    "env",
    [
        {"RECOVERY_INTERVAL_SECONDS": "0.5"},
        {"RECOVERY_INTERVAL_SECONDS": "0"},
        {"RECOVERY_INTERVAL_SECONDS": "-3"},
        {"RECOVERY_INTERVAL_SECONDS": "5", "WORKER_INTERVAL_SECONDS": "6"},
    ],
)
def test_a_recovery_interval_below_the_worker_interval_is_refused(env, monkeypatch):
    monkeypatch.delenv("WORKER_INTERVAL_SECONDS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(environ.ImproperlyConfigured, match="RECOVERY_INTERVAL_SECONDS"):
        runpy.run_path(str(BASE_SETTINGS))


def test_the_recovery_interval_defaults_to_ten_seconds_and_may_equal_the_worker_interval(
    monkeypatch,
):
    monkeypatch.delenv("RECOVERY_INTERVAL_SECONDS", raising=False)
    monkeypatch.delenv("WORKER_INTERVAL_SECONDS", raising=False)
    assert runpy.run_path(str(BASE_SETTINGS))["RECOVERY_INTERVAL_SECONDS"] == 10
    monkeypatch.setenv("RECOVERY_INTERVAL_SECONDS", "1")
    assert runpy.run_path(str(BASE_SETTINGS))["RECOVERY_INTERVAL_SECONDS"] == 1
