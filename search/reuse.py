"""Reuse of an identical plan: a proposal the study has already answered is told the earlier trial's result
without running it again (a plan stopped by the gate is stopped again only if today's bar still covers it)."""

from __future__ import annotations

import shutil

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.artifacts import trial_onnx_path
from search.config import Experiment
from search.gate import Bar
from search.study import TrialRecord, read, record
from search.telling import record_metrics, trial_path
from search.tracking import Tracker


def still_answers(earlier: FrozenTrial | None, bar_now: Bar | None) -> tuple[FrozenTrial | None, int | None]:
    """The earlier trial that answers a repeat, and for a PRUNED one the trial that dominates it today: a plan
    stopped before is still stopped only if the bar today still covers its structure (the floor moves as more
    accurate models arrive, and the gate may have been turned off since)."""
    if earlier is None or earlier.state != TrialState.PRUNED:
        return earlier, None
    if read(earlier).info.stopped_at_rung is not None:
        # Stopped at a rung: the front and the floors it could not reach only rise, so it is stopped again.
        return earlier, None
    m = read(earlier).metrics
    now = bar_now.dominator(m["latency_p50_ms"], m["size_mb"]) if bar_now else None
    return (earlier, now.number) if now is not None else (None, None)


def answer_from(
    exp: Experiment,
    study: optuna.Study,
    tracker: Tracker,
    trial: optuna.Trial,
    params: dict,
    describe: str,
    earlier: FrozenTrial,
    dominated_by: int | None = None,
) -> TrialRecord:
    """Tell an identical plan the values of the COMPLETE trial that ran it, without running it again; or, for a
    plan stopped before (PRUNED) that the bar still covers, stop it again, naming today's dominator."""
    old = read(earlier)
    origin = old.reuse_of if old.reuse_of is not None else earlier.number
    # The earlier trial's stamps are not this one's, and a proposal answered from a model made on a trial's way is
    # a repeat of the budget like any other, not a model made on the way itself.
    info = {k: v for k, v in old.info.items() if k not in ("clock", "made_by")}
    rec = TrialRecord(plan=params, describe=describe, info=info, metrics=dict(old.metrics), reuse_of=origin)
    if earlier.state == TrialState.PRUNED:
        if dominated_by is not None:
            rec.info["dominated_by"] = dominated_by
        record(study, trial, rec)
        return rec
    # Another driver's trial: its file is fetched from its MLflow run.
    shutil.copyfile(trial_onnx_path(exp, tracker, earlier.number), trial_path(exp, trial.number))
    record_metrics(exp, study, trial, rec)
    return rec
