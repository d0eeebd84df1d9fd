"""The equal-compute comparison's own logic (benchmarks/bars.py, benchmarks/chained.py), from hand-written fronts:
picks at accuracy bars, the goals per seed, the hand-chained pipeline's stage choices and its charged epochs."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from benchmarks import bars, chained, equalcompute, realdata, sweeps
from benchmarks.sidebyside import Speedup
from search.config import load

pytestmark = pytest.mark.fast


TEACHER_ACCURACY = 99.0


def _row(plan: str, drop: float, p50: float, **params) -> dict:
    row = {"plan": plan, "accuracy": TEACHER_ACCURACY - drop, "accuracy_drop": drop, "p50_ms": p50}
    return row | {"params": params, "onnx": f"{plan}.onnx"}


FRONT = [
    _row("tiny int8", 0.9, 0.05),
    _row("small int8", 0.4, 0.10),
    _row("mid fp32", 0.2, 0.30),
    _row("teacher fp32", 0.0, 1.40),
]


def _speed(x: float) -> Speedup:
    return Speedup("m", 1.0, x, x * 0.95, x * 1.05)


def test_each_bar_takes_the_fastest_front_member_within_it():
    picks = {p.bar: p.plan for p in bars.picks_at_bars("joint", 0, FRONT, bars.BARS)}
    assert picks == {0.1: "teacher fp32", 0.25: "mid fp32", 0.5: "small int8", 1.0: "tiny int8"}
    assert bars.fastest_within(FRONT[:2], 0.25) is None  # no member within the bar: no pick at it


def test_a_bar_a_search_never_reached_reads_so_in_its_table():
    picks = bars.picks_at_bars("joint", 0, FRONT, (0.25,)) + bars.picks_at_bars("pruning", 0, FRONT[:1], (0.25,))
    text = "\n".join(bars.tables(picks, {0: {("joint", 0.25): _speed(4.67)}}, ["joint", "pruning"], (0.25,)))
    assert "| joint | mid fp32 (-0.20 pt): **4.67x [4.44, 4.90]** |" in text
    assert "| pruning | no model within the bar |" in text


def test_joint_meets_the_goal_only_when_at_least_as_fast_as_every_other_search_at_every_bar():
    searches = ["joint", "distillation", "chained"]
    speed = {("joint", 0.25): _speed(6.0), ("distillation", 0.25): _speed(3.0), ("chained", 0.25): _speed(3.9)}
    speed |= {("joint", 1.0): _speed(9.0), ("distillation", 1.0): _speed(9.5)}
    assert bars.verdicts(speed, searches, (0.25, 1.0))[0] is True  # 9.5x [9.03, 9.98] ties 9.0x [8.55, 9.45]
    speed[("distillation", 1.0)] = _speed(10.5)
    every, ratio = bars.verdicts(speed, searches, (0.25, 1.0))
    assert every is False  # distillation is measurably faster at 1.0
    assert ratio == pytest.approx(6.0 / 3.9)  # against the best other at 0.25: the chain
    lines = bars.goal_lines("latency", {0: speed}, searches, (0.25, 1.0))
    assert lines[0].endswith("at bars 0.25, 1 pt (overlapping intervals tie): **not met**.")
    assert lines[1].endswith("ratio 1.54: **met**.")
    # Joint with no model at a bar another search reached loses that bar; nobody there: nothing to lose.
    assert bars.verdicts({("distillation", 0.1): _speed(2.0)}, searches, (0.1,)) == (False, None)
    assert bars.verdicts({("joint", 0.25): _speed(2.0)}, searches, (0.1, 0.25)) == (True, None)


def _fake_sweeps(fronts: dict[str, tuple[list, list]]):
    """A runner that records each stage's experiment and overrides, and a reader of hand-written fronts by folder."""
    calls = []

    def runner(experiment: Path, folder: Path, overrides: dict, env: dict) -> sweeps.SweepRun:
        calls.append((experiment.name, folder.name, overrides))
        now = datetime.now(timezone.utc)
        return sweeps.SweepRun(folder.name, folder, "", now, now, 0, "", "")

    def read(run: sweeps.SweepRun) -> tuple[list, list]:
        return fronts[run.name]

    return calls, runner, read


def test_the_hand_chained_pipeline_fixes_each_stage_to_the_previous_choice_at_each_bar(tmp_path):
    wide = {"student.kind": "cnn", "student.width": 1.0, "student.depth": 2}
    thin = {"student.kind": "cnn", "student.width": 0.25, "student.depth": 1}
    fronts = {
        "stage1": (
            [_row("cnn w1.0 d2", 0.2, 0.4, **wide), _row("cnn w0.25 d1", 0.8, 0.1, **thin)],
            [{"params": wide, "epochs_used": 4.0}, {"params": thin, "epochs_used": 4.0}],
        ),
        "stage2-w1.0-d2": (
            [
                _row("w1 prune 0", 0.3, 0.4, **wide, **{"pruning.ratio": 0.0}),  # retrained: below stage 1's
                _row("w1 prune .5", 0.25, 0.2, **wide, **{"pruning.ratio": 0.5}),
            ],
            [{"params": {**wide, "pruning.ratio": r}, "epochs_used": 6.0} for r in (0.0, 0.25, 0.5)],
        ),
        "stage2-w0.25-d1": ([_row("thin", 0.8, 0.1, **thin, **{"pruning.ratio": 0.0})], []),
        # Stage 3 sweeps an ONNX task: its rows call the model they quantize "teacher".
        "stage3-w1.0-d2-r0.5": ([_row("teacher | no prune | int8", 0.25, 0.12)], []),
        "stage3-w1.0-d2-r0": ([_row("teacher | no prune | int8", 0.2, 0.2)], []),
        "stage3-w0.25-d1-r0": ([_row("teacher | no prune | int8", 0.9, 0.04)], []),
    }
    calls, runner, read = _fake_sweeps(fronts)
    recover = {"space.pruning.recover_epochs": 1}
    splits = lambda run, path: path  # noqa: E731 - stage 3's data file: not read by the fake sweeps
    chains = chained.run_chain(tmp_path, 1, (0.1, 0.2, 0.25, 1.0), 15, recover, {}, read, runner, splits)
    assert chains[0.1].student is None and chains[0.1].final is None  # no student within 0.1 pt: no pipeline
    assert chains[0.25].final["plan"] == "w1 prune .5 | int8"
    # Nothing of stage 2 within 0.2 pt: the user keeps stage 1's student, and quantizes that.
    assert chains[0.2].pruned["plan"] == "cnn w1.0 d2" and chains[0.2].final["plan"] == "cnn w1.0 d2 | int8"
    assert chains[1.0].final["plan"] == "thin | int8"
    by_folder = {folder: (exp, ov) for exp, folder, ov in calls}
    assert [folder for _, folder, _ in calls].count("stage1") == 1  # stage 1 is shared by every bar
    exp1, ov1 = by_folder["stage1"]
    assert exp1 == "distillation.yaml" and ov1["search.budget"] == {"epochs": 10.0} and ov1["search.seed"] == 1
    assert ov1["pick.verify_seconds"] == 1.0  # a stage's own pick is never read
    _, ov2 = by_folder["stage2-w1.0-d2"]
    assert ov2["space.students.cnn.width"] == [1.0] and ov2["space.students.cnn.depth"] == [2]
    # One plan per recovery epoch of the 5 left, at most the 3 ratios above 0: stage 1's student is not retrained
    # only to be measured unpruned (it stays a candidate, as at 0.2 pt above).
    assert ov2["space.pruning.ratio"] == [0.25, 0.5, 0.75] and ov2["search.trials"] == 3
    # Stage 3 quantizes the saved model stage 2 kept (an ONNX task), not a retrained one; it trains nothing.
    _, ov3 = by_folder["stage3-w1.0-d2-r0.5"]
    assert ov3["task"] == {"name": "onnx", "model": "w1 prune .5.onnx", "data": str(tmp_path / "data.npz")}
    assert ov3["space.students"] == {"teacher": True, "cnn": None} and ov3["space.pruning"] == {"ratio": 0.0}
    assert len(ov3["space.quantization.schemes"]) == ov3["search.trials"] == 4
    assert "task.limit" not in ov3 and ov3["search.seed"] == 1
    # Charged as a user pays: stage 1's 8 epochs, then one recovery epoch per pruned plan stage 2 trained (2 of 3).
    assert chains[0.25].charged_epochs == 8.0 + 2.0
    assert chains[1.0].charged_epochs == 8.0


def test_stage_3_judges_a_quantized_model_against_the_teacher_not_the_model_it_quantized(tmp_path):
    wide = {"student.kind": "cnn", "student.width": 1.0, "student.depth": 2}
    student = _row("cnn w1.0 d2", 0.25, 0.4, **wide)  # 98.75%: exactly at the 0.25-point bar
    # Its int8 version is 0.2 pt below it (its sweep's baseline), so 0.45 pt below the teacher: outside the bar.
    int8 = {"plan": "teacher | no prune | int8_dynamic", "accuracy": 98.55, "accuracy_drop": 0.2, "p50_ms": 0.1}
    int8 |= {"params": {"student.kind": "teacher", "quantization.scheme": "int8_dynamic"}, "onnx": None}
    fronts = {
        "stage1": ([student], [{"params": wide, "epochs_used": 4.0}]),
        "stage2-w1.0-d2": ([], []),
        "stage3-w1.0-d2-r0": ([int8], []),
    }
    _, runner, read = _fake_sweeps(fronts)
    chains = chained.run_chain(tmp_path, 0, (0.25, 0.5), 15, {}, {}, read, runner, lambda run, path: path)
    assert chains[0.25].final["plan"] == "cnn w1.0 d2"  # the user keeps the fp32 student
    # Named and described as the model it quantized (its sweep calls that model its teacher).
    assert chains[0.5].final["plan"] == "cnn w1.0 d2 | int8_dynamic"
    assert chains[0.5].final["params"] == {**wide, "quantization.scheme": "int8_dynamic"}
    assert chains[0.5].final["accuracy_drop"] == pytest.approx(0.45)


def test_stage_3_quantizes_the_sweeps_own_validation_split(tmp_path):
    import numpy as np

    from experiments.tasks import load_task

    doc = yaml.safe_load((chained.BENCH / "joint.yaml").read_text())
    for key, value in realdata.QUICK.overrides.items():
        assert sweeps.set_dotted(doc, key, value)
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(doc))
    path = chained.write_data(tmp_path / "stage1.yaml", tmp_path / "chain" / "data.npz")
    expected = load_task(load(tmp_path / "stage1.yaml").task).data
    with np.load(path) as saved:
        assert len(saved["x_val"]) == equalcompute.validation_images(realdata.QUICK)
        assert np.array_equal(saved["x_val"], expected.x_val) and np.array_equal(saved["y_val"], expected.y_val)
        assert np.array_equal(saved["x_calib"], expected.x_calib)


def test_the_stage_overrides_make_valid_experiments_with_the_choice_fixed(tmp_path):
    plan = {"student.kind": "cnn", "student.width": 0.5, "student.depth": 1, "pruning.ratio": 0.25}
    plan["pruning.method"] = "structured"
    doc = yaml.safe_load((chained.BENCH / "joint.yaml").read_text())
    for key, value in {**chained.student_overrides(plan), **chained.pruning_overrides(plan)}.items():
        assert sweeps.set_dotted(doc, key, value)
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(doc))
    exp = load(tmp_path / "stage2.yaml")
    assert exp.space.students.teacher is False
    assert (exp.space.students.cnn.width, exp.space.students.cnn.depth) == ([0.5], [1])
    assert exp.space.pruning.ratio == [0.25]
    # Stage 3: the bench file made a quantization-only sweep of a saved model, with the deployment's settings.
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "d.npz").write_bytes(b"x")
    doc = yaml.safe_load((chained.BENCH / "joint.yaml").read_text())
    schemes = doc["space"]["quantization"]["schemes"]  # the joint file's, as stage 3 takes them
    quant = chained.quantize_overrides(tmp_path / "m.onnx", tmp_path / "d.npz", schemes)
    overrides = {**realdata.DEPLOYMENTS["throughput"], **quant}
    for key, value in overrides.items():
        assert sweeps.set_dotted(doc, key, value)
    (tmp_path / "stage3.yaml").write_text(yaml.safe_dump(doc))
    exp = load(tmp_path / "stage3.yaml")
    assert exp.task.name == "onnx" and exp.space.quantization.schemes == schemes
    assert exp.target.batch_size == 64 and exp.quantization_only_problem() is None


def test_every_search_gets_the_same_student_epochs_but_quantization_its_whole_space(tmp_path):
    scale = realdata.QUICK
    for search in realdata.SEARCHES:
        doc = yaml.safe_load((chained.BENCH / f"{search}.yaml").read_text())
        for key, value in realdata.budget_overrides(search, scale).items():
            sweeps.set_dotted(doc, key, value)
        (tmp_path / f"{search}.yaml").write_text(yaml.safe_dump(doc))
        budget = load(tmp_path / f"{search}.yaml").search.compute_budget()
        if search == "quantization":
            assert budget == ("trainings", float(realdata.QUANTIZATION_PLANS))
        else:
            assert budget == ("epochs", scale.epochs)
    assert chained.split(realdata.FULL.epochs) == (10.0, 5.0) and chained.split(scale.epochs) == (8.0, 4.0)
