"""The one adapter over Optuna's private API: every private name slimsweep uses, each behind one small function.

Optuna's public API has no way to set a system attribute on a study, fail a trial that another process owns, open
a RUNNING trial with given params, reach the SQL engine for the database's clock, or test a value against a
distribution; these go through private names. Each is resolved here, at call time, so an Optuna release that
renames one fails with a `SlimsweepError` naming the Optuna version and the private name (and
tests/test_optuna_adapter.py fails the same way), not with an AttributeError deep in the driver.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from evaluators.errors import SlimsweepError

TESTED = "5.x"  # the Optuna releases this adapter was checked against

# Module-level private names, and private methods of public classes: `check()` resolves them without a study.
PRIVATE = (
    ("optuna.study._constrained_optimization", "_CONSTRAINTS_KEY"),
    ("optuna._hypervolume", "compute_hypervolume"),
    ("optuna.study._multi_objective", "_is_pareto_front"),
    ("optuna.distributions", "BaseDistribution._contains"),
)
# Private attributes of instances (`check(study)` reads them on a real one): a study's storage and id, a trial's id,
# and the RDB storage behind Optuna's cache.
INSTANCE = ("Study._storage", "Study._study_id", "Trial._trial_id", "_CachedStorage._backend")


class OptunaChanged(SlimsweepError):
    """The installed Optuna no longer has a private name slimsweep relies on."""


def _changed(name: str, err: BaseException | None = None) -> OptunaChanged:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return OptunaChanged(
        f"Optuna {optuna.__version__} has no {name}{why}; slimsweep's adapter (search/optuna_store.py) was written "
        f"for Optuna {TESTED}: install a release it supports (`pip install 'optuna>=5,<6'`), or update the adapter"
    )


def _attr(obj: Any, name: str, where: str) -> Any:
    """`getattr(obj, name)`, or OptunaChanged naming `where.name`."""
    try:
        return getattr(obj, name)
    except AttributeError as err:
        raise _changed(f"{where}.{name}", err) from None


def _module_attr(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise _changed(f"{module}.{name}", err) from None


def check(study: optuna.Study | None = None) -> list[str]:
    """Every private name this adapter uses that the installed Optuna lacks (with a real `study`, its instances'
    private attributes too); empty when all are there."""
    missing = []
    for module, dotted in PRIVATE:
        try:
            owner: Any = importlib.import_module(module)
            for part in dotted.split("."):
                owner = getattr(owner, part)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{dotted}")
    if study is not None:
        store = getattr(study, "_storage", None)
        found = {
            "Study._storage": store is not None,
            "Study._study_id": hasattr(study, "_study_id"),
            "Trial._trial_id": all(hasattr(t, "_trial_id") for t in study.get_trials(deepcopy=False)),
            "_CachedStorage._backend": type(store).__name__ != "_CachedStorage" or hasattr(store, "_backend"),
        }
        missing += [f"optuna {name}" for name in INSTANCE if not found[name]]
    return missing


# --- a study's storage and its ids ---------------------------------------------------------------------------------


def storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (`Study._storage`)."""
    return _attr(study, "_storage", "optuna.study.Study")


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (`Study._study_id`)."""
    return _attr(study, "_study_id", "optuna.study.Study")


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    """One trial of a study by its number, read alone (get_trials reads them all)."""
    store = storage(study)
    return store.get_trial(store.get_trial_id_from_study_id_trial_number(study_id(study), number))


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (`Trial._trial_id`, `FrozenTrial._trial_id`)."""
    return _attr(trial, "_trial_id", f"optuna.trial.{type(trial).__name__}")


def engine(study: optuna.Study) -> Any | None:
    """The SQLAlchemy engine of an RDB study (behind Optuna's cache, `_CachedStorage._backend`); None otherwise."""
    store = storage(study)
    backend = getattr(store, "_backend", store)  # an RDB storage is wrapped in a cache; others are not
    return getattr(backend, "engine", None)


# --- system attributes: on the study, on a trial ---------------------------------------------------------------------


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes, read fresh from its storage."""
    return storage(study).get_study_system_attrs(study_id(study))


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Set one system attribute on the study (Optuna's public Study has no setter for these)."""
    storage(study).set_study_system_attr(study_id(study), key, value)


def set_trial_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Set one system attribute on a trial, whichever process runs it (a FrozenTrial has no setter)."""
    storage(study).set_trial_system_attr(trial_id(trial), key, value)


# --- trial states ---------------------------------------------------------------------------------------------------


def fail(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    """Mark a RUNNING trial FAIL, whichever process runs it; Optuna raises UpdateFinishedTrialError if it ended."""
    storage(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)


def state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """A trial's state as its storage holds it now (another driver may have failed it meanwhile)."""
    return storage(study).get_trial(trial_id(trial)).state


def open_running(
    study: optuna.Study, params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> optuna.Trial:
    """A new RUNNING trial holding the given params, not sampled and not queued for another driver to take."""
    template = optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=distributions)
    return optuna.Trial(study, storage(study).create_new_trial(study_id(study), template_trial=template))


# --- constraints, retries, distributions ------------------------------------------------------------------------------


def constraints_key() -> str:
    """The system attribute under which Optuna's samplers and optuna-dashboard read a trial's constraint list."""
    return _module_attr("optuna.study._constrained_optimization", "_CONSTRAINTS_KEY")


def set_constraints(study: optuna.Study, trial: optuna.Trial, values: list[float]) -> None:
    """Store a trial's constraint values as the list under Optuna's plain key, in a fixed order."""
    set_trial_system_attr(study, trial, constraints_key(), [float(v) for v in values])


def constraints(trial: FrozenTrial) -> list[float] | None:
    """The constraint list stored under Optuna's plain key, if any."""
    return trial.system_attrs.get(constraints_key())


def retried_from(trial: FrozenTrial) -> int | None:
    """The first interrupted trial this one runs again (Optuna's retry convention), if any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since Optuna 2.8
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Every interrupted trial this one runs again, oldest first (Optuna's retry convention)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether a distribution offers a value (a choice of a categorical, a point of a range)."""
    try:
        internal = distribution.to_internal_repr(value)
    except (ValueError, TypeError):
        return False  # not even of the distribution's kind
    return bool(_attr(distribution, "_contains", "optuna.distributions.BaseDistribution")(internal))


# --- the multi-objective helpers the benchmarks use ------------------------------------------------------------------


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume dominated by `points` (all minimized) up to `reference`, by Optuna's own algorithm."""
    return float(_module_attr("optuna._hypervolume", "compute_hypervolume")(np.asarray(points), reference))


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of `points` (all minimized) are on the Pareto front, duplicates included, by Optuna's own test."""
    is_front = _module_attr("optuna.study._multi_objective", "_is_pareto_front")
    return is_front(np.asarray(points), assume_unique_lexsorted=False)
