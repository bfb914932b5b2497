"""Seller webhooks: signed events reach a real receiver on 127.0.0.1 in order (sale -> credit,
rejection -> refund), failed deliveries are retried with backoff and given up after 24 h, the
page registers a URL (secret shown once), rotates it and sends a test event, SSRF targets are
refused, and bad form input is a 4xx that writes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from accounts.recovery import run_recovery
from adspace import credit, gateway, notices, review, webhooks
from tests import test_buy_faults as buy_faults
from tests.harness import Scenario, run_crash_points
from tests.test_sales_page import campaign_with_sales

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 recording each POST; answers with `statuses` in turn (then 200)."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append({"headers": dict(self.headers), "body": body})
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def types(self) -> list[str]:
        return [json.loads(r["body"])["type"] for r in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver does (as README shows)."""
    parts = dict(p.split("=", 1) for p in headers["X-Adspace-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


def deliver(store, clock):
    return webhooks.deliver_pending(store, clock)


def test_a_sale_and_its_credit_arrive_signed_and_in_order(store, clock, seller, receiver):
    secret = webhooks.set_url(store, clock, "seller", receiver.url)
    n = campaign_with_sales(store, clock, "seller", sales=1)
    credit.credit_all(store, clock)
    assert deliver(store, clock)["delivered"] == 3
    assert receiver.types() == ["sale", "slot.started", "credit"]
    for r in receiver.received:
        assert verify(secret, r["headers"], r["body"])
        assert r["headers"]["X-Adspace-Event-Id"] == json.loads(r["body"])["id"]
    sale = json.loads(receiver.received[0]["body"])
    assert sale["id"] == f"sale:seller:{n}:0" and sale["data"]["buyer"] == "b0"
    assert json.loads(receiver.received[2]["body"])["data"]["net"] == 300_000 - 4_500
    # Another pass, or the sale finished again by recovery, sends and queues nothing more.
    credit.credit_all(store, clock)
    assert deliver(store, clock) == {}
    assert len(receiver.received) == 3
    assert [a["ok"] for a in webhooks.delivery_log(store, "seller")] == [True] * 3


def test_a_rejection_and_its_refund_arrive_in_order(store, clock, seller, receiver, settings):
    settings.REVIEW_HOURS = 24
    webhooks.set_url(store, clock, "seller", receiver.url)
    n = campaign_with_sales(store, clock, "seller", sales=1)
    review.reject_sale(store, clock, "seller", "seller", n, 0, "off topic")
    credit.credit_all(store, clock)
    deliver(store, clock)
    assert receiver.types() == ["sale", "slot.started", "review.rejected", "refund"]
    refund = json.loads(receiver.received[3]["body"])["data"]
    assert refund == {"campaign": n, "slot": 0, "buyer": "b0", "amount": 300_000}


def test_a_queued_slot_start_is_sent_at_its_start(store, clock, seller, receiver):
    webhooks.set_url(store, clock, "seller", receiver.url)
    n = campaign_with_sales(store, clock, "seller", sales=2)
    deliver(store, clock)
    assert receiver.types() == ["sale", "slot.started", "sale"]  # slot 0 live at once
    starts = store.get(gateway.slot_key("seller", n, 1)).value["startsAt"]
    clock.set(starts - 300)
    assert notices.queue_slot_notices(store, clock)["queued"] == 1
    assert deliver(store, clock) == {"waiting": 1}
    clock.set(starts)
    assert deliver(store, clock) == {"delivered": 1}
    last = json.loads(receiver.received[-1]["body"])
    assert last["type"] == "slot.started" and last["data"]["slot"] == 1
    notices.queue_slot_notices(store, clock)
    assert deliver(store, clock) == {} and len(receiver.received) == 4


def test_a_seller_without_a_webhook_gets_no_events(store, clock, seller):
    campaign_with_sales(store, clock, "seller", sales=1)
    assert not [k for k in store.dump() if k.startswith("hook")]


def test_a_failed_delivery_is_retried_with_backoff_then_succeeds(store, clock, seller, receiver):
    webhooks.set_url(store, clock, "seller", receiver.url)
    receiver.statuses = [500, 503]
    webhooks.queue_test(store, clock, "seller")
    assert deliver(store, clock) == {"retry": 1}
    assert deliver(store, clock) == {"waiting": 1}  # not before its backoff
    clock.advance(webhooks.backoff(1))
    assert deliver(store, clock) == {"retry": 1}
    clock.advance(webhooks.backoff(2) - 1)
    assert deliver(store, clock) == {"waiting": 1}
    clock.advance(1)
    assert deliver(store, clock) == {"delivered": 1}
    ids = {r["headers"]["X-Adspace-Event-Id"] for r in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1  # one event, deduplicable
    log = webhooks.delivery_log(store, "seller")
    assert [a["status"] for a in log] == [200, 503, 500]  # newest first


def test_delivery_gives_up_after_24_hours(store, clock, seller, receiver):
    webhooks.set_url(store, clock, "seller", receiver.url)
    receiver.statuses = [500] * 100
    webhooks.queue_test(store, clock, "seller")
    start = clock.now()
    for _ in range(60):
        counters = deliver(store, clock)
        if counters.get("failed"):
            break
        clock.advance(webhooks.RETRY_CAP_SECONDS)
    assert counters == {"failed": 1}
    assert clock.now() - start < webhooks.GIVE_UP_SECONDS
    tries = len(receiver.received)
    assert 20 <= tries < 40  # 30 s, 60 s ... capped at an hour
    clock.advance(2 * webhooks.GIVE_UP_SECONDS)
    assert deliver(store, clock) == {}
    assert len(receiver.received) == tries


def test_the_page_registers_a_url_and_shows_the_secret_once(client, seller, store, receiver):
    client.force_login(seller)
    response = client.post("/account/webhook/", {"action": "url", "url": receiver.url})
    assert response.status_code == 200
    secret = store.get("hookcfg::seller").value["secret"]
    assert secret in response.content.decode()
    page = client.get("/account/webhook/").content.decode()
    assert secret not in page and receiver.url in page
    # Changing the URL keeps the secret and does not show it.
    response = client.post("/account/webhook/", {"action": "url", "url": receiver.url + "/v2"})
    assert response.status_code == 302
    assert store.get("hookcfg::seller").value["secret"] == secret
    assert secret not in client.get("/account/webhook/").content.decode()


def test_rotating_the_secret_signs_with_the_new_one(client, seller, store, clock, receiver):
    client.force_login(seller)
    old = webhooks.set_url(store, clock, "seller", receiver.url)
    response = client.post("/account/webhook/", {"action": "rotate"})
    new = store.get("hookcfg::seller").value["secret"]
    assert new != old and new in response.content.decode()
    client.post("/account/webhook/", {"action": "test"})
    deliver(store, clock)
    [r] = receiver.received
    assert verify(new, r["headers"], r["body"]) and not verify(old, r["headers"], r["body"])


def test_the_test_button_sends_a_test_event_through_the_worker(
    client, seller, store, clock, receiver
):
    client.force_login(seller)
    webhooks.set_url(store, clock, "seller", receiver.url)
    assert client.post("/account/webhook/", {"action": "test"}).status_code == 302
    assert receiver.received == []  # never on the request
    deliver(store, clock)
    assert receiver.types() == ["test"]
    page = client.get("/account/webhook/").content.decode()
    assert "HTTP 200" in page and 'class="attempt attempt-ok"' in page


def test_the_test_button_without_a_url_is_refused(client, seller, store):
    client.force_login(seller)
    before = store.dump()
    assert client.post("/account/webhook/", {"action": "test"}).status_code == 400
    assert store.dump() == before


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "https://user:pw@example.com/",
        "https://exa mple.com/",
        "https://example.com/ hook",
        "https://example.com/" + "a" * 10_000,
        "ftp://example.com/",
        "https://",
        "https://example.com:99999/",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:192.168.0.1]/",
        "",
    ],
)
def test_bad_urls_are_refused_and_nothing_is_written(client, seller, store, url):
    client.force_login(seller)
    before = store.dump()
    response = client.post("/account/webhook/", {"action": "url", "url": url})
    assert response.status_code == 400 or response.status_code == 413
    assert store.dump() == before


def test_http_is_refused_in_production(settings):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    with pytest.raises(webhooks.BadUrl):
        webhooks.clean_url("http://example.com/hook")
    assert webhooks.clean_url("https://example.com/hook") == "https://example.com/hook"


@pytest.mark.parametrize(
    "host",
    ["10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "127.0.0.1", "localhost",
     "100.64.0.1", "224.0.0.1", "0.0.0.0"],  # noqa: S104
)  # fmt: skip
def test_delivery_refuses_internal_addresses_after_dns(settings, host):
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    with pytest.raises(webhooks.Refused):
        webhooks.post(f"https://{host}/hook", b"{}", {})


def test_a_name_resolving_to_loopback_is_refused_at_delivery(
    store, clock, seller, receiver, settings
):
    port = receiver.server.server_address[1]
    webhooks.set_url(store, clock, "seller", f"http://localhost:{port}/hooks")
    webhooks.queue_test(store, clock, "seller")
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    assert deliver(store, clock) == {"retry": 1}
    assert receiver.received == []
    [attempt] = webhooks.delivery_log(store, "seller")
    assert attempt["error"].startswith("refused:") and attempt["status"] is None


def _webhook_buy_setup(store, clock):
    webhooks.set_url(store, clock, "sam", "https://hooks.example.com/")
    return buy_faults.setup(store, clock)


def _every_sale_has_its_event(world) -> None:
    buy_faults.check(world)
    n = world.ctx["n"]
    last = gateway.get_campaign(world.store, "sam", n).value["last"]["slot"]
    events = {k for k in world.store.dump() if k.startswith("hook::sam::sale:")}
    assert events == {webhooks.event_key("sam", f"sale:sam:{n}:{k}") for k in range(last + 1)}


def test_a_crash_anywhere_in_a_buy_neither_loses_nor_doubles_its_sale_event(make_world_store):
    scenario = Scenario(
        "buy with webhook", _webhook_buy_setup, buy_faults.bob_buys, run_recovery,
        _every_sale_has_its_event, expected=buy_faults.EXPECTED,
    )  # fmt: skip
    assert run_crash_points(scenario, make_world_store) > 100
