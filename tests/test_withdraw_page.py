"""The Withdraw tab: the form, its preview without JS, "withdraw everything", every refusal
(with nothing written), the list of my requests and cancelling them."""

from __future__ import annotations

import re

import pytest

from accounts import locks
from accounts.gateway import get_account
from bitcoinkeys import payouts as p
from bitcoinkeys import withdraw_views
from bitcoinkeys import withdrawals as w
from bitcoinkeys.gateway import withdraw_key
from docstore import Ambiguous, TemporaryFailure
from tests.test_withdrawals import (
    ADDR_A,
    ADDR_B,
    MAINNET,
    MIN,
    FakeChain,
    _withdrawals_registered,  # noqa: F401  (autouse: registers finishers, recovery and audit)
)

pytestmark = pytest.mark.django_db

URL = "/account/withdraw/"
BALANCE = 10_000_000


@pytest.fixture
def alice(make_user):
    return make_user("alice", balance=BALANCE)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def post(client, **data):
    return client.post(URL, {"action": "withdraw", **data})


def balance(store, name="alice") -> int:
    return get_account(store, name).value["balance"]


def amount_value(html: str) -> str:
    return re.search(r'name="amount"[^>]*value="([^"]*)"', html).group(1)


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/?next=/account/withdraw/")


def test_the_page_shows_balance_fee_minimum_and_the_most_i_can_withdraw(alice_client):
    html = alice_client.get(URL).content.decode()
    assert "0.10000000" in html  # balance
    assert "1.5% fee" in html
    assert "0.03000000" in html  # minimum
    top = w.max_withdrawal(BALANCE)
    assert f'The most you can withdraw is <span class="amount">{top // 10**8}.' in html
    assert 'data-fee-permille="15"' in html and f'data-max-amount="{top}"' in html
    assert 'class="active" aria-current="page">Withdraw</a>' in html
    assert "js/withdraw.js" in html
    assert "No withdrawals yet." in html


def test_the_page_carries_no_inline_script_or_handler(alice_client):
    html = alice_client.get(URL).content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+=", html)
    assert "style=" not in html


def test_a_low_balance_says_so(client, make_user):
    client.force_login(make_user("poor", balance=MIN))
    assert "Your balance is too low to withdraw" in client.get(URL).content.decode()


def test_preview_shows_fee_and_total_and_writes_nothing(alice_client, store):
    before = store.dump()
    response = alice_client.post(URL, {"action": "preview", "amount": "0.05", "address": ADDR_A})
    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="amount" data-role="fee">0.00075000</span>' in html
    assert '<span class="amount" data-role="total">0.05075000</span>' in html
    assert store.dump() == before


def test_preview_of_too_much_shows_the_fee_and_the_error(alice_client, store):
    response = alice_client.post(URL, {"action": "preview", "amount": "0.2", "address": ""})
    html = response.content.decode()
    assert response.status_code == 400
    assert "You can withdraw at most" in html
    assert '<span class="amount" data-role="fee">0.00300000</span>' in html


def test_withdraw_everything_fills_in_the_largest_amount_and_sends_nothing(alice_client, store):
    before = store.dump()
    response = alice_client.post(URL, {"action": "max", "amount": "", "address": ADDR_A})
    html = response.content.decode()
    top = w.max_withdrawal(BALANCE)
    assert amount_value(html) == f"0.{top:08d}"
    assert ADDR_A in html
    fee = w.withdrawal_fee(top)
    assert f'data-role="total">0.{top + fee:08d}</span>' in html
    assert top + fee <= BALANCE < top + 1 + w.withdrawal_fee(top + 1)
    assert store.dump() == before


def test_a_withdrawal_is_queued_and_listed(alice_client, store, clock):
    response = post(alice_client, amount="0.05", address=ADDR_A)
    assert response.status_code == 302 and response.url == URL
    html = alice_client.get(URL).content.decode()
    assert "Withdrawal #0 of 0.05000000 BTC queued" in html
    assert balance(store) == BALANCE - 5_000_000 - 75_000
    req = store.get(withdraw_key("alice", 0)).value
    assert (req["amount"], req["address"], req["state"]) == (5_000_000, ADDR_A, "queued")
    assert 'id="withdrawal-0" data-state="queued"' in html
    assert f"<code>{ADDR_A}</code>" in html
    assert 'action="/account/withdraw/0/cancel/"' in html


def test_the_list_shows_the_txid_and_history_once_sent(alice_client, store, clock):
    post(alice_client, amount="0.05", address=ADDR_A)
    chain = FakeChain(store)
    clock.advance(3600)
    p.process(store, clock, chain)
    html = alice_client.get(URL).content.decode()
    txid = chain.sends[0]["txid"]
    assert f"txid <code>{txid}</code>" in html
    for label in ("Queued", "Sending", "Sent"):
        assert f" {label}</li>" in html
    assert "/account/withdraw/0/cancel/" not in html  # no Cancel once it left


def test_a_failed_withdrawal_shows_its_error_and_refund(alice_client, store, clock):
    post(alice_client, amount="0.05", address=ADDR_A)
    FakeChain(store).configure(refuse=[ADDR_A])
    p.process(store, clock, FakeChain(store))
    html = alice_client.get(URL).content.decode()
    assert "Failed and refunded" in html and "Invalid address for this wallet" in html
    assert balance(store) == BALANCE


# --- refusals: each named, nothing written -----------------------------------------------------

BAD_INPUTS = [
    ({"amount": "0.02999999", "address": ADDR_A}, "The minimum is 0.03000000 BTC."),
    ({"amount": "0.1", "address": ADDR_A}, "You can withdraw at most 0.09852216 BTC including"),
    ({"amount": "0.050000001", "address": ADDR_A}, "at most 8 decimal places"),
    ({"amount": "-0.05", "address": ADDR_A}, "The amount cannot be negative."),
    ({"amount": "NaN", "address": ADDR_A}, "not NaN or infinity"),
    ({"amount": "5e-2", "address": ADDR_A}, "without an exponent"),
    ({"amount": "0,05", "address": ADDR_A}, "with a dot for decimals"),
    ({"amount": "", "address": ADDR_A}, "Enter an amount in BTC."),
    ({"amount": "0.05", "address": MAINNET}, "This is a mainnet address; this site uses regtest"),
    ({"amount": "0.05", "address": ADDR_A[:-1] + "x"}, "Bad checksum"),
    ({"amount": "0.05", "address": ADDR_A[:10] + " " + ADDR_A[10:]}, "contains spaces"),
    ({"amount": "0.05", "address": ADDR_A[:-6]}, "Bad checksum"),
    ({"amount": "0.05", "address": "bcrt1q"}, "truncated"),
    ({"amount": "0.05", "address": ""}, "Enter the bitcoin address to send the money to."),
    ({"amount": "0.05", "address": "x" * 101}, "That is too long to be a bitcoin address."),
]


@pytest.mark.parametrize(("data", "message"), BAD_INPUTS)
def test_every_bad_input_is_named_and_nothing_is_written(alice_client, store, data, message):
    before = store.dump()
    response = post(alice_client, **data)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html, html[html.find("errorlist") - 200 : html.find("errorlist") + 400]
    assert store.dump() == before


def test_surrounding_whitespace_of_a_pasted_address_is_forgiven(alice_client, store):
    response = post(alice_client, amount="0.05", address=f"  {ADDR_A}\n")
    assert response.status_code == 302
    assert store.get(withdraw_key("alice", 0)).value["address"] == ADDR_A


def test_a_second_tab_cannot_overspend(alice_client, store):
    assert post(alice_client, amount="0.06", address=ADDR_A).status_code == 302
    before = store.dump()
    # The second tab still shows the old balance; the server checks the new one.
    response = post(alice_client, amount="0.06", address=ADDR_B)
    assert response.status_code == 400
    assert "You can withdraw at most 0.03852216 BTC including the fee" in response.content.decode()
    assert store.dump() == before


def test_a_busy_account_asks_to_try_again(alice_client, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:z", delta=1, reason="r")
    before = store.dump()
    response = post(alice_client, amount="0.05", address=ADDR_A)
    assert response.status_code == 409
    assert "Another operation on your account is in progress" in response.content.decode()
    assert store.dump() == before


@pytest.mark.parametrize("error", [Ambiguous, TemporaryFailure])
def test_an_unknown_outcome_is_a_503_that_promises_completion_or_undo(
    alice_client, monkeypatch, error
):
    def fail(*args):
        raise error("timeout")

    monkeypatch.setattr(withdraw_views.w, "request_withdrawal", fail)
    response = post(alice_client, amount="0.05", address=ADDR_A)
    assert response.status_code == 503
    assert "will complete or be undone automatically" in response.content.decode()


# --- cancelling --------------------------------------------------------------------------------


def cancel(client, i):
    return client.post(f"/account/withdraw/{i}/cancel/", follow=True)


def test_cancel_refunds_and_a_second_cancel_changes_nothing(alice_client, store):
    post(alice_client, amount="0.05", address=ADDR_A)
    response = cancel(alice_client, 0)
    html = response.content.decode()
    assert "Withdrawal #0 cancelled; 0.05075000 BTC went back to your balance." in html
    assert "Cancelled and refunded" in html
    assert balance(store) == BALANCE
    before = store.dump()
    html = cancel(alice_client, 0).content.decode()
    assert "This withdrawal was already cancelled" in html
    assert store.dump() == before


def test_a_withdrawal_being_sent_cannot_be_cancelled(alice_client, store, clock):
    post(alice_client, amount="0.05", address=ADDR_A)
    p.process(store, clock, FakeChain(store).configure(faults=[("send", "timeout-after-send")]))
    before = store.dump()
    html = cancel(alice_client, 0).content.decode()
    assert "already being sent and can no longer be cancelled" in html
    assert store.dump() == before


def test_someone_elses_withdrawal_is_not_found(client, alice_client, store, make_user):
    post(alice_client, amount="0.05", address=ADDR_A)
    client.force_login(make_user("mallory", balance=BALANCE))
    before = store.dump()
    response = client.post("/account/withdraw/0/cancel/")
    assert response.status_code == 404
    assert "There is no such withdrawal." in response.content.decode()
    assert store.dump() == before


def test_an_absurd_number_is_not_found(alice_client):
    assert alice_client.post(f"/account/withdraw/{10**30}/cancel/").status_code == 404


def test_cancel_takes_post_only(alice_client, store):
    post(alice_client, amount="0.05", address=ADDR_A)
    assert alice_client.get("/account/withdraw/0/cancel/").status_code == 405
    assert store.get(withdraw_key("alice", 0)).value["state"] == "queued"


def test_cancel_requires_login(client):
    response = client.post("/account/withdraw/0/cancel/")
    assert response.status_code == 302 and "/accounts/login/" in response.url


def test_the_same_form_submitted_twice_queues_one_withdrawal(client, store, buyer):
    import re as _re

    client.force_login(buyer)
    page = client.get("/account/withdraw/").content.decode()
    token = _re.search(r'name="submission" value="([0-9a-f]{32})"', page).group(1)
    form = {"amount": "0.03", "address": "bcrt1qcwt06jpdw6lz27evpt668nhdj0h42h5hqvfkqv",
            "submission": token}  # fmt: skip
    first = client.post("/account/withdraw/", form, follow=True)
    second = client.post("/account/withdraw/", form, follow=True)
    assert "queued" in first.content.decode()
    assert "already submitted" in second.content.decode()
    assert [k for k in store.dump() if k.startswith("withdraw::buyer::")] == ["withdraw::buyer::0"]


def test_withdrawal_requests_are_rate_limited_per_user(client, store, buyer, settings):
    settings.WITHDRAW_RATE_LIMIT = 1
    client.force_login(buyer)
    form = {"amount": "0.03", "address": "bcrt1qcwt06jpdw6lz27evpt668nhdj0h42h5hqvfkqv"}
    client.post("/account/withdraw/", form)
    before = store.dump()
    response = client.post("/account/withdraw/", form)
    assert response.status_code == 429
    assert "many withdrawals" in response.content.decode()
    assert store.dump() == before
