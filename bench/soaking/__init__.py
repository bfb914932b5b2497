"""make soak: the whole system under load and faults, then healed, audited and reconciled.

Starts the real thing on a fresh temporary directory (migrate, init_docstore, a key pool of regtest
addresses from a fixed seed, gunicorn with 2 workers of 8 threads and `manage.py run_workers` as
two processes, as bin/serve starts them) against the scriptable JSON-RPC bitcoind of
tests/rpcserver.py, which runs inside this process on a loopback port. Simulated users then drive it over HTTP for the
given time, doing everything a person can (register, log in, get deposit addresses, upload ads,
create campaigns, race each other for slots, withdraw and cancel), while this process plays the
rest of the world: it pays users' addresses and mines blocks (sometimes fee-bumping or
double-spending an unconfirmed payment, sometimes reorging a block away), runs the withdrawal
processor on a timer, and kills things with SIGKILL (a gunicorn worker, the worker process, the
processor in the middle of a payout).

Then a heal phase (no more faults or users) lets recovery, the creditor, the watcher and the
processor drain everything, `manage.py audit` must pass, no lock may remain, no HTTP answer may
have been a 500, and what every simulated user saw (deposits the chain confirmed to their
addresses, purchases, withdrawals, cancellations, sales) must agree with the server's ledgers to
the sat. Requests whose answer was lost to a kill are "unknown outcomes": the user re-reads their
account page as a person would, and whatever is left unknown is reconciled by ledger ref at the end.

Every random choice of the simulation comes from --seed (printed, to replay); the scheduling of
threads and processes does not. Loopback only. Exits non-zero on any failure.

    bench/soak [--minutes 5] [--users 30] [--seed S] [--heal-timeout 180] [--keep]
               [--couchbase | --cluster] [--net-faults]
    (bench/soak runs `python -m bench.soaking`; `make soak-cluster` runs --cluster)

--cluster runs the production topology (cluster.py): gocaves, Redis and PostgreSQL started by the
run, two web nodes (each request to one at random) and two worker nodes (`--shard 0/2 --node w0`,
`--shard 1/2 --node w1`); the fault schedule also kills whole nodes, a password changed through
one node must sign the user out on the other, and a run must have injected enough faults.

The package: common.py (settings, money helpers, counters), client.py (HTTP and page parsing),
chain.py (the test bitcoind and the payments), users.py and money.py (the simulated users),
processes.py (web and worker nodes, the processor), faults.py (the fault schedule), cluster.py
(--cluster: its services, thresholds and the cross-node password check), dump.py and
reconcile.py (what the store holds, and whether it agrees with what the users saw), report.py (the
summary), main.py (the run).
"""
