"""The Optuna study: created or resumed on real storage, with a named sampler; the driver's record of every trial."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluators.errors import ConfigError
from search.config import METRIC_DIRECTIONS, Experiment

INTERRUPTED = "slimsweep.interrupted"  # a trial a stopped or dead driver left unfinished; it runs again
FAILURE = "slimsweep.failure"


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The named sampler; always explicit, since Optuna 5 changed the multi-objective default."""
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, trials // 3)))


def open_study(exp: Experiment) -> optuna.Study:
    """Create the experiment's study, or load it to resume; refuse a resume whose objectives changed."""
    optuna.logging.set_verbosity(logging.WARNING)
    directions = [METRIC_DIRECTIONS[o] for o in exp.objectives]
    exp.out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=exp.name, storage=exp.storage_url, directions=directions, load_if_exists=True,
        sampler=make_sampler(exp.search.sampler, exp.search.seed, exp.search.trials),
    )
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(exp.objectives))
    elif stored != list(exp.objectives):
        raise ConfigError(
            f"objectives: {list(exp.objectives)} differs from {stored}, which the stored study {exp.name!r} "
            f"in {exp.storage_url} was created with; restore them, or give the experiment a new name"
        )
    return study


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (complete or failed on their own); these count toward the budget."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if not t.user_attrs.get(INTERRUPTED)]


def requeue(study: optuna.Study, numbers: list[int] | None = None) -> list[int]:
    """Fail trials left running (by a dead driver, or the given in-flight ones) and enqueue their plans again."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    chosen = list(by_number) if numbers is None else [n for n in numbers if n in by_number]
    for number in chosen:
        frozen = by_number[number]
        trial = optuna.Trial(study, frozen._trial_id)
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"slimsweep.retry_of": number})
    return chosen


def record(study: optuna.Study, trial: optuna.Trial, *, values: list[float] | None, constraints: dict[str, float],
           attrs: dict[str, Any], failure: str | None) -> None:
    """Tell Optuna a trial's outcome: values and constraints (<= 0 is feasible), or FAIL with its reason."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if failure is not None:
        trial.set_user_attr(FAILURE, failure[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    study.tell(trial, values)
