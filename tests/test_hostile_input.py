"""Hostile input at every form, URL and API parameter: refused with a status and a sentence,
never a 500, never evaluated, never echoed as markup, and the docstore left exactly as it was
(or, for replayed and concurrent submissions, changed exactly once).

Each case is one request (or a short sequence) against the same small world: a seller with an
unsold campaign and a campaign showing the outsider's ad, a funded buyer with one ad and a
deposit address, an outsider with ads and a queued withdrawal, and a member of staff.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.utils.html import escape

import docstore
from accounts.adjust import adjust_balance
from accounts.gateway import account_key
from accounts.money import MAX_SATS, format_btc
from adspace import buy, gateway
from adspace.images import validate_ad_image
from bitcoinkeys import withdraw_audit
from bitcoinkeys import withdrawals as w
from bitcoinkeys.gateway import withdraw_key, withdrawcount_key
from tests.hostile_cases import (
    CYRILLIC_SELLER,
    DEBUG_TAG,
    FULLWIDTH_300,
    HUGE_INT,
    LONG,
    LONG_DIGITS,
    RAW_MARKUP,
    SQL,
    SVG,
    TEMPLATE,
    XSS,
    XSS_IMG,
    Exchange,
    Overlap,
    Send,
    World,
    all_text,
    at_once,
    changed_keys,
    exchange,
    get,
    png,
    png_declaring,
    post,
    request,
    text,
    upload,
    with_chain,
)
from tests.test_deposits import addr, give_address
from tests.test_withdrawals import ADDR_A, ADDR_B, MAINNET
from tests.teststore import open_store, store_config

pytestmark = pytest.mark.django_db

M = 300_000  # the campaigns' minimum price, the default MIN_CAMPAIGN_PRICE_SATS
BUYER_FUNDS = 10_000_000
OUTSIDER_FUNDS = 5_000_000
W, H = 300, 250
REGISTER = "/accounts/register/"
LOGIN = "/accounts/login/"
SELL = "/ads/sell-ad-space/"
NEW_AD = "/account/ads/new/"
BUY = "/ads/buy-ad-space/seller/0/buy"
EDIT = "/ads/buy-ad-space/seller/0/edit"
PAUSE = "/ads/buy-ad-space/seller/0/pause"
WITHDRAW = "/account/withdraw/"
FUNDS = "/account/funds/"
API_KEY = "/account/api-key/"
API = "/api/v1/ads/seller/0/current"
ADJUST = "/admin/accounts/adjust/buyer/"
INSPECT = "/admin/accounts/inspect/"

SELLERS = "/ads/buy-ad-space/"
PASSWORD = "correct-horse-battery-9"  # tests/conftest.py's, for every user it makes
NEW_PASSWORD = "a-Long-unusual-pass-77"

NOT_FOUND = "The requested resource was not found on this server."
CSRF_FAILED = "CSRF verification failed"
BAD_USERNAME = "Usernames are 1 to 32 letters (A-Z, a-z) and digits, nothing else."
NOT_A_NUMBER = "Enter the amount in BTC using digits and at most one dot"
BAD_PRICE = "The price you accepted was missing or not a whole positive number of satoshis."
NOT_YOURS = "Choose one of your own ads."
NO_CAMPAIGN = "That campaign does not exist."
API_NO_CAMPAIGN = "There is no ad campaign at that index, or that is an invalid user."
INVALID_KEY = "Invalid API key for this seller."
BAD_LOGIN = "The username or password is incorrect."
PLAIN_TEXT = "Use plain text, without control or invisible characters."
NO_WITHDRAWAL = "There is no such withdrawal."
INCOMPLETE = "The confirmation was incomplete or altered. Nothing was changed."
ONLY_GET = "Only GET is supported."
BAD_HOURS = "Enter the slot length as a whole number of hours"
YOUR_ADDRESS = "Your deposit address is bcrt1q"
NO_SPACE = "No such ad space."
JAVASCRIPT_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)


# --- the world ----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    """The suite's store without an fsync per write (or Couchbase durability): ~200 worlds are
    built here and none is meant to survive a power cut."""
    config, prefix = store_config(tmp_path)
    s = open_store({**config, "DURABILITY": "relaxed"}, prefix)
    docstore.set_store(s)
    yield s
    docstore.set_store(None)
    s.close()


@pytest.fixture
def world(store, clock, seller, buyer, outsider, staff) -> World:
    withdraw_audit.ready_withdrawals()
    adjust_balance(store, clock, "outsider", OUTSIDER_FUNDS, "test funding")
    campaign = gateway.create_campaign(store, clock, "seller", M, 24, W, H, [])
    live = gateway.create_campaign(store, clock, "seller", M, 24, W, H, [])
    image = validate_ad_image(png(W, H), W, H)
    gateway.store_image(
        store, image.sha256, image.content_type, image.ext, image.data, image.width, image.height
    )
    gateway.create_filler(store, clock, "buyer", "main", "Shoes", "https://shoes.test/", W, H,
                          image.sha256)  # fmt: skip
    # The outsider's ads carry markup and template syntax, as the ad form allows: every page
    # that shows them must show them as text.
    hostile = f"{XSS} {TEMPLATE} {DEBUG_TAG}"
    for nickname in ("theirs", "second"):
        gateway.create_filler(store, clock, "outsider", f"{nickname} {XSS}", hostile,
                              "https://ad.test/?a=1&b=2", W, H, image.sha256)  # fmt: skip
    buy.buy_next_slot(store, clock, "outsider", "seller", live, 0, M)
    i = w.request_withdrawal(store, clock, "outsider", 3_000_000, ADDR_B)
    give_address(store, clock, "buyer", addr(1))
    assert (campaign, live) == (0, 1)  # the cases' URLs name them
    users = {"seller": seller, "buyer": buyer, "outsider": outsider, "staff": staff}
    keys = {u.username: store.get(account_key(u.username)).value["apiKey"] for u in users.values()}
    return World(store, clock, users, campaign, live, i, addr(1), keys, image.sha256)


# --- effects ------------------------------------------------------------------------------------

Effect = Callable[[World, dict, dict, list[Exchange]], None]


def balance(dump: dict, user: str) -> int:
    return dump[account_key(user)]["balance"]


def one_sale(world: World, before: dict, after: dict, exchanges: list[Exchange]) -> None:
    """Slot 0 sold once, to the buyer, at the minimum; nothing else bought or charged."""
    new = changed_keys(before, after)
    slots = [k for k in after if k.startswith("slot::seller::0::")]
    assert slots == ["slot::seller::0::0"], slots
    assert after["slot::seller::0::0"]["buyer"] == "buyer"
    assert balance(before, "buyer") - balance(after, "buyer") == M
    assert balance(after, "outsider") == balance(before, "outsider")
    assert {k.split("::")[0] for k in new} <= {"slot", "tx", "account", "campaign"}
    assert all(k.endswith(("::buyer", "seller::0", "seller::0::0")) for k in new), new
    pages = all_text(exchanges)
    assert "You bought slot #0" in pages
    assert pages.count("You bought slot") == 1


def one_withdrawal(world: World, before: dict, after: dict, exchanges: list[Exchange]) -> None:
    mine = [k for k in after if k.startswith("withdraw::buyer::")]
    assert len(mine) == 1, f"{len(mine)} withdrawals from one submission: {mine}"
    req = after[mine[0]]
    assert (req["amount"], req["address"], req["state"]) == (3_000_000, ADDR_A, w.QUEUED)
    assert balance(before, "buyer") - balance(after, "buyer") == 3_000_000 + req["fee"]


def one_refund(world: World, before: dict, after: dict, exchanges: list[Exchange]) -> None:
    key = withdraw_key("outsider", world.outsider_withdrawal)
    req = after[key]
    assert req["state"] == w.REFUNDED
    assert balance(after, "outsider") - balance(before, "outsider") == req["amount"] + req["fee"]
    refunds = [
        e for e in after[account_key("outsider")]["ledger"] if e["kind"] == "withdraw-refund"
    ]
    assert len(refunds) == 1
    assert "cancelled" in all_text(exchanges[:1])


def one_credit(world: World, before: dict, after: dict, exchanges: list[Exchange]) -> None:
    assert balance(after, "buyer") - balance(before, "buyer") == 12_345
    ledger = after[account_key("buyer")]["ledger"]
    assert [e["delta"] for e in ledger if e["kind"] == "adjust"][-1:] == [12_345]
    assert sum(1 for e in ledger if e.get("reason") == "replayed") == 1
    assert "already applied; nothing changed this time" in all_text(exchanges[-1:])


def one_account(username: str) -> Effect:
    """Registration made one user and one account document (with its directory entry)."""

    def check(world: World, before: dict, after: dict, exchanges) -> None:
        from accounts.models import User

        assert User.objects.filter(username__iexact=username).count() == 1
        new = changed_keys(before, after)
        assert account_key(username) in new
        entries = {k for k in new if k.startswith("accountdir::")}
        assert [after[k]["username"] for k in entries] == [username], new
        assert new - entries <= {account_key(username), "accountdir"}, new
        assert all_text(exchanges).count(f"Welcome, {username}.") == 1

    return check


def only_buyer_key_replaced(world: World, before: dict, after: dict, exchanges) -> None:
    assert changed_keys(before, after) == {account_key("buyer")}
    old, new = before[account_key("buyer")], after[account_key("buyer")]
    assert new["apiKey"] != old["apiKey"]
    assert {**new, "apiKey": old["apiKey"]} == old


def new_ad_under_buyer(nickname: str, hover: str) -> Effect:
    """The upload made exactly one ad, under the buyer's own keys, holding the text as typed."""

    def check(world: World, before: dict, after: dict, exchanges) -> None:
        new = changed_keys(before, after)
        assert [k for k in new if k.startswith("filler::")] == ["filler::buyer::1"], new
        owners = {k.split("::")[1] for k in new if not k.startswith("image::")}
        assert owners == {"buyer"}, new
        ad = after["filler::buyer::1"]
        assert (ad["nickname"], ad["hoverText"]) == (nickname, hover)

    return check


# --- cases --------------------------------------------------------------------------------------

WRONG_METHOD_BUG = (
    "{url} answers {verb} with 200 (the GET page) instead of 405: the view has no method check"
)


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: tuple[int, ...]  # every response of the case has one of these
    # Text the person sees (on the page a redirect leads to); several must all appear.
    says: str | tuple[str, ...] | None = None
    effect: Effect | None = None  # None: the docstore is unchanged
    bug: str | None = None

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {self.bug}")] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)


def wrong_method(id: str, verb: str, url: str, as_: str | None, bug: bool = False) -> Case:
    """A verb the URL has no use for: 405 (Django's empty answer), nothing written."""
    reason = WRONG_METHOD_BUG.format(url=url, verb=verb) if bug else None
    return Case(id, request(verb, url, as_=as_), (405,), bug=reason)


def ad_form(**overrides) -> dict:
    data = {
        "nickname": "Spring sale",
        "hover_text": "Shoes, half price",
        "url": "https://shoes.test/sale?x=1&y=2",
        "width": str(W),
        "height": str(H),
        "image": lambda w: upload(png(W, H, (10, 200, 10))),
    }
    data.update(overrides)
    return data


def sell_form(**overrides) -> dict:
    return {
        "title": "Blog",
        "site_url": "https://seller.test/",
        "min_price": "0.01",
        "slot_hours": "24",
        "width": "300",
        "height": "250",
        **overrides,
    }


def withdraw_form(**overrides) -> dict:
    return {"action": "withdraw", "amount": "0.03", "address": ADDR_A, **overrides}


def buy_form(**overrides) -> dict:
    return {"accepted_price": str(M), "filler": "0", **overrides}


def register_form(username: str = "newbie", password: str = NEW_PASSWORD) -> dict:
    return {"username": username, "password1": password, "password2": password}


def adjust_confirm(**overrides) -> dict:
    return {"step": "confirm", "request_id": "abc123", "sats": "12345", "reason": "r", **overrides}


def reviewed_then_confirmed(times: int) -> Send:
    """Staff review a credit of 12 345 sats, then submit its signed confirmation `times` times."""

    def send(world: World) -> list[Exchange]:
        client = world.client("staff")
        review = {"step": "review", "amount": format_btc(12_345), "reason": "replayed"}
        page = client.post(ADJUST, review)
        token = page.context["form"].initial["confirmation"]
        confirm = {"step": "confirm", "confirmation": token}
        return [exchange(client, "POST", ADJUST, confirm) for _ in range(times)]

    return send


def cancel_url(world: World) -> str:
    return f"/account/withdraw/{world.outsider_withdrawal}/cancel/"


def buys_overlap() -> Overlap:
    # Both priced the slot at the minimum and found it unsold, and are about to read the account
    # for their locks; the second reads it only once the first has sold (lock, then debit).
    read, cas = ("get", account_key("buyer")), ("replace", account_key("buyer"))
    return Overlap(meet=read, hold=read, release=cas, times=2)


def withdrawals_overlap() -> Overlap:
    # Both passed the balance check and drew a request number; the second reads the account for
    # its lock only once the first has settled its hold (lock, then debit: two CAS).
    account = account_key("buyer")
    meet = ("counter", withdrawcount_key("buyer"))
    return Overlap(meet=meet, hold=("get", account), release=("replace", account), times=2)


class WithKey:
    """GET of an API path with the seller's real key in the header: only the path is at fault."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, world: World) -> list[Exchange]:
        auth = f"Bearer {world.keys['seller']}"
        return [Exchange(world.client(None).get(self.path, HTTP_AUTHORIZATION=auth))]


def other_users_key(world: World) -> list[Exchange]:
    return get(API, {"key": world.keys["buyer"]}, as_=None)(world)


# Template syntax for the text fields. Evaluated, both would print nothing (the secret key is not
# in any context, and {% debug %} is silent unless DEBUG): so the cases that echo a field look
# for this text itself, which only a page that treated it as text can show.
TEXT = f"{TEMPLATE}{DEBUG_TAG}"
ANON = {"as_": None}
SELLER = {"as_": "seller"}
STAFFER = {"as_": "staff"}

# One case a line: a table reads better than the formatter's one argument a line.
# fmt: off
REGISTRATION = [
    Case("register-cyrillic-a-in-username", post(REGISTER, register_form(CYRILLIC_SELLER), **ANON), (200,), BAD_USERNAME),
    Case("register-colons-in-username", post(REGISTER, register_form("buyer::x"), **ANON), (200,), BAD_USERNAME),
    Case("register-overlong-username", post(REGISTER, register_form(LONG), **ANON), (200,), "Usernames are at most 32 characters."),
    Case("register-sql-in-username", post(REGISTER, register_form(SQL), **ANON), (200,), BAD_USERNAME),
    Case("register-markup-in-username-shown-back-escaped", post(REGISTER, register_form(XSS), **ANON), (200,), (BAD_USERNAME, escape(XSS))),
    Case("register-template-in-username", post(REGISTER, register_form(TEXT), **ANON), (200,), (BAD_USERNAME, TEXT)),
    Case("register-nul-in-username", post(REGISTER, register_form("bob\x00"), **ANON), (200,), "Null characters are not allowed."),
    Case("register-fullwidth-digits-in-username", post(REGISTER, register_form("bob\uff11\uff12"), **ANON), (200,), BAD_USERNAME),
    Case("register-existing-name-in-capitals", post(REGISTER, register_form("SELLER"), **ANON), (200,), "That username is already taken."),
    Case("register-overlong-password", post(REGISTER, register_form(password=LONG), **ANON), (200,), "Passwords are at most 4096 characters."),
    Case("register-nul-in-password", post(REGISTER, register_form(password="pass\x00word-long-1"), **ANON), (200,), "Null characters are not allowed."),
    Case("register-replayed-creates-one-account", post(REGISTER, register_form("newbie"), as_=None, times=2), (302,), "Your account is ready.", one_account("newbie")),
    wrong_method("register-patch", "PATCH", REGISTER, None),
]

LOGINS = [
    Case("login-sql-injection", post(LOGIN, {"username": SQL, "password": SQL}, **ANON), (200,), BAD_LOGIN),
    Case("login-cyrillic-lookalike-of-a-real-user", post(LOGIN, {"username": CYRILLIC_SELLER, "password": PASSWORD}, **ANON), (200,), BAD_LOGIN),
    Case("login-overlong-username", post(LOGIN, {"username": LONG, "password": LONG}, **ANON), (200,), BAD_LOGIN),
    Case("login-nul-in-username", post(LOGIN, {"username": "buyer\x00", "password": PASSWORD}, **ANON), (200,), "Null characters are not allowed."),
    Case("login-template-in-username", post(LOGIN, {"username": TEXT, "password": TEXT}, **ANON), (200,), (BAD_LOGIN, TEXT)),
    Case("login-next-javascript-url-lands-on-the-account", post(f"{LOGIN}?next=javascript:alert(1)", {"username": "buyer", "password": PASSWORD}, **ANON), (302,), "Your account"),
    Case("login-next-offsite-url-lands-on-the-account", post(f"{LOGIN}?next=//evil.test/", {"username": "buyer", "password": PASSWORD}, **ANON), (302,), "Your account"),
    wrong_method("logout-by-get", "GET", "/accounts/logout/", "buyer"),
]

SELLING = [
    Case("sell-fullwidth-digits-in-price", post(SELL, sell_form(min_price="\uff10.\uff10\uff11"), **SELLER), (400,), NOT_A_NUMBER),
    Case("sell-negative-price", post(SELL, sell_form(min_price="-1"), **SELLER), (400,), "The amount cannot be negative."),
    Case("sell-exponent-price", post(SELL, sell_form(min_price="1e3"), **SELLER), (400,), "without an exponent"),
    Case("sell-nan-price", post(SELL, sell_form(min_price="NaN"), **SELLER), (400,), "not NaN or infinity"),
    Case("sell-overlong-price", post(SELL, sell_form(min_price=LONG_DIGITS), **SELLER), (400,), "That is too long to be an amount in BTC."),
    Case("sell-template-in-price", post(SELL, sell_form(min_price=TEXT), **SELLER), (400,), (NOT_A_NUMBER, TEXT)),
    Case("sell-trailing-garbage-in-hours", post(SELL, sell_form(slot_hours="24abc"), **SELLER), (400,), BAD_HOURS),
    Case("sell-huge-hours", post(SELL, sell_form(slot_hours=HUGE_INT), **SELLER), (400,), BAD_HOURS),
    Case("sell-nul-in-hours", post(SELL, sell_form(slot_hours="24\x00"), **SELLER), (400,), BAD_HOURS),
    Case("sell-template-in-hours", post(SELL, sell_form(slot_hours=TEXT), **SELLER), (400,), (BAD_HOURS, TEXT)),
    Case("sell-sql-in-width", post(SELL, sell_form(width=SQL), **SELLER), (400,), "Ad width must be a whole number of pixels"),
    Case("sell-markup-as-category-shown-back-escaped", post(SELL, {**sell_form(), "disallowed": [XSS]}, **SELLER), (400,), ("is not one of the categories you can refuse", escape(XSS))),
    Case("sell-ten-thousand-fields", post(SELL, {**sell_form(), "disallowed": ["Porn"] * 10_000}, **SELLER), (413,), "The request is too large"),
    wrong_method("sell-delete", "DELETE", SELL, "seller"),
    Case("sell-markup-in-title-shown-back-escaped", post(SELL, sell_form(title=XSS), **SELLER), (400,), ("are not allowed", escape(XSS))),
    Case("sell-ten-thousand-character-title", post(SELL, sell_form(title=LONG), **SELLER), (400,), "Titles are at most 80 characters."),
    Case("sell-ten-thousand-character-description", post(SELL, sell_form(description=LONG), **SELLER), (400,), "Descriptions are at most 1000 characters."),
    Case("sell-markup-in-description", post(SELL, sell_form(description=XSS_IMG), **SELLER), (400,), "are not allowed"),
    Case("sell-control-character-in-title", post(SELL, sell_form(title="Blog\x07"), **SELLER), (400,), PLAIN_TEXT),
    Case("sell-javascript-site-url", post(SELL, sell_form(site_url="javascript:alert(1)"), **SELLER), (400,), "starting with http:// or https://"),
    Case("sell-credentials-in-site-url", post(SELL, sell_form(site_url="https://a:b@seller.test/"), **SELLER), (400,), "cannot contain a user name or password"),
    Case("sell-space-in-site-url", post(SELL, sell_form(site_url="https://seller.test/a b"), **SELLER), (400,), "cannot contain spaces"),
]

CAMPAIGN_OWNER = [
    Case("edit-another-sellers-campaign", post(EDIT, sell_form(title="Mine now")), (403,), "can change it; nothing was changed"),
    Case("edit-forged-campaign-index", post("/ads/buy-ad-space/seller/99/edit", sell_form(), **SELLER), (404,), NO_CAMPAIGN),
    Case("edit-non-canonical-campaign-index", post("/ads/buy-ad-space/seller/00/edit", sell_form(), **SELLER), (404,), NO_CAMPAIGN),
    Case("edit-markup-in-title", post(EDIT, sell_form(title=XSS), **SELLER), (400,), "are not allowed"),
    Case("edit-javascript-site-url", post(EDIT, sell_form(site_url="javascript:alert(1)"), **SELLER), (400,), "starting with http:// or https://"),
    Case("pause-another-sellers-campaign", post(PAUSE, {"action": "pause"}), (403,), "can change it; nothing was changed"),
    Case("pause-unknown-action", post(PAUSE, {"action": "delete"}, **SELLER), (400,), "Choose to pause or to resume"),
    wrong_method("pause-get", "GET", PAUSE, "seller"),
    Case("archive-forged-ad-index", post("/account/ads/99/archive", {"action": "archive"}), (404,), "You have no such ad."),
    Case("archive-unknown-action", post("/account/ads/0/archive", {"action": "delete"}), (400,), "Choose to archive or to restore"),
    Case("purchases-forged-cursor", get("/account/purchases/?before=-1"), (404,), "There is no such page of your purchases."),
]

NEW_ADS = [
    Case("new-ad-50mb-body", post(NEW_AD, ad_form(image=lambda w: upload(b"\0" * (50 * 1024 * 1024)))), (413,), "The upload is too large"),
    Case("new-ad-malformed-multipart-body", post(NEW_AD, b"--nope\r\ngarbage", content_type="multipart/form-data; boundary=\x00"), (400,), "Bad Request (400)"),
    Case("new-ad-path-traversal-file-name-is-only-a-name", post(NEW_AD, ad_form(image=lambda w: upload(png(W, H, (1, 2, 3)), name="../../../config/settings.py"))), (302,), "is ready to use", new_ad_under_buyer("Spring sale", "Shoes, half price")),
    Case("new-ad-truncated-png", post(NEW_AD, ad_form(image=lambda w: upload(png(W, H)[:200]))), (400,), "may be damaged"),
    Case("new-ad-html-file-named-png", post(NEW_AD, ad_form(image=lambda w: upload(f"<html><body>{XSS}</body></html>".encode()))), (400,), "HTML files are not accepted."),
    Case("new-ad-png-declaring-1.6-billion-pixels", post(NEW_AD, ad_form(image=lambda w: upload(png_declaring(40_000, 40_000)))), (400,), "The image has more pixels than an ad can have"),
    Case("new-ad-png-declaring-more-than-an-ad", post(NEW_AD, ad_form(image=lambda w: upload(png_declaring(4000, 3000)))), (400,), "more than an ad can be"),
    Case("new-ad-javascript-url", post(NEW_AD, ad_form(url="javascript:alert(1)")), (400,), "must be a full web address starting with http"),
    Case("new-ad-javascript-url-split-by-a-tab", post(NEW_AD, ad_form(url="java\tscript:alert(1)")), (400,), "cannot contain spaces or control characters"),
    Case("new-ad-markup-in-url", post(NEW_AD, ad_form(url=f"https://x.test/{XSS_IMG}")), (400,), "cannot contain spaces or control characters"),
    Case("new-ad-template-in-url", post(NEW_AD, ad_form(url=TEXT)), (400,), ("cannot contain spaces or control characters", TEXT)),
    Case("new-ad-control-chars-in-nickname", post(NEW_AD, ad_form(nickname="ad\x07\x1b[31m")), (400,), PLAIN_TEXT),
    Case("new-ad-nul-in-hover-text", post(NEW_AD, ad_form(hover_text="a\x00b")), (400,), "Null characters are not allowed."),
    Case("new-ad-bidi-override-in-nickname", post(NEW_AD, ad_form(nickname="\u202egnp.exe")), (400,), PLAIN_TEXT),
    Case("new-ad-overlong-hover-text", post(NEW_AD, ad_form(hover_text=LONG)), (400,), "Hover text is at most 512 characters."),
    Case("new-ad-overlong-nickname", post(NEW_AD, ad_form(nickname=LONG)), (400,), "Nicknames are at most 64 characters."),
    Case("new-ad-fullwidth-digits-in-width", post(NEW_AD, ad_form(width=FULLWIDTH_300)), (400,), "Width must be a whole number of pixels from 16 to 2048."),
    Case("new-ad-template-in-height", post(NEW_AD, ad_form(height=TEXT)), (400,), ("Height must be a whole number of pixels from 16 to 2048.", TEXT)),
    Case("new-ad-nickname-taken-in-capitals", post(NEW_AD, ad_form(nickname="MAIN")), (400,), "You already have an ad called"),
    Case("new-ad-ten-thousand-fields", post(NEW_AD, {**ad_form(), "x": ["1"] * 10_000}), (400,), "The form sent too many fields."),
    Case("new-ad-markup-shown-back-escaped", post(NEW_AD, ad_form(nickname=XSS, hover_text=SVG, width="301")), (400,), ("this ad must be exactly 301x250 px", escape(XSS), escape(SVG))),
    Case("new-ad-colons-in-nickname-stay-under-my-keys", post(NEW_AD, ad_form(nickname="outsider::0", hover_text="x")), (302,), "is ready to use", new_ad_under_buyer("outsider::0", "x")),
    Case("new-ad-markup-and-template-text-stored-and-shown-as-text", post(NEW_AD, ad_form(nickname=XSS, hover_text=TEXT)), (302,), ("is ready to use", escape(XSS), TEXT), new_ad_under_buyer(XSS, TEXT)),
    Case("new-ad-replayed-creates-one-ad", post(NEW_AD, ad_form(), times=2, form_from=NEW_AD), (302, 400), "You already have an ad called “Spring sale”", new_ad_under_buyer("Spring sale", "Shoes, half price")),
    wrong_method("new-ad-put", "PUT", NEW_AD, "buyer"),
]

BUYING = [
    Case("buy-accepted-price-zero", post(BUY, buy_form(accepted_price="0")), (400,), BAD_PRICE),
    Case("buy-accepted-price-negative", post(BUY, buy_form(accepted_price=f"-{M}")), (400,), BAD_PRICE),
    Case("buy-accepted-price-huge", post(BUY, buy_form(accepted_price=HUGE_INT)), (400,), BAD_PRICE),
    Case("buy-accepted-price-not-an-integer", post(BUY, buy_form(accepted_price=f"{M}.5")), (400,), BAD_PRICE),
    Case("buy-accepted-price-fullwidth-digits", post(BUY, buy_form(accepted_price=FULLWIDTH_300 + "000")), (400,), BAD_PRICE),
    Case("buy-accepted-price-template", post(BUY, buy_form(accepted_price=TEXT)), (400,), BAD_PRICE),
    Case("buy-accepted-price-missing", post(BUY, {"filler": "0"}), (400,), BAD_PRICE),
    Case("buy-accepted-price-at-the-cap-pays-only-the-price", post(BUY, buy_form(accepted_price=str(MAX_SATS))), (302,), f"for {format_btc(M)} BTC", one_sale),
    Case("buy-accepted-price-below-the-price", post(BUY, buy_form(accepted_price="1")), (302,), "more than you accepted; nothing was bought"),
    Case("buy-with-another-users-ad-index", post(BUY, buy_form(filler="1")), (400,), NOT_YOURS),
    Case("buy-with-colons-in-ad-index", post(BUY, buy_form(filler="0::outsider")), (400,), NOT_YOURS),
    Case("buy-with-negative-ad-index", post(BUY, buy_form(filler="-1")), (400,), NOT_YOURS),
    Case("buy-with-huge-ad-index", post(BUY, buy_form(filler=HUGE_INT)), (400,), NOT_YOURS),
    Case("buy-with-sql-as-ad-index", post(BUY, buy_form(filler=SQL)), (400,), NOT_YOURS),
    Case("buy-campaign-index-with-trailing-garbage", post("/ads/buy-ad-space/seller/0abc/buy", buy_form()), (404,), NO_CAMPAIGN),
    Case("buy-campaign-index-with-colons", post("/ads/buy-ad-space/seller/0::1/buy", buy_form()), (404,), NO_CAMPAIGN),
    Case("buy-campaign-index-huge", post(f"/ads/buy-ad-space/seller/{HUGE_INT}/buy", buy_form()), (404,), NO_CAMPAIGN),
    Case("buy-colons-in-seller-name", post("/ads/buy-ad-space/seller::0/0/buy", buy_form()), (404,), NO_CAMPAIGN),
    Case("buy-campaign-1-at-the-price-of-campaign-0", post("/ads/buy-ad-space/seller/1/buy", buy_form()), (302,), "more than you accepted; nothing was bought"),
    wrong_method("buy-by-get", "GET", BUY, "buyer"),
    Case("buy-without-csrf-token", post(BUY, buy_form(), csrf=True), (403,), CSRF_FAILED),
    Case("buy-replayed-applies-once", post(BUY, {"filler": "0"}, times=2, form_from="/ads/buy-ad-space/seller/0"), (302,), "more than you accepted; nothing was bought", one_sale),
    Case("buy-concurrent-applies-once", at_once(BUY, {"filler": "0"}, form_from="/ads/buy-ad-space/seller/0"), (302,), None, one_sale),
    Case("buy-concurrent-second-locks-after-the-first-sold", at_once(BUY, buy_form(), hook=buys_overlap), (302,), "Someone else just bought that slot; you were not charged.", one_sale),
]

FUNDING = [
    wrong_method("funds-get-address-by-get", "GET", f"{FUNDS}address/", "buyer"),
    wrong_method("funds-check-now-by-get", "GET", f"{FUNDS}check/", "buyer"),
    wrong_method("funds-check-now-delete", "DELETE", f"{FUNDS}check/", "buyer"),
    Case("funds-new-address-replacing-markup", post(f"{FUNDS}address/new/", {"replacing": XSS}), (302,), YOUR_ADDRESS),
    Case("funds-new-address-replacing-overlong", post(f"{FUNDS}address/new/", {"replacing": LONG}), (302,), YOUR_ADDRESS),
    Case("funds-new-address-replacing-template-with-colons", post(f"{FUNDS}address/new/", {"replacing": f"deposit::{TEXT}"}), (302,), YOUR_ADDRESS),
    Case("funds-get-address-for-a-forged-user", post(f"{FUNDS}address/", {"username": "outsider"}), (302,), YOUR_ADDRESS),
    Case("funds-check-now-twice-is-rate-limited", with_chain(post(f"{FUNDS}check/", times=2)), (302, 429), ("Nothing new yet.", "You can check at most once every 30 seconds")),
    Case("funds-check-now-without-csrf-token", post(f"{FUNDS}check/", csrf=True), (403,), CSRF_FAILED),
]

WITHDRAWING = [
    Case("withdraw-fullwidth-digits-in-amount", post(WITHDRAW, withdraw_form(amount="\uff10.\uff10\uff13")), (400,), NOT_A_NUMBER),
    Case("withdraw-negative-amount", post(WITHDRAW, withdraw_form(amount="-0.03")), (400,), "The amount cannot be negative."),
    Case("withdraw-exponent-amount", post(WITHDRAW, withdraw_form(amount="3e-2")), (400,), "without an exponent"),
    Case("withdraw-overlong-amount", post(WITHDRAW, withdraw_form(amount=LONG_DIGITS)), (400,), "That is too long to be an amount in BTC."),
    Case("withdraw-nine-decimals", post(WITHDRAW, withdraw_form(amount="0.030000001")), (400,), "at most 8 decimal places"),
    Case("withdraw-form-declared-as-utf16", post(WITHDRAW, "action=withdraw&amount=0.03&address=" + ADDR_A, content_type="application/x-www-form-urlencoded; charset=utf-16"), (400,), "Bad Request (400)"),
    Case("withdraw-4mb-form-body", post(WITHDRAW, urlencode(withdraw_form(address="a" * (4 * 1024 * 1024))), content_type="application/x-www-form-urlencoded"), (413,), "The request is too large"),
    Case("withdraw-more-than-the-balance", post(WITHDRAW, withdraw_form(amount="20999999")), (400,), "You can withdraw at most"),
    Case("withdraw-markup-as-address", post(WITHDRAW, withdraw_form(address=XSS)), (400,), "Not a bitcoin address"),
    Case("withdraw-javascript-as-address", post(WITHDRAW, withdraw_form(address="javascript:alert(1)")), (400,), "Not a bitcoin address"),
    Case("withdraw-template-as-address", post(WITHDRAW, withdraw_form(address=TEXT)), (400,), ("without spaces", TEXT)),
    Case("withdraw-sql-as-address", post(WITHDRAW, withdraw_form(address=SQL)), (400,), "without spaces"),
    Case("withdraw-mainnet-address-on-regtest", post(WITHDRAW, withdraw_form(address=MAINNET)), (400,), "this site uses regtest"),
    Case("withdraw-mixed-case-address", post(WITHDRAW, withdraw_form(address=ADDR_A[:10].upper() + ADDR_A[10:])), (400,), "Mixes upper and lower case"),
    Case("withdraw-cyrillic-lookalike-in-address", post(WITHDRAW, withdraw_form(address=ADDR_A.replace("c", "\u0441"))), (400,), "Not a bitcoin address"),
    Case("withdraw-nul-in-address", post(WITHDRAW, withdraw_form(address=ADDR_A + "\x00")), (400,), "Null characters are not allowed."),
    Case("withdraw-overlong-address", post(WITHDRAW, withdraw_form(address=LONG)), (400,), "That is too long to be a bitcoin address."),
    Case("withdraw-preview-with-template-amount", post(WITHDRAW, withdraw_form(action="preview", amount=TEXT)), (400,), (NOT_A_NUMBER, TEXT)),
    Case("withdraw-everything-shows-the-address-back-escaped", post(WITHDRAW, withdraw_form(action="max", address=XSS_IMG)), (200,), ("The most you can withdraw is", escape(XSS_IMG))),
    Case("withdraw-without-csrf-token", post(WITHDRAW, withdraw_form(), csrf=True), (403,), CSRF_FAILED),
    Case("withdraw-cancel-another-users-request", post(cancel_url), (404,), NO_WITHDRAWAL),
    Case("withdraw-cancel-huge-index", post(f"/account/withdraw/{HUGE_INT}/cancel/"), (404,), NO_WITHDRAWAL),
    Case("withdraw-cancel-negative-index", post("/account/withdraw/-1/cancel/"), (404,), NOT_FOUND),
    Case("withdraw-cancel-index-with-trailing-garbage", post("/account/withdraw/0abc/cancel/"), (404,), NOT_FOUND),
    Case("withdraw-cancel-encoded-dot-dot", post("/account/withdraw/%2e%2e/cancel/"), (404,), NOT_FOUND),
    wrong_method("withdraw-cancel-by-get", "GET", "/account/withdraw/0/cancel/", "outsider"),
    Case("withdraw-cancel-without-csrf-token", post(cancel_url, as_="outsider", csrf=True), (403,), CSRF_FAILED),
    Case("withdraw-cancel-replayed-refunds-once", post(cancel_url, as_="outsider", times=2), (302,), "This withdrawal was already cancelled", one_refund),
    Case("withdraw-replayed-applies-once", post(WITHDRAW, withdraw_form(), times=2, form_from=WITHDRAW), (302, 409), None, one_withdrawal),
    Case("withdraw-concurrent-applies-once", at_once(WITHDRAW, withdraw_form(), hook=withdrawals_overlap, form_from=WITHDRAW), (302, 409), None, one_withdrawal),
    wrong_method("withdraw-put", "PUT", WITHDRAW, "buyer"),
]

API_KEYS = [
    Case("api-key-regenerate-without-csrf-token", post(API_KEY, csrf=True), (403,), CSRF_FAILED),
    Case("api-key-regenerate-for-a-forged-user", post(API_KEY, {"username": "seller"}), (302,), "Your API key was replaced.", only_buyer_key_replaced),
    Case("api-key-page-with-a-forged-regenerate-query", get(API_KEY, {"regenerate": "1", "username": "seller"}), (200,), "Regenerating gives you a new key"),
    wrong_method("api-key-delete", "DELETE", API_KEY, "buyer"),
]

SERVING = [
    Case("api-overlong-key-in-header", get(API, as_=None, HTTP_AUTHORIZATION=f"Bearer {LONG}"), (403,), INVALID_KEY),
    Case("api-template-key-in-header", get(API, as_=None, HTTP_AUTHORIZATION=f"Bearer {TEXT}"), (403,), INVALID_KEY),
    Case("api-sql-key-in-query", get(API, {"key": SQL}, **ANON), (403,), INVALID_KEY),
    Case("api-nul-in-key-in-query", get(API, {"key": "abc\x00def"}, **ANON), (403,), INVALID_KEY),
    Case("api-cyrillic-key-in-query", get(API, {"key": "\u0430" * 32}, **ANON), (403,), INVALID_KEY),
    Case("api-another-users-key", other_users_key, (403,), INVALID_KEY),
    Case("api-missing-key", get(API, **ANON), (401,), "Missing API key"),
    Case("api-basic-auth-instead-of-a-key", get(API, as_=None, HTTP_AUTHORIZATION="Basic c2VsbGVyOnB3"), (401,), "Missing API key"),
    Case("api-index-with-trailing-garbage", WithKey("/api/v1/ads/seller/0abc/current"), (404,), API_NO_CAMPAIGN),
    Case("api-index-exponent", WithKey("/api/v1/ads/seller/1e3/current"), (404,), API_NO_CAMPAIGN),
    Case("api-index-negative", WithKey("/api/v1/ads/seller/-1/current"), (404,), API_NO_CAMPAIGN),
    Case("api-index-huge", WithKey(f"/api/v1/ads/seller/{HUGE_INT}/current"), (404,), API_NO_CAMPAIGN),
    Case("api-index-fullwidth-digit", WithKey("/api/v1/ads/seller/\uff10/current"), (404,), API_NO_CAMPAIGN),
    Case("api-index-with-colons", WithKey("/api/v1/ads/seller/0::1/current"), (404,), API_NO_CAMPAIGN),
    Case("api-colons-in-user", WithKey("/api/v1/ads/seller::0/0/current"), (404,), API_NO_CAMPAIGN),
    Case("api-encoded-dot-dot-as-user", WithKey("/api/v1/ads/%2e%2e/0/current"), (404,), API_NO_CAMPAIGN),
    Case("api-encoded-slash-in-user", get("/api/v1/ads/sel%2Fler/0/current", as_=None, REQUEST_URI="/api/v1/ads/sel%2Fler/0/current"), (404,), "Encoded slashes are not allowed in API paths."),
    Case("api-double-slash", WithKey("/api/v1/ads//seller/0/current"), (404,), "No such API endpoint"),
    Case("api-dot-dot-out-of-the-api", WithKey("/api/v1/ads/seller/0/../../../../account/"), (404,), "No such API endpoint"),
    Case("api-overlong-query-string", get(API, {"key": "k" * 3000}, **ANON), (400,), "The query string is too long."),
    Case("api-put", request("PUT", API, **ANON), (405,), ONLY_GET),
    Case("api-delete", request("DELETE", API, **ANON), (405,), ONLY_GET),
    Case("api-post-without-csrf-token", post(API, {"key": "x"}, as_=None, csrf=True), (405,), ONLY_GET),
    Case("embed-index-with-trailing-garbage", get("/embed/seller/0abc", **ANON), (404,), NO_SPACE),
    Case("embed-index-exponent", get("/embed/seller/1e3", **ANON), (404,), NO_SPACE),
    Case("embed-markup-as-user", get("/embed/%3Csvg%20onload%3Dalert(1)%3E/0", **ANON), (404,), NO_SPACE),
    Case("embed-colons-in-user", get("/embed/seller::1/0", **ANON), (404,), NO_SPACE),
    Case("embed-json-dot-dot-as-user", get("/embed/../0.json", **ANON), (404,), API_NO_CAMPAIGN),
    Case("embed-json-huge-index", get(f"/embed/seller/{HUGE_INT}.json", **ANON), (404,), API_NO_CAMPAIGN),
    Case("embed-json-negative-index", get("/embed/seller/-1.json", **ANON), (404,), API_NO_CAMPAIGN),
    wrong_method("embed-put", "PUT", "/embed/seller/1", None),
    wrong_method("embed-js-put", "PUT", "/embed.js", None),
    Case("embed-js-forged-host", get("/embed.js", as_=None, HTTP_HOST="evil.test"), (400,)),
    Case("embed-js-does-not-reflect-its-query", get("/embed.js", {"base": XSS, "u": "javascript:alert(1)"}, **ANON), (200,)),
    Case("embed-json-garbage-if-none-match", get("/embed/seller/0.json", as_=None, HTTP_IF_NONE_MATCH=f'"{TEXT}", {XSS}, W/'), (200,), '"width":300'),
    Case("embed-shows-markup-and-template-text-of-the-live-ad-as-text", get("/embed/seller/1", **ANON), (200,), ("Advertisement", escape(XSS), f"{TEMPLATE} {DEBUG_TAG}")),
    Case("campaign-page-shows-markup-in-ads-as-text", get("/ads/buy-ad-space/seller/1", as_="outsider"), (200,), (escape(f"theirs {XSS}"), f"{TEMPLATE} {DEBUG_TAG}")),
    Case("my-ads-shows-markup-in-ads-as-text", get("/account/ads/", as_="outsider"), (200,), (escape(f"second {XSS}"), f"{TEMPLATE} {DEBUG_TAG}")),
    Case("image-path-traversal", get("/img/..%2f..%2fconfig%2fsettings.png", **ANON), (404,), NOT_FOUND),
    Case("image-unknown-digest", get("/img/" + "0" * 64 + ".png", **ANON), (404,), "No such image."),
    Case("image-real-digest-with-another-extension", get(lambda w: f"/img/{w.image}.gif", **ANON), (404,), "No such image."),
    Case("image-real-digest-in-capitals", get(lambda w: f"/img/{w.image.upper()}.png", **ANON), (404,), NOT_FOUND),
    Case("image-digest-with-trailing-garbage", get("/img/" + "0" * 64 + ".png.html", **ANON), (404,), NOT_FOUND),
    wrong_method("image-post", "POST", "/img/" + "0" * 64 + ".png", None),
]

BROWSING = [
    Case("sellers-page-zero", get(SELLERS, {"page": "0"}, **ANON), (404,), "There is no page 0 of sellers."),
    Case("sellers-page-negative", get(SELLERS, {"page": "-1"}, **ANON), (404,), "There is no page -1 of sellers."),
    Case("sellers-page-exponent", get(SELLERS, {"page": "1e3"}, **ANON), (404,), "There is no page 1e3 of sellers."),
    Case("sellers-page-huge", get(SELLERS, {"page": HUGE_INT}, **ANON), (404,), "There is no page 9999"),
    Case("sellers-page-markup-shown-back-escaped", get(SELLERS, {"page": XSS}, **ANON), (404,), "There is no page &lt;script&gt;"),
    Case("sellers-page-template", get(SELLERS, {"page": TEXT}, **ANON), (404,), f"There is no page {TEXT[:20]}"),
    Case("sellers-page-past-the-end", get(SELLERS, {"page": "5"}, **ANON), (404,), "have no page 5"),
    Case("sellers-page-invalid-utf8", get(f"{SELLERS}?page=%FF%FE", **ANON), (404,), "There is no page \ufffd"),
    Case("seller-invalid-utf8-in-name", get(f"{SELLERS}%FF%FE/", **ANON), (404,), "There is no such user."),
    Case("seller-colons-in-name", get(f"{SELLERS}seller::0/", **ANON), (404,), "There is no such user."),
    Case("seller-cyrillic-lookalike", get(f"{SELLERS}{CYRILLIC_SELLER}/", **ANON), (404,), "There is no such user."),
    Case("seller-overlong-name", get(f"{SELLERS}{LONG}/", **ANON), (404,), "There is no such user."),
    Case("campaign-leading-zero", get(f"{SELLERS}seller/00", **ANON), (404,), NO_CAMPAIGN),
    Case("campaign-negative-index", get(f"{SELLERS}seller/-1", **ANON), (404,), NO_CAMPAIGN),
    Case("campaign-double-slash", get(f"{SELLERS}seller//0", **ANON), (404,), NOT_FOUND),
    Case("campaign-encoded-dot-dot", get(f"{SELLERS}seller/%2e%2e", **ANON), (404,), NO_CAMPAIGN),
    Case("my-ads-page-huge", get("/account/ads/", {"page": HUGE_INT}), (404,), "There is no page 9999"),
    Case("ledger-page-negative", get("/account/", {"page": "-1"}), (404,), NOT_FOUND),
    # A verb no page uses is refused before CSRF is even looked at.
    Case("sellers-delete-without-csrf-token", request("DELETE", SELLERS, as_=None, csrf=True), (405,), None),
    wrong_method("sellers-delete", "DELETE", SELLERS, None),
]

STAFF = [
    Case("admin-adjust-colons-in-username", get("/admin/accounts/adjust/buyer::x/", **STAFFER), (302,), "Usernames are 1 to 32 letters and digits."),
    Case("admin-adjust-encoded-dot-dot-as-username", get("/admin/accounts/adjust/%2e%2e/", **STAFFER), (302,), "Usernames are 1 to 32 letters and digits."),
    Case("admin-adjust-unknown-user", get("/admin/accounts/adjust/nobody/", **STAFFER), (302,), "There is no account for"),
    Case("admin-adjust-fullwidth-digits-in-amount", post(ADJUST, {"amount": "\uff11", "reason": "r"}, **STAFFER), (200,), NOT_A_NUMBER),
    Case("admin-adjust-exponent-amount", post(ADJUST, {"amount": "-1e3", "reason": "r"}, **STAFFER), (200,), "without an exponent"),
    Case("admin-adjust-overlong-reason", post(ADJUST, {"amount": "1", "reason": LONG}, **STAFFER), (200,), "Ensure this value has at most 500 characters"),
    Case("admin-adjust-nul-in-reason", post(ADJUST, {"amount": "1", "reason": "a\x00b"}, **STAFFER), (200,), "Null characters are not allowed."),
    Case("admin-adjust-markup-and-template-reason-shown-as-text-on-the-confirmation", post(ADJUST, {"amount": "0.001", "reason": f"{XSS}{TEXT}"}, **STAFFER), (200,), ("Confirm adjustment", escape(XSS), TEXT)),
    Case("admin-confirm-forged-zero", post(ADJUST, adjust_confirm(sats="0"), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-forged-huge", post(ADJUST, adjust_confirm(sats=HUGE_INT), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-forged-fraction", post(ADJUST, adjust_confirm(sats="1.5"), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-forged-debit-below-zero", post(ADJUST, adjust_confirm(sats=f"-{BUYER_FUNDS + 1}"), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-forged-plausible", post(ADJUST, adjust_confirm(), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-forged-token", post(ADJUST, {"step": "confirm", "confirmation": "e30:1:abc"}, **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-colons-in-request-id", post(ADJUST, adjust_confirm(request_id="x::ledger::buyer::0"), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-overlong-reason", post(ADJUST, adjust_confirm(reason=LONG), **STAFFER), (200,), INCOMPLETE),
    Case("admin-confirm-replayed-applies-once", reviewed_then_confirmed(times=2), (302,), None, one_credit),
    Case("admin-confirm-by-a-non-staff-user", post(ADJUST, adjust_confirm(), as_="buyer"), (302,), "Log in"),
    Case("admin-adjust-without-csrf-token", post(ADJUST, adjust_confirm(), as_="staff", csrf=True), (403,), CSRF_FAILED),
    Case("admin-inspect-markup-as-username", get(INSPECT, {"username": XSS}, **STAFFER), (200,), (BAD_USERNAME, escape(XSS))),
    Case("admin-inspect-overlong-username", get(INSPECT, {"username": LONG}, **STAFFER), (200,), "Usernames are at most 32 letters and digits."),
    Case("admin-inspect-sql-as-username", get(INSPECT, {"username": SQL}, **STAFFER), (200,), BAD_USERNAME),
    Case("admin-inspect-template-as-username", get(INSPECT, {"username": TEXT}, **STAFFER), (200,), (BAD_USERNAME, TEXT)),
    Case("admin-inspect-colons-in-username", get(INSPECT, {"username": "buyer::0"}, **STAFFER), (200,), BAD_USERNAME),
    Case("admin-finish-lock-with-a-forged-token", post("/admin/accounts/inspect/buyer/finish-lock/", {"token": XSS}, **STAFFER), (302,), "holds no lock any more"),
    Case("admin-finish-lock-colons-in-username", post("/admin/accounts/inspect/buyer::0/finish-lock/", {"token": "t"}, **STAFFER), (302,), "Usernames are 1 to 32 letters and digits."),
    Case("admin-accounts-list-markup-query", get("/admin/accounts/list/", {"q": XSS}, **STAFFER), (200,), (BAD_USERNAME, escape(XSS))),
    Case("admin-accounts-list-page-garbage", get("/admin/accounts/list/", {"page": "1e3"}, **STAFFER), (200,), "is not a page number; showing page 1."),
    Case("admin-accounts-list-page-huge", get("/admin/accounts/list/", {"page": HUGE_INT}, **STAFFER), (200,), "; showing page 1 of 1."),
    wrong_method("admin-adjust-put", "PUT", ADJUST, "staff"),
]
# fmt: on

CASES = [
    *REGISTRATION,
    *LOGINS,
    *SELLING,
    *CAMPAIGN_OWNER,
    *NEW_ADS,
    *BUYING,
    *FUNDING,
    *WITHDRAWING,
    *API_KEYS,
    *SERVING,
    *BROWSING,
    *STAFF,
]


def test_the_cases_have_distinct_names():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_hostile_input_is_refused_plainly_and_changes_nothing(case: Case, world: World):
    before = world.store.dump()
    exchanges = case.send(world)
    after = world.store.dump()

    assert exchanges
    for ex in exchanges:
        status = ex.response.status_code
        assert status in case.status, f"{case.id}: status {status}\n{text(ex.response)[:2000]}"
        if ex.landed is not None:
            assert ex.landed.status_code == 200, ex.landed.status_code
        for page in ex.pages:
            body = text(page)
            assert settings.SECRET_KEY not in body
            # JSON may carry an ad's text as typed; everything else is read by a browser.
            if not page.get("Content-Type", "").startswith("application/json"):
                for markup in (*RAW_MARKUP, SQL):
                    assert markup not in body, f"{case.id}: {markup!r} unescaped"
                assert not JAVASCRIPT_URL.search(body), f"{case.id}: a javascript: link"
    says = (case.says,) if isinstance(case.says, str) else case.says or ()
    shown = all_text(exchanges)
    for sentence in says:
        assert sentence in shown, f"{case.id}: {sentence!r} not in\n{shown}"

    if case.effect is None:
        assert changed_keys(before, after) == set(), "the docstore changed"
    else:
        case.effect(world, before, after, exchanges)
