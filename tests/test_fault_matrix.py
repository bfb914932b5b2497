"""The fault runners' rotated matrices (Couchbase's default) still crash at every point."""

from __future__ import annotations

import itertools

from docstore.backends.memory import MemoryStore
from tests.harness import (
    MODES,
    Scenario,
    full_matrix,
    recovery_modes,
    rival_stops,
    run_crash_points,
)


def test_the_full_matrix_crashes_every_recovery_call_in_every_mode():
    assert recovery_modes(3, "after", 5, full=True) == MODES
    assert rival_stops(4, 7, full=True) == list(range(8))


def test_the_rotated_matrix_still_crashes_every_recovery_call_after_every_flow_crash():
    for i, mode, j in itertools.product(range(6), MODES, range(9)):
        assert len(recovery_modes(i, mode, j, full=False)) == 1
    # Over the three crash modes of one flow call, each recovery call meets every mode.
    for i, j in itertools.product(range(6), range(9)):
        seen = {recovery_modes(i, mode, j, full=False)[0] for mode in MODES}
        assert seen == set(MODES)


def test_the_rotated_lease_matrix_keeps_the_rival_s_ends_and_every_third_stop():
    for k, calls in itertools.product(range(5), range(12)):
        stops = rival_stops(k, calls, full=False)
        assert stops[0] == 0 and stops[-1] == calls
        assert all(0 <= b - a <= 3 for a, b in itertools.pairwise(stops))
    # Across three owner pauses in a row, the rival is stopped at every one of its calls.
    calls = 10
    covered = set().union(*(rival_stops(k, calls, full=False) for k in range(3)))
    assert covered == set(range(calls + 1))


def two_write_scenario() -> Scenario:
    def flow(store, clock, ctx):
        store.upsert("a", 1)
        store.upsert("b", 2)

    def recover(store, clock):
        store.get_multi(["a"])
        store.get_multi(["b"])

    return Scenario("two writes", lambda s, c: None, flow, recover, lambda world: None)


def test_a_factory_marked_rotated_runs_a_third_of_the_second_level():
    def rotated():
        return MemoryStore()

    rotated.full_matrix = False
    full_runs = run_crash_points(two_write_scenario(), MemoryStore)
    rotated_runs = run_crash_points(two_write_scenario(), rotated)
    assert full_matrix(MemoryStore) and not full_matrix(rotated)
    # 2 flow calls x 3 modes, each with one clean run plus 2 recovery calls x (3 or 1) modes.
    assert full_runs == 6 * (1 + 2 * 3)
    assert rotated_runs == 6 * (1 + 2 * 1)
