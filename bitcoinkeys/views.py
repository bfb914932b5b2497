"""The Add funds tab: a deposit address with its QR code, its payments, "check now".

Views only parse input and call bitcoinkeys.pool (addresses) and bitcoinkeys.deposits (payments);
every refusal is a sentence on the page, never a 500: a node that cannot be reached is a message,
because the money is safe on the chain and the watcher credits it when the node is back.
"""

from __future__ import annotations

import hashlib
import importlib
import logging

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import locks, ratelimit
from accounts.gateway import ensure_account
from accounts.money import MoneyError, format_btc, parse_btc
from config.cache import CacheUnavailable
from docstore import get_clock, get_store

from . import deposits, faucet
from .chain import ChainError, get_chain

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 30
MAX_ADDRESS_LENGTH = 100
BUSY = "Your account is busy with another operation; try again in a moment."
NO_CHAIN = (
    "Deposits cannot be detected on this installation; staff can credit your balance by hand."
)
# A development run without a chain says how to get one (production keeps the sentence above).
LOCAL_CHAIN_HINT = (
    "To see deposits on this machine, make bitcoind available (BITCOIND=/path/to/bitcoind, "
    "../shared/tools/bitcoind or on PATH) and restart `make run`: it starts a local regtest "
    "node with a developer faucet (see README, Quick tour)."
)
TOO_SOON = f"You can check at most once every {CHECK_INTERVAL_SECONDS} seconds; try again shortly."


def _pool():
    # Looked up at call time (and through sys.modules), so the pool module is only needed once
    # someone asks for an address, and tests can stand in for it.
    return importlib.import_module("bitcoinkeys.pool")


def _pool_errors(pool) -> tuple[type[BaseException], ...]:
    return tuple({pool.OutOfKeys, getattr(pool, "KeyPoolError", pool.OutOfKeys)})


def qr_svg(address: str) -> str:
    """The `bitcoin:` URI of `address` as an inline SVG QR code, drawn here (no outside service)."""
    qr = segno.make(f"bitcoin:{address}", error="m")
    # segno writes only path data and attributes (no text from the address, no script), and the
    # address was validated when it was imported: the markup is safe to inline.
    return mark_safe(qr.svg_inline(scale=5, light="#fff", dark="#000"))  # noqa: S308


def check_allowed(username: str) -> bool:
    """At most one "check now" per user per CHECK_INTERVAL_SECONDS, counted in the shared cache.

    The time stored is the injected clock's, so tests move time instead of sleeping; the cache
    timeout only cleans up.
    """
    now = get_clock().now()
    digest = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
    key = f"deposit-check:{digest}"
    try:
        if cache.add(key, now, timeout=CHECK_INTERVAL_SECONDS):
            return True
        last = cache.get(key)
        if isinstance(last, int) and 0 <= now - last < CHECK_INTERVAL_SECONDS:
            return False
        cache.set(key, now, timeout=CHECK_INTERVAL_SECONDS)
    except CacheUnavailable:  # open while the cache is down (README, Security)
        log.warning("check-now pace not kept: cache unreachable")
    return True


def _page(request: HttpRequest, status: int = 200) -> HttpResponse:
    store = get_store()
    username = request.user.username
    ensure_account(store, get_clock(), username)
    view = deposits.deposit_view(store, get_chain(), username)
    current = next((a for a in view.addresses if a.current), None)
    context = {
        "active_tab": "funds",
        "view": view,
        "current": current,
        "qr": qr_svg(current.address) if current else None,
        "uri": f"bitcoin:{current.address}" if current else None,
        "no_chain": NO_CHAIN,
        "local_chain_hint": LOCAL_CHAIN_HINT if settings.DEBUG else None,
        "faucet": faucet.enabled(),
        "faucet_max": faucet.MAX_SATS,
        "check_interval": CHECK_INTERVAL_SECONDS,
    }
    return render(request, "bitcoinkeys/add_funds.html", context, status=status)


@login_required
@never_cache
def add_funds(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _deal(request: HttpRequest, fn_name: str, **kwargs: str) -> HttpResponse:
    pool = _pool()
    username = request.user.username
    store, clock = get_store(), get_clock()
    ensure_account(store, clock, username)
    try:
        address = getattr(pool, fn_name)(store, clock, username, **kwargs)
    except locks.AccountBusy:
        messages.error(request, BUSY)
    except _pool_errors(pool) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Your deposit address is {address}.")
    return redirect("add_funds")


def _address_allowance_left(request: HttpRequest) -> bool:
    """Dealing burns a key from the pool: at most ADDRESS_RATE_LIMIT requests per user an hour."""
    return ratelimit.hit("address", request.user.username, settings.ADDRESS_RATE_LIMIT, 3600)


TOO_MANY_ADDRESSES = (
    "You have asked for many addresses in the last hour; use the one shown or try later."
)


@login_required
@require_POST
def get_address(request: HttpRequest) -> HttpResponse:
    if not _address_allowance_left(request):
        messages.error(request, TOO_MANY_ADDRESSES)
        return _page(request, status=429)
    return _deal(request, "get_deposit_address")


@login_required
@require_POST
def new_address(request: HttpRequest) -> HttpResponse:
    # The old address stays watched: anything paid to it later is still credited. `replacing`
    # is the address the page showed: a double click or a second tab gets the address the
    # first click dealt instead of dealing yet another.
    if not _address_allowance_left(request):
        messages.error(request, TOO_MANY_ADDRESSES)
        return _page(request, status=429)
    replacing = request.POST.get("replacing", "")[:MAX_ADDRESS_LENGTH]
    if replacing:
        return _deal(request, "new_deposit_address", replacing=replacing)
    return _deal(request, "new_deposit_address")


@login_required
@require_POST
def check_now(request: HttpRequest) -> HttpResponse:
    username = request.user.username
    chain = get_chain()
    if not chain.available:
        messages.info(request, NO_CHAIN)
        return redirect("add_funds")
    if not check_allowed(username):
        messages.warning(request, TOO_SOON)
        return _page(request, status=429)
    store, clock = get_store(), get_clock()
    ensure_account(store, clock, username)
    try:
        result = deposits.check_deposits(store, clock, chain, username)
    except ChainError as exc:
        log.warning("check now for %s: %s", username, exc)
        messages.error(request, deposits.CHAIN_DOWN)
        return redirect("add_funds")
    if result["sats"]:
        messages.success(request, f"Credited {format_btc(result['sats'])} BTC to your balance.")
    if result["busy"]:
        messages.info(request, "A confirmed payment will be credited as soon as your account's "
                      "current operation finishes.")  # fmt: skip
    if not result["sats"] and not result["busy"]:
        if result["pending"]:
            messages.info(request, "Your payment is pending: it is credited once confirmed.")
        elif result["waiting"]:
            messages.info(request, "Confirmed, but below the minimum deposit: send a little more.")
        else:
            messages.info(request, "Nothing new yet.")
    return redirect("add_funds")


# --- the developer faucet (bitcoinkeys.faucet): development runs on the local chain only ---


def _faucet_or_404() -> None:
    if not faucet.enabled():
        raise Http404("no faucet here")


@login_required
@require_POST
def faucet_coins(request: HttpRequest) -> HttpResponse:
    _faucet_or_404()
    address = request.POST.get("address", "")[:MAX_ADDRESS_LENGTH]
    try:
        sats = parse_btc(request.POST.get("amount", ""))
        txid = faucet.send_test_coins(
            get_store(),
            request.user.username,
            address,
            sats,
            replaceable=request.POST.get("replaceable") == "on",
        )
    except MoneyError as exc:
        messages.error(request, f"Amount: {exc}")
        return _page(request, status=400)
    except faucet.FaucetError as exc:
        messages.error(request, str(exc))
        return _page(request, status=exc.status)
    messages.success(
        request,
        f"Sent {format_btc(sats)} test BTC to {address} (transaction {txid}). It shows as "
        "pending below; mine a block to confirm it.",
    )
    return redirect("add_funds")


@login_required
@require_POST
def faucet_block(request: HttpRequest) -> HttpResponse:
    _faucet_or_404()
    try:
        height = faucet.mine_blocks(1)
    except faucet.FaucetError as exc:
        messages.error(request, str(exc))
        return _page(request, status=exc.status)
    messages.success(
        request,
        f"Mined block {height}. Confirmed payments are credited by the worker within seconds, "
        'or at once with "Check now".',
    )
    return redirect("add_funds")
