"""A trial the machinery loses (here: past the experiment's time limit) runs the same plan again a stated number of
times, then fails with that reason; the summary counts failures by kind."""

from __future__ import annotations

import optuna
import pytest
from conftest import small_experiment

from evaluators.errors import ConfigError
from search.cli import main
from search.config import load
from search.study import finished, read


def test_a_trial_past_its_time_limit_is_run_again_then_fails_as_a_timeout(tmp_path, capsys, monkeypatch):
    # Hundreds of distillation epochs take minutes; the limit is 1 s: no attempt can finish within it.
    path = small_experiment(
        tmp_path,
        name="limits",
        space={
            "students": {"teacher": False, "cnn": {"width": [0.5], "depth": [1], "epochs": 400}},
            "pruning": {"ratio": [0.0]},
            "quantization": {"schemes": ["fp32"]},
        },
        search={"sampler": "random", "trials": 1, "parallel": 1, "seed": 0, "trial_timeout_s": 1, "max_retries": 1},
    )
    exp = load(path)
    # In this process: the attempts run (and are stopped) in Ray workers either way; a CLI process of its own cost its
    # imports again (the console script's own behaviour is tested elsewhere).
    monkeypatch.chdir(tmp_path)
    main(["run", str(path)])
    out, err = capsys.readouterr()
    assert "failures: 1 timeout; 1 attempts run again after a machinery failure" in out, out[-3000:] + err[-3000:]
    study = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    (trial,) = finished(study)
    rec = read(trial)
    assert trial.state == optuna.trial.TrialState.FAIL
    assert rec.failure.startswith("timeout: failed 2 attempts")
    assert "search.trial_timeout_s = 1 s" in rec.failure
    assert len(rec.info["machinery_attempts"]) == 2 and rec.info["machinery_failure"] == "timeout"


@pytest.mark.parametrize("field, value", [("max_retries", 11), ("trial_timeout_s", 0.5), ("heartbeat_s", 0)])
def test_fault_settings_out_of_bounds_are_refused_naming_the_field(tmp_path, field, value):
    path = small_experiment(tmp_path, name="bounds", search={"sampler": "random", "trials": 2, field: value})
    with pytest.raises(ConfigError, match=rf"search\.{field}.*{value}"):
        load(path)
