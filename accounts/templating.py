"""The Jinja2 environment of the site's pages (templates in `jinja2/`).

Pages render through Jinja2 rather than Django's template language because a page is mostly
template work and Jinja2 compiles each template to Python once: DTL's node-by-node rendering was
about 60 % of the campaign page's time (README, "Benchmarks"). Only the admin keeps Django's
templates (`templates/admin/`), since it extends Django's own.

What the DTL templates had from tags and filters is here as globals and filters: `url()` and
`static()` answered from per-process caches, the money filters, `pluralize`, `date`, `escapejs`,
and `header_balance()` for the signed-in header. Jinja2 escapes `"` as `&#34;` where Django
wrote `&quot;`: the same text to a browser.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.templatetags.static import static as static_url
from django.utils import dateformat
from django.utils.html import escapejs

from jinja2 import ChainableUndefined, Environment, pass_context

from .templatetags.cached_url import cached_reverse, url_scope
from .templatetags.money import account_balance_of, btc, btc_change, percent


@pass_context
def url(context, view_name: str, *args) -> str:
    request = context.get("request")
    if request is None:
        return cached_reverse(view_name, args)
    # A page has a dozen links; their common scope is looked up once per request.
    scope = getattr(request, "_url_scope", None)
    if scope is None:
        scope = request._url_scope = url_scope()
    return cached_reverse(view_name, args, scope=scope)


# static(path) -> URL, per process: the manifest is read once when the process starts, so the
# answer changes only with the settings it is read under (STATIC_URL, which carries the script
# prefix when relative, and DEBUG, which turns hashed names off) or a storage setting a test
# changes. Paths come from the templates' own literals.
_static_urls: dict[tuple[str, str, bool], str] = {}


def static(path: str) -> str:
    key = (path, settings.STATIC_URL, settings.DEBUG)
    found = _static_urls.get(key)
    if found is None:
        if len(_static_urls) >= 1024:
            _static_urls.clear()
        found = _static_urls[key] = static_url(path)
    return found


@receiver(setting_changed)
def _forget_static_urls(setting: str, **kwargs) -> None:
    if setting in ("STORAGES", "STATIC_ROOT", "STATICFILES_DIRS", "STATIC_URL"):
        _static_urls.clear()


def pluralize(count, suffix: str = "s") -> str:
    """ "s" unless the count is exactly 1 (Django's `pluralize` for numbers)."""
    try:
        return "" if int(count) == 1 else suffix
    except (TypeError, ValueError):
        return ""


def date(value: datetime | None, fmt: str) -> str:
    """Django's `date` filter: the same format characters ("Y-m-d H:i:s", "c")."""
    if value is None:
        return ""
    # The pages' two formats, written out as django.utils.dateformat does (`c` is isoformat(),
    # the others zero-padded fields), without its per-call formatter and regex split.
    if isinstance(value, datetime):
        if fmt == "c":
            return value.isoformat()
        if fmt == "Y-m-d H:i:s":
            return (
                f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
                f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
            )
    return dateformat.format(value, fmt)


def environment(**options) -> Environment:
    # A missing variable, or an attribute of one, renders empty as in DTL, never an error page.
    options["undefined"] = ChainableUndefined
    env = Environment(**options)  # noqa: S701 - the backend passes autoescape=True
    env.globals.update(url=url, static=static, header_balance=account_balance_of)
    env.filters.update(
        btc=btc,
        btc_change=btc_change,
        percent=percent,
        pluralize=pluralize,
        date=date,
        escapejs=escapejs,
    )
    return env
