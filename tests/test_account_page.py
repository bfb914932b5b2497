from __future__ import annotations

import re

import pytest

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.gateway import get_account
from accounts.models import User
from docstore import NotFound
from tests.conftest import PASSWORD, T0

pytestmark = pytest.mark.django_db

URL = "/account/"


def ledger_refs(response) -> list[str]:
    return re.findall(r"<code>([^<]*)</code>", response.content.decode())


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url == "/accounts/login/?next=/account/"


def test_it_shows_the_balance_in_btc(client, buyer):
    client.force_login(buyer)
    response = client.get(URL)
    assert response.status_code == 200
    assert "0.10000000" in response.content.decode()


def test_the_header_shows_username_balance_and_a_logout_form(client, buyer):
    client.force_login(buyer)
    html = client.get("/").content.decode()
    assert "buyer" in html and "0.10000000 BTC" in html
    assert 'action="/accounts/logout/"' in html and 'method="post"' in html


def test_an_anonymous_header_offers_login_and_register(client):
    html = client.get("/").content.decode()
    assert 'href="/accounts/login/"' in html and 'href="/accounts/register/"' in html
    assert 'href="/ads/buy-ad-space/"' in html and 'href="/ads/sell-ad-space/"' in html


def test_ledger_entries_show_time_kind_change_balance_and_reason(client, store, clock, seller):
    clock.set(T0)
    adjust_balance(store, clock, "seller", 250_000, "refund for a broken embed", request_id="r1")
    clock.advance(60)
    adjust_balance(store, clock, "seller", -50_000, "chargeback", request_id="r2")
    client.force_login(seller)
    html = client.get(URL).content.decode()
    assert "Adjustment by staff" in html
    assert "refund for a broken embed" in html and "chargeback" in html
    assert "+0.00250000" in html and "-0.00050000" in html
    assert "0.00200000" in html  # balance after the second entry, and the balance
    assert "2023-11-14 22:13:20" in html and "2023-11-14 22:14:20" in html
    assert ledger_refs(client.get(URL)) == ["adjust:r2", "adjust:r1"]  # newest first


def test_reasons_are_escaped(client, store, clock, seller):
    adjust_balance(store, clock, "seller", 1, "<script>alert(1)</script>")
    client.force_login(seller)
    html = client.get(URL).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_kinds_read_as_words(client, store, seller):
    doc = get_account(store, "seller")
    kinds = ["buy", "deposit", "credit", "withdraw-hold", "withdraw-refund"]
    entries = [
        {"at": T0 + i, "kind": k, "ref": f"ref{i}", "delta": 0, "balanceAfter": 0}
        for i, k in enumerate(kinds)
    ]
    store.replace("account::seller", {**doc.value, "ledger": entries}, doc.cas)
    client.force_login(seller)
    html = client.get(URL).content.decode()
    for label in [
        "Bought ad slot",
        "Deposit",
        "Sale credited",
        "Withdrawal",
        "Withdrawal refunded",
    ]:
        assert f"<td>{label}</td>" in html


def test_an_empty_ledger_says_so(client, seller):
    client.force_login(seller)
    html = client.get(URL).content.decode()
    assert "Nothing yet." in html and "0.00000000" in html


def test_a_held_lock_is_shown_as_an_operation_in_progress(client, store, clock, seller):
    locks.take_lock(store, clock, "seller", "adjust", "adjust:x", delta=1, reason="r")
    client.force_login(seller)
    html = client.get(URL).content.decode()
    assert "An operation is in progress" in html
    assert "an adjustment by staff" in html


def test_no_lock_no_notice(client, seller):
    client.force_login(seller)
    assert "in progress" not in client.get(URL).content.decode()


def test_the_ledger_pages_fifty_at_a_time_newest_first(client, store, clock, seller):
    # 250 entries: two rolled-over ledger pages of 100 plus 50 in the account doc.
    for i in range(250):
        adjust_balance(store, clock, "seller", 1, f"n{i}", request_id=f"e{i}")
    assert get_account(store, "seller").value["ledgerPages"] == 2
    client.force_login(seller)
    pages = [ledger_refs(client.get(URL, {"page": p})) for p in range(1, 6)]
    assert all(len(refs) == 50 for refs in pages)
    flat = [ref for refs in pages for ref in refs]
    assert flat == [f"adjust:e{i}" for i in range(249, -1, -1)]
    html = client.get(URL, {"page": 3}).content.decode()
    assert "Page 3 of 5" in html and "?page=2" in html and "?page=4" in html


@pytest.mark.parametrize("page", ["abc", "", "1.5", "1e3", "9" * 5000, "%00"])
def test_a_page_that_is_not_a_number_shows_the_first(client, store, clock, seller, page):
    adjust_balance(store, clock, "seller", 7, "only entry")
    client.force_login(seller)
    response = client.get(URL, {"page": page})
    assert response.status_code == 200
    assert "only entry" in response.content.decode()


@pytest.mark.parametrize("page", ["0", "-1", "2", "99999999999999999999"])
def test_a_page_out_of_range_is_a_clean_404(client, seller, page):
    client.force_login(seller)
    assert client.get(URL, {"page": page}).status_code == 404


def test_a_user_without_an_account_doc_gets_one_here(client, store):
    user = User.objects.create_user(username="admin1", password=PASSWORD)
    client.force_login(user)
    with pytest.raises(NotFound):
        get_account(store, "admin1")
    response = client.get(URL)
    assert response.status_code == 200 and "0.00000000" in response.content.decode()
    assert get_account(store, "admin1").value["balance"] == 0


def test_every_account_tab_links_to_a_page_that_answers(client, store, seller):
    client.force_login(seller)
    html = client.get(URL).content.decode()
    tabs = re.search(r'<nav class="tabs".*?</nav>', html, re.S).group(0)
    links = re.findall(r'href="([^"]+)"', tabs)
    assert links == [
        "/account/", "/account/funds/", "/account/withdraw/", "/account/purchases/",
        "/account/orders/", "/account/ads/",
        "/account/ads/new/", "/account/sales/", "/account/api-key/", "/account/security/",
    ]  # fmt: skip
    for link in links:
        assert client.get(link).status_code == 200, link
    assert get_account(store, "seller").value["apiKey"] not in html


def test_pages_carry_no_inline_scripts_or_handlers(client, buyer):
    client.force_login(buyer)
    for url in ["/", URL, "/accounts/login/", "/accounts/register/"]:
        if url.startswith("/accounts/"):
            client.logout()
        html = client.get(url).content.decode()
        assert "<script>" not in html and " style=" not in html
        assert not re.search(r"\son[a-z]+=", html)
