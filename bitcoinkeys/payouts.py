"""The payout processor (DESIGN.md 6.5): one pass pays the queue in one transaction (`sendmany`).

One processor at a time (payout_lease). A pass, in the order requests were received:

  1. refunds every `failed` request (withdrawals.refund_failed: the refund's commit point)
  2. looks up every batch a crash left `sending`: the payout wallet is asked for a transaction
     carrying the batch's comment (`find_sent`). Found: every request of the batch becomes
     `sent{txid}`. Not found: nothing left, and those requests are paid again below (or go
     back to `queued` when the wallet cannot pay them now).
  3. picks what to pay: those requests, then the queued ones, within the daily cap and within
     what the payout wallet holds (its trusted balance minus PAYOUT_FEE_RESERVE_SATS for the
     network fee), oldest first, stopping at the first that does not fit. What does not fit stays
     `queued` (never failed for want of funds) and the short-wallet alert goes up (one log line,
     the admin dashboard, /healthz); it goes out on the first pass after the wallet is funded.
  4. claims each request for a new batch `payoutbatch::<id>`: CAS `queued -> sending` (or a new
     attempt on a request found not sent) with attempt.batch = the batch key. From here on any
     pass looks the batch up in the wallet before paying any of its requests again.
  5. writes `payoutbatch::<id>` {state sending, requests, outputs, total}, renews the lease
     (counting the total against today's cap), then `sendmany(outputs, comment=batch key)`:
     THE COMMIT POINT is the wallet accepting that transaction; the money has left.
  6. records it: the batch `sent{txid}`, then every request `sent{txid}`. A crash in between is
     step 2 of the next pass: the wallet finds the batch and every request is recorded sent.

What the wallet answers to a batch it did not take:
  - insufficient funds (-6): nothing was sent. The requests go back to `queued` and the alert is
    raised; the next pass tries again.
  - another refusal (an address it will not pay...): nothing was sent. A batch of several is
    split, each request tried alone, so only the one the wallet refuses is failed and refunded.
  - no answer, an odd answer, or "not ready": the outcome is unknown. The requests stay `sending`
    and the pass stops; the next pass looks the batch up before anything is sent again.

When every request is queued and the wallet cannot pay even the oldest, the pass takes no lease
and writes nothing but the alert (when its numbers change): a timer may run it every minute.

Requests left `sending` by the earlier one-at-a-time processor carry no batch; their comment was
their own key, and they are looked up by it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.conf import settings

from accounts.leases import LEASE_MARGIN_SECONDS, fenced
from docstore import Clock, Doc, Store

from . import node_alerts, notices
from .chain import NOT_READY_CODES, RPC_WALLET_INSUFFICIENT_FUNDS, ChainError, ChainUnavailable
from .payout_batches import (
    BATCH_ABANDONED,
    BATCH_PREFIX,
    BATCH_REFUSED,
    BATCH_SENT,
    batch_of,
    batch_outputs,
    mark_batch,
    write_batch,
)
from .payout_lease import LeaseLost, ProcessorBusy, ProcessorLease, sent_today
from .payout_plan import (
    Calculation,
    Line,
    ProcessReport,
    calculate,
    cap_note,
    fee_reserve,
    make_line,
    short_note,
)
from .withdraw_queue import Row, advance_cursor, scan
from .withdrawals import (
    FAILED,
    FAILED_REFUNDED,
    QUEUED,
    SENDING,
    SENT,
    TERMINAL,
    _update_request,
    refund_failed,
)

log = logging.getLogger("bitcoinkeys.payouts")

JSONRPC_RESERVED = -32000  # -32768..-32000: the JSON-RPC protocol's own error codes

# Re-exported: the command and the tests use the processor through this module.
__all__ = [
    "BATCH_PREFIX",
    "Calculation",
    "LeaseLost",
    "Line",
    "ProcessReport",
    "ProcessorBusy",
    "ProcessorLease",
    "batch_outputs",
    "calculate",
    "process",
]


class NoPayoutWallet(Exception):
    """The chain backend cannot send (CHAIN_BACKEND=none): refuse before touching a request."""


class NodeNotReady(Exception):
    """The node cannot be paid from as configured (wrong password, warming up, another network,
    no payout wallet, unreachable): refuse before touching a request."""


def is_refusal(exc: BaseException) -> bool:
    """True only for a wallet that answered "no" (an RPC error object: insufficient funds,
    invalid address...), which proves nothing was sent. ChainUnavailable is a ChainError too, and
    a ChainError without a code (a garbled answer, a reply that is not a txid) may follow a send
    that went out: treating those as refusals could pay a user twice, so they leave the batch
    `sending`."""
    return (
        isinstance(exc, ChainError)
        and not isinstance(exc, ChainUnavailable)
        and getattr(exc, "code", None) is not None
        and exc.code not in NOT_READY_CODES
        # JSON-RPC's own errors (method not found, parse error...) say nothing about this
        # payment: treated as an odd answer, never as a refusal to refund.
        and exc.code > JSONRPC_RESERVED
    )


def is_short(exc: BaseException) -> bool:
    return is_refusal(exc) and exc.code == RPC_WALLET_INSUFFICIENT_FUNDS


# --- the pass ------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def process(
    store: Store,
    clock: Clock,
    chain,
    daily_cap: int | None = None,
    *,
    lease_seconds: int | None = None,
    on_line: Callable[[Line], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    owner: str | None = None,
) -> ProcessReport:
    """One processor pass over every queued, sending and failed request (module docstring).

    Raises ProcessorBusy when another processor holds the lease, NoPayoutWallet when `chain`
    cannot send, NodeNotReady when the node fails its check (then an admin alert is up). A pass
    with nothing to do takes no lease and writes nothing but the removal of a stale short-wallet
    alert, so an idle processor run every minute costs reads only.
    """
    if not getattr(chain, "available", True):
        raise NoPayoutWallet(
            "No bitcoin node is configured (CHAIN_BACKEND=none), so nothing can be sent; set "
            "CHAIN_BACKEND=bitcoind and BITCOIND_URL first."
        )
    report = ProcessReport()
    read = scan(store, clock)
    work = read.in_state(QUEUED, SENDING, FAILED)
    if not work:
        node_alerts.clear_short(store)
        # Sent requests the cursor never passed (a crash after their `sent` CAS): their notices.
        notices.queue_withdrawals_sent(store, clock, [r.key for r in read.in_state(SENT)])
        return report
    check = getattr(chain, "check_node", None)
    if check is not None:
        try:
            check((chain.payout_wallet,))
        except ChainError as exc:
            node_alerts.raise_alert(store, clock, "withdrawals", exc)
            raise NodeNotReady(
                f"The bitcoin node cannot be paid from: {exc} Nothing was sent; every request "
                f"stays as it was."
            ) from exc
        node_alerts.clear_alert(store, "withdrawals")
    if _nothing_fits(store, clock, chain, daily_cap, work, report, on_line):
        return report
    # Renewed before every wallet call that may send, so it only has to outlive one call; a
    # killed processor blocks the next one for at most this long.
    lease_seconds = lease_seconds or settings.WITHDRAW_PROCESSOR_LEASE_SECONDS
    lease = ProcessorLease(store, clock, lease_seconds, owner)
    lease.acquire()
    try:
        # Every wallet call under the lease first checks it is still ours for the call's timeout.
        need = settings.BITCOIND_TIMEOUT + LEASE_MARGIN_SECONDS
        fenced_chain = fenced(chain, lease.ensure, need)
        pass_ = _Pass(store, clock, fenced_chain, daily_cap, lease, report, on_line, should_stop)
        try:
            pass_.run(work)
        except _Stop as exc:
            report.stopped = str(exc)
        except LeaseLost as exc:
            report.stopped = f"Stopped: {exc}; the other processor carries on."
        if pass_.waiting:
            report.notes.append(cap_note(daily_cap, pass_.waiting))
        if report.short:
            report.notes.append(short_note(report.short))
        finished = {ln.key for ln in report.lines if ln.state in TERMINAL}
        # Before the cursor passes them: a crash right after a `sent` CAS loses no notice.
        sent = [r.key for r in read.in_state(SENT)] + [
            ln.key for ln in report.lines if ln.state == SENT
        ]
        notices.queue_withdrawals_sent(store, clock, sent)
        advance_cursor(store, read, read.frontier(finished))
    except Exception:
        _release_quietly(lease)
        raise
    lease.release()
    return report


def _nothing_fits(store, clock, chain, daily_cap, work, report, on_line) -> bool:
    """Before the lease: True when every request is queued and the payout wallet cannot pay even
    the oldest one. Then the pass reports them waiting and keeps the alert current without taking
    the lease, so a timer running against an empty wallet every minute writes nothing."""
    if any(r.doc.value["state"] != QUEUED for r in work):
        return False
    # Lines are shown (on_line) only once this is sure to be the whole pass.
    pass_ = _Pass(store, clock, chain, daily_cap, None, report, None, None)
    used = sent_today(store, clock.now()) if daily_cap is not None else 0
    lines_before = len(report.lines)
    admitted = pass_.within_cap(work, [], sent=used)
    if not admitted:
        del report.lines[lines_before:]
        return False  # all over the cap: the pass under the lease says so
    try:
        balance = chain.payout_balance()
    except Exception:
        del report.lines[lines_before:]
        return False  # the pass under the lease reports it
    if admitted[0][1].value["amount"] + fee_reserve() <= balance:
        del report.lines[lines_before:]
        return False
    pass_.wallet_short(admitted, balance)
    if on_line is not None:
        for line in report.lines[lines_before:]:
            on_line(line)
    if pass_.waiting:
        report.notes.append(cap_note(daily_cap, pass_.waiting))
    report.notes.append(short_note(report.short))
    return True


def _release_quietly(lease: ProcessorLease) -> None:
    try:
        lease.release()
    except Exception:
        log.warning("could not release the processor lease; it expires by itself", exc_info=True)


class _Pass:
    """One pass's work under the lease. Reads from the scan and the CAS values we got back stand
    in for fresh reads; a stale one only costs a CAS retry."""

    def __init__(self, store, clock, chain, daily_cap, lease, report, on_line, should_stop):
        self.store, self.clock, self.chain = store, clock, chain
        self.daily_cap, self.lease, self.report = daily_cap, lease, report
        self.on_line, self.should_stop = on_line, should_stop
        self.waiting = 0  # over the daily cap

    def run(self, work: list[Row]) -> None:
        for row in work:
            if row.doc.value["state"] == FAILED:
                self.check_stop()
                self.refund(row.key, row.doc)
        again = self.look_up([r for r in work if r.doc.value["state"] == SENDING])
        queued = self.within_cap([r for r in work if r.doc.value["state"] == QUEUED], again)
        self.pay([(r.key, r.doc) for r in again] + queued)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise _Stop("Stopped on request; the rest waits for the next pass.")

    def emit(self, key: str, req: dict, result: str, txid: str | None = None, detail: str = ""):
        line = make_line(key, req, result, detail)
        line.txid = txid or req.get("txid")
        self.report.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def skipped(self, key: str) -> None:
        current = self.store.get(key).value
        self.emit(key, current, "skipped", detail=f"now {current['state']}; nothing to do")

    # -- step 2: batches a crash left `sending` --

    def look_up(self, rows: list[Row]) -> list[Row]:
        """Settle every interrupted batch from the wallet; returns the requests it never saw."""
        groups: dict[str, list[Row]] = {}
        for row in rows:
            groups.setdefault(batch_of(row.key, row.doc.value), []).append(row)
        again: list[Row] = []
        for batch, members in groups.items():
            self.check_stop()
            self.lease.renew()
            try:
                txid = self.chain.find_sent(batch)
            except LeaseLost:
                raise  # the fence stopped it before the call: nothing was asked
            except Exception as exc:  # ChainUnavailable, ChainError or worse: we know nothing
                for row in members:
                    self.emit(
                        row.key, row.doc.value, "sending", detail=f"could not look it up: {exc}"
                    )
                raise _Stop(
                    f"The payout wallet could not be asked whether {batch} was sent ({exc}). Its "
                    f"requests stay 'sending'; the next pass looks it up before sending anything."
                ) from exc
            if txid:
                mark_batch(self.store, self.clock, batch, BATCH_SENT, txid=txid)
                for row in members:
                    self.record_sent(row.key, batch, txid, row.doc, found=True)
            else:
                mark_batch(self.store, self.clock, batch, BATCH_ABANDONED)
                again.extend(members)
        return again

    # -- step 3: what to pay --

    def within_cap(
        self, rows: list[Row], again: list[Row], sent: int | None = None
    ) -> list[tuple[str, Doc]]:
        cap = self.daily_cap
        if cap is None:
            return [(r.key, r.doc) for r in rows]
        # Requests paid again were admitted before; they count, but never wait.
        sent = self.lease.sent_today if sent is None else sent
        used = sent + sum(r.doc.value["amount"] for r in again)
        out = []
        for row in rows:
            amount = row.doc.value["amount"]
            if self.waiting or used + amount > cap:
                # First in, first out: once one request waits for tomorrow, the later ones do too.
                self.waiting += 1
                detail = "over the daily cap; waits for the next day"
                self.emit(row.key, row.doc.value, "waiting", detail=detail)
                continue
            used += amount
            out.append((row.key, row.doc))
        return out

    def pay(self, candidates: list[tuple[str, Doc]]) -> None:
        if not candidates:
            node_alerts.clear_short(self.store)
            return
        self.check_stop()
        try:
            balance = self.chain.payout_balance()
        except LeaseLost:
            raise  # the fence stopped it before the call: nothing was asked
        except Exception as exc:
            raise _Stop(
                f"The payout wallet's balance could not be read ({exc}); nothing was sent. "
                f"Every request stays as it was."
            ) from exc
        reserve = fee_reserve()
        fits, total = [], 0
        for key, doc in candidates:
            if total + doc.value["amount"] + reserve > balance:
                break  # oldest first: a later, smaller request does not jump the queue
            fits.append((key, doc))
            total += doc.value["amount"]
        rest = candidates[len(fits) :]
        if rest:
            # The alert says what the wallet will hold once this pass's batch is out.
            self.wallet_short(rest, balance - total)
        else:
            node_alerts.clear_short(self.store)
        if fits:
            self.send_batch(fits)

    def wallet_short(self, rest: list[tuple[str, Doc]], balance: int, why: str = "") -> None:
        """What the wallet cannot pay now stays (or goes back to) `queued`; staff are told."""
        note = f"the payout wallet is short{why}; queued until it is funded"
        waiting = []
        for key, doc in rest:
            if doc.value["state"] == SENDING:  # provably not sent: found not, or refused
                doc = self.requeue(key, doc, note)
                if doc is None:
                    continue
            waiting.append((key, doc))
            self.emit(key, doc.value, "waiting", detail=note)
        before = self.report.short or {"waiting": 0, "waitingSats": 0}
        waiting_sats = before["waitingSats"] + sum(d.value["amount"] for _, d in waiting)
        alert = {
            "waiting": before["waiting"] + len(waiting),
            "waitingSats": waiting_sats,
            "balance": balance,
            "shortBy": max(1, waiting_sats + fee_reserve() - balance),
        }
        node_alerts.raise_short(self.store, self.clock, alert)
        self.report.short = alert

    # -- steps 4 to 6: one batch --

    def send_batch(self, rows: list[tuple[str, Doc]], note: str = "") -> None:
        batch = BATCH_PREFIX + uuid.uuid4().hex
        claimed = []
        for key, doc in rows:
            moved = self.claim(key, doc, batch, note)
            if moved is None:
                self.skipped(key)  # cancelled meanwhile: the CAS decided
            else:
                claimed.append((key, moved))
        if not claimed:
            return
        outputs = batch_outputs([d.value for _, d in claimed])
        total = sum(sats for _, sats in outputs)
        write_batch(
            self.store, self.clock, self.lease.owner, batch, [k for k, _ in claimed], outputs, total
        )
        # The renewal is the last docstore call before the send: a processor paused past its
        # lease stops here instead of sending what a rival may have looked up and sent. It also
        # counts the batch against today's cap, before the money can leave.
        self.lease.renew(add=total)
        try:
            txid = self.chain.send_many(outputs, batch)
        except LeaseLost:
            raise  # the fence stopped it before the call: nothing was asked
        except Exception as exc:
            self.not_taken(batch, claimed, exc)
            return
        self.report.batches.append((batch, txid, len(claimed)))
        mark_batch(self.store, self.clock, batch, BATCH_SENT, txid=txid)
        for key, doc in claimed:
            self.record_sent(key, batch, txid, doc, found=False)

    def claim(self, key: str, doc: Doc, batch: str, note: str = "") -> Doc | None:
        """CAS the request into `batch`: queued -> sending, or a new attempt on a request in
        `sending` whose previous attempt is known not to have been sent."""
        previous = doc.value.get("attempt") or {}
        expect = doc.value["state"]
        attempt = {
            "n": int(previous.get("n", 0)) + 1 if expect == SENDING else 1,
            "by": self.lease.owner,
            "at": self.clock.now(),
            "id": uuid.uuid4().hex,
            "batch": batch,
        }

        def change(r: dict) -> dict | None:
            if r["state"] != expect:
                return None
            if expect == SENDING and (r.get("attempt") or {}).get("id") != previous.get("id"):
                return None
            entry = {"at": attempt["at"], "state": SENDING, "batch": batch}
            if expect == SENDING:
                entry["note"] = note or "not in the payout wallet; sent again"
            return {**r, "state": SENDING, "attempt": attempt, "history": [*r["history"], entry]}

        landed = lambda r: (r.get("attempt") or {}).get("id") == attempt["id"]  # noqa: E731
        return _update_request(self.store, key, change, landed, doc)

    def requeue(self, key: str, doc: Doc, note: str) -> Doc | None:
        """sending -> queued for a request the wallet provably did not pay."""
        attempt_id = (doc.value.get("attempt") or {}).get("id")
        now = self.clock.now()

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING or (r.get("attempt") or {}).get("id") != attempt_id:
                return None
            entry = {"at": now, "state": QUEUED, "note": note}
            return {**r, "state": QUEUED, "attempt": None, "history": [*r["history"], entry]}

        def landed(r: dict) -> bool:
            return r["state"] == QUEUED and r["history"][-1] == {
                "at": now, "state": QUEUED, "note": note
            }  # fmt: skip

        done = _update_request(self.store, key, change, landed, doc)
        if done is None:
            self.skipped(key)
        return done

    def not_taken(self, batch: str, claimed: list[tuple[str, Doc]], exc: Exception) -> None:
        if not is_refusal(exc):
            self.unknown(batch, claimed, exc)  # raises _Stop
        error = str(exc) or type(exc).__name__
        mark_batch(self.store, self.clock, batch, BATCH_REFUSED, error=error)
        if is_short(exc):
            # Our balance check passed but the wallet wants more (a larger network fee than
            # the reserve, coins not yet spendable): nothing was sent; all of it waits.
            try:
                balance = self.chain.payout_balance()
            except LeaseLost:
                raise  # the fence stopped it before the call: nothing was asked
            except Exception:
                balance = 0
            self.wallet_short(claimed, balance, f" (the wallet said: {error})")
            return
        if len(claimed) == 1:
            key, doc = claimed[0]
            self.fail(key, doc, error)
            return
        # One request the wallet will not pay refuses the whole transaction: try each alone,
        # so only that one is failed and refunded.
        log.warning("payout batch %s refused (%s); sending its requests one by one", batch, error)
        for key, doc in claimed:
            self.check_stop()
            self.send_batch([(key, doc)], f"its batch was refused ({error}); sent alone")

    def unknown(self, batch: str, claimed: list[tuple[str, Doc]], exc: Exception) -> None:
        keys = ", ".join(k for k, _ in claimed)
        if getattr(exc, "code", None) in NOT_READY_CODES:
            # Nothing was sent, but the node is not in a state to pay: stop the whole pass.
            for key, doc in claimed:
                self.emit(key, doc.value, "sending", detail=f"the node was not ready: {exc}")
            node_alerts.raise_alert(self.store, self.clock, "withdrawals", exc)
            raise _Stop(
                f"The payout wallet was not ready while sending {batch} ({exc}); nothing was "
                f"sent. Its requests stay 'sending' and are looked up by the batch before they "
                f"are sent again."
            ) from exc
        kind = "did not answer" if isinstance(exc, ChainUnavailable) else "answered oddly"
        for key, doc in claimed:
            self.emit(key, doc.value, "sending", detail=f"outcome unknown: {exc}")
        log.error("payout batch %s (%s): wallet %s (%s); left 'sending'", batch, keys, kind, exc)
        raise _Stop(
            f"The payout wallet {kind} while sending {batch} ({exc}): it may or may not have been "
            f"sent. Its requests stay 'sending' and are NOT sent again blindly: the next pass "
            f"looks the batch up first."
        ) from exc

    # -- records --

    def record_sent(self, key: str, batch: str, txid: str, doc: Doc, found: bool) -> None:
        now = self.clock.now()

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING or batch_of(key, r) != batch:
                return None
            history = [*r["history"], {"at": now, "state": SENT, "txid": txid}]
            return {**r, "state": SENT, "txid": txid, "sentAt": now, "history": history}

        done = _update_request(
            self.store, key, change, lambda r: r["state"] == SENT and r.get("txid") == txid, doc
        )
        if done is None:
            current = self.store.get(key).value
            # A request paid twice is the one outcome this protocol exists to prevent: be loud.
            log.critical(
                "payout %s sent as %s (%s) but the request is %s", key, txid, batch, current
            )
            detail = f"sent as {txid} but the request is {current['state']}"
            self.emit(key, current, "conflict", txid, detail)
            return
        self.emit(key, done.value, "sent", txid, "found in the payout wallet" if found else "")
        notices.queue_withdrawal_sent_quietly(self.store, self.clock, key, done.value)

    def fail(self, key: str, doc: Doc, error: str) -> None:
        attempt_id = (doc.value.get("attempt") or {}).get("id")
        now = self.clock.now()

        def change(r: dict) -> dict | None:
            if r["state"] != SENDING or (r.get("attempt") or {}).get("id") != attempt_id:
                return None
            history = [*r["history"], {"at": now, "state": FAILED, "error": error}]
            return {**r, "state": FAILED, "error": error, "failedAt": now, "history": history}

        def landed(r: dict) -> bool:
            ours = (r.get("attempt") or {}).get("id") == attempt_id and r.get("error") == error
            return ours and r["state"] in (FAILED, FAILED_REFUNDED)

        failed = _update_request(self.store, key, change, landed, doc)
        if failed is None:
            self.skipped(key)
            return
        self.refund(key, failed)

    def refund(self, key: str, doc: Doc | None) -> None:
        refunded = refund_failed(self.store, self.clock, key, doc)
        if refunded is not None:
            self.emit(key, refunded, "failed", detail=f"{refunded.get('error')}; refunded")
            return
        current = self.store.get(key).value
        if current["state"] == FAILED_REFUNDED:
            self.emit(key, current, "failed", detail=f"{current.get('error')}; refunded")
        elif current["state"] == FAILED:
            detail = f"{current.get('error')}; refund pending (account busy)"
            self.emit(key, current, "failed", detail=detail)
