"""HTTP as a simulated user speaks it (one cookie jar each), and reading what the pages say."""

from __future__ import annotations

import html
import http.client
import io
import random
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from .common import HTTP_TIMEOUT, Stats, parse_sats


class _Refused(Exception):
    """The node refused the connection: the request never reached it (safe to send elsewhere)."""


class Lost(Exception):
    """The answer never came: the connection was reset (a killed worker) or timed out."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Response:
    status: int
    location: str
    text: str

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.location).path if self.location else ""


class Client:
    """One person's browser. With several web nodes (`ports`), each request goes to one picked at
    random, as a load balancer without affinity would send it; a connection refused (that node is
    down: killed, restarting) is tried on another node, as the balancer's health check would, since
    a refused connection never reached a server. `pin` sends every request to one port."""

    def __init__(
        self,
        ports: int | list[int],
        stats: Stats,
        who: str,
        rng: random.Random | None = None,
        pin: int | None = None,
    ):
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        if not self.ports:
            raise ValueError("a client needs at least one web node's port")
        self.stats, self.who = stats, who
        self.rng = rng or random.Random(who)
        self.pin = pin
        self.cookies: dict[str, str] = {}

    @property
    def port(self) -> int:
        """The first node's port (the only one without a cluster)."""
        return self.ports[0]

    def pick(self, avoid: set[int] = frozenset()) -> int:
        """The node for the next request: the pinned one, else one at random (not in `avoid`
        while another is left)."""
        if self.pin is not None:
            return self.pin
        if len(self.ports) == 1:
            return self.ports[0]
        choices = [p for p in self.ports if p not in avoid] or self.ports
        return self.rng.choice(choices)

    def _update_cookies(self, headers: list[str]) -> None:
        for header in headers:
            jar = SimpleCookie()
            try:
                jar.load(header)
            except CookieError:
                continue
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or morsel.value == "" or "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.coded_value

    def request(
        self,
        method: str,
        path: str,
        fields: dict | list | None = None,
        files: dict[str, tuple[str, str, bytes]] | None = None,
        money: bool = False,
    ) -> Response:
        refused: set[int] = set()
        while True:
            port = self.pick(refused)
            try:
                return self._request(port, method, path, fields, files, money)
            except _Refused as exc:
                refused.add(port)
                if self.pin is not None or len(refused) >= len(self.ports):
                    self.stats.lost_answer(False)
                    raise Lost(f"{method} {path}: {exc.args[0]!r}") from None

    def _request(
        self,
        port: int,
        method: str,
        path: str,
        fields: dict | list | None,
        files: dict[str, tuple[str, str, bytes]] | None,
        money: bool,
    ) -> Response:
        headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", "User-Agent": "soak"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if method == "POST":
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            headers["Referer"] = f"http://127.0.0.1:{port}/"
            if files:
                boundary = uuid.uuid4().hex
                body = multipart(boundary, fields or {}, files)
                headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            else:
                body = urllib.parse.urlencode(fields or {}).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
        try:
            conn.connect()
        except ConnectionRefusedError as exc:
            conn.close()
            raise _Refused(exc) from None
        except TimeoutError as exc:
            conn.close()
            self.stats.lost_answer(True)
            raise Lost(f"{method} {path}: timed out ({exc})", timed_out=True) from None
        except OSError as exc:
            conn.close()
            self.stats.lost_answer(False)
            raise Lost(f"{method} {path}: {exc!r}") from None
        if money:
            self.stats.posting(1)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        except TimeoutError as exc:
            self.stats.lost_answer(True)
            raise Lost(f"{method} {path}: timed out ({exc})", timed_out=True) from None
        except (OSError, http.client.HTTPException) as exc:
            self.stats.lost_answer(False)
            raise Lost(f"{method} {path}: {exc!r}") from None
        finally:
            conn.close()
            if money:
                self.stats.posting(-1)
        self._update_cookies(resp.headers.get_all("Set-Cookie") or [])
        self.stats.status(method, path, resp.status, self.who)
        return Response(resp.status, resp.headers.get("Location") or "", text)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, fields=None, files=None, money: bool = False) -> Response:
        """A form POST; `money`: it runs a money or key-pool protocol (kills aim at those)."""
        if "csrftoken" not in self.cookies:
            self.get("/accounts/login/")
        return self.request("POST", path, fields, files, money)


def multipart(boundary: str, fields: dict, files: dict[str, tuple[str, str, bytes]]) -> bytes:
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(f"{value}\r\n".encode())
    for name, (filename, content_type, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# --- reading pages -------------------------------------------------------------------------------

MESSAGE = re.compile(r'<li class="message([^"]*)">(.*?)</li>', re.S)
HEADER_BALANCE = re.compile(r'class="who"[^>]*>[^<]*<span class="amount">(-?\d+\.\d{8})[ A-Z]*<')
ACCEPTED = re.compile(r'name="accepted_price" value="(\d+)"')
FILLER = re.compile(r'<input type="radio" name="filler" value="(\d+)"( disabled)?')
# A ledger row of the account page: time, kind, ref cell, change.
LEDGER_ROW = re.compile(
    r'<tr><td class="nowrap">([^<]+)</td>\s*<td>[^<]*</td>\s*<td>(.*?)</td>\s*'
    r'<td class="num amount (debit|credit)">([^<]*)</td>',
    re.S,
)
# The ref cell: the key as it is, or a sale's as links to its campaign and slot (accounts/views.py
# _ref_cell): a debit is the buyer's slot::, a credit the seller's tx::.
_REF_CODE = re.compile(r"<code>([^<]*)</code>")
_REF_SALE = re.compile(
    r'<a href="/ads/buy-ad-space/([A-Za-z0-9]+)/(\d+)">[^<]*</a>, <a href="[^"]*">slot #(\d+)</a>'
)
ADDRESS_H3 = re.compile(r"<h3><code>([a-z0-9]+)</code>")
CURRENT_ADDRESS = re.compile(r'data-role="deposit-address">([a-z0-9]+)<')
WITHDRAW_ROW = re.compile(r'<tr id="withdrawal-(\d+)" data-state="([a-z-]+)">')
CANCEL_FORM = re.compile(r'action="/account/withdraw/(\d+)/cancel/"')
# A row of the seller's campaign table: link "#n title", maybe a "paused" badge and the edit link.
SELL_ROW = re.compile(
    r'<a href="/ads/buy-ad-space/([A-Za-z0-9]+)/(\d+)">#\d+[^<]*</a>.*?</td>\s*'
    r'<td class="nowrap">(\d+)x(\d+) px</td>',
    re.S,
)


def messages(text: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for _, m in MESSAGE.findall(text)]


def ledger_rows(text: str) -> list[tuple[str, str, int]]:
    """The account page's ledger rows, newest first: (time, ref, change in sats)."""
    rows = []
    for at, cell, side, change in LEDGER_ROW.findall(text):
        code, sale = _REF_CODE.fullmatch(cell.strip()), _REF_SALE.fullmatch(cell.strip())
        if code:
            ref = html.unescape(code.group(1))
        elif sale:
            ref = f"{'slot' if side == 'debit' else 'tx'}::{sale.group(1)}::{sale.group(2)}::{sale.group(3)}"
        else:
            ref = f"unreadable ref cell {cell.strip()[:80]!r}"
        rows.append((at, ref, parse_sats(change)))
    return rows


def header_balance(text: str) -> int | None:
    m = HEADER_BALANCE.search(text)
    return parse_sats(m.group(1)) if m else None
