"""The Add funds tab: getting an address, its QR code, payments, "check now", a node that is down."""

from __future__ import annotations

import importlib
import re
import sys
import types

import pytest
from django.utils.html import escape

from accounts import locks
from accounts.gateway import get_account
from bitcoinkeys import deposits
from bitcoinkeys.chain import BitcoindChain, ChainUnavailable, NoChain, Payment, set_chain
from tests.rpcserver import FakeBitcoind
from tests.test_deposits import addr, give_address

PAGE = "/account/funds/"
TXID = "ab" * 32


class FakeChain:
    """A chain backend answering from a dict; `down` makes every call fail like a dead node."""

    available = True
    name = "fake"

    def __init__(self):
        self.payments: list[Payment] = []
        self.down = False
        self.asked: list[str] = []

    def payments_for(self, address):
        self.asked.append(address)
        if self.down:
            raise ChainUnavailable("bitcoind did not answer listreceivedbyaddress within 30 s.")
        return [p for p in self.payments if p.address == address]

    def payments_since(self, cursor, confirmations=1):
        if self.down:
            raise ChainUnavailable("down")
        return list(self.payments), "tip"


@pytest.fixture(autouse=True)
def _deposits_registered():
    deposits.ready_deposits()
    yield
    set_chain(None)


@pytest.fixture
def chain():
    fake = FakeChain()
    set_chain(fake)
    return fake


@pytest.fixture
def pool(monkeypatch):
    """Stands in for bitcoinkeys.pool: deals addr(100), addr(101)... through give_address."""
    try:
        module = importlib.import_module("bitcoinkeys.pool")
    except ImportError:  # the pool is written elsewhere; its contract is all the page needs
        module = types.ModuleType("bitcoinkeys.pool")

        class OutOfKeys(Exception):
            pass

        module.OutOfKeys = OutOfKeys  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "bitcoinkeys.pool", module)
    numbers = iter(range(100, 200))

    def deal(store, clock, username, replacing=None):
        current = (get_account(store, username).value.get("btc") or {}).get("address")
        if replacing is not None and current != replacing:
            return current  # the contract of the real pool: a second click deals nothing
        address = addr(next(numbers))
        give_address(store, clock, username, address)
        return address

    def get(store, clock, username):
        btc = get_account(store, username).value.get("btc") or {}
        return btc["address"] if btc.get("state") == "have" else deal(store, clock, username)

    monkeypatch.setattr(module, "get_deposit_address", get, raising=False)
    monkeypatch.setattr(module, "new_deposit_address", deal, raising=False)
    return module


@pytest.fixture
def alice(make_user, client):
    user = make_user("alice")
    client.force_login(user)
    return user


@pytest.fixture
def with_address(alice, store, clock):
    give_address(store, clock, "alice", addr(1))
    return addr(1)


def text(response) -> str:
    return response.content.decode()


def test_the_page_needs_a_login(client, db):
    response = client.get(PAGE)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_without_an_address_the_page_offers_to_get_one(client, alice, chain):
    page = text(client.get(PAGE))
    assert 'href="/account/funds/" class="active" aria-current="page"' in page
    assert "Get a deposit address" in page
    assert 'action="/account/funds/address/"' in page
    assert "<svg" not in page


def test_getting_an_address_shows_it_with_its_qr_code_uri_minimum_and_confirmations(
    client, alice, chain, pool, settings, store
):
    settings.DEPOSIT_CONFIRMATIONS = 2
    response = client.post("/account/funds/address/", follow=True)
    page = text(response)
    address = addr(100)
    assert response.status_code == 200
    assert f'data-role="deposit-address">{address}<' in page
    assert re.search(r'<svg[^>]*class="segno"', page), "the QR code is drawn inline"
    assert f'href="bitcoin:{address}"' in page
    assert '<span class="amount" data-role="minimum">0.00300000</span>' in page
    assert '<span data-role="confirmations">2</span>' in page
    assert "Get a new address" in page and "Check now" in page
    # Asking again answers the same address.
    client.post("/account/funds/address/")
    assert get_account(store, "alice").value["btc"]["addresses"] == [address]


def test_the_qr_code_encodes_the_bitcoin_uri(client, with_address, chain):
    import segno

    page = text(client.get(PAGE))
    expected = segno.make(f"bitcoin:{with_address}", error="m").svg_inline(
        scale=5, light="#fff", dark="#000"
    )
    assert expected in page


def test_running_out_of_addresses_says_so(client, alice, chain, pool, monkeypatch):
    def out_of_keys(store, clock, username):
        raise pool.OutOfKeys()

    monkeypatch.setattr(pool, "get_deposit_address", out_of_keys)
    page = text(client.post("/account/funds/address/", follow=True))
    assert escape(str(pool.OutOfKeys())) in page
    assert "Get a deposit address" in page


def test_a_busy_account_is_asked_to_try_again(client, alice, chain, pool, monkeypatch):
    def busy(store, clock, username):
        raise locks.AccountBusy()

    monkeypatch.setattr(pool, "get_deposit_address", busy)
    page = text(client.post("/account/funds/address/", follow=True))
    assert "try again in a moment" in page


def test_a_new_address_becomes_current_and_the_old_one_stays_listed(
    client, with_address, chain, pool
):
    page = text(client.post("/account/funds/address/new/", follow=True))
    assert f'data-role="deposit-address">{addr(100)}<' in page
    assert f"<code>{with_address}</code>" in page  # its payments section is still there


def test_a_second_click_on_new_address_deals_nothing_more(client, with_address, chain, pool, store):
    client.post("/account/funds/address/new/", {"replacing": with_address})
    client.post("/account/funds/address/new/", {"replacing": with_address})
    assert get_account(store, "alice").value["btc"]["addresses"] == [with_address, addr(100)]


def test_address_actions_only_take_post(client, alice, chain, pool):
    assert client.get("/account/funds/address/").status_code == 405
    assert client.get("/account/funds/check/").status_code == 405


def test_pending_waiting_and_credited_payments_are_listed_in_btc(
    client, with_address, chain, store, clock
):
    chain.payments = [
        Payment(with_address, f"{TXID}:0", 150_000, 0),
        Payment(with_address, f"{TXID}:1", 100_000_000, 1),
    ]
    page = text(client.get(PAGE))
    assert re.search(r'data-status="pending">\s*<td>pending</td>\s*<td[^>]*>0.00150000<', page)
    assert re.search(r'data-status="confirmed">', page)
    deposits.credit_confirmed(store, clock, chain.payments)
    page = text(client.get(PAGE))
    assert re.search(r'data-status="credited">\s*<td>credited</td>\s*<td[^>]*>1.00000000<', page)
    assert f"<code>{TXID}</code> : 1" in page
    chain.payments.append(Payment(with_address, f"{TXID}:2", 1_000, 3))
    chain.payments.pop(0)
    page = text(client.get(PAGE))
    assert "waiting: below the minimum deposit" in page


def test_a_vanished_credited_payment_is_shown_as_such(client, with_address, chain, store, clock):
    chain.payments = [Payment(with_address, f"{TXID}:0", 500_000, 1)]
    deposits.credit_confirmed(store, clock, chain.payments)
    chain.payments = [Payment(with_address, f"{TXID}:0", 500_000, -1)]
    deposits.credit_confirmed(store, clock, chain.payments)  # records the alert
    page = text(client.get(PAGE))
    assert "vanished after crediting" in page
    assert get_account(store, "alice").value["balance"] == 500_000


def test_check_now_credits_what_is_confirmed(client, with_address, chain, store):
    chain.payments = [Payment(with_address, f"{TXID}:0", 400_000, 1)]
    response = client.post("/account/funds/check/", follow=True)
    assert "Credited 0.00400000 BTC to your balance." in text(response)
    assert get_account(store, "alice").value["balance"] == 400_000


def test_check_now_is_limited_to_once_every_30_seconds(client, with_address, chain, clock, store):
    assert client.post("/account/funds/check/").status_code == 302
    chain.payments = [Payment(with_address, f"{TXID}:0", 400_000, 1)]
    clock.advance(29)
    limited = client.post("/account/funds/check/")
    assert limited.status_code == 429
    assert "at most once every 30 seconds" in text(limited)
    assert get_account(store, "alice").value["balance"] == 0, "a refused check credited"
    clock.advance(1)
    assert client.post("/account/funds/check/").status_code == 302
    assert get_account(store, "alice").value["balance"] == 400_000


def test_a_node_that_is_down_is_a_message_not_an_error(client, with_address, chain):
    chain.down = True
    page = client.get(PAGE)
    assert page.status_code == 200
    assert "We cannot reach the bitcoin node right now" in text(page)
    assert with_address in text(page)
    checked = client.post("/account/funds/check/", follow=True)
    assert checked.status_code == 200
    assert "your payment is safe and will be credited when it is back" in text(checked)


def test_without_a_chain_backend_the_page_says_deposits_are_not_detected(
    client, with_address, store, clock
):
    set_chain(NoChain())
    page = text(client.get(PAGE))
    assert "Deposits cannot be detected on this installation" in page
    assert "staff can credit your balance by hand" in page
    assert "Check now" not in page
    assert with_address in page
    response = client.post("/account/funds/check/", follow=True)
    assert "Deposits cannot be detected" in text(response)


def test_the_page_has_no_inline_scripts_or_handlers(client, with_address, chain):
    page = text(client.get(PAGE))
    assert not re.search(r"<script(?![^>]*\ssrc=)", page)
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert "style=" not in page


def test_the_real_backend_pending_then_credited_through_check_now(client, with_address):
    with FakeBitcoind() as node:
        chain = BitcoindChain(url=node.url, wallet="deposits", payout_wallet="payouts", timeout=5)
        chain.import_addresses([with_address])
        set_chain(chain)
        op = node.pay(with_address, 750_000)
        page = text(client.get(PAGE))
        assert re.search(r'data-status="pending">\s*<td>pending</td>\s*<td[^>]*>0.00750000<', page)
        node.mine()
        page = text(client.post("/account/funds/check/", follow=True))
        assert "Credited 0.00750000 BTC" in page
        assert f"<code>{op.split(':')[0]}</code>" in page
        chain.close()


def test_address_requests_are_rate_limited_per_user(client, store, clock, buyer, settings):
    settings.ADDRESS_RATE_LIMIT = 2
    client.force_login(buyer)
    for _ in range(2):
        client.post("/account/funds/address/")
    response = client.post("/account/funds/address/new/")
    assert response.status_code == 429
    assert "many addresses" in response.content.decode()
