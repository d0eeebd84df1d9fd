"""Telling Optuna a candidate: its deployable ONNX file on disk first, then its values and constraints."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.config import Experiment
from search.study import TrialRecord, record


def trial_path(exp: Experiment, number: int) -> Path:
    """Where a trial's deployable ONNX file is kept (the driver writes it before telling Optuna)."""
    return exp.out / "trials" / f"trial-{number}.onnx"


def write_onnx(exp: Experiment, number: int, onnx: bytes) -> None:
    """Keep a candidate's deployable file under its trial's number."""
    path = trial_path(exp, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx)


def record_metrics(exp: Experiment, study: optuna.Study, trial: optuna.Trial, rec: TrialRecord) -> None:
    """Tell Optuna a candidate's objective values and its constraints (<= 0 is feasible)."""
    m, c = rec.metrics, exp.constraints
    constraints = {"accuracy_drop": m["accuracy_drop"] - c.max_accuracy_drop}
    if c.max_latency_ms is not None:
        constraints["latency_p50_ms"] = m["latency_p50_ms"] - c.max_latency_ms
    if c.max_size_mb is not None:
        constraints["size_mb"] = m["size_mb"] - c.max_size_mb
    rec.feasible = all(v <= 0 for v in constraints.values())
    record(study, trial, rec, values=[m[o] for o in exp.objectives], constraints=constraints)
