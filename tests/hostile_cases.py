"""Payloads and a small request language for tests/test_hostile_input.py.

A case's `send` is built here from a method, a path and the form data; it runs against a `World`
(the actors, their campaigns, ads and requests) and returns every exchange it made, each with
the page a redirect led to, so the test can check statuses, messages and escaping on all of them.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpResponse
from django.test import Client
from django.test.client import ClientHandler
from PIL import Image

import docstore
from docstore import Store
from docstore.faults import Hook, HookedStore

# --- payloads -----------------------------------------------------------------------------------

LONG = "a" * 10_001
LONG_DIGITS = "9" * 10_001
SQL = "' OR 1=1 --"
XSS = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
SVG = "<svg onload=alert(1)>"
TEMPLATE = "{{ settings.SECRET_KEY }}"
DEBUG_TAG = "{% debug %}"
CYRILLIC_SELLER = "s\u0435ller"  # "seller" with a Cyrillic small ie for the e
FULLWIDTH_300 = "\uff13\uff10\uff10"  # 300 in full-width digits
HUGE_INT = "9" * 30

# What must never reach an HTML page verbatim (escaped, it is harmless text).
RAW_MARKUP = (XSS, XSS_IMG, SVG)


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header claims width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # One row of zeros, compressed: a decoder that trusted the header would go on for gigabytes.
    body = zlib.compress(b"\0" * (1 + 3 * min(width, 4096)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


def upload(data: bytes, name: str = "ad.png", content_type: str = "image/png"):
    return SimpleUploadedFile(name, data, content_type=content_type)


# --- the world ----------------------------------------------------------------------------------


_handlers: dict[bool, ClientHandler] = {}


def _handler(enforce_csrf_checks: bool) -> ClientHandler:
    """One handler per CSRF mode for every client here: a new one loads the middleware again,
    and WhiteNoise's (serving through the finders in tests) walks every static file each time.
    Handlers keep no per-request state, so threads may share one, as under a WSGI server."""
    if enforce_csrf_checks not in _handlers:
        _handlers[enforce_csrf_checks] = ClientHandler(enforce_csrf_checks)
    return _handlers[enforce_csrf_checks]


@dataclass
class World:
    store: Store
    clock: Any
    users: dict[str, Any]
    campaign: int  # seller's unsold campaign, 300 x 250
    live_campaign: int  # seller's campaign whose slot 0 (the outsider's ad) is live
    outsider_withdrawal: int  # a queued withdrawal of the outsider's
    buyer_address: str
    keys: dict[str, str] = field(default_factory=dict)  # API keys by username
    image: str = ""  # sha256 of the one stored ad image (a PNG)

    def client(self, actor: str | None, csrf: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf)
        client.handler = _handler(csrf)
        if actor is not None:
            client.force_login(self.users[actor])
        return client


@dataclass
class Exchange:
    response: HttpResponse
    landed: HttpResponse | None = None  # the page a redirect led to, when followed

    @property
    def pages(self) -> list[HttpResponse]:
        return [r for r in (self.response, self.landed) if r is not None]


Send = Callable[[World], list[Exchange]]
Value = Any  # a form value, or a callable of the World making one (uploads are read once)


def _resolve(value: Value, world: World) -> Any:
    return value(world) if callable(value) else value


def exchange(
    client: Client,
    method: str,
    path: str,
    data: dict | str | bytes | None = None,
    follow: bool = True,
    **extra: Any,
) -> Exchange:
    call = getattr(client, method.lower())
    if method.upper() in ("GET", "POST"):
        response = call(path, data or {}, **extra)
    else:
        response = call(path, **extra)
    landed = None
    if follow and response.status_code in (301, 302, 303) and response.url.startswith("/"):
        landed = client.get(response.url)
    return Exchange(response, landed)


def request(
    method: str,
    path: str | Callable[[World], str],
    data: dict[str, Value] | str | bytes | None = None,
    *,
    as_: str | None = "buyer",
    csrf: bool = False,
    times: int = 1,
    follow: bool = True,
    form_from: str | None = None,
    **extra: Any,
) -> Send:
    """One request (or `times` identical ones in a row, as a replay) by the actor `as_`.

    With `form_from`, the page there is read first and the hidden fields of its form for this
    URL are sent too, as a browser would (a one-time token, if the form ever carries one).
    """

    def send(world: World) -> list[Exchange]:
        client = world.client(as_, csrf=csrf)
        url = _resolve(path, world)
        hidden = _hidden_fields(client, form_from, url)
        out = []
        for _ in range(times):
            if isinstance(data, str | bytes):
                form = data  # a raw body, sent with the case's own content_type
            else:
                form = {**hidden, **{k: _resolve(v, world) for k, v in (data or {}).items()}}
            out.append(exchange(client, method, url, form, follow=follow, **extra))
        return out

    return send


class _HiddenFields(HTMLParser):
    def __init__(self, action: str):
        super().__init__()
        self.action, self.inside, self.fields = action, False, {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("action") == self.action
        elif tag == "input" and self.inside and a.get("type") == "hidden":
            name = a.get("name")
            if name and name != "csrfmiddlewaretoken":
                self.fields[name] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def _hidden_fields(client: Client, page: str | None, action: str) -> dict[str, str]:
    if page is None:
        return {}
    response = client.get(page)
    assert response.status_code == 200, f"{page}: {response.status_code}"
    parser = _HiddenFields(action)
    parser.feed(response.content.decode())
    return parser.fields


def get(path, data=None, **kw) -> Send:
    return request("GET", path, data, **kw)


def post(path, data=None, **kw) -> Send:
    return request("POST", path, data, **kw)


def at_once(
    path: str | Callable[[World], str],
    data: dict[str, Value],
    *,
    as_: str = "buyer",
    copies: int = 2,
    hook: Callable[[], Hook] | None = None,
    form_from: str | None = None,
) -> Send:
    """The same POST, `copies` times at once on real threads: one session (two tabs, or a
    double click), each tab with its own cookie jar so each keeps its own messages.

    `hook` (made per send) may order the threads' docstore calls, so the race is decided by
    the schedule the case names rather than by scheduling luck. `form_from` as for `request`.
    """

    def send(world: World) -> list[Exchange]:
        first = world.client(as_)
        clients = [first]
        for _ in range(copies - 1):
            tab = Client()
            tab.handler = _handler(False)
            tab.cookies.load({name: morsel.value for name, morsel in first.cookies.items()})
            clients.append(tab)
        url = _resolve(path, world)
        hidden = _hidden_fields(first, form_from, url)
        forms = [{**hidden, **{k: _resolve(v, world) for k, v in data.items()}} for _ in clients]
        start = threading.Barrier(copies)
        if hook is not None:
            docstore.set_store(HookedStore(world.store, hook()))
        # The test's database connection (an in-memory SQLite inside the test's transaction) is
        # lent to the threads, as Django's LiveServerTestCase does, so sessions resolve there.
        conn = connections[DEFAULT_DB_ALIAS]
        conn.inc_thread_sharing()
        results: list[Exchange | None] = [None] * copies
        errors: list[BaseException] = []

        def run(i: int) -> None:
            connections[DEFAULT_DB_ALIAS] = conn
            try:
                start.wait(timeout=10)
                results[i] = Exchange(clients[i].post(url, forms[i]))
            except BaseException as exc:  # re-raised below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(copies)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
        finally:
            conn.dec_thread_sharing()
            docstore.set_store(world.store)
        if errors:
            raise errors[0]
        assert not any(t.is_alive() for t in threads), "a request never finished"
        out = [r for r in results if r is not None]
        assert len(out) == copies
        # The pages the redirects lead to, read afterwards: each carries its own message.
        for ex, client in zip(out, clients, strict=True):
            if ex.response.status_code in (301, 302, 303):
                ex.landed = client.get(ex.response.url)
        return out

    return send


Call = tuple[str, str]  # (docstore operation, key)


class Overlap(Hook):
    """Two requests in flight together: each waits at `meet` until the other got there too;
    then the second to pass waits before `hold` until the first has done `release` `times`
    times. A thread that never reaches a point is not waited for past the timeout."""

    TIMEOUT = 5

    def __init__(self, meet: Call, hold: Call, release: Call, times: int = 1):
        self.meet, self.hold, self.release, self.times = meet, hold, release, times
        self.barrier = threading.Barrier(2)
        self.released = threading.Event()
        self.local = threading.local()

    def before(self, op: str, key: str) -> None:
        local = self.local
        if (op, key) == self.meet and not hasattr(local, "role"):
            try:
                local.role = self.barrier.wait(timeout=self.TIMEOUT)
            except threading.BrokenBarrierError:
                local.role = 0
        if (op, key) == self.hold and getattr(local, "role", 0) == 1 and not hasattr(local, "held"):
            local.held = self.released.wait(timeout=self.TIMEOUT)

    def after(self, op: str, key: str) -> None:
        local = self.local
        if (op, key) == self.release and getattr(local, "role", None) == 0:
            local.done = getattr(local, "done", 0) + 1
            if local.done >= self.times:
                self.released.set()


class QuietChain:
    """A node that answers and has seen no payments, so "check now" gets as far as asking."""

    available = True
    name = "quiet"

    def payments_for(self, address: str) -> list:
        return []

    def payments_since(self, cursor: Any, confirmations: int = 1) -> tuple[list, Any]:
        return [], cursor


def with_chain(send: Send) -> Send:
    def run(world: World) -> list[Exchange]:
        from bitcoinkeys.chain import set_chain

        set_chain(QuietChain())
        try:
            return send(world)
        finally:
            set_chain(None)

    return run


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def text(response: HttpResponse) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def all_text(exchanges: Sequence[Exchange]) -> str:
    return "\n".join(text(p) for ex in exchanges for p in ex.pages)
