"""A seller's API key: checking a presented key, and replacing it (the API key tab).

The key lives in the account document next to the balance and the lock, which the money
protocols change with CAS; replacing it is one CAS of the whole document that changes `apiKey`
only, re-read and retried on a mismatch, so it never undoes a lock or a ledger entry written
in between (and a money protocol racing with it re-reads in turn). The API reads the key from the
account document on every request, so an old key stops working the moment the CAS lands.

The tab shows examples for one of the seller's campaigns, which the adspace app owns; accounts
does not import adspace (dependencies point one way), so adspace registers a lister here.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from docstore import Ambiguous, CasMismatch, NotFound, Store

from .gateway import account_key, new_api_key
from .locks import MAX_ATTEMPTS, AccountBusy, AccountMissing

# Far longer than any key we issue (32 characters); a longer one is refused before comparing.
MAX_KEY_LENGTH = 256

CampaignLister = Callable[[Store, str], list[dict]]
_campaign_lister: CampaignLister | None = None


def keys_match(presented: str | None, stored: str | None) -> bool:
    """Constant-time comparison of a presented key with the account's; False if either is absent."""
    if not presented or not stored or len(presented) > MAX_KEY_LENGTH:
        return False
    # Bytes, because compare_digest refuses non-ASCII str and a key arrives as arbitrary text.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), stored.encode("utf-8", "surrogatepass")
    )


def regenerate_api_key(store: Store, username: str) -> str:
    """Give the account a new API key and return it; the old one stops working at once."""
    key = new_api_key()
    for _ in range(MAX_ATTEMPTS):
        try:
            doc = store.get(account_key(username))
        except NotFound:
            raise AccountMissing() from None
        if doc.value.get("apiKey") == key:
            return key  # an ambiguous write of ours that did land
        try:
            store.replace(account_key(username), {**doc.value, "apiKey": key}, doc.cas)
            return key
        except (CasMismatch, Ambiguous):
            continue  # the re-read decides: ours landed, or someone else's write came first
    raise AccountBusy()


def set_campaign_lister(lister: CampaignLister | None) -> None:
    """Register `lister(store, username) -> [{"n", "width", "height"}, ...]` (the adspace app)."""
    global _campaign_lister
    _campaign_lister = lister


def seller_campaigns(store: Store, username: str) -> list[dict]:
    """The user's campaigns as the registered lister reports them; none without one."""
    return _campaign_lister(store, username) if _campaign_lister is not None else []
