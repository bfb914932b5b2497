"""The fault harness every money flow is tested with (DESIGN.md 6.1 rule 6 and section 9).

A `Scenario` describes one money flow: how to build its world, the flow itself, one recovery
pass, and the invariants. Three runners drive it through faults:

- `run_crash_points`: every docstore call of the flow x {crash before, crash after, applied but
  reported as an error}, then recovery crashed at each of its own calls the same way (two levels),
  then one clean recovery pass: the invariants hold and a further pass writes nothing.
- `run_lease_matrix`: the owner paused before its call k, past its lease, while a rival advances
  j calls (then dies), for every k, rival and j; then the owner resumes.
- `run_swarm`: seeded random interleavings of several actors with random faults and clock jumps;
  a failure names its seed, and `replay_seed` reruns exactly that interleaving.

A world factory may carry `full_matrix = False` (the suite's `make_world_store` does on Couchbase,
where each docstore call is a network round trip and the full products took most of CI's time):
the crash points then still crash every flow call in every mode and every recovery call, but give
each recovery call one of the three modes, rotating with the flow call and mode, and the lease
matrix's rival stops at every third j (and always at none and at all of its calls). The full
products run in the embedded leg; `TEST_FAULT_MATRIX=full` runs them on any backend.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet

from accounts.locks import lease_seconds
from docstore import Ambiguous, FixedClock, Store
from docstore.faults import MUTATING, Crash, Hook, HookedStore

MODES = ("before", "after", "error")
T0 = 1_700_000_000


def full_matrix(make_store: Callable[[], Store]) -> bool:
    return getattr(make_store, "full_matrix", True)


def recovery_modes(i: int, mode: str, j: int, full: bool) -> tuple[str, ...]:
    """The modes recovery call j is crashed in after flow call i crashed in `mode`."""
    if full:
        return MODES
    return (MODES[(i + MODES.index(mode) + j) % len(MODES)],)


def rival_stops(k: int, rival_calls: int, full: bool) -> list[int]:
    """How many calls the lease matrix's rival makes while the owner sleeps before call k."""
    if full:
        return list(range(rival_calls + 1))
    return sorted({0, rival_calls} | set(range(k % 3, rival_calls, 3)))


class InjectedError(Ambiguous):
    """An injected 'applied, but reported as an error' answer."""


@dataclass
class World:
    store: Store
    clock: FixedClock
    ctx: Any = None
    outcomes: list = field(default_factory=list)
    owner: tuple | None = None  # the outcome of the flow under test (not of rivals or recovery)


@dataclass
class Scenario:
    name: str
    setup: Callable[[Store, FixedClock], Any]
    flow: Callable[[Store, FixedClock, Any], Any]
    recover: Callable[[Store, FixedClock], Any]
    check: Callable[[World], None]
    # Exceptions a flow may end with that are answers, not bugs (busy, insufficient funds...).
    expected: tuple[type[BaseException], ...] = ()


class CountingHook(Hook):
    def __init__(self):
        self.calls = 0
        self.ops: list[str] = []
        self.writes: list[tuple[str, str]] = []

    def before(self, op: str, key: str) -> None:
        self.calls += 1
        self.ops.append(op)

    def after(self, op: str, key: str) -> None:
        if op in MUTATING:
            self.writes.append((op, key))


class FaultAt(Hook):
    """Injects one fault at the docstore call numbered `at` (0-based)."""

    def __init__(self, at: int | None, mode: str = "before"):
        self.at, self.mode, self.calls = at, mode, 0
        self.fired = False

    def before(self, op: str, key: str) -> None:
        self._current = self.calls
        self.calls += 1
        if self._current == self.at and self.mode == "before":
            self.fired = True
            raise Crash(f"crash before {op} {key}")

    def after(self, op: str, key: str) -> None:
        if self._current == self.at and self.mode == "after":
            self.fired = True
            raise Crash(f"crash after {op} {key}")
        if self._current == self.at and self.mode == "error":
            self.fired = True
            raise InjectedError(f"{op} {key} applied but reported as failed")


class FinishedBehindOurBack(Hook):
    """The first replace of `key` lands; recovery then finishes whatever it started, past the
    lease; only then is the write reported as failed. The caller must not act on it again."""

    def __init__(self, world: World, key: str, recover: Callable[[Store, FixedClock], Any]):
        self.world, self.key, self.recover, self.fired = world, key, recover, False

    def after(self, op: str, key: str) -> None:
        if op == "replace" and key == self.key and not self.fired:
            self.fired = True
            pass_lease(self.world.clock)
            self.recover(self.world.store, self.world.clock)
            raise InjectedError("the write landed but the answer was lost")


def new_world(scenario: Scenario, make_store: Callable[[], Store]) -> World:
    store, clock = make_store(), FixedClock(T0)
    return World(store, clock, scenario.setup(store, clock))


def run_guarded(scenario: Scenario, fn: Callable[[], Any]) -> Any:
    """Run one actor's step, turning an injected death or an expected answer into an outcome."""
    try:
        return ("ok", fn())
    except Crash as exc:
        return ("crash", str(exc))
    except InjectedError as exc:
        return ("error", str(exc))
    except scenario.expected as exc:
        return ("expected", exc)


def count_calls(scenario: Scenario, fn: Callable[[Store], Any], store: Store) -> int:
    return len(call_ops(scenario, fn, store))


def call_ops(scenario: Scenario, fn: Callable[[Store], Any], store: Store) -> list[str]:
    hook = CountingHook()
    run_guarded(scenario, lambda: fn(HookedStore(store, hook)))
    return hook.ops


def fault_points(ops: list[str], writes_only: bool) -> list[int]:
    """The calls to crash or pause at: all, or (`writes_only`) the writes alone. A crash at a
    read is the same as one before the next write or after the last one, so the writes alone
    still reach every state a crash can leave; a long flow on a slow backend uses it."""
    return [i for i, op in enumerate(ops) if not writes_only or op in MUTATING]


def pass_lease(clock: FixedClock) -> None:
    clock.advance(lease_seconds() + 1)


def finish_and_check(scenario: Scenario, world: World, label: str) -> None:
    """One clean recovery pass, the invariants, then a pass that must write nothing."""
    pass_lease(world.clock)
    scenario.recover(world.store, world.clock)
    try:
        scenario.check(world)
    except AssertionError as exc:
        raise AssertionError(f"{scenario.name} [{label}]: {exc}") from None
    hook = CountingHook()
    pass_lease(world.clock)
    scenario.recover(HookedStore(world.store, hook), world.clock)
    assert not hook.writes, f"{scenario.name} [{label}]: second recovery wrote {hook.writes}"


def run_crash_points(
    scenario: Scenario,
    make_store: Callable[[], Store],
    levels: int = 2,
    writes_only: bool = False,
) -> int:
    """Crash the flow at every call (and recovery at every call of its own). Returns runs made.
    With `writes_only`, at every write of each (see fault_points)."""
    full = full_matrix(make_store)
    probe = new_world(scenario, make_store)
    flow_ops = call_ops(scenario, lambda s: scenario.flow(s, probe.clock, probe.ctx), probe.store)
    assert flow_ops, f"{scenario.name}: the flow made no docstore call"
    runs = 0

    def crashed_world(i: int, mode: str) -> World:
        world = new_world(scenario, make_store)
        hooked = HookedStore(world.store, FaultAt(i, mode))
        world.owner = run_guarded(scenario, lambda: scenario.flow(hooked, world.clock, world.ctx))
        world.outcomes.append(world.owner)
        pass_lease(world.clock)
        return world

    for i in fault_points(flow_ops, writes_only):
        for mode in MODES:
            world = crashed_world(i, mode)
            finish_and_check(scenario, world, f"flow call {i} {mode}")
            runs += 1
            if levels < 2:
                continue
            probe = crashed_world(i, mode)
            recovery_ops = call_ops(
                scenario, lambda s, w=probe: scenario.recover(s, w.clock), probe.store
            )
            for j in fault_points(recovery_ops, writes_only):
                for rmode in recovery_modes(i, mode, j, full):
                    world = crashed_world(i, mode)
                    hooked = HookedStore(world.store, FaultAt(j, rmode))
                    run_guarded(scenario, lambda w=world, h=hooked: scenario.recover(h, w.clock))
                    finish_and_check(
                        scenario, world, f"flow call {i} {mode}, recovery call {j} {rmode}"
                    )
                    runs += 1
    return runs


class PauseAt(Hook):
    """Pauses the owner greenlet before its call number `at` (switching back to the test)."""

    def __init__(self, at: int, main: greenlet.greenlet):
        self.at, self.main, self.calls = at, main, 0
        self.paused = False

    def before(self, op: str, key: str) -> None:
        if self.calls == self.at:
            self.paused = True
            self.main.switch()
        self.calls += 1


def run_lease_matrix(
    scenario: Scenario,
    make_store: Callable[[], Store],
    rivals: dict[str, Callable[[Store, FixedClock, Any], Any]],
    writes_only: bool = False,
) -> int:
    """Owner paused past its lease before call k while a rival makes j calls, for every k, j.
    With `writes_only`, k runs over the owner's writes (a pause before a write is the one that
    matters: what the owner read is then stale) and j over the rival's writes and its end."""
    full = full_matrix(make_store)
    probe = new_world(scenario, make_store)
    owner_ops = call_ops(scenario, lambda s: scenario.flow(s, probe.clock, probe.ctx), probe.store)
    runs = 0

    def paused_world(k: int) -> tuple[World, greenlet.greenlet, PauseAt]:
        world = new_world(scenario, make_store)
        main = greenlet.getcurrent()
        pause = PauseAt(k, main)
        hooked = HookedStore(world.store, pause)

        def owner():
            world.owner = run_guarded(
                scenario, lambda: scenario.flow(hooked, world.clock, world.ctx)
            )
            world.outcomes.append(world.owner)

        g = greenlet.greenlet(owner)
        g.switch()  # runs until the pause (or to the end if the flow is shorter)
        pass_lease(world.clock)
        return world, g, pause

    for k in fault_points(owner_ops, writes_only):
        for name, rival in rivals.items():
            world, g, _ = paused_world(k)
            rival_ops = call_ops(
                scenario, lambda s, w=world, r=rival: r(s, w.clock, w.ctx), world.store
            )
            rival_calls = len(rival_ops)
            g.switch()
            if writes_only:  # the rival dies just before or just after its writes (rotated)
                writes = [j for j, op in enumerate(rival_ops) if op in MUTATING]
                writes = [j for x, j in enumerate(writes) if full or x % 3 == k % 3]
                stops = sorted({0, rival_calls} | set(writes) | {j + 1 for j in writes})
            else:
                stops = rival_stops(k, rival_calls, full)
            for j in stops:
                world, g, pause = paused_world(k)
                assert pause.paused, f"{scenario.name}: owner never reached call {k}"
                hooked = HookedStore(world.store, FaultAt(j if j < rival_calls else None))
                world.outcomes.append(
                    run_guarded(scenario, lambda w=world, h=hooked, r=rival: r(h, w.clock, w.ctx))
                )
                if not g.dead:
                    g.switch()  # the owner wakes up late and carries on
                assert g.dead
                finish_and_check(scenario, world, f"owner paused at {k}, {name} made {j} calls")
                runs += 1
    return runs


# --- seeded swarm ---------------------------------------------------------------------------


class _SwarmHook(Hook):
    def __init__(self, swarm: Swarm, actor: int):
        self.swarm, self.actor = swarm, actor
        self.pending_after: str | None = None

    def before(self, op: str, key: str) -> None:
        fault = self.swarm.yield_point(self.actor)
        if fault == "before":
            raise Crash(f"swarm crash before {op} {key}")
        self.pending_after = fault

    def after(self, op: str, key: str) -> None:
        fault, self.pending_after = self.pending_after, None
        if fault == "after":
            raise Crash(f"swarm crash after {op} {key}")
        if fault == "error":
            raise InjectedError(f"swarm: {op} {key} applied but reported as failed")


class Swarm:
    """One seeded run: actors interleaved at docstore calls, with random faults and clock jumps."""

    def __init__(self, seed: int, world: World, fault_rate: float = 0.03):
        self.rng = random.Random(seed)
        self.world = world
        self.fault_rate = fault_rate
        self.scheduler = greenlet.getcurrent()

    def yield_point(self, actor: int) -> str | None:
        return self.scheduler.switch(("yield", actor))

    def run(self, scenario: Scenario, actors: list[Callable[[Store, FixedClock, Any], Any]]):
        world, rng = self.world, self.rng
        greenlets = []
        for index, actor in enumerate(actors):
            hooked = HookedStore(world.store, _SwarmHook(self, index))

            def body(actor=actor, hooked=hooked):
                outcome = run_guarded(scenario, lambda: actor(hooked, world.clock, world.ctx))
                world.outcomes.append(outcome)
                return ("done", None)

            greenlets.append(greenlet.greenlet(body))
        live = list(range(len(actors)))
        started: set[int] = set()
        while live:
            index = rng.choice(live)
            g = greenlets[index]
            roll = rng.random()
            jump = rng.random()
            if jump < 0.05:
                pass_lease(world.clock)
            elif jump < 0.3:
                world.clock.advance(rng.randint(1, 5))
            if index not in started:
                started.add(index)
                g.switch()
            else:
                fault = None
                if roll < self.fault_rate:
                    fault = rng.choice(MODES)
                g.switch(fault)
            if g.dead:
                live.remove(index)


def run_swarm(
    scenario: Scenario,
    make_store: Callable[[], Store],
    make_actors: Callable[[World, random.Random], list],
    seeds: range,
    fault_rate: float = 0.03,
) -> int:
    for seed in seeds:
        replay_seed(scenario, make_store, make_actors, seed, fault_rate)
    return len(seeds)


def _world_from_template(scenario: Scenario, make_store: Callable[[], Store]) -> World:
    """A fresh world for a swarm seed: cloned from one built once, when the store can clone."""
    template = getattr(scenario, "_template", None)
    if template is None or template[0].store.__class__ is not make_store:
        world = new_world(scenario, make_store)
        if not hasattr(world.store, "clone"):
            return world
        template = (world, world.clock.now())
        scenario._template = template  # kept on the scenario itself: never handed to another
    world, t = template
    return World(world.store.clone(), FixedClock(t), copy.deepcopy(world.ctx))


def replay_seed(scenario, make_store, make_actors, seed: int, fault_rate: float = 0.03) -> World:
    world = _world_from_template(scenario, make_store)
    swarm = Swarm(seed, world, fault_rate)
    try:
        swarm.run(scenario, make_actors(world, random.Random(seed ^ 0x5EED)))
        finish_and_check(scenario, world, f"swarm seed {seed}")
    except Exception as exc:
        raise AssertionError(
            f"swarm seed {seed} failed (replay with replay_seed): {type(exc).__name__}: {exc}"
        ) from exc
    return world
