"""Append deposit addresses to the key pool's huge list, from a file or an extended public key."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from accounts.commands import StoreCommand
from accounts.workers import StopFlag
from bitcoinkeys import importer
from bitcoinkeys.addresses import KINDS, AddressError, iter_derived_addresses, network_params
from docstore import DocstoreError, get_clock, get_store


class Command(StoreCommand):
    help = (
        "Import deposit addresses into the key pool: FILE (one address per line; blank lines "
        "and #comments are skipped) or --xpub KEY --from I --to J (receive branch m/0/i for "
        "I <= i < J). Every address is validated for BITCOIN_NETWORK before anything is written; "
        "addresses already imported are skipped, so re-running an import is harmless."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", nargs="?", help="file of addresses, one per line")
        parser.add_argument("--xpub", help="extended public key (xpub/zpub/tpub/vpub...)")
        parser.add_argument("--from", dest="start", type=int, help="first index (with --xpub)")
        parser.add_argument("--to", dest="end", type=int, help="index to stop before (with --xpub)")
        parser.add_argument(
            "--kind",
            choices=KINDS,
            help="address kind for --xpub (default: the key's own kind, else p2wpkh)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="validate and count; write nothing"
        )

    def handle(self, *args, **options) -> None:
        self.verbosity = options["verbosity"]
        network = settings.BITCOIN_NETWORK
        try:
            network_params(network)
        except ValueError as exc:
            raise CommandError(f"BITCOIN_NETWORK: {exc}") from exc
        if options["file"] and options["xpub"]:
            raise CommandError("Give a FILE or --xpub, not both.")
        if options["xpub"]:
            items, unit = self._xpub_source(options, network), "index"
        elif options["file"]:
            items, unit = self._file_source(options["file"], network), "line"
        else:
            raise CommandError("Give a FILE of addresses, or --xpub KEY --from I --to J.")

        stop = StopFlag()
        try:
            with stop.handling_signals():
                result = importer.import_addresses(
                    get_store(),
                    get_clock(),
                    items(),
                    network,
                    unit=unit,
                    say=self._say,
                    dry_run=options["dry_run"],
                    should_stop=lambda: stop.requested,
                )
        except (importer.KeyImportError, AddressError) as exc:
            raise CommandError(str(exc)) from exc
        except DocstoreError as exc:
            raise CommandError(
                f"The docstore failed during the import ({exc}). Nothing is half-imported: "
                "run the same import again."
            ) from exc
        self._summary(result)

    def _say(self, message: str, level: int) -> None:
        if self.verbosity >= level:
            self.stdout.write(message)

    def _file_source(self, name: str, network: str):
        path = Path(name)
        if not path.exists():
            raise CommandError(f"{name}: no such file.")
        if not path.is_file():
            raise CommandError(f"{name}: not a file.")
        # Pass one: the whole file, streamed, before any write.
        check = importer.validate_source(importer.read_address_lines(path), network)
        if check.error_count:
            lines = [f"  line {where}: {text!r}: {reason}" for where, text, reason in check.errors]
            if check.error_count > len(check.errors):
                lines.append(f"  ... and {check.error_count - len(check.errors)} more")
            raise CommandError(
                f"{name}: {check.error_count} of {check.count} addresses are not valid "
                f"{network} addresses; nothing was imported.\n" + "\n".join(lines)
            )
        if check.count == 0:
            what = "is empty" if path.stat().st_size == 0 else "has only blank lines and comments"
            raise CommandError(f"{name} {what}: no addresses to import.")
        self._say(f"{name}: {check.count} addresses, all valid for {network}", 1)
        return lambda: importer.read_address_lines(path)

    def _xpub_source(self, options, network: str):
        start, end = options["start"], options["end"]
        if start is None or end is None:
            raise CommandError("--xpub needs --from I and --to J (J excluded).")
        if end <= start:
            raise CommandError(f"--to ({end}) must be above --from ({start}).")
        xpub, kind = options["xpub"], options["kind"]
        try:
            # Parses and checks the key (network, kind) before anything else happens.
            next(iter_derived_addresses(xpub, start, start + 1, kind, network))
        except AddressError as exc:
            raise CommandError(f"--xpub: {exc}") from exc
        self._say(f"deriving {end - start} addresses, m/0/{start} to m/0/{end - 1}", 1)
        return lambda: iter_derived_addresses(xpub, start, end, kind, network)

    def _summary(self, result: importer.ImportResult) -> None:
        skipped = []
        if result.already:
            skipped.append(f"{result.already} already imported")
        if result.duplicates:
            skipped.append(f"{result.duplicates} repeated in the input")
        if skipped and self.verbosity >= 1:
            self.stdout.write(f"skipped {', '.join(skipped)}")
        if result.stopped:
            self.stdout.write(
                self.style.WARNING(
                    f"Stopped on a signal after {result.imported} addresses; nothing is "
                    "half-imported. Run the same import again to continue."
                )
            )
        # Exit non-zero whenever nothing was (or, dry, would be) imported: a script that runs
        # this to refill the pool must not mistake "no new addresses" for a refill.
        if not result.imported:
            if result.dry_run:
                raise CommandError("Dry run: nothing new would be imported.")
            raise CommandError("Nothing was imported: every address was already in the pool.")
        if result.stopped or self.verbosity < 1:
            return
        if result.dry_run:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Dry run: would import {result.imported} addresses into "
                    f"{result.would_pages} huge-list pages; nothing was written."
                )
            )
        else:
            pages = result.pages
            where = f"page {pages[0]}" if len(pages) == 1 else f"pages {pages[0]}-{pages[-1]}"
            self.stdout.write(
                self.style.SUCCESS(f"Imported {result.imported} addresses into huge-list {where}.")
            )
