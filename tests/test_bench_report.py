"""The benchmark report's logic (not its measurements): hypervolume, time breakdown, goals, overrides, README."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmarks import report, stages, sweeps
from benchmarks.hypervolume import Point, hypervolume
from benchmarks.machine import cpu_info
from benchmarks.realdata import goals, teacher_goal

pytestmark = pytest.mark.fast


def _by_cells(losses: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """A second computation: split the box below `ref` into cells at every coordinate and add the dominated ones."""
    inside = [p for p in losses if all(a < r for a, r in zip(p, ref))]
    axes = [sorted({p[d] for p in inside} | {r}) for d, r in enumerate(ref)]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = [axes[d][i] for d, i in enumerate(cell)]
        if any(all(p[d] <= low[d] for d in range(len(ref))) for p in inside):
            size = 1.0
            for d, i in enumerate(cell):
                size *= axes[d][i + 1] - axes[d][i]
            total += size
    return total


def _point(drop: float, p50_ratio: float, size_ratio: float) -> Point:
    return Point(
        accuracy_drop=drop, p50_ms=p50_ratio * 2.0, size_mb=size_ratio * 4.0, teacher_p50_ms=2.0, teacher_size_mb=4.0
    )


def test_hypervolume_matches_a_hand_computation_in_3d():
    losses = [(0.2, 0.5, 0.3), (0.8, 0.1, 0.6), (0.5, 0.3, 0.1), (0.9, 0.9, 0.9), (0.1, 0.95, 0.95)]
    points = [_point(*p) for p in losses]
    assert hypervolume(points) == pytest.approx(_by_cells(losses, (1.0, 1.0, 1.0)), rel=1e-9)


def test_hypervolume_in_2d_slice_is_an_area_times_the_fixed_third_side():
    # All sizes at half the teacher's: the volume is the 2-D staircase area (written out by hand) times 0.5.
    points = [_point(0.0, 0.6, 0.5), _point(0.5, 0.2, 0.5)]
    area = 1.0 * 0.4 + 0.5 * 0.4  # drop in [0, 1) over ratio [0.6, 1); drop in [0.5, 1) over ratio [0.2, 0.6)
    assert hypervolume(points) == pytest.approx(area * 0.5)


def test_points_at_or_past_the_reference_add_nothing():
    assert hypervolume([]) == 0.0
    assert hypervolume([_point(1.2, 0.1, 0.1), _point(0.0, 1.0, 0.1)]) == 0.0  # over the drop; as slow as the teacher
    assert hypervolume([_point(0.5, 0.5, 0.5), _point(1.5, 0.01, 0.01)]) == pytest.approx(0.125)


def test_cpu_model_and_int8_flags_come_from_cpuinfo():
    text = "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    model, flags = cpu_info(text)
    assert model == "Example CPU 9000"
    assert {"avx2", "avx512_vnni"} <= flags and "amx_int8" not in flags


def _trial(
    number: int, start: datetime, wall: float, spent: dict[str, float], clock: dict | None = None
) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=TrialState.COMPLETE,
        value=None,
        values=[1.0],
        datetime_start=start,
        datetime_complete=start + timedelta(seconds=wall),
        params={"x": 0},
        distributions={"x": CategoricalDistribution([0])},
        user_attrs={"stages": spent, "info": {"clock": clock or {}}},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def test_breakdown_splits_a_sweep_into_stages_overhead_setup_and_delivery():
    t0 = datetime(2026, 1, 1, 12, 0, 0).astimezone()  # Optuna stamps local time
    trials = [
        _trial(0, t0 + timedelta(seconds=10), 20.0, {"distill": 15.0, "latency": 4.0}),
        _trial(1, t0 + timedelta(seconds=31), 10.0, {"distill": 9.5}),
    ]
    b = stages.breakdown(trials, started=t0, ended=t0 + timedelta(seconds=50))
    assert b.stages["distill"] == 24.5 and b.stages["latency"] == 4.0
    assert b.first_trial_other == pytest.approx(1.0)  # 20 - 19: the first trial also starts a worker (setup)
    assert b.in_trial_other == pytest.approx(0.5)  # 10 - 9.5
    assert b.between_trials == pytest.approx(1.0)  # tell at 30 s, next ask at 31 s
    assert (b.before_first, b.after_last, b.span, b.driver) == pytest.approx((10.0, 9.0, 31.0, 50.0))
    assert b.overhead_share == pytest.approx(1.5 / 31.0) and b.parallel_ok


def test_a_trials_clock_splits_its_time_outside_the_stages():
    t0 = datetime(2026, 1, 1, 12, 0, 0).astimezone()
    first, asked = t0 + timedelta(seconds=1), t0 + timedelta(seconds=10)
    at = asked.timestamp()
    # asked at 10 s, submitted 0.25 s later, on the worker from 0.375 s to 2.375 s (stages 1.875 s), received at
    # 2.5 s, told at 3 s
    clock = {"submitted": at + 0.25, "worker_began": at + 0.375, "worker_ended": at + 2.375, "received": at + 2.5}
    trials = [
        _trial(0, first, 5.0, {"distill": 4.0}),
        _trial(1, asked, 3.0, {"distill": 1.875}, clock),
        _trial(2, t0 + timedelta(seconds=14), 1.0, {"distill": 0.75}),  # no stamps: an older record
    ]
    b = stages.breakdown(trials, started=t0, ended=t0 + timedelta(seconds=20))
    assert b.in_trial_parts == pytest.approx(
        {"sampling": 0.25, "ray": 0.25, "worker": 0.125, "recording": 0.5, "unstamped": 0.25}
    )
    assert sum(b.in_trial_parts.values()) == pytest.approx(b.in_trial_other)  # the parts add up to the whole


def test_goals_compare_the_joint_pick_with_the_best_single_knob():
    summary = {
        "joint": {"speedup": 6.0, "hv": 0.30},
        "quantization": {"speedup": 1.8, "hv": 0.10},
        "pruning": {"speedup": 3.0, "hv": 0.20},
        "distillation": {"speedup": 3.5, "hv": 0.35},
        "random": {"speedup": 2.0, "hv": 0.2},
    }
    speed, volume = goals(summary)
    assert "distillation, 3.50x" in speed and "ratio 1.71" in speed and "**met**" in speed
    assert "not met (distillation higher)" in volume
    summary["joint"]["speedup"] = None
    assert "not measurable" in goals(summary)[0]


def test_the_report_says_whether_the_teacher_is_slow_enough_to_be_worth_compressing_here():
    assert "0.490 ms (goal >= 1 ms): **not met**" in teacher_goal(0.49)
    assert teacher_goal(1.382).endswith("1.382 ms (goal >= 1 ms): **met**.")


def test_overrides_never_add_a_knob_a_file_leaves_out():
    doc = {"space": {"students": {"teacher": True, "cnn": None}, "pruning": {"ratio": 0.0}}, "search": {}}
    assert not sweeps.set_dotted(doc, "space.students.cnn.epochs", 2)
    assert doc["space"]["students"]["cnn"] is None
    assert sweeps.set_dotted(doc, "search.seed", 2) and doc["search"]["seed"] == 2


def test_readme_headline_is_replaced_between_its_markers_only(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Measured\n\n{report.MARK_BEGIN}\nold\n{report.MARK_END}\n\nkept\n")
    assert report.update_readme(["* new figure"], readme)
    text = readme.read_text()
    assert "old" not in text and "* new figure" in text and text.endswith("\nkept\n")
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(["* x"], plain) and plain.read_text() == "no markers\n"


def test_a_missing_optional_section_is_skipped_with_a_stated_line(tmp_path: Path):
    absent = report.Section("not_a_module_here", "Absent", lambda *a: "never called", optional=True)
    out = report.run_section(absent, tmp_path, True, tmp_path, {})
    assert "Skipped: benchmarks/not_a_module_here.py is not in this checkout." in out.text


def test_a_failing_section_becomes_a_line_not_a_lost_report(tmp_path: Path):
    def broken(*_):
        raise RuntimeError("boom")

    out = report.run_section(report.Section("quickstart", "Broken", broken), tmp_path, True, tmp_path, {})
    assert "This section failed: RuntimeError: boom" in out.text


def test_what_the_space_can_reach_counts_the_structures_fast_enough_and_how_accurate_they_were_trained():
    from benchmarks.reach import Structure, markdown

    structures = [Structure("a", 0.1, 0.01), Structure("b", 0.2, 0.02), Structure("c", 0.5, 0.05)]
    # Teacher 1.0 ms here, best single-knob pick 2.5x: a 1.5x faster pick must run at <= 1 / 3.75 = 0.267 ms.
    text = "\n".join(
        markdown(1.0, structures, {"b": (98.0, {"joint"}), "c": (99.5, {"pruning"})}, 99.0, ("pruning", 2.5), 1.0, "x")
    )
    assert "2 structures are that fast; the sweeps trained 1 of them, 1 within the point" in text
    assert "| a | 0.1000 ms | 10.0x | 0.010 | not trained |" in text
    assert "| b | 0.2000 ms | 5.0x | 0.020 | 98.00% (joint) |" in text


def test_what_the_space_can_reach_says_how_the_fastest_untried_structures_trained_alone():
    from benchmarks.reach import Structure, markdown, untrained_fastest

    structures = [Structure("s1 | int8", 0.1, 0.01), Structure("s1 | fp32", 0.2, 0.02), Structure("s2", 0.5, 0.05)]
    measured = {"s1 | fp32": (98.0, {"joint"})}
    # "s1 | fp32" was trained; "s2" is too slow
    assert untrained_fastest(structures, measured, 0.267, 4) == ["s1 | int8"]
    text = "\n".join(markdown(1.0, structures, measured, 99.0, ("pruning", 2.5), 1.0, "x", {"s1 | int8": 98.5}))
    assert "the 1 fastest of those structures that no sweep trained and whose student reached the point" in text
    assert ": 1 within the point (the most accurate reached 98.50%)" in text
    # 10x the teacher against the pruning pick's 2.5x
    assert "The fastest of them, `s1 | int8`, runs 10.00x as fast as the teacher untrained here" in text
    assert "a joint pick about 4.00x the best single-knob pick that the sweeps did not find" in text
    assert "| s1 \\| int8 | 0.1000 ms | 10.0x | 0.010 | 98.50% (trained alone here) |" in text


def test_the_space_reach_trains_alone_only_structures_whose_student_reached_the_point():
    from benchmarks.reach import Structure, markdown, untrained_fastest

    structures = [
        Structure("small | no prune | fp32", 0.05, 0.01),  # its student never got within the point
        Structure("mid | no prune | int8", 0.1, 0.01),
        Structure("mid | no prune | fp32", 0.2, 0.02),
    ]
    measured = {"small | prune 0.5 | fp32": (90.0, {"joint"}), "mid | no prune | fp32": (98.5, {"distillation"})}
    assert untrained_fastest(structures, measured, 0.267, 4, needed=98.0) == ["mid | no prune | int8"]
    assert untrained_fastest(structures, measured, 0.267, 4) == ["small | no prune | fp32", "mid | no prune | int8"]
    # Once the promising one is trained by a sweep, no structure is left to train alone, and the report says so.
    measured["mid | no prune | int8"] = (98.1, {"joint"})
    text = "\n".join(markdown(1.0, structures, measured, 99.0, ("pruning", 2.5), 1.0, "x", {}))
    assert "none was trained alone" in text


def test_the_whole_reports_estimate_counts_only_the_sections_that_ran():
    est = report.scales.of(True).minutes
    ran = report.Outcome("The quickstart", "", 60.0, "quickstart")
    left = report.Outcome("Real data", "", 0.0, "realdata", ran=False)
    last = report.minutes_table([ran, left], True, 60.0)[-2]
    assert last == f"| **whole report** | **1.0** | **{sum(est.values()) - est['realdata']:.0f}** |"
