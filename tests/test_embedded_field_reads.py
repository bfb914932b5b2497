"""The embedded store's get_fields keeps what it read with the CAS; it must never answer stale."""

from __future__ import annotations

import pytest

from docstore import NotFound
from docstore.backends import embedded
from docstore.backends.embedded import EmbeddedStore
from tests.teststore import backend_only

pytestmark = backend_only("embedded", "SQLite `->` reads kept with the CAS across connections")


@pytest.fixture
def path(tmp_path):
    return tmp_path / "docstore.sqlite3"


def test_a_change_through_another_store_on_the_same_file_is_seen_at_once(path):
    # Another process (another gunicorn worker, the worker) writes through its own connection.
    mine, theirs = EmbeddedStore(path), EmbeddedStore(path)
    mine.insert("account::sam", {"apiKey": "old", "ledger": [1, 2, 3]})
    assert mine.get_fields("account::sam", ["apiKey"]).value == {"apiKey": "old"}
    cas = theirs.replace("account::sam", {"apiKey": "new"}, theirs.get("account::sam").cas)
    assert mine.get_fields("account::sam", ["apiKey"]) == embedded.Doc({"apiKey": "new"}, cas)


def test_a_removed_document_is_not_found_though_its_fields_were_read(path):
    store = EmbeddedStore(path)
    store.insert("k", {"a": 1})
    store.get_fields("k", ["a"])
    store.remove("k")
    with pytest.raises(NotFound):
        store.get_fields("k", ["a"])


def test_a_re_created_document_is_read_afresh(path):
    store = EmbeddedStore(path)
    store.insert("k", {"a": 1})
    store.get_fields("k", ["a"])
    store.remove("k")
    store.insert("k", {"a": 2})
    assert store.get_fields("k", ["a"]).value == {"a": 2}


def test_what_a_caller_changes_is_not_what_the_next_caller_gets(path):
    store = EmbeddedStore(path)
    store.insert("k", {"a": {"b": [1]}})
    store.get_fields("k", ["a"]).value["a"]["b"].append(2)
    assert store.get_fields("k", ["a"]).value == {"a": {"b": [1]}}


def test_an_unchanged_document_is_not_parsed_again(path, monkeypatch):
    store = EmbeddedStore(path)
    store.insert("k", {"a": 1, "big": "x" * 5000})
    store.get_fields("k", ["a"])
    statements = []
    real = store._run
    monkeypatch.setattr(
        store, "_run", lambda sql, params: statements.append(sql) or real(sql, params)
    )
    assert store.get_fields("k", ["a"]).value == {"a": 1}
    assert statements == ["SELECT cas FROM docs WHERE key = ?"]


def test_the_cache_is_bounded(path, monkeypatch):
    monkeypatch.setattr(embedded, "_FIELDS_CACHE_SIZE", 5)
    store = EmbeddedStore(path)
    for i in range(12):
        store.insert(f"k{i}", {"a": i})
        assert store.get_fields(f"k{i}", ["a"]).value == {"a": i}
    assert len(store._fields) <= 5


def test_scalar_fields_changed_by_a_caller_are_not_what_the_next_caller_gets(path):
    store = EmbeddedStore(path)
    store.insert("k", {"a": "key", "b": 7})
    first = store.get_fields("k", ["a", "b"]).value
    first["a"] = "changed"
    del first["b"]
    again = store.get_fields("k", ["a", "b"]).value
    assert again == {"a": "key", "b": 7}
    again["b"] = 8
    assert store.get_fields("k", ["a", "b"]).value == {"a": "key", "b": 7}
