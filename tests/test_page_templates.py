"""The pages' Jinja2 environment: links, filters and escaping behave as the DTL pages did."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib import messages
from django.core.paginator import Paginator
from django.template import engines
from django.test import RequestFactory
from django.urls import reverse, set_script_prefix
from django.utils.html import format_html

from accounts.templatetags import cached_url


def render(source: str, request=None, **context) -> str:
    return engines["jinja2"].from_string(source).render(context, request)


pytestmark = pytest.mark.usefixtures("empty_url_cache")


def test_url_answers_what_reverse_answers():
    for _ in range(2):  # the second time from the cache
        assert render("{{ url('home') }}") == reverse("home")
        assert render("{{ url('campaign', 'sam', 3) }}") == reverse("campaign", args=["sam", 3])


def test_links_follow_the_script_prefix_of_each_request(client):
    # Mounted under /market (the WSGI handler sets the prefix; the test client does not), every
    # link on a page carries it; back at the root, none does, although the first answers are
    # cached.
    set_script_prefix("/market/")
    prefixed = client.get("/ads/buy-ad-space/").content.decode()
    assert 'href="/market/account/"' in prefixed
    assert 'href="/market/accounts/login/"' in prefixed
    set_script_prefix("/")
    plain = client.get("/ads/buy-ad-space/").content.decode()
    assert 'href="/account/"' in plain and "/market/" not in plain


def test_the_scope_is_looked_up_once_a_request(monkeypatch):
    request = RequestFactory().get("/")
    calls = []
    real = cached_url.url_scope
    monkeypatch.setattr("accounts.templating.url_scope", lambda: calls.append(1) or real())
    assert render("{{ url('home') }}{{ url('account') }}{{ url('sell') }}", request) == (
        "/" + "/account/" + "/ads/sell-ad-space/"
    )
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("count", "text"), [(0, "hours"), (1, "hour"), (2, "hours"), ("x", "hour")]
)
def test_pluralize_counts_like_django(count, text):
    assert render("hour{{ n|pluralize }}", n=count) == text


def test_date_uses_django_formats():
    moment = datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert render('{{ t|date("Y-m-d H:i:s") }}', t=moment) == "2024-02-03 04:05:06"
    assert render("{{ t|date('c') }}", t=moment) == "2024-02-03T04:05:06+00:00"
    assert render('[{{ t|date("Y") }}]', t=None) == "[]"


def test_money_filters():
    assert render("{{ 300000|btc }}") == "0.00300000"
    assert render("{{ -1|btc_change }} {{ 5|btc_change }}") == "-0.00000001 +0.00000005"
    assert render("[{{ 'x'|btc }}]") == "[]"


def test_a_missing_variable_renders_empty_however_deep():
    assert render("[{{ nothing }}|{{ nothing.at.all }}]") == "[|]"


def test_text_is_escaped_and_our_own_markup_is_not():
    assert render("{{ t }}", t='<b>"hi"</b>') == "&lt;b&gt;&#34;hi&#34;&lt;/b&gt;"
    assert render("{{ t }}", t=format_html("<b>{}</b>", "<i>")) == "<b>&lt;i&gt;</b>"


def test_messages_keep_their_links_and_escape_user_text(client, make_user):
    request = RequestFactory().get("/")
    request.session = client.session
    from django.contrib.messages.storage.fallback import FallbackStorage

    request._messages = FallbackStorage(request)
    messages.info(request, format_html('<a href="{}">Add funds</a>', "/account/"))
    messages.info(request, "<script>x</script>")
    page = engines["jinja2"].get_template("base.html").render({}, request)
    assert '<a href="/account/">Add funds</a>' in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page


def test_a_link_with_an_object_argument_is_built_afresh_each_time():
    class Name:
        text = "sam"

        def __str__(self):
            return self.text

    request = RequestFactory().get("/")
    name = Name()
    assert render("{{ url('seller', name) }}", request, name=name) == "/ads/buy-ad-space/sam/"
    name.text = "ann"
    assert render("{{ url('seller', name) }}", request, name=name) == "/ads/buy-ad-space/ann/"


def test_the_pager_links_the_neighbours_and_with_ends_the_first_and_last_pages():
    pages = Paginator(range(50), 10)
    pager = '{% from "_pager.html" import pager %}'
    middle = render(pager + '{{ pager(p, "Pages", "Newer", "Older", ends=true) }}', p=pages.page(3))
    assert '<nav class="pager" aria-label="Pages">' in middle
    assert '<a href="?page=1">Newest</a> <a href="?page=2" rel="prev">Newer</a>' in middle
    assert "Page 3 of 5" in middle
    assert '<a href="?page=4" rel="next">Older</a> <a href="?page=5">Oldest</a>' in middle
    first = render(pager + '{{ pager(p, "Pages", "Previous", "Next") }}', p=pages.page(1))
    assert 'rel="prev"' not in first and '<a href="?page=2" rel="next">Next</a>' in first
    assert "Oldest" not in first
    alone = Paginator(range(5), 10).page(1)
    assert "<nav" not in render(pager + '{{ pager(p, "Pages", "a", "b") }}', p=alone)


@pytest.mark.parametrize("fmt", ["c", "Y-m-d H:i:s", "Y-m-d", "H:i"])
@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 4, 21, 5, 9, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        datetime(987, 6, 7, 8, 9, 10),  # naive, and a year under 1000
    ],
)
def test_the_date_filter_writes_what_djangos_does(value, fmt):
    from django.utils import dateformat

    from accounts.templating import date

    assert date(value, fmt) == dateformat.format(value, fmt)


def test_static_answers_what_djangos_static_answers_under_each_setting(settings):
    from django.templatetags.static import static

    for _ in range(2):  # the second time from the cache
        assert render("{{ static('css/site.css') }}") == static("css/site.css")
    settings.STATIC_URL = "/assets/"
    assert render("{{ static('css/site.css') }}") == "/assets/css/site.css"
    settings.STATIC_URL = "assets/"  # relative: under the script prefix
    try:
        set_script_prefix("/market/")
        assert render("{{ static('css/site.css') }}") == static("css/site.css")
        assert render("{{ static('css/site.css') }}").startswith("/market/assets/css/site")
    finally:
        set_script_prefix("/")
    assert render("{{ static('css/site.css') }}") == static("css/site.css")
