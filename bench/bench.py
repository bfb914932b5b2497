"""make bench: seed a fresh store, serve it as `make run` does, and measure against the floor.

Every HTTP figure is the median of 3 interleaved wrk runs (endpoint A, B, C, then A, B, C again),
so drift on the machine hits every row alike; each row is also given as a ratio to two floors,
the cheapest Django view served by the same gunicorn in the same run: the **full floor**
(`/bench/floor`, through every middleware the pages use) and the **bare floor** (`/bench/bare`,
SecurityMiddleware and CommonMiddleware only; config/handlers.py). Prints one table and writes it
as JSON (bench/results/<time>.json) for bench/compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
GUNICORN = str(ROOT / ".venv" / "bin" / "gunicorn")

BUY_LUA = r"""
local data = {}
local threads = {}
function init(args)
  local f = io.open(args[1]); local text = f:read("*a"); f:close()
  data.csrf = text:match('"csrf": "([^"]+)"')
  data.sessions, data.hot = {}, {}
  for s in text:match('"sessions": %[(.-)%]'):gmatch('"([^"]+)"') do table.insert(data.sessions, s) end
  for c in text:match('"hot": %[(.-)%]'):gmatch('"([^"]+)"') do table.insert(data.hot, c) end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000)
  -- What each answer told the buyer (its messages cookie), for bench.py to sort out.
  data.out = io.open(args[2] .. tid, "w")
end
-- Each wrk thread takes its own share of the buyers, in turn, so a buyer is rarely in two
-- requests at once (that would be "account busy", not a race for a slot).
local thread_count = 0
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end
local turn = 0
function request()
  turn = turn + 1
  local s = data.sessions[(tid + turn * 2) % #data.sessions + 1]
  local c = data.hot[math.random(#data.hot)]
  return wrk.format("POST", "/ads/buy-ad-space/" .. c .. "/buy", {
    ["Cookie"] = "sessionid=" .. s .. "; csrftoken=" .. data.csrf,
    ["X-CSRFToken"] = data.csrf,
    ["Referer"] = "http://127.0.0.1/",
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }, "filler=0&accepted_price=1000000000000000")
end
function response(status, headers, body)
  local name = "c" .. status
  _G[name] = (_G[name] or 0) + 1
  local cookie = headers["Set-Cookie"]
  local message = cookie and cookie:match("messages=([^;]+)")
  data.out:write((message or "-") .. "\n")
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for _, code in ipairs({200, 302, 400, 403, 404, 429, 500, 502, 503}) do
      local v = t:get("c" .. code)
      if v then total[code] = (total[code] or 0) + v end
    end
  end
  for code, n in pairs(total) do io.write(string.format("STATUS %d %d\n", code, n)) end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict, **kw) -> str:
    return subprocess.run(
        cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True, **kw
    ).stdout


def parse_wrk(out: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    statuses = {int(c): int(n) for c, n in re.findall(r"STATUS (\d+) (\d+)", out)}
    return {
        "rps": rps,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "statuses": statuses,
    }


def wrk(
    url: str, seconds: int, connections: int, script: str | None = None, args: tuple = ()
) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    return parse_wrk(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a small data set (quick check)")
    args = parser.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        sys.exit("wrk is not installed: apt-get install wrk (bench/run does this)")

    work = Path(tempfile.mkdtemp(prefix="adspace-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Measure the site alone: no local regtest node (bin/serve, config/environment.py).
        "LOCAL_CHAIN": "off",
        "DOCSTORE_PATH": str(work / "docstore.sqlite3"),
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "CACHE_URL": f"filecache://{work / 'cache'}",
        "BENCH_FLOOR": "true",
        # The per-slot allowance would turn all but 50 answers into 429s; measure the serving path.
        "API_REQUESTS_PER_SLOT": "0",
        # Every wrk connection is one client (127.0.0.1): count every click and beacon it sends.
        "STATS_IMPRESSIONS_PER_CLIENT": "1000000000",
        "STATS_CLICKS_PER_CLIENT": "1000000000",
        # The creditor figures measure crediting, which review windows would hold back 24 h.
        "REVIEW_HOURS": "0",
        "LOG_LEVEL": "WARNING",
        "BIND": f"127.0.0.1:{port}",
    }
    seed_env = {**env, "DOCSTORE_DURABILITY": "relaxed"}
    run([PY, "manage.py", "migrate", "--noinput", "-v0"], env)
    run([PY, "manage.py", "init_docstore", "-v0"], env)
    run([PY, "manage.py", "collectstatic", "--noinput", "-v0"], env)
    sizes = ["--sellers", "100", "--buyers", "200", "--slots", "1000"] if args.small else []
    seed_file = work / "seed.json"
    print(run([PY, "bench/seed.py", "--out", str(seed_file), *sizes], seed_env).strip())
    seed = json.loads(seed_file.read_text())

    server = subprocess.Popen(["bin/serve"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/bench/floor", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        results = measure(base, seed, args, work)
        results["rss_mb"] = memory(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # Alone on the machine: the worker is stopped, so the passes neither race it nor the rows.
    results["passes"] = passes(env)
    report(results, seed)


def measure(base: str, seed: dict, args, work: Path) -> dict:
    owner, n = seed["campaign"].split("/")
    api_key = api_key_of(owner, work)
    session, csrf = seed["sessions"][0], seed["csrf"]
    account_lua = work / "account.lua"
    account_lua.write_text(f'wrk.headers["Cookie"] = "sessionid={session}; csrftoken={csrf}"\n')
    api_lua = work / "api.lua"
    api_lua.write_text(f'wrk.headers["Authorization"] = "Bearer {api_key}"\n')
    rows = {
        "bare floor": (f"{base}/bench/bare", None),
        "full floor": (f"{base}/bench/floor", None),
        "api current": (f"{base}/api/v1/ads/{owner}/{n}/current", str(api_lua)),
        "embed": (f"{base}/embed/{owner}/{n}", None),
        "image": (f"{base}{seed['image']}", None),
        **delivery_rows(base, owner, n, work),
        **live_rows(base, owner, n, work),
        "campaign page": (f"{base}/ads/buy-ad-space/{owner}/{n}", None),
        "sellers list": (f"{base}/ads/buy-ad-space/", None),
        "browse filtered": (f"{base}{BROWSE_PATH}", None),
        "account page": (f"{base}/account/", str(account_lua)),
    }
    samples: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (url, script) in rows.items():
            samples[name].append(wrk(url, args.seconds, 32, script))
    out = {name: median_of(runs) for name, runs in samples.items()}
    buy_lua = work / "buy.lua"
    buy_lua.write_text(BUY_LUA)
    before = sold_slots(work)
    told = work / "told-"
    buys = wrk(f"{base}/", args.seconds * 2, 50, str(buy_lua), (str(work / "seed.json"), str(told)))
    sales = sold_slots(work) - before
    answered = sum(buys["statuses"].values())
    errors = answered - buys["statuses"].get(302, 0)
    told = outcomes(work.glob("told-*"))
    # Answers wrk cut off at the end of the run were never read, so `told` may count a few less.
    buys.update(sales=sales, sales_per_s=sales / (args.seconds * 2),
                lost=told.get("lost the race", 0), errors=errors, told=told)  # fmt: skip
    out["buy POST"] = buys
    return out


# The first words of each thing a buy can tell the buyer (adspace/views.py buy_slot).
OUTCOMES = {
    "You bought": "bought",
    "Someone else just bought": "lost the race",
    "Your balance is": "could not afford the doubled price",
    "The price is now": "price above what was accepted",
    "Another operation": "account busy",
}


def outcomes(files) -> dict[str, int]:
    """What the buy answers told the buyers, read from the signed messages cookies they set."""
    import base64
    import zlib

    counts: dict[str, int] = {}
    for path in files:
        for line in Path(path).read_text().split():
            data = line.strip('"').split(":")[0]
            if data == "-" or not data:
                label = "no message"
            else:
                compressed, body = data.startswith("."), data.lstrip(".")
                raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
                text = (zlib.decompress(raw) if compressed else raw).decode()
                label = next((v for k, v in OUTCOMES.items() if k in text), "other")
            counts[label] = counts.get(label, 0) + 1
    return counts


def median_of(runs: list[dict]) -> dict:
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
    }


def api_key_of(owner: str, work: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(work / "docstore.sqlite3")
    (value,) = conn.execute(
        "SELECT value FROM docs WHERE key = ?", (f"account::{owner}",)
    ).fetchone()
    return json.loads(value)["apiKey"]


def sold_slots(work: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(work / "docstore.sqlite3")
    return conn.execute("SELECT count(*) FROM docs WHERE key LIKE 'slot::%'").fetchone()[0]


def memory(serve_pid: int) -> dict:
    out = {}
    for pid in children(serve_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "run_workers" in cmdline:
            out["worker process"] = round(rss_mb(pid), 1)
        elif "gunicorn" in cmdline:
            out["gunicorn master"] = round(rss_mb(pid), 1)
            for i, child in enumerate(children(pid)):
                out[f"gunicorn worker {i + 1}"] = round(rss_mb(child), 1)
    return out


PASSES = """
import time
from docstore import get_store, get_clock
from accounts.recovery import run_recovery
store, clock = get_store(), get_clock()
t = time.perf_counter(); run_recovery(store, clock); recovery = time.perf_counter() - t
from adspace.credit import run_creditor
t = time.perf_counter(); left = run_creditor(store, clock)["credited"]; credit = time.perf_counter() - t
t = time.perf_counter(); run_creditor(store, clock); credit_idle = time.perf_counter() - t
print({"recovery pass s": round(recovery, 3),
       f"creditor pass s (credits {left} sales the worker left)": round(credit, 3),
       "idle creditor pass s": round(credit_idle, 3)})
"""


def passes(env: dict) -> dict:
    out = run([PY, "manage.py", "shell", "-c", PASSES], env)
    return eval(out.strip().splitlines()[-1])  # noqa: S307 - our own dict literal


def ratios(rps: float, results: dict) -> str:
    """The row's rate over the full floor's and over the bare floor's, as the table prints them."""
    full, bare = results["full floor"]["rps"], results["bare floor"]["rps"]
    return f"{rps / full:>7.2f} {rps / bare:>7.2f}"


# A filtered browse page as a buyer asks for it: one size, a price ceiling, a slot length, only
# campaigns naming their site, the second page of the results (bench/profile_request.py: `browse`).
BROWSE_PATH = "/ads/buy-ad-space/?size=300x250&price_min=&price_max=0.01&hours=24&site=1&page=2"


# Issue 18's targets, with counting on, over the bare floor measured in the same run.
TARGETS_X_BARE = {
    "api current": 0.8,
    "embed": 0.8,
    "image": 0.8,
    "click redirect": 0.8,
    "beacon": 0.8,
    "live 304": 0.8,
    "campaign page": 0.4,
    # Issue 19: the filtered browse page (size, price range, slot length, has a site; page 2).
    "browse filtered": 0.3,
}


def report(results: dict, seed: dict) -> None:
    lines = [
        f"data: {seed['sold']} sold slots, seeded in {seed['seconds']} s",
        "x full: over the full floor (every page middleware); x bare: over the bare floor "
        "(SecurityMiddleware and CommonMiddleware only)",
        f"{'endpoint':<16} {'req/s':>9} {'x full':>7} {'x bare':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-2xx':>8}",
    ]
    for name, r in results.items():
        if name in ("rss_mb", "passes", "buy POST"):
            continue
        lines.append(
            f"{name:<16} {r['rps']:>9.0f} {ratios(r['rps'], results)} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['non2xx']:>8}"
        )
    b = results["buy POST"]
    lines.append(
        f"{'buy POST':<16} {b['rps']:>9.0f} {ratios(b['rps'], results)} {b['p50_ms']:>8.2f} "
        f"{b['p99_ms']:>8.2f}   sales {b['sales']} ({b['sales_per_s']:.1f}/s), "
        f"lost races {b['lost']}, errors {b['errors']}"
    )
    told = ", ".join(f"{label} {n}" for label, n in sorted(b["told"].items(), key=lambda x: -x[1]))
    lines.append(f"{'':<16} buyers were told: {told}")
    bare = results["bare floor"]["rps"]
    for name, floor in TARGETS_X_BARE.items():
        if name in results:
            got = results[name]["rps"] / bare
            verdict = "met" if got >= floor else "MISSED"
            lines.append(f"target {name:<16} >= {floor:.1f} x bare: {got:.2f} {verdict}")
    for name, value in results["passes"].items():
        lines.append(f"{name:<24} {value}")
    for name, value in results["rss_mb"].items():
        lines.append(f"RSS {name:<20} {value} MB")
    print("\n".join(lines))
    full, bare = results["full floor"]["rps"], results["bare floor"]["rps"]
    for name, r in results.items():
        if name not in ("rss_mb", "passes"):
            r["x_full_floor"], r["x_bare_floor"] = r["rps"] / full, r["rps"] / bare
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / time.strftime("%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


# A browser's User-Agent: wrk sends none, and a request without one is not counted (adspace.delivery).
BROWSER_LUA = 'wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"\n'


def delivery_rows(base: str, owner: str, n: str, work: Path) -> dict[str, tuple[str, str]]:
    """Rows for measure(): the live ad's click redirect (`/c/<token>`, a 302 wrk does not follow)
    and impression beacon (`/i/<token>`), as a browser requests them, so every request is
    counted. Every wrk connection is one client (127.0.0.1): run the server with
    STATS_IMPRESSIONS_PER_CLIENT and STATS_CLICKS_PER_CLIENT at 1000000000 in its env, or all but
    the first few are cheap 429s. Empty when the campaign shows no ad."""
    page = urllib.request.urlopen(f"{base}/embed/{owner}/{n}", timeout=10).read().decode()
    click = re.search(r'class="ad" href="(/c/[^"]+)"', page)
    beacon = re.search(r'class="beacon" src="(/i/[^"]+)"', page)
    if click is None or beacon is None:
        return {}
    script = work / "browser.lua"
    script.write_text(BROWSER_LUA)
    return {
        "click redirect": (base + click[1], str(script)),
        "beacon": (base + beacon[1], str(script)),
    }


def live_rows(base: str, owner: str, n: str, work: Path) -> dict[str, tuple[str, str]]:
    """The campaign page's live-update poll (adspace/live.py) as an open page sends it: with the
    ETag it holds, so nearly every answer is a 304 (the campaign changes only on a sale, a slot
    boundary, a pause or a review)."""
    url = f"{base}/api/v1/campaigns/{owner}/{n}/live"
    etag = urllib.request.urlopen(url, timeout=10).headers["ETag"]
    script = work / "live.lua"
    script.write_text(f"wrk.headers[\"If-None-Match\"] = '{etag}'\n")
    return {"live 304": (url, str(script))}


if __name__ == "__main__":
    main()
