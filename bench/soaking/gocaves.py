"""gocaves, Couchbase's own mock cluster, started on loopback for `--couchbase` the way
bin/test-couchbase starts it (found through GOCAVES, then ../shared/tools/gocaves, then PATH; its
log in the work directory; stopped whatever happens)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from .common import ROOT

_CONNSTR = re.compile(r'"connstr":"([^"]*)"')
_KV_LISTENER = re.compile(r"starting listener for kv \(memd\) server on port (\d+)")


def find_gocaves() -> str | None:
    for candidate in (os.environ.get("GOCAVES"), str(ROOT.parent / "shared" / "tools" / "gocaves")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("gocaves")


class Gocaves:
    def __init__(self, work: Path):
        self.work = work
        self.log_path = work / "gocaves.log"
        self.proc: subprocess.Popen | None = None
        self.connstr = ""

    def start(self, seconds: float = 10.0) -> None:
        binary = find_gocaves()
        if binary is None:
            raise RuntimeError(
                "--couchbase needs gocaves: set GOCAVES, put it in ../shared/tools/ or on PATH"
            )
        # It logs every KV packet: to a file, never to a pipe nobody drains.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-mock-only"], stdout=subprocess.DEVNULL, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = _CONNSTR.search(self.log_text())
            if found:
                self.connstr = found.group(1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"gocaves ({binary}) did not start; its log is {self.log_path}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read(256 * 1024).decode("utf-8", "replace")  # the start-up lines
        except OSError:
            return ""

    def kv_ports(self) -> list[int]:
        """The KV (memd) ports of its nodes: where the SDK talks to the data after bootstrap."""
        return sorted({int(p) for p in _KV_LISTENER.findall(self.log_text())})

    def env(self) -> dict[str, str]:
        """The site's settings for it (as bin/test-couchbase passes them): compression off, since
        gocaves keeps snappy values as sent and its sub-document engine then fails on them; the
        bucket is its `default`, so the run isolates itself with a key prefix."""
        return {
            "DOCSTORE_BACKEND": "couchbase",
            "DOCSTORE_PREFIX": f"soak-{uuid.uuid4().hex[:12]}::",
            "COUCHBASE_CONNSTR": f"{self.connstr}?enable_compression=false",
            "COUCHBASE_BUCKET": "default",
            "COUCHBASE_USERNAME": "Administrator",
            "COUCHBASE_PASSWORD": "password",
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
