"""System checks: bad docstore configuration fails loudly at start, with an id and a hint."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register


@register()
def docstore_configuration(app_configs, **kwargs):
    errors = []
    config = settings.DOCSTORE
    if config["BACKEND"] not in ("embedded", "couchbase", "memory"):
        errors.append(
            Error(
                f"DOCSTORE_BACKEND is {config['BACKEND']!r}.",
                hint="Use embedded (the default) or couchbase.",
                id="docstore.E001",
            )
        )
    if config["DURABILITY"] not in ("durable", "relaxed"):
        errors.append(
            Error(
                f"DOCSTORE_DURABILITY is {config['DURABILITY']!r}.",
                hint="Use durable (the default); relaxed is for benchmarks only.",
                id="docstore.E002",
            )
        )
    if config["BACKEND"] == "couchbase":
        if not config["COUCHBASE_CONNSTR"]:
            errors.append(
                Error(
                    "DOCSTORE_BACKEND is couchbase but COUCHBASE_CONNSTR is empty.",
                    hint="Set COUCHBASE_CONNSTR, e.g. couchbase://127.0.0.1.",
                    id="docstore.E003",
                )
            )
        levels = ("none", "majority", "majority_and_persist_active", "persist_to_majority")
        if config["COUCHBASE_DURABILITY"] not in levels:
            errors.append(
                Error(
                    f"COUCHBASE_DURABILITY is {config['COUCHBASE_DURABILITY']!r}.",
                    hint="Use one of " + ", ".join(levels) + ".",
                    id="docstore.E004",
                )
            )
    if settings.TIME_ZONE != "UTC":
        errors.append(
            Error(
                "TIME_ZONE must be UTC.",
                hint="Every time is unix seconds, UTC.",
                id="docstore.E005",
            )
        )
    return errors
