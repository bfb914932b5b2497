"""Counting without a write per view: exact under threads and processes, one counter call per slot
and kind per flush, nothing counted twice, a crash losing at most what was not yet flushed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from adspace import gateway, stats
from docstore import Ambiguous, Store, TemporaryFailure
from tests.delivery_helpers import BROWSER_AGENT, counted, links
from tests.test_ad_api import make_world, sell
from tests.teststore import store_env

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parent.parent
EMBED = "/embed/sam/0"


@pytest.fixture
def beacon(store, clock, client):
    make_world(store, clock)
    sell(store, clock)
    clock.advance(600)
    return links(client.get(EMBED).content.decode())[1]


def test_sixteen_threads_viewing_at_once_are_counted_exactly(store, beacon, settings):
    settings.STATS_IMPRESSIONS_PER_CLIENT = 10**6
    views, threads = 200, 16
    failures = []
    start = threading.Barrier(threads)

    def run(j: int) -> None:
        client = Client()
        start.wait()
        for i in range(views):
            response = client.get(beacon, REMOTE_ADDR=f"10.9.{j}.1", HTTP_USER_AGENT=BROWSER_AGENT)
            if response.status_code != 200:
                failures.append(response.status_code)
            if i % 50 == 0 and j == 0:
                stats.flush()  # flushes racing the views must lose nothing and double nothing

    workers = [threading.Thread(target=run, args=(j,)) for j in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not failures
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == views * threads


def child_env(store, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **store_env(store),
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DEBUG": "False",
        "SECRET_KEY": django_settings.SECRET_KEY,  # the tokens are ours
        "ALLOWED_HOSTS": "testserver",
        "DATABASE_URL": "sqlite://:memory:",
        "CACHE_URL": "locmemcache://",
        "STATS_IMPRESSIONS_PER_CLIENT": "1000000",
        **extra,
    }


def run_children(store, clock, beacon, count, views, threads, ending, **extra):
    env = child_env(store, **extra)
    script = str(BASE_DIR / "tests" / "stats_child.py")
    procs = []
    for i in range(count):
        args = [str(clock.now()), beacon, str(views), str(threads), str(i + 1), ending]
        procs.append(
            subprocess.Popen(
                [sys.executable, script, *args],
                env=env,
                cwd=BASE_DIR,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        codes.append((p.returncode, err[-2000:]))
    return codes


def test_four_processes_viewing_at_once_are_counted_exactly(store, clock, beacon):
    codes = run_children(store, clock, beacon, 4, 150, 4, "flush", STATS_FLUSH_SECONDS="0.05")
    assert [c for c, _ in codes] == [0, 0, 0, 0], codes
    assert counted(store, stats.IMPRESSIONS) == 4 * 4 * 150


def test_a_clean_exit_flushes_what_was_counted(store, clock, beacon):
    # A flush interval far longer than the run: only the exit can have written the counts.
    codes = run_children(store, clock, beacon, 1, 30, 1, "exit", STATS_FLUSH_SECONDS="3600")
    assert codes[0][0] == 0, codes
    assert counted(store, stats.IMPRESSIONS) == 30


def test_a_crash_loses_only_what_was_not_yet_flushed(store, clock, beacon):
    codes = run_children(store, clock, beacon, 1, 30, 1, "crash", STATS_FLUSH_SECONDS="3600")
    assert codes[0][0] == 0, codes
    assert counted(store, stats.IMPRESSIONS) == 0  # killed before its first flush
    codes = run_children(store, clock, beacon, 1, 30, 1, "thread", STATS_FLUSH_SECONDS="0.1")
    assert codes[0][0] == 0, codes
    assert counted(store, stats.IMPRESSIONS) == 30  # the flusher thread wrote them in time


class CountingCalls:
    """A store that records its counter calls, and fails them as told (its counter_multi is the
    docstore default: one counter call per key)."""

    counter_multi = Store.counter_multi

    def __init__(self, inner, fail=None):
        self.inner, self.fail, self.calls = inner, fail or {}, []
        self.prefix = inner.prefix

    def counter(self, key, delta=1, initial=0):
        self.calls.append((key, delta))
        failure = self.fail.pop(key, None)
        if failure == "temporary":
            raise TemporaryFailure(key)
        if failure == "ambiguous-applied":
            self.inner.counter(key, delta, initial)
            raise Ambiguous(key)
        return self.inner.counter(key, delta, initial)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def day_key(k: int, kind: str = stats.IMPRESSIONS) -> str:
    return gateway.stat_key("sam", 0, k, "2023-11-14", kind)


def test_a_flush_makes_one_counter_call_per_slot_and_kind(store, clock):
    calls = CountingCalls(store)
    for _ in range(500):
        stats.record(calls, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    for _ in range(7):
        stats.record(calls, "sam", 0, 0, clock.now(), stats.CLICKS)
        stats.record(calls, "sam", 0, 1, clock.now(), stats.IMPRESSIONS)
    assert stats.flush() == 3
    assert sorted(calls.calls) == sorted(
        [(day_key(0), 500), (day_key(0, stats.CLICKS), 7), (day_key(1), 7)]
    )
    assert stats.flush() == 0  # nothing new: no calls
    assert len(calls.calls) == 3
    assert counted(store, stats.IMPRESSIONS) == 500


def test_a_temporary_failure_is_written_at_the_next_flush(store, clock):
    calls = CountingCalls(store, {day_key(0): "temporary"})
    for _ in range(5):
        stats.record(calls, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 0
    assert stats.recorder.pending() == 5
    stats.record(calls, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 6


def test_an_ambiguous_write_is_never_repeated(store, clock):
    # The increment was applied but the answer lost: writing it again would count it twice.
    calls = CountingCalls(store, {day_key(0): "ambiguous-applied"})
    for _ in range(4):
        stats.record(calls, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    stats.flush()
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 4
    assert stats.recorder.pending() == 0


def test_counts_go_to_the_store_they_were_counted_in(store, clock, tmp_path):
    from tests.teststore import make_test_store

    other = make_test_store(tmp_path / "other")
    try:
        stats.record(store, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
        stats.record(other, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
        stats.record(other, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
        stats.flush()
        assert counted(store, stats.IMPRESSIONS) == 1
        assert counted(other, stats.IMPRESSIONS) == 2
    finally:
        other.close()


def test_a_forked_child_does_not_flush_its_parents_counts(store, clock):
    stats.record(store, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    pid = os.fork()
    if pid == 0:  # the child: what it inherited is not its own
        code = 0
        try:
            code = 0 if stats.flush() == 0 and stats.recorder.pending() == 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    stats.flush()
    assert counted(store, stats.IMPRESSIONS) == 1


def test_a_flush_of_ten_thousand_slots_writes_each_once(store, clock):
    for k in range(10_000):
        stats.record(store, "sam", 0, k, clock.now(), stats.IMPRESSIONS)
    assert stats.flush() == 10_000
    keys = [day_key(k) for k in (0, 4321, 9999)]
    assert {d.value for d in store.get_multi(keys).values()} == {1}


def test_gunicorns_worker_exit_hook_flushes_the_workers_counts(store, clock, settings):
    import runpy

    hooks = runpy.run_path(str(BASE_DIR / "config" / "gunicorn.py"))
    for _ in range(3):
        stats.record(store, "sam", 0, 0, clock.now(), stats.IMPRESSIONS)
    # A server's setting, where the exit flush is on (set after counting: no flusher thread).
    settings.STATS_FLUSH_SECONDS = 3600
    hooks["worker_exit"](None, None)
    assert counted(store, stats.IMPRESSIONS) == 3 and stats.recorder.pending() == 0
