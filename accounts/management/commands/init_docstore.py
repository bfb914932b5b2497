"""Make sure the docstore answers and its root documents exist. Safe to run any number of times."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError

from accounts.commands import StoreCommand
from accounts.workers import InitError, check_reachable, init_documents
from docstore import get_clock, get_store


class Command(StoreCommand):
    help = "Check that the docstore is reachable and create the root documents that must exist."

    def handle(self, *args, **options) -> None:
        verbosity = options["verbosity"]
        store = get_store()
        try:
            check_reachable(store)
        except Exception as exc:
            # Any backend error (a refused connection is not a DocstoreError) means the same thing.
            raise CommandError(f"The docstore is not reachable: {exc}") from exc
        if verbosity >= 2:
            self.stdout.write("docstore reachable")
        try:
            created = init_documents(store, get_clock())
        except InitError as exc:
            raise CommandError(str(exc)) from exc
        if verbosity >= 2:  # one line a document: a fresh store has a thousand key sets
            for key in created:
                self.stdout.write(f"created {key}")
        if verbosity >= 1:
            summary = f"{len(created)} documents created" if created else "nothing to create"
            self.stdout.write(self.style.SUCCESS(f"Docstore ready: {summary}."))
        if settings.LOCAL_CHAIN_XPUB and settings.CHAIN_BACKEND == "bitcoind":
            self._local_chain_keys(store, verbosity)

    def _local_chain_keys(self, store, verbosity: int) -> None:
        """`make run`'s local regtest node: keep deposit addresses from its keys wallet in the
        pool, so "Get a deposit address" works on a fresh machine."""
        from bitcoinkeys.chain import ChainError
        from bitcoinkeys.importer import KeyImportError
        from bitcoinkeys.local_chain import ensure_deposit_keys

        say = self.stdout.write if verbosity >= 1 else (lambda message: None)
        try:
            ensure_deposit_keys(store, get_clock(), settings.LOCAL_CHAIN_XPUB, say)
        except (KeyImportError, ChainError) as exc:
            raise CommandError(f"local chain deposit addresses: {exc}") from exc
