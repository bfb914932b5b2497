"""The lean serving path (config/handlers.py): the API, embeds, images, clicks and beacons go
through a slim handler without sessions, auth, CSRF or messages, and answer exactly as the full
stack does. Driven through the real WSGI application (and once through gunicorn)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.http import JsonResponse
from django.urls import include, path, resolve

import docstore
from accounts.adjust import adjust_balance
from accounts.gateway import ensure_account, get_account
from adspace import buy, delivery, gateway, serving_urls
from config import handlers
from docstore import TemporaryFailure
from docstore.faults import Hook, HookedStore
from tests.delivery_helpers import BROWSER_AGENT

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db

SHA = "cd" * 32
ANSWERS = ("status", "headers", "body")


# A test-only serving URLconf: probes at the click and beacon prefixes (ahead of the real views)
# that tell what the request they were given carries.
def _probe(request, token):
    return JsonResponse(
        {
            "token": token,
            "session": hasattr(request, "session"),
            "user": hasattr(request, "user"),
            "messages": hasattr(request, "_messages"),
            "csrf": "CSRF_COOKIE" in request.META,
        }
    )


def _store_down(request):
    raise TemporaryFailure("the store went away")


urlpatterns = [
    path("c/unavailable", _store_down),
    path("c/<str:token>", _probe),
    path("i/<str:token>", _probe),
    path("", include("adspace.serving_urls")),
]


# --- the world and the requests -----------------------------------------------------------------


@pytest.fixture
def world(store, clock, make_user):
    """Seller sam: campaign 0 showing bob's ad, campaign 1 unsold (the placeholder)."""
    sam = make_user("sam")
    for _ in range(2):
        gateway.create_campaign(store, clock, "sam", 100_000, 24, 300, 250, [])
    gateway.store_image(store, SHA, "image/png", "png", b"not really a png", 300, 250)
    ensure_account(store, clock, "bob")
    adjust_balance(store, clock, "bob", 10**10, "funding")
    gateway.create_filler(
        store, clock, "bob", "main", "Bob's ad", "https://bob.test/", 300, 250, SHA
    )
    buy.buy_next_slot(store, clock, "bob", "sam", 0, 0, 10**12)
    slot = store.get(gateway.slot_key("sam", 0, 0)).value
    return {
        "user": sam,
        "key": get_account(store, "sam").value["apiKey"],
        "click": delivery.token(delivery.CLICK, "sam", 0, 0, slot),
        "beacon": delivery.token(delivery.IMPRESSION, "sam", 0, 0, slot),
    }


@pytest.fixture
def session_cookie(client, world):
    client.force_login(world["user"])
    return f"sessionid={client.cookies['sessionid'].value}; csrftoken={'t' * 32}"


def environ_for(method: str, url: str, headers: dict | None = None, **extra) -> dict:
    path_info, _, query = url.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "RAW_URI": url,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": "0",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    environ.update(extra)
    return environ


def answer(app, environ: dict) -> dict:
    """Status, headers (name-sorted) and body of one request; a fresh input each call."""
    environ = {**environ, "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO()}
    started = []
    result = app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = started[0]
    return {"status": status, "headers": sorted(headers), "body": body}


def headers_of(reply: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in reply["headers"]}


@pytest.fixture
def app(settings):
    """The site's application, built now so that settings a test changes apply to it."""
    return handlers.build_application()


def slim(app):
    return app.routes[0][1]


# Every kind of answer each serving URL gives (the key is filled in per test).
SERVING_REQUESTS = {
    "api live ad": ("GET", "/api/v1/ads/sam/0/current", {"Authorization": "Bearer {key}"}),
    "api revalidation": (
        "GET",
        "/api/v1/ads/sam/0/current",
        {"Authorization": "Bearer {key}", "If-None-Match": "*"},
    ),
    "api no ad": ("GET", "/api/v1/ads/sam/1/current?key={key}", {}),
    "api missing key": ("GET", "/api/v1/ads/sam/0/current", {}),
    "api wrong key": ("GET", "/api/v1/ads/sam/0/current", {"Authorization": "Bearer nope"}),
    "api post": ("POST", "/api/v1/ads/sam/0/current", {}),
    "api put": ("PUT", "/api/v1/ads/sam/0/current", {}),
    "api preflight": ("OPTIONS", "/api/v1/ads/sam/0/current", {}),
    "api unknown path": ("GET", "/api/v2/everything", {}),
    "api malformed index": ("GET", "/api/v1/ads/sam/07/current", {}),
    "embed live ad": ("GET", "/embed/sam/0", {}),
    "embed head": ("HEAD", "/embed/sam/0", {}),
    "embed placeholder": ("GET", "/embed/sam/1", {}),
    "embed missing campaign": ("GET", "/embed/nobody/0", {}),
    "embed post": ("POST", "/embed/sam/0", {}),
    "embed put": ("PUT", "/embed/sam/0", {}),
    "embed size": ("GET", "/embed/sam/0.json", {}),
    "embed size missing": ("GET", "/embed/sam/9.json", {}),
    "embed.js": ("GET", "/embed.js", {}),
    "embed.js post": ("POST", "/embed.js", {}),
    "image": ("GET", f"/img/{SHA}.png", {}),
    "image revalidation": ("GET", f"/img/{SHA}.png", {"If-None-Match": f'"{SHA}"'}),
    "image unknown": ("GET", f"/img/{'0' * 64}.png", {}),
    "image other extension": ("GET", f"/img/{SHA}.gif", {}),
    "image post": ("POST", f"/img/{SHA}.png", {}),
    "image body too large": ("GET", f"/img/{SHA}.png", {}, {"CONTENT_LENGTH": str(10**8)}),
    "image length not a number": ("GET", f"/img/{SHA}.png", {}, {"CONTENT_LENGTH": "12x"}),
    "click": ("GET", "/c/{click}", {"User-Agent": BROWSER_AGENT}),
    "click by a bot": ("GET", "/c/{click}", {"User-Agent": "Googlebot/2.1"}),
    "click forged": ("GET", "/c/sam-0-0-1-9999999999.forged", {}),
    "click post": ("POST", "/c/{click}", {}),
    "click delete": ("DELETE", "/c/{click}", {}),
    "beacon": ("GET", "/i/{beacon}", {"User-Agent": BROWSER_AGENT}),
    "beacon prefetch": (
        "GET",
        "/i/{beacon}",
        {"User-Agent": BROWSER_AGENT, "Sec-Purpose": "prefetch"},
    ),
    "beacon forged": ("GET", "/i/{click}", {}),
    "stats api": ("GET", "/api/v1/stats/sam/0", {"Authorization": "Bearer {key}"}),
    "live head": ("GET", "/api/v1/campaigns/sam/0/live", {}),
    "live head placeholder": ("GET", "/api/v1/campaigns/sam/1/live", {}),
    "live revalidation": ("GET", "/api/v1/campaigns/sam/0/live", {"If-None-Match": "*"}),
    "live unknown campaign": ("GET", "/api/v1/campaigns/sam/9/live", {}),
    "live malformed index": ("GET", "/api/v1/campaigns/sam/07/live", {}),
    "live huge if-none-match": (
        "GET",
        "/api/v1/campaigns/sam/0/live",
        {"If-None-Match": '"x", ' * 1000},
    ),
    "live post": ("POST", "/api/v1/campaigns/sam/0/live", {}),
    "stats api wrong key": ("GET", "/api/v1/stats/sam/0", {"Authorization": "Bearer nope"}),
}


def serving_environ(name: str, world: dict, cookie: str | None) -> dict:
    method, url, headers, *extra = SERVING_REQUESTS[name]
    fill = {name: world[name] for name in ("key", "click", "beacon")}
    headers = {k: v.format(**fill) for k, v in headers.items()}
    if cookie:
        headers["Cookie"] = cookie
    return environ_for(method, url.format(**fill), headers, **(extra[0] if extra else {}))


# --- routing ------------------------------------------------------------------------------------


def test_the_wsgi_application_dispatches_by_path_with_slim_serving_middleware():
    from config.wsgi import application

    assert isinstance(application, handlers.PathDispatch)
    middleware = slim(application).middleware
    assert not set(middleware) & handlers.PAGE_ONLY_MIDDLEWARE
    for needed in (
        "django.middleware.security.SecurityMiddleware",
        "accounts.security.SiteSecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ):
        assert needed in middleware


@pytest.mark.parametrize("name", sorted(SERVING_REQUESTS))
def test_a_serving_path_resolves_by_its_prefix_to_what_all_the_patterns_give(app, world, name):
    environ = serving_environ(name, world, None)
    by_prefix = slim(app).match(environ["PATH_INFO"])
    whole = resolve(environ["PATH_INFO"], urlconf=handlers.SERVING_URLCONF)
    assert (by_prefix.func, by_prefix.args, by_prefix.kwargs, by_prefix.url_name) == (
        whole.func,
        whole.args,
        whole.kwargs,
        whole.url_name,
    )


@pytest.mark.parametrize("name", sorted(SERVING_REQUESTS))
def test_each_serving_url_goes_to_the_slim_handler(app, world, name):
    assert app.handler_for(serving_environ(name, world, None)) is slim(app)


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/ads/buy-ad-space/",
        "/ads/buy-ad-space/sam/0",
        "/account/",
        "/accounts/login/",
        "/admin/",
        "/healthz",
        "/static/css/site.css",
        # Under a serving prefix but matching no serving pattern: the full stack's 404 page.
        "/embed/sam",
        "/embed/sam/0/extra",
        "/img/not-a-digest.png",
        "/embed.jsx",
        "/apiv1",
    ],
)
def test_pages_and_unmatched_paths_go_to_the_full_handler(app, url):
    assert app.handler_for(environ_for("GET", url)) is app.full


def test_clicks_and_beacons_go_to_the_slim_handler_without_sessions_auth_csrf_or_messages(
    settings, session_cookie
):
    app = handlers.build_application(serving_urlconf=__name__)
    for url in ("/c/abc", "/i/abc"):
        environ = environ_for("GET", url, {"Cookie": session_cookie})
        assert app.handler_for(environ) is slim(app)
        reply = answer(app, environ)
        assert json.loads(reply["body"]) == {
            "token": "abc",
            "session": False,
            "user": False,
            "messages": False,
            "csrf": False,
        }
        assert "set-cookie" not in headers_of(reply)
    # Through every middleware the probe sees all four: it can tell the two apart.
    everything = handlers.SlimHandler(settings.MIDDLEWARE, __name__)
    seen = json.loads(
        answer(everything, environ_for("GET", "/c/abc", {"Cookie": session_cookie}))["body"]
    )
    assert seen == {"token": "abc", "session": True, "user": True, "messages": True, "csrf": True}


def test_a_store_failure_on_the_slim_path_is_the_clear_503(settings, world, session_cookie):
    app = handlers.build_application(serving_urlconf=__name__)
    reply = answer(app, environ_for("GET", "/c/unavailable", {"Cookie": session_cookie}))
    assert reply["status"].startswith("503")
    assert headers_of(reply)["retry-after"] == "5"
    assert "cannot be reached" in reply["body"].decode()


def test_every_serving_pattern_is_under_a_serving_prefix_and_is_the_same_view_on_both_paths():
    for pattern in serving_urls.urlpatterns:
        route = str(pattern.pattern).removeprefix("^")
        assert ("/" + route).startswith(handlers.SERVING_PREFIXES), route
    for name in ("api live ad", "embed live ad", "embed size", "embed.js", "image", "live head"):
        url = SERVING_REQUESTS[name][1].partition("?")[0]
        assert resolve(url, urlconf="config.urls").func is resolve(url, serving_urls).func


# --- the same answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
@pytest.mark.parametrize("name", sorted(SERVING_REQUESTS))
def test_serving_answers_are_the_full_stacks_to_the_byte(
    app, world, session_cookie, name, signed_in
):
    environ = serving_environ(name, world, session_cookie if signed_in else None)
    full = answer(app.full, environ)
    lean = answer(app, environ)
    assert {k: lean[k] for k in ANSWERS} == {k: full[k] for k in ANSWERS}
    # Neither sets a session or CSRF cookie, nor varies on the cookie it never read.
    assert "set-cookie" not in headers_of(lean)
    assert "Cookie" not in headers_of(lean).get("vary", "")


def test_serving_answers_skip_the_request_signals_that_pages_still_send(app, world):
    from django.core import signals

    seen = []

    def started(sender, **kwargs):
        seen.append("started")

    def finished(sender, **kwargs):
        seen.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        for name in ("api live ad", "embed live ad", "image", "click", "beacon", "api post"):
            reply = answer(app, serving_environ(name, world, None))
            assert reply["status"][:3] in ("200", "302", "405")
        assert seen == []
        answer(app, environ_for("GET", "/accounts/login/"))
        assert seen == ["started", "finished"]
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)


def test_a_serving_answer_still_closes_what_the_request_opened(app, world, monkeypatch):
    from django.core.handlers.wsgi import WSGIRequest

    closed = []
    original = WSGIRequest.close
    monkeypatch.setattr(WSGIRequest, "close", lambda self: (closed.append(1), original(self)))
    body = app(serving_environ("embed live ad", world, None), lambda status, headers: None)
    assert closed == [1]  # closed before the body is handed over; nothing left to close later
    assert isinstance(body, list) and b"<" in body[0]


def test_the_serving_handler_remembers_matches_within_a_bound(app, world, monkeypatch):
    handler = slim(app)
    monkeypatch.setattr(handlers, "MATCH_CACHE_SIZE", 8)
    handler._matches.clear()
    first = handler.match("/embed/sam/0")
    assert handler.match("/embed/sam/0") is first  # resolved once
    assert handler.match("/embed/sam/0/extra") is None  # a miss is remembered as a miss
    assert app.handler_for(environ_for("GET", "/embed/sam/0/extra")) is app.full
    for i in range(100):  # a flood of distinct paths
        handler.match(f"/embed/flood/{i}")
        assert len(handler._matches) <= 8
    assert handler.match("/embed/sam/0").func is first.func
    # The bare floor resolves as Django does, every time.
    assert handlers.SlimHandler(handlers.BARE_MIDDLEWARE, handlers.BARE_URLCONF)._matches is None


def test_the_cookie_check_would_catch_a_page_setting_one(app):
    login = answer(app, environ_for("GET", "/accounts/login/"))
    assert "csrftoken=" in headers_of(login)["set-cookie"]


def test_security_headers_are_all_there_on_each_kind_of_serving_answer(app, world):
    api = headers_of(answer(app, serving_environ("api live ad", world, None)))
    embed = headers_of(answer(app, serving_environ("embed live ad", world, None)))
    image = headers_of(answer(app, serving_environ("image", world, None)))
    for headers in (api, embed, image):
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert "content-security-policy" in headers
    assert (
        api["x-frame-options"] == "DENY"
        and "frame-ancestors 'none'" in api["content-security-policy"]
    )
    assert (
        "x-frame-options" not in embed and "frame-ancestors *" in embed["content-security-policy"]
    )
    assert embed["cross-origin-opener-policy"] == "same-origin"
    assert api["cache-control"].startswith("private, max-age=") and "etag" in api
    assert image["cache-control"] == "public, max-age=31536000, immutable"
    assert image["content-security-policy"] == "default-src 'none'; sandbox"


@pytest.mark.parametrize("name", ["api live ad", "embed live ad", "embed.js", "image"])
def test_https_keeps_hsts_and_plain_http_is_redirected_the_same_way(settings, world, name):
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_SSL_REDIRECT = True
    app = handlers.build_application()
    https = {**serving_environ(name, world, None), "wsgi.url_scheme": "https"}
    https["SERVER_PORT"] = "443"
    lean, full = answer(app, https), answer(app.full, https)
    assert lean == full
    assert headers_of(lean)["strict-transport-security"] == "max-age=3600; includeSubDomains"
    plain = serving_environ(name, world, None)
    lean, full = answer(app, plain), answer(app.full, plain)
    assert lean == full and lean["status"].startswith("301")
    assert headers_of(lean)["location"].startswith("https://testserver/")


@pytest.mark.parametrize("how", ["SCRIPT_NAME", "FORCE_SCRIPT_NAME"])
def test_a_script_prefix_is_kept_in_routing_and_in_links(settings, world, empty_url_cache, how):
    if how == "FORCE_SCRIPT_NAME":
        settings.FORCE_SCRIPT_NAME = "/market"
        extra = {}
    else:
        extra = {"SCRIPT_NAME": "/market"}
    app = handlers.build_application()
    # The placeholder links to the campaign's page, a URL only the full URLconf knows.
    environ = environ_for("GET", "/embed/sam/1", **extra)
    assert app.handler_for(environ) is slim(app)
    lean, full = answer(app, environ), answer(app.full, environ)
    assert lean == full and lean["status"].startswith("200")
    assert b"http://testserver/market/ads/buy-ad-space/sam/1" in lean["body"]


def test_an_unreachable_store_gives_the_same_answers_on_both_paths(app, world, store):
    class Down(Hook):
        def before(self, op: str, key: str) -> None:
            raise TemporaryFailure("cluster down")

    docstore.set_store(HookedStore(store, Down()))
    try:
        for name in ("api live ad", "embed live ad", "embed size", "image", "live head"):
            environ = serving_environ(name, world, None)
            lean, full = answer(app, environ), answer(app.full, environ)
            assert lean == full, name
            assert lean["status"].startswith("503"), name
            assert headers_of(lean)["cache-control"] == "no-store"
    finally:
        docstore.set_store(store)


# --- what the slim handler cannot reach ---------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/", "/accounts/login/", "/account/", "/ads/buy-ad-space/", "/admin/", "/healthz"]
)
def test_a_page_cannot_be_reached_through_the_slim_handler(app, session_cookie, url):
    reply = answer(slim(app), environ_for("GET", url, {"Cookie": session_cookie}))
    assert reply["status"].startswith("404")
    assert "set-cookie" not in headers_of(reply)
    assert b"csrfmiddlewaretoken" not in reply["body"] and b"sam" not in reply["body"]


def test_unknown_api_paths_stay_the_apis_json_404_on_the_lean_path(app):
    reply = answer(app, environ_for("GET", "/api/v1/nothing/here"))
    assert reply["status"].startswith("404")
    assert headers_of(reply)["content-type"] == "application/json"
    assert "No such API endpoint" in json.loads(reply["body"])["error"]


# --- the bare floor -----------------------------------------------------------------------------


def test_the_bare_floor_runs_security_and_common_middleware_only(settings):
    settings.BENCH_FLOOR = True
    app = handlers.build_application()
    environ = environ_for("GET", "/bench/bare")
    bare = app.handler_for(environ)
    assert bare.middleware == list(handlers.BARE_MIDDLEWARE)
    reply = answer(app, environ)
    assert reply["body"] == b"ok"
    headers = headers_of(reply)
    assert headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware
    assert headers["content-length"] == "2"  # CommonMiddleware
    assert "content-security-policy" not in headers and "x-frame-options" not in headers


def test_without_bench_floor_there_is_no_bare_handler(app):
    assert len(app.routes) == 1
    assert answer(app, environ_for("GET", "/bench/bare"))["status"].startswith("404")


# --- under gunicorn, as bin/serve runs it -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_gunicorn_serves_both_paths_and_the_floors(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        # DEBUG: the login page's static links need no collected manifest.
        "DEBUG": "true",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOCAL_CHAIN": "off",
        "DOCSTORE_PATH": str(tmp_path / "docstore.sqlite3"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CACHE_URL": "locmemcache://",
        "BENCH_FLOOR": "true",
        "LOG_LEVEL": "WARNING",
    }
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    server = subprocess.Popen(
        [gunicorn, "config.wsgi:application", "-c", "config/gunicorn.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                status, _, _ = fetch(f"{base}/bench/bare")
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not answer within 10 s")
        status, headers, body = fetch(f"{base}/embed.js")
        assert status == 200 and headers["Cache-Control"] == "public, max-age=3600"
        assert headers["X-Frame-Options"] == "DENY" and "Set-Cookie" not in headers
        status, headers, body = fetch(f"{base}/api/nope")
        assert status == 404 and headers["Content-Type"] == "application/json"
        status, headers, _ = fetch(f"{base}/accounts/login/")
        assert status == 200 and "csrftoken=" in headers["Set-Cookie"]
        status, headers, body = fetch(f"{base}/bench/bare")
        assert (status, body) == (200, b"ok") and "Content-Security-Policy" not in headers
        status, headers, body = fetch(f"{base}/bench/floor")
        assert (status, body) == (200, b"ok") and "Content-Security-Policy" in headers
    finally:
        server.terminate()
        server.wait(timeout=30)
