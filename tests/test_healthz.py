from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command

from accounts import nodes, shards

# /healthz asks the ORM database for a `SELECT 1`.
pytestmark = pytest.mark.django_db


def test_it_is_unhealthy_without_a_heartbeat(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["stale"] == ["run_workers"]


def node_beats(store, clock, name="w1", shard="0/1", leases=(), at=None):
    """A worker node as run_workers makes one: registered, then a heartbeat."""
    nodes.register(store, clock, name, shards.parse(shard), settings.WORKER_STALE_SECONDS)
    nodes.beat(store, name, clock.now() if at is None else at, shards.parse(shard), list(leases))


def test_it_is_healthy_with_a_fresh_heartbeat(client, store, clock):
    node_beats(store, clock)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["workers"] == {"w1": clock.now()}


def test_a_heartbeat_exactly_at_the_limit_is_still_fresh(client, store, clock):
    node_beats(store, clock)
    clock.advance(settings.WORKER_STALE_SECONDS)
    assert client.get("/healthz").status_code == 200


def test_it_turns_unhealthy_when_the_heartbeat_goes_stale(client, store, clock):
    node_beats(store, clock)
    clock.advance(settings.WORKER_STALE_SECONDS + 1)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "stale"
    assert response.json()["stale"] == ["w1"]


def test_a_worker_pass_makes_it_healthy(client, store, clock):
    call_command("run_workers", "--once", verbosity=0)
    assert client.get("/healthz").status_code == 200


def test_a_short_payout_wallet_is_a_detail_not_an_outage(client, store, clock):
    from bitcoinkeys import node_alerts

    node_beats(store, clock)
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
