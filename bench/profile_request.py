"""Time (and optionally profile) requests in-process against a seeded bench store.

Runs the site's WSGI application (config/handlers.py: the slim handler for the API, embeds and
images, the full stack for pages, the bare handler for `bare`) with no server and no network, so
a view's cost is measured without the load generator's noise; `--profile` prints
cProfile's top functions. Point it at the work folder `bench/run` prints or keeps:

  .venv/bin/python bench/profile_request.py /tmp/adspace-bench-XXXX floor api campaign
  .venv/bin/python bench/profile_request.py /tmp/adspace-bench-XXXX buy --profile

Each name is one of the bench rows; a figure is microseconds per request (best of 3 runs),
followed by the docstore calls (KV round trips) one request makes, by kind.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(work: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.dev",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DOCSTORE_PATH=str(work / "docstore.sqlite3"),
        DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
        CACHE_URL=f"filecache://{work / 'cache'}",
        BENCH_FLOOR="true",
        API_REQUESTS_PER_SLOT="0",
        LOCAL_CHAIN="off",
        # As bench/bench.py: every request comes from one client; count every click and beacon.
        STATS_IMPRESSIONS_PER_CLIENT="1000000000",
        STATS_CLICKS_PER_CLIENT="1000000000",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


def environ_for(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> dict:
    path, _, query = path.partition("?")
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "CONTENT_LENGTH": str(len(body)),
    }
    if body:
        env["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    for name, value in headers.items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env["_body"] = body
    return env


BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"}


def delivery_requests(handler, embed: dict) -> dict[str, dict]:
    """The live ad's click redirect and impression beacon, as a browser asks for them (the
    tokens read from the embed page, as bench.delivery_rows does)."""
    import re

    env = dict(embed)
    env["wsgi.input"] = io.BytesIO(env.pop("_body"))
    page = b"".join(handler(env, lambda s, h, exc_info=None: None)).decode()
    click = re.search(r'class="ad" href="(/c/[^"]+)"', page)
    beacon = re.search(r'class="beacon" src="(/i/[^"]+)"', page)
    if click is None or beacon is None:
        return {}
    return {
        "click": environ_for("GET", click[1], BROWSER),
        "beacon": environ_for("GET", beacon[1], BROWSER),
    }


def live_request(handler, campaign: dict) -> dict:
    """The campaign page's live-update poll, holding the ETag the head has now (a 304)."""
    owner, n = campaign["PATH_INFO"].rsplit("/", 2)[1:]
    url = f"/api/v1/campaigns/{owner}/{n}/live"
    env = environ_for("GET", url, {})
    env["wsgi.input"] = io.BytesIO(env.pop("_body"))
    headers = []
    for _ in handler(env, lambda s, h, exc_info=None: headers.extend(h)):
        pass
    return environ_for("GET", url, {"If-None-Match": dict(headers)["ETag"]})


def requests(work: Path) -> dict[str, object]:
    from bench.bench import BROWSE_PATH  # stdlib only

    seed = json.loads((work / "seed.json").read_text())
    owner, n = seed["campaign"].split("/")
    conn = sqlite3.connect(work / "docstore.sqlite3")
    (value,) = conn.execute(
        "SELECT value FROM docs WHERE key = ?", (f"account::{owner}",)
    ).fetchone()
    api_key = json.loads(value)["apiKey"]
    session, csrf = seed["sessions"][0], seed["csrf"]
    cookie = f"sessionid={session}; csrftoken={csrf}"
    hot = seed["hot"]
    counter = iter(range(10**9))

    def buy() -> dict:
        # A different buyer and campaign each time, as the wrk script does.
        i = next(counter)
        s = seed["sessions"][i % len(seed["sessions"])]
        return environ_for(
            "POST",
            f"/ads/buy-ad-space/{hot[i % len(hot)]}/buy",
            {
                "Cookie": f"sessionid={s}; csrftoken={csrf}",
                "X-CSRFToken": csrf,
                "Referer": "http://127.0.0.1/",
            },
            b"filler=0&accepted_price=1000000000000000",
        )

    return {
        "bare": environ_for("GET", "/bench/bare", {}),
        "floor": environ_for("GET", "/bench/floor", {}),
        "api": environ_for(
            "GET", f"/api/v1/ads/{owner}/{n}/current", {"Authorization": f"Bearer {api_key}"}
        ),
        "embed": environ_for("GET", f"/embed/{owner}/{n}", {}),
        "image": environ_for("GET", seed["image"], {}),
        "campaign": environ_for("GET", f"/ads/buy-ad-space/{owner}/{n}", {}),
        "campaign-signed-in": environ_for(
            "GET", f"/ads/buy-ad-space/{owner}/{n}", {"Cookie": cookie}
        ),
        "sellers": environ_for("GET", "/ads/buy-ad-space/", {}),
        "browse": environ_for("GET", BROWSE_PATH, {}),  # the bench's filtered browse row
        "home": environ_for("GET", "/", {}),
        "account": environ_for("GET", "/account/", {"Cookie": cookie}),
        "buy": buy,
    }


def call(handler, template) -> int:
    env = dict(template() if callable(template) else template)
    env["wsgi.input"] = io.BytesIO(env.pop("_body"))
    status = []
    body = handler(env, lambda s, h, exc_info=None: status.append(s))
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()
    return int(status[0][:3])


def round_trips(handler, template, n: int = 50) -> str:
    """The docstore calls one request makes, by kind (averaged over `n` requests)."""
    import docstore
    from docstore.faults import Hook, HookedStore

    class Count(Hook):
        def __init__(self):
            self.calls: dict[str, int] = {}

        def before(self, op: str, key: str) -> None:
            self.calls[op] = self.calls.get(op, 0) + 1

    count = Count()
    docstore.set_store(HookedStore(docstore.get_store(), count))
    try:
        for _ in range(n):
            call(handler, template)
    finally:
        docstore.set_store(None)
    total = sum(count.calls.values()) / n
    kinds = ", ".join(f"{op} {c / n:g}" for op, c in sorted(count.calls.items()))
    return f"{total:g} KV calls ({kinds})" if kinds else "no KV call"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("rows", nargs="+")
    parser.add_argument("-n", type=int, default=2000, help="requests per run")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions")
    parser.add_argument(
        "--sample", action="store_true", help="pyinstrument's call tree (pip install pyinstrument)"
    )
    args = parser.parse_args()
    setup(args.work)
    from config.handlers import build_application

    handler = build_application()
    catalogue = requests(args.work)
    catalogue.update(delivery_requests(handler, catalogue["embed"]))
    catalogue["live"] = live_request(handler, catalogue["campaign"])
    for name in args.rows:
        template = catalogue[name]
        statuses = {call(handler, template) for _ in range(20)}  # warm the caches
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(args.n):
                call(handler, template)
            best = min(best, (time.perf_counter() - t) / args.n)
        print(
            f"{name:<20} {best * 1e6:8.0f} us/request  (status {sorted(statuses)}), "
            f"{round_trips(handler, template)}"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.n):
                call(handler, template)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(
                os.environ.get("PROFILE_SORT", "cumulative")
            ).print_stats(int(os.environ.get("PROFILE_LINES", "40")))
            print(out.getvalue())
        if args.sample:
            from pyinstrument import Profiler

            sampler = Profiler(interval=0.0002)
            sampler.start()
            for _ in range(args.n):
                call(handler, template)
            sampler.stop()
            print(sampler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
