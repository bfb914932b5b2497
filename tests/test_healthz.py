from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command

from accounts.heartbeat import beat

# /healthz asks the ORM database for a `SELECT 1`.
pytestmark = pytest.mark.django_db


def test_it_is_unhealthy_without_a_heartbeat(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["stale"] == ["run_workers"]


def test_it_is_healthy_with_a_fresh_heartbeat(client, store, clock):
    beat(store, "run_workers", clock.now(), passes=1)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["workers"] == {"run_workers": clock.now()}


def test_a_heartbeat_exactly_at_the_limit_is_still_fresh(client, store, clock):
    beat(store, "run_workers", clock.now())
    clock.advance(settings.WORKER_STALE_SECONDS)
    assert client.get("/healthz").status_code == 200


def test_it_turns_unhealthy_when_the_heartbeat_goes_stale(client, store, clock):
    beat(store, "run_workers", clock.now())
    clock.advance(settings.WORKER_STALE_SECONDS + 1)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "stale"


def test_a_worker_pass_makes_it_healthy(client, store, clock):
    call_command("run_workers", "--once", verbosity=0)
    assert client.get("/healthz").status_code == 200


def test_a_short_payout_wallet_is_a_detail_not_an_outage(client, store, clock):
    from bitcoinkeys import node_alerts

    beat(store, "run_workers", clock.now())
    assert client.get("/healthz").json()["payouts"] == {"short": False}
    alert = {"waiting": 2, "waitingSats": 7_000_000, "balance": 1_000, "shortBy": 7_099_000}
    node_alerts.raise_short(store, clock, alert)
    response = client.get("/healthz")
    assert response.status_code == 200  # the site is healthy; the requests wait safely
    assert response.json()["payouts"] == {
        "short": True,
        "waiting": 2,
        "waiting_sats": 7_000_000,
        "balance_sats": 1_000,
        "short_by_sats": 7_099_000,
        "since": clock.now(),
    }
