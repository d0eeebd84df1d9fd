"""search/optuna_store.py on a real SQLite study: each use of Optuna's private API does what slimsweep relies on, and
an Optuna release that renames one fails here naming the release and the private name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import optuna_store
from search.optuna_store import OptunaChanged

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
VERSION = optuna.__version__


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name="adapter", storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["minimize", "minimize"]
    )


def _reload(study: optuna.Study) -> optuna.Study:
    """The same study as another process would open it: nothing read from this one's cache."""
    url = optuna_store.engine(study).url.render_as_string(hide_password=False)
    return optuna.load_study(study_name=study.study_name, storage=url)


def test_every_private_name_is_in_this_optuna(study):
    study.ask()
    missing = optuna_store.check(study)
    assert not missing, f"Optuna {VERSION} changed private names search/optuna_store.py uses: {missing}"


def test_a_renamed_private_name_fails_naming_the_optuna_release_and_the_name(monkeypatch):
    # What a release that renames the constraint key looks like to slimsweep: one clear error, not an AttributeError.
    import optuna.study._constrained_optimization as constrained

    monkeypatch.delattr(constrained, "_CONSTRAINTS_KEY")
    with pytest.raises(OptunaChanged, match=rf"Optuna {re.escape(VERSION)} has no .*_CONSTRAINTS_KEY"):
        optuna_store.constraints_key()
    assert optuna_store.check() == ["optuna.study._constrained_optimization._CONSTRAINTS_KEY"]


def test_ids_and_engine_name_the_study_and_trial_in_their_database(study):
    trial = study.ask()
    store = optuna_store.storage(study)
    assert store.get_study_id_from_name("adapter") == optuna_store.study_id(study)
    assert store.get_trial(optuna_store.trial_id(trial)).number == trial.number
    frozen = study.get_trials(deepcopy=False)[0]
    assert optuna_store.trial_id(frozen) == optuna_store.trial_id(trial)
    engine = optuna_store.engine(study)
    assert engine is not None and engine.dialect.name == "sqlite"  # the database's clock is read through it


def test_system_attributes_persist_for_another_process(study):
    trial = study.ask()
    optuna_store.set_study_system_attr(study, "slimsweep.x", {"a": 1})
    optuna_store.set_trial_system_attr(study, study.get_trials(deepcopy=False)[0], "slimsweep.y", True)
    again = _reload(study)
    assert optuna_store.study_system_attrs(again)["slimsweep.x"] == {"a": 1}
    assert again.trials[trial.number].system_attrs["slimsweep.y"] is True


def test_another_driver_can_fail_a_running_trial_once(study):
    trial = study.ask()
    other = _reload(study)  # the driver that decided this one's owner is gone
    optuna_store.fail(other, other.trials[trial.number])
    assert optuna_store.state(study, trial) == TrialState.FAIL  # the owner sees it, not its cached RUNNING
    with pytest.raises(UpdateFinishedTrialError):
        optuna_store.fail(other, other.trials[trial.number])


def test_an_opened_trial_runs_with_its_params_and_is_no_one_elses_to_ask(study):
    dists = {"ratio": CategoricalDistribution([0.0, 0.5]), "scheme": CategoricalDistribution(["fp32", "int8"])}
    opened = optuna_store.open_running(study, {"ratio": 0.0, "scheme": "fp32"}, dists)
    stored = _reload(study).trials[opened.number]
    assert stored.state == TrialState.RUNNING and stored.params == {"ratio": 0.0, "scheme": "fp32"}
    assert stored.distributions == dists
    assert study.ask().number != opened.number  # not queued: another driver's ask does not take it
    study.tell(opened, [1.0, 2.0])
    assert study.trials[opened.number].values == [1.0, 2.0]


def test_constraints_under_optunas_key_decide_what_optuna_calls_feasible(study):
    infeasible, feasible = study.ask(), study.ask()
    optuna_store.set_constraints(study, infeasible, [1.0, -2.0])
    optuna_store.set_constraints(study, feasible, [-1.0, 0.0])
    for t in (infeasible, feasible):
        study.tell(t, [1.0, 1.0])  # the same values: only the constraints tell them apart
    assert [t.number for t in study.best_trials] == [feasible.number]  # Optuna reads the list we wrote
    assert optuna_store.constraints(study.trials[infeasible.number]) == [1.0, -2.0]


def test_retries_are_read_by_optunas_convention(study):
    first = study.ask()
    study.tell(first, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=None)(study, study.trials[first.number])
    retry = study.ask()
    study.tell(retry, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=None)(study, study.trials[retry.number])
    second = study.get_trials(states=(TrialState.WAITING,))[0]
    assert optuna_store.retried_from(second) == first.number
    assert optuna_store.retry_history(second) == [first.number, retry.number]
    assert optuna_store.retried_from(study.trials[first.number]) is None


@pytest.mark.parametrize(
    ("distribution", "inside", "outside"),
    [
        (CategoricalDistribution([0.0, 0.5]), 0.5, 0.25),
        (CategoricalDistribution(["fp32", "int8"]), "int8", "int4"),
        (FloatDistribution(0.0, 1.0), 0.5, 1.5),
        (IntDistribution(1, 5, step=2), 3, 2),
    ],
)
def test_contains_says_whether_a_distribution_offers_a_value(distribution, inside, outside):
    assert optuna_store.contains(distribution, inside)
    assert not optuna_store.contains(distribution, outside)


def test_hypervolume_and_front_match_a_hand_computation():
    # Two points of the unit square's staircase: 2x2 box minus the corner each leaves out.
    points = np.array([[0.0, 1.0], [1.0, 0.0], [1.5, 1.5]])
    assert optuna_store.hypervolume(points, np.array([2.0, 2.0])) == pytest.approx(4 - 1)
    assert optuna_store.pareto_mask(points).tolist() == [True, True, False]
    assert optuna_store.pareto_mask(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [True, True]  # ties both stay


# Call sites allowed to use a private name outside the adapter for a while (none now; remove an entry once its line
# is gone).
NOT_YET_MOVED: set[tuple[str, str]] = set()


def test_no_module_outside_the_adapter_uses_optunas_private_names():
    private = re.compile(
        r"\._storage\b|\._trial_id\b|\._study_id\b|\._contains\(|_CONSTRAINTS_KEY"
        r"|optuna(\.\w+)*\._[a-z]\w*"  # a private module or name of Optuna's (not a dunder: __version__ is public)
    )
    offenders = []
    for folder in ("search", "benchmarks", "evaluators", "spaces", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "optuna_store.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                shown = str(path.relative_to(ROOT))
                if any(shown == where and text in code for where, text in NOT_YET_MOVED):
                    continue
                if private.search(code) and not code.lstrip().startswith(('f"', '"')):  # a report's prose
                    offenders.append(f"{shown}:{n}: {line.strip()}")
    assert not offenders, "call search/optuna_store.py instead:\n" + "\n".join(offenders)
