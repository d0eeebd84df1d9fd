"""Models made on the way: a model a trial measured on its way to its own plan (the trained student before pruning,
the pruned model before quantization) becomes a complete trial of its own, made_by its parent, no trial of the
budget, when its plan is a plan of the space that no trial has answered yet."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from search.config import Experiment
from search.ledger import Ledger
from search.optuna_store import contains
from search.study import TrialRecord, give_way, open_fixed
from search.telling import record_metrics, write_onnx
from search.trial import MadeOnTheWay
from spaces.plan import sample
from spaces.pruning_knobs import RATIO_KNOB
from spaces.quantization_knobs import SCHEME_KNOB


def offers(d: BaseDistribution, value: Any) -> bool:
    """Whether a distribution of the space offers this value (Optuna keeps the check private: the adapter's)."""
    return contains(d, value)


def plan_on_the_way(
    exp: Experiment, parent: optuna.Trial, made: MadeOnTheWay
) -> tuple[optuna.trial.FixedTrial, Any] | None:
    """The plan of the space a model made on `parent`'s way answers (with its fixed trial), or None when the space
    holds no such plan; nothing is written (the loop asks before it submits a plan whose model is not recorded yet)."""
    params, dists = dict(parent.params), parent.distributions
    for key, value in ((RATIO_KNOB, made.ratio), (SCHEME_KNOB, made.scheme)):
        d = dists.get(key)
        if params.get(key) == value or d is None:  # the parent's value, or a fixed knob (checked below)
            continue
        if not offers(d, value):
            return None  # a value the space does not offer: not a plan of this search
        params[key] = value
    fixed = optuna.trial.FixedTrial(params)
    plan = sample(fixed, exp.space)
    if (plan.pruning.ratio, plan.quantization.scheme) != (made.ratio, made.scheme):
        return None  # a fixed knob holds another value: not a plan of this search
    return fixed, plan


def record_on_the_way(
    exp: Experiment,
    study: optuna.Study,
    ledger: Ledger,
    driver: str,
    teacher_accuracy: float,
    parent: optuna.Trial,
    made: MadeOnTheWay,
    where: dict[str, Any],
) -> int | None:
    """Record one model made on `parent`'s way as a trial; its number, or None when it is no new plan of the space."""
    drawn = plan_on_the_way(exp, parent, made)
    if drawn is None:
        return None
    fixed, plan = drawn
    ledger.sync(study)
    earlier = ledger.reusable(study, plan.params())
    if earlier is not None and earlier.state == TrialState.COMPLETE:
        return None
    trial = open_fixed(study, fixed.params, fixed.distributions, driver)
    try:
        info = {**where, **made.info, "made_by": parent.number, "skipped_training": False}
        rec = TrialRecord(plan=plan.params(), describe=plan.describe(), info=info)
        rec.metrics = dict(made.metrics, accuracy_drop=teacher_accuracy - made.metrics["accuracy"])
        write_onnx(exp, trial.number, made.onnx)
        record_metrics(exp, study, trial, rec)
    except BaseException:
        # Left RUNNING, this live driver's trial would count as in flight forever: the budget would never be met.
        give_way(study, trial)
        raise
    return trial.number
