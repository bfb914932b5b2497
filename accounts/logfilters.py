"""Logging filters: no API key reaches a log line.

The live-ad API takes its key as `?key=` too. Django's request loggers name paths only, but
runserver's request lines (`django.server`) and any message that quotes a URL would carry the
query string; this filter, on every handler of the site's LOGGING, replaces the value of every
`key=` parameter it finds in the finished message. gunicorn's access log is kept clean by its
format (config/gunicorn.py).
"""

from __future__ import annotations

import logging
import re

_KEY_PARAMETER = re.compile(r"([?&;]key=)[^&;\s\"'#]*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _KEY_PARAMETER.sub(r"\g<1>" + REDACTED, text)


class RedactApiKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True
