"""The soak's network faults (bench/soaking/netfaults.py): every rule it adds carries its marker,
does what it says to traffic on loopback, and is gone after heal() - also after a SIGTERM, and,
through heal_leftovers() (`bench/soak --heal-net`), after a soak that was SIGKILLed.

Needs root, iptables and tc; skipped with the reason otherwise. Each test uses its own marker and
tc handle, and removes whatever carries them when it ends, so it never leaves a rule behind nor
touches a soak running on the same machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.soaking import netfaults

ROOT = Path(__file__).resolve().parent.parent


def _why_not() -> str | None:
    why = netfaults.unavailable()
    if why is None and netfaults.iptables("-S", "OUTPUT", check=False).returncode != 0:
        why = "iptables cannot read the OUTPUT chain here (no netfilter in this kernel?)"
    return why


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")

HANDLE = "5a1c"  # not the soak's 5a0c: a test never removes a running soak's shaping


@pytest.fixture
def marker():
    marker = f"adspace-soak-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        yield marker
    finally:
        netfaults.heal_leftovers(marker, HANDLE)
    assert netfaults.our_rules(marker) == []


@pytest.fixture
def server():
    """A listening loopback socket that accepts and echoes, on a port of its own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def connects(port: int, timeout: float = 0.5) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return "connected"
    except TimeoutError:
        return "timed out"
    except ConnectionRefusedError:
        return "refused"


def test_every_rule_carries_the_marker_and_heal_removes_them_all(marker, server):
    port = server.getsockname()[1]
    faults = netfaults.NetFaults([port, port + 1], marker=marker, handle=HANDLE)
    faults.drop([port, port + 1])
    faults.reset([port])
    rules = netfaults.our_rules(marker)
    assert len(rules) == 3
    assert all(" ".join(r).count(f"--comment {marker}") == 1 for r in rules)
    assert faults.active() == 3
    faults.heal()
    assert netfaults.our_rules(marker) == []
    assert faults.active() == 0
    assert connects(port) == "connected"


def test_a_dropped_port_is_silent_and_a_reset_port_refuses(marker, server):
    port = server.getsockname()[1]
    with netfaults.NetFaults([port], marker=marker, handle=HANDLE) as faults:
        faults.drop([port])
        assert connects(port) == "timed out"
        faults.heal()
        assert connects(port) == "connected"
        faults.reset([port])
        assert connects(port) == "refused"
    assert netfaults.our_rules(marker) == []
    assert connects(port) == "connected"


def test_a_rule_of_another_marker_is_left_alone(marker, server):
    port = server.getsockname()[1]
    other = netfaults.NetFaults([port], marker=marker + "-other", handle=HANDLE)
    try:
        other.drop([port])
        assert netfaults.heal_leftovers(marker, HANDLE) == []
        assert len(netfaults.our_rules(marker + "-other")) == 1
    finally:
        other.heal()
    assert netfaults.our_rules(marker + "-other") == []


def _child(marker: str, port: int, then: str) -> subprocess.Popen:
    code = f"""
import os, signal, sys, time
from bench.soaking import netfaults
from bench.soaking.main import _exit_on_signal
signal.signal(signal.SIGTERM, _exit_on_signal)
with netfaults.NetFaults([{port}], marker={marker!r}, handle={HANDLE!r}) as faults:
    faults.drop([{port}])
    faults.reset([{port}])
    print("ready", flush=True)
    if {then!r} == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_a_sigterm_heals_before_the_soak_exits(marker, server):
    port = server.getsockname()[1]
    child = _child(marker, port, "wait")
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(netfaults.our_rules(marker)) == 2
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait(timeout=10)
    assert netfaults.our_rules(marker) == []


def test_heal_net_removes_what_a_killed_soak_left_behind(marker, server):
    port = server.getsockname()[1]
    child = _child(marker, port, "sigkill")
    assert child.stdout.readline().strip() == "ready"
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert len(netfaults.our_rules(marker)) == 2  # a SIGKILL runs no cleanup
    removed = netfaults.heal_leftovers(marker, HANDLE)
    assert len(removed) == 2 and all(marker in r for r in removed)
    assert netfaults.our_rules(marker) == []
    assert connects(port) == "connected"


def test_a_slow_link_slows_its_port_only_and_heals(marker, server):
    shown = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True)
    if not shown.stdout.startswith("qdisc noqueue 0: root"):
        pytest.skip(f"lo is shaped already (a soak running?): {shown.stdout.strip()}")
    port = server.getsockname()[1]
    payload = b"x" * 40_000  # 320 kbit: a second at 320 kbit/s, nothing on plain loopback

    def send_seconds() -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            peer, _ = server.accept()
            with peer:
                c.sendall(payload)
                got = 0
                while got < len(payload):
                    got += len(peer.recv(65536))
        return time.monotonic() - started

    with netfaults.NetFaults([port], marker=marker, handle=HANDLE) as faults:
        faults.slow([port], kbit=320)
        assert netfaults.root_qdisc(HANDLE)
        slow = send_seconds()
    assert not netfaults.root_qdisc(HANDLE)
    fast = send_seconds()
    assert slow > 0.5, f"{slow:.2f} s through the slow link"
    assert fast < 0.2, f"{fast:.2f} s once healed"
