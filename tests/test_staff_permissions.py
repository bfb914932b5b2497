"""Staff money actions need their own permission, never touch the actor's own account, go
through a confirmation that cannot be skipped or altered, and are logged with who did them."""

from __future__ import annotations

import logging
import re

import pytest
from django.contrib.auth.models import Permission

from accounts import locks
from accounts.gateway import get_account
from accounts.models import User
from tests.conftest import STAFF_TOTP_SECRET
from tests.test_admin_accounts import balance, texts
from tests.test_admin_pages import payouts, refund_url  # noqa: F401 - the payouts fixture

ADJUST_PAGE = "/admin/accounts/adjust/alice/"
FINISH = "/admin/accounts/inspect/alice/finish-lock/"


@pytest.fixture
def alice(make_user):
    make_user("alice", balance=50_000_000)
    return "alice"


@pytest.fixture
def make_staff(make_user):
    """A staff user (not a superuser) holding exactly the permissions named."""

    def make(username: str, *codenames: str) -> User:
        user = make_user(username)
        user.is_staff = True
        user.totp_secret = STAFF_TOTP_SECRET  # the admin needs 2FA
        user.save()
        for codename in codenames:
            user.user_permissions.add(Permission.objects.get(codename=codename))
        return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per object

    return make


def review(client, username: str = "alice", amount: str = "0.1", reason: str = "goodwill"):
    url = f"/admin/accounts/adjust/{username}/"
    return client.post(url, {"step": "review", "amount": amount, "reason": reason})


def confirmation(response) -> dict:
    return {"step": "confirm", "confirmation": response.context["form"].initial["confirmation"]}


# --- permissions -------------------------------------------------------------------------------


def test_staff_without_the_permission_cannot_adjust_and_is_logged(
    client, alice, store, make_staff, caplog
):
    client.force_login(make_staff("plain"))
    assert client.get(ADJUST_PAGE).status_code == 403
    assert client.get("/admin/accounts/adjust/").status_code == 403
    with caplog.at_level(logging.WARNING, logger="accounts.money"):
        response = client.post(
            ADJUST_PAGE, {"step": "confirm", "request_id": "x1", "sats": "100", "reason": "mine"}
        )
    assert response.status_code == 403
    assert balance(store, "alice") == 50_000_000
    assert any("refused by=plain" in r.message for r in caplog.records)


def test_staff_without_the_permission_cannot_finish_a_lock(client, alice, store, clock, make_staff):
    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:x", delta=5, reason="r")
    client.force_login(make_staff("plain", "adjust_balance"))
    assert client.post(FINISH, {"token": lock["token"]}).status_code == 403
    assert get_account(store, "alice").value["lock"]["token"] == lock["token"]


def test_staff_without_the_permission_cannot_refund_a_payout(client, store, payouts, make_staff):  # noqa: F811
    client.force_login(make_staff("plain", "adjust_balance", "finish_lock"))
    assert client.post(refund_url("alice", 1), {"confirm": "yes"}).status_code == 403
    assert store.get("withdraw::alice::1").value["state"] == "failed"


def test_each_permission_allows_its_own_action(client, alice, store, clock, make_staff, caplog):
    client.force_login(make_staff("adjuster", "adjust_balance"))
    page = review(client)
    with caplog.at_level(logging.INFO, logger="accounts.money"):
        client.post(ADJUST_PAGE, confirmation(page))
    assert balance(store, "alice") == 60_000_000
    assert any(r.message.startswith("staff adjust by=adjuster") for r in caplog.records)
    entry = get_account(store, "alice").value["ledger"][-1]
    assert entry["staff"] == "adjuster"

    lock = locks.take_lock(store, clock, "alice", "adjust", "adjust:y", delta=5, reason="r")
    client.force_login(make_staff("finisher", "finish_lock"))
    assert client.post(FINISH, {"token": lock["token"]}).status_code == 302
    assert get_account(store, "alice").value["lock"] is None


def test_the_pages_offer_only_what_the_staff_user_may_do(client, alice, store, clock, make_staff):
    locks.take_lock(store, clock, "alice", "adjust", "adjust:z", delta=5, reason="r")
    client.force_login(make_staff("plain"))
    page = client.get("/admin/accounts/inspect/", {"username": "alice"}).content.decode()
    assert "Adjust balance</a>" not in page and "Finish now" not in page
    index = client.get("/admin/").content.decode()
    assert "Account inspector" in index and "Adjust balance" not in index
    client.force_login(make_staff("both", "adjust_balance", "finish_lock"))
    page = client.get("/admin/accounts/inspect/", {"username": "alice"}).content.decode()
    assert "Adjust balance</a>" in page and "Finish now" in page


# --- own account --------------------------------------------------------------------------------


def test_nobody_adjusts_their_own_balance_not_even_a_superuser(client, staff, store, caplog):
    client.force_login(staff)
    with caplog.at_level(logging.WARNING, logger="accounts.money"):
        response = review(client, "StaffER", "1")
    assert response.status_code == 302
    assert any("own balance" in t for t in texts(response))
    assert any("own account" in r.message for r in caplog.records)
    assert balance(store, "staffer") == 0
    page = client.get("/admin/accounts/inspect/", {"username": "staffer"}).content.decode()
    assert "Adjust balance</a>" not in page


# --- the confirmation ----------------------------------------------------------------------------


def test_a_direct_confirm_post_without_the_review_changes_nothing(client, staff, alice, store):
    client.force_login(staff)
    forged = {"step": "confirm", "request_id": "forged1", "sats": "100000000", "reason": "r"}
    response = client.post(ADJUST_PAGE, forged)
    assert response.status_code == 200
    assert any("incomplete or altered" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000


def test_an_altered_confirmation_is_refused(client, staff, alice, store):
    client.force_login(staff)
    token = confirmation(review(client))["confirmation"]
    # Flip one character of the signed payload.
    i = 5
    altered = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    response = client.post(ADJUST_PAGE, {"step": "confirm", "confirmation": altered})
    assert any("altered" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000


def test_a_confirmation_is_only_good_for_its_account_and_its_staff_user(
    client, staff, alice, make_user, make_staff, store
):
    make_user("bob")
    client.force_login(staff)
    fields = confirmation(review(client))
    response = client.post("/admin/accounts/adjust/bob/", fields)
    assert any("another user or account" in t for t in texts(response))
    client.force_login(make_staff("other", "adjust_balance"))
    response = client.post(ADJUST_PAGE, fields)
    assert any("another user or account" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000 and balance(store, "bob") == 0


def test_a_confirmation_expires(client, staff, alice, store, clock, settings):
    client.force_login(staff)
    fields = confirmation(review(client))
    clock.advance(settings.ADJUST_CONFIRM_SECONDS + 1)
    response = client.post(ADJUST_PAGE, fields)
    assert any("expired" in t for t in texts(response))
    assert balance(store, "alice") == 50_000_000


def test_the_confirmation_page_carries_no_editable_amount(client, staff, alice):
    client.force_login(staff)
    page = review(client).content.decode()
    hidden = re.findall(r'<input type="hidden" name="(\w+)"', page)
    assert set(hidden) == {"confirmation", "csrfmiddlewaretoken", "step"}


# --- who may hand out powers --------------------------------------------------------------------


def test_a_staff_user_who_may_edit_users_cannot_grant_powers(client, make_staff, alice):
    editor = make_staff("editor", "change_user", "view_user")
    client.force_login(editor)
    url = f"/admin/accounts/user/{editor.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert 'name="user_permissions"' not in page.content.decode()
    assert 'name="is_superuser"' not in page.content.decode()
    perm = Permission.objects.get(codename="adjust_balance")
    client.post(url, {"username": "editor", "user_permissions": [perm.pk], "is_superuser": "on"})
    editor = User.objects.get(pk=editor.pk)
    assert not editor.is_superuser and not editor.has_perm("accounts.adjust_balance")


def test_a_staff_user_cannot_change_another_staff_user(client, make_staff, staff):
    client.force_login(make_staff("editor", "change_user", "view_user"))
    page = client.get(f"/admin/accounts/user/{staff.pk}/change/")
    assert 'name="email"' not in page.content.decode()  # view only
    response = client.get(f"/admin/accounts/user/{staff.pk}/password/")
    assert response.status_code == 403


def test_only_superusers_change_groups(client, make_staff):
    client.force_login(make_staff("editor", "add_group", "change_group", "view_group"))
    assert client.get("/admin/auth/group/add/").status_code == 403
