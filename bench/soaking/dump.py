"""What the soak reads from the store at the end (and while it heals): one `manage.py shell` run
printing accounts, deposits, campaigns and withdrawals as JSON, through the site's own gateways,
so it works on every docstore backend."""

from __future__ import annotations

import json

DUMP = r"""
import json
from django.conf import settings
from accounts.gateway import full_ledger, iter_accounts
from adspace import gateway as ag
from bitcoinkeys import deposits as dep
from bitcoinkeys import gateway as bg
from docstore import NotFound, get_store

s = get_store()
full = FULL
out = {"accounts": {}, "deposits": {}, "campaigns": {}, "withdrawals": {}, "lease": None}
for u, doc in iter_accounts(s):
    a = doc.value
    row = {"balance": a["balance"], "lock": a.get("lock"), "btc": (a.get("btc") or {}).get("state")}
    if full:
        row["ledger"] = full_ledger(s, u, a)
    out["accounts"][u] = row
addresses = list(dep._iter_deposit_addresses(s))
found = s.get_multi([bg.deposit_key(x) for x in addresses])
for x in addresses:
    d = found.get(bg.deposit_key(x))
    if d is not None:
        credited = d.value.get("credited") or {}
        out["deposits"][x] = {
            "username": d.value["username"],
            "credited": {op: e["sats"] for op, e in credited.items()},
        }
for o, n in ag.iter_campaign_refs(s):
    try:
        c = ag.get_campaign(s, o, n).value
    except NotFound:
        continue
    last = c.get("last")
    k = last["slot"] if last else -1
    keys = [ag.tx_key(o, n, i) for i in range(k + 1)]
    txs = s.get_multi(keys)
    lag = bool(s.get_multi([ag.slot_key(o, n, k + 1)]))
    uncredited = [x for x in keys if x not in txs or txs[x].value["state"] != "credited"]
    out["campaigns"][f"{o}/{n}"] = {"last": k, "lag": lag, "uncredited": uncredited}
try:
    from bitcoinkeys import withdrawals as w
    from bitcoinkeys.payout_lease import LEASE_KEY
except ImportError:
    w = None
if w is not None:
    for u in out["accounts"]:
        out["withdrawals"][u] = [
            {
                **{k: r.get(k) for k in ("i", "state", "amount", "fee", "address", "txid")},
                # Every batch the request was ever put in (payouts.py): the wallet comments
                # it may have been paid under.
                "batches": [h["batch"] for h in r["history"] if h.get("batch")],
            }
            for r in w.user_withdrawals(s, u, limit=10**6)
        ]
    try:
        out["lease"] = s.get(LEASE_KEY).value
    except NotFound:
        pass
sets = s.get_multi([bg.keyset_key(i) for i in range(settings.KEYPOOL_SETS)])
out["filling"] = sorted(k for k, d in sets.items() if "filling" in d.value)
out["alerts"] = sum(len(a.get("outpoints", {})) for a in dep.iter_alerts(s))
print("SOAKJSON " + json.dumps(out))
"""


def parse_dump(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("SOAKJSON "):
            return json.loads(line[len("SOAKJSON ") :])
    raise RuntimeError(f"the docstore dump printed no result:\n{output}")
