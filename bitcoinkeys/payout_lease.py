"""The withdrawal processor's lease: one processor at a time (DESIGN.md 6.5).

`withdrawprocessor::lease` {owner, until, day, sentToday}. Taking it (insert, or CAS once
expired) is its commit point; every renewal is a CAS that fails for a processor paused past its
lease, so that one stops before it can send anything a rival may already have looked up and sent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from accounts import leases
from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, NotFound, Store

from .withdrawals import MAX_ATTEMPTS

LEASE_KEY = "withdrawprocessor::lease"
SECONDS_PER_DAY = 86400


class ProcessorBusy(Exception):
    """Another processor holds the lease: this one must not touch a single request."""


class LeaseLost(leases.LeaseLost):
    """Our lease was taken over (we were paused past it): stop before sending anything more."""


def utc_day(now: int) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")


def sent_today(store: Store, now: int) -> int:
    """What the lease counts as sent today (UTC), read without taking it."""
    try:
        held = store.get(LEASE_KEY).value
    except NotFound:
        return 0
    return int(held.get("sentToday", 0)) if held.get("day") == utc_day(now) else 0


def lease_for_health(store: Store) -> dict | None:
    """The processor's lease as /healthz shows leases: `{holder, until}`, or None."""
    try:
        held = store.get(LEASE_KEY).value
    except NotFound:
        return None
    return {"holder": held.get("owner"), "until": int(held.get("until", 0))}


class ProcessorLease:
    """`withdrawprocessor::lease` {owner, until, day, sentToday}: one processor at a time.

    Taken by insert or by CAS once expired, renewed by CAS right before every send. A processor
    that was paused past its lease finds another owner on renewal and stops (LeaseLost) before
    it can send anything a rival may already have looked up and sent.

    The same document counts what left today (UTC) for the daily cap: the renewal right before
    a send adds its amount in the same CAS, so the count cannot miss a payout, and only the
    lease holder ever writes it. A send attempt that was interrupted and made again counts
    twice: the cap errs on the side of sending less.
    """

    def __init__(self, store: Store, clock: Clock, seconds: int, owner: str | None = None):
        self.store, self.clock, self.seconds = store, clock, seconds
        self.owner = owner or uuid.uuid4().hex
        self.cas: int | None = None
        self.day = ""
        self.sent = 0

    @property
    def sent_today(self) -> int:
        return self.sent if self.day == utc_day(self.clock.now()) else 0

    def _value(self, add: int = 0) -> dict:
        now = self.clock.now()
        return {
            "owner": self.owner,
            "until": now + self.seconds,
            "day": utc_day(now),
            "sentToday": self.sent_today + add,
        }

    def _adopt(self, value: dict, cas: int) -> None:
        self.cas, self.day, self.sent = cas, value.get("day", ""), int(value.get("sentToday", 0))

    def acquire(self) -> None:
        for _ in range(MAX_ATTEMPTS):
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                value = self._value()
                try:
                    self._adopt(value, self.store.insert(LEASE_KEY, value))
                    return
                except (AlreadyExists, Ambiguous):
                    continue  # re-read: ours landed, or a rival's did
            held = doc.value
            if held.get("owner") == self.owner:
                self._adopt(held, doc.cas)
                return
            if held.get("owner") and held["until"] > self.clock.now():
                until = datetime.fromtimestamp(held["until"], tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
                raise ProcessorBusy(
                    f"Another withdrawal processor is running (lease {held['owner']} until "
                    f"{until} UTC); nothing was done. Try again when it has finished."
                )
            self._adopt(held, doc.cas)  # keep today's count across processors
            value = self._value()
            try:
                self._adopt(value, self.store.replace(LEASE_KEY, value, doc.cas))
                return
            except (CasMismatch, Ambiguous):
                continue
        raise ProcessorBusy("Could not take the withdrawal processor lease; try again.")

    def renew(self, add: int = 0) -> None:
        """Extend the lease; with `add`, count a payout about to leave in today's total."""
        value = self._value(add)
        for _ in range(MAX_ATTEMPTS):
            try:
                self._adopt(value, self.store.replace(LEASE_KEY, value, self.cas))
                return
            except (CasMismatch, Ambiguous):
                pass
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                raise LeaseLost("the processor lease disappeared") from None
            if doc.value == value:
                self._adopt(value, doc.cas)  # our ambiguous write did land
                return
            if doc.value.get("owner") != self.owner:
                # Even an expired lease is still ours while nobody took it: no rival has acted.
                raise LeaseLost("another processor took over the lease")
            self.cas = doc.cas
        raise LeaseLost("could not renew the processor lease")

    def ensure(self, need: int) -> None:
        """Right before each wallet call (the chain is wrapped by `leases.fenced`): the lease must
        still be ours with `need` seconds left, renewed first if fewer; else LeaseLost."""
        try:
            doc = self.store.get(LEASE_KEY)
        except NotFound:
            raise LeaseLost("the processor lease disappeared") from None
        if doc.value.get("owner") != self.owner:
            raise LeaseLost("another processor took over the lease")
        self._adopt(doc.value, doc.cas)
        if int(doc.value.get("until", 0)) - self.clock.now() < need:
            self.renew()

    def release(self) -> None:
        value = {
            "owner": None,
            "until": 0,
            "last": self.owner,
            "day": self.day,
            "sentToday": self.sent,
        }
        for _ in range(MAX_ATTEMPTS):
            try:
                self.store.replace(LEASE_KEY, value, self.cas)
                return
            except (CasMismatch, Ambiguous):
                pass
            try:
                doc = self.store.get(LEASE_KEY)
            except NotFound:
                return
            if doc.value.get("owner") != self.owner:
                return  # released (our ambiguous write landed) or taken over
            self.cas = doc.cas
