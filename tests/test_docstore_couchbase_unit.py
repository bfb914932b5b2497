"""CouchbaseStore against a fake SDK collection: no server needed.

The fake keeps Couchbase's own semantics (CAS, insert/replace/remove errors, binary counters,
multi-get with per-key exceptions, sub-document lookups answered as the SDK's own
LookupInResult with per-path statuses) and can inject SDK exceptions before or after applying an
operation, which is how "applied but reported as a timeout" is simulated.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from couchbase import subdocument
from couchbase.durability import DurabilityLevel
from couchbase.exceptions import (
    AmbiguousTimeoutException,
    CasMismatchException,
    DocumentExistsException,
    DocumentNotFoundException,
    DocumentNotJsonException,
    DurabilitySyncWriteAmbiguousException,
    DurabilitySyncWriteInProgressException,
    RequestCanceledException,
    TemporaryFailException,
    UnAmbiguousTimeoutException,
)
from couchbase.options import DeltaValue, SignedInt64
from couchbase.result import LookupInResult
from couchbase.subdocument import SubDocOp, SubDocStatus
from couchbase.transcoder import JSONTranscoder

import docstore.base
from docstore import AlreadyExists, Ambiguous, CasMismatch, NotFound, TemporaryFailure
from docstore.backends import couchbase as cb

CONFIG = {
    "COUCHBASE_CONNSTR": "couchbase://127.0.0.1",
    "COUCHBASE_BUCKET": "adspace",
    "COUCHBASE_SCOPE": "_default",
    "COUCHBASE_COLLECTION": "_default",
    "COUCHBASE_USERNAME": "app",
    "COUCHBASE_PASSWORD": "secret",
    "COUCHBASE_DURABILITY": "majority",
    "DURABILITY": "durable",
}


class FakeResult:
    def __init__(self, cas, value=None, content=None):
        self.cas, self.value, self.content = cas, value, content


class FakeMulti:
    def __init__(self, results, exceptions):
        self.results, self.exceptions = results, exceptions


class FakeCollection:
    """An in-memory Couchbase collection. `fail(op, exc, applied)` queues one injected error."""

    def __init__(self, stale_cas_exc=CasMismatchException):
        self.docs: dict[str, tuple[str, int]] = {}
        self.calls: list[tuple[str, object, object]] = []
        self.faults: list[tuple[str, type[Exception], bool, object]] = []
        self.stale_cas_exc = stale_cas_exc
        self._cas = itertools.count(1_000_000_007, 7919)
        self._lock = threading.Lock()

    def fail(self, op, exc, applied=False, key=None):
        self.faults.append((op, exc, applied, key))

    def _fault(self, op, key):
        for i, (f_op, exc, applied, f_key) in enumerate(self.faults):
            if f_op == op and f_key in (None, key):
                del self.faults[i]
                return exc, applied
        return None, False

    def _run(self, op, key, opts, fn):
        with self._lock:
            self.calls.append((op, key, opts))
            exc, applied = self._fault(op, key)
            if exc is not None and not applied:
                raise exc(f"injected {exc.__name__}")
            result = fn()
            if exc is not None:
                raise exc(f"injected {exc.__name__} after applying")
            return result

    def _stored(self, key):
        if key not in self.docs:
            raise DocumentNotFoundException(key)
        return self.docs[key]

    def _put(self, key, value):
        cas = next(self._cas)
        self.docs[key] = (json.dumps(value), cas)
        return FakeResult(cas)

    def get(self, key, *opts):
        def op():
            raw, cas = self._stored(key)
            return FakeResult(cas, value=json.loads(raw))

        return self._run("get", key, opts, op)

    def get_multi(self, keys, opts=None):
        with self._lock:
            self.calls.append(("get_multi", list(keys), opts))
            results, exceptions = {}, {}
            for key in keys:
                exc, _ = self._fault("get_multi", key)
                if exc is not None:
                    exceptions[key] = exc(key)
                elif key in self.docs:
                    raw, cas = self.docs[key]
                    results[key] = FakeResult(cas, value=json.loads(raw))
                else:
                    exceptions[key] = DocumentNotFoundException(key)
            return FakeMulti(results, exceptions)

    def lookup_in(self, key, specs, *opts):
        """What the SDK answers: a LookupInResult over the core's raw fields, one per spec in
        order, each with its status (0, or PathNotFound / PathMismatch) and, when found, the
        path's JSON bytes. Top-level paths only, which is all CouchbaseStore asks for."""
        specs = list(specs)

        def op():
            raw, cas = self._stored(key)
            doc = json.loads(raw)
            fields = []
            for i, (opcode, path, xattr) in enumerate(specs):
                assert opcode == SubDocOp.GET and not xattr
                entry = {"path": path, "original_index": i, "opcode": int(opcode), "ec": 0}
                if not isinstance(doc, dict):
                    entry.update(status=int(SubDocStatus.PathMismatch), exists=False, value=b"")
                elif path in doc:
                    found = json.dumps(doc[path]).encode()
                    entry.update(status=0, exists=True, value=found)
                else:
                    entry.update(status=int(SubDocStatus.PathNotFound), exists=False, value=b"")
                fields.append(entry)
            core = SimpleNamespace(raw_result={"cas": cas, "fields": fields, "deleted": False})
            return LookupInResult(core, transcoder=JSONTranscoder(), is_subdoc=True, key=key)

        return self._run("lookup_in", key, (specs, opts), op)

    def insert(self, key, value, opts=None):
        def op():
            if key in self.docs:
                raise DocumentExistsException(key)
            return self._put(key, value)

        return self._run("insert", key, opts, op)

    def replace(self, key, value, opts=None):
        def op():
            _, cas = self._stored(key)
            if opts.get("cas") and opts["cas"] != cas:
                raise self.stale_cas_exc(key)
            return self._put(key, value)

        return self._run("replace", key, opts, op)

    def upsert(self, key, value, opts=None):
        return self._run("upsert", key, opts, lambda: self._put(key, value))

    def remove(self, key, opts=None):
        def op():
            _, cas = self._stored(key)
            if opts.get("cas") and opts["cas"] != cas:
                raise self.stale_cas_exc(key)
            del self.docs[key]
            return FakeResult(next(self._cas))

        return self._run("remove", key, opts, op)

    def binary(self):
        return SimpleNamespace(increment=self._increment, increment_multi=self._increment_multi)

    def _increment_multi(self, keys, opts):
        """As the SDK: every key's increment at once, each key's error in `exceptions` (a fault
        queued for "increment_multi" and a key fails that key alone, applied or not)."""
        with self._lock:
            self.calls.append(("increment_multi", list(keys), opts))
            results, exceptions = {}, {}
            for key in keys:
                exc, applied = self._fault("increment_multi", key)
                if exc is None or applied:
                    if key in self.docs:
                        value = int(json.loads(self.docs[key][0])) + int(opts["delta"])
                    else:
                        value = int(opts["initial"])
                    self.docs[key] = (str(value), next(self._cas))
                    results[key] = FakeResult(self.docs[key][1], content=value)
                if exc is not None:
                    exceptions[key] = exc(key)
            return FakeMulti(results, exceptions)

    def _increment(self, key, opts):
        def op():
            if key in self.docs:
                value = int(json.loads(self.docs[key][0])) + int(opts["delta"])
            else:
                value = int(opts["initial"])
            self.docs[key] = (str(value), next(self._cas))
            return FakeResult(self.docs[key][1], content=value)

        return self._run("increment", key, opts, op)

    def count(self, op):
        return sum(1 for call in self.calls if call[0] == op)


@pytest.fixture(autouse=True)
def _fresh_module_state(monkeypatch):
    monkeypatch.setattr(cb, "_clusters", {})
    monkeypatch.setattr(cb, "_collections", {})
    monkeypatch.setattr(cb, "_abandoned", [])
    # Backoff sleeps only slow the test down; the number of attempts is what is under test.
    monkeypatch.setattr(docstore.base, "time", SimpleNamespace(sleep=lambda _s: None))


@pytest.fixture
def fake(monkeypatch):
    coll = FakeCollection()
    monkeypatch.setattr(cb, "_open_collection", lambda target, timeout: coll)
    return coll


@pytest.fixture
def kv(fake):
    return cb.CouchbaseStore.from_config(CONFIG, prefix="t1::")


# -- configuration ---------------------------------------------------------------------------------


def test_construction_opens_nothing_until_first_use(monkeypatch):
    opened = []
    coll = FakeCollection()
    monkeypatch.setattr(
        cb, "_open_collection", lambda target, timeout: opened.append(target) or coll
    )
    store = cb.CouchbaseStore.from_config(CONFIG, prefix="p::")
    assert opened == []
    with pytest.raises(NotFound):
        store.get("x")
    store.get_multi(["x"])
    assert opened == [("couchbase://127.0.0.1", "app", "secret", "adspace", "_default", "_default")]


def test_writes_carry_the_configured_server_durability(fake):
    store = cb.CouchbaseStore.from_config(
        {**CONFIG, "COUCHBASE_DURABILITY": "persist_to_majority"}, prefix=""
    )
    store.insert("a", 1)
    store.upsert("a", 2)
    store.replace("a", 3, store.get("a").cas)
    store.counter("c")
    store.remove("a")
    writes = [call for call in fake.calls if call[0] != "get"]
    assert len(writes) == 5
    for _op, _key, opts in writes:
        assert opts["durability"].level is DurabilityLevel.PERSIST_TO_MAJORITY


@pytest.mark.parametrize(
    "config",
    [{"DURABILITY": "relaxed"}, {"COUCHBASE_DURABILITY": "none"}],
    ids=["relaxed", "none"],
)
def test_relaxed_or_none_durability_sends_no_durability(fake, config):
    store = cb.CouchbaseStore.from_config({**CONFIG, **config}, prefix="")
    store.insert("a", 1)
    store.counter("c")
    assert all("durability" not in opts for _op, _key, opts in fake.calls)


def test_bad_configuration_is_rejected_at_construction():
    with pytest.raises(ValueError, match="COUCHBASE_DURABILITY"):
        cb.CouchbaseStore.from_config({**CONFIG, "COUCHBASE_DURABILITY": "quorum"}, prefix="")
    with pytest.raises(ValueError, match="COUCHBASE_CONNSTR"):
        cb.CouchbaseStore.from_config({**CONFIG, "COUCHBASE_CONNSTR": ""}, prefix="")


# -- prefixing and error mapping -------------------------------------------------------------------


def test_prefix_is_prepended_to_every_key_and_stripped_from_get_multi(kv, fake):
    kv.insert("a", {"v": 1})
    kv.upsert("b", [1, 2])
    kv.replace("a", {"v": 2}, kv.get("a").cas)
    kv.counter("n", 1, 5)
    kv.remove("b")
    assert set(fake.docs) == {"t1::a", "t1::n"}
    assert all(
        key.startswith("t1::") for op, key, _ in fake.calls if op != "get_multi"
    )  # includes the reads
    found = kv.get_multi(["a", "n", "missing", "a"])
    assert {k: d.value for k, d in found.items()} == {"a": {"v": 2}, "n": 5}
    assert fake.calls[-1][1] == ["t1::a", "t1::n", "t1::missing"]


def test_answers_are_mapped_and_never_retried(kv, fake):
    with pytest.raises(NotFound):
        kv.get("nope")
    with pytest.raises(NotFound):
        kv.replace("nope", 1, 123)
    with pytest.raises(NotFound):
        kv.remove("nope")
    cas = kv.insert("k", 1)
    with pytest.raises(AlreadyExists):
        kv.insert("k", 2)
    with pytest.raises(CasMismatch):
        kv.replace("k", 3, cas + 1)
    with pytest.raises(CasMismatch):
        kv.remove("k", cas + 1)
    assert [op for op, _, _ in fake.calls] == [
        "get",
        "replace",
        "remove",
        "insert",
        "insert",
        "replace",
        "remove",
    ]
    assert kv.get("k").value == 1


@pytest.mark.parametrize("stale_exc", [CasMismatchException, DocumentExistsException])
def test_stale_cas_is_cas_mismatch_whichever_exception_the_sdk_raises(monkeypatch, stale_exc):
    coll = FakeCollection(stale_cas_exc=stale_exc)
    monkeypatch.setattr(cb, "_open_collection", lambda target, timeout: coll)
    store = cb.CouchbaseStore.from_config(CONFIG, prefix="")
    cas = store.insert("k", 1)
    with pytest.raises(CasMismatch):
        store.replace("k", 2, cas - 1)
    with pytest.raises(CasMismatch):
        store.remove("k", cas - 1)
    assert store.get("k").value == 1


def test_cas_zero_matches_nothing_instead_of_meaning_no_check(kv, fake):
    kv.insert("k", 1)
    with pytest.raises(CasMismatch):
        kv.replace("k", 2, 0)
    with pytest.raises(CasMismatch):
        kv.remove("k", 0)
    with pytest.raises(NotFound):
        kv.replace("absent", 2, 0)
    assert fake.count("replace") == fake.count("remove") == 0
    assert kv.get("k").value == 1


def test_counter_uses_binary_increment_and_returns_initial_when_absent(kv, fake):
    assert kv.counter("n", 3, 10) == 10
    assert kv.counter("n", 3, 10) == 13
    assert kv.get("n").value == 13
    _, _, opts = fake.calls[0]
    assert isinstance(opts["delta"], DeltaValue) and int(opts["delta"]) == 3
    assert isinstance(opts["initial"], SignedInt64) and int(opts["initial"]) == 10
    for bad in (0, -1):
        with pytest.raises(ValueError):
            kv.counter("n", bad)
    with pytest.raises(ValueError):
        kv.counter("m", 1, -1)
    assert fake.count("increment") == 2


# -- transient errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [TemporaryFailException, UnAmbiguousTimeoutException, DurabilitySyncWriteInProgressException],
)
def test_not_applied_errors_are_retried_for_every_write(kv, fake, exc):
    for op in ("insert", "replace", "upsert", "remove", "increment"):
        fake.fail(op, exc)
        fake.fail(op, exc)
    cas = kv.insert("k", 1)
    cas = kv.replace("k", 2, cas)
    kv.upsert("k", 3)
    kv.remove("k")
    assert kv.counter("n", 1, 7) == 7
    for op in ("insert", "replace", "upsert", "remove", "increment"):
        assert fake.count(op) == 3, op
    assert {k: json.loads(v) for k, (v, _) in fake.docs.items()} == {"t1::n": 7}


@pytest.mark.parametrize("exc", [AmbiguousTimeoutException, UnAmbiguousTimeoutException])
def test_reads_retry_any_timeout(kv, fake, exc):
    kv.insert("k", 1)
    fake.fail("get", exc)
    assert kv.get("k").value == 1
    assert fake.count("get") == 2


def test_transient_errors_that_outlast_the_retries_become_temporary_failure(kv, fake):
    for _ in range(8):
        fake.fail("insert", TemporaryFailException)
    with pytest.raises(TemporaryFailure):
        kv.insert("k", 1)
    assert fake.count("insert") == 8
    assert fake.docs == {}


def test_get_multi_retries_only_the_keys_that_failed_transiently(kv, fake):
    for i in range(3):
        kv.insert(f"k{i}", i)
    fake.fail("get_multi", TemporaryFailException, key="t1::k1")
    found = kv.get_multi(["k0", "k1", "k2", "missing"])
    assert {k: d.value for k, d in found.items()} == {"k0": 0, "k1": 1, "k2": 2}
    multi_calls = [keys for op, keys, _ in fake.calls if op == "get_multi"]
    assert multi_calls == [["t1::k0", "t1::k1", "t1::k2", "t1::missing"], ["t1::k1"]]


def test_get_multi_of_many_keys_is_sent_in_bounded_batches(kv, fake):
    for i in range(0, 2500, 2):
        fake.docs[f"t1::k{i}"] = (json.dumps(i), i + 1)
    found = kv.get_multi(f"k{i}" for i in range(2500))
    assert len(found) == 1250 and found["k2498"].value == 2498
    sizes = [len(keys) for op, keys, _ in fake.calls if op == "get_multi"]
    assert sizes == [1000, 1000, 500]
    assert kv.get_multi([]) == {}


# -- get_fields: sub-document lookups --------------------------------------------------------------

ACCOUNT = {"apiKey": "k-1", "balance": 7, "lock": None, "ledger": [{"amount": 5}], "btc": {}}


def test_get_fields_is_one_lookup_in_with_a_get_spec_per_field(kv, fake):
    cas = kv.insert("acct", ACCOUNT)
    got = kv.get_fields("acct", ["apiKey", "lock", "missing", "ledger", "apiKey"])
    assert got == docstore.base.Doc({"apiKey": "k-1", "lock": None, "ledger": [{"amount": 5}]}, cas)
    op, key, (specs, _opts) = fake.calls[-1]
    assert (op, key) == ("lookup_in", "t1::acct")
    assert specs == [subdocument.get(name) for name in ("apiKey", "lock", "missing", "ledger")]
    assert fake.count("get") == 0


def test_get_fields_of_a_missing_document_is_not_found_and_not_retried(kv, fake):
    with pytest.raises(NotFound):
        kv.get_fields("nope", ["apiKey"])
    assert fake.count("lookup_in") == 1


def test_get_fields_of_a_document_that_is_not_an_object_finds_no_fields(kv, fake):
    cas = kv.upsert("list", [1, 2])
    assert kv.get_fields("list", ["apiKey"]) == docstore.base.Doc({}, cas)
    kv.counter("n", 1, 5)
    assert kv.get_fields("n", ["apiKey", "x"]).value == {}


def test_get_fields_of_a_document_the_server_says_is_not_json_reads_its_cas(kv, fake):
    kv.counter("n", 1, 5)
    fake.fail("lookup_in", DocumentNotJsonException)
    assert kv.get_fields("n", ["apiKey"]) == docstore.base.Doc({}, fake.docs["t1::n"][1])
    assert fake.count("lookup_in") == 1 and fake.count("get") == 1


@pytest.mark.parametrize(
    "exc",
    [
        TemporaryFailException,
        UnAmbiguousTimeoutException,
        AmbiguousTimeoutException,
        RequestCanceledException,
    ],
)
def test_get_fields_retries_any_transient_error_like_a_read(kv, fake, exc):
    cas = kv.insert("acct", ACCOUNT)
    fake.fail("lookup_in", exc)
    assert kv.get_fields("acct", ["apiKey"]) == docstore.base.Doc({"apiKey": "k-1"}, cas)
    assert fake.count("lookup_in") == 2


def test_get_fields_errors_that_outlast_the_retries_become_temporary_failure(kv, fake):
    kv.insert("acct", ACCOUNT)
    for _ in range(8):
        fake.fail("lookup_in", AmbiguousTimeoutException)
    with pytest.raises(TemporaryFailure):
        kv.get_fields("acct", ["apiKey"])
    assert fake.count("lookup_in") == 8


@pytest.mark.parametrize(
    "fields", [["a.b"], ["a[0]"], ["`a`"], [""], [], [f"f{i}" for i in range(17)]]
)
def test_get_fields_checks_the_names_before_sending_anything(kv, fake, fields):
    with pytest.raises(ValueError):
        kv.get_fields("acct", fields)
    assert fake.calls == []


# -- ambiguous writes ------------------------------------------------------------------------------

AMBIGUOUS = [
    AmbiguousTimeoutException,
    DurabilitySyncWriteAmbiguousException,
    RequestCanceledException,
]


@pytest.mark.parametrize("exc", AMBIGUOUS)
def test_ambiguous_insert_that_landed_returns_its_cas_without_repeating(kv, fake, exc):
    fake.fail("insert", exc, applied=True)
    cas = kv.insert("k", {"token": "t-1"})
    assert cas == fake.docs["t1::k"][1]
    assert fake.count("insert") == 1 and fake.count("get") == 1


@pytest.mark.parametrize("exc", AMBIGUOUS)
def test_ambiguous_insert_that_did_not_land_is_inserted_again(kv, fake, exc):
    fake.fail("insert", exc, applied=False)
    cas = kv.insert("k", {"token": "t-1"})
    assert kv.get("k") == docstore.base.Doc({"token": "t-1"}, cas)
    assert fake.count("insert") == 2


def test_ambiguous_insert_whose_retry_meets_its_own_late_commit_returns_the_cas(kv, fake):
    fake.fail("insert", AmbiguousTimeoutException, applied=False)
    # The second attempt reports "exists" because the first one committed meanwhile.
    fake.fail("insert", DocumentExistsException, applied=True)
    cas = kv.insert("k", {"token": "t-1"})
    assert cas == fake.docs["t1::k"][1]


def test_ambiguous_insert_that_finds_another_value_is_ambiguous(kv, fake):
    fake.fail("insert", AmbiguousTimeoutException, applied=False)
    fake.fail("get", TemporaryFailException)  # the re-read itself is retried
    fake.docs["t1::k"] = (json.dumps({"token": "someone-else"}), 42)
    with pytest.raises(Ambiguous):
        kv.insert("k", {"token": "t-1"})
    assert fake.count("insert") == 1


@pytest.mark.parametrize("exc", AMBIGUOUS)
def test_ambiguous_replace_is_settled_by_reading_never_by_repeating(kv, fake, exc):
    cas = kv.insert("k", {"v": 1})
    fake.fail("replace", exc, applied=True)
    new = kv.replace("k", {"v": 2}, cas)
    assert new == fake.docs["t1::k"][1] != cas
    fake.fail("replace", exc, applied=False)
    with pytest.raises(Ambiguous):
        kv.replace("k", {"v": 3}, new)
    assert fake.count("replace") == 2
    assert kv.get("k").value == {"v": 2}


def test_ambiguous_upsert_is_settled_by_reading(kv, fake):
    fake.fail("upsert", AmbiguousTimeoutException, applied=True)
    assert kv.upsert("k", [1, "two"]) == fake.docs["t1::k"][1]
    fake.fail("upsert", AmbiguousTimeoutException, applied=False)
    with pytest.raises(Ambiguous):
        kv.upsert("k", [3])
    assert fake.count("upsert") == 2


def test_equal_means_identical_json_not_python_equal(kv, fake):
    cas = kv.insert("k", {"v": 1})
    fake.fail("replace", AmbiguousTimeoutException, applied=False)
    with pytest.raises(Ambiguous):
        kv.replace("k", {"v": True}, cas)  # True == 1 in Python, not in JSON


def test_ambiguous_remove_succeeds_only_if_the_document_is_gone(kv, fake):
    kv.insert("a", 1)
    kv.insert("b", 1)
    fake.fail("remove", AmbiguousTimeoutException, applied=True)
    kv.remove("a")
    fake.fail("remove", AmbiguousTimeoutException, applied=False)
    with pytest.raises(Ambiguous):
        kv.remove("b")
    assert set(fake.docs) == {"t1::b"}


@pytest.mark.parametrize("applied", [True, False])
def test_ambiguous_counter_raises_ambiguous_and_is_not_repeated(kv, fake, applied):
    kv.counter("n", 1, 1)
    fake.fail("increment", AmbiguousTimeoutException, applied=applied)
    with pytest.raises(Ambiguous):
        kv.counter("n")
    assert fake.count("increment") == 2
    assert kv.get("n").value == (2 if applied else 1)


def test_counter_multi_sends_each_delta_group_at_once_in_bounded_chunks(kv, fake):
    deltas = {f"c{i}": 1 for i in range(2500)} | {"two": 2, "three": 3, "also-two": 2}
    assert kv.counter_multi(deltas) == {}
    assert kv.counter_multi({"c0": 4, "two": 1}) == {}
    values = {k.removeprefix("t1::"): int(v) for k, (v, _) in fake.docs.items()}
    assert values == deltas | {"c0": 5, "two": 3}
    sent = [(len(keys), int(opts["delta"]), int(opts["initial"])) for op, keys, opts in fake.calls]
    first = [(1000, 1, 1), (1000, 1, 1), (500, 1, 1), (2, 2, 2), (1, 3, 3)]
    assert sent == [*first, (1, 4, 4), (1, 1, 1)]
    assert fake.count("increment") == 0


def test_counter_multi_repeats_only_what_was_not_applied_and_reports_the_unknown(kv, fake):
    fake.fail("increment_multi", TemporaryFailException, key="t1::refused")
    fake.fail("increment_multi", AmbiguousTimeoutException, applied=True, key="t1::landed")
    fake.fail("increment_multi", AmbiguousTimeoutException, applied=False, key="t1::lost")
    failed = kv.counter_multi({"ok": 1, "refused": 1, "landed": 1, "lost": 1})
    assert {k: type(e) for k, e in failed.items()} == {"landed": Ambiguous, "lost": Ambiguous}
    values = {k.removeprefix("t1::"): int(v) for k, (v, _) in fake.docs.items()}
    assert values == {"ok": 1, "refused": 1, "landed": 1}  # an ambiguous add is never repeated
    retried = [keys for op, keys, _ in fake.calls if op == "increment_multi"][1:]
    assert retried == [["t1::refused"]]


def test_counter_multi_that_stays_refused_is_a_temporary_failure_and_changes_nothing(kv, fake):
    for _ in range(8):
        fake.fail("increment_multi", TemporaryFailException, key="t1::n")
    failed = kv.counter_multi({"n": 1, "m": 2})
    assert list(failed) == ["n"] and isinstance(failed["n"], TemporaryFailure)
    sent = [keys for op, keys, _ in fake.calls if op == "increment_multi"]
    assert sent.count(["t1::n"]) == 8 and sent.count(["t1::m"]) == 1
    assert {k: int(v) for k, (v, _) in fake.docs.items()} == {"t1::m": 2}


# -- one cluster per process -----------------------------------------------------------------------


class FakeCluster:
    def __init__(self, collection):
        self.collection_obj = collection

    def bucket(self, name):
        return SimpleNamespace(
            scope=lambda s: SimpleNamespace(collection=lambda c: self.collection_obj)
        )


@pytest.fixture
def opened(monkeypatch):
    clusters: list[FakeCluster] = []
    started = threading.Event()

    def open_cluster(connstr, username, password, timeout):
        started.wait(0.05)  # widen the window in which racing threads could double-open
        clusters.append(FakeCluster(FakeCollection()))
        return clusters[-1]

    monkeypatch.setattr(cb, "_open_cluster", open_cluster)
    return clusters


def test_stores_in_one_process_share_one_cluster_opened_once_under_races(opened):
    stores = [cb.CouchbaseStore.from_config(CONFIG, prefix=f"p{i}::") for i in range(8)]
    barrier = threading.Barrier(len(stores))

    def use(store):
        barrier.wait()
        store.upsert("k", 1)

    threads = [threading.Thread(target=use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1
    assert set(opened[0].collection_obj.docs) == {f"p{i}::k" for i in range(8)}
    stores[0].close()
    stores[0].get("k")  # close drops the handle only; the shared cluster stays
    assert len(opened) == 1


def test_connection_failure_is_temporary_and_a_call_after_the_pause_reconnects(monkeypatch):
    attempts = []

    def open_cluster(connstr, username, password, timeout):
        attempts.append(timeout)
        if len(attempts) == 1:
            raise UnAmbiguousTimeoutException("cluster not ready")
        return FakeCluster(FakeCollection())

    monkeypatch.setattr(cb, "_open_cluster", open_cluster)
    monkeypatch.setattr(cb, "_failed_at", {})
    monkeypatch.setattr(cb, "_REDIAL_PAUSE", 0.2)
    store = cb.CouchbaseStore.from_config({**CONFIG, "COUCHBASE_CONNECT_TIMEOUT": 3}, prefix="")
    with pytest.raises(TemporaryFailure, match="cannot reach Couchbase"):
        store.insert("k", 1)
    # Within the pause a call fails at once, without dialling (nor waiting out the timeout).
    with pytest.raises(TemporaryFailure, match="cluster not ready"):
        store.get_multi(["k"])
    assert len(attempts) == 1
    time.sleep(0.25)
    assert store.insert("k", 1) > 0
    assert attempts == [timedelta(seconds=3)] * 2


def test_the_connection_string_options_never_reach_an_error_message(monkeypatch):
    def open_cluster(connstr, username, password, timeout):
        raise UnAmbiguousTimeoutException("down")

    monkeypatch.setattr(cb, "_open_cluster", open_cluster)
    monkeypatch.setattr(cb, "_failed_at", {})
    config = {**CONFIG, "COUCHBASE_CONNSTR": "couchbases://db.internal?truststorepath=/secret/ca"}
    with pytest.raises(TemporaryFailure) as caught:
        cb.CouchbaseStore.from_config(config, prefix="").get_multi(["k"])
    assert "couchbases://db.internal" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_cluster_and_never_touches_the_parents(opened):
    store = cb.CouchbaseStore.from_config(CONFIG, prefix="")
    store.insert("k", "parent")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            store.insert("child", 1)
            report = {
                "clusters": len(opened),
                "abandoned": len(cb._abandoned),
                "child_wrote_to_its_own": "child" in opened[-1].collection_obj.docs,
            }
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    # The child opened a second cluster (its own fake, empty) and parked the inherited one.
    assert report == {"clusters": 2, "abandoned": 1, "child_wrote_to_its_own": True}
    assert len(opened) == 1 and "child" not in opened[0].collection_obj.docs
