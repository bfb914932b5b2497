"""My ads: uploading an ad, listing my ads, and the image view that serves them."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from adspace import gateway

pytestmark = pytest.mark.django_db

LIST = "/account/ads/"
NEW = "/account/ads/new/"


def png(width: int, height: int, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def animated_gif(width: int, height: int) -> bytes:
    frames = [Image.new("RGB", (width, height), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=100)
    return out.getvalue()


def upload(data: bytes, name: str = "ad.png", content_type: str = "image/png"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def form(**overrides) -> dict:
    data = {
        "nickname": "Spring sale",
        "hover_text": "Shoes, half price",
        "url": "https://shoes.example.com/sale?x=1&y=2",
        "width": "120",
        "height": "60",
        "image": upload(png(120, 60)),
    }
    # Files are made per test (a callable in the parameters), since an upload is read once.
    data.update({k: v() if callable(v) else v for k, v in overrides.items()})
    return data


@pytest.fixture
def me(client, buyer):
    client.force_login(buyer)
    return client


def image_srcs(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_both_pages_require_login(client):
    for url in (LIST, NEW):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith("/accounts/login/?next=")


def test_with_no_ads_the_list_says_how_to_get_one(me):
    html = me.get(LIST).content.decode()
    assert "You have not uploaded any ads yet" in html
    assert 'href="/account/ads/new/"' in html


def test_uploading_an_ad_stores_it_and_shows_its_preview(me, store):
    response = me.post(NEW, form(), follow=True)
    assert response.redirect_chain == [(LIST, 302)]
    html = response.content.decode()
    assert "Spring sale" in html and "is ready to use" in html

    ad = gateway.get_filler(store, "buyer", 0)
    assert ad["nickname"] == "Spring sale"
    assert (ad["width"], ad["height"]) == (120, 60)
    meta, data = gateway.get_image(store, ad["image"])
    assert hashlib.sha256(data).hexdigest() == ad["image"]
    assert meta["contentType"] == "image/png"

    src = f"/img/{ad['image']}.png"
    assert image_srcs(html) == [src]
    assert f'<img src="{src}" width="120" height="60" alt="Shoes, half price">' in html
    assert 'href="https://shoes.example.com/sale?x=1&amp;y=2"' in html
    assert 'rel="sponsored noopener noreferrer" target="_blank"' in html
    assert 'title="Shoes, half price"' in html


def test_html_in_the_texts_is_shown_escaped(me):
    evil = '<script>alert(1)</script>" onmouseover="x'
    response = me.post(NEW, form(nickname=evil[:64], hover_text=evil), follow=True)
    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert '" onmouseover="x' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34; onmouseover=&#34;x" in html


def test_the_list_is_newest_first_ten_a_page(me, store, clock):
    for i in range(12):
        gateway.create_filler(store, clock, "buyer", f"ad{i}", "h", "https://a.test/", 16, 16, "0")
    first = me.get(LIST).content.decode()
    assert "Ads uploaded: 12" in first
    names = re.findall(r'<h2 class="ad-name">([^<]+)</h2>', first)
    assert names == [f"ad{i}" for i in range(11, 1, -1)]
    second = me.get(LIST, {"page": "2"}).content.decode()
    assert re.findall(r'<h2 class="ad-name">([^<]+)</h2>', second) == ["ad1", "ad0"]
    assert "Page 2 of 2" in second


@pytest.mark.parametrize("page", ["3", "0", "x", "-1"])
def test_a_page_that_does_not_exist_is_a_404(me, store, clock, page):
    gateway.create_filler(store, clock, "buyer", "a", "h", "https://a.test/", 16, 16, "0")
    assert me.get(LIST, {"page": page}).status_code == 404


def test_another_users_ads_are_not_listed(me, store, clock):
    gateway.create_filler(store, clock, "outsider", "theirs", "h", "https://a.test/", 16, 16, "0")
    assert "theirs" not in me.get(LIST).content.decode()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"image": lambda: upload(png(121, 60))},
            "The image is 121x60 px; this ad must be exactly 120x60",
        ),
        (
            {"image": lambda: upload(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "a.svg")},
            "SVG files are not accepted",
        ),
        (
            {"image": lambda: upload(animated_gif(120, 60), "a.gif")},
            "Animated images are not accepted",
        ),
        ({"image": lambda: upload(b"", "a.png")}, "The file is empty"),
        ({"image": ""}, "Choose the image file"),
        ({"url": "javascript:alert(1)"}, "must be a full web address"),
        ({"url": "JavaScript:alert(1)//http://x"}, "must be a full web address"),
        ({"url": "data:text/html,<script>x</script>"}, "must be a full web address"),
        ({"url": "ftp://files.example.com/"}, "must be a full web address"),
        ({"url": "/relative/path"}, "must be a full web address"),
        ({"url": "//example.com/x"}, "must be a full web address"),
        ({"url": "https://exa mple.com/"}, "cannot contain spaces"),
        ({"url": "java\tscript:alert(1)"}, "cannot contain spaces"),
        ({"url": " https://example.com/"}, "cannot contain spaces"),
        ({"url": "https://example.com/\x00"}, "cannot contain spaces"),
        ({"url": "https://"}, "must be a full web address"),
        ({"url": "https://" + "a" * 2050 + ".com/"}, "at most 2048 characters"),
        ({"nickname": ""}, "Give the ad a nickname"),
        ({"nickname": "n" * 65}, "at most 64 characters"),
        ({"nickname": "a\u202eb"}, "without control or invisible characters"),
        ({"hover_text": ""}, "Write the text shown"),
        ({"hover_text": "h" * 513}, "at most 512 characters"),
        ({"width": "15"}, "from 16 to 2048"),
        ({"height": "2049"}, "from 16 to 2048"),
    ],
)
def test_bad_uploads_are_refused_with_a_message_and_write_nothing(me, store, overrides, message):
    before = store.dump()
    response = me.post(NEW, form(**overrides))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert store.dump() == before


def test_a_duplicate_nickname_is_refused_whatever_its_case(me, store):
    me.post(NEW, form(nickname="Spring Sale"))
    before = store.dump()
    response = me.post(NEW, form(nickname="spring sale", image=upload(png(120, 60, (1, 2, 3)))))
    assert response.status_code == 400
    assert "You already have an ad called “spring sale”" in response.content.decode()
    assert store.dump() == before


def test_the_same_nickname_is_fine_for_another_user(me, store, clock):
    gateway.create_filler(
        store, clock, "outsider", "Spring sale", "h", "https://a.test/", 16, 16, "0"
    )
    assert me.post(NEW, form()).status_code == 302


def test_a_50_mb_upload_gets_a_413_page_and_writes_nothing(me, store):
    before = store.dump()
    response = me.post(NEW, form(image=upload(b"\x89PNG" + b"\0" * (50 * 1024 * 1024))))
    assert response.status_code == 413
    assert "The upload is too large" in response.content.decode()
    assert store.dump() == before


def test_an_image_over_the_limit_inside_the_body_limit_is_refused(me, store):
    before = store.dump()
    response = me.post(NEW, form(image=upload(b"\x89PNG" + b"\0" * (2 * 1024 * 1024 + 100))))
    assert response.status_code == 400
    assert "larger than 2 MB" in response.content.decode()
    assert store.dump() == before


# --- the image view ----------------------------------------------------------------------------


def test_the_image_view_serves_the_stored_bytes_with_long_caching(me, client, store):
    me.post(NEW, form())
    sha = gateway.get_filler(store, "buyer", 0)["image"]
    client.logout()  # images are public: they appear on other people's sites
    response = client.get(f"/img/{sha}.png")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.content == gateway.get_image(store, sha)[1]
    again = client.get(f"/img/{sha}.png", headers={"If-None-Match": response["ETag"]})
    assert again.status_code == 304


def test_an_image_served_again_from_memory_is_the_same_answer(me, client, store):
    me.post(NEW, form())
    sha = gateway.get_filler(store, "buyer", 0)["image"]
    client.logout()
    first, second = client.get(f"/img/{sha}.png"), client.get(f"/img/{sha}.png")
    assert second.status_code == 200 and second.content == first.content
    assert second.headers == first.headers
    # The remembered image still answers only to its own extension.
    assert client.get(f"/img/{sha}.gif").status_code == 404


def test_the_image_memory_keeps_at_most_its_byte_budget():
    from adspace.serving import ByteBoundedCache

    memory = ByteBoundedCache(size=100, max_bytes=1000)
    for i in range(5):
        memory.put(i, b"x" * 90, 90)
    assert memory.total_bytes == 450
    memory.put("big", b"x" * 101, 101)  # over a tenth of the budget: never kept
    assert memory.get("big") is None
    for i in range(5, 20):
        memory.put(i, b"x" * 90, 90)
    assert memory.total_bytes <= 1000 and len(memory) == 11
    assert memory.get(0) is None and memory.get(19) is not None  # the oldest went first
    memory.clear()
    assert memory.total_bytes == 0 and len(memory) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/img/" + "a" * 64 + ".png",  # unknown sha
        "/img/{sha}.gif",  # the wrong extension for this image
        "/img/{sha}.svg",
        "/img/{sha}",
        "/img/" + "A" * 64 + ".png",
        "/img/abc.png",
    ],
)
def test_the_image_view_404s_for_unknown_images_and_bad_names(me, store, path):
    me.post(NEW, form())
    sha = gateway.get_filler(store, "buyer", 0)["image"]
    assert me.get(path.format(sha=sha)).status_code == 404


# --- limits: uploads per hour, ads and image bytes per user, decoding at once ---------------------


def test_uploads_past_the_hourly_limit_get_429_and_write_nothing(me, store, clock, settings):
    settings.UPLOAD_RATE_LIMIT = 2
    assert me.post(NEW, form(nickname="a")).status_code == 302
    assert me.post(NEW, form(nickname="b", image=upload(b"not an image"))).status_code == 400
    before = store.dump()
    response = me.post(NEW, form(nickname="c"))
    assert response.status_code == 429
    assert "uploaded too many ads in the last hour" in response.content.decode()
    assert store.dump() == before
    clock.advance(3600)
    assert me.post(NEW, form(nickname="c")).status_code == 302


def test_ads_past_the_cap_are_refused_before_decoding_and_write_nothing(
    me, store, settings, monkeypatch
):
    settings.MAX_ADS_PER_USER = 2
    for name in ("a", "b"):
        assert me.post(NEW, form(nickname=name)).status_code == 302
    before = store.dump()
    monkeypatch.setattr("adspace.images.validate_ad_image", lambda *a: pytest.fail("decoded"))
    response = me.post(NEW, form(nickname="c"))
    assert response.status_code == 400
    assert "You have 2 ads, the most one account can have" in response.content.decode()
    assert store.dump() == before


def test_the_ad_cap_holds_when_uploads_race(store):
    import threading

    barrier = threading.Barrier(10)
    drawn: list[int] = []
    refused: list[Exception] = []

    def reserve() -> None:
        barrier.wait()
        try:
            drawn.append(gateway.reserve_filler_index(store, "bob", 4))
        except gateway.TooManyAds as exc:
            refused.append(exc)

    threads = [threading.Thread(target=reserve) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(drawn) == [0, 1, 2, 3]
    assert len(refused) == 6


def test_images_past_the_byte_quota_are_refused_and_nothing_is_stored(me, store, settings):
    first = me.post(NEW, form(nickname="a"))
    assert first.status_code == 302
    used = gateway.image_bytes_used(store, "buyer")
    assert used > 0
    settings.MAX_IMAGE_BYTES_PER_USER = used + 10  # the next image (~the same size) will not fit
    before = store.dump()
    response = me.post(NEW, form(nickname="b", image=upload(png(120, 60, (9, 9, 9)))))
    assert response.status_code == 400
    assert "the most one account can store" in response.content.decode()
    assert store.dump() == before


def test_an_upload_that_cannot_get_its_turn_to_decode_is_told_to_retry(me, store, monkeypatch):
    from adspace import images

    monkeypatch.setattr(images, "DECODE_WAIT_SECONDS", 0)
    before = store.dump()
    assert images._decode_slots.acquire(timeout=1)
    try:
        response = me.post(NEW, form())
    finally:
        images._decode_slots.release()
    assert response.status_code == 503
    assert "busy checking other images" in response.content.decode()
    assert store.dump() == before


def test_mutated_uploads_are_never_a_500_and_a_refusal_stores_nothing(me, store, settings):
    from tests.test_ad_images import FUZZ_SIZE, fuzz_cases

    settings.UPLOAD_RATE_LIMIT = 10_000
    width, height = FUZZ_SIZE
    statuses: dict[int, int] = {}
    for i, data in enumerate(fuzz_cases(seed=4134, count=300)):
        before = store.dump()
        response = me.post(
            NEW,
            form(nickname=f"ad {i}", width=str(width), height=str(height), image=upload(data)),
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code in (302, 400), f"case {i}: {response.status_code}"
        if response.status_code == 400:
            assert store.dump() == before, f"case {i} was refused but wrote to the store"
    assert statuses.get(400, 0) > 100
