"""A short soak: the real site (gunicorn, run_workers, the test bitcoind) under load and kills.

Runs `python -m bench.soaking --minutes 0.3 --users 6` as a subprocess, the way `make soak` does for five
minutes: the run must end clean (audit passed, no lock left, no 500, no disagreement between what
the simulated users saw and the server's ledgers). On failure the soak's summary and the seed to
replay it are in the assertion message; its logs stay in the temporary directory it names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_short_soak_ends_clean():
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.soaking", "--minutes", "0.3", "--users", "6"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the soak did not finish in {exc.timeout} s:\n{exc.stdout}\n{exc.stderr}")
    report = f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert "audit: passed" in proc.stdout, report
    assert "disagreements: 0" in proc.stdout, report
    assert "locks left: 0" in proc.stdout, report
    assert "500s: 0" in proc.stdout, report
    assert "RESULT: PASS" in proc.stdout, report
