"""Stopping a sweep (Ctrl-C or a crash) loses no finished trial, and running the same command again resumes it."""

from __future__ import annotations

import os
import re
import signal

import optuna
from conftest import kept_its_plan, run_cli, running_cli, small_experiment
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from search.config import load
from search.executor import RayExecutor
from search.study import finished, interrupted, latency_cache, retry_of, spent
from search.sweep import timing, trial_path

BUDGET = 4  # two finished before the stop, two left for the resumed run


def _finished_now(exp) -> dict[int, object]:
    """Finished trials as the storage holds them right now (number -> completion time)."""
    if not (exp.out / "study.db").is_file():
        return {}
    try:
        study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
        return {t.number: t.datetime_complete for t in finished(study)}
    except (KeyError, OperationalError):  # not created yet, or the driver holds the write lock this instant
        return {}


def _stop_after_two(path, tmp_path, sig) -> tuple[dict[int, object], int]:
    exp = load(path)
    lines = []
    with running_cli("run", str(path), cwd=tmp_path) as proc:
        # The driver prints a line per finished trial; stop it right after the second, as a user watching would.
        for line in proc.stdout:
            lines.append(line)
            if sum(line.startswith("trial ") for line in lines) >= 2:
                break
        assert proc.poll() is None, "".join(lines)[-3000:]
        if sig == signal.SIGINT:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches the driver
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # a crash: no chance to clean up
        output, _ = proc.communicate(timeout=120)
    return _finished_now(exp), proc.returncode, "".join(lines) + (output or "")


def _check_resumed(exp, kept: dict[int, object]) -> None:
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    done = {t.number: t.datetime_complete for t in finished(study)}
    assert len(spent(study)) == BUDGET  # exactly the budget, not more
    for number, completed in kept.items():
        assert done[number] == completed  # the finished trial was kept, not run again
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for t in study.trials:
        if retry_of(t) is not None:
            assert kept_its_plan(t, study.trials[retry_of(t)])
    # MLflow mirrors Optuna: one nested run per finished trial, none twice.
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'")
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in runs]
    assert sorted(numbers) == sorted(done)
    assert (exp.out / "deployable.onnx").is_file()


def test_ctrl_c_stops_cleanly_then_the_same_command_resumes(tmp_path):
    path = small_experiment(
        tmp_path, name="ctrlc", search={"sampler": "tpe", "trials": BUDGET, "parallel": 2, "heartbeat_s": 1.0}
    )
    exp = load(path)
    kept, code, output = _stop_after_two(path, tmp_path, signal.SIGINT)
    assert code == 130, output[-3000:]
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    # Nothing is left half-done: in-flight trials are failed and queued to run again by Optuna's retry convention
    # (system attributes `failed_trial` / `retry_history`), which Optuna's tools and optuna-dashboard read.
    assert not study.get_trials(states=(TrialState.RUNNING,))
    left = interrupted(study)
    assert all(study.trials[n].state == TrialState.FAIL for n in left)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in waiting) == sorted(left)
    client = MlflowClient(exp.tracking_uri)
    parent = client.search_runs(
        [client.get_experiment_by_name(exp.name).experiment_id], "tags.`slimsweep.role` = 'sweep'"
    )[0]
    assert parent.info.status == "KILLED"

    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The whole budget is done; repeats answered from an earlier identical plan are counted beside it, at no cost.
    told = re.search(r"(\d+) trials finished \(\d+ failed, (\d+) answered from an earlier", result.stdout)
    assert told and int(told[1]) - int(told[2]) == BUDGET, result.stdout[-3000:]
    _check_resumed(exp, kept)
    _latency_cache_kept(exp)


def _latency_cache_kept(exp) -> None:
    """A new driver's station, given what the study kept, times no structure the sweep already timed."""
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    kept = latency_cache(study)
    assert kept
    executor = RayExecutor(address=None)
    executor.open_station(exp.target.spec(), reserve_cores=exp.target.reserve_cores)
    executor.seed_latencies(kept)
    trained = next(t for t in finished(study) if t.state == TrialState.COMPLETE)
    _, cached = executor.time_model(trial_path(exp, trained.number).read_bytes(), timing(exp))
    assert cached and executor.station_counts() == {"latency_cache_hits": 1, "latency_cache_misses": 0}


def test_a_crashed_driver_is_resumed_without_repeating_finished_trials(tmp_path):
    # heartbeat_s: the killed driver's trials are taken over after 4 missed beats (4 s here).
    path = small_experiment(
        tmp_path, name="crash", search={"sampler": "tpe", "trials": BUDGET, "parallel": 2, "heartbeat_s": 1.0}
    )
    exp = load(path)
    kept, _, _ = _stop_after_two(path, tmp_path, signal.SIGKILL)
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    orphans = study.get_trials(states=(TrialState.RUNNING,))
    parent = _parent(exp)

    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    if orphans:
        assert "queued again" in result.stdout
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    retried = {retry_of(t) for t in study.trials} - {None}
    assert retried == {t.number for t in orphans}  # the crash's orphans ran again, with the same plans
    _check_resumed(exp, kept)
    assert _parent(exp) == parent  # the same MLflow parent run continued


def _parent(exp) -> str:
    client = MlflowClient(exp.tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(exp.name).experiment_id], "tags.`slimsweep.role` = 'sweep'"
    )
    return run.info.run_id
