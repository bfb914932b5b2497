"""GET /api/v1/ads/<user>/<n>/current: the live ad for the seller's server, by the seller's key."""

from __future__ import annotations

import logging
import re

import pytest
from django.conf import settings
from django.urls import include, path

import docstore
from accounts import apikey_views, apikeys
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from adspace import api, buy, delivery, gateway, pricing, serving
from docstore import TemporaryFailure
from tests.conftest import T0

# Until config/urls.py includes adspace.serving_urls (and accounts/urls.py the key tab), these
# tests mount them themselves; once it does, the duplicates below are simply never reached.
urlpatterns = [
    path("", include("config.urls")),
    path("", include("adspace.serving_urls")),
    path("account/api-key/", apikey_views.api_key, name="api_key"),
]
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

M = 100_000
HUGE = 10**12
DAY = 24 * 3600
SHA = "ab" * 32
URL = "/api/v1/ads/sam/0/current"


def make_world(store, clock) -> int:
    """Seller sam with campaign 0 (300x250); buyers bob and cat, each with one fitting ad."""
    ensure_account(store, clock, "sam")
    n = gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    gateway.store_image(store, SHA, "image/png", "png", b"not really a png", 300, 250)
    for name in ("bob", "cat"):
        ensure_account(store, clock, name)
        adjust_balance(store, clock, name, 10**10, "funding")
        gateway.create_filler(
            store, clock, name, "main", f"{name} says <b>hi</b> & \"bye\"",
            f"https://{name}.test/landing?a=1&b=2", 300, 250, SHA,
        )  # fmt: skip
    return n


@pytest.fixture
def world(store, clock):
    return make_world(store, clock)


@pytest.fixture
def key(store, world):
    return get_account(store, "sam").value["apiKey"]


def sell(store, clock, buyer="bob", n=0):
    return buy.buy_next_slot(store, clock, buyer, "sam", n, 0, HUGE)


def ask(client, key, url=URL, **headers):
    return client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}", **headers)


def max_age(response) -> int:
    return int(re.search(r"max-age=(\d+)", response["Cache-Control"]).group(1))


# --- keys ---------------------------------------------------------------------------------------


def test_a_missing_key_is_401_with_a_json_error(client, world):
    response = client.get(URL)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "API key" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["Cache-Control"] == "no-store"


def test_a_wrong_key_is_403(client, world, key):
    response = ask(client, key[:-1] + ("x" if key[-1] != "x" else "y"))
    assert response.status_code == 403
    assert "Invalid API key" in response.json()["error"]


def test_another_sellers_key_is_403(client, store, clock, world):
    ensure_account(store, clock, "zed")
    other = get_account(store, "zed").value["apiKey"]
    assert ask(client, other).status_code == 403


def test_an_old_key_stops_working_at_once(client, store, clock, world, key):
    sell(store, clock)
    assert ask(client, key).status_code == 200
    new = apikeys.regenerate_api_key(store, "sam")
    assert ask(client, key).status_code == 403
    assert ask(client, new).status_code == 200


def test_the_key_may_come_in_the_query_string(client, world, key):
    assert client.get(f"{URL}?key={key}").status_code == 200
    assert client.get(f"{URL}?key=nope").status_code == 403


def test_the_image_url_is_on_site_url_whatever_host_and_port_were_asked(
    client, store, clock, world, key
):
    sell(store, clock)
    for host in ("localhost", "127.0.0.1:6666", "testserver:8443"):
        image = ask(client, key, HTTP_HOST=host).json()["ad"]["image"]
        assert image == f"http://testserver/img/{SHA}.png"


def test_a_changed_site_url_is_followed_at_once(client, store, clock, world, key, settings):
    sell(store, clock)
    assert ask(client, key).json()["ad"]["image"].startswith("http://testserver/")
    settings.SITE_URL = "https://ads.example.com"
    assert ask(client, key).json()["ad"]["image"].startswith("https://ads.example.com/img/")


def test_a_non_bearer_authorization_is_no_key(client, world, key):
    response = client.get(URL, HTTP_AUTHORIZATION=f"Basic {key}")
    assert response.status_code == 401


def test_odd_keys_are_refused_not_crashed_on(client, world):
    for odd in ("ключ", "a" * 1000, "\x00", "%00"):
        assert client.get(URL, {"key": odd}).status_code == 403


# --- paths and query strings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/ads/sam/1/current",
        "/api/v1/ads/sam/07/current",
        "/api/v1/ads/sam/-1/current",
        "/api/v1/ads/sam/+0/current",
        "/api/v1/ads/sam/99999999999/current",
        "/api/v1/ads/s%20am/0/current",
        "/api/v1/ads/sam/../current",
        "/api/v1/ads/../ads/sam/0/current",
        "/api/v1/ads/sam/0/../0/current",
        "/api/v1/ads/sam/0/current/extra",
        "/api/v1/ads/sam%2F1/0/current",
        "/api/v1/ads/s%C3%A4m/0/current",
        "/api/v1/nothing",
        "/api/",
    ],
)
def test_bad_paths_are_json_404s(client, world, key, url):
    response = ask(client, key, url)
    assert response.status_code == 404
    assert "error" in response.json()
    assert response["Access-Control-Allow-Origin"] == "*"


def test_an_encoded_slash_in_the_raw_path_is_refused(client, store, clock, world, key):
    sell(store, clock)
    # Behind gunicorn RAW_URI keeps what WSGI's PATH_INFO decodes away.
    raw = "/api/v1/ads/sam/0%2Fcurrent"
    response = ask(client, key, "/api/v1/ads/sam/0/current", RAW_URI=raw)
    assert response.status_code == 404
    assert "ad" not in response.json()


def test_a_huge_query_string_is_a_json_400(client, world, key):
    response = ask(client, key, URL + "?x=" + "a" * 10_000)
    assert response.status_code == 400
    assert "too long" in response.json()["error"]


def test_too_many_query_fields_is_a_json_400(client, world, key):
    response = client.get(URL + "?" + "&".join(["k"] * 1001))
    assert response.status_code == 400
    assert "too many" in response.json()["error"]


def test_other_methods_get_a_json_405(client, world, key):
    response = client.post(URL, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, OPTIONS"
    assert "error" in response.json()


# --- answers ------------------------------------------------------------------------------------


def test_the_live_ad_with_its_slot(client, store, clock, world, key):
    sale = sell(store, clock)
    clock.advance(600)
    response = ask(client, key)
    assert response.status_code == 200
    slot = store.get(gateway.slot_key("sam", 0, 0)).value
    click = delivery.token(delivery.CLICK, "sam", 0, 0, slot)
    beacon = delivery.token(delivery.IMPRESSION, "sam", 0, 0, slot)
    assert response.json() == {
        "ad": {
            "url": "https://bob.test/landing?a=1&b=2",
            "clickUrl": f"http://testserver/c/{click}",
            "impressionUrl": f"http://testserver/i/{beacon}",
            "counted": {"clicks": "clickUrl", "impressions": "impressionUrl"},
            "hoverText": 'bob says <b>hi</b> & "bye"',
            "image": f"http://testserver/img/{SHA}.png",
            "width": 300,
            "height": 250,
        },
        "slot": {
            "index": 0,
            "startsAt": T0,
            "endsAt": T0 + DAY,
            "startsAtIso": "2023-11-14T22:13:20Z",
            "endsAtIso": "2023-11-15T22:13:20Z",
        },
    }
    assert response["Cache-Control"] == f"private, max-age={sale.ends_at - clock.now()}"
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["ETag"].startswith('"')


def test_no_ad_gives_the_campaign_page_and_the_price(client, world, key):
    response = ask(client, key)
    assert response.status_code == 200
    assert response.json() == {
        "ad": None,
        "campaignUrl": "http://testserver/ads/buy-ad-space/sam/0",
        "price": M,
        "priceBtc": "0.00100000",
    }
    assert max_age(response) == api.NO_AD_MAX_AGE


def test_max_age_runs_to_the_slot_end(client, store, clock, world, key):
    sale = sell(store, clock)
    clock.set(sale.ends_at - 1)
    response = ask(client, key)
    assert response.json()["slot"]["index"] == 0
    assert max_age(response) == 1
    clock.set(sale.ends_at)
    response = ask(client, key)
    assert response.json()["ad"] is None
    assert max_age(response) == api.NO_AD_MAX_AGE
    clock.set(sale.ends_at + 1)
    assert ask(client, key).json()["ad"] is None


def test_max_age_stops_at_the_next_slots_early_switch(client, store, clock, world, key):
    first = sell(store, clock)
    second = sell(store, clock, "cat")
    response = ask(client, key)
    assert max_age(response) == first.ends_at - 30 - T0
    clock.set(second.starts_at - 31)
    response = ask(client, key)
    assert response.json()["slot"]["index"] == 0
    assert response.json()["ad"]["url"].startswith("https://bob.test/")
    assert max_age(response) == 1
    clock.set(second.starts_at - 30)
    response = ask(client, key)
    assert response.json()["slot"]["index"] == 1
    assert response.json()["ad"]["url"].startswith("https://cat.test/")
    assert max_age(response) == second.ends_at - clock.now()


def test_no_ad_max_age_is_shorter_when_a_slot_is_about_to_start(client, store, clock, world):
    # Not reachable through the buy protocol (a sale starts now at the latest), but the answer
    # must still expire at the switch if a slot is queued while nothing shows.
    answer = serving.Showing(None, None, T0 + 20)
    assert api._seconds_until(answer.until, T0, api.NO_AD_MAX_AGE) == 20


def test_an_etag_match_is_304(client, store, clock, world, key):
    sell(store, clock)
    first = ask(client, key)
    etag = first["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = ask(client, key, HTTP_IF_NONE_MATCH=header)
        assert response.status_code == 304, header
        assert response.content == b""
        assert response["ETag"] == etag
        assert response["Access-Control-Allow-Origin"] == "*"
        assert max_age(response) == max_age(first)
    assert ask(client, key, HTTP_IF_NONE_MATCH='"other"').status_code == 200


def test_the_etag_changes_with_the_ad(client, store, clock, world, key):
    first = sell(store, clock)
    sell(store, clock, "cat")
    before = ask(client, key)["ETag"]
    clock.set(first.ends_at - 30)
    assert ask(client, key, HTTP_IF_NONE_MATCH=before).status_code == 200


def test_cors_preflight(client, world):
    response = client.options(URL, HTTP_ORIGIN="https://seller.test")
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response["Access-Control-Allow-Methods"]
    assert "Authorization" in response["Access-Control-Allow-Headers"]


def test_head_is_answered_like_get(client, store, clock, world, key):
    sell(store, clock)
    response = client.head(URL, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert response.content == b""


# --- the allowance per slot ---------------------------------------------------------------------


def test_the_51st_request_in_a_slot_is_429_and_the_next_slot_resets_it(
    client, store, clock, world, key
):
    first = sell(store, clock)
    second = sell(store, clock, "cat")
    for _ in range(settings.API_REQUESTS_PER_SLOT):
        assert ask(client, key).status_code == 200
    refused = ask(client, key)
    assert refused.status_code == 429
    assert "50" in refused.json()["error"]
    assert int(refused["Retry-After"]) == first.ends_at - 30 - clock.now()
    assert refused["Access-Control-Allow-Origin"] == "*"
    # A revalidation of the answer the client holds is a free 304, even past the allowance.
    assert ask(client, key, HTTP_IF_NONE_MATCH="*").status_code == 304
    clock.set(second.starts_at - 30)
    assert ask(client, key).status_code == 200


def test_no_ad_answers_are_not_counted(client, world, key):
    for _ in range(settings.API_REQUESTS_PER_SLOT + 10):
        assert ask(client, key).status_code == 200


def test_the_allowance_is_per_campaign(client, store, clock, world, key):
    gateway.create_campaign(store, clock, "sam", M, 24, 300, 250, [])
    sell(store, clock)
    sell(store, clock, n=1)
    for _ in range(settings.API_REQUESTS_PER_SLOT):
        ask(client, key)
    assert ask(client, key).status_code == 429
    assert ask(client, key, "/api/v1/ads/sam/1/current").status_code == 200


# --- damaged data -------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def errors():
    handler = Collect()
    logger = logging.getLogger("adspace.api")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def test_a_removed_ad_is_served_as_no_ad_and_logged(client, store, clock, world, key, errors):
    sell(store, clock)
    clock.advance(1800)
    store.remove(gateway.filler_key("bob", 0))
    response = ask(client, key)
    assert response.status_code == 200
    body = response.json()
    assert body["ad"] is None
    campaign = gateway.get_campaign(store, "sam", 0).value
    assert body["price"] == pricing.current_price(M, campaign["last"], clock.now()) > M
    assert any("filler::bob::0" in r.getMessage() for r in errors)


def test_a_removed_image_is_served_as_no_ad_and_logged(client, store, clock, world, key, errors):
    sell(store, clock)
    store.remove(gateway.image_key(SHA))
    response = ask(client, key)
    assert response.status_code == 200
    assert response.json()["ad"] is None
    assert errors


class DownStore:
    """A docstore whose every read fails as a backend outage does after its own retries."""

    prefix = ""

    def get(self, key):
        raise TemporaryFailure("couchbase timed out")

    def get_fields(self, key, fields):
        raise TemporaryFailure("couchbase timed out")

    def get_multi(self, keys):
        raise TemporaryFailure("couchbase timed out")

    def get_several(self, reads):
        raise TemporaryFailure("couchbase timed out")


def test_a_docstore_outage_is_a_json_503(client, world, key):
    docstore.set_store(DownStore())
    response = ask(client, key)
    assert response.status_code == 503
    assert "unavailable" in response.json()["error"]
    assert response["Retry-After"] == str(api.RETRY_UNAVAILABLE)


def test_an_allowance_of_zero_turns_the_limit_off(client, store, clock, world, key, settings):
    settings.API_REQUESTS_PER_SLOT = 0
    sell(store, clock)
    for _ in range(60):
        assert ask(client, key).status_code == 200


def test_304_answers_do_not_use_up_the_allowance(client, store, clock, world, key, settings):
    settings.API_REQUESTS_PER_SLOT = 3
    sell(store, clock)
    etag = ask(client, key)["ETag"]
    for _ in range(20):
        assert ask(client, key, HTTP_IF_NONE_MATCH=etag).status_code == 304
    assert ask(client, key).status_code == 200
    assert ask(client, key).status_code == 200
    assert ask(client, key).status_code == 429


def test_an_unknown_user_answers_exactly_like_a_wrong_key(client, store, clock, world, key):
    sell(store, clock)
    wrong_key = client.get(URL, HTTP_AUTHORIZATION="Bearer " + "z" * 32)
    no_user = client.get("/api/v1/ads/nobody/0/current", HTTP_AUTHORIZATION=f"Bearer {key}")
    no_user_query = client.get("/api/v1/ads/nobody/0/current?key=" + "x" * 32)
    for response in (no_user, no_user_query):
        assert response.status_code == wrong_key.status_code == 403
        assert response.content == wrong_key.content
        assert response["Cache-Control"] == wrong_key["Cache-Control"]


def test_the_access_log_never_carries_the_query_string(tmp_path):
    import logging
    import runpy
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    config = Config()
    for name, value in runpy.run_path("config/gunicorn.py").items():
        if name in config.settings:
            config.set(name, value)
    log_file = tmp_path / "access.log"
    config.set("accesslog", str(log_file))
    logger = Logger(config)
    request = SimpleNamespace(
        headers=[],
        uri="/api/v1/ads/sam/0/current?key=SECRETKEY123",
        path="/api/v1/ads/sam/0/current",
        query="key=SECRETKEY123",
        method="GET",
        version=(1, 1),
    )
    response = SimpleNamespace(status="200 OK", sent=10, headers=[], response_length=10)
    environ = {
        "REMOTE_ADDR": "203.0.113.5",
        "RAW_URI": request.uri,
        "QUERY_STRING": request.query,
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": request.path,
    }
    logger.access(response, request, environ, timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()
    line = log_file.read_text()
    assert "/api/v1/ads/sam/0/current" in line
    assert "SECRETKEY123" not in line and "key=" not in line
    logging.getLogger("gunicorn.access").handlers.clear()


def test_bin_serve_and_the_soak_run_gunicorn_with_that_configuration():
    from pathlib import Path

    assert "-c config/gunicorn.py" in Path("bin/serve").read_text()
    assert '"-c", "config/gunicorn.py"' in Path("bench/soaking/processes.py").read_text()
    assert "-c config/gunicorn.py" in Path("docs/production.md").read_text()


def test_a_key_in_a_logged_url_is_redacted(caplog):
    import logging

    from accounts.logfilters import RedactApiKeys

    record = logging.LogRecord(
        "django.server",
        logging.INFO,
        __file__,
        1,
        '"GET %s HTTP/1.1" 200 5',
        ("/api/v1/ads/sam/0/current?a=1&key=SECRETKEY123&b=2",),
        None,
    )
    assert RedactApiKeys().filter(record)
    message = record.getMessage()
    assert "SECRETKEY123" not in message
    assert "key=[redacted]&b=2" in message


def test_an_answer_the_seller_may_still_reject_is_revalidated_every_time(
    client, store, clock, key, settings
):
    settings.REVIEW_HOURS = 24
    sell(store, clock)
    first = ask(client, key)
    assert first.status_code == 200 and first["Cache-Control"] == "private, no-cache"
    again = ask(client, key, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304  # revalidating costs the client nothing
