"""`{% url %}` answers from a per-process cache, and must answer exactly what `reverse` does."""

from __future__ import annotations

import pytest
from django.template import Context, Template
from django.urls import NoReverseMatch, reverse, set_script_prefix

from accounts.templatetags import cached_url


def render(source: str, **context) -> str:
    return Template(source).render(Context(context))


pytestmark = pytest.mark.usefixtures("empty_url_cache")


def test_the_tag_answers_what_reverse_answers_with_and_without_arguments():
    for _ in range(2):  # the second time from the cache
        assert render("{% url 'home' %}") == reverse("home")
        assert render("{% url 'seller' name %}", name="sam") == reverse("seller", args=["sam"])
        assert render("{% url 'campaign' 'sam' 3 %}") == reverse("campaign", args=["sam", 3])


def test_each_script_prefix_gets_its_own_answer():
    assert render("{% url 'account' %}") == "/account/"
    set_script_prefix("/market/")
    assert render("{% url 'account' %}") == "/market/account/"


def test_an_unknown_name_still_raises_and_as_var_still_swallows_it():
    with pytest.raises(NoReverseMatch):
        render("{% url 'no-such-page' %}")
    assert render("{% url 'no-such-page' as link %}[{{ link }}]") == "[]"


def test_as_var_sets_the_variable():
    assert (
        render("{% url 'seller' 'sam' as link %}<{{ link }}>")
        == "<" + reverse("seller", args=["sam"]) + ">"
    )


def test_arguments_that_are_not_plain_text_or_numbers_are_not_cached():
    class Name:
        def __str__(self):
            return "sam"

    assert render("{% url 'seller' name %}", name=Name()) == reverse("seller", args=["sam"])
    assert not any("sam" in str(key) for key in cached_url._paths)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(cached_url, "MAX_CACHED", 10)
    for i in range(25):
        assert cached_url.cached_reverse("seller", (f"u{i}",)) == reverse("seller", args=[f"u{i}"])
    assert len(cached_url._paths) <= 10
