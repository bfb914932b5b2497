"""Email notifications through an outbox in the docstore (issue 16).

Queueing (`queue`, called by the money flows' callers and the worker, never inside a lock
protocol's steps: only once the step's commit point is taken):

  1. if `notice::<kind>::<ref>` exists, stop: the notice is already queued (a retried pass or a
     recovery roll-forward queues nothing twice);
  2. counter `noticedir`, insert `noticedir::<g>` = {key, at} (directory before document);
  3. insert `notice::<kind>::<ref>` state `pending`: insert-if-absent, so of two racing queuers
     one wins and the other takes the "already queued" path.

Queueing reads no user (money code runs it, and the ORM is not the docstore): the sender checks
the user before each send, and a notice for a user without a VERIFIED address, or who turned its
kind off, is `dropped` unsent.

Sending (`send_pending`, the `notices` worker task; never on a request):

  1. claim: CAS `pending -> sending{claim}` (attempts + 1); the user is checked again here (an
     address removed or unconfirmed since, or the kind turned off: `dropped`);
  2. `send_mail` through the configured backend (EMAIL_URL, with EMAIL_TIMEOUT);
  3. CAS `sending -> sent` (the notice's commit point). A send that raised goes back to
     `pending` with a later `retryAt` (capped backoff), or to `failed` after MAX_ATTEMPTS.

A crash between 2 and 3 leaves `sending`: after SEND_LEASE_SECONDS the next pass sends it once
more (`resent`); a notice found stale in `sending` a second time is `abandoned`. So a crash can
repeat a message at most once, and every notice is sent at most twice, whatever crashes.

The sender walks the directory from `noticecursor` (O(work), never a scan), at most WINDOW
entries and SEND_BUDGET_SECONDS a pass, and moves the cursor past the finished prefix.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.mail import send_mail

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

from . import outbox
from .money import format_btc

log = logging.getLogger(__name__)

# kind -> label on the settings page. ad_approved/ad_rejected are queued by the ad review
# (adspace), which calls `queue` once it has taken its commit point.
KINDS: dict[str, str] = {
    "deposit_credited": "A deposit was credited to my balance",
    "withdrawal_sent": "A withdrawal was sent (with its transaction id)",
    "ad_approved": "A seller approved my ad",
    "ad_rejected": "A seller rejected my ad (and I was refunded)",
    "slot_starting": "My ad is about to start",
}

NOTICEDIR = "noticedir"
CURSOR_KEY = "noticecursor"
PENDING, SENDING, SENT = "pending", "sending", "sent"
DROPPED, FAILED, ABANDONED = "dropped", "failed", "abandoned"
FINISHED = frozenset({SENT, DROPPED, FAILED, ABANDONED})

WINDOW = 500  # directory entries a pass looks at past the cursor
MAX_SENDS_PER_PASS = 50
SEND_BUDGET_SECONDS = 5.0  # the worker's money tasks wait at most this long (plus one send)
SEND_LEASE_SECONDS = 120  # a claim older than this was interrupted (above EMAIL_TIMEOUT)
MAX_ATTEMPTS = 5
RETRY_SECONDS = (60, 300, 900, 3600)
# A directory entry whose notice never appeared (its queuer died) is passed after this.
DANGLING_GRACE_SECONDS = 3600
MAX_CAS_ATTEMPTS = 20


def notice_key(kind: str, ref: str) -> str:
    return f"notice::{kind}::{ref}"


def noticedir_key(g: int) -> str:
    return f"noticedir::{g}"


# --- who gets what ---------------------------------------------------------------------------


def _recipient(username: str, kind: str) -> str | None:
    """The verified address `kind` goes to, or None (no such user, none verified, turned off)."""
    from .models import User

    user = User.objects.filter(username=username, is_active=True).first()
    if user is None or not user.email or not user.email_verified:
        return None
    if kind in (user.notify_off or []):
        return None
    return user.email


def queue(store: Store, clock: Clock, username: str, kind: str, ref: str, context: dict) -> bool:
    """Queue one notice, idempotent by (kind, ref). True if this call queued it.

    For the ad review: `queue(store, clock, buyer, "ad_rejected", slot key, {"campaign":
    "<owner>/<n>", "slot": k, "reason": text})` (or "ad_approved" without a reason), called
    after the review's commit point. Whether the user gets it is decided when it is sent.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    key = notice_key(kind, ref)
    try:
        store.get(key)
        return False
    except NotFound:
        pass
    now = clock.now()
    g = store.counter(NOTICEDIR, 1, initial=0)
    store.insert(noticedir_key(g), {"key": key, "at": now})
    notice = {
        "username": username, "kind": kind, "ref": ref, "context": context, "state": PENDING,
        "createdAt": now, "attempts": 0, "retryAt": 0, "history": [],
    }  # fmt: skip
    try:
        store.insert(key, notice)
    except AlreadyExists:
        return False
    except Ambiguous:
        try:
            return store.get(key).value["createdAt"] == now  # ours, or a rival's: queued
        except NotFound:
            return False  # not written: the caller's next pass queues it again
    return True


# --- the message -----------------------------------------------------------------------------


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def render(notice: dict) -> tuple[str, str]:
    """(subject, body) of a notice."""
    c, site, who = notice["context"], settings.SITE_NAME, notice["username"]
    kind = notice["kind"]
    if kind == "deposit_credited":
        n = len(c["outpoints"])
        subject = f"{format_btc(c['sats'])} BTC credited to your balance"
        what = "a payment" if n == 1 else f"{n} payments"
        lines = "\n".join(f"  {op}" for op in c["outpoints"])
        text = (
            f"We credited {format_btc(c['sats'])} BTC to your balance: {what} to your deposit "
            f"address {c['address']}:\n{lines}"
        )
    elif kind == "withdrawal_sent":
        subject = f"Your withdrawal of {format_btc(c['amount'])} BTC was sent"
        text = (
            f"We sent {format_btc(c['amount'])} BTC to {c['address']}.\nTransaction id: {c['txid']}"
        )
    elif kind == "slot_starting":
        subject = f"Your ad on {c['campaign']} starts at {_when(c['startsAt'])}"
        text = (
            f"The ad you bought for slot {c['slot']} of {c['campaign']} goes live at "
            f"{_when(c['startsAt'])} and runs until {_when(c['endsAt'])}."
        )
    elif kind == "ad_approved":
        subject = f"Your ad on {c['campaign']} was approved"
        text = f"The seller approved your ad for slot {c['slot']} of {c['campaign']}."
    else:  # ad_rejected
        subject = f"Your ad on {c['campaign']} was rejected"
        text = (
            f"The seller rejected your ad for slot {c['slot']} of {c['campaign']}"
            f"{': ' + c['reason'] if c.get('reason') else ''}. The price was refunded to your "
            f"balance."
        )
    body = (
        f"Hello {who},\n\n{text}\n\nTo stop these emails, turn them off on your account's "
        f"Security tab at {settings.SITE_URL}.\n\n{site}\n"
    )
    return f"{subject} ({site})", body


# --- sending ---------------------------------------------------------------------------------


def _update(
    store: Store,
    key: str,
    doc: Doc,
    change: Callable[[dict], dict | None],
    landed: Callable[[dict], bool],
) -> Doc | None:
    """CAS `change(value)` onto the notice; None if `change` refuses the state it finds. A write
    reported as failed is re-read: `landed` tells whether it was ours."""
    for _ in range(MAX_CAS_ATTEMPTS):
        new = change(doc.value)
        if new is None:
            return doc if landed(doc.value) else None
        try:
            cas = store.replace(key, new, doc.cas)
            return Doc(new, cas)
        except CasMismatch:
            pass
        except Ambiguous:
            pass
        doc = store.get(key)
    return None


def _history(n: dict, state: str, now: int, **more: Any) -> list:
    # Bounded: a notice changes state at most ~2 * MAX_ATTEMPTS times.
    return [*n.get("history", []), {"at": now, "state": state, **more}][-20:]


def _send_one(store: Store, clock: Clock, key: str, doc: Doc, send: Callable) -> str:
    """Drive one notice as far as it goes now. Returns what happened (a counter name)."""
    now = clock.now()
    n = doc.value
    if n["state"] == SENDING:
        claim_at = (n.get("claim") or {}).get("at", 0)
        if now - claim_at < SEND_LEASE_SECONDS:
            return "busy"  # a rival is sending it right now
        if n.get("resent"):
            old = n["claim"]["id"]
            done = _update(
                store, key, doc,
                lambda v: {**v, "state": ABANDONED, "history": _history(v, ABANDONED, now)}
                if v["state"] == SENDING and v["claim"]["id"] == old else None,
                lambda v: v["state"] == ABANDONED,
            )  # fmt: skip
            log.error("notice %s interrupted twice while sending; given up", key)
            return "abandoned" if done else "skipped"
    elif n["state"] != PENDING or n.get("retryAt", 0) > now:
        return "waiting" if n["state"] == PENDING else "skipped"
    email = _recipient(n["username"], n["kind"])
    state = n["state"]
    if email is None:
        done = _update(
            store, key, doc,
            lambda v: {**v, "state": DROPPED, "history": _history(v, DROPPED, now)}
            if v["state"] == state else None,
            lambda v: v["state"] == DROPPED,
        )  # fmt: skip
        return "dropped" if done else "skipped"
    claim = {"id": uuid.uuid4().hex, "at": now}
    resent = state == SENDING  # interrupted once: send one more time, at most

    def take(v: dict) -> dict | None:
        if v["state"] != state or (resent and v.get("claim") != n.get("claim")):
            return None
        return {
            **v, "state": SENDING, "claim": claim, "attempts": v["attempts"] + 1,
            "resent": v.get("resent", False) or resent,
            "history": _history(v, SENDING, now),
        }  # fmt: skip

    claimed = _update(store, key, doc, take, lambda v: v.get("claim") == claim)
    if claimed is None:
        return "skipped"
    subject, body = render(n)
    try:
        send(subject, body, None, [email])
    except Exception as exc:  # any backend failure (SMTP refused, timeout...): retry later
        attempts = claimed.value["attempts"]
        final = attempts >= MAX_ATTEMPTS
        error = f"{type(exc).__name__}: {exc}"[:300]
        delay = RETRY_SECONDS[min(attempts, len(RETRY_SECONDS)) - 1]
        log.warning("notice %s: sending failed (attempt %d): %s", key, attempts, error)

        def back(v: dict) -> dict | None:
            if v.get("claim") != claim or v["state"] != SENDING:
                return None
            nxt = FAILED if final else PENDING
            return {
                **v, "state": nxt, "error": error, "retryAt": now + delay,
                "history": _history(v, nxt, now, error=error),
            }  # fmt: skip

        _update(store, key, claimed, back, lambda v: v.get("error") == error)
        return "failed" if final else "retry"

    def mark(v: dict) -> dict | None:
        if v.get("claim") != claim or v["state"] != SENDING:
            return None
        return {**v, "state": SENT, "sentAt": now, "history": _history(v, SENT, now)}

    _update(store, key, claimed, mark, lambda v: v["state"] == SENT and v.get("claim") == claim)
    log.info("notice sent user=%s kind=%s ref=%s", n["username"], n["kind"], n["ref"])
    return "sent"


def send_pending(
    store: Store, clock: Clock, send: Callable | None = None, monotonic=time.monotonic
) -> dict[str, int]:
    """One sender pass: send what is due from the cursor on, then move the cursor."""
    send = send or (lambda s, b, f, to: send_mail(s, b, f, to, fail_silently=False))
    return outbox.run_pass(
        store,
        clock,
        directory=NOTICEDIR,
        entry_key=noticedir_key,
        cursor_key=CURSOR_KEY,
        finished=FINISHED,
        handle=lambda key, doc: _send_one(store, clock, key, doc, send),
        sending_outcomes=frozenset({"sent", "retry", "failed"}),
        finishing_outcomes=frozenset({"sent", "dropped", "failed", "abandoned"}),
        window=WINDOW,
        max_sends=MAX_SENDS_PER_PASS,
        budget_seconds=SEND_BUDGET_SECONDS,
        grace_seconds=DANGLING_GRACE_SECONDS,
        monotonic=monotonic,
    )


def run_sender(store: Store, clock: Clock) -> dict[str, int]:
    """The `notices` worker task."""
    return send_pending(store, clock)
