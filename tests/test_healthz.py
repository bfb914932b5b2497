from __future__ import annotations

from django.conf import settings
from django.core.management import call_command

from accounts.heartbeat import beat


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
