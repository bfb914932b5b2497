"""`{% url %}` with each answer kept per process.

Installed as a template builtin (config/settings/base.py), so it replaces Django's tag in every
template. `reverse()` is a pure function of the name, the arguments, the namespace, the script
prefix and the URLconf, yet costs ~40 us a call: base.html alone has five links on every page and
the sellers list twenty more. Arguments that are not plain strings or integers (whose text could
change under the same key), and names that do not reverse, take Django's own path unchanged.
"""

from __future__ import annotations

from django import template
from django.template.defaulttags import URLNode
from django.template.defaulttags import url as django_url
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils.html import conditional_escape

register = template.Library()

# Cleared when full: a bound that costs nothing per hit, and pages refill it in a few renders.
MAX_CACHED = 4096
_paths: dict[tuple, str] = {}


def _plain(value) -> bool:
    return type(value) in (str, int)


def url_scope() -> tuple[str, str | None]:
    """What besides its name and arguments decides a URL: the script prefix and the URLconf.

    Both are fixed for the rest of a request once its middleware has run, so a page may look
    them up once and pass them to every `cached_reverse` (each lookup costs ~10 us).
    """
    return get_script_prefix(), get_urlconf()


def cached_reverse(
    view_name: str,
    args: tuple = (),
    current_app: str | None = None,
    scope: tuple[str, str | None] | None = None,
) -> str:
    """`reverse(view_name, args=args)`, answered from the per-process cache when it can be.

    Raises NoReverseMatch like `reverse`. Only plain string and integer arguments are cached.
    """
    if not all(_plain(a) for a in args):
        return reverse(view_name, args=args, current_app=current_app)
    return _cached(view_name, args, (), current_app, scope)


def _cached(
    view_name: str,
    args: tuple,
    kwargs: tuple,
    current_app: str | None,
    scope: tuple[str, str | None] | None = None,
) -> str:
    key = (view_name, args, kwargs, current_app, *(scope or url_scope()))
    url = _paths.get(key)
    if url is None:
        url = reverse(view_name, args=args, kwargs=dict(kwargs), current_app=current_app)
        if len(_paths) >= MAX_CACHED:
            _paths.clear()
        _paths[key] = url
    return url


class CachedURLNode(URLNode):
    def render(self, context):
        args = tuple(arg.resolve(context) for arg in self.args)
        kwargs = tuple(sorted((k, v.resolve(context)) for k, v in self.kwargs.items()))
        if not all(_plain(a) for a in args) or not all(_plain(v) for _, v in kwargs):
            return super().render(context)
        view_name = self.view_name.resolve(context)
        request = getattr(context, "request", None)
        current_app = getattr(request, "current_app", None)
        if current_app is None:
            current_app = getattr(getattr(request, "resolver_match", None), "namespace", None)
        try:
            url = _cached(view_name, args, kwargs, current_app)
        except NoReverseMatch:
            return super().render(context)  # raises, or sets `as var` to "", as Django does
        if self.asvar:
            context[self.asvar] = url
            return ""
        return conditional_escape(url) if context.autoescape else url


@register.tag
def url(parser, token):
    node = django_url(parser, token)
    return CachedURLNode(node.view_name, node.args, node.kwargs, node.asvar)
