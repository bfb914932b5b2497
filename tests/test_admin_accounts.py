from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts import locks
from accounts.adjust import adjust_balance
from accounts.admin import parse_signed_btc
from accounts.gateway import full_ledger, get_account

INSPECT = "/admin/accounts/inspect/"


def adjust_url(username: str) -> str:
    return f"/admin/accounts/adjust/{username}/"


def finish_url(username: str) -> str:
    return f"/admin/accounts/inspect/{username}/finish-lock/"


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def balance(store, username: str) -> int:
    return get_account(store, username).value["balance"]


@pytest.fixture
def alice(make_user):
    make_user("alice", balance=50_000_000)
    return "alice"


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def review(client, username: str, amount: str, reason: str = "goodwill"):
    return client.post(adjust_url(username), {"step": "review", "amount": amount, "reason": reason})


def confirmation_fields(response) -> dict:
    form = response.context["form"]
    return {"step": "confirm", **{name: form.initial[name] for name in form.fields}}


# --- access ---


@pytest.mark.parametrize(
    "url",
    [INSPECT, INSPECT + "?username=alice", adjust_url("alice"), finish_url("alice"), "/admin/"],
)
def test_anonymous_visitors_are_sent_to_the_admin_login(client, alice, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_a_non_staff_user_gets_no_access(client, alice, make_user, store):
    client.force_login(make_user("mallory"))
    for url in (INSPECT + "?username=alice", adjust_url("alice")):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))
    response = client.post(
        adjust_url("alice"),
        {"step": "confirm", "request_id": "x" * 24, "sats": 5, "reason": "steal"},
    )
    assert response.status_code == 302
    assert balance(store, "alice") == 50_000_000


def test_the_index_links_both_operations(staff_client):
    response = staff_client.get("/admin/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Operations" in page
    assert reverse("admin:accounts_inspect") in page
    assert reverse("admin:accounts_adjust_pick") in page


def test_the_user_model_is_in_the_admin(staff_client, alice):
    response = staff_client.get(reverse("admin:accounts_user_changelist"))
    assert response.status_code == 200
    assert "alice" in response.content.decode()


def test_a_user_added_in_the_admin_gets_an_account_document(staff_client, store):
    response = staff_client.post(
        reverse("admin:accounts_user_add"),
        {"username": "carol", "password1": "x-Very-long-pw-19", "password2": "x-Very-long-pw-19"},
    )
    assert response.status_code == 302
    assert balance(store, "carol") == 0


def test_usernames_cannot_be_changed_or_users_deleted(staff_client, alice):
    from accounts.models import User

    user = User.objects.get(username="alice")
    response = staff_client.get(reverse("admin:accounts_user_change", args=[user.pk]))
    assert 'name="username"' not in response.content.decode()
    response = staff_client.get(reverse("admin:accounts_user_delete", args=[user.pk]))
    assert response.status_code == 403


# --- inspector ---


def test_the_inspector_shows_balance_state_and_ledger(staff_client, alice, store, clock):
    adjust_balance(store, clock, "alice", -1, "a single sat back")
    response = staff_client.get(INSPECT, {"username": "alice"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "0.49999999 BTC (49999999 sats)" in page
    assert "state none" in page
    assert 'id="api-key" colspan="2">present' in page
    assert "No lock" in page
    rows = response.context["ledger_rows"]
    assert [r["reason"] for r in rows] == ["a single sat back", "test funding"]  # newest first
    assert rows[0]["delta_btc"] == "-0.00000001"


def test_the_ledger_is_paginated_100_a_page(staff_client, alice, store, clock):
    for i in range(150):
        adjust_balance(store, clock, "alice", 1, f"n{i}")
    assert len(full_ledger(store, "alice")) == 151
    first = staff_client.get(INSPECT, {"username": "alice"})
    assert len(first.context["ledger_rows"]) == 100
    assert first.context["ledger_rows"][0]["reason"] == "n149"
    second = staff_client.get(INSPECT, {"username": "alice", "page": 2})
    assert [r["reason"] for r in second.context["ledger_rows"]][-1] == "test funding"
    assert len(second.context["ledger_rows"]) == 51
    assert staff_client.get(INSPECT, {"username": "alice", "page": "zz"}).status_code == 200


def test_the_inspector_shows_a_lock_with_its_age(staff_client, alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS + 3)
    response = staff_client.get(INSPECT, {"username": "alice"})
    lock = response.context["lock"]
    assert (lock.kind, lock.ref, lock.age, lock.past_lease) == (
        "adjust",
        "adjust:x",
        settings.LOCK_LEASE_SECONDS + 3,
        True,
    )
    page = response.content.decode()
    assert "past the lease" in page and "Finish now" in page


@pytest.mark.parametrize("bad", ["", "a b", "x" * 33, "alice::x", "<script>", "é"])
def test_a_bad_username_gives_a_message_not_an_error(staff_client, bad):
    response = staff_client.get(INSPECT, {"username": bad})
    assert response.status_code == 200
    assert response.context["form"].errors
    assert "account" not in response.context


def test_an_unknown_username_says_so(staff_client, db):
    response = staff_client.get(INSPECT, {"username": "nobody"})
    assert response.status_code == 200
    assert "There is no account for" in response.content.decode()


# --- finish now ---


def test_finish_now_asks_first_then_rolls_a_stale_adjust_lock_forward(
    staff_client, alice, store, clock, caplog
):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    clock.advance(settings.LOCK_LEASE_SECONDS)
    page = staff_client.get(finish_url("alice"))
    assert page.status_code == 200
    assert get_account(store, "alice").value["lock"] is not None  # a GET changes nothing
    token = page.context["form"].initial["token"]
    with caplog.at_level(logging.INFO, logger="accounts.money"):
        response = staff_client.post(finish_url("alice"), {"token": token})
    assert response.status_code == 302
    account = get_account(store, "alice").value
    assert account["lock"] is None
    assert account["balance"] == 50_000_005
    assert account["ledger"][-1]["ref"] == "adjust:x"
    assert any("Finished the adjust lock" in t for t in texts(response))
    assert any("staff finish-lock" in r.message for r in caplog.records)

    again = staff_client.post(finish_url("alice"), {"token": token})
    assert any("no lock any more" in t for t in texts(again))
    assert balance(store, "alice") == 50_000_005


def test_finish_now_works_inside_the_lease_too(staff_client, alice, store, clock):
    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:y", delta=-5, reason="r")
    staff_client.post(finish_url("alice"), {"token": lock["token"]})
    assert balance(store, "alice") == 49_999_995


def test_finish_now_leaves_a_different_lock_alone(staff_client, alice, store, clock):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:z", delta=5, reason="r")
    response = staff_client.post(finish_url("alice"), {"token": "not-the-token"})
    assert any("another one holds the account" in t for t in texts(response))
    assert get_account(store, "alice").value["lock"]["ref"] == "adjust:z"


def test_finish_now_without_a_lock_says_so(staff_client, alice):
    response = staff_client.get(finish_url("alice"))
    assert response.status_code == 302
    assert any("nothing to finish" in t for t in texts(response))


# --- adjust ---


def test_a_credit_is_confirmed_then_applied(staff_client, alice, store, caplog):
    page = review(staff_client, "alice", "0.1", "refund for ad 7")
    assert page.status_code == 200
    assert "Credit 0.10000000 BTC to alice" in page.content.decode()
    assert "refund for ad 7" in page.content.decode()
    assert balance(store, "alice") == 50_000_000  # nothing before the confirmation
    with caplog.at_level(logging.INFO, logger="accounts.money"):
        response = staff_client.post(adjust_url("alice"), confirmation_fields(page))
    assert response.status_code == 302
    assert balance(store, "alice") == 60_000_000
    entry = get_account(store, "alice").value["ledger"][-1]
    assert entry["reason"] == "refund for ad 7" and entry["delta"] == 10_000_000
    assert any("Credited 0.10000000 BTC" in t for t in texts(response))
    assert [r for r in caplog.records if r.message.startswith("staff adjust by=staffer")]


@pytest.mark.parametrize(
    ("typed", "sats"),
    [("0.5", 50_000_000), (".5", 50_000_000), ("-1.", -100_000_000), (" -0.00000001 ", -1)],
)
def test_amounts_are_read_as_the_rest_of_the_site_reads_them(typed, sats):
    assert parse_signed_btc(typed) == sats


def test_a_debit_is_applied(staff_client, alice, store):
    page = review(staff_client, "alice", "-0.00000001")
    assert "Debit 0.00000001 BTC from alice" in page.content.decode()
    staff_client.post(adjust_url("alice"), confirmation_fields(page))
    assert balance(store, "alice") == 49_999_999


def test_a_debit_below_zero_is_refused_at_review(staff_client, alice, store):
    page = review(staff_client, "alice", "-0.50000001")
    assert page.status_code == 200
    assert "below zero" in page.content.decode()
    assert "request_id" not in page.content.decode()
    assert balance(store, "alice") == 50_000_000


def test_a_debit_below_zero_is_refused_at_confirmation(staff_client, alice, store, clock):
    page = review(staff_client, "alice", "-0.5")
    adjust_balance(store, clock, "alice", -1, "spent meanwhile")  # the balance moved under us
    before = get_account(store, "alice").value
    response = staff_client.post(adjust_url("alice"), confirmation_fields(page))
    assert response.status_code == 200
    assert any("below zero" in t and "Nothing was changed" in t for t in texts(response))
    assert get_account(store, "alice").value == before


def test_a_busy_account_is_refused_with_a_message(staff_client, alice, store, clock):
    page = review(staff_client, "alice", "0.1")
    locks.take_lock(store, clock, "alice", "adjust", "adjust:other", delta=1, reason="r")
    response = staff_client.post(adjust_url("alice"), confirmation_fields(page))
    assert any("in progress" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000


@pytest.mark.parametrize(
    "amount",
    ["0.000000001", "NaN", "nan", "Infinity", "1e5", "1E-3", "", "   ", "abc", "0", "1,5", "0x10",
     "1_000", "--1", "-+1", "+1", "-", "1 000", "٣", "21000000.00000001"],
)  # fmt: skip
def test_bad_amounts_are_refused(staff_client, alice, store, amount):
    page = review(staff_client, "alice", amount)
    assert page.status_code == 200
    assert page.context["form"].errors["amount"]
    assert "request_id" not in page.content.decode()
    assert balance(store, "alice") == 50_000_000


def test_a_reason_is_required(staff_client, alice, store):
    page = review(staff_client, "alice", "0.1", reason="  ")
    assert page.context["form"].errors["reason"]


def test_submitting_the_same_confirmation_twice_applies_once(staff_client, alice, store):
    page = review(staff_client, "alice", "0.25")
    fields = confirmation_fields(page)
    staff_client.post(adjust_url("alice"), fields)
    again = staff_client.post(adjust_url("alice"), fields)
    assert balance(store, "alice") == 75_000_000
    assert any("already applied" in t for t in texts(again))
    assert len(full_ledger(store, "alice")) == 2


def test_a_tampered_confirmation_is_refused(staff_client, alice, store):
    response = staff_client.post(
        adjust_url("alice"), {"step": "confirm", "request_id": "a b", "sats": "x", "reason": "r"}
    )
    assert response.status_code == 200
    assert any("incomplete" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000


@pytest.mark.parametrize("username", ["nobody", "bad!name", "x" * 40])
def test_adjusting_an_unknown_or_bad_username_redirects_with_a_message(staff_client, db, username):
    response = staff_client.get(adjust_url(username))
    assert response.status_code == 302
    assert texts(response)


def test_the_adjust_picker_goes_to_the_adjust_page(staff_client, alice):
    response = staff_client.get("/admin/accounts/adjust/", {"username": "alice"})
    assert response.status_code == 302 and response.url == adjust_url("alice")
    response = staff_client.get("/admin/accounts/adjust/", {"username": "no way"})
    assert response.status_code == 200 and response.context["form"].errors
