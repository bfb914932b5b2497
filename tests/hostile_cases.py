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
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpResponse
from django.test import Client
from PIL import Image

from docstore import Store
from docstore.faults import Hook

# --- payloads -----------------------------------------------------------------------------------

LONG = "a" * 10_001
LONG_DIGITS = "9" * 10_001
SQL = "' OR 1=1 --"
XSS = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
SVG = "<svg onload=alert(1)>"
TEMPLATE = "{{ settings.SECRET_KEY }}"
DEBUG_TAG = "{% debug %}"
CYRILLIC_SELLER = "s\u0435ller"  # the 'е' is Cyrillic
FULLWIDTH_300 = "\uff13\uff10\uff10"  # "３００"
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

    def client(self, actor: str | None, csrf: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf)
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
    data: dict | None = None,
    follow: bool = True,
    **extra: Any,
) -> Exchange:
    call = getattr(client, method.lower())
    if method.upper() == "GET":
        response = call(path, data or {}, **extra)
    elif method.upper() == "POST":
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
    data: dict[str, Value] | None = None,
    *,
    as_: str | None = "buyer",
    csrf: bool = False,
    times: int = 1,
    follow: bool = True,
    **extra: Any,
) -> Send:
    """One request (or `times` identical ones in a row, as a replay) by the actor `as_`."""

    def send(world: World) -> list[Exchange]:
        client = world.client(as_, csrf=csrf)
        url = _resolve(path, world)
        out = []
        for _ in range(times):
            form = {k: _resolve(v, world) for k, v in (data or {}).items()}
            out.append(exchange(client, method, url, form, follow=follow, **extra))
        return out

    return send


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
) -> Send:
    """The same POST from `copies` sessions of one user, started together on real threads.

    `hook` (made per send) may order the threads' docstore calls, so the race is decided by
    the schedule the case names rather than by scheduling luck.
    """

    def send(world: World) -> list[Exchange]:
        import docstore
        from docstore.faults import HookedStore

        # One session per thread (two devices of one user): each keeps its own messages cookie.
        clients = [world.client(as_) for _ in range(copies)]
        url = _resolve(path, world)
        forms = [{k: _resolve(v, world) for k, v in data.items()} for _ in clients]
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
        out = [r for r in results if r is not None]
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

    TIMEOUT = 10

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


def then(*sends: Send) -> Send:
    """Several requests in a row (a form step, then its confirmation)."""

    def send(world: World) -> list[Exchange]:
        return [ex for s in sends for ex in s(world)]

    return send


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def text(response: HttpResponse) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def all_text(exchanges: Sequence[Exchange]) -> str:
    return "\n".join(text(p) for ex in exchanges for p in ex.pages)
