"""The Optuna study and the MLflow backend on a real PostgreSQL server (started by the tests from the system's
package): a sweep runs there, a driver killed mid-sweep resumes there, nothing finished is lost or repeated."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
from conftest import free_port, kept_its_plan, run_cli, running_cli, small_experiment, study_if_made
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from evaluators.errors import ConfigError
from search.config import load
from search.study import finished, retry_of, spent

BUDGET = 3


def _mid_trial(exp) -> bool:
    """A trial has finished and another is in flight, its plan drawn in full (the scheme is the last knob drawn):
    the moment to pull the plug on the driver."""
    study = study_if_made(exp)
    return (
        study is not None
        and len(finished(study)) >= 1
        and any("quantization.scheme" in t.params for t in study.get_trials(states=(TrialState.RUNNING,)))
    )


def _frozen_mid_trial(proc, exp) -> bool:
    """Freeze the driver and its Ray, and keep them frozen only if the study is mid-trial (a trial seen in flight may
    have finished by the time a kill lands)."""
    os.killpg(proc.pid, signal.SIGSTOP)
    if _mid_trial(exp):
        return True
    os.killpg(proc.pid, signal.SIGCONT)
    return False


def _freeze_after_a_trial(proc, exp) -> str:
    """Freeze the sweep the moment it prints a finished trial while the next is in flight (the next plan is asked
    while a trial runs, so one is); what it printed until then. Reading its lines, not polling the study: a sweep of
    sub-second trials once ran to its end between two looks."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("trial ") and _frozen_mid_trial(proc, exp):
            return "".join(lines)
    raise AssertionError("the sweep ended before a trial was seen in flight:\n" + "".join(lines)[-3000:])


def test_a_sweep_on_postgresql_killed_mid_trial_resumes_with_nothing_lost_or_repeated(tmp_path, postgres_db):
    storage, tracking = postgres_db("study"), postgres_db("mlflow")
    path = small_experiment(
        tmp_path,
        name="pg",
        search={"sampler": "random", "trials": BUDGET, "parallel": 1, "seed": 0, "storage": storage},
        tracking={"uri": tracking},
        # What is checked is the resume; the pick at the end must not depend on which three plans trained well
        # (which plan the kill interrupts varies, and once none of three came within 5 points: "the front is empty").
        constraints={"max_accuracy_drop": 50.0},
        pick={"max_accuracy_drop": 50.0, "verify_seconds": 2.0},
    )
    exp = load(path)
    with running_cli("run", str(path), cwd=tmp_path) as proc:
        _freeze_after_a_trial(proc, exp)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started die with no chance to clean up
        proc.wait(timeout=60)
    kept = {t.number: (t.datetime_complete, t.values) for t in finished(study_if_made(exp))}
    left = [t.number for t in study_if_made(exp).get_trials(states=(TrialState.RUNNING,))]
    assert kept and left

    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"trials {left} were left unfinished" in result.stdout

    study = study_if_made(exp)
    done = {t.number: (t.datetime_complete, t.values) for t in finished(study)}
    assert len(spent(study)) == BUDGET  # exactly the budget
    for number, figures in kept.items():
        assert done[number] == figures  # finished before the kill: kept as it was, not run again
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retried = [t for t in study.trials if retry_of(t) in left]
    assert retried and all(kept_its_plan(t, study.trials[retry_of(t)]) for t in retried)

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
    assert Counter(int(r.data.tags["optuna.trial_number"]) for r in runs) == Counter(list(done))  # one run each
    parents = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run continued
    version = client.get_model_version_by_alias(exp.name, "deployable")  # the registry lives in PostgreSQL too
    assert (exp.out / "deployable.onnx").is_file() and int(version.version) >= 1


@pytest.mark.parametrize(
    "field, url, message",
    [
        ("search.storage", "postgresql+pg8000://u@h/db", "a PostgreSQL storage URL starts with one of"),
        ("tracking.uri", "postgres://u@h/db", "a PostgreSQL MLflow backend store URL starts with one of"),
    ],
)
def test_a_postgresql_url_without_a_known_driver_is_refused_naming_the_field(tmp_path, field, url, message):
    path = small_experiment(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"{field}: {message}") + ".*" + re.escape(f"got '{url}'")):
        load(path, {field: url})


def test_a_postgresql_server_that_cannot_be_reached_is_a_clear_error_before_anything_is_written(
    tmp_path, postgres_server
):
    path = small_experiment(tmp_path)
    down = f"postgresql://slimsweep:secret@127.0.0.1:{free_port()}/study"  # a port nobody listens on
    missing = f"{postgres_server}/no_such_database"  # a live server without that database
    for field, flag, url in (("search.storage", "--storage", down), ("tracking.uri", "--tracking-uri", missing)):
        result = run_cli("run", str(path), flag, url, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"error: {field}: cannot reach the PostgreSQL database" in result.stderr
        assert "secret" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_two_drivers_writing_the_same_new_mlflow_key_at_the_same_instant_both_succeed(tmp_path, postgres_db):
    # MLflow's SQL store looks for a tag, then inserts it: two drivers publishing the front together (the saved
    # view, the pareto and pick tags) collided on the unique key and one driver failed its hand-over.
    import threading

    from search.tracking import Tracker, _again_if_raced

    uri = postgres_db("same_key")
    drivers = [Tracker(uri, "same-key", tmp_path / "artifacts", driver=f"driver{i}") for i in range(2)]
    failures: list[str] = []

    def write(tracker: Tracker, key: str, together: threading.Barrier) -> None:
        together.wait()
        try:
            _again_if_raced(lambda: tracker.client.set_experiment_tag(tracker.experiment_id, key, tracker.driver))
        except Exception as err:  # noqa: BLE001 - what the test counts
            failures.append(str(err)[:200])

    for i in range(20):  # without the second try, nearly every round fails one writer here
        together = threading.Barrier(2)
        threads = [threading.Thread(target=write, args=(t, f"slimsweep.key{i}", together)) for t in drivers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    tags = drivers[0].client.get_experiment(drivers[0].experiment_id).tags
    assert all(tags[f"slimsweep.key{i}"] in {"driver0", "driver1"} for i in range(20))
