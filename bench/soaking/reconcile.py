"""Heal, audit, reconcile: what is left to drain, and whether every simulated user's own record of
what it saw agrees with the server's ledgers (and the payout wallet) to the sat."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .chain import Chain
from .common import SALE_FEE_PERMILLE, fee_up
from .money import Unknown
from .users import User


def drained(dump: dict, chain: Chain) -> list[str]:
    """What is still left to do; empty once everything has settled."""
    left = []
    for u, a in sorted(dump["accounts"].items()):
        if a["lock"]:
            left.append(f"account::{u} locked ({a['lock']['kind']} {a['lock']['ref']})")
        if a["btc"] == "getting":
            left.append(f"account::{u} still getting an address")
    for key in dump.get("filling", []):
        left.append(f"{key} still filling")
    for ref, c in sorted(dump["campaigns"].items()):
        if c["lag"]:
            left.append(f"campaign {ref} lags behind a sold slot")
        for tx in c["uncredited"]:
            left.append(f"{tx} not credited to the seller")
    credited = {op for d in dump["deposits"].values() for op in d["credited"]}
    for op, sats in sorted(chain.confirmed_to(set(dump["deposits"])).items()):
        if op not in credited:
            left.append(f"confirmed payment {op} ({sats} sats) not credited")
    for u, reqs in sorted(dump["withdrawals"].items()):
        for r in reqs:
            if r["state"] in ("queued", "sending", "failed"):
                left.append(f"withdraw::{u}::{r['i']} is {r['state']}")
    return left


@dataclass
class Reconciliation:
    disagreements: list[str] = field(default_factory=list)
    resolved: Counter = field(default_factory=Counter)
    checked: Counter = field(default_factory=Counter)


def reconcile(users: list[User], dump: dict, chain: Chain) -> Reconciliation:
    """Every server ledger entry must be explained by what the user saw, and everything the user
    is certain of must be on the server, to the sat."""
    rec = Reconciliation()
    bad = rec.disagreements
    by_name = {u.name: u for u in users}
    confirmed = chain.confirmed()
    # Sales the buyers know of (told, or learned from their own ledgers): slot ref -> price.
    sales: dict[str, int] = {}
    credit_entries: list[tuple[str, dict]] = []
    for name, account in sorted(dump["accounts"].items()):
        u = by_name.get(name)
        if u is None:
            bad.append(f"server has an account {name} nobody registered")
            continue
        ledger = account.get("ledger", [])
        expected_deposits = {
            op: p.sats for op, p in confirmed.items() if p.user == name and p.address in u.addresses
        }
        seen_outpoints: set[str] = set()
        seen_refs: set[str] = set()
        for e in ledger:
            kind, ref, delta = e["kind"], e["ref"], e["delta"]
            seen_refs.add(ref)
            if kind == "deposit":
                outpoints = e.get("outpoints") or []
                for op in outpoints:
                    if op not in expected_deposits:
                        bad.append(f"{name}: deposit {op} credited, but the chain never "
                                   f"confirmed such a payment to {name}'s addresses")  # fmt: skip
                    elif op in seen_outpoints:
                        bad.append(f"{name}: deposit {op} credited twice")
                    seen_outpoints.add(op)
                want = sum(expected_deposits.get(op, 0) for op in outpoints)
                if delta != want:
                    bad.append(f"{name}: {ref} credited {delta} sats, the payments were {want}")
                rec.checked["deposit entries"] += 1
            elif kind == "buy":
                owner, n = ref.split("::")[1], int(ref.split("::")[2])
                if ref in u.buys:
                    if -delta != u.buys[ref]:
                        bad.append(f"{name}: {ref} charged {-delta}, the page said {u.buys[ref]}")
                    rec.checked["buys (told)"] += 1
                else:
                    op = _claim(u, "buy", _buy_fits(owner, n, -delta), ref)
                    if op is None:
                        bad.append(f"{name}: {ref} ({delta} sats) is a purchase {name} never made")
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
                sales[ref] = -delta
            elif kind == "withdraw-hold":
                i = int(ref.rsplit("::", 1)[1])
                if i in u.withdrawals:
                    amount, fee = u.withdrawals[i]
                    if -delta != amount + fee:
                        bad.append(f"{name}: {ref} held {-delta}, told {amount} + {fee}")
                    rec.checked["withdrawals (told)"] += 1
                else:
                    op = _claim(u, "withdraw", _withdraw_fits(-delta), ref)
                    if op is None:
                        bad.append(f"{name}: {ref} ({delta} sats) is a withdrawal never asked for")
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
            elif kind == "withdraw-refund":
                i = int(ref.rsplit("::", 1)[1])
                hold = next((x for x in ledger if x["ref"] == f"withdraw::{name}::{i}"), None)
                held = -hold["delta"] if hold else None
                state = u.final_states.get(i)
                if delta != held:
                    bad.append(f"{name}: {ref} refunded {delta}, the hold was {held}")
                if i in u.cancels:
                    rec.checked["cancels (told)"] += 1
                elif state == "failed-refunded":
                    rec.checked["failed payouts refunded"] += 1
                elif state == "refunded" and i in u.cancel_tried:
                    op = _claim(u, "cancel", lambda o, i=i: o.i == i, ref)
                    if op is None:
                        bad.append(f"{name}: {ref} refunded though {name} was told it could "
                                   f"not be cancelled")  # fmt: skip
                    elif op.resolved == "not":
                        bad.append(f"{name}: {ref} appeared after {name} saw it had not happened")
                else:
                    bad.append(f"{name}: {ref} (+{delta}) refunds a withdrawal {name} did not "
                               f"cancel and the page shows as {state!r}")  # fmt: skip
            elif kind == "credit":
                credit_entries.append((name, e))
            else:
                bad.append(f"{name}: unexpected ledger entry {kind} {ref} {delta}")
        for op, sats in sorted(expected_deposits.items()):
            if op not in seen_outpoints:
                bad.append(f"{name}: confirmed payment {op} of {sats} sats was never credited")
        for ref in u.buys:
            if ref not in seen_refs:
                bad.append(f"{name}: told 'You bought' {ref}, but it is not in the ledger")
        for op in u.unknowns:
            if op.resolved == "happened" and op.ref not in seen_refs:
                bad.append(f"{name}: saw {op.ref} on the account page; it is not in the ledger")
        for i in u.withdrawals:
            if f"withdraw::{name}::{i}" not in seen_refs:
                bad.append(f"{name}: told withdrawal #{i} was queued; it is not in the ledger")
        for i, total in u.cancels.items():
            ref = f"refund:withdraw::{name}::{i}"
            if ref not in seen_refs:
                bad.append(f"{name}: told withdrawal #{i} was cancelled; no refund in the ledger")
            elif next(x["delta"] for x in ledger if x["ref"] == ref) != total:
                bad.append(f"{name}: {ref} differs from the {total} sats the message said")
        expected_balance = sum(e["delta"] for e in ledger)
        if u.final_balance is not None and u.final_balance != expected_balance:
            bad.append(f"{name}: account page shows {u.final_balance}, ledger sums to "
                       f"{expected_balance}")  # fmt: skip
        if expected_balance != account["balance"]:
            bad.append(f"{name}: balance {account['balance']} != ledger sum {expected_balance}")
        rec.checked["accounts"] += 1
    for u in users:
        if u.name not in dump["accounts"] and (
            u.buys or u.withdrawals or any(p.user == u.name for p in confirmed.values())
        ):
            bad.append(f"{u.name} bought, withdrew or was paid, but has no account on the server")
    # Sellers: every sale credited once, at the price minus the fee.
    credited: set[str] = set()
    for name, e in credit_entries:
        _, owner, n, k = e["ref"].split("::")
        slot = f"slot::{owner}::{n}::{k}"
        if owner != name:
            bad.append(f"{name}: credited for {e['ref']}, a sale of {owner}'s campaign")
        if slot not in sales:
            bad.append(f"{name}: credited {e['delta']} for {e['ref']}, which no buyer paid for")
        else:
            net = sales[slot] - fee_up(sales[slot], SALE_FEE_PERMILLE)
            if e["delta"] != net:
                bad.append(f"{name}: {e['ref']} credited {e['delta']}, the sale nets {net}")
        if e["ref"] in credited:
            bad.append(f"{name}: {e['ref']} credited twice")
        credited.add(e["ref"])
        rec.checked["sales credited"] += 1
    for slot in sorted(sales):
        tx = "tx::" + slot.split("::", 1)[1]
        if tx not in credited:
            bad.append(f"sale {slot} was paid for but {tx} never credited the seller")
    for u in users:
        for op in u.unknowns:
            if not op.resolved:
                op.resolved, op.how = "not", "ledger at the end"
            rec.resolved[f"{op.kind} {'happened' if op.resolved == 'happened' else 'did not'} "
                         f"({op.how})"] += 1  # fmt: skip
    return rec


def _buy_fits(owner: str, n: int, price: int):
    return lambda op: op.owner == owner and op.n == n and price <= op.accepted


def _withdraw_fits(total: int):
    return lambda op: op.amount + op.fee == total


def _claim(u: User, kind: str, fits, ref: str) -> Unknown | None:
    """The unknown-outcome operation of `u` that explains entry `ref`, if any (and mark it)."""
    for op in u.unknowns:
        if op.kind == kind and op.resolved == "happened" and op.ref == ref:
            return op
    for op in u.unknowns:
        if op.kind == kind and not op.resolved and fits(op):
            op.resolved, op.ref, op.how = "happened", ref, "ledger at the end"
            return op
    for op in u.unknowns:
        if op.kind == kind and op.resolved == "not" and fits(op):
            return op
    return None


def check_payouts(dump: dict, chain: Chain) -> list[str]:
    """Every sent withdrawal left the payout wallet exactly once (one transaction, its batch's),
    to its address, for its amount; nothing else left it."""
    bad = []
    payouts = chain.payouts()  # batch key -> [(txid, address, sats)]
    paid_in: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u, reqs in dump["withdrawals"].items():
        for r in reqs:
            key = f"withdraw::{u}::{r['i']}"
            paid = [b for b in r.get("batches", []) if b in payouts]
            if r["state"] == "sent":
                if len(paid) != 1:
                    bad.append(f"{key} is sent, the payout wallet paid it {len(paid)} times")
                    continue
                txids = {txid for txid, _, _ in payouts[paid[0]]}
                if txids != {r["txid"]}:
                    bad.append(f"{key} records {r['txid']}, its batch went out as {txids}")
                paid_in[paid[0]][r["address"]] += r["amount"]
            elif paid:
                bad.append(f"{key} is {r['state']}, yet the payout wallet paid it in {paid}")
    for batch, sends in payouts.items():
        outputs: dict[str, int] = defaultdict(int)
        for _, address, sats in sends:
            outputs[address] += sats
        if dict(outputs) != dict(paid_in.get(batch, {})):
            bad.append(
                f"the payout wallet sent {sends} under {batch!r}, which pays {paid_in.get(batch)}"
            )
    return bad
