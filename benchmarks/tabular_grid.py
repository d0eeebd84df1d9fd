"""The tabular benchmark's grid: every plan of a small all-categorical space on the digits task, trained and
measured once with the project's trial code, then re-timed in one interleaved pass (benchmarks/tabular.py build).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from spaces.plan import CompressionPlan, Space, sample

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "benchmarks" / "data" / "tabular-digits.csv"

# The grid: the quickstart's knobs (experiments/digits.yaml) with every range made a short list of choices, and
# the fp16 and QOperator schemes and reduce_range added, so every plan of the space can be trained once.
GRID: dict[str, Any] = {
    "students": {
        "teacher": True,
        "cnn": {
            "width": [0.25, 0.5, 0.75],
            "depth": [1, 2],
            "temperature": [2.0, 6.0],
            "alpha": 0.7,
            "epochs": 12,
            "lr": 0.003,
        },
    },
    "pruning": {"ratio": [0.0, 0.25, 0.5], "recover_epochs": 4, "round_to": 8},
    "quantization": {
        "schemes": ["fp32", "fp16", "int8_dynamic", "int8_static_qdq", "int8_static_qoperator"],
        "static": {"reduce_range": [True, False]},
    },
}
TEACHER = {"width": 1.0, "depth": 2, "epochs": 30, "lr": 0.003}  # the quickstart's teacher
COLUMNS = [
    "key",
    "label",
    "student",
    "width",
    "depth",
    "temperature",
    "pruning_ratio",
    "scheme",
    "reduce_range",
    "accuracy",
    "latency_p50_ms",
    "latency_iqr_rel",
    "size_mb",
    "params",
    "train_s",
    "error",
]


def grid_space() -> Space:
    """The grid as the project's search space: every knob a list of choices."""
    return Space.model_validate(GRID)


def plan_key(plan: CompressionPlan) -> str:
    """A plan's identity in the table: its parameters as canonical JSON."""
    return json.dumps(plan.params(), sort_keys=True)


class _Walk:
    """A TrialLike that takes a fixed sequence of choice indices, then the first choice; it records every branch."""

    def __init__(self, prefix: list[int]) -> None:
        self.prefix, self.taken, self.sizes, self.params = prefix, [], [], {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        i = self.prefix[len(self.taken)] if len(self.taken) < len(self.prefix) else 0
        self.taken.append(i)
        self.sizes.append(len(choices))
        self.params[name] = choices[i]
        return choices[i]

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        raise ValueError(f"a tabular grid needs a list of choices for every knob; {name!r} is a range")


def enumerate_space(space: Space) -> dict[str, tuple[CompressionPlan, dict[str, Any]]]:
    """Every plan the (all-categorical, conditional) space can sample, by key, with the Optuna params that give it."""
    plans, stack = {}, [[]]
    while stack:
        prefix = stack.pop()
        walk = _Walk(prefix)
        plan = sample(walk, space)
        plans[plan_key(plan)] = (plan, walk.params)
        for depth in range(len(prefix), len(walk.taken)):  # branch on every choice first taken at index 0
            stack += [walk.taken[:depth] + [j] for j in range(1, walk.sizes[depth])]
    return dict(sorted(plans.items()))


def enumerate_plans(space: Space) -> list[CompressionPlan]:
    """Every plan of the space, each once, sorted by key."""
    return [plan for plan, _ in enumerate_space(space).values()]


# ---------------------------------------------------------------------------------------------------------- build


def machine() -> str:
    """The machine in one line: CPU model, cores, int8-relevant instruction sets, library versions."""
    import onnxruntime
    import optuna
    import torch

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags] or ["none listed"]
    return (
        f"{model}, {os.cpu_count()} cores, {', '.join(isa)}; Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, optuna {optuna.__version__}"
    )


def _groups(plans: list[CompressionPlan]) -> dict[str, list[CompressionPlan]]:
    """Plans that share a student and a pruning choice share one training run (quantization follows training)."""
    out: dict[str, list[CompressionPlan]] = {}
    for p in plans:
        out.setdefault(json.dumps({**p.student.params(), **p.pruning.params()}, sort_keys=True), []).append(p)
    return out


def _row(plan: CompressionPlan) -> dict[str, Any]:
    s, q = plan.student, plan.quantization
    return {
        "key": plan_key(plan),
        "label": plan.describe(),
        "student": s.kind,
        "width": s.width if s.kind == "cnn" else "",
        "depth": s.depth if s.kind == "cnn" else "",
        "temperature": s.temperature if s.kind == "cnn" else "",
        "pruning_ratio": plan.pruning.ratio,
        "scheme": q.scheme,
        "reduce_range": q.reduce_range if q.is_static else "",
    }


def _train_grid(work: Path) -> None:
    """Train and measure every plan not yet in work/rows.csv; one training per (student, pruning), then each scheme."""
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
    task = load_task({"name": "digits", "seed": 0, "teacher": TEACHER})
    ctx = TrialContext(data=task.data, teacher_blob=teacher_to_bytes(resolve_teacher(task)[0]), timing=TimingSettings())
    quick = TimingSettings(warmup=5, min_repeats=20, max_seconds=0.05)  # a first look; the final pass re-times
    groups = _groups(enumerate_plans(grid_space()))
    with rows_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if not done:
            writer.writeheader()
        for number, (name, plans) in enumerate(sorted(groups.items())):
            todo = [p for p in plans if plan_key(p) not in done]
            if not todo:
                continue
            fp32_plan = dataclasses.replace(todo[0], quantization=QuantizationChoice(scheme="fp32"))
            # run_trial seeds torch with the trial number: the group's index, so a resumed build trains the same.
            start = time.perf_counter()
            result = run_trial(number, fp32_plan, ctx, lambda m: (measure(m, quick), False))
            train_s = round(time.perf_counter() - start, 2)
            for plan in todo:
                row = {**_row(plan), "train_s": train_s, "error": result.error or ""}
                if result.ok:
                    try:
                        deployed = quantize(
                            result.onnx, plan.quantization, ctx.data.x_calib, cache_dir=_sensitivity_cache()
                        )
                        (models / _model_file(plan)).write_bytes(deployed)
                        row.update(
                            accuracy=accuracy(deployed, ctx.data.x_val, ctx.data.y_val),
                            size_mb=size_mb(deployed),
                            params=result.metrics["params"],
                            latency_p50_ms=measure(deployed, quick).p50_ms,
                        )
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                writer.writerow(row)
                f.flush()
            print(
                f"[{number + 1}/{len(groups)}] {todo[0].student.describe()} | {todo[0].pruning.describe()}: "
                f"{len(todo)} plans, {train_s} s",
                flush=True,
            )


def _model_file(plan: CompressionPlan) -> str:
    return hashlib.sha256(plan_key(plan).encode()).hexdigest()[:16] + ".onnx"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _time_interleaved(work: Path, rounds: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Every model timed once per round, in a fresh shuffled order each round: (median p50, IQR/median) per key."""
    from evaluators.latency import TimingSettings, measure

    rows = [r for r in read_rows(work / "rows.csv") if not r["error"]]
    blobs = {r["key"]: (work / "models" / _model_file(_plan_of(r["key"]))).read_bytes() for r in rows}
    settings = TimingSettings(warmup=10, min_repeats=50, max_repeats=2000, max_seconds=0.15)
    samples: dict[str, list[float]] = {k: [] for k in blobs}
    order = list(blobs)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for key in order:
            samples[key].append(measure(blobs[key], settings).p50_ms)
        print(f"timing round {r + 1}/{rounds} done", flush=True)
    out = {}
    for key, xs in samples.items():
        q1, med, q3 = np.percentile(xs, [25, 50, 75])
        out[key] = (float(med), float((q3 - q1) / med))
    return out


@functools.cache
def _grid_plans() -> dict[str, CompressionPlan]:
    return {plan_key(p): p for p in enumerate_plans(grid_space())}


def _plan_of(key: str) -> CompressionPlan:
    return _grid_plans()[key]


def build(work: Path, rounds: int, command: str) -> Path:
    """Train the whole grid (resuming), time it interleaved, and write the table with its provenance."""
    _train_grid(work)
    latency = _time_interleaved(work, rounds)
    rows = read_rows(work / "rows.csv")
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    with TABLE.open("w", newline="") as f:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        f.write(
            f"# made by: {command}\n# machine: {machine()}\n# date: {date}\n"
            f"# latency_p50_ms: median over {rounds} interleaved rounds of evaluators.latency.measure's p50 "
            f"(1 thread, batch 1); latency_iqr_rel: interquartile range of the rounds / median\n"
        )
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in sorted(rows, key=lambda r: r["key"]):
            if r["key"] in latency:
                r["latency_p50_ms"], r["latency_iqr_rel"] = (round(v, 5) for v in latency[r["key"]])
            writer.writerow(r)
    return TABLE
