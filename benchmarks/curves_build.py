"""Building a curve table (benchmarks/curves.py build): every plan of a task's grid trained once by the project's
trial, reporting its accuracy after every epoch before the last, then timed in one interleaved pass."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.curves import COLUMNS, TASKS, space_of, table_path
from benchmarks.tabular_grid import enumerate_plans, machine, plan_key, read_rows
from spaces.plan import CompressionPlan


def _group(plan: CompressionPlan) -> str:
    """Plans with the same student and pruning share one training: its name in the table."""
    key = json.dumps({**plan.student.params(), **plan.pruning.params()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _model_file(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16] + ".onnx"


def _train(task: str, work: Path) -> int:
    """Train every group of the task's grid not yet in work/rows.csv and measure each of its plans; the number of
    validation images (the accuracy's noise)."""
    from evaluators.accuracy import accuracy
    from evaluators.latency import TimingSettings, measure
    from evaluators.size import size_mb
    from experiments.tasks import load_task
    from experiments.teacher import resolve_teacher, teacher_to_bytes
    from search.trial import TrialContext, _sensitivity_cache, run_trial
    from spaces.quantization import quantize
    from spaces.quantization_knobs import QuantizationChoice

    rows_path, models = work / "rows.csv", work / "models"
    models.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_rows(rows_path)} if rows_path.exists() else set()
    loaded = load_task(TASKS[task])
    data = loaded.data
    base = TrialContext(data=data, teacher_blob=teacher_to_bytes(resolve_teacher(loaded)[0]), timing=TimingSettings())
    quick = TimingSettings(warmup=5, min_repeats=20, max_seconds=0.05)  # a first look; the final pass re-times
    groups: dict[str, list[CompressionPlan]] = {}
    for p in enumerate_plans(space_of(task)):
        groups.setdefault(_group(p), []).append(p)
    with rows_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if not done:
            writer.writeheader()
        for number, (name, plans) in enumerate(sorted(groups.items())):
            todo = [p for p in plans if plan_key(p) not in done]
            if not todo:
                continue
            fp32 = dataclasses.replace(todo[0], quantization=QuantizationChoice(scheme="fp32"))
            planned = _epochs_planned(fp32)
            curve: list[float] = []

            def report(rung: int, metrics: dict[str, float]) -> bool:
                curve.append(round(float(metrics["accuracy"]), 4))
                return True  # record every rung, stop none: the curve to the end

            ctx = dataclasses.replace(base, rungs=tuple(range(1, planned)))
            start = time.perf_counter()
            # run_trial seeds torch with the trial number: the group's index, so a resumed build trains the same.
            result = run_trial(number, fp32, ctx, lambda m: (measure(m, quick), False), None, report)
            train_s = round(time.perf_counter() - start, 2)
            planned = int(result.info.get("epochs_planned") or planned)
            for plan in todo:
                s = plan.student
                row = {
                    "key": plan_key(plan),
                    "label": plan.describe(),
                    "group": name,
                    "student": "teacher" if not s.distilled else f"cnn w{s.width:g} d{s.depth}",
                    "pruning_ratio": plan.pruning.ratio,
                    "scheme": plan.quantization.scheme,
                    "epochs_planned": planned,
                    "curve": " ".join(f"{a:g}" for a in curve),
                    "train_s": train_s,
                    "error": result.error or "",
                }
                if result.ok:
                    try:
                        scheme = plan.quantization
                        deployed = quantize(result.onnx, scheme, data.x_calib, cache_dir=_sensitivity_cache())
                        (models / _model_file(row["key"])).write_bytes(deployed)
                        row.update(
                            accuracy=accuracy(deployed, data.x_val, data.y_val),
                            size_mb=size_mb(deployed),
                            latency_p50_ms=measure(deployed, quick).p50_ms,
                        )
                    except Exception as exc:  # noqa: BLE001 - a plan that fails is a row that says so
                        row["error"] = f"{type(exc).__name__}: {exc}"
                writer.writerow(row)
                f.flush()
            print(f"[{number + 1}/{len(groups)}] {todo[0].describe()}: {len(curve)} rungs, {train_s} s", flush=True)
    return len(data.y_val)


def _epochs_planned(plan: CompressionPlan) -> int:
    """The epochs a plan's trial trains: distillation's, then pruning's recovery after each pruning step."""
    s, p = plan.student, plan.pruning
    return (s.epochs if s.distilled else 0) + (p.recover_epochs * p.steps if p.ratio > 0 else 0)


def _time_interleaved(work: Path, rounds: int, seed: int = 0) -> dict[str, float]:
    """Every structure (a label: student, pruning, scheme; its training settings change no shape) timed once per
    round, in a fresh shuffled order each round: the median p50 per label."""
    from evaluators.latency import TimingSettings, measure

    rows = [r for r in read_rows(work / "rows.csv") if not r["error"]]
    blobs = {r["label"]: (work / "models" / _model_file(r["key"])).read_bytes() for r in rows}
    settings = TimingSettings(warmup=10, min_repeats=50, max_repeats=2000, max_seconds=0.15)
    samples: dict[str, list[float]] = {k: [] for k in blobs}
    order, rng = list(blobs), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            samples[key].append(measure(blobs[key], settings).p50_ms)
    return {k: float(np.median(xs)) for k, xs in samples.items()}


def build(task: str, work: Path, rounds: int, command: str) -> Path:
    """Train the task's grid (resuming), time it interleaved, and write the curve table with its provenance."""
    n_val = _train(task, work)
    latency = _time_interleaved(work, rounds)
    out = table_path(task)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        f.write(
            f"# made by: {command}\n# machine: {machine()}\n# date: {date}\n# validation images: {n_val}\n"
            "# curve: accuracy % on the validation split of the torch model after each epoch before the last "
            "(distillation's, then pruning's recovery), as run_trial reports its rungs; accuracy: the deployed "
            f"(exported, quantized) model's; latency_p50_ms: median over {rounds} interleaved rounds "
            "(1 thread, batch 1); train_s: the whole trial of the plan's training, wall clock\n"
        )
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        grid = {plan_key(p) for p in enumerate_plans(space_of(task))}
        # Only the grid's plans: rows.csv may hold plans of an earlier grid that the folder was built for.
        for r in sorted((r for r in read_rows(work / "rows.csv") if r["key"] in grid), key=lambda r: r["key"]):
            if r["label"] in latency:
                r["latency_p50_ms"] = round(latency[r["label"]], 5)
            writer.writerow(r)
    return out
