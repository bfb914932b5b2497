"""The base of every management command that uses the docstore.

A store that cannot be reached (a cluster down at start, a wrong password) is one clear line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from docstore import TemporaryFailure


class StoreCommand(BaseCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except TemporaryFailure as exc:
            raise CommandError(f"The docstore is not reachable: {exc}") from exc
