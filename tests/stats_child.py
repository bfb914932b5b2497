"""A server process viewing an ad's beacon, for tests/test_stats_counting.py.

    python tests/stats_child.py <now> <beacon path> <views per thread> <threads> <id> <ending>

Each thread views the beacon through Django's test client from its own addresses; then the
process ends as <ending> says: `flush` (flush, then exit), `exit` (a clean exit: the atexit hook
flushes), `crash` (os._exit at once: nothing flushed), `thread` (wait for the flusher thread to
write everything, then os._exit).
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def main() -> None:
    now, path, views, threads, ident, ending = sys.argv[1:7]
    import django

    django.setup()
    from django.test import Client

    import docstore
    from adspace import stats

    docstore.set_clock(docstore.FixedClock(int(now)))
    failures: list[int] = []

    def run(j: int) -> None:
        client = Client()
        for i in range(int(views)):
            response = client.get(
                path, REMOTE_ADDR=f"10.{ident}.{j}.{i % 250}", HTTP_USER_AGENT=AGENT
            )
            if response.status_code != 200:
                failures.append(response.status_code)

    workers = [threading.Thread(target=run, args=(j,)) for j in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        print(f"failed views: {failures[:5]}", file=sys.stderr)
        sys.exit(2)
    if ending == "flush":
        stats.flush()
    elif ending == "crash":
        os._exit(0)
    elif ending == "thread":
        deadline = time.monotonic() + 30
        while not stats.recorder.settled() and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(0 if stats.recorder.settled() else 3)


if __name__ == "__main__":
    main()
