"""What the joint space can reach at best: every plan's untrained structure timed (latency and size depend on the
structure alone), set against the accuracy the report's sweeps measured for the same plans.

It answers why a joint pick is or is not much faster than the best single-knob pick: a faster pick needs a
structure that is both fast enough and trainable to within a point of the teacher. The report also trains, alone,
the fastest structures that no sweep trained, so the answer does not hang on what the sweeps happened to try.

Usage: python benchmarks/reach.py [--scale quick|full] [--under-ms MS] [--train K] [--plan LABEL ...]
       (times every structure; trains the K fastest at or under MS, or the named plans, with the sweeps' own trial
       code; a label as the table prints it, e.g. "cnn w0.25 d2 | prune 0.5 | fp32")
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: import the project from this checkout

from benchmarks.tabular_grid import enumerate_plans  # noqa: E402


@dataclass(frozen=True)
class Structure:
    """One plan of the space, untrained: its label, p50 here and size."""

    plan: str
    p50_ms: float
    size_mb: float


def _context(experiment: Path, overrides: dict[str, Any], env: dict[str, str]) -> tuple[Any, Any]:
    """The experiment and its trial context, the teacher from the report's cache (the one its sweeps trained)."""
    from search.config import load
    from search.sweep import prepare

    old = os.environ.get("SLIMSWEEP_CACHE")
    if "SLIMSWEEP_CACHE" in env:
        os.environ["SLIMSWEEP_CACHE"] = env["SLIMSWEEP_CACHE"]
    try:
        exp = load(experiment, overrides)
        return exp, prepare(exp)
    finally:
        if old is None:
            os.environ.pop("SLIMSWEEP_CACHE", None)
        else:
            os.environ["SLIMSWEEP_CACHE"] = old


def time_structures(experiment: Path, overrides: dict[str, Any], env: dict[str, str]) -> tuple[float, list[Structure]]:
    """The fp32 teacher's p50 and every plan's untrained structure, each timed with the sweep's timing settings in
    this one process, one after another (the teacher from the report's cache: only its shapes matter here)."""
    import torch

    from evaluators.latency import measure
    from evaluators.size import size_mb
    from search.sweep import timing
    from search.trial import _structure
    from spaces.export import to_onnx

    exp, ctx = _context(experiment, overrides, env)
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


def train_alone(
    experiment: Path, overrides: dict[str, Any], env: dict[str, str], labels: list[str]
) -> dict[str, float]:
    """Train the named plans of the space one after another in this process with the sweeps' own trial code (seeded
    as a sweep's first trial would be); plan label -> accuracy on the validation split (failed plans left out)."""
    from evaluators.latency import measure
    from search.sweep import timing
    from search.trial import run_trial, teacher_figures

    exp, ctx = _context(experiment, overrides, env)
    plans = {plan.describe(): plan for plan in enumerate_plans(exp.space)}
    settings, out = timing(exp), {}
    _, teacher = teacher_figures(ctx, lambda model: (measure(model, settings), False))
    print(f"fp32 teacher: accuracy {teacher['accuracy']:.2f}%, p50 {teacher['latency_p50_ms']:.4f} ms", flush=True)
    for label in labels:
        result = run_trial(0, plans[label], ctx, lambda model: (measure(model, settings), False))
        if result.ok:
            out[label] = result.metrics["accuracy"]
        print(f"trained alone: {label}: {out.get(label, result.error)}", flush=True)
    return out


def student_of(plan: str) -> str:
    """The student part of a plan's label ("cnn w0.5 d2 | prune 0.5 | fp32" -> "cnn w0.5 d2")."""
    return plan.split(" | ")[0]


def untrained_fastest(
    structures: list[Structure],
    measured: dict[str, Any],
    under_ms: float,
    most: int,
    needed: float | None = None,
) -> list[str]:
    """The `most` fastest structures at or under `under_ms` that no sweep trained; with `needed`, only those whose
    student reached that accuracy in some measured plan (pruning and int8 do not make a student more accurate, so
    one that never got there is not worth a training)."""
    reached = {student_of(plan) for plan, (accuracy, _) in measured.items() if accuracy >= (needed or 0.0)}
    return [
        s.plan
        for s in structures
        if s.p50_ms <= under_ms and s.plan not in measured and (needed is None or student_of(s.plan) in reached)
    ][:most]


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
    alone: dict[str, float] | None = None,
) -> list[str]:
    """The subsection: how many structures leave room for a 1.5x faster pick, and how accurate the sweeps got them."""
    needed = teacher_accuracy - max_drop
    by_plan = {s.plan: s for s in structures}
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
        # Whether any structure qualified for training alone, from the same rule the caller chose them by: an empty
        # `alone` may also mean every one of them failed to train.
        candidates = untrained_fastest(structures, accuracy, bar, len(structures), needed)
        if alone is not None and not candidates:
            lines += [
                "No structure that fast and untried has a student that reached the point in some sweep (pruning and "
                "int8 do not make a student more accurate): none was trained alone.",
                "",
            ]
        elif alone is not None:
            hits = sorted((by_plan[label] for label, got in alone.items() if got >= needed), key=lambda x: x.p50_ms)
            best = max(alone.values(), default=None)
            lines += [
                f"Trained alone here, with the sweeps' trial code and settings, the {len(alone)} fastest of those "
                "structures that no sweep trained and whose student reached the point in some sweep (pruning and "
                f"int8 do not make a student more accurate): {len(hits)} within the point"
                + (f" (the most accurate reached {best:.2f}%)." if best is not None else ".")
                + (
                    f" The fastest of them, `{hits[0].plan}`, runs {teacher_p50 / hits[0].p50_ms:.2f}x as fast as "
                    f"the teacher untrained here: the space holds a joint pick about "
                    f"{teacher_p50 / hits[0].p50_ms / speedup:.2f}x the best single-knob pick that the sweeps did "
                    "not find."
                    if hits
                    else ""
                ),
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
        if not got and alone and s.plan in alone:
            cell = f"{alone[s.plan]:.2f}% (trained alone here)"
        plan = s.plan.replace("|", "\\|")
        lines.append(f"| {plan} | {s.p50_ms:.4f} ms | {teacher_p50 / s.p50_ms:.1f}x | {s.size_mb:.3f} | {cell} |")
    return lines + [""]


def main() -> int:
    """Time every structure of the bench's joint space, then train the fastest few alone; print both."""
    from benchmarks import realdata, sweeps

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["quick", "full"], default="full")
    parser.add_argument("--under-ms", type=float, default=0.05, help="train only structures at or under this p50")
    parser.add_argument("--train", type=int, default=4, help="how many of the fastest structures to train")
    parser.add_argument("--plan", action="append", default=[], help="train this plan instead (repeatable)")
    args = parser.parse_args()
    scale = {"quick": realdata.QUICK, "full": realdata.FULL}[args.scale]
    experiment, overrides = sweeps.ROOT / "experiments" / "bench" / "joint.yaml", {"search.seed": 0, **scale.overrides}
    teacher_p50, structures = time_structures(experiment, overrides, {})
    known = {s.plan for s in structures}
    unknown = [label for label in args.plan if label not in known]
    if unknown:
        parser.error(f"--plan {unknown[0]!r} is not a plan of the space; the table below lists them")
    labels = args.plan or untrained_fastest(structures, {}, args.under_ms, args.train)
    alone = train_alone(experiment, overrides, {}, labels)
    print(f"fp32 teacher: {teacher_p50:.4f} ms p50 here ({args.scale} scale: {overrides})")
    for s in [s for s in structures[:16] if s.plan not in alone] + [s for s in structures if s.plan in alone]:
        trained = f"{alone[s.plan]:.2f}%" if s.plan in alone else "-"
        print(f"{s.plan:55s} {s.p50_ms:.4f} ms {teacher_p50 / s.p50_ms:5.1f}x {s.size_mb:.3f} MB  accuracy {trained}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
