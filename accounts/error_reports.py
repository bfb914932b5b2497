"""What error reports may show: Django's filter, plus passwords written inside URLs.

Django hides settings whose names look secret (`...PASSWORD`, `SECRET_KEY`, ...), but
`BITCOIND_URL=http://user:password@host:port` carries the node's RPC password in a name that
does not, and so may `CACHE_URL` or a `DATABASE_URL` left in the environment (which the debug
page shows under runserver). Any `scheme://user:password@` in a setting or request header is
shown with the password replaced.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@", re.IGNORECASE)


def hide_url_passwords(text: str, substitute: str) -> str:
    return URL_PASSWORD.sub(lambda m: f"{m['head']}{substitute}@", text)


class CredentialHidingFilter(SafeExceptionReporterFilter):
    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            return hide_url_passwords(value, self.cleansed_substitute)
        return value
