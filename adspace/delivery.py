"""What an ad delivered: the signed click and impression tokens, and which requests count.

Tokens. The click URL `/c/<token>` and the impression beacon `/i/<token>` name one slot:
`<owner>-<n>-<k>-<startsAt>-<expires>.<mac>`, where mac is the first 128 bits of an HMAC-SHA256
keyed from SECRET_KEY with a salt per kind (a click token is no beacon, nor the reverse), in
URL-safe base64. Nobody without the key can make one, point one at another slot, or stretch its
expiry. A token is the same for every viewer of a slot, so the embed page and the API answer
that carry it stay cacheable; it expires a while after its slot ends (CLICK_GRACE_SECONDS for
clicks, an ad clicked on a page left open; IMPRESSION_GRACE_SECONDS for beacons, a page rendered
just before the end). The click goes only to the URL stored on the slot's ad.

What is counted (adspace.stats buffers it): a GET of a valid, unexpired token whose slot exists
with the named start, has begun serving and whose ad is served (not rejected, hidden, or waiting
for the seller's approval), from a client that is
- not a known bot or tool by its User-Agent (BOT_AGENTS; an empty one included),
- not a prefetch or prerender (`Sec-Purpose`, `Purpose`, `X-Purpose` or `X-Moz` naming
  prefetch, prerender or preview),
- within its budget: STATS_IMPRESSIONS_PER_CLIENT impressions and STATS_CLICKS_PER_CLIENT clicks
  per slot and hour, per client (accounts.ratelimit.client_ip: the IP, or the IPv6 /64), kept in
  each server process's memory (no write per view; with W workers a client can be counted up to
  W times the budget, and a restart forgets it).
A bot or a prefetch gets the same answer as a person (it learns nothing) but is not counted; a
client over its budget gets 429.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

from accounts.ratelimit import client_ip
from docstore import NotFound, Store

from . import gateway, review, serving

CLICK, IMPRESSION = "c", "i"
CLICK_GRACE_SECONDS = 3600
IMPRESSION_GRACE_SECONDS = 300
# A real token is under 90 characters; anything much longer is not ours and is not parsed.
MAX_TOKEN_LENGTH = 160
_TOKEN = re.compile(
    r"([A-Za-z0-9]{1,32})-(0|[1-9][0-9]{0,9})-(0|[1-9][0-9]{0,9})-"
    r"(0|[1-9][0-9]{0,11})-(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{22})"
)
_CAMPAIGN_PREFIX = re.compile(r"([A-Za-z0-9]{1,32})-(0|[1-9][0-9]{0,9})-")

BOT_AGENTS = re.compile(
    r"bot|crawl|spider|slurp|facebookexternalhit|embedly|preview|headless|lighthouse|"
    r"curl/|wget/|python-|go-http-client|java/|okhttp|libwww|httpclient",
    re.IGNORECASE,
)
_BOT_AGENTS_LOWER = re.compile(BOT_AGENTS.pattern)
_PREFETCH = re.compile(r"prefetch|prerender|preview", re.IGNORECASE)
_PURPOSE_HEADERS = ("HTTP_SEC_PURPOSE", "HTTP_PURPOSE", "HTTP_X_PURPOSE", "HTTP_X_MOZ")

UNKNOWN = "This link does not lead to an ad (it is unknown, damaged or has expired)."
NOT_YET = "This ad is not showing yet."
NOT_SHOWN = "This ad is no longer shown."


@dataclass(frozen=True)
class SlotRef:
    owner: str
    n: int
    k: int
    starts_at: int
    expires: int


class NotCounted(Exception):
    """A token that leads nowhere: answered with `status`; `campaign` (owner, n) when known."""

    def __init__(self, status: int, message: str, campaign: tuple[str, int] | None = None):
        super().__init__(message)
        self.status, self.message, self.campaign = status, message, campaign


# --- tokens -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mac_key(kind: str, secret: str) -> bytes:
    # django.utils.crypto.salted_hmac's key derivation, done once per kind and secret rather
    # than on every click and beacon; the MAC is the same bytes.
    return hashlib.sha256(f"adspace.delivery.{kind}{secret}".encode()).digest()


def _mac(kind: str, payload: str) -> str:
    digest = hmac.digest(_mac_key(kind, settings.SECRET_KEY), payload.encode(), "sha256")
    return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")


def grace(kind: str) -> int:
    return CLICK_GRACE_SECONDS if kind == CLICK else IMPRESSION_GRACE_SECONDS


def token(kind: str, owner: str, n: int, k: int, slot: dict) -> str:
    """The token of slot k of owner/n (its doc `slot`) for `kind`: CLICK or IMPRESSION."""
    payload = f"{owner}-{n}-{k}-{slot['startsAt']}-{slot['endsAt'] + grace(kind)}"
    return f"{payload}.{_mac(kind, payload)}"


# Tokens whose MAC was checked: (kind, token, SECRET_KEY) -> SlotRef. Every viewer of a slot
# sends the same token, so its HMAC is computed once per process rather than once per view;
# only valid tokens enter (nobody can make many without the key), and expiry is still checked
# on every request.
_verified = serving.BoundedCache(4096)


def read_token(kind: str, text: str, now: int) -> SlotRef:
    """The slot a token names; NotCounted(404) unless it is well-formed, ours and unexpired."""
    key = (kind, text, settings.SECRET_KEY)
    ref = _verified.get(key)
    if ref is None:
        ref = _checked_token(kind, text)
        _verified.put(key, ref)
    if now > ref.expires:
        raise NotCounted(404, UNKNOWN, (ref.owner, ref.n))
    return ref


def _checked_token(kind: str, text: str) -> SlotRef:
    if len(text) > MAX_TOKEN_LENGTH:
        raise NotCounted(404, UNKNOWN)
    found = _TOKEN.fullmatch(text)
    if found is None:
        prefix = _CAMPAIGN_PREFIX.match(text)
        raise NotCounted(404, UNKNOWN, (prefix[1], int(prefix[2])) if prefix else None)
    owner, n, k, starts_at, expires, mac = found.groups()
    campaign = (owner, int(n))
    payload = text.rpartition(".")[0]
    if not hmac.compare_digest(mac, _mac(kind, payload)):
        raise NotCounted(404, UNKNOWN, campaign)
    return SlotRef(owner, int(n), int(k), int(starts_at), int(expires))


# --- the slot and its ad ------------------------------------------------------------------------

REVIEW_FIELDS = ("reviewMode", "reviews")
# Slots and ads are immutable once written (serving.BoundedCache): (store, key) -> document.
_documents = serving.BoundedCache(8192)


def _immutable(store: Store, key: str) -> dict:
    cache_key = (serving.store_ident(store), key)
    doc = _documents.get(cache_key)
    if doc is None:
        doc = store.get(key).value
        _documents.put(cache_key, doc)
    return doc


def served_slot(store: Store, ref: SlotRef, now: int) -> dict:
    """The slot doc a valid token names, if its ad is being served; else NotCounted."""
    campaign_ref = (ref.owner, ref.n)
    try:
        # Only what review needs: the campaign doc itself grows with its history.
        campaign = store.get_fields(gateway.campaign_key(ref.owner, ref.n), REVIEW_FIELDS).value
        slot = _immutable(store, gateway.slot_key(ref.owner, ref.n, ref.k))
    except NotFound:
        raise NotCounted(404, UNKNOWN, campaign_ref) from None
    if slot["startsAt"] != ref.starts_at:
        raise NotCounted(404, UNKNOWN, campaign_ref)  # another store's or sale's slot
    if now < slot["startsAt"] - serving.EARLY_SWITCH_SECONDS:
        raise NotCounted(404, NOT_YET, campaign_ref)
    state = review.review_state(campaign, ref.k)
    if state in ("rejected", "hidden"):
        raise NotCounted(404, NOT_SHOWN, campaign_ref)
    if (
        campaign.get("reviewMode") == "approve"
        and state != "approved"
        and now < review.window_end(slot["purchasedAt"], slot["endsAt"])
    ):
        raise NotCounted(404, NOT_YET, campaign_ref)
    return slot


def ad_url(store: Store, ref: SlotRef, slot: dict) -> str:
    """The URL stored on the slot's ad: the only place a click goes."""
    try:
        return _immutable(store, slot["filler"])["url"]
    except NotFound:
        raise NotCounted(404, UNKNOWN, (ref.owner, ref.n)) from None


# --- who counts ---------------------------------------------------------------------------------


def is_person(request: HttpRequest) -> bool:
    """False for a known bot or tool, an empty User-Agent, or a prefetch/prerender."""
    meta = request.META
    agent = meta.get("HTTP_USER_AGENT", "")
    if not agent:
        return False
    # The ASCII-only lower-cased pattern finds exactly what the case-insensitive one does in
    # ASCII text, several times faster (an IGNORECASE alternation is scanned character by
    # character); other text, where Unicode case folding differs, takes the IGNORECASE one.
    if agent.isascii():
        if _BOT_AGENTS_LOWER.search(agent.lower()):
            return False
    elif BOT_AGENTS.search(agent):
        return False
    for header in _PURPOSE_HEADERS:
        value = meta.get(header)
        if value and _PREFETCH.search(value):
            return False
    return True


class ClientBudget:
    """Per process: how many impressions and clicks of each slot each client added this hour.

    A fixed one-hour window, forgotten whole when the next begins. At MAX_CLIENTS entries a new
    client is not counted until the window turns (a flood of addresses cannot grow the memory,
    nor inflate the counts).
    """

    WINDOW = 3600
    MAX_CLIENTS = 200_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = -1
        self._pid = os.getpid()
        self._counts: dict[tuple, int] = {}

    def take(self, client: str, kind: str, ref: SlotRef, now: int) -> bool:
        limit = (
            settings.STATS_CLICKS_PER_CLIENT
            if kind == CLICK
            else settings.STATS_IMPRESSIONS_PER_CLIENT
        )
        window = now // self.WINDOW
        key = (client, kind, ref.owner, ref.n, ref.k)
        with self._lock:
            if window != self._window or self._pid != os.getpid():
                self._counts, self._window, self._pid = {}, window, os.getpid()
            used = self._counts.get(key, 0)
            if used >= limit or (used == 0 and len(self._counts) >= self.MAX_CLIENTS):
                return False
            self._counts[key] = used + 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._counts = {}


budget = ClientBudget()


def within_budget(request: HttpRequest, kind: str, ref: SlotRef, now: int) -> bool:
    return budget.take(client_ip(request), kind, ref, now)
