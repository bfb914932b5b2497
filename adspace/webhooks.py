"""Seller webhooks (issue 17): signed JSON events POSTed to a seller's HTTPS URL, from an outbox.

Configuration: `hookcfg::<seller>` = {url, secret, createdAt}. The secret signs every delivery; the
page shows it once, when it is made (registration or rotation), and never again.

Queueing (`queue`, called after a money flow's commit point, never inside its steps): for a
seller with a webhook, insert `hook::<seller>::<event id>` (insert-if-absent, after its entry in
the `hookdir` directory), so a retried step or a recovery roll-forward queues nothing twice. The
event id is deterministic (`sale:<owner>:<n>:<k>`...), which is also what receivers deduplicate
on. `queue_safely` is what the money code calls: a failure is logged, never raised.

Delivery (`deliver_pending`, the `webhooks` worker task; never on a request): walk the directory
from `hookcursor`, claim an event by CAS (`pending -> sending`), POST it, then CAS to `delivered`,
or back to `pending` with a capped exponential backoff, or to `failed` once GIVE_UP_SECONDS have
passed since it was queued. A claim older than LEASE_SECONDS (a crash mid-send) is taken again:
delivery is at least once, and receivers deduplicate on `X-Adspace-Event-Id`. Each attempt is
appended to `hooklog::<seller>` (the last LOG_SIZE).

SSRF: the URL's host is resolved at delivery time and every address must be global (no loopback,
private, link-local, metadata, multicast, reserved); the connection goes to the address that was
checked (no second lookup to rebind), redirects are not followed, the timeout is short and at most
READ_LIMIT bytes of the answer are read. WEBHOOK_ALLOW_LOOPBACK lets 127.0.0.1/::1 (over http) in.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings

from accounts import outbox
from docstore import (
    AlreadyExists,
    Ambiguous,
    CasMismatch,
    Clock,
    Doc,
    DocstoreError,
    NotFound,
    Store,
)

log = logging.getLogger(__name__)

HOOKDIR = "hookdir"
CURSOR_KEY = "hookcursor"
PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"
FINISHED = frozenset({DELIVERED, FAILED})
TYPES = ("sale", "credit", "review.approved", "review.rejected", "refund", "slot.started", "test")

MAX_URL = 500
WINDOW = 500
MAX_SENDS_PER_PASS = 20
SEND_BUDGET_SECONDS = 5.0
TIMEOUT_SECONDS = 5
LEASE_SECONDS = 60
READ_LIMIT = 4096
RETRY_BASE_SECONDS = 30
RETRY_CAP_SECONDS = 3600
GIVE_UP_SECONDS = 24 * 3600
LOG_SIZE = 50
DANGLING_GRACE_SECONDS = 3600
MAX_CAS_ATTEMPTS = 20
QUEUE_TRIES = 3


class WebhookError(Exception):
    status = 400


class BadUrl(WebhookError):
    pass


class Refused(Exception):
    """The URL may not be delivered to (SSRF rules); the attempt fails and is logged."""


def config_key(seller: str) -> str:
    return f"hookcfg::{seller}"


def log_key(seller: str) -> str:
    return f"hooklog::{seller}"


def event_key(seller: str, event_id: str) -> str:
    return f"hook::{seller}::{event_id}"


def hookdir_key(g: int) -> str:
    return f"hookdir::{g}"


# --- the URL and its addresses --------------------------------------------------------------


def clean_url(text: object) -> str:
    """The URL as registered, or BadUrl: https (http only with the loopback setting), a host,
    no credentials, no fragment, no whitespace or control characters, at most MAX_URL long."""
    if not isinstance(text, str):
        raise BadUrl("Give a URL.")
    url = text.strip()
    if not url or len(url) > MAX_URL:
        raise BadUrl(f"Give a URL of at most {MAX_URL} characters.")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url) or not url.isascii():
        raise BadUrl("The URL may not contain spaces, control or non-ASCII characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUrl("That is not a valid URL.") from None
    allowed = ("https", "http") if settings.WEBHOOK_ALLOW_LOOPBACK else ("https",)
    if parts.scheme not in allowed:
        raise BadUrl("The URL must start with https://.")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadUrl("The URL needs a host name and may not contain a user name or password.")
    if parts.fragment or "@" in parts.netloc or port == 0:
        raise BadUrl("That is not a valid URL.")
    try:
        vet_address(ipaddress.ip_address(parts.hostname), parts.scheme)
    except ValueError:
        pass  # a name: checked after DNS at each delivery
    except Refused as exc:
        raise BadUrl(str(exc)) from None
    return url


def vet_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, scheme: str) -> None:
    """Raise Refused unless `ip` may receive a delivery over `scheme`."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback and settings.WEBHOOK_ALLOW_LOOPBACK:
        return
    if not ip.is_global or ip.is_multicast:
        # Covers loopback, private, link-local (and so 169.254.169.254), reserved, shared.
        raise Refused(f"{ip} is not a public address.")
    if scheme != "https":
        raise Refused("Only https URLs are delivered to.")


def resolve(host: str, port: int, scheme: str) -> list[str]:
    """Every address of `host`, each vetted; the delivery connects to the first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"cannot resolve {host}: {exc}") from None
    addresses = []
    for info in infos:
        address = info[4][0].split("%")[0]
        vet_address(ipaddress.ip_address(address), scheme)
        addresses.append(address)
    if not addresses:
        raise Refused(f"{host} has no address")
    return addresses


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, **kw):
        super().__init__(host, port, **kw)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, **kw):
        super().__init__(host, port, context=ssl.create_default_context(), **kw)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST to the URL at a vetted address; returns the status. Raises Refused or OSError."""
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    address = resolve(host, port, scheme)[0]
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, address, timeout=TIMEOUT_SECONDS)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(READ_LIMIT)  # redirects (3xx) are answers, not followed
        return response.status
    finally:
        conn.close()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# --- configuration --------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def get_config(store: Store, seller: str) -> Doc | None:
    try:
        return store.get(config_key(seller))
    except NotFound:
        return None


def set_url(store: Store, clock: Clock, seller: str, url: object) -> str | None:
    """Register or change the URL. Returns the new secret if one was made (first registration),
    else None (the secret stays)."""
    url = clean_url(url)
    for _ in range(MAX_CAS_ATTEMPTS):
        doc = get_config(store, seller)
        try:
            if doc is None:
                secret = new_secret()
                store.insert(
                    config_key(seller), {"url": url, "secret": secret, "createdAt": clock.now()}
                )
                return secret
            store.replace(config_key(seller), {**doc.value, "url": url}, doc.cas)
            return None
        except (AlreadyExists, CasMismatch, Ambiguous):
            continue
    raise DocstoreError("webhook configuration busy")


def rotate_secret(store: Store, seller: str) -> str:
    """A new secret; the old one stops signing at once. WebhookError without a URL."""
    for _ in range(MAX_CAS_ATTEMPTS):
        doc = get_config(store, seller)
        if doc is None:
            raise WebhookError("Register a URL first.")
        secret = new_secret()
        try:
            store.replace(config_key(seller), {**doc.value, "secret": secret}, doc.cas)
            return secret
        except (CasMismatch, Ambiguous):
            continue
    raise DocstoreError("webhook configuration busy")


def delivery_log(store: Store, seller: str) -> list[dict]:
    try:
        return list(reversed(store.get(log_key(seller)).value["attempts"]))
    except NotFound:
        return []


def _append_log(store: Store, seller: str, entry: dict) -> None:
    for _ in range(MAX_CAS_ATTEMPTS):
        try:
            doc = store.get(log_key(seller))
        except NotFound:
            try:
                store.insert(log_key(seller), {"attempts": [entry]})
                return
            except (AlreadyExists, Ambiguous):
                continue
        attempts = [*doc.value["attempts"], entry][-LOG_SIZE:]
        try:
            store.replace(log_key(seller), {"attempts": attempts}, doc.cas)
            return
        except (CasMismatch, Ambiguous):
            continue


# --- queueing -------------------------------------------------------------------------------


def queue(
    store: Store, clock: Clock, seller: str, kind: str, event_id: str, data: dict,
    not_before: int = 0,
) -> bool:  # fmt: skip
    """Queue one event for `seller` if it has a webhook; idempotent by event id. True if this
    call queued it. `not_before` holds its delivery until then (a slot's start)."""
    if kind not in TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    if get_config(store, seller) is None:
        return False
    key = event_key(seller, event_id)
    try:
        store.get(key)
        return False
    except NotFound:
        pass
    now = clock.now()
    g = store.counter(HOOKDIR, 1, initial=0)
    store.insert(hookdir_key(g), {"key": key, "at": now})
    event = {
        "seller": seller, "id": event_id, "type": kind, "data": data, "createdAt": now,
        "state": PENDING, "attempts": 0, "retryAt": not_before, "notBefore": not_before,
    }  # fmt: skip
    try:
        store.insert(key, event)
    except AlreadyExists:
        return False
    except Ambiguous:
        try:
            return store.get(key).value["createdAt"] == now
        except NotFound:
            raise  # not written: the caller queues it again
    return True


def queue_safely(
    store: Store, clock: Clock, seller: str, kind: str, event_id: str, data: dict,
    not_before: int = 0,
) -> None:  # fmt: skip
    """`queue` for the money code: the money step stands whatever happens here. `queue` is
    idempotent, so a failed step is retried a few times; an entry a failed try left in the
    directory is skipped by the deliverer (a dangling one, or a second one for the same key)."""
    for attempt in range(QUEUE_TRIES):
        try:
            queue(store, clock, seller, kind, event_id, data, not_before)
            return
        except DocstoreError:
            if attempt == QUEUE_TRIES - 1:
                log.warning("webhooks: could not queue %s for %s", event_id, seller, exc_info=True)


def sale_ref(owner: str, n: int, k: int) -> str:
    return f"{owner}:{n}:{k}"


def _slot_data(n: int, k: int, slot: dict) -> dict:
    return {
        "campaign": n, "slot": k, "buyer": slot["buyer"], "price": slot["price"],
        "purchasedAt": slot["purchasedAt"], "startsAt": slot["startsAt"], "endsAt": slot["endsAt"],
    }  # fmt: skip


def queue_sale(store: Store, clock: Clock, owner: str, n: int, k: int, slot: dict) -> None:
    """A sale finished (buy step 5): `sale`, and `slot.started` if the slot is live at once."""
    ref, data = sale_ref(owner, n, k), _slot_data(n, k, slot)
    queue_safely(store, clock, owner, "sale", f"sale:{ref}", data)
    if slot["startsAt"] <= slot["purchasedAt"]:
        queue_slot_started(store, clock, owner, n, k, slot)


def queue_slot_started(store: Store, clock: Clock, owner: str, n: int, k: int, slot: dict) -> None:
    """`slot.started`, held until the slot's start. A queued slot's event comes from the
    slot-start scan (adspace/notices.py) shortly before it starts, so a held event keeps the
    delivery cursor back for minutes at most, never for the days a queue of slots may span."""
    ref = sale_ref(owner, n, k)
    data = _slot_data(n, k, slot)
    queue_safely(store, clock, owner, "slot.started", f"slot.started:{ref}", data, slot["startsAt"])


def queue_test(store: Store, clock: Clock, seller: str) -> str:
    """The "send test event" button: WebhookError without a URL. Returns the event id."""
    event_id = f"test:{uuid.uuid4().hex}"
    if not queue(store, clock, seller, "test", event_id, {"message": "test event"}):
        raise WebhookError("Register a URL first.")
    return event_id


# --- delivering -----------------------------------------------------------------------------


def _update(store: Store, key: str, doc: Doc, change: Callable[[dict], dict | None]) -> Doc | None:
    for _ in range(MAX_CAS_ATTEMPTS):
        new = change(doc.value)
        if new is None:
            return None
        try:
            return Doc(new, store.replace(key, new, doc.cas))
        except (CasMismatch, Ambiguous):
            doc = store.get(key)
    return None


def backoff(attempts: int) -> int:
    return min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempts - 1))


def body_of(event: dict) -> bytes:
    payload = {
        "id": event["id"], "type": event["type"], "createdAt": event["createdAt"],
        "seller": event["seller"], "data": event["data"],
    }  # fmt: skip
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _deliver_one(store: Store, clock: Clock, key: str, doc: Doc, send: Callable) -> str:
    now = clock.now()
    e = doc.value
    if e["state"] == SENDING:
        if now - (e.get("claim") or {}).get("at", 0) < LEASE_SECONDS:
            return "busy"
    elif e["state"] != PENDING or e.get("retryAt", 0) > now:
        return "waiting"
    if now - max(e["createdAt"], e.get("notBefore", 0)) >= GIVE_UP_SECONDS and e["attempts"]:
        done = _update(
            store, key, doc,
            lambda v: {**v, "state": FAILED} if v["state"] == e["state"] else None,
        )  # fmt: skip
        return "failed" if done else "skipped"
    config = get_config(store, e["seller"])
    if config is None:  # the seller removed its webhook: nothing to deliver to
        done = _update(
            store, key, doc,
            lambda v: {**v, "state": FAILED} if v["state"] == e["state"] else None,
        )  # fmt: skip
        return "failed" if done else "skipped"
    claim = {"id": uuid.uuid4().hex, "at": now}
    state = e["state"]

    def take(v: dict) -> dict | None:
        if v["state"] != state or v.get("claim") != e.get("claim"):
            return None
        return {**v, "state": SENDING, "claim": claim, "attempts": v["attempts"] + 1}

    claimed = _update(store, key, doc, take)
    if claimed is None:
        return "skipped"
    body = body_of(e)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"{settings.SITE_NAME} webhooks",
        "X-Adspace-Event-Id": e["id"],
        "X-Adspace-Event-Type": e["type"],
        "X-Adspace-Signature": sign(config.value["secret"], now, body),
    }
    started = time.monotonic()
    status, error = None, ""
    try:
        status = send(config.value["url"], body, headers)
    except Refused as exc:
        error = f"refused: {exc}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = int((time.monotonic() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    attempts = claimed.value["attempts"]
    # Retries stop once the next one would fall past GIVE_UP_SECONDS from when it was due.
    due = max(e["createdAt"], e.get("notBefore", 0))
    give_up = not ok and now + backoff(attempts) - due >= GIVE_UP_SECONDS
    _append_log(
        store, e["seller"],
        {"at": now, "event": e["id"], "type": e["type"], "status": status, "ok": ok,
         "latencyMs": latency, "error": error[:200]},
    )  # fmt: skip

    def settle(v: dict) -> dict | None:
        if v.get("claim") != claim or v["state"] != SENDING:
            return None
        if ok:
            return {**v, "state": DELIVERED, "deliveredAt": now}
        if give_up:
            return {**v, "state": FAILED, "error": error or f"HTTP {status}"}
        return {**v, "state": PENDING, "retryAt": now + backoff(attempts),
                "error": error or f"HTTP {status}"}  # fmt: skip

    _update(store, key, claimed, settle)
    if ok:
        return "delivered"
    log.info("webhook %s to %s failed (attempt %d): %s", e["id"], e["seller"], attempts,
             error or status)  # fmt: skip
    return "failed" if give_up else "retry"


def deliver_pending(
    store: Store, clock: Clock, send: Callable | None = None, monotonic=time.monotonic
) -> dict[str, int]:
    """One delivery pass from the cursor on; then the cursor passes the finished prefix."""
    send = send or post
    return outbox.run_pass(
        store,
        clock,
        directory=HOOKDIR,
        entry_key=hookdir_key,
        cursor_key=CURSOR_KEY,
        finished=FINISHED,
        handle=lambda key, doc: _deliver_one(store, clock, key, doc, send),
        sending_outcomes=frozenset({"delivered", "retry", "failed"}),
        finishing_outcomes=frozenset({"delivered", "failed"}),
        window=WINDOW,
        max_sends=MAX_SENDS_PER_PASS,
        budget_seconds=SEND_BUDGET_SECONDS,
        grace_seconds=DANGLING_GRACE_SECONDS,
        monotonic=monotonic,
    )


def run_deliverer(store: Store, clock: Clock) -> dict[str, int]:
    """The `webhooks` worker task."""
    return deliver_pending(store, clock)
