"""The hand-chained pipeline (what users of ModelOpt or Olive do by hand), at the joint search's compute.

Stage 1: a distillation-only search (experiments/bench/distillation.yaml) with STAGE1_SHARE of the epoch budget.
Stage 2: a pruning-only search of stage 1's student (the joint file's ratios above 0, the student fixed: stage 1 already
measured it unpruned, and it stays a candidate), charged the recovery
epochs a user pays to prune a saved student (the sweep retrains the student per plan, since a study cannot read
another's model; that retraining is not charged). Stage 3: the joint file's quantization schemes of the model stage 2
kept, its saved ONNX file quantized as a user quantizes a model they have (an ONNX task: `task: {name: onnx}`, the
sweep's own validation and calibration splits), which trains nothing. Each stage keeps the fastest front member
within the bar, the previous stage's model among the candidates (a user keeps it when nothing new is within the bar).
Each stage is a real `slimsweep run` of an experiment file with overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import sweeps
from benchmarks.bars import fastest_within

STAGE1_SHARE = 2 / 3  # of the epoch budget: finding the student is the expensive stage; pruning recovers briefly
BENCH = sweeps.ROOT / "experiments" / "bench"
SPLIT_TEXT = f"{STAGE1_SHARE:.0%} of the epoch budget to stage 1 (students), the rest to stage 2 (pruning recovery)"
ANY_DROP = 100.0  # stage 3's constraint and pick: every scheme is a candidate; the bars judge them against the teacher


@dataclass
class Chain:
    """One pipeline at one seed and bar: each stage's choice (a front row, None when the stage reached no model)."""

    bar: float
    student: dict[str, Any] | None = None
    pruned: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    charged_epochs: float = 0.0  # what the pipeline costs a user: stage 1's epochs and stage 2's recovery epochs
    runs: list[sweeps.SweepRun] = field(default_factory=list)


def split(epochs: float) -> tuple[float, float]:
    """The epoch budget's split between stage 1 and stage 2."""
    first = round(epochs * STAGE1_SHARE)
    return float(first), float(epochs - first)


def student_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    """Overrides that fix the space's student to the one a plan chose (a CNN family member of the distillation file)."""
    if plan.get("student.kind") in (None, "teacher"):
        return {"space.students.teacher": True, "space.students.cnn": None}
    return {
        "space.students.teacher": False,
        "space.students.cnn.width": [plan["student.width"]],
        "space.students.cnn.depth": [plan["student.depth"]],
    }


def student_key(plan: dict[str, Any]) -> str:
    """A folder name for a fixed student: 'w0.5-d1'."""
    return f"w{plan.get('student.width', 'T')}-d{plan.get('student.depth', 'T')}"


def pruning_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    """Overrides that fix the space's pruning to the ratio (and method) a plan chose."""
    out: dict[str, Any] = {"space.pruning.ratio": [plan.get("pruning.ratio", 0.0)]}
    if plan.get("pruning.method"):
        out["space.pruning.method"] = [plan["pruning.method"]]
    return out


def stage2_trials(stage2_epochs: float, recover_epochs: float, ratios: int) -> int:
    """Pruning plans stage 2 can afford: one per recovery, at most the file's ratios above 0."""
    return max(1, min(ratios, int(stage2_epochs // max(recover_epochs, 1e-9))))


def recover_charge(front_and_trained: Sequence[dict[str, Any]], recover_epochs: float) -> float:
    """Stage 2's charge: the recovery epochs of each pruned plan it trained."""
    return sum(recover_epochs for p in front_and_trained if p.get("pruning.ratio", 0.0) > 0)


def write_data(experiment: Path, path: Path) -> Path:
    """The validation and calibration splits of a stage's MNIST task, as an ONNX task reads them (an .npz)."""
    import numpy as np

    from experiments.tasks import load_task
    from search.config import load

    if not path.is_file():
        data = load_task(load(experiment).task).data
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_calib=data.x_calib, y_calib=data.y_calib, x_val=data.x_val, y_val=data.y_val)
    return path


def quantize_overrides(model: Path, data: Path, schemes: Sequence[str]) -> dict[str, Any]:
    """Overrides that make a bench file a quantization-only sweep of a saved ONNX model (stage 3)."""
    return {
        "task": {"name": "onnx", "model": str(model), "data": str(data)},
        "space.students": {"teacher": True, "cnn": None},
        "space.pruning": {"ratio": 0.0},
        "space.quantization.schemes": list(schemes),
        "search.trials": len(schemes),
        "search.budget": None,
        "constraints.max_accuracy_drop": ANY_DROP,
        "pick.max_accuracy_drop": ANY_DROP,
    }


def against_teacher(rows: Sequence[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 3's front rows as the chain reads them: their accuracy drop from the MNIST teacher, and the plan of the
    model they quantized (their sweep's baseline, its "teacher", is that model, `model`: a row of the stage before)."""
    teacher_accuracy = model["accuracy"] + model["accuracy_drop"]
    structure = model["plan"].rsplit(" | ", 1)[0]  # "cnn w0.5 d2 | prune 0.25" of "cnn w0.5 d2 | prune 0.25 | fp32"
    return [
        {
            **r,
            "accuracy_drop": teacher_accuracy - r["accuracy"],
            "plan": f"{structure} | {r['plan'].rsplit(' | ', 1)[-1]}",
            "params": {**model["params"], **{k: v for k, v in r["params"].items() if k.startswith("quantization.")}},
        }
        for r in rows
    ]


def _space(name: str) -> dict[str, Any]:
    return yaml.safe_load((BENCH / name).read_text())["space"]


def run_chain(
    work: Path,
    seed: int,
    bars: Sequence[float],
    epochs: float,
    overrides: dict[str, Any],
    env: dict[str, str],
    read: Callable[[sweeps.SweepRun], tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    runner: Callable[..., sweeps.SweepRun] = sweeps.run,
    data: Callable[[sweeps.SweepRun, Path], Path] | None = None,
) -> dict[float, Chain]:
    """The pipeline at each bar (stage 1 shared by every bar; a later stage runs once per distinct earlier choice).
    `read` gives a sweep's front rows (with 'params', 'accuracy' and the model's file as 'onnx') and the plans it
    trained ('params', 'epochs_used'); `runner` runs an experiment file with overrides (sweeps.run's arguments);
    `data` writes a sweep's validation and calibration splits to a path for stage 3 (write_data by default)."""
    first, second = split(epochs)
    joint = _space("joint.yaml")
    recover = float(overrides.get("space.pruning.recover_epochs", joint["pruning"].get("recover_epochs", 1)))
    # Not ratio 0: the sweep would train stage 1's student again only to measure it unpruned (it is a candidate).
    ratios = [r for r in joint["pruning"]["ratio"] if r > 0]
    schemes = joint["quantization"]["schemes"]
    # A stage's own pick is never read (each stage keeps its fastest front member within the bar, from the sweep's
    # station timings): its side-by-side verification is cut to the shortest allowed.
    base = {**overrides, "search.seed": seed, "pick.verify_seconds": 1.0}
    # Stage 3 quantizes a saved model: the training's overrides do not apply, the deployment's and the seed do.
    base3 = {k: v for k, v in base.items() if not k.startswith(("task.", "space."))}
    stage1 = runner(BENCH / "distillation.yaml", work / "stage1", {**base, "search.budget": {"epochs": first}}, env)
    splits = data or (lambda run, path: write_data(run.folder.parent.parent / "experiment.yaml", path))
    front1, trained1 = read(stage1)
    spent1 = sum(p["epochs_used"] for p in trained1)
    done2: dict[str, tuple[sweeps.SweepRun, list, list]] = {}
    done3: dict[str, tuple[sweeps.SweepRun, list]] = {}
    chains = {}
    for bar in bars:
        chain = Chain(bar, runs=[stage1], charged_epochs=spent1)
        chains[bar] = chain
        chain.student = fastest_within(front1, bar)
        if chain.student is None:
            continue
        fixed = student_overrides(chain.student["params"])
        key2 = student_key(chain.student["params"])
        if key2 not in done2:
            pruning = {
                "space.pruning.ratio": ratios,
                "search.trials": stage2_trials(second, recover, len(ratios)),
                "search.budget": None,
            }
            run2 = runner(
                BENCH / "joint.yaml",
                work / f"stage2-{key2}",
                {**base, **fixed, **pruning, "space.quantization": {"schemes": ["fp32"]}},
                env,
            )
            done2[key2] = (run2, *read(run2))
        run2, front2, trained2 = done2[key2]
        chain.runs.append(run2)
        chain.charged_epochs += recover_charge([p["params"] for p in trained2], recover)
        # The previous stage's model is a candidate too: a user keeps it when no pruned one is within the bar (the
        # sweep retrains the student, whose accuracy may land elsewhere than stage 1's).
        chain.pruned = fastest_within([*front2, chain.student], bar)
        if chain.pruned is None:
            continue
        key3 = f"{key2}-r{chain.pruned['params'].get('pruning.ratio', 0.0):g}"
        if chain.pruned.get("onnx") is None:  # no saved model to quantize: the chain ends at stage 2
            chain.final = chain.pruned
            continue
        if key3 not in done3:
            quant = quantize_overrides(Path(chain.pruned["onnx"]), splits(stage1, work / "data.npz"), schemes)
            run3 = runner(BENCH / "joint.yaml", work / f"stage3-{key3}", {**base3, **quant}, env)
            done3[key3] = (run3, against_teacher(read(run3)[0], chain.pruned))
        run3, front3 = done3[key3]
        chain.runs.append(run3)
        chain.final = fastest_within([*front3, chain.pruned], bar)
    return chains
