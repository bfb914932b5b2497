from __future__ import annotations

import logging
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts import locks, workers
from accounts.adjust import adjust_balance
from accounts.gateway import full_ledger, get_account
from accounts.heartbeat import last_beat


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def balance(store, username: str) -> int:
    return get_account(store, username).value["balance"]


@pytest.fixture
def alice(make_user):
    make_user("alice", balance=1000)
    return "alice"


# --- init_docstore ---


def test_init_docstore_creates_the_schema_doc_once(store):
    assert "created meta::schema" in run("init_docstore", verbosity=2)
    assert store.get("meta::schema").value == {"version": 1}
    assert "nothing to create" in run("init_docstore")
    assert store.get("meta::schema").value == {"version": 1}


def test_init_docstore_runs_what_other_apps_register(store, monkeypatch):
    def init_keysets(store, clock):
        try:
            store.insert("keyset::0", {"page": 0})
            return ["keyset::0"]
        except Exception:
            return []

    monkeypatch.setattr(workers, "_inits", [*workers._inits, init_keysets])
    assert "created keyset::0" in run("init_docstore", verbosity=2)
    assert "created keyset::0" not in run("init_docstore", verbosity=2)


def test_init_docstore_refuses_a_newer_schema(store):
    store.insert("meta::schema", {"version": 99})
    with pytest.raises(CommandError, match="version 99"):
        run("init_docstore")


def test_init_docstore_prints_one_summary_line_on_a_fresh_store(store, settings):
    settings.KEYPOOL_SETS = 1000  # the production pool: a thousand key sets
    out = run("init_docstore")
    assert out.strip().splitlines() == ["Docstore ready: 1002 documents created."]
    assert store.get("keyset::999").value == {"page": 0}


def test_init_docstore_lists_each_document_at_verbosity_2(store):
    lines = run("init_docstore", verbosity=2).splitlines()
    assert "created meta::schema" in lines and "created keyset::0" in lines
    assert lines[-1].startswith("Docstore ready:")


def test_init_docstore_is_quiet_at_verbosity_0(store):
    assert run("init_docstore", verbosity=0) == ""
    assert store.get("meta::schema").value == {"version": 1}


# --- adjust_balance ---


def test_adjust_balance_credits(alice, store, caplog):
    with caplog.at_level(logging.INFO, logger="accounts.money"):
        out = run("adjust_balance", "alice", "500", reason="goodwill")
    assert "Credited 500 sats (0.00000500 BTC) to alice" in out
    assert balance(store, "alice") == 1500
    assert full_ledger(store, "alice")[-1]["reason"] == "goodwill"
    assert [r for r in caplog.records if r.message.startswith("staff adjust by=manage.py")]


def test_adjust_balance_debits(alice, store):
    out = run("adjust_balance", "alice", "-1000", reason="chargeback")
    assert "Debited 1000 sats" in out and "balance now 0 sats" in out
    assert balance(store, "alice") == 0


def test_the_same_request_id_applies_once(alice, store):
    run("adjust_balance", "alice", "7", reason="r", request_id="req1")
    out = run("adjust_balance", "alice", "7", reason="r", request_id="req1")
    assert "already applied" in out
    assert balance(store, "alice") == 1007


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("nobody", "5"), {"reason": "r"}, "no account"),
        (("bad::name", "5"), {"reason": "r"}, "letters and digits"),
        (("alice", "5"), {"reason": "   "}, "reason is required"),
        (("alice", "-1001"), {"reason": "r"}, "below zero"),
        (("alice", "0"), {"reason": "r"}, "non-zero"),
        (("alice", "5"), {"reason": "r", "request_id": "a b"}, "request id"),
        (("alice", "1.5"), {"reason": "r"}, "invalid int"),
        (("alice", "5"), {}, "--reason"),
    ],
)
def test_adjust_balance_errors_change_nothing(alice, store, args, options, message):
    before = get_account(store, "alice").value
    with pytest.raises(CommandError, match=message):
        run("adjust_balance", *args, **options)
    assert get_account(store, "alice").value == before


def test_adjust_balance_on_a_busy_account_changes_nothing(alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    before = get_account(store, "alice").value
    with pytest.raises(CommandError, match=r"in progress.*--request-id"):
        run("adjust_balance", "alice", "5", reason="r")
    assert get_account(store, "alice").value == before


# --- recover ---


def test_recover_once_finishes_a_stale_lock(alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS)
    out = run("recover", "--once")
    assert "locks=1" in out
    account = get_account(store, "alice").value
    assert account["lock"] is None and account["balance"] == 1005
    beat = last_beat(store, "recover")
    assert beat["at"] == clock.now() and beat["locks"] == 1 and beat["passes"] == 1


def test_recover_once_leaves_a_live_lock_alone(alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS - 1)
    assert "finished nothing" in run("recover", "--once")
    assert get_account(store, "alice").value["lock"] is not None


def test_recover_once_is_quiet_at_verbosity_0(alice, store):
    assert run("recover", "--once", verbosity=0) == ""
    assert last_beat(store, "recover") is not None


# --- audit ---


def test_audit_passes_on_clean_books(alice, store, clock):
    adjust_balance(store, clock, "alice", -10, "r")
    out = run("audit")
    assert "Audit passed" in out
    assert "money: held 990 == came in 990: yes" in out
    last = store.get("audit::last").value
    assert last["ok"] is True and last["at"] == clock.now() and last["lines"]


def test_audit_fails_when_a_balance_disagrees_with_its_ledger(alice, store, clock):
    doc = get_account(store, "alice")
    store.replace("account::alice", {**doc.value, "balance": doc.value["balance"] + 1}, doc.cas)
    out = StringIO()
    with pytest.raises(CommandError, match="Audit failed"):
        call_command("audit", stdout=out)
    assert "BREACH account::alice balance 1001 != ledger sum 1000" in out.getvalue()
    last = store.get("audit::last").value
    assert last["ok"] is False
    assert any(line.startswith("BREACH") for line in last["lines"])


def test_audit_fails_on_a_lock_left_behind(alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    with pytest.raises(CommandError):
        run("audit")


# --- run_workers ---


def test_run_workers_once_writes_the_heartbeat(alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS)
    out = run("run_workers", "--once")
    assert "tasks recovery" in out and "recovery.locks=1" in out
    beat = last_beat(store, "run_workers")
    assert beat["at"] == clock.now()
    assert beat["passes"] == 1 and beat["failed"] == 0 and beat["recovery.locks"] == 1
    assert balance(store, "alice") == 1005


def test_a_failing_task_is_logged_and_the_others_still_run(
    alice, store, clock, monkeypatch, caplog
):
    def boom(store, clock):
        raise RuntimeError("walker fell over")

    # Registered first, so the recovery task after it must still run.
    monkeypatch.setattr(workers, "_tasks", {"boom": boom, **workers._tasks})
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS)
    with caplog.at_level(logging.ERROR, logger="accounts.workers"):
        out = run("run_workers", "--once")
    assert "boom.failed=1" in out
    [record] = [r for r in caplog.records if "boom" in r.message]
    assert record.exc_info and "walker fell over" in str(record.exc_info[1])
    beat = last_beat(store, "run_workers")
    assert beat["failed"] == 1 and beat["boom.failed"] == 1 and beat["recovery.locks"] == 1
    assert balance(store, "alice") == 1005
