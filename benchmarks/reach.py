"""What the joint space can reach at best: every plan's untrained structure timed (latency and size depend on the
structure alone), set against the accuracy the report's sweeps measured for the same plans.

It answers why a joint pick is or is not much faster than the best single-knob pick: a faster pick needs a
structure that is both fast enough and trainable to within a point of the teacher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.tabular_grid import enumerate_plans


@dataclass(frozen=True)
class Structure:
    """One plan of the space, untrained: its label, p50 here and size."""

    plan: str
    p50_ms: float
    size_mb: float


def time_structures(experiment: Path, overrides: dict[str, Any], env: dict[str, str]) -> tuple[float, list[Structure]]:
    """The fp32 teacher's p50 and every plan's untrained structure, each timed with the sweep's timing settings in
    this one process, one after another (the teacher from the report's cache: only its shapes matter here)."""
    from evaluators.latency import measure
    from evaluators.size import size_mb
    from search.config import load
    from search.sweep import prepare, timing
    from search.trial import _structure
    from spaces.export import to_onnx

    old = os.environ.get("SLIMSWEEP_CACHE")
    if "SLIMSWEEP_CACHE" in env:
        os.environ["SLIMSWEEP_CACHE"] = env["SLIMSWEEP_CACHE"]  # the teacher the sweeps trained, not a new one
    try:
        exp = load(experiment, overrides)
        ctx = prepare(exp)
    finally:
        if old is None:
            os.environ.pop("SLIMSWEEP_CACHE", None)
        else:
            os.environ["SLIMSWEEP_CACHE"] = old
    import torch

    torch.set_num_threads(1)
    settings = timing(exp)
    teacher = ctx.teacher()
    example = torch.from_numpy(ctx.data.x_val[:1])
    teacher_p50 = measure(to_onnx(teacher, example), settings).p50_ms
    out = []
    for plan in enumerate_plans(exp.space):
        if plan.weights_decide_structure():
            continue  # its untrained structure is not the trained model's (global pruning, a sensitivity ranking)
        model, _ = _structure(plan, ctx, teacher, example)
        out.append(Structure(plan.describe(), measure(model, settings).p50_ms, size_mb(model)))
    return teacher_p50, sorted(out, key=lambda s: s.p50_ms)


def measured_accuracy(studies: list[Any]) -> dict[str, tuple[float, set[str]]]:
    """Plan label -> the best accuracy any sweep measured for it, and which searches trained it."""
    from search.study import read

    best: dict[str, tuple[float, set[str]]] = {}
    for search, study in studies:
        for t in study.trials:
            rec = read(t)
            if t.state.name != "COMPLETE" or "accuracy" not in rec.metrics or rec.skipped_training:
                continue
            accuracy, where = best.get(rec.describe, (float("-inf"), set()))
            best[rec.describe] = (max(accuracy, rec.metrics["accuracy"]), where | {search})
    return best


def markdown(
    teacher_p50: float,
    structures: list[Structure],
    accuracy: dict[str, tuple[float, set[str]]],
    teacher_accuracy: float,
    best_single: tuple[str, float] | None,
    max_drop: float,
    command: str,
) -> list[str]:
    """The subsection: how many structures leave room for a 1.5x faster pick, and how accurate the sweeps got them."""
    needed = teacher_accuracy - max_drop
    lines = [
        "### What the joint space can reach",
        "",
        f"Every one of the joint space's {len(structures)} plans built untrained (latency and size depend on the "
        f"structure alone) and timed in one process with the sweeps' timing settings: from "
        f"{structures[0].p50_ms:.4f} ms ({teacher_p50 / structures[0].p50_ms:.1f}x the fp32 teacher's "
        f"{teacher_p50:.4f} ms here) to {structures[-1].p50_ms:.4f} ms. Command: {command}.",
        "",
    ]
    if best_single is not None:
        search, speedup = best_single
        bar = teacher_p50 / (1.5 * speedup)
        room = [s for s in structures if s.p50_ms <= bar]
        trained = [s for s in room if s.plan in accuracy]
        good = [s for s in trained if accuracy[s.plan][0] >= needed]
        top = max((accuracy[s.plan][0] for s in trained), default=None)
        lines += [
            f"A joint pick 1.5x faster than the best single-knob pick ({search}, {speedup:.2f}x side by side) must "
            f"run at least {1.5 * speedup:.2f}x as fast as the teacher (<= {bar:.4f} ms here) within {max_drop:g} "
            f"point ({needed:.2f}%): {len(room)} structures are that fast; the sweeps trained {len(trained)} of "
            f"them, {len(good)} within the point"
            + (f" (the most accurate reached {top:.2f}%)." if top is not None else "."),
            "",
        ]
    lines += [
        "The fastest structures, and the best accuracy any of this report's sweeps measured for the same plan:",
        "",
        "| plan | p50 untrained here | x teacher | size MB | best accuracy measured (by) |",
        "|---|---|---|---|---|",
    ]
    for s in structures[:16]:
        got = accuracy.get(s.plan)
        cell = f"{got[0]:.2f}% ({', '.join(sorted(got[1]))})" if got else "not trained"
        plan = s.plan.replace("|", "\\|")
        lines.append(f"| {plan} | {s.p50_ms:.4f} ms | {teacher_p50 / s.p50_ms:.1f}x | {s.size_mb:.3f} | {cell} |")
    return lines + [""]
