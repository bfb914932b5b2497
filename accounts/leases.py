"""Role leases: work that must run on one worker node at a time (the deposit watcher).

`lease::<role>` is `{role, holder, until, since}`, times from the injected clock:
  - take: insert it, or, once `until` has passed, CAS it to us (the CAS is the takeover's commit
    point: of two nodes taking an expired lease one CAS lands, the other re-reads and sees it held);
  - renew: CAS `until` forward, once a pass (`hold`) and whenever a call needs more time than is
    left (`ensure`); a renewal that finds another holder means we were paused or cut off past our
    lease and someone took over: LeaseLost, and we stop;
  - release: CAS the holder to null on a clean stop, so a successor need not wait for expiry.

Fencing: before each external call (a bitcoind RPC) the holder calls `ensure(need)`, one read of
the lease: it must still name us and have at least `need` seconds left (the call's timeout plus
a margin), renewing first if not. A rival can only take over after `until`, so a call that started
with `need` seconds left has finished, or timed out, before anyone else may act. What this cannot
fence is a pause between that read and the call's bytes leaving (a stopped process, a long GC):
past `need` seconds the old holder's call can land beside the new holder's. For the deposit
watcher that is harmless (crediting is idempotent per outpoint); see README, Operations.

`fenced(target, lease, need)` wraps a chain backend (any object) so that each of its methods first
calls `lease.ensure(need)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from docstore import AlreadyExists, Ambiguous, CasMismatch, Clock, Doc, NotFound, Store

log = logging.getLogger(__name__)

ATTEMPTS = 20
# Beyond a call's own timeout, what the lease must still have left when the call starts: room for
# the clocks of two nodes to disagree and for the process to be slow between check and call.
LEASE_MARGIN_SECONDS = 5


class LeaseLost(Exception):
    """Another node holds the lease now: stop before the next external call."""


def lease_key(role: str) -> str:
    return f"lease::{role}"


def read_lease(store: Store, role: str) -> dict | None:
    try:
        return store.get(lease_key(role)).value
    except NotFound:
        return None


def read_leases(store: Store, roles: list[str]) -> dict[str, dict | None]:
    found = store.get_multi([lease_key(r) for r in roles])
    return {r: (found[lease_key(r)].value if lease_key(r) in found else None) for r in roles}


_external: dict[str, Callable[[Store], dict | None]] = {}


def register_external(role: str, read: Callable[[Store], dict | None]) -> None:
    """A lease kept in a document of its own shape (the withdrawal processor's), shown by
    /healthz beside the role leases: `read(store)` returns `{holder, until}` or None."""
    _external[role] = read


def external_leases(store: Store) -> dict[str, dict | None]:
    return {role: read(store) for role, read in _external.items()}


def held_by(value: dict | None, now: int) -> str | None:
    """The lease's holder while it is in force, else None."""
    if value and value.get("holder") and int(value.get("until", 0)) > now:
        return value["holder"]
    return None


class Lease:
    """This node's view of `lease::<role>`. `may_take_over(value)` may allow taking a lease before
    its expiry when its holder is known to be dead (a process of this machine that has exited)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        role: str,
        holder: str,
        seconds: int,
        *,
        may_take_over: Callable[[dict], bool] | None = None,
        extra: dict | None = None,
    ) -> None:
        if seconds <= 0:
            raise ValueError("a lease lasts at least a second")
        self.store, self.clock, self.role = store, clock, role
        self.holder, self.seconds = holder, seconds
        self.key = lease_key(role)
        self.may_take_over = may_take_over or (lambda value: False)
        self.extra = extra or {}
        self.doc: Doc | None = None  # the lease as we last wrote or read it, while ours

    @property
    def held(self) -> bool:
        return self.doc is not None

    def _value(self, since: int | None = None) -> dict:
        now = self.clock.now()
        return {
            **self.extra,
            "role": self.role,
            "holder": self.holder,
            "until": now + self.seconds,
            "since": now if since is None else since,
        }

    def hold(self) -> bool:
        """Take the lease, or renew it if ours; False while another node holds it."""
        for _ in range(ATTEMPTS):
            try:
                doc = self.store.get(self.key)
            except NotFound:
                value = self._value()
                try:
                    self.doc = Doc(value, self.store.insert(self.key, value))
                    return True
                except (AlreadyExists, Ambiguous):
                    continue  # re-read: ours landed, or a rival's did
            held = doc.value
            now = self.clock.now()
            ours = held.get("holder") == self.holder
            free = held_by(held, now) is None or self.may_take_over(held)
            if not ours and not free:
                self.doc = None
                return False
            value = self._value(since=held.get("since") if ours else None)
            try:
                self.doc = Doc(value, self.store.replace(self.key, value, doc.cas))
                return True
            except (CasMismatch, Ambiguous):
                continue  # re-read: an ambiguous write of ours compares equal below
        self.doc = None
        return False

    def ensure(self, need: int) -> None:
        """Right before an external call: the lease must still be ours with `need` seconds left
        (renewed if fewer are); raises LeaseLost otherwise."""
        if self.doc is None:
            raise LeaseLost(f"{self.role}: this node does not hold the lease")
        try:
            doc = self.store.get(self.key)
        except NotFound:
            self.doc = None
            raise LeaseLost(f"{self.role}: the lease document disappeared") from None
        if doc.value.get("holder") != self.holder:
            self.doc = None
            raise LeaseLost(f"{self.role}: {doc.value.get('holder')} took the lease over")
        self.doc = doc
        if int(doc.value["until"]) - self.clock.now() >= need:
            return
        if need > self.seconds:
            raise ValueError(f"a call needing {need} s cannot run under a {self.seconds} s lease")
        value = self._value(since=doc.value.get("since"))
        try:
            self.doc = Doc(value, self.store.replace(self.key, value, doc.cas))
            return
        except (CasMismatch, Ambiguous):
            pass
        # Whatever happened to the renewal, the next read decides: ours and long enough, or lost.
        self.doc = doc
        try:
            again = self.store.get(self.key)
        except NotFound:
            again = None
        if again is None or again.value.get("holder") != self.holder:
            self.doc = None
            raise LeaseLost(f"{self.role}: the lease was taken over while renewing it")
        self.doc = again
        if int(again.value["until"]) - self.clock.now() < need:
            raise LeaseLost(f"{self.role}: could not renew the lease before a call")

    def release(self) -> None:
        """Give the lease up (clean stop); a lease no longer ours is left alone."""
        if self.doc is None:
            return
        for _ in range(ATTEMPTS):
            try:
                doc = self.store.get(self.key)
            except NotFound:
                break
            if doc.value.get("holder") != self.holder:
                break
            value = {**doc.value, "holder": None, "until": 0, "last": self.holder}
            try:
                self.store.replace(self.key, value, doc.cas)
                break
            except (CasMismatch, Ambiguous):
                continue
        self.doc = None


def until_text(until: int) -> str:
    return datetime.fromtimestamp(until, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Fenced:
    """Every method call of the target first checks the lease (see `fenced`)."""

    def __init__(self, target: Any, guard: Callable[[], None]) -> None:
        self._target, self._guard = target, guard

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._guard()
            return attr(*args, **kwargs)

        return call


def fenced(target: Any, ensure: Callable[[int], None], need: int) -> Any:
    """`target` whose every public method first runs `ensure(need)` (a lease's `ensure`)."""
    return _Fenced(target, lambda: ensure(need))
