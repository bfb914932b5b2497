from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounts import workers
from accounts.heartbeat import last_beat
from accounts.workers import StopFlag, register_task, run_pass, serve
from tests.teststore import store_env

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def tasks(monkeypatch):
    """An empty task registry for this test; the real one comes back afterwards."""
    monkeypatch.setattr(workers, "_tasks", {})
    # Registering replaces a name's kind too: the real kinds must come back with the tasks.
    monkeypatch.setattr(workers, "_every", {})
    monkeypatch.setattr(workers, "_sharded", set())
    monkeypatch.setattr(workers, "_roles", {})
    return workers._tasks


def test_a_pass_runs_every_task_and_names_their_counters(store, clock, tasks):
    register_task("one", lambda store, clock: {"done": 2})
    register_task("two", lambda store, clock: {})
    assert run_pass(store, clock) == {"failed": 0, "one.done": 2}


def test_a_failing_task_does_not_stop_the_others(store, clock, tasks):
    seen = []

    def broken(store, clock):
        raise ValueError("no")

    register_task("broken", broken)
    register_task("after", lambda store, clock: seen.append(1) or {"ran": 1})
    assert run_pass(store, clock) == {"failed": 1, "broken.failed": 1, "after.ran": 1}
    assert seen == [1]


def test_registering_a_name_again_replaces_it(tasks):
    register_task("x", lambda s, c: {"a": 1})
    register_task("x", lambda s, c: {"b": 1})
    assert list(tasks) == ["x"]
    with pytest.raises(ValueError):
        register_task("x.y", lambda s, c: {})


def test_the_foundation_registers_recovery():
    assert "recovery" in workers.registered_tasks()


def test_serve_beats_after_every_pass_until_stopped(store, clock):
    stop = StopFlag()
    seen = []

    def report(passes, counters):
        seen.append(passes)
        clock.advance(5)
        if passes == 3:
            stop.request()

    passes = serve("w", lambda s, c: {"n": 1}, interval=0, stop=stop, report=report)
    assert passes == 3 and seen == [1, 2, 3]
    beat = last_beat(store, "w")
    assert beat["passes"] == 3 and beat["n"] == 1
    assert beat["at"] == clock.now() - 5  # the beat goes out before the report of its pass


def test_a_pass_that_raises_still_beats(store, clock, caplog):
    def work(store, clock):
        raise RuntimeError("docstore went away")

    assert serve("w", work, interval=0, once=True) == 1
    assert last_beat(store, "w")["failed"] == 1
    assert any(r.exc_info for r in caplog.records if "pass failed" in r.message)


def test_a_signal_asks_the_loop_to_stop_and_handlers_are_restored():
    stop = StopFlag()
    before = signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal means "now"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_request_cuts_the_sleep_short():
    stop = StopFlag()
    stop.request()
    started = time.monotonic()
    stop.sleep(30)
    assert time.monotonic() - started < 1


def test_run_workers_stops_cleanly_on_sigterm(tmp_path, store):
    env = {
        **os.environ,
        **store_env(store),
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "CACHE_URL": "locmemcache://",
        "WORKER_INTERVAL_SECONDS": "0.2",
    }
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=BASE_DIR,
                   check=True, timeout=120)  # fmt: skip
    reader = store
    proc = subprocess.Popen(
        [*manage, "run_workers"],
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Real processes need real waiting: poll for the first heartbeat.
        deadline = time.monotonic() + 60
        while last_beat(reader, "run_workers") is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no heartbeat within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "run_workers stopped after" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
