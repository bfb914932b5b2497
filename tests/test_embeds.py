"""The public embeds: the frameable ad page, its size as JSON, and the one-line embed.js."""

from __future__ import annotations

import contextlib
import http.server
import re
import shutil
import threading

import pytest
from django.urls import include, path

import docstore
from accounts import apikey_views
from adspace import api, gateway, serving
from tests.conftest import T0
from tests.test_ad_api import SHA, DownStore, make_world, sell

urlpatterns = [
    path("", include("config.urls")),
    path("", include("adspace.serving_urls")),
    path("account/api-key/", apikey_views.api_key, name="api_key"),
]
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/embed/sam/0"


@pytest.fixture
def world(store, clock):
    return make_world(store, clock)


def html(response) -> str:
    return response.content.decode()


def max_age(response) -> int:
    return int(re.search(r"max-age=(\d+)", response["Cache-Control"]).group(1))


# --- the embed page -----------------------------------------------------------------------------


def destination(client, page: str) -> str | None:
    """Where the embed's ad link leads: its click redirect's Location (None: no ad link)."""
    found = re.search(r'class="ad" href="([^"]+)"', page)
    if found is None:
        return None
    response = client.get(found[1].replace("&amp;", "&"))
    assert response.status_code == 302
    return response["Location"]


def embed_text(client, path: str) -> str:
    """The embed page at `path`, followed by where its ad link leads (when it has one)."""
    page = client.get(path).content.decode()
    return page + "\n" + (destination(client, page) or "")


def test_the_embed_shows_the_live_ad_at_its_size(client, store, clock, world):
    sale = sell(store, clock)
    response = client.get(URL)
    assert response.status_code == 200
    page = html(response)
    assert f'src="/img/{SHA}.png"' in page
    assert 'width="300" height="250"' in page
    assert re.search(r'class="ad" href="/c/sam-0-0-[^"]+"', page)  # counted, then redirected
    assert destination(client, page) == "https://bob.test/landing?a=1&b=2"
    assert 'rel="sponsored noopener"' in page and 'target="_blank"' in page
    assert "public" in response["Cache-Control"]
    assert max_age(response) == min(api.EMBED_MAX_AGE, sale.ends_at - clock.now())


def test_the_hover_text_is_escaped(client, store, clock, world):
    sell(store, clock)
    page = html(client.get(URL))
    escaped = "bob says &lt;b&gt;hi&lt;/b&gt; &amp; &#34;bye&#34;"
    assert f'title="{escaped}"' in page and f'alt="{escaped}"' in page
    assert "<b>hi</b>" not in page


def test_the_embed_page_has_no_scripts_and_no_inline_styles(client, store, clock, world):
    for _ in range(2):  # with an ad, then the placeholder
        page = html(client.get(URL)).lower()
        assert "<script" not in page
        assert "<style" not in page and "style=" not in page
        assert re.search(r"\son\w+=", page) is None
        assert "css/embed.css" in page
        sell(store, clock)
        serving.clear_cache()


def test_only_the_embed_page_may_be_framed(client, store, clock, world):
    sell(store, clock)
    assert "X-Frame-Options" not in client.get(URL)
    assert "X-Frame-Options" not in client.get("/embed/sam/9")  # its 404 is framed too
    for other in ("/", "/ads/buy-ad-space/sam/0", "/embed.js", "/embed/sam/0.json", "/account/"):
        assert client.get(other)["X-Frame-Options"] == "DENY", other


def test_with_no_ad_a_same_size_placeholder_links_to_the_campaign(client, world):
    response = client.get(URL)
    assert response.status_code == 200
    page = html(response)
    assert "Your ad here" in page and "buy this space" in page
    assert re.search(r'<svg[^>]* width="300" height="250"', page)
    assert 'href="http://testserver/ads/buy-ad-space/sam/0"' in page
    assert 'target="_top"' in page
    assert "<img" not in page
    assert max_age(response) == api.NO_AD_MAX_AGE


def test_a_tiny_space_gets_a_readable_placeholder(client, store, clock, world):
    n = gateway.create_campaign(store, clock, "sam", 100_000, 24, 88, 31, [])
    page = html(client.get(f"/embed/sam/{n}"))
    assert re.search(r'<svg[^>]* width="88" height="31"', page)
    size = api.placeholder_lines(88, 31)[0]
    assert size >= 6
    assert api.placeholder_lines(120, 600)[1][0][0] == "Your ad here —"  # narrow: two lines
    assert len(api.placeholder_lines(728, 90)[1]) == 1


def test_the_embed_follows_the_slot_boundary(client, store, clock, world):
    first = sell(store, clock)
    second = sell(store, clock, "cat")
    clock.set(second.starts_at - 31)
    page = html(client.get(URL))
    assert destination(client, page).startswith("https://bob.test/")
    assert max_age(client.get(URL)) == 1
    clock.set(second.starts_at - 30)
    assert destination(client, html(client.get(URL))).startswith("https://cat.test/")
    clock.set(second.ends_at)
    assert "buy this space" in html(client.get(URL))
    assert first.ends_at == second.starts_at


def test_a_removed_ad_shows_the_placeholder(client, store, clock, world):
    sell(store, clock)
    store.remove(gateway.filler_key("bob", 0))
    response = client.get(URL)
    assert response.status_code == 200
    assert "buy this space" in html(response)


@pytest.mark.parametrize(
    "url", ["/embed/nobody/0", "/embed/sam/7", "/embed/sam/07", "/embed/s%20m/0", "/embed/sam/.."]
)
def test_an_unknown_campaign_is_a_quiet_404(client, world, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "<script" not in html(response)


def test_the_embed_never_takes_a_link_from_the_query_string(client, store, clock, world):
    sell(store, clock)
    page = html(client.get(URL + "?url=https://evil.test/&href=https://evil.test/"))
    assert "evil.test" not in page


def test_a_docstore_outage_leaves_an_empty_frame(client, world):
    docstore.set_store(DownStore())
    response = client.get(URL)
    assert response.status_code == 503
    assert "<a" not in html(response) and "X-Frame-Options" not in response
    assert client.get("/embed/sam/0.json").status_code == 503


# --- the size endpoint --------------------------------------------------------------------------


def test_the_size_json_is_public_and_cacheable(client, world):
    response = client.get("/embed/sam/0.json")
    assert response.status_code == 200
    assert response.json() == {"width": 300, "height": 250}
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "public" in response["Cache-Control"] and max_age(response) > 0
    assert response["ETag"]


def test_the_size_of_an_unknown_campaign_is_a_json_404(client, world):
    response = client.get("/embed/sam/3.json")
    assert response.status_code == 404
    assert "error" in response.json()
    assert client.options("/embed/sam/0.json").status_code == 204


# --- embed.js -----------------------------------------------------------------------------------


def test_embed_js_is_javascript_that_reads_data_campaign(client):
    response = client.get("/embed.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert "public" in response["Cache-Control"] and 0 < max_age(response) <= 86400
    script = html(response)
    assert "data-campaign" in script
    assert "currentScript" in script
    assert "http://testserver/" in script.replace("\\u002F", "/")
    assert "embed/" in script and ".json" in script
    assert "try" in script and "catch" in script
    assert "console." not in script


def test_embed_js_escapes_the_host_it_was_asked_for(client, settings):
    settings.ALLOWED_HOSTS = ["*"]
    script = html(client.get("/embed.js", HTTP_HOST='evil.test"'))
    # Refused as a bad Host (400), or escaped; never a raw quote inside the string.
    assert 'evil.test""' not in script


def test_embed_js_runs_without_syntax_errors():
    node = pytest.importorskip("shutil").which("node")
    if node is None:
        pytest.skip("node is not installed")
    import subprocess

    from django.template.loader import render_to_string

    script = render_to_string("adspace/embed.js", {"base_url": "https://ads.test/"})
    result = subprocess.run([node, "--check", "-"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_embed_time_is_the_injected_clock(client, store, clock, world):
    sell(store, clock)
    clock.set(T0 + 2 * 24 * 3600)
    assert "buy this space" in html(client.get(URL))


# --- in a real browser --------------------------------------------------------------------------


@contextlib.contextmanager
def sellers_site(html: str):
    """A seller's page on its own origin. A real server on loopback, not request interception:
    Chrome treats an intercepted page as public and refuses its requests to a loopback server."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.browser
def test_embed_js_inserts_the_ad_frame_on_a_sellers_page(live_server, store, clock, chromium):
    make_world(store, clock)
    sell(store, clock)
    missing = gateway.create_campaign(store, clock, "sam", 100_000, 24, 120, 60, [])
    host = (
        "<!doctype html><html><body><p id='before'>before</p>"
        f"<script async src='{live_server.url}/embed.js' data-campaign='sam/0'></script>"
        f"<script async src='{live_server.url}/embed.js' data-campaign='sam/{missing}'"
        " data-width='120' data-height='60'></script>"
        f"<script async src='{live_server.url}/embed.js' data-campaign='nobody/0'></script>"
        "<p id='after'>after</p></body></html>"
    )
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    with sellers_site(host) as seller_page:
        page.goto(seller_page)
        page.wait_for_function("document.querySelectorAll('iframe').length === 2")
        page.wait_for_timeout(300)  # the unknown campaign's size request fails, quietly
    frames = page.eval_on_selector_all(
        "iframe",
        "fs => fs.map(f => [f.getAttribute('src'), f.width, f.height, f.previousElementSibling.dataset.campaign])",
    )
    assert sorted(frames) == sorted(
        [
            [f"{live_server.url}/embed/sam/0", "300", "250", "sam/0"],
            [f"{live_server.url}/embed/sam/{missing}", "120", "60", f"sam/{missing}"],
        ]
    )
    ad = page.frame_locator("iframe[src$='/embed/sam/0']").locator("a img")
    assert ad.get_attribute("width") == "300"
    assert ad.bounding_box()["width"] == 300
    # embed.css loaded inside the sandboxed frame: no body margin, the ad sits in its corner.
    frame_box = page.locator("iframe[src$='/embed/sam/0']").bounding_box()
    ad_box = ad.bounding_box()
    assert (ad_box["x"], ad_box["y"]) == (frame_box["x"], frame_box["y"])
    placeholder = page.frame_locator(f"iframe[src$='/embed/sam/{missing}']").locator("a svg")
    assert placeholder.bounding_box()["height"] == 60
    assert page.inner_text("#before") == "before" and page.inner_text("#after") == "after"
    # The only console noise allowed is the browser's own line for the unknown campaign's 404.
    assert [e for e in errors if "404" not in e] == []


# --- while the seller may still reject the ad ---------------------------------------------------


def test_an_ad_in_its_review_window_is_never_cached_and_leaves_at_once_when_rejected(
    client, store, clock, world, settings
):
    from adspace import review

    settings.REVIEW_HOURS = 24
    sale = sell(store, clock)
    shown = client.get(URL)
    assert shown["Cache-Control"] == "public, no-cache"  # every view asks again
    assert destination(client, html(shown)).startswith("https://bob.test/")
    review.reject_sale(store, clock, "sam", "sam", 0, sale.slot, "not for this site")
    after = client.get(URL)
    assert destination(client, html(after)) is None and "placeholder" in html(after)


def test_once_the_window_closes_the_ad_is_cached_until_the_slot_ends(
    client, store, clock, world, settings
):
    settings.REVIEW_HOURS = 1
    sale = sell(store, clock)
    clock.advance(3600)
    response = client.get(URL)
    assert max_age(response) == min(api.EMBED_MAX_AGE, sale.ends_at - clock.now())
