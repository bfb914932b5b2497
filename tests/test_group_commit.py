"""Durable writes from many threads share commits (docstore/backends/embedded.py, group commit)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from docstore import CasMismatch
from docstore.backends import embedded
from docstore.backends.embedded import EmbeddedStore, _Write
from tests.teststore import backend_only

pytestmark = backend_only("embedded", "SQLite group commit and the flock between processes")

THREADS = 16


@pytest.fixture
def durable(tmp_path):
    store = EmbeddedStore(tmp_path / "group.sqlite3", durable=True)
    yield store
    store.close()


def run_threads(target, count: int = THREADS) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a writer is stuck in the commit queue"
    return errors


def count_commits(monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = EmbeddedStore._commit

    def counting(self, batch):
        sizes.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(EmbeddedStore, "_commit", counting)
    return sizes


def test_racing_cas_increments_from_many_threads_lose_no_update(durable, monkeypatch):
    sizes = count_commits(monkeypatch)
    durable.insert("n", 0)

    def increment(_):
        for _ in range(25):
            while True:
                doc = durable.get("n")
                try:
                    durable.replace("n", doc.value + 1, doc.cas)
                    break
                except CasMismatch:
                    continue

    assert run_threads(increment) == []
    assert durable.get("n").value == THREADS * 25
    # Fewer commits than writes: the writes really were grouped.
    assert sum(sizes) >= THREADS * 25 and len(sizes) < sum(sizes)


def test_every_kind_of_write_answers_as_it_would_alone(durable):
    def work(i):
        key = f"k{i}"
        cas = durable.insert(key, {"i": i})
        cas = durable.replace(key, {"i": i, "v": 2}, cas)
        durable.upsert(f"u{i}", i)
        assert durable.counter("c", 1, 1) >= 1
        durable.remove(key, cas)

    assert run_threads(work) == []
    assert durable.get("c").value == THREADS
    assert all(durable.get(f"u{i}").value == i for i in range(THREADS))
    assert durable.get_multi([f"k{i}" for i in range(THREADS)]) == {}


def test_a_failing_statement_rolls_back_the_batch_and_the_others_go_again(durable):
    good_1 = _Write("INSERT INTO docs (key, value, cas) VALUES ('a', '1', 1)", ())
    bad = _Write("INSERT INTO no_such_table VALUES (1)", ())
    good_2 = _Write("INSERT INTO docs (key, value, cas) VALUES ('b', '2', 2)", ())
    again = durable._commit([good_1, bad, good_2])
    assert again == [good_1, good_2]
    assert bad.finished and isinstance(bad.error, sqlite3.OperationalError)
    assert durable.get_multi(["a", "b"]) == {}  # good_1 was rolled back with the batch
    assert durable._commit(again) == []
    assert good_1.finished and good_2.finished and good_1.rowcount == 1
    assert set(durable.get_multi(["a", "b"])) == {"a", "b"}


def test_a_leader_that_dies_mid_commit_leaves_no_writer_waiting_forever(durable, monkeypatch):
    original = EmbeddedStore._commit
    died = threading.Event()

    class Killed(BaseException):
        pass

    def dies_once(self, batch):
        if not died.is_set():
            died.set()
            raise Killed()
        return original(self, batch)

    monkeypatch.setattr(EmbeddedStore, "_commit", dies_once)
    errors = run_threads(lambda i: durable.upsert(f"k{i}", i))
    # The leader's own batch fails with it; everyone else's write still lands.
    assert errors and all(isinstance(e, Killed) for e in errors)
    landed = durable.get_multi([f"k{i}" for i in range(THREADS)])
    assert len(landed) == THREADS - len(errors)


def test_an_interrupt_inside_the_transaction_rolls_it_back(durable, monkeypatch):
    class Killed(BaseException):
        pass

    original = EmbeddedStore._run_batch

    def interrupted(self, conn, batch):
        conn.execute("INSERT INTO docs (key, value, cas) VALUES ('half', '1', 1)")
        raise Killed()

    monkeypatch.setattr(EmbeddedStore, "_run_batch", interrupted)
    with pytest.raises(Killed):
        durable.upsert("k", 1)
    monkeypatch.setattr(EmbeddedStore, "_run_batch", original)
    durable.upsert("k", 2)  # the lock was released and the connection is usable
    assert durable.get_multi(["half", "k"]).keys() == {"k"}


def test_relaxed_stores_write_directly(tmp_path, monkeypatch):
    store = EmbeddedStore(tmp_path / "relaxed.sqlite3", durable=False)
    monkeypatch.setattr(embedded.EmbeddedStore, "_write_grouped", None)  # would fail if called
    store.insert("k", 1)
    assert store.counter("c") == 0
