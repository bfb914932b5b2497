"""A staff credit or debit with a written reason; idempotent by request id."""

from __future__ import annotations

import logging
import re

from django.core.management.base import CommandError

from accounts import locks
from accounts.adjust import AdjustError, adjust_balance, new_request_id
from accounts.commands import StoreCommand
from accounts.gateway import get_account
from accounts.models import USERNAME_RE
from accounts.money import format_btc
from docstore import DocstoreError, NotFound, get_clock, get_store

log = logging.getLogger("accounts.money")

REQUEST_ID_RE = r"^[A-Za-z0-9_-]{1,64}$"


class Command(StoreCommand):
    help = "Credit (positive) or debit (negative) an account by a whole number of satoshis."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("sats", type=int, help="satoshis; negative for a debit")
        parser.add_argument("--reason", required=True, help="why (kept in the ledger)")
        parser.add_argument(
            "--request-id",
            help="repeat a request safely: the same id is applied at most once (default: new id)",
        )

    def handle(self, *args, **options) -> None:
        username, sats, reason = options["username"], options["sats"], options["reason"]
        request_id = options["request_id"] or new_request_id()
        if not re.match(USERNAME_RE, username):
            raise CommandError("Usernames are 1 to 32 letters and digits.")
        if not re.match(REQUEST_ID_RE, request_id):
            raise CommandError("A request id is 1 to 64 letters, digits, '-' or '_'.")
        store, clock = get_store(), get_clock()
        try:
            get_account(store, username)
        except NotFound:
            raise CommandError(f"There is no account for {username!r}.") from None
        retry = f"retry with --request-id {request_id}"
        try:
            applied = adjust_balance(
                store, clock, username, sats, reason, request_id=request_id, staff="manage.py"
            )
        except locks.AccountMissing:
            raise CommandError(f"There is no account for {username!r}.") from None
        except locks.AccountBusy as exc:
            raise CommandError(f"{exc} Nothing was changed; {retry}.") from None
        except AdjustError as exc:
            raise CommandError(f"{exc} Nothing was changed.") from None
        except DocstoreError as exc:
            # The lock may be taken; recovery finishes it, and the same id never applies twice.
            raise CommandError(f"The docstore failed ({exc}); {retry}.") from exc
        log.info(
            "staff adjust by=manage.py user=%s delta=%d request=%s applied=%s",
            username, sats, request_id, applied,
        )  # fmt: skip
        if not applied:
            if options["verbosity"] >= 1:
                self.stdout.write(
                    self.style.WARNING(f"Request {request_id} already applied; nothing changed.")
                )
            return
        balance = get_account(store, username).value["balance"]
        verb, preposition = ("Credited", "to") if sats > 0 else ("Debited", "from")
        amount = f"{abs(sats)} sats ({format_btc(abs(sats))} BTC)"
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"{verb} {amount} {preposition} {username}; "
                    f"balance now {balance} sats. Request id {request_id}."
                )
            )
