"""The hand-chained pipeline (what users of ModelOpt or Olive do by hand), at the joint search's compute.

Stage 1: a distillation-only search (experiments/bench/distillation.yaml) with STAGE1_SHARE of the epoch budget.
Stage 2: a pruning-only search of stage 1's student (the joint file's ratios, the student fixed), charged the recovery
epochs a user pays to prune a saved student (the sweep retrains the student per plan, since a study cannot read
another's model; that retraining is not charged). Stage 3: the joint file's quantization schemes of the pruned model,
which trains nothing a user would pay for. Each stage keeps the fastest front member within the bar, the previous
stage's model among the candidates (a user keeps it when nothing new is within the bar). Each stage is a real
`slimsweep run` of an experiment file with overrides.
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
    """Pruning plans stage 2 can afford: the unpruned student (free) and one per recovery, at most the file's ratios."""
    return max(1, min(ratios, 1 + int(stage2_epochs // max(recover_epochs, 1e-9))))


def recover_charge(front_and_trained: Sequence[dict[str, Any]], recover_epochs: float) -> float:
    """Stage 2's charge: the recovery epochs of each pruned plan it trained."""
    return sum(recover_epochs for p in front_and_trained if p.get("pruning.ratio", 0.0) > 0)


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
) -> dict[float, Chain]:
    """The pipeline at each bar (stage 1 shared by every bar; a later stage runs once per distinct earlier choice).
    `read` gives a sweep's front rows (with 'params') and the plans it trained ('params', 'epochs_used'); `runner`
    runs an experiment file with overrides (sweeps.run's arguments)."""
    first, second = split(epochs)
    joint = _space("joint.yaml")
    recover = float(overrides.get("space.pruning.recover_epochs", joint["pruning"].get("recover_epochs", 1)))
    ratios = joint["pruning"]["ratio"]
    schemes = joint["quantization"]["schemes"]
    base = {**overrides, "search.seed": seed}
    stage1 = runner(BENCH / "distillation.yaml", work / "stage1", {**base, "search.budget": {"epochs": first}}, env)
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
        if key3 not in done3:
            quant = {"space.quantization.schemes": schemes, "search.trials": len(schemes), "search.budget": None}
            run3 = runner(
                BENCH / "joint.yaml",
                work / f"stage3-{key3}",
                {**base, **fixed, **pruning_overrides(chain.pruned["params"]), **quant},
                env,
            )
            done3[key3] = (run3, read(run3)[0])
        run3, front3 = done3[key3]
        chain.runs.append(run3)
        chain.final = fastest_within([*front3, chain.pruned], bar)
    return chains
