"""Network faults between the site and Couchbase, on gocaves' KV ports (tools README, "Network
faults between the site and Couchbase"): the SDK bootstraps from the connection string and then
talks straight to the KV ports of the cluster map, so faults go on those ports, as root:

- DROP: silent loss. The SDK's operations time out, ambiguously for writes, and what TCP
  retransmits after the heal may still land: the backend's ambiguous-write paths, for real.
- REJECT --reject-with tcp-reset: connections cut mid-request, reconnects refused meanwhile.
- a slow link: an htb class of a few hundred kbit for traffic to those ports (queueing delay of
  tens to hundreds of ms a packet). netem's plain delay would be the tool, but this kernel has no
  netem (`tc qdisc add ... netem` answers "Specified qdisc kind is unknown"); htb and u32 it has.

Every iptables rule carries `-m comment --comment adspace-soak` and every rule is recorded, so
heal() removes exactly ours; the tc root qdisc on lo is ours by its handle (5a0c:), since qdiscs
carry no comment. NetFaults heals on leaving its `with`, at exit (atexit) and, through the
SystemExit the soak raises on SIGTERM (and the KeyboardInterrupt of SIGINT), on signals too.
`heal_leftovers()` (`bench/soak --heal-net`) removes any rule a killed soak left behind.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import threading

MARKER = "adspace-soak"
TC_HANDLE = "5a0c"
FAST_KBIT = 10_000_000  # everything else on lo, through the same root qdisc, at 10 Gbit/s


def unavailable() -> str | None:
    """Why network faults cannot run here, or None."""
    if os.geteuid() != 0:
        return "network faults need root (iptables and tc)"
    for tool in ("iptables", "tc"):
        if shutil.which(tool) is None:
            return f"network faults need {tool} (Debian: apt-get install iptables iproute2)"
    return None


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=check)


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("iptables", "-w", "10", *args, check=check)


def our_rules(marker: str = MARKER) -> list[list[str]]:
    """Every OUTPUT rule carrying `marker` as its comment, as `iptables -S` prints it (from -o)."""
    rules = []
    for line in iptables("-S", "OUTPUT").stdout.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "OUTPUT"]:
            continue
        comments = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--comment"]
        if marker in comments:
            rules.append(words[2:])
    return rules


def root_qdisc(handle: str = TC_HANDLE) -> bool:
    """Whether lo's root qdisc is ours."""
    shown = _run("tc", "qdisc", "show", "dev", "lo", check=False).stdout
    return any(f" {handle}: root" in line for line in shown.splitlines())


def heal_leftovers(marker: str = MARKER, handle: str = TC_HANDLE) -> list[str]:
    """Remove every rule with our marker and our root qdisc on lo; what was removed."""
    removed = []
    for rule in our_rules(marker):
        iptables("-D", "OUTPUT", *rule, check=False)
        removed.append("iptables -A OUTPUT " + shlex.join(rule))
    if root_qdisc(handle):
        _run("tc", "qdisc", "del", "dev", "lo", "root", check=False)
        removed.append(f"tc qdisc {handle}: root on lo")
    return removed


class NetFaults:
    """Faults on the given loopback ports; every one recorded, every one removed by heal()."""

    def __init__(self, ports: list[int], marker: str = MARKER, handle: str = TC_HANDLE):
        if not ports:
            raise ValueError("no ports to put faults on")
        self.ports, self.marker, self.handle = list(ports), marker, handle
        self.rules: list[tuple[str, ...]] = []  # recorded before they are added
        self.shaping = False
        self.lock = threading.Lock()
        self.added = 0
        atexit.register(self.heal)

    def __enter__(self) -> NetFaults:
        return self

    def __exit__(self, *exc) -> None:
        self.heal()

    def _spec(self, port: int, *target: str) -> tuple[str, ...]:
        return ("-o", "lo", "-p", "tcp", "-m", "tcp", "--dport", str(port),
                "-m", "comment", "--comment", self.marker, "-j", *target)  # fmt: skip

    def _add(self, spec: tuple[str, ...]) -> None:
        with self.lock:
            self.rules.append(spec)
            iptables("-A", "OUTPUT", *spec)
            self.added += 1

    def drop(self, ports: list[int]) -> None:
        """Silent loss of every packet to `ports`."""
        for port in ports:
            self._add(self._spec(port, "DROP"))

    def reset(self, ports: list[int]) -> None:
        """Every packet to `ports` answered with a TCP reset: connections cut, none made."""
        for port in ports:
            self._add(self._spec(port, "REJECT", "--reject-with", "tcp-reset"))

    def slow(self, ports: list[int], kbit: int) -> None:
        """Traffic to `ports` through a `kbit` link; the rest of lo unhindered."""
        with self.lock:
            if root_qdisc(self.handle) or self.shaping:
                raise RuntimeError("lo is already shaped by a soak")
            shown = _run("tc", "qdisc", "show", "dev", "lo").stdout
            if not shown.startswith("qdisc noqueue 0: root"):
                raise RuntimeError(f"lo has a root qdisc that is not ours: {shown.strip()}")
            self.shaping = True
            h = self.handle
            try:
                _run("tc", "qdisc", "add", "dev", "lo", "root", "handle", f"{h}:", "htb",
                     "default", "1")  # fmt: skip
                _run("tc", "class", "add", "dev", "lo", "parent", f"{h}:", "classid", f"{h}:1",
                     "htb", "rate", f"{FAST_KBIT}kbit")  # fmt: skip
                _run("tc", "class", "add", "dev", "lo", "parent", f"{h}:", "classid", f"{h}:2",
                     "htb", "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit")  # fmt: skip
                for port in ports:
                    _run("tc", "filter", "add", "dev", "lo", "parent", f"{h}:", "protocol", "ip",
                         "prio", "1", "u32", "match", "ip", "dport", str(port), "0xffff",
                         "flowid", f"{h}:2")  # fmt: skip
            except subprocess.CalledProcessError:
                self._unshape()
                raise
            self.added += 1

    def _unshape(self) -> None:
        if root_qdisc(self.handle):
            _run("tc", "qdisc", "del", "dev", "lo", "root", check=False)
        self.shaping = False

    def active(self) -> int:
        with self.lock:
            return len(self.rules) + self.shaping

    def heal(self) -> None:
        """Remove every rule and the shaping this object added (each -D of a recorded rule)."""
        with self.lock:
            while self.rules:
                spec = self.rules.pop()
                iptables("-D", "OUTPUT", *spec, check=False)
            if self.shaping:
                self._unshape()
