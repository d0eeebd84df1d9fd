"""Several drivers share one study: each owns its trials through a heartbeat, only a gone driver's trials run
again, the budget is the study's, and MLflow gets one run per finished trial."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from conftest import running_cli, small_experiment, sweep_here, wait_for
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.config import load
from search.study import (
    STALE_BEATS,
    beat,
    dominated,
    finished,
    give_way,
    interrupted,
    live_drivers,
    open_study,
    own,
    owner,
    past_budget,
    read,
    repair,
    requeue,
    retire,
    retry_of,
    running,
    spent,
    stale,
)
from search.tracking import Tracker, _first_access

TEACHER_AS_IT_IS = {"student": "teacher", "pruning.ratio": 0.0, "quantization.scheme": "fp32"}
HEARTBEAT = 5.0  # generous: a loaded machine may delay a beat; a live driver is never taken over


@pytest.fixture()
def study(tmp_path):
    return open_study(load(small_experiment(tmp_path, name="owners")))


def test_only_a_gone_drivers_trials_are_stale(study):
    now = 1_000_000.0
    beat(study, "alive", now)
    beat(study, "dead", now - STALE_BEATS * HEARTBEAT - 1)
    mine, theirs = study.ask(), study.ask()
    own(study, mine, "alive")
    own(study, theirs, "dead")
    assert live_drivers(study, HEARTBEAT, now) == {"alive"}
    assert stale(study, HEARTBEAT, now) == [theirs.number]  # a live driver's trial is never taken over
    retire(study, "alive")  # a driver that ended cleanly is gone at once
    assert stale(study, HEARTBEAT, now) == [mine.number, theirs.number]


def test_two_drivers_requeue_a_stale_trial_once(study):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert requeue(study, [trial.number]) == [trial.number]
    assert requeue(study, [trial.number]) == []  # the other driver finds it already failed: no second copy
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == trial.params


def test_a_crash_between_fail_and_enqueue_loses_no_plan(study):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    # What requeue does before it enqueues: the mark, then the fail; the driver dies here.
    study._storage.set_trial_system_attr(trial._trial_id, "slimsweep.requeued", True)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert repair(study) == [trial.number]
    assert repair(study) == []
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.params == trial.params and retry_of(waiting) == trial.number
    assert trial.number in interrupted(study) and not finished(study)  # not counted as a failed plan


def test_of_two_drivers_asking_for_the_last_trial_at_once_the_later_ask_gives_way(study):
    # Budget 3, one trial finished, one in flight: both drivers saw one trial left and both asked.
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    done, _in_flight = study.ask(x), study.ask(x)
    study.tell(done, [90.0, 1.0, 1.0])
    first, second = study.ask(x), study.ask(x)
    assert not past_budget(study, first.number, 3) and past_budget(study, second.number, 3)
    give_way(study, second)
    assert len(finished(study)) == 1 and not past_budget(study, first.number, 3)
    gone = study.trials[second.number]
    assert gone.state == TrialState.PRUNED and not read(gone).plan  # no plan: it answers no later proposal
    assert not dominated(study)  # and it is not counted as a plan stopped before training


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_drivers_started_together_share_the_budget(tmp_path, request, store):
    budget = 4
    search = {"sampler": "random", "trials": budget, "parallel": 1, "seed": 0, "heartbeat_s": HEARTBEAT}
    changes = {}
    if store == "postgresql":  # the study and the MLflow store both on a real PostgreSQL server
        create = request.getfixturevalue("postgres_db")
        search["storage"] = create("pair_study")
        changes["tracking"] = {"uri": create("pair_mlflow")}
    path = small_experiment(tmp_path, name="pair", search=search, **changes)
    exp = load(path)
    # Both on a fresh storage: the schema race.
    with running_cli("run", str(path), cwd=tmp_path) as first, running_cli("run", str(path), cwd=tmp_path) as second:
        procs = [first, second]
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = finished(study)  # the budget's trials and the models they made on their way
    assert len(spent(study)) == budget  # the study's budget, not each driver's
    assert not interrupted(study)  # no live trial was failed by the other driver
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    parents = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")
    assert len(parents) == 1  # both drivers log under one parent run
    runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in runs]
    assert sorted(numbers) == sorted(t.number for t in done)  # one run per finished trial, none twice


def test_resync_marks_a_gone_drivers_unfinished_run_and_leaves_a_live_drivers_alone(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resync", tmp_path / "artifacts", driver="me")
    tracker.start_sweep("name: resync\n", {})
    client = tracker.client

    def half_logged(number: int, driver: str) -> str:  # a run a driver began and had not finished writing
        return client.create_run(
            tracker.experiment_id,
            tags={
                "slimsweep.role": "trial",
                "slimsweep.driver": driver,
                "optuna.trial_number": str(number),
                "mlflow.parentRunId": tracker.parent_id,
            },
        ).info.run_id

    gone, live = half_logged(0, "gone"), half_logged(1, "alive")
    done = tracker.log_trial(2, {"x": 1}, {"accuracy": 0.9}, onnx=None)
    assert tracker.logged_trials({"alive", "me"}) == {2}
    assert client.get_run(gone).info.status == "KILLED"
    assert client.get_run(gone).data.tags["slimsweep.role"] == "abandoned"  # kept to see, not counted as the trial
    assert client.get_run(live).info.status == "RUNNING"  # another live driver's run is never touched
    assert client.get_run(done).info.status == "FINISHED"


def test_a_fresh_sqlite_store_is_migrated_by_one_driver_at_a_time(tmp_path):
    # Two drivers migrating a fresh SQLite MLflow store together leave a half-made table behind that breaks both.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    started = tmp_path / "opening"
    opener = (
        f"from pathlib import Path; from search.tracking import Tracker; Path({str(started)!r}).touch(); "
        f"Tracker({uri!r}, 'pair', Path({str(tmp_path)!r}) / 'art'); print('opened')"
    )
    with _first_access(uri):  # what another driver holds while it migrates
        other = subprocess.Popen([sys.executable, "-c", opener], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: started.exists() or other.poll() is not None, timeout=120, every=0.2)
        time.sleep(2)  # long enough for an unserialised open to have created the store
        assert other.poll() is None and not (tmp_path / "mlflow.db").exists()
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 0 and "opened" in out
    assert MlflowClient(uri).get_experiment_by_name("pair") is not None


def test_a_driver_that_dies_mid_sweep_leaves_no_trial_without_its_run_at_the_survivors_end(tmp_path):
    # A driver killed between telling Optuna and writing the MLflow run leaves a finished trial without its run.
    # Made here exactly: a first sweep's trial whose run is then deleted, and whose driver looks alive (a fresh
    # heartbeat) while a second driver starts, so that driver's start leaves it alone, then dies mid-sweep.
    path = small_experiment(
        tmp_path,
        name="survivor",
        search={"sampler": "random", "trials": 1, "parallel": 1, "seed": 0},
        constraints={"max_accuracy_drop": 50.0},  # any first plan makes a front to pick from
        pick={"max_accuracy_drop": 50.0, "verify_seconds": 1.0},  # the minimum: the survivor's pick is not looked at
    )
    exp = load(path)
    study = open_study(exp)
    # The first sweep's trial: the teacher as it is (nothing to train; its int8 model made on its way), run by the
    # driver's loop in this process; it leaves the same trials and runs as `slimsweep run` would, without Ray's start
    # or a pick.
    study.enqueue_trial(TEACHER_AS_IT_IS)
    sweep_here(exp)
    (told,) = spent(study)
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)

    def trial_runs() -> list[int]:
        runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
        return sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)

    for run in client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'"):
        client.delete_run(run.info.run_id)
    beat(study, owner(told), time.time() + 3600)  # alive, as far as the next start can tell
    # The survivor's own trial trains a student for seconds, whatever the sampler would draw: it is seen in flight
    # before that sweep ends.
    study.enqueue_trial({"student": "cnn", "pruning.ratio": 0.0, "quantization.scheme": "fp32"})
    with running_cli("run", str(path), "--trials", "2", cwd=tmp_path) as driver:  # one trial of its own
        wait_for(lambda: driver.poll() is not None or bool(running(study)), timeout=300, every=0.2)
        assert told.number not in trial_runs()  # the start left the live driver's trial to it
        retire(study, owner(told))  # the first driver dies mid-sweep, its trial still without a run
        out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-3000:]
    assert trial_runs() == sorted(t.number for t in finished(study))  # the dead driver's trial too, once each
