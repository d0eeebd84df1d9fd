"""The tabular benchmark's logic (benchmarks/tabular.py, benchmarks/tabular_grid.py), not its measurements: the
grid is enumerated exactly, a lookup returns the plan's own row, the replay's hypervolume matches a second,
independent computation, and trials-to-target is read off a curve correctly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.tabular import (
    Normalisation,
    Table,
    hypervolume,
    load_table,
    median_or_none,
    replay,
    trials_to_reach,
)
from benchmarks.tabular_grid import TABLE, enumerate_plans, grid_space, plan_key
from spaces.plan import Space

pytestmark = pytest.mark.fast


def box_volume(points: list[np.ndarray], ref: np.ndarray) -> float:
    """The dominated volume by brute force: cut space at every coordinate and add up the cells some point covers."""
    axes = [sorted({float(p[d]) for p in points} | {float(ref[d])}) for d in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = np.array([axes[d][i] for d, i in enumerate(cell)])
        if any(np.all(p <= low) for p in points):
            total += float(np.prod([axes[d][i + 1] - axes[d][i] for d, i in enumerate(cell)]))
    return total


def test_hypervolume_of_a_two_dimensional_front_is_its_area_by_hand():
    # Two front points and one they dominate; the union of [0.2,1]x[0.6,1] and [0.5,1]x[0.3,1] is 0.32 + 0.15.
    points = [np.array([0.2, 0.6]), np.array([0.5, 0.3]), np.array([0.7, 0.7])]
    assert hypervolume(points, np.ones(2)) == pytest.approx(0.47)
    # A point outside the reference point adds nothing (it would otherwise subtract).
    assert hypervolume(points + [np.array([0.1, 1.5])], np.ones(2)) == pytest.approx(0.47)
    assert hypervolume([], np.ones(2)) == 0.0


# A tiny space: the teacher itself, three pruning ratios, two schemes = 6 plans, with objectives made up by hand.
TINY = Space.model_validate(
    {
        "students": {"teacher": True, "cnn": None},
        "pruning": {"ratio": [0.0, 0.25, 0.5], "recover_epochs": 1},
        "quantization": {"schemes": ["fp32", "int8_dynamic"]},
    }
)
HAND = {  # (ratio, scheme) -> (accuracy %, p50 ms, size MB)
    (0.0, "fp32"): (99.0, 1.0, 1.0),  # the teacher: the reference point's latency and size
    (0.0, "int8_dynamic"): (98.5, 0.8, 0.3),
    (0.25, "fp32"): (98.0, 0.5, 0.6),
    (0.25, "int8_dynamic"): (90.0, 0.3, 0.2),  # 9 points lost: outside the reference point, counts nothing
    (0.5, "fp32"): (97.0, 0.25, 0.4),
    (0.5, "int8_dynamic"): (96.0, 0.4, 0.5),  # dominated by (0.5, fp32)
}


def tiny_table() -> Table:
    rows = {plan_key(p): HAND[(p.pruning.ratio, p.quantization.scheme)] for p in enumerate_plans(TINY)}
    return Table(rows=rows, teacher=HAND[(0.0, "fp32")])


def test_the_tiny_space_enumerates_to_the_hand_table_and_lookup_is_exact():
    plans = enumerate_plans(TINY)
    assert len(plans) == len({plan_key(p) for p in plans}) == 6
    table = tiny_table()
    for p in plans:
        assert table.lookup(p) == HAND[(p.pruning.ratio, p.quantization.scheme)]
    with pytest.raises(KeyError):
        table.lookup(enumerate_plans(grid_space())[0])  # a plan outside the table is an error, never a neighbour


def test_normalisation_maps_the_grids_best_to_zero_and_the_reference_to_one():
    table = tiny_table()
    norm = Normalisation.of(table)
    assert norm.best == (99.0, 0.25, 0.2)
    assert norm.ref == (94.0, 1.0, 1.0)  # the teacher's accuracy minus 5 points, its p50, its size
    np.testing.assert_allclose(norm((99.0, 0.25, 0.2)), [0, 0, 0])
    np.testing.assert_allclose(norm((94.0, 1.0, 1.0)), [1, 1, 1])
    np.testing.assert_allclose(norm((96.5, 0.5, 0.2)), [0.5, 0.5, 0])  # log scale: 0.5 ms is halfway in ratio


@pytest.mark.parametrize("sampler", ["random", "tpe", "tpe+fresh", "uniform"])
def test_replay_hypervolume_matches_an_independent_computation_after_every_plan(sampler):
    table = tiny_table()
    norm = Normalisation.of(table)
    run = replay(sampler, 0, table, norm, stop_at=float("inf"), min_trials=10**6, space=TINY)
    assert sorted(run.keys) == sorted(table.rows)  # every plan once: repeats are not counted as new plans
    assert run.asks == sorted(run.asks) and run.asks[-1] >= len(run.keys)
    if sampler.endswith("+fresh"):  # a repeat is answered, then the next ask is an unseen plan
        assert all(b - a <= 2 for a, b in zip([0] + run.asks, run.asks))
    if sampler == "uniform":  # random search without replacement: every ask is a new plan
        assert run.asks == list(range(1, len(table.rows) + 1))
    for n in range(1, len(run.keys) + 1):
        seen = [norm(table.rows[k]) for k in run.keys[:n]]
        inside = [p for p in seen if np.all(p < 1)]
        assert run.curve[n - 1] == pytest.approx(box_volume(inside, np.ones(3)) if inside else 0.0, abs=1e-12)
    # The whole table's hypervolume, again by brute force, is where every replay ends.
    everything = [p for p in (norm(v) for v in HAND.values()) if np.all(p < 1)]
    assert run.curve[-1] == pytest.approx(box_volume(everything, np.ones(3)))


def test_trials_to_reach_reads_the_first_crossing_of_a_hand_made_curve():
    curve = [0.1, 0.5, 0.94, 0.95, 0.93, 0.99]
    assert trials_to_reach(curve, 0.95) == 4  # 1-based, and the first crossing (not the last, not the max)
    assert trials_to_reach(curve, 0.5) == 2
    assert trials_to_reach(curve, 1.0) is None
    # A seed that never got there counts as worse than any that did.
    assert median_or_none([10, None, 30]) == 30
    assert median_or_none([10, None, None]) is None
    assert median_or_none([10, 20, 30, 40]) == 25


def test_the_shipped_table_holds_exactly_one_row_per_plan_of_the_grid():
    plans = enumerate_plans(grid_space())
    assert len(plans) >= 200
    table = load_table(TABLE)
    assert sorted(table.rows) == sorted(plan_key(p) for p in plans)
    assert all(v is None or (0 <= v[0] <= 100 and v[1] > 0 and v[2] > 0) for v in table.rows.values())


def test_a_gated_replay_trains_no_plan_a_trained_one_already_dominates():
    # The teacher's int8 copy within the noise of the best accuracy (400 validation images: 0.5 pt) and faster and
    # smaller than the teacher: once it is trained, the fp32 teacher is stopped before training.
    hand = {**HAND, (0.0, "int8_dynamic"): (98.8, 0.8, 0.3)}
    plans = enumerate_plans(TINY)
    table = Table({plan_key(p): hand[(p.pruning.ratio, p.quantization.scheme)] for p in plans}, hand[(0.0, "fp32")])
    key = {(p.pruning.ratio, p.quantization.scheme): plan_key(p) for p in plans}
    teacher, int8 = key[(0.0, "fp32")], key[(0.0, "int8_dynamic")]
    norm = Normalisation.of(table)
    gated_seeds = 0
    for seed in range(8):
        run = replay("random+gate", seed, table, norm, stop_at=float("inf"), min_trials=10**6, max_asks=200, space=TINY)
        assert set(run.keys) >= set(table.rows) - {teacher}  # nothing else is dominated: everything else trains
        if teacher in run.keys:
            assert run.keys.index(teacher) < run.keys.index(int8)  # trained only while nothing dominated it
        else:
            gated_seeds += 1
        for n in range(1, len(run.keys) + 1):  # the curve counts the trained plans only
            inside = [p for p in (norm(table.rows[k]) for k in run.keys[:n]) if np.all(p < 1)]
            assert run.curve[n - 1] == pytest.approx(box_volume(inside, np.ones(3)) if inside else 0.0, abs=1e-12)
    assert 0 < gated_seeds < 8  # both orders occurred among the seeds


def test_a_plan_the_gate_stopped_is_trained_once_the_bar_no_longer_covers_it():
    # The driver's rule (search/reuse.py still_answers), which the replay now runs: a plan stopped before is stopped
    # again only if today's bar still covers it. The int8 teacher sets the bar at first and stops the fp32 teacher;
    # once a plan a point more accurate arrives (smaller than the int8 teacher, so never stopped by it; slower than
    # the fp32 teacher, so never stopping it), the bar's floor rises past the int8 teacher, and the fp32 teacher,
    # proposed again, trains.
    hand = {**HAND, (0.0, "int8_dynamic"): (98.8, 0.8, 0.3), (0.25, "fp32"): (100.0, 2.0, 0.25)}
    plans = enumerate_plans(TINY)
    table = Table({plan_key(p): hand[(p.pruning.ratio, p.quantization.scheme)] for p in plans}, hand[(0.0, "fp32")])
    teacher = next(plan_key(p) for p in plans if p.pruning.ratio == 0 and p.quantization.scheme == "fp32")
    norm = Normalisation.of(table)
    for seed in range(8):
        run = replay("random+gate", seed, table, norm, stop_at=float("inf"), min_trials=10**6, max_asks=200, space=TINY)
        assert teacher in run.keys and sorted(run.keys) == sorted(table.rows)
