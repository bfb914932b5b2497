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

import pytest
from django.conf import settings

from accounts.adjust import adjust_balance
from accounts.gateway import account_key
from adspace import buy, gateway
from adspace.images import validate_ad_image
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
    get,
    png,
    png_declaring,
    post,
    request,
    text,
    then,
    upload,
)
from tests.test_deposits import addr, give_address
from tests.test_withdrawals import ADDR_A, ADDR_B, MAINNET

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
WITHDRAW = "/account/withdraw/"
FUNDS = "/account/funds/"
API_KEY = "/account/api-key/"
API = "/api/v1/ads/seller/0/current"
ADJUST = "/admin/accounts/adjust/buyer/"
INSPECT = "/admin/accounts/inspect/"

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
INCOMPLETE = "The confirmation was incomplete; nothing was changed."
ONLY_GET = "Only GET is supported."
JAVASCRIPT_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)


# --- the world ----------------------------------------------------------------------------------


@pytest.fixture
def world(store, clock, seller, buyer, outsider, staff) -> World:
    w.ready_withdrawals()
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
    users = {"seller": seller, "buyer": buyer, "outsider": outsider, "staff": staff}
    keys = {u.username: store.get(account_key(u.username)).value.get("apiKey", "") for u in users.values()}
    return World(store, clock, users, campaign, live, i, addr(1), keys)


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
    refunds = [e for e in after[account_key("outsider")]["ledger"] if e["kind"] == "withdraw-refund"]
    assert len(refunds) == 1
    assert "cancelled" in all_text(exchanges[:1])


def one_credit(world: World, before: dict, after: dict, exchanges: list[Exchange]) -> None:
    assert balance(after, "buyer") - balance(before, "buyer") == 12_345
    ledger = after[account_key("buyer")]["ledger"]
    assert [e["delta"] for e in ledger if e["kind"] == "adjust"][-1:] == [12_345]
    assert sum(1 for e in ledger if e.get("reason") == "replayed") == 1
    assert "already applied; nothing changed this time" in all_text(exchanges[-1:])


def only_buyer_key_replaced(world: World, before: dict, after: dict, exchanges) -> None:
    assert changed_keys(before, after) == {account_key("buyer")}
    old, new = before[account_key("buyer")], after[account_key("buyer")]
    assert new["apiKey"] != old["apiKey"]
    assert {**new, "apiKey": old["apiKey"]} == old


def new_ad_under_buyer(nickname: str, hover: str) -> Effect:
    """The upload made exactly one ad, under the buyer's own keys, holding the text as typed."""

    def check(world: World, before: dict, after: dict, exchanges) -> None:
        new = changed_keys(before, after)
        assert "filler::buyer::1" in new
        owners = {k.split("::")[1] for k in new if not k.startswith("image::")}
        assert owners == {"buyer"}, new
        ad = after["filler::buyer::1"]
        assert (ad["nickname"], ad["hoverText"]) == (nickname, hover)

    return check


# --- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: tuple[int, ...]  # every response of the case has one of these
    says: str | None = None  # a sentence the person sees (on the page a redirect leads to)
    effect: Effect | None = None  # None: the docstore is unchanged
    bug: str | None = None

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {self.bug}")] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)


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
    return {"min_price": "0.01", "slot_hours": "24", "width": "300", "height": "250", **overrides}


def withdraw_form(**overrides) -> dict:
    return {"action": "withdraw", "amount": "0.03", "address": ADDR_A, **overrides}


def register_form(username: str, password: str = "a-Long-unusual-pass-77") -> dict:
    return {"username": username, "password1": password, "password2": password}


def adjust_confirm(**overrides) -> dict:
    return {"step": "confirm", "request_id": "abc123", "sats": "12345", "reason": "r", **overrides}


def cancel_url(world: World) -> str:
    return f"/account/withdraw/{world.outsider_withdrawal}/cancel/"


def buys_overlap() -> Overlap:
    # Both priced the slot at the minimum; the second reads the account for its lock only
    # once the first has settled its sale (lock, then debit: two CAS on the account).
    account = account_key("buyer")
    return Overlap(
        meet=("get", "filler::buyer::0"), hold=("get", account), release=("replace", account), times=2
    )


def withdrawals_overlap() -> Overlap:
    # Both passed the balance check and drew a request number; the second reads the account for
    # its lock only once the first has settled its hold (lock, then debit: two CAS).
    account = account_key("buyer")
    meet = ("counter", withdrawcount_key("buyer"))
    return Overlap(meet=meet, hold=("get", account), release=("replace", account), times=2)


REGISTRATION = [
    Case("register-cyrillic-a-in-username", post(REGISTER, register_form(CYRILLIC_SELLER), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-colons-in-username", post(REGISTER, register_form("buyer::x"), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-overlong-username", post(REGISTER, register_form(LONG), as_=None), (200,), "Usernames are at most 32 characters."),  # noqa: E501
    Case("register-sql-username", post(REGISTER, register_form(SQL), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-html-username", post(REGISTER, register_form(XSS), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-template-username", post(REGISTER, register_form(TEMPLATE), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-nul-in-username", post(REGISTER, register_form("bob\x00"), as_=None), (200,), "Null characters are not allowed."),  # noqa: E501
    Case("register-fullwidth-digits-in-username", post(REGISTER, register_form("bob\uff11\uff12"), as_=None), (200,), BAD_USERNAME),  # noqa: E501
    Case("register-existing-name-in-capitals", post(REGISTER, register_form("SELLER"), as_=None), (200,), "That username is already taken."),  # noqa: E501
    Case("register-overlong-password", post(REGISTER, register_form("newbie", LONG), as_=None), (200,), "Passwords are at most 4096 characters."),  # noqa: E501
]

LOGINS = [
    Case("login-sql-injection", post(LOGIN, {"username": SQL, "password": SQL}, as_=None), (200,), BAD_LOGIN),  # noqa: E501
    Case("login-cyrillic-lookalike-of-a-real-user", post(LOGIN, {"username": CYRILLIC_SELLER, "password": "correct-horse-battery-9"}, as_=None), (200,), BAD_LOGIN),  # noqa: E501
    Case("login-overlong-username", post(LOGIN, {"username": LONG, "password": LONG}, as_=None), (200,), BAD_LOGIN),  # noqa: E501
    Case("login-nul-in-username", post(LOGIN, {"username": "buyer\x00", "password": "x"}, as_=None), (200,), "Null characters are not allowed."),  # noqa: E501
    Case("login-next-javascript-url-goes-home", post(f"{LOGIN}?next=javascript:alert(1)", {"username": "buyer", "password": "correct-horse-battery-9"}, as_=None), (302,), "Your account"),  # noqa: E501
    Case("logout-by-get", get("/accounts/logout/"), (405,)),
]

SELLING = [
    Case("sell-fullwidth-digits-in-price", post(SELL, sell_form(min_price="\uff10.\uff10\uff11"), as_="seller"), (400,), NOT_A_NUMBER),  # noqa: E501
    Case("sell-negative-price", post(SELL, sell_form(min_price="-1"), as_="seller"), (400,), "The amount cannot be negative."),  # noqa: E501
    Case("sell-exponent-price", post(SELL, sell_form(min_price="1e3"), as_="seller"), (400,), "without an exponent"),  # noqa: E501
    Case("sell-nan-price", post(SELL, sell_form(min_price="NaN"), as_="seller"), (400,), "not NaN or infinity"),  # noqa: E501
    Case("sell-overlong-price", post(SELL, sell_form(min_price=LONG_DIGITS), as_="seller"), (400,), "That is too long to be an amount in BTC."),  # noqa: E501
    Case("sell-template-in-price", post(SELL, sell_form(min_price=TEMPLATE), as_="seller"), (400,), NOT_A_NUMBER),  # noqa: E501
    Case("sell-trailing-garbage-in-hours", post(SELL, sell_form(slot_hours="24abc"), as_="seller"), (400,), "Enter the slot length as a whole number of hours"),  # noqa: E501
    Case("sell-huge-hours", post(SELL, sell_form(slot_hours=HUGE_INT), as_="seller"), (400,), "Enter the slot length as a whole number of hours"),  # noqa: E501
    Case("sell-nul-in-hours", post(SELL, sell_form(slot_hours="24\x00"), as_="seller"), (400,), "Enter the slot length as a whole number of hours"),  # noqa: E501
    Case("sell-sql-in-width", post(SELL, sell_form(width=SQL), as_="seller"), (400,), "Ad width must be a whole number of pixels"),  # noqa: E501
    Case("sell-forged-category", post(SELL, {**sell_form(), "disallowed": [XSS]}, as_="seller"), (400,), "is not one of the categories you can refuse"),  # noqa: E501
]

NEW_ADS = [
    Case("new-ad-50mb-body", post(NEW_AD, ad_form(image=lambda w: upload(b"\0" * (50 * 1024 * 1024)))), (413,), "The upload is too large"),  # noqa: E501
    Case("new-ad-truncated-png", post(NEW_AD, ad_form(image=lambda w: upload(png(W, H)[:200]))), (400,), "may be damaged"),  # noqa: E501
    Case("new-ad-html-file-named-png", post(NEW_AD, ad_form(image=lambda w: upload(f"<html><body>{XSS}</body></html>".encode()))), (400,), "HTML files are not accepted."),  # noqa: E501
    Case("new-ad-png-declaring-a-billion-pixels", post(NEW_AD, ad_form(image=lambda w: upload(png_declaring(40_000, 40_000)))), (400,), "The image has more pixels than an ad can have"),  # noqa: E501
    Case("new-ad-javascript-url", post(NEW_AD, ad_form(url="javascript:alert(1)")), (400,), "must be a full web address starting with http"),  # noqa: E501
    Case("new-ad-javascript-url-split-by-a-tab", post(NEW_AD, ad_form(url="java\tscript:alert(1)")), (400,), "cannot contain spaces or control characters"),  # noqa: E501
    Case("new-ad-html-in-url", post(NEW_AD, ad_form(url=f"https://x.test/{XSS_IMG}")), (400,), "cannot contain spaces or control characters"),  # noqa: E501
    Case("new-ad-control-chars-in-nickname", post(NEW_AD, ad_form(nickname="ad\x07\x1b[31m")), (400,), PLAIN_TEXT),  # noqa: E501
    Case("new-ad-nul-in-hover-text", post(NEW_AD, ad_form(hover_text="a\x00b")), (400,), "Null characters are not allowed."),  # noqa: E501
    Case("new-ad-bidi-override-in-nickname", post(NEW_AD, ad_form(nickname="\u202egnp.exe")), (400,), PLAIN_TEXT),  # noqa: E501
    Case("new-ad-overlong-hover-text", post(NEW_AD, ad_form(hover_text=LONG)), (400,), "Hover text is at most 512 characters."),  # noqa: E501
    Case("new-ad-fullwidth-digits-in-width", post(NEW_AD, ad_form(width=FULLWIDTH_300)), (400,), "Width must be a whole number of pixels from 16 to 2048."),  # noqa: E501
    Case("new-ad-nickname-taken-in-capitals", post(NEW_AD, ad_form(nickname="MAIN")), (400,), "You already have an ad called"),  # noqa: E501
    Case("new-ad-markup-shown-back-escaped", post(NEW_AD, ad_form(nickname=XSS, hover_text=SVG, width="301")), (400,), "this ad must be exactly 301x250 px"),  # noqa: E501
    Case("new-ad-colons-in-nickname-stay-under-my-keys", post(NEW_AD, ad_form(nickname="outsider::0", hover_text="x")), (302,), "is ready to use", new_ad_under_buyer("outsider::0", "x")),  # noqa: E501
    Case("new-ad-markup-and-template-text-stored-as-text", post(NEW_AD, ad_form(nickname=XSS, hover_text=f"{TEMPLATE}{DEBUG_TAG}")), (302,), "is ready to use", new_ad_under_buyer(XSS, f"{TEMPLATE}{DEBUG_TAG}")),  # noqa: E501
    Case("new-ad-put", request("PUT", NEW_AD), (405,)),
]

BUYING = [
    Case("buy-accepted-price-zero", post(BUY, {"accepted_price": "0", "filler": "0"}), (400,), BAD_PRICE),  # noqa: E501
    Case("buy-accepted-price-negative", post(BUY, {"accepted_price": f"-{M}", "filler": "0"}), (400,), BAD_PRICE),  # noqa: E501
    Case("buy-accepted-price-huge", post(BUY, {"accepted_price": HUGE_INT, "filler": "0"}), (400,), BAD_PRICE),  # noqa: E501
    Case("buy-accepted-price-not-an-integer", post(BUY, {"accepted_price": f"{M}.5", "filler": "0"}), (400,), BAD_PRICE),  # noqa: E501
    Case("buy-accepted-price-fullwidth-digits", post(BUY, {"accepted_price": FULLWIDTH_300 + "000", "filler": "0"}), (400,), BAD_PRICE),  # noqa: E501
    Case("buy-accepted-price-below-the-price", post(BUY, {"accepted_price": "1", "filler": "0"}), (302,), "more than you accepted; nothing was bought"),  # noqa: E501
    Case("buy-with-another-users-ad-index", post(BUY, {"accepted_price": str(M), "filler": "1"}), (400,), NOT_YOURS),  # noqa: E501
    Case("buy-with-colons-in-ad-index", post(BUY, {"accepted_price": str(M), "filler": "0::outsider"}), (400,), NOT_YOURS),  # noqa: E501
    Case("buy-with-negative-ad-index", post(BUY, {"accepted_price": str(M), "filler": "-1"}), (400,), NOT_YOURS),  # noqa: E501
    Case("buy-campaign-index-with-trailing-garbage", post("/ads/buy-ad-space/seller/0abc/buy", {"accepted_price": str(M), "filler": "0"}), (404,), NO_CAMPAIGN),  # noqa: E501
    Case("buy-campaign-index-huge", post(f"/ads/buy-ad-space/seller/{HUGE_INT}/buy", {"accepted_price": str(M), "filler": "0"}), (404,), NO_CAMPAIGN),  # noqa: E501
    Case("buy-colons-in-seller-name", post("/ads/buy-ad-space/seller::0/0/buy", {"accepted_price": str(M), "filler": "0"}), (404,), NO_CAMPAIGN),  # noqa: E501
    Case("buy-by-get", get(BUY), (405,)),
    Case("buy-without-csrf-token", post(BUY, {"accepted_price": str(M), "filler": "0"}, csrf=True), (403,), CSRF_FAILED),  # noqa: E501
    Case("buy-replayed-applies-once", post(BUY, {"accepted_price": str(M), "filler": "0"}, times=2), (302,), "more than you accepted; nothing was bought", one_sale),  # noqa: E501
    Case("buy-concurrent-applies-once", at_once(BUY, {"accepted_price": str(M), "filler": "0"}), (302,), None, one_sale),  # noqa: E501
    Case("buy-concurrent-second-locks-after-the-first-sold", at_once(BUY, {"accepted_price": str(M), "filler": "0"}, hook=buys_overlap), (302,), "Someone else just bought that slot; you were not charged.", one_sale),  # noqa: E501
]

FUNDING = [
    Case("funds-get-address-by-get", get(f"{FUNDS}address/"), (405,)),
    Case("funds-new-address-replacing-markup", post(f"{FUNDS}address/new/", {"replacing": XSS}), (302,), "Your deposit address is bcrt1q"),  # noqa: E501
    Case("funds-new-address-replacing-overlong", post(f"{FUNDS}address/new/", {"replacing": LONG}), (302,), "Your deposit address is bcrt1q"),  # noqa: E501
    Case("funds-get-address-for-a-forged-user", post(f"{FUNDS}address/", {"username": "outsider"}), (302,), "Your deposit address is bcrt1q"),  # noqa: E501
    Case("funds-check-now-without-csrf-token", post(f"{FUNDS}check/", csrf=True), (403,), CSRF_FAILED),  # noqa: E501
    Case("funds-check-now-delete", request("DELETE", f"{FUNDS}check/"), (405,)),
]

WITHDRAWING = [
    Case("withdraw-fullwidth-digits-in-amount", post(WITHDRAW, withdraw_form(amount="\uff10.\uff10\uff13")), (400,), NOT_A_NUMBER),  # noqa: E501
    Case("withdraw-negative-amount", post(WITHDRAW, withdraw_form(amount="-0.03")), (400,), "The amount cannot be negative."),  # noqa: E501
    Case("withdraw-exponent-amount", post(WITHDRAW, withdraw_form(amount="3e-2")), (400,), "without an exponent"),  # noqa: E501
    Case("withdraw-overlong-amount", post(WITHDRAW, withdraw_form(amount=LONG_DIGITS)), (400,), "That is too long to be an amount in BTC."),  # noqa: E501
    Case("withdraw-more-than-the-balance", post(WITHDRAW, withdraw_form(amount="20999999")), (400,), "You can withdraw at most"),  # noqa: E501
    Case("withdraw-markup-as-address", post(WITHDRAW, withdraw_form(address=XSS)), (400,), "Not a bitcoin address"),  # noqa: E501
    Case("withdraw-javascript-as-address", post(WITHDRAW, withdraw_form(address="javascript:alert(1)")), (400,), "Not a bitcoin address"),  # noqa: E501
    Case("withdraw-sql-as-address", post(WITHDRAW, withdraw_form(address=SQL)), (400,), "without spaces"),  # noqa: E501
    Case("withdraw-mainnet-address-on-regtest", post(WITHDRAW, withdraw_form(address=MAINNET)), (400,), "this site uses regtest"),  # noqa: E501
    Case("withdraw-nul-in-address", post(WITHDRAW, withdraw_form(address=ADDR_A + "\x00")), (400,), "Null characters are not allowed."),  # noqa: E501
    Case("withdraw-overlong-address", post(WITHDRAW, withdraw_form(address=LONG)), (400,), "That is too long to be a bitcoin address."),  # noqa: E501
    Case("withdraw-preview-with-template-amount", post(WITHDRAW, withdraw_form(action="preview", amount=TEMPLATE)), (400,), NOT_A_NUMBER),  # noqa: E501
    Case("withdraw-everything-echoes-address-escaped", post(WITHDRAW, withdraw_form(action="max", address=XSS_IMG)), (200,), "The most you can withdraw is"),  # noqa: E501
    Case("withdraw-without-csrf-token", post(WITHDRAW, withdraw_form(), csrf=True), (403,), CSRF_FAILED),  # noqa: E501
    Case("withdraw-cancel-another-users-request", post(cancel_url), (404,), NO_WITHDRAWAL),
    Case("withdraw-cancel-huge-index", post(f"/account/withdraw/{HUGE_INT}/cancel/"), (404,), NO_WITHDRAWAL),  # noqa: E501
    Case("withdraw-cancel-negative-index", post("/account/withdraw/-1/cancel/"), (404,), NOT_FOUND),  # noqa: E501
    Case("withdraw-cancel-by-get", get(cancel_url, as_="outsider"), (405,)),
    Case("withdraw-cancel-replayed-refunds-once", post(cancel_url, as_="outsider", times=2), (302,), "This withdrawal was already cancelled", one_refund),  # noqa: E501
    Case("withdraw-replayed-applies-once", post(WITHDRAW, withdraw_form(), times=2), (302, 400), None, one_withdrawal, bug="the same withdraw form submitted twice queues two withdrawals (no idempotency token)"),  # noqa: E501
    Case("withdraw-concurrent-applies-once", at_once(WITHDRAW, withdraw_form(), hook=withdrawals_overlap), (302, 409), None, one_withdrawal, bug="two identical withdraw forms in flight at once both queue a withdrawal (no idempotency token)"),  # noqa: E501
]

API_KEYS = [
    Case("api-key-regenerate-without-csrf-token", post(API_KEY, csrf=True), (403,), CSRF_FAILED),
    Case("api-key-regenerate-for-a-forged-user", post(API_KEY, {"username": "seller"}), (302,), "Your API key was replaced.", only_buyer_key_replaced),  # noqa: E501
    Case("api-key-delete", request("DELETE", API_KEY), (405,)),
]


def bearer(key: str | Callable[[World], str]) -> dict:
    return {"HTTP_AUTHORIZATION": key}


def seller_key(world: World) -> str:
    return world.keys["seller"]


class WithKey:
    """GET of an API path with the seller's real key, so only the path is at fault."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, world: World) -> list[Exchange]:
        client = world.client(None)
        response = client.get(self.path, HTTP_AUTHORIZATION=f"Bearer {world.keys['seller']}")
        return [Exchange(response)]


SERVING = [
    Case("api-overlong-key-in-header", get(API, as_=None, HTTP_AUTHORIZATION=f"Bearer {LONG}"), (403,), INVALID_KEY),  # noqa: E501
    Case("api-sql-key-in-query", get(API, {"key": SQL}, as_=None), (403,), INVALID_KEY),
    Case("api-nul-in-key", get(API, {"key": "abc\x00def"}, as_=None), (403,), INVALID_KEY),
    Case("api-another-users-key", lambda w: get(API, {"key": w.keys["buyer"]}, as_=None)(w), (403,), INVALID_KEY),  # noqa: E501
    Case("api-missing-key", get(API, as_=None), (401,), "Missing API key"),
    Case("api-index-with-trailing-garbage", WithKey("/api/v1/ads/seller/0abc/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-index-exponent", WithKey("/api/v1/ads/seller/1e3/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-index-negative", WithKey("/api/v1/ads/seller/-1/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-index-huge", WithKey(f"/api/v1/ads/seller/{HUGE_INT}/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-index-fullwidth-digit", WithKey("/api/v1/ads/seller/\uff10/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-colons-in-user", WithKey("/api/v1/ads/seller::0/0/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-encoded-dots-as-user", WithKey("/api/v1/ads/%2e%2e/0/current"), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("api-encoded-slash-in-user", get("/api/v1/ads/sel%2Fler/0/current", as_=None, REQUEST_URI="/api/v1/ads/sel%2Fler/0/current"), (404,), "Encoded slashes are not allowed in API paths."),  # noqa: E501
    Case("api-double-slash", WithKey("/api/v1/ads//seller/0/current"), (404,), "No such API endpoint"),  # noqa: E501
    Case("api-overlong-query-string", get(API, {"key": "k" * 3000}, as_=None), (400,), "The query string is too long."),  # noqa: E501
    Case("api-put", request("PUT", API, as_=None), (405,), ONLY_GET),
    Case("api-delete", request("DELETE", API, as_=None), (405,), ONLY_GET),
    Case("api-post-without-csrf-token", post(API, {"key": "x"}, as_=None, csrf=True), (405,), ONLY_GET),  # noqa: E501
    Case("embed-index-with-trailing-garbage", get("/embed/seller/0abc", as_=None), (404,), "No such ad space."),  # noqa: E501
    Case("embed-markup-as-user", get("/embed/%3Csvg%20onload%3Dalert(1)%3E/0", as_=None), (404,), "No such ad space."),  # noqa: E501
    Case("embed-colons-in-user", get("/embed/seller::1/0", as_=None), (404,), "No such ad space."),  # noqa: E501
    Case("embed-json-dot-dot-as-user", get("/embed/../0.json", as_=None), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("embed-json-huge-index", get(f"/embed/seller/{HUGE_INT}.json", as_=None), (404,), API_NO_CAMPAIGN),  # noqa: E501
    Case("embed-put", request("PUT", "/embed/seller/1", as_=None), (405,)),
    Case("embed-js-put", request("PUT", "/embed.js", as_=None), (405,)),
    Case("embed-js-forged-host", get("/embed.js", as_=None, HTTP_HOST="evil.test"), (400,)),
    Case("embed-live-ad-with-markup-in-its-text", get("/embed/seller/1", as_=None), (200,), "Advertisement"),  # noqa: E501
    Case("campaign-page-live-ad-with-markup-in-its-text", get("/ads/buy-ad-space/seller/1", as_="outsider"), (200,), "Buy the next slot"),  # noqa: E501
    Case("image-path-traversal", get("/img/..%2f..%2fconfig%2fsettings.png", as_=None), (404,), NOT_FOUND),  # noqa: E501
    Case("image-unknown-digest", get("/img/" + "0" * 64 + ".png", as_=None), (404,), "No such image."),  # noqa: E501
    Case("image-post", post("/img/" + "0" * 64 + ".png", as_=None), (405,)),
]

BROWSING = [
    Case("sellers-page-zero", get("/ads/buy-ad-space/", {"page": "0"}, as_=None), (404,), "There is no page 0 of sellers."),  # noqa: E501
    Case("sellers-page-negative", get("/ads/buy-ad-space/", {"page": "-1"}, as_=None), (404,), "There is no page -1 of sellers."),  # noqa: E501
    Case("sellers-page-exponent", get("/ads/buy-ad-space/", {"page": "1e3"}, as_=None), (404,), "There is no page 1e3 of sellers."),  # noqa: E501
    Case("sellers-page-huge", get("/ads/buy-ad-space/", {"page": HUGE_INT}, as_=None), (404,), "There is no page 9999"),  # noqa: E501
    Case("sellers-page-markup", get("/ads/buy-ad-space/", {"page": XSS}, as_=None), (404,), "There is no page &lt;script&gt;"),  # noqa: E501
    Case("sellers-page-past-the-end", get("/ads/buy-ad-space/", {"page": "5"}, as_=None), (404,), "have no page 5"),  # noqa: E501
    Case("seller-colons-in-name", get("/ads/buy-ad-space/seller::0/", as_=None), (404,), "There is no such user."),  # noqa: E501
    Case("seller-cyrillic-lookalike", get(f"/ads/buy-ad-space/{CYRILLIC_SELLER}/", as_=None), (404,), "There is no such user."),  # noqa: E501
    Case("campaign-leading-zero", get("/ads/buy-ad-space/seller/00", as_=None), (404,), NO_CAMPAIGN),  # noqa: E501
    Case("campaign-double-slash", get("/ads/buy-ad-space/seller//0", as_=None), (404,), NOT_FOUND),  # noqa: E501
    Case("campaign-encoded-dot-dot", get("/ads/buy-ad-space/seller/%2e%2e", as_=None), (404,), NO_CAMPAIGN),  # noqa: E501
    Case("my-ads-page-huge", get("/account/ads/", {"page": HUGE_INT}), (404,), "There is no page 9999"),  # noqa: E501
    Case("ledger-page-negative", get("/account/", {"page": "-1"}), (404,), NOT_FOUND),
    Case("sellers-delete", request("DELETE", "/ads/buy-ad-space/", as_=None), (405,)),
]

STAFF = [
    Case("admin-adjust-colons-in-username", get("/admin/accounts/adjust/buyer::x/", as_="staff"), (302,), "Usernames are 1 to 32 letters and digits."),  # noqa: E501
    Case("admin-adjust-unknown-user", get("/admin/accounts/adjust/nobody/", as_="staff"), (302,), "There is no account for"),  # noqa: E501
    Case("admin-adjust-fullwidth-digits-in-amount", post(ADJUST, {"amount": "\uff11", "reason": "r"}, as_="staff"), (200,), NOT_A_NUMBER),  # noqa: E501
    Case("admin-adjust-overlong-reason", post(ADJUST, {"amount": "1", "reason": LONG}, as_="staff"), (200,), "Ensure this value has at most 500 characters"),  # noqa: E501
    Case("admin-adjust-markup-and-template-reason-on-the-confirmation", post(ADJUST, {"amount": "0.001", "reason": f"{XSS}{TEMPLATE}{DEBUG_TAG}"}, as_="staff"), (200,), "Confirm adjustment"),  # noqa: E501
    Case("admin-confirm-forged-zero", post(ADJUST, adjust_confirm(sats="0"), as_="staff"), (200,), "non-zero number of satoshis"),  # noqa: E501
    Case("admin-confirm-forged-huge", post(ADJUST, adjust_confirm(sats=HUGE_INT), as_="staff"), (200,), "larger than all bitcoin"),  # noqa: E501
    Case("admin-confirm-forged-fraction", post(ADJUST, adjust_confirm(sats="1.5"), as_="staff"), (200,), INCOMPLETE),  # noqa: E501
    Case("admin-confirm-forged-debit-below-zero", post(ADJUST, adjust_confirm(sats=f"-{BUYER_FUNDS + 1}"), as_="staff"), (200,), "below zero"),  # noqa: E501
    Case("admin-confirm-colons-in-request-id", post(ADJUST, adjust_confirm(request_id="x::ledger::buyer::0"), as_="staff"), (200,), INCOMPLETE),  # noqa: E501
    Case("admin-confirm-replayed-applies-once", post(ADJUST, adjust_confirm(reason="replayed"), as_="staff", times=2), (302,), None, one_credit),  # noqa: E501
    Case("admin-confirm-by-a-non-staff-user", post(ADJUST, adjust_confirm(), as_="buyer"), (302,), "Log in"),  # noqa: E501
    Case("admin-adjust-without-csrf-token", post(ADJUST, adjust_confirm(), as_="staff", csrf=True), (403,), CSRF_FAILED),  # noqa: E501
    Case("admin-inspect-markup-as-username", get(INSPECT, {"username": XSS}, as_="staff"), (200,), BAD_USERNAME),  # noqa: E501
    Case("admin-inspect-overlong-username", get(INSPECT, {"username": LONG}, as_="staff"), (200,), "Usernames are at most 32 letters and digits."),  # noqa: E501
    Case("admin-inspect-sql-as-username", get(INSPECT, {"username": SQL}, as_="staff"), (200,), BAD_USERNAME),  # noqa: E501
    Case("admin-finish-lock-with-a-forged-token", post("/admin/accounts/inspect/buyer/finish-lock/", {"token": XSS}, as_="staff"), (302,), "holds no lock any more"),  # noqa: E501
]

CASES = [
    *REGISTRATION,
    *LOGINS,
    *SELLING,
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
            assert "DEFAULT_MESSAGE_LEVELS" not in body, "a {% debug %} tag was evaluated"
            if page.get("Content-Type", "").startswith("text/html"):
                for markup in RAW_MARKUP:
                    assert markup not in body, f"unescaped {markup!r} in {case.id}"
                assert not JAVASCRIPT_URL.search(body)
    if case.says is not None:
        shown = all_text(exchanges)
        assert case.says in shown, f"{case.id}: {case.says!r} not in\n{shown}"

    if case.effect is None:
        assert changed_keys(before, after) == set(), "the docstore changed"
    else:
        case.effect(world, before, after, exchanges)
